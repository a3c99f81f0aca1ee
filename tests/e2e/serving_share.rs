//! The node's served instances shared fairly on a live node: ten pods each holding 100
//! slow requests (the node has 1000 instances) leave an eleventh pod its share, so its
//! requests are answered. Requests go only to pod addresses on the test node's own
//! bridge; every connection is closed, and the pods deleted, at the end.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, Result};
use e2e::{Cluster, create_fresh, delete_and_wait, pod_condition, wait_pod};
use tokio::io::AsyncWriteExt as _;

use crate::network::{http_get, http_get_ready, http_pod, networked_node};

/// Slow pods, and the slow requests each holds.
const SLOW_PODS: usize = 10;
const SLOW_REQUESTS: usize = 100;

/// Creates `name` (the hello component) on `node`, its requests limited to two
/// minutes, and returns its address once Ready.
async fn served(cluster: &Cluster, node: &str, name: &str, image: &str) -> Result<IpAddr> {
    let pods = cluster.pods();
    let mut pod = http_pod(name, node, image);
    // The slow requests are cut after two minutes at the latest.
    pod.metadata.annotations = Some(
        [(
            "wasm.krustlet.dev/request-timeout".to_owned(),
            "120s".to_owned(),
        )]
        .into_iter()
        .collect(),
    );
    if let Some(spec) = pod.spec.as_mut() {
        // Deleted at the end with requests in flight: cut them at once.
        spec.termination_grace_period_seconds = Some(1);
    }
    create_fresh(&pods, &pod).await?;
    let ready = wait_pod(&pods, name, 180, "Ready", |p| {
        pod_condition(p, "Ready").as_deref() == Some("True")
    })
    .await?;
    Ok(ready
        .status
        .and_then(|s| s.pod_ip)
        .with_context(|| format!("{name}: no pod IP"))?
        .parse()?)
}

/// Opens a connection to `addr` and sends a request for `path` that the pod answers
/// only after sleeping; the connection is held open by the returned stream.
async fn slow_request(addr: SocketAddr, path: &str) -> Result<tokio::net::TcpStream> {
    let mut s = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .context("connect timed out")??;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    Ok(s)
}

#[tokio::test]
async fn pods_holding_slow_requests_leave_another_pod_its_share() -> Result<()> {
    let cluster = Cluster::connect().await?;
    let node = "e2e-serving-share";
    let (_net, _node, _cidr) = networked_node(&cluster, node, 10533).await?;
    let image = cluster.push("http-hello.component", "v1").await?;
    let quiet = served(&cluster, node, "share-quiet", &image).await?;
    let quiet = SocketAddr::new(quiet, 8080);
    let (code, _) = http_get_ready(quiet, "/", &[], 60).await?;
    assert_eq!(code, 200);
    let mut slow = Vec::new();
    for i in 0..SLOW_PODS {
        let ip = served(&cluster, node, &format!("share-slow-{i}"), &image).await?;
        slow.push(SocketAddr::new(ip, 8080));
    }
    // Each slow pod gets 100 requests that sleep ten minutes: 1000, the node's whole
    // pool of instances.
    let mut held = Vec::new();
    for addr in &slow {
        http_get_ready(*addr, "/", &[], 60).await?;
        for _ in 0..SLOW_REQUESTS {
            held.push(slow_request(*addr, "/sleep/600").await?);
        }
    }
    // Once the slow pods' requests hold what they may, one more to a slow pod is refused
    // after its wait for an instance (503)...
    let last = slow[SLOW_PODS - 1];
    let refused = e2e::until(120, "a slow pod's extra request refused", || async move {
        let got = tokio::task::spawn_blocking(move || http_get(last, "/extra", &[])).await??;
        anyhow::ensure!(got.0 == 503, "answered {}: {}", got.0, got.1);
        Ok(Some(got))
    })
    .await?;
    println!("a slow pod's extra request: {}", refused.0);
    // ...while the quiet pod's requests are answered.
    for _ in 0..3 {
        let (code, body) =
            tokio::task::spawn_blocking(move || http_get(quiet, "/quiet", &[])).await??;
        assert_eq!(code, 200, "the quiet pod was refused: {body}");
    }
    drop(held);
    let pods = cluster.pods();
    delete_and_wait(&pods, "share-quiet", 120).await?;
    for i in 0..SLOW_PODS {
        delete_and_wait(&pods, &format!("share-slow-{i}"), 120).await?;
    }
    Ok(())
}
