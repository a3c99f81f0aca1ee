//! `kubectl port-forward` to wasm pods, through the real API server (which relays the
//! SPDY connection to the node): a `wasi:http` component and a `wasi:sockets` echo
//! server reached from the node's loopback, and a port where nothing listens answered in
//! the kubelet's words. Traffic goes only to 127.0.0.1 and the test node's pods, a few
//! connections, each bounded in time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use e2e::{Cluster, delete_and_wait, phase, pod_condition, wait_pod};
use kube::api::PostParams;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::network::{echo_pod, http_get, http_get_ready, http_pod, networked_node};

/// A running `kubectl port-forward pod/<pod> :<port>` and the local port it listens on.
struct Forward {
    child: tokio::process::Child,
    local: u16,
    /// What kubectl wrote to stderr so far.
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Forward {
    async fn start(cluster: &Cluster, pod: &str, port: u16) -> anyhow::Result<Self> {
        let mut child = cluster
            .kubectl_command(&[
                "port-forward",
                "--address",
                "127.0.0.1",
                &format!("pod/{pod}"),
                &format!(":{port}"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting kubectl port-forward")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        // "Forwarding from 127.0.0.1:PORT -> 8080"
        let local = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                    let port = rest.split_whitespace().next().unwrap_or_default();
                    return Ok::<_, anyhow::Error>(port.parse::<u16>()?);
                }
            }
            anyhow::bail!("kubectl port-forward ended before it listened")
        })
        .await
        .context("kubectl port-forward did not listen within 60s")??;
        // Its later lines ("Handling connection for ...") must not fill the pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut err_lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
        let sink = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = err_lines.next_line().await {
                let mut s = sink
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                s.push_str(&line);
                s.push('\n');
            }
        });
        Ok(Self {
            child,
            local,
            stderr,
        })
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.local))
    }

    fn said(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits (up to 60 s) until kubectl's stderr contains `needle`; all it said.
    async fn wait_said(&self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !self.said().contains(needle) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.said()
    }

    /// Stops kubectl; what it wrote to stderr.
    async fn stop(mut self) -> String {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        self.said()
    }
}

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
    let forward = Forward::start(&cluster, "pf-web", 8080).await?;
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
    let forward = Forward::start(&cluster, "pf-echo", 7000).await?;
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
    let forward = Forward::start(&cluster, "pf-web", 9999).await?;
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
