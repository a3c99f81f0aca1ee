//! What a wasm node refuses to run, decided before anything starts, and what it runs with
//! a warning.

use k8s_openapi::api::core::v1::{Container, Pod, Probe};

/// Why a pod is not admitted: it is then `Failed` with this reason, its message in a
/// Warning event and (as "Pod was rejected: <message>") in its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The kubelet's reason (`OutOfpods`, `NodePorts`, `Evicted`, ...).
    pub reason: &'static str,
    /// What the node lacks or refuses.
    pub message: String,
}

impl Rejection {
    /// A rejection for `reason` with `message`.
    #[must_use]
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

fn containers(pod: &Pod) -> impl Iterator<Item = (bool, &Container)> {
    let spec = pod.spec.as_ref();
    let init = spec
        .and_then(|s| s.init_containers.as_ref())
        .into_iter()
        .flatten()
        .map(|c| (true, c));
    let app = spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| (false, c));
    init.chain(app)
}

fn probes(c: &Container) -> [(&'static str, Option<&Probe>); 3] {
    [
        ("startupProbe", c.startup_probe.as_ref()),
        ("livenessProbe", c.liveness_probe.as_ref()),
        ("readinessProbe", c.readiness_probe.as_ref()),
    ]
}

/// The reason and message a pod is rejected with (phase `Failed`), if it is.
///
/// - `spec.os.name`: the pod targets Linux or Windows binaries (`PodOSNotSupported`, as the
///   kubelet says for a pod of another OS);
/// - `exec` probes or lifecycle hooks: there is no process to exec into
///   (`UnsupportedProbe`);
/// - privileges (`privileged`, added capabilities, privilege escalation, host PID or IPC
///   namespaces): a wasm sandbox has none to give (`UnsupportedSecurityContext`).
#[must_use]
pub fn check(pod: &Pod) -> Option<Rejection> {
    let spec = pod.spec.as_ref()?;
    if let Some(os) = &spec.os {
        return Some(Rejection::new(
            "PodOSNotSupported",
            format!(
                "Pod attempted to run on a wasip1 node but requested {}",
                os.name
            ),
        ));
    }
    if spec.host_pid == Some(true) || spec.host_ipc == Some(true) {
        return Some(Rejection::new(
            "UnsupportedSecurityContext",
            "hostPID and hostIPC are not supported on a wasm node".to_owned(),
        ));
    }
    for (_, c) in containers(pod) {
        for (kind, probe) in probes(c) {
            if probe.is_some_and(|p| p.exec.is_some()) {
                return Some(Rejection::new(
                    "UnsupportedProbe",
                    format!(
                        "container {:?}: {kind} uses exec, which a wasm sandbox cannot run",
                        c.name
                    ),
                ));
            }
        }
        let hooks = c.lifecycle.as_ref();
        let exec_hook = [
            hooks.and_then(|l| l.post_start.as_ref()),
            hooks.and_then(|l| l.pre_stop.as_ref()),
        ]
        .into_iter()
        .flatten()
        .any(|h| h.exec.is_some());
        if exec_hook {
            return Some(Rejection::new(
                "UnsupportedProbe",
                format!(
                    "container {:?}: exec lifecycle hooks cannot run in a wasm sandbox",
                    c.name
                ),
            ));
        }
        if let Some(sc) = &c.security_context {
            let caps = sc
                .capabilities
                .as_ref()
                .and_then(|c| c.add.as_ref())
                .is_some_and(|a| !a.is_empty());
            if sc.privileged == Some(true) || sc.allow_privilege_escalation == Some(true) || caps {
                return Some(Rejection::new(
                    "UnsupportedSecurityContext",
                    format!(
                        "container {:?} asks for privileges (privileged, capabilities or privilege escalation), which a wasm sandbox does not have",
                        c.name
                    ),
                ));
            }
        }
    }
    None
}

/// `(protocol, hostIP, hostPort)` of every port `pod` asks for on the host.
fn host_ports(pod: &Pod) -> Vec<(String, String, i32)> {
    containers(pod)
        .flat_map(|(_, c)| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|&h| h > 0)?;
            Some((
                p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".to_owned()),
                port,
            ))
        })
        .collect()
}

fn ports_collide(a: &(String, String, i32), b: &(String, String, i32)) -> bool {
    let any = |ip: &str| ip == "0.0.0.0" || ip == "::";
    a.0 == b.0 && a.2 == b.2 && (a.1 == b.1 || any(&a.1) || any(&b.1))
}

/// Whether `pod` fits beside `others`, the pods this node already runs, as the kubelet
/// decides before admitting a pod: at most `max_pods` pods (`OutOfpods`) and no host port
/// taken twice (`NodePorts`).
#[must_use]
pub fn fit(pod: &Pod, others: &[&Pod], max_pods: usize) -> Option<Rejection> {
    if others.len() >= max_pods {
        return Some(Rejection::new(
            "OutOfpods",
            format!(
                "Node didn't have enough resource: pods, requested: 1, used: {}, capacity: {max_pods}",
                others.len()
            ),
        ));
    }
    let taken: Vec<_> = others.iter().flat_map(|p| host_ports(p)).collect();
    let wanted = host_ports(pod);
    let clash = wanted.iter().enumerate().any(|(i, w)| {
        wanted[..i]
            .iter()
            .chain(&taken)
            .any(|t| ports_collide(w, t))
    });
    clash.then(|| {
        Rejection::new(
            "NodePorts",
            "Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}, "spec": json}))
            .expect("pod")
    }

    #[test]
    fn rejects_what_wasm_cannot_do() {
        let exec = pod(
            serde_json::json!({"containers": [{"name": "a", "livenessProbe": {"exec": {"command": ["x"]}}}]}),
        );
        assert_eq!(check(&exec).map(|r| r.reason), Some("UnsupportedProbe"));
        let privileged = pod(
            serde_json::json!({"containers": [{"name": "a", "securityContext": {"privileged": true}}]}),
        );
        assert_eq!(
            check(&privileged).map(|r| r.reason),
            Some("UnsupportedSecurityContext")
        );
        let linux =
            pod(serde_json::json!({"os": {"name": "linux"}, "containers": [{"name": "a"}]}));
        assert_eq!(check(&linux).map(|r| r.reason), Some("PodOSNotSupported"));
        let plain = pod(
            serde_json::json!({"containers": [{"name": "a", "securityContext": {"runAsNonRoot": true}}]}),
        );
        assert_eq!(check(&plain), None);
    }

    #[test]
    fn a_full_node_or_a_taken_host_port_is_no_fit() {
        let port = |n: i32| {
            pod(
                serde_json::json!({"containers": [{"name": "a", "ports": [{"containerPort": 80, "hostPort": n}]}]}),
            )
        };
        let (a, b, c) = (port(8080), port(8080), port(9090));
        assert_eq!(fit(&a, &[], 1), None);
        assert_eq!(fit(&b, &[&a], 1).map(|r| r.reason), Some("OutOfpods"));
        assert_eq!(fit(&b, &[&a], 10).map(|r| r.reason), Some("NodePorts"));
        assert_eq!(fit(&c, &[&a], 10), None);
        let udp = pod(
            serde_json::json!({"containers": [{"name": "a", "ports": [{"containerPort": 80, "hostPort": 8080, "protocol": "UDP"}]}]}),
        );
        assert_eq!(fit(&udp, &[&a], 10), None);
        let twice = pod(serde_json::json!({"containers": [
            {"name": "a", "ports": [{"containerPort": 80, "hostPort": 7070}]},
            {"name": "b", "ports": [{"containerPort": 81, "hostPort": 7070}]}]}));
        assert_eq!(fit(&twice, &[], 10).map(|r| r.reason), Some("NodePorts"));
    }
}
