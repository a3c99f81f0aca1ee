//! A wasm pod's names resolved as in any cluster: the echo component in lookup mode
//! (`LOOKUP=NAME`, `wasi:sockets` ip-name-lookup) on a networked node told the cluster's
//! DNS (`--cluster-dns`, `--cluster-domain` from `hack/cluster env`), asking
//! hack/cluster's CoreDNS behind `kube-dns`: a Service by short name and by FQDN, a name
//! nobody has (a clean lookup error, not a hang), a host alias, and `dnsPolicy: None`
//! with the pod's own `dnsConfig`. Traffic stays on the node's bridge, kube-proxy's
//! translation and CoreDNS's namespace; a handful of lookups, each bounded.

use e2e::{Cluster, delete_and_wait, phase, wait_pod, wasm_toleration};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{LogParams, PostParams};

use std::net::SocketAddr;

use crate::network::{forward_pod, http_get_ready, http_pod, line, networked_node};

const NODE: &str = "net-dns";
/// The Service the pods look up.
const SERVICE: &str = "dns-backend";
/// wasi:sockets' name-unresolvable, as the component prints it (19 and 20 are the
/// temporary and permanent resolver failures).
const NAME_UNRESOLVABLE: &str = "error 18";

/// `dnsPolicy: None` with a `dnsConfig` of the pod's own: the cluster's server, a search
/// path of its own choosing (`svc.cluster.local`: `<service>.<namespace>` resolves) and
/// `ndots:2`.
pub(crate) fn own_dns() -> serde_json::Value {
    serde_json::json!({
        "dnsPolicy": "None",
        "dnsConfig": {
            "nameservers": ["10.0.0.10"],
            "searches": ["svc.cluster.local"],
            "options": [{ "name": "ndots", "value": "2" }]
        }
    })
}

/// A pod on `node` that looks `lookup` up once and ends; `spec` is merged into its spec.
fn lookup_pod(node: &str, name: &str, image: &str, lookup: &str, spec: serde_json::Value) -> Pod {
    let mut manifest = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name },
        "spec": {
            "nodeSelector": { "kubernetes.io/hostname": node },
            "tolerations": wasm_toleration(),
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "main",
                "image": image,
                "env": [{ "name": "LOOKUP", "value": lookup }]
            }]
        }
    });
    if let (Some(base), Some(extra)) = (manifest["spec"].as_object_mut(), spec.as_object()) {
        base.extend(extra.clone());
    }
    serde_json::from_value(manifest).expect("valid pod manifest")
}

/// Runs a lookup pod on this test's node to its end; its phase and its log.
async fn look_up(
    cluster: &Cluster,
    name: &str,
    image: &str,
    lookup: &str,
    spec: serde_json::Value,
) -> anyhow::Result<(String, String)> {
    look_up_on(cluster, NODE, name, image, lookup, spec).await
}

/// Runs a lookup pod on `node` to its end; its phase and its log.
pub(crate) async fn look_up_on(
    cluster: &Cluster,
    node: &str,
    name: &str,
    image: &str,
    lookup: &str,
    spec: serde_json::Value,
) -> anyhow::Result<(String, String)> {
    let pods = cluster.pods();
    let _ = delete_and_wait(&pods, name, 60).await;
    pods.create(
        &PostParams::default(),
        &lookup_pod(node, name, image, lookup, spec),
    )
    .await?;
    let pod = wait_pod(&pods, name, 180, "an end", |p| {
        matches!(phase(p), "Succeeded" | "Failed")
    })
    .await?;
    let log = pods.logs(name, &LogParams::default()).await?;
    delete_and_wait(&pods, name, 60).await?;
    Ok((phase(&pod).to_owned(), log))
}

#[tokio::test]
async fn a_pod_resolves_services_through_the_cluster_dns() -> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    let (net, node, _) = networked_node(&cluster, NODE, 10536).await?;
    let image = cluster.push("http-echo.component", "v1").await?;
    let services: kube::Api<Service> = kube::Api::namespaced(cluster.client.clone(), "default");
    // Kept from an earlier run if there is one: a Service made again gets another
    // address, which CoreDNS's cache may not know for up to 30 s.
    let svc = match services.get_opt(SERVICE).await? {
        Some(svc) => svc,
        None => {
            let svc: Service = serde_json::from_value(serde_json::json!({
                "metadata": { "name": SERVICE },
                "spec": {
                    "selector": { "app": SERVICE },
                    "ports": [{ "port": 80, "targetPort": 8080 }]
                }
            }))?;
            services.create(&PostParams::default(), &svc).await?
        }
    };
    let ip = svc.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
    let want = format!("address {ip}");

    // The short name, through the pod's search paths (default.svc.cluster.local first);
    // CoreDNS may take a moment to see a new Service: a few tries, each a pod.
    let mut short = (String::new(), String::new());
    for _ in 0..15 {
        short = look_up(
            &cluster,
            "dns-short",
            &image,
            SERVICE,
            serde_json::json!({}),
        )
        .await?;
        if short.0 == "Succeeded" && short.1.contains(&want) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
    assert_eq!(short.0, "Succeeded", "{}", short.1);
    assert!(short.1.contains(&want), "{}", short.1);

    // The fully qualified name, and the API server's Service by its usual name.
    let fqdn = format!("{SERVICE}.default.svc.cluster.local");
    let (phase, log) = look_up(&cluster, "dns-fqdn", &image, &fqdn, serde_json::json!({})).await?;
    assert_eq!(phase, "Succeeded", "{log}");
    assert!(log.contains(&want), "{log}");
    let (phase, log) = look_up(
        &cluster,
        "dns-api",
        &image,
        "kubernetes.default",
        serde_json::json!({}),
    )
    .await?;
    assert_eq!(phase, "Succeeded", "{log}");
    assert!(log.contains("address 10.0.0.1"), "{log}");

    // A name nobody has: the module sees the lookup fail and ends (exit 1). The cluster
    // names are NXDOMAIN; the local CoreDNS forwards nothing, so the node's own search
    // paths and the bare name are refused: any of the lookup errors is a clean answer.
    let (phase, log) = look_up(
        &cluster,
        "dns-none",
        &image,
        "no-such-service",
        serde_json::json!({}),
    )
    .await?;
    assert_eq!(phase, "Failed", "{log}");
    assert!(
        [NAME_UNRESOLVABLE, "error 19", "error 20"]
            .iter()
            .any(|code| log.contains(&format!("lookup no-such-service failed: {code}"))),
        "{log}"
    );

    // hostAliases answer before any DNS.
    let (phase, log) = look_up(
        &cluster,
        "dns-alias",
        &image,
        "legacy-db",
        serde_json::json!({ "hostAliases": [{ "ip": "192.0.2.9", "hostnames": ["legacy-db"] }] }),
    )
    .await?;
    assert_eq!(phase, "Succeeded", "{log}");
    assert!(log.contains("address 192.0.2.9"), "{log}");

    // dnsPolicy None: only the pod's own configuration.
    let (phase, log) = look_up(
        &cluster,
        "dns-own",
        &image,
        &format!("{SERVICE}.default"),
        own_dns(),
    )
    .await?;
    assert_eq!(phase, "Succeeded", "{log}");
    assert!(log.contains(&want), "{log}");

    // A served component calls the Service by name over wasi:http: a hello pod behind
    // it, and the forward component sending each request to http://dns-backend/.
    let hello = cluster.push("http-hello.component", "v1").await?;
    let forward = cluster.push("http-forward.component", "v1").await?;
    let pods = cluster.pods();
    for p in ["dns-hello", "dns-forward"] {
        let _ = delete_and_wait(&pods, p, 60).await;
    }
    let mut backend = http_pod("dns-hello", NODE, &hello);
    backend.metadata.labels = Some([("app".to_owned(), SERVICE.to_owned())].into());
    pods.create(&PostParams::default(), &backend).await?;
    let target = format!("http://{SERVICE}/by-name");
    pods.create(
        &PostParams::default(),
        &forward_pod("dns-forward", NODE, &forward, &target, None),
    )
    .await?;
    wait_pod(&pods, "dns-hello", 120, "Running", |p| {
        e2e::phase(p) == "Running"
    })
    .await?;
    let front = wait_pod(&pods, "dns-forward", 120, "Running", |p| {
        e2e::phase(p) == "Running"
    })
    .await?;
    let addr = SocketAddr::new(
        front
            .status
            .and_then(|s| s.pod_ip)
            .unwrap_or_default()
            .parse()?,
        8080,
    );
    // Until kube-proxy has the new endpoint: a request at most every 300 ms, 60 s.
    let mut answer = (0, String::new());
    for _ in 0..200 {
        answer = http_get_ready(addr, "/", &[], 60).await?;
        if answer.1.starts_with("forwarded: 200\n") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert!(answer.1.starts_with("forwarded: 200\n"), "{}", answer.1);
    assert_eq!(line(&answer.1, "path"), Some("/by-name"), "{}", answer.1);
    assert_eq!(line(&answer.1, "pod"), Some("dns-hello"), "{}", answer.1);
    for p in ["dns-hello", "dns-forward"] {
        delete_and_wait(&pods, p, 60).await?;
    }
    drop(node);
    drop(net);
    Ok(())
}
