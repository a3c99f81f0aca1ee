//! Pod networking through the real CNI reference plugins (bridge, host-local, loopback,
//! portmap): each pod its own namespace and an address from the node's pod CIDR, which
//! the controller manager assigned; `wasi:http` components served at that address;
//! addresses given back on deletion and kept across an agent restart. Requests go only
//! to pod addresses on the test node's own bridge, a few at a time, each bounded.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use e2e::{Cluster, KrustletNode, PodNet, delete_and_wait, phase, pod_condition, wait_node, wait_pod};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::PostParams;

/// A networked node `name`, ready, with its pod CIDR assigned.
async fn networked_node(cluster: &Cluster, name: &str, port: u16) -> anyhow::Result<(PodNet, KrustletNode, String)> {
    let net = PodNet::for_node(name)?;
    let flags = net.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let node = cluster.ready_node(name, port, &flags).await?;
    let node_obj = wait_node(&cluster.nodes(), name, 60, "a pod CIDR", |n: &Node| {
        n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_some()
    })
    .await?;
    let cidr = node_obj.spec.and_then(|s| s.pod_cidr).unwrap_or_default();
    Ok((net, node, cidr))
}

/// Whether `ip` is in `cidr` (IPv4).
fn within(ip: IpAddr, cidr: &str) -> bool {
    let (base, bits) = cidr.split_once('/').expect("a CIDR");
    let (IpAddr::V4(ip), Ok(IpAddr::V4(base)), Ok(bits)) = (ip, base.parse::<IpAddr>(), bits.parse::<u32>()) else {
        return false;
    };
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    u32::from(ip) & mask == u32::from(base) & mask
}

/// One HTTP/1.1 request over a fresh connection (closed after it), bounded in time;
/// the status code and the body.
fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.take(1 << 20).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP response: {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// Retries `http_get` (a server that has only just started) for up to `secs`.
async fn http_get_ready(addr: SocketAddr, path: &str, headers: &[(&str, &str)], secs: u64) -> anyhow::Result<(u16, String)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let path = path.to_owned();
        let got = tokio::task::spawn_blocking(move || {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            http_get(addr, &path, &h)
        })
        .await?;
        match got {
            Ok(r) => return Ok(r),
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn http_pod(name: &str, node: &str, image: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "labels": { "app": name } },
        "spec": {
            "nodeSelector": { "kubernetes.io/arch": "wasm32-wasi", "kubernetes.io/hostname": node },
            "tolerations": [{ "key": "kubernetes.io/arch", "operator": "Equal", "value": "wasm32-wasi" }],
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "web",
                "image": image,
                "ports": [{ "containerPort": 8080, "name": "http" }],
                "env": [
                    { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                    { "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } }
                ]
            }]
        }
    }))
    .expect("valid pod manifest")
}

#[tokio::test]
async fn a_wasi_http_pod_serves_at_its_own_address_and_gives_it_back_when_deleted() -> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    let (net, mut node, cidr) = networked_node(&cluster, "net-serve", 10401).await?;
    let image = cluster.push("http-hello.component", "v1").await?;
    let pods = cluster.pods();
    let _ = delete_and_wait(&pods, "web-a", 60).await;
    pods.create(&PostParams::default(), &http_pod("web-a", "net-serve", &image)).await?;
    let pod = wait_pod(&pods, "web-a", 120, "Running and Ready", |p| {
        phase(p) == "Running" && pod_condition(p, "Ready").as_deref() == Some("True")
    })
    .await?;
    let status = pod.status.clone().unwrap_or_default();
    let ip: IpAddr = status.pod_ip.clone().unwrap_or_default().parse()?;
    assert!(within(ip, &cidr), "pod IP {ip} is not in the node's pod CIDR {cidr}");
    assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    assert!(net.netns(&uid).exists(), "the pod's namespace is pinned");
    assert!(net.leased().contains(&ip.to_string()), "host-local holds {ip}: {:?}", net.leased());

    // Served at the pod's address on its containerPort: method, path, headers and the
    // pod's name (from the downward API) come back.
    let addr = SocketAddr::new(ip, 8080);
    let (code, body) = http_get_ready(addr, "/hello?x=1", &[("X-Krustlet-Test", "yes")], 60).await?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("GET"), "{body}");
    assert!(body.contains("/hello?x=1"), "{body}");
    assert!(body.to_ascii_lowercase().contains("x-krustlet-test: yes"), "{body}");
    assert!(body.contains("web-a"), "{body}");
    // Each request an access log line in the container's log.
    let logs = cluster.kubectl(&["logs", "web-a"]).await?;
    assert!(logs.contains("\"GET /hello?x=1 HTTP/1.1\" 200"), "{logs}");

    // There is no process to exec into: kubectl says so.
    let exec = cluster.kubectl(&["exec", "web-a", "--", "ls"]).await;
    let said = format!("{exec:?}");
    assert!(exec.is_err() && said.contains("exec is not supported on krustlet nodes"), "{said}");

    // An agent restart: the pod keeps its address and serves again from it.
    node.restart(&net.flags().iter().map(String::as_str).collect::<Vec<_>>())?;
    let (code, _) = http_get_ready(addr, "/again", &[], 120).await?;
    assert_eq!(code, 200);
    let after = pods.get("web-a").await?;
    assert_eq!(after.status.and_then(|s| s.pod_ip), Some(ip.to_string()));

    // Deleted: CNI DEL gives the address back, the namespace goes, nothing answers.
    delete_and_wait(&pods, "web-a", 120).await?;
    let gone = tokio::time::timeout(Duration::from_secs(60), async {
        while net.netns(&uid).exists() || net.leased().contains(&ip.to_string()) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "namespace or lease left: {:?}", net.leased());
    let refused = tokio::task::spawn_blocking(move || http_get(addr, "/", &[])).await?;
    assert!(refused.is_err(), "{refused:?}");
    drop(node);
    drop(net);
    Ok(())
}
