//! `kubectl port-forward` to wasm pods, through the real API server (which relays the
//! SPDY connection to the node): a `wasi:http` component and a `wasi:sockets` echo
//! server reached from the node's loopback, and a port where nothing listens answered in
//! the kubelet's words. Traffic goes only to 127.0.0.1 and the test node's pods, a few
//! connections, each bounded in time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use e2e::{Cluster, PortForward, delete_and_wait, phase, pod_condition, wait_pod};
use kube::api::PostParams;

use crate::network::{echo_pod, http_get, http_get_ready, http_pod, networked_node};

/// Sends `data` over a fresh connection to `addr`, half-closes it and reads until the
/// other side closes; bounded in time and size.
fn round_trip(addr: SocketAddr, data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.set_write_timeout(Some(Duration::from_secs(60)))?;
    let (mut r, mut w) = (s.try_clone()?, s);
    let data = data.to_vec();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        w.write_all(&data)?;
        w.shutdown(std::net::Shutdown::Write)
    });
    let mut back = Vec::new();
    (&mut r).take(8 << 20).read_to_end(&mut back)?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    Ok(back)
}

#[tokio::test]
async fn kubectl_port_forward_reaches_wasm_pods_and_reports_what_it_cannot() -> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    let (net, node, _) = networked_node(&cluster, "net-forward", 10406).await?;
    let pods = cluster.pods();

    // A wasi:http component, served on 8080 in the pod's namespace.
    let web = cluster.push("http-hello.component", "v1").await?;
    let _ = delete_and_wait(&pods, "pf-web", 60).await;
    pods.create(
        &PostParams::default(),
        &http_pod("pf-web", "net-forward", &web),
    )
    .await?;
    // A wasi:sockets echo server on 7000.
    let echo = cluster.push("http-echo.component", "v1").await?;
    let _ = delete_and_wait(&pods, "pf-echo", 60).await;
    pods.create(
        &PostParams::default(),
        &echo_pod("pf-echo", "net-forward", &echo),
    )
    .await?;
    let ready = |p: &k8s_openapi::api::core::v1::Pod| {
        phase(p) == "Running" && pod_condition(p, "Ready").as_deref() == Some("True")
    };
    let web_pod = wait_pod(&pods, "pf-web", 120, "Running and Ready", ready).await?;
    wait_pod(&pods, "pf-echo", 120, "Running and Ready", ready).await?;

    // HTTP through the forward, several connections over one upgraded session.
    let forward = PortForward::start(&cluster, "pf-web", 8080).await?;
    let (code, body) = http_get_ready(forward.addr(), "/through/kubectl", &[], 60).await?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("/through/kubectl"), "{body}");
    assert!(body.contains("pf-web"), "{body}");
    for i in 0..3 {
        let addr = forward.addr();
        let (code, body) =
            tokio::task::spawn_blocking(move || http_get(addr, &format!("/again/{i}"), &[]))
                .await??;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(&format!("/again/{i}")), "{body}");
    }
    let said = forward.stop().await;
    assert!(!said.contains("error"), "{said}");

    // A megabyte through the echo server and back, byte for byte (many SPDY frames each
    // way), then the pod's half-close ends the forwarded connection.
    let forward = PortForward::start(&cluster, "pf-echo", 7000).await?;
    let payload: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 31 % 251) as u8).collect();
    let addr = forward.addr();
    let sent = payload.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let back = loop {
        let sent = sent.clone();
        match tokio::task::spawn_blocking(move || round_trip(addr, &sent)).await? {
            Ok(back) if !back.is_empty() => break back,
            // The server may still be binding: an empty answer is a refused forward.
            _ if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => anyhow::bail!("no echo through the forward: {other:?}"),
        }
    };
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "the echoed bytes differ");
    forward.stop().await;

    // Nothing listens on 9999: the connection closes and kubectl shows the node's
    // message.
    let forward = PortForward::start(&cluster, "pf-web", 9999).await?;
    let addr = forward.addr();
    let got =
        tokio::task::spawn_blocking(move || round_trip(addr, b"GET / HTTP/1.0\r\n\r\n")).await?;
    assert!(got.as_ref().map_or(true, Vec::is_empty), "{got:?}");
    // kubectl writes the error stream's text once it has read it.
    let said = forward.wait_said("error forwarding port 9999").await;
    forward.stop().await;
    assert!(
        said.contains("error forwarding port 9999 to pod default/pf-web"),
        "kubectl said: {said}"
    );
    let uid = web_pod.metadata.uid.clone().unwrap_or_default();
    assert!(said.contains(&uid), "kubectl said: {said}");

    // The pod is untouched by all this.
    let still = pods.get("pf-web").await?;
    assert!(ready(&still));
    assert_eq!(
        still
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|c| c.first().map(|c| c.restart_count)),
        Some(0)
    );

    delete_and_wait(&pods, "pf-web", 60).await?;
    delete_and_wait(&pods, "pf-echo", 60).await?;
    drop(node);
    drop(net);
    Ok(())
}
