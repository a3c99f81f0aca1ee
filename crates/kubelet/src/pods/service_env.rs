//! The Service environment variables of a container, as the kubelet makes them: for the
//! `kubernetes` Service of `default` always, and for every Service of the pod's namespace
//! when `enableServiceLinks` is not false, `<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT`
//! (and `_<PORTNAME>`), and the Docker-link variables `<NAME>_PORT`,
//! `<NAME>_PORT_<port>_<PROTO>` (`_PROTO`, `_PORT`, `_ADDR`). Headless Services and those
//! without a cluster IP get none.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service};

/// Services of `default` whose variables every pod gets.
const MASTER_SERVICES: [&str; 1] = ["kubernetes"];

fn env_name(s: &str) -> String {
    s.to_ascii_uppercase().replace('-', "_")
}

/// The variables for `services` (those of the pod's namespace and of `default`), sorted
/// by name.
#[must_use]
pub fn vars(pod: &Pod, services: &[Service]) -> Vec<(String, String)> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let mut chosen: BTreeMap<&str, &Service> = BTreeMap::new();
    for s in services {
        let Some(name) = s.metadata.name.as_deref() else {
            continue;
        };
        let svc_ns = s.metadata.namespace.as_deref().unwrap_or_default();
        if svc_ns == "default" && MASTER_SERVICES.contains(&name) {
            chosen.entry(name).or_insert(s);
        } else if svc_ns == ns && links {
            chosen.insert(name, s);
        }
    }
    let mut out = BTreeMap::new();
    for (name, s) in chosen {
        let Some(spec) = s.spec.as_ref() else {
            continue;
        };
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty() && *ip != "None")
        else {
            continue;
        };
        let ports = spec.ports.as_deref().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        let prefix = env_name(name);
        out.insert(format!("{prefix}_SERVICE_HOST"), ip.to_owned());
        out.insert(format!("{prefix}_SERVICE_PORT"), first.port.to_string());
        for p in ports {
            if let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) {
                out.insert(
                    format!("{prefix}_SERVICE_PORT_{}", env_name(pn)),
                    p.port.to_string(),
                );
            }
        }
        let proto = |p: &k8s_openapi::api::core::v1::ServicePort| {
            p.protocol.as_deref().unwrap_or("TCP").to_owned()
        };
        out.insert(
            format!("{prefix}_PORT"),
            format!(
                "{}://{ip}:{}",
                proto(first).to_ascii_lowercase(),
                first.port
            ),
        );
        for p in ports {
            let proto = proto(p);
            let base = format!("{prefix}_PORT_{}_{}", p.port, proto.to_ascii_uppercase());
            out.insert(
                base.clone(),
                format!("{}://{ip}:{}", proto.to_ascii_lowercase(), p.port),
            );
            out.insert(format!("{base}_PROTO"), proto.to_ascii_lowercase());
            out.insert(format!("{base}_PORT"), p.port.to_string());
            out.insert(format!("{base}_ADDR"), ip.to_owned());
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "namespace": ns },
            "spec": { "clusterIP": ip, "ports": ports }
        }))
        .expect("test")
    }

    fn pod(ns: &str, links: Option<bool>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "p", "namespace": ns },
            "spec": { "containers": [], "enableServiceLinks": links }
        }))
        .expect("test")
    }

    #[test]
    fn the_kubelets_variables_for_the_namespace_and_the_master_service() {
        let services = [
            svc(
                "default",
                "kubernetes",
                "10.0.0.1",
                serde_json::json!([{ "name": "https", "port": 443, "protocol": "TCP" }]),
            ),
            svc(
                "apps",
                "web-api",
                "10.0.0.20",
                serde_json::json!([{ "name": "http", "port": 80 }, { "name": "dns", "port": 53, "protocol": "UDP" }]),
            ),
            svc(
                "apps",
                "headless",
                "None",
                serde_json::json!([{ "port": 80 }]),
            ),
            svc(
                "other",
                "elsewhere",
                "10.0.0.30",
                serde_json::json!([{ "port": 80 }]),
            ),
        ];
        let got: BTreeMap<String, String> =
            vars(&pod("apps", None), &services).into_iter().collect();
        let want = [
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
            ("KUBERNETES_PORT", "tcp://10.0.0.1:443"),
            ("KUBERNETES_PORT_443_TCP", "tcp://10.0.0.1:443"),
            ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
            ("KUBERNETES_PORT_443_TCP_PORT", "443"),
            ("KUBERNETES_PORT_443_TCP_ADDR", "10.0.0.1"),
            ("WEB_API_SERVICE_HOST", "10.0.0.20"),
            ("WEB_API_SERVICE_PORT", "80"),
            ("WEB_API_SERVICE_PORT_HTTP", "80"),
            ("WEB_API_SERVICE_PORT_DNS", "53"),
            ("WEB_API_PORT", "tcp://10.0.0.20:80"),
            ("WEB_API_PORT_80_TCP", "tcp://10.0.0.20:80"),
            ("WEB_API_PORT_80_TCP_PROTO", "tcp"),
            ("WEB_API_PORT_80_TCP_PORT", "80"),
            ("WEB_API_PORT_80_TCP_ADDR", "10.0.0.20"),
            ("WEB_API_PORT_53_UDP", "udp://10.0.0.20:53"),
            ("WEB_API_PORT_53_UDP_PROTO", "udp"),
            ("WEB_API_PORT_53_UDP_PORT", "53"),
            ("WEB_API_PORT_53_UDP_ADDR", "10.0.0.20"),
        ];
        let want: BTreeMap<String, String> = want
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(got, want);
        // enableServiceLinks: false keeps only the master service's.
        let off = vars(&pod("apps", Some(false)), &services);
        assert!(
            off.iter().all(|(k, _)| k.starts_with("KUBERNETES_")),
            "{off:?}"
        );
        assert_eq!(off.len(), 8);
    }
}
