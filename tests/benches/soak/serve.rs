//! The soak's served pods and port-forwards: a `wasi:http` component (`http-hello`)
//! served at its pod IP on the soak node's own bridge, and reached through the kubelet
//! API as `kubectl port-forward` reaches it. Every round is bounded: a fixed number of
//! requests, each with its own connect and read deadline, each forward session within
//! [`FORWARD_SECS`]. Traffic goes only to the node's pod addresses and to 127.0.0.1.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Context as _;
use e2e::{Cluster, PortForward, delete_and_wait, phase, pod_condition, wait_pod, wasm_toleration};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;

/// The port the component serves on.
const PORT: u16 = 8080;
/// Plain requests a served round sends to the pod IP (besides the allocating and the
/// slow ones).
const PLAIN_REQUESTS: usize = 16;
/// Forward sessions a forward round opens, one after the other, to its pod.
const FORWARD_SESSIONS: usize = 2;
/// Requests through each forward session.
const FORWARD_REQUESTS: usize = 4;
/// The bound on one forward session: kubectl listening, its requests, its stop.
const FORWARD_SECS: u64 = 120;

/// A served pod `name` of `image` on `node`, labelled for the soak's final clear, its
/// grace period 0 (the same manifest as the e2e network tests' served pods).
pub fn served_pod(name: &str, node: &str, image: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "labels": { "bench": "soak" } },
        "spec": {
            "nodeSelector": { "kubernetes.io/arch": "wasm32-wasi", "kubernetes.io/hostname": node },
            "tolerations": wasm_toleration(),
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "web",
                "image": image,
                "ports": [{ "containerPort": PORT, "name": "http" }],
                "env": [
                    { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }
                ]
            }]
        }
    }))?)
}

/// Creates the served pod `name` and waits (up to 120 s) until it is Running and Ready.
async fn create_ready(pods: &Api<Pod>, node: &str, image: &str, name: &str) -> anyhow::Result<Pod> {
    pods.create(&PostParams::default(), &served_pod(name, node, image)?)
        .await?;
    wait_pod(pods, name, 120, "Running and Ready", |p| {
        phase(p) == "Running" && pod_condition(p, "Ready").as_deref() == Some("True")
    })
    .await
}

/// One served round: a served pod, Ready, then [`PLAIN_REQUESTS`] requests to its IP,
/// two that allocate 8 MiB and one that sleeps a second; every answer must be 200 and
/// name the path. The pod is deleted (and gone) at the end. Returns the requests sent.
pub async fn serve_round(
    pods: &Api<Pod>,
    node: &str,
    image: &str,
    name: &str,
) -> anyhow::Result<u64> {
    let pod = create_ready(pods, node, image, name).await?;
    let ip: IpAddr = pod
        .status
        .and_then(|s| s.pod_ip)
        .with_context(|| format!("{name}: Ready without a pod IP"))?
        .parse()?;
    let addr = SocketAddr::new(ip, PORT);
    let mut paths: Vec<String> = (0..PLAIN_REQUESTS).map(|i| format!("/soak/{i}")).collect();
    paths.extend([
        "/alloc/8".to_owned(),
        "/alloc/8".to_owned(),
        "/sleep/1".to_owned(),
    ]);
    let mut sent = 0u64;
    for path in &paths {
        // The first one may find the server still binding.
        let retry_secs = if sent == 0 { 60 } else { 0 };
        expect_hello(addr, path, retry_secs).await?;
        sent += 1;
    }
    delete_and_wait(pods, name, 120).await?;
    Ok(sent)
}

/// One forward round: a served pod, Ready, then [`FORWARD_SESSIONS`] sessions of
/// `kubectl port-forward` to it, one after the other, each with [`FORWARD_REQUESTS`]
/// requests (the last one allocating) and then stopped. The pod is deleted at the end.
/// Returns the sessions and the requests.
pub async fn forward_round(
    cluster: &Cluster,
    pods: &Api<Pod>,
    node: &str,
    image: &str,
    name: &str,
) -> anyhow::Result<(u64, u64)> {
    create_ready(pods, node, image, name).await?;
    let (mut sessions, mut sent) = (0u64, 0u64);
    for _ in 0..FORWARD_SESSIONS {
        let session = async {
            let forward = PortForward::start(cluster, name, PORT).await?;
            let mut n = 0u64;
            for i in 0..FORWARD_REQUESTS {
                let path = if i + 1 == FORWARD_REQUESTS {
                    "/alloc/8".to_owned()
                } else {
                    format!("/forwarded/{i}")
                };
                let retry_secs = if i == 0 { 60 } else { 0 };
                expect_hello(forward.addr(), &path, retry_secs).await?;
                n += 1;
            }
            forward.stop().await;
            anyhow::Ok(n)
        };
        sent += tokio::time::timeout(Duration::from_secs(FORWARD_SECS), session)
            .await
            .with_context(|| format!("{name}: a forward session took over {FORWARD_SECS} s"))??;
        sessions += 1;
    }
    delete_and_wait(pods, name, 120).await?;
    Ok((sessions, sent))
}

/// GETs `path` from `addr` (retrying for up to `retry_secs` while the server is not
/// answering) and checks the hello component's answer: 200, naming the path.
async fn expect_hello(addr: SocketAddr, path: &str, retry_secs: u64) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(retry_secs);
    let (code, body) = loop {
        let p = path.to_owned();
        match tokio::task::spawn_blocking(move || http_get(addr, &p)).await? {
            Ok(answer) => break answer,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => return Err(e.context(format!("GET {path} from {addr}"))),
        }
    };
    anyhow::ensure!(
        code == 200 && body.contains(&format!("path: {path}")),
        "GET {path} from {addr}: {code} {body:?}"
    );
    if path.starts_with("/alloc/") {
        anyhow::ensure!(body.contains("alloc: 8 MiB"), "GET {path}: {body:?}");
    }
    Ok(())
}

/// One HTTP/1.1 GET over a fresh connection (closed after it), bounded in time and size:
/// the status code and the body.
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.take(1 << 20).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP response: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}
