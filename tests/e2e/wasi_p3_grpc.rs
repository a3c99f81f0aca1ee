//! A gRPC service written in Python for WASI 0.3 (`p3-py-grpc`: framing and protobuf by
//! hand) as a Deployment behind a ClusterIP Service: the kubelet's `grpc` readiness probe
//! (`grpc.health.v1.Health/Check` over HTTP/2 without TLS) passes against the component
//! and makes it Ready, and a unary call through the Service over HTTP/2 with prior
//! knowledge (curl, built with nghttp2: another HTTP/2 implementation than the node's
//! hyper) gets its message echoed and `grpc-status: 0` in the trailers; a method the
//! service lacks gets 12 (UNIMPLEMENTED) there.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use anyhow::{Context as _, Result, bail, ensure};
use e2e::{
    Cluster, deployment, endpoints_become, fresh_namespace, ready_pods, remove_namespace,
    rolled_out, service, until,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, LogParams, PostParams};

use crate::network::networked_node;

const NODE: &str = "p3-grpc";

/// `message` as a protobuf message of one string field 1, in a gRPC frame (not
/// compressed, its length as a big-endian u32).
fn frame(message: &str) -> Vec<u8> {
    let mut msg = vec![0x0a];
    let mut len = message.len();
    while len >= 0x80 {
        msg.push((len & 0x7f) as u8 | 0x80);
        len >>= 7;
    }
    msg.push(len as u8);
    msg.extend_from_slice(message.as_bytes());
    let mut framed = vec![0];
    framed.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(u32::MAX).to_be_bytes());
    framed.extend_from_slice(&msg);
    framed
}

/// What a unary gRPC call got back: the HTTP version curl used, the response's headers
/// and trailers (names lower case) and its body.
#[derive(Debug)]
struct Answer {
    version: String,
    headers: Vec<(String, String)>,
    trailers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `Name: value` lines into pairs, the names lower case.
fn fields(block: &str) -> Vec<(String, String)> {
    block
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect()
}

/// A unary call of `method` with `body` at `addr`: a POST over HTTP/2 with prior
/// knowledge, as a gRPC client makes it, bounded to 60 s.
async fn call(addr: SocketAddr, method: &str, body: &[u8]) -> Result<Answer> {
    let dir = tempfile::tempdir()?;
    let (req, head, out) = (
        dir.path().join("req"),
        dir.path().join("head"),
        dir.path().join("body"),
    );
    std::fs::write(&req, body)?;
    let done = tokio::process::Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "--max-time", "60"])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg("--data-binary")
        .arg(format!("@{}", req.display()))
        .arg("-D")
        .arg(&head)
        .arg("-o")
        .arg(&out)
        .args(["-w", "%{http_version}"])
        .arg(format!("http://{addr}{method}"))
        .output()
        .await
        .context("running curl")?;
    ensure!(
        done.status.success(),
        "curl {method} at {addr}: {}",
        String::from_utf8_lossy(&done.stderr).trim()
    );
    // curl writes the header block, a blank line, then the trailers.
    let head = std::fs::read_to_string(&head)?;
    let (headers, trailers) = head.split_once("\r\n\r\n").unwrap_or((&head, ""));
    Ok(Answer {
        version: String::from_utf8(done.stdout)?,
        headers: fields(headers),
        trailers: fields(trailers),
        body: std::fs::read(&out)?,
    })
}

/// The string field 1 of the message in gRPC frame `framed`.
fn echoed(framed: &[u8]) -> Result<String> {
    let (head, msg) = framed.split_at_checked(5).context("no frame")?;
    ensure!(head[0] == 0, "a compressed frame");
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    ensure!(
        msg.len() == len,
        "a frame of {len} bytes holds {}",
        msg.len()
    );
    let (&tag, mut rest) = msg.split_first().context("an empty message")?;
    ensure!(tag == 0x0a, "not string field 1: {msg:?}");
    let (mut n, mut shift) = (0usize, 0);
    loop {
        let (&b, more) = rest.split_first().context("a cut length")?;
        rest = more;
        n |= usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    ensure!(rest.len() == n, "field 1 of {n} bytes, {} left", rest.len());
    Ok(String::from_utf8(rest.to_vec())?)
}

#[test]
fn messages_are_framed_and_read_back() -> Result<()> {
    assert_eq!(frame("hi"), [0, 0, 0, 0, 4, 0x0a, 2, b'h', b'i']);
    let long = "x".repeat(300);
    assert_eq!(&frame(&long)[5..8], [0x0a, 0xac, 0x02]);
    assert_eq!(echoed(&frame(&long))?, long);
    assert!(
        echoed(&[0, 0, 0, 0, 3, 0x0a, 2, b'h']).is_err(),
        "cut short"
    );
    assert!(echoed(&[0, 0, 0, 0, 2, 0x08, 1]).is_err(), "not a string");
    Ok(())
}

#[tokio::test]
async fn a_python_grpc_service_is_ready_by_the_kubelets_grpc_probe_and_answers_over_http2()
-> Result<()> {
    let cluster = Cluster::connect().await?;
    let (net, node, _) = networked_node(&cluster, NODE, 10588).await?;
    let image = cluster.push("p3-py-grpc.component", "v1").await?;
    let ns = fresh_namespace(&cluster, "e2e-p3-grpc").await?;
    let result = grpc(&cluster, &ns, &image).await;
    let removed = remove_namespace(&cluster, &ns).await;
    drop(node);
    drop(net);
    result?;
    removed
}

async fn grpc(cluster: &Cluster, ns: &str, image: &str) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), ns);
    let vip = service(
        cluster,
        ns,
        "echo",
        serde_json::json!([{ "name": "grpc", "port": 9090, "targetPort": "grpc", "appProtocol": "kubernetes.io/h2c" }]),
    )
    .await?;
    let echo = deployment(
        "echo",
        NODE,
        1,
        serde_json::json!({}),
        serde_json::json!({
            "containers": [{
                "name": "grpc",
                "image": image,
                "ports": [{ "containerPort": 9090, "name": "grpc" }],
                // The overall health: no service name.
                "readinessProbe": { "grpc": { "port": 9090 }, "periodSeconds": 1 }
            }]
        }),
    )?;
    deployments.create(&PostParams::default(), &echo).await?;
    // The first start pulls and compiles CPython (20 MB): bounded generously.
    rolled_out(&deployments, "echo", 1, 300).await?;
    // The kubelet's probe calls reached the component over HTTP/2 and were answered (its
    // access log has them), and the pod is Ready. In that order: the Deployment, and a
    // look at the pod, may catch an instant in which the kubelet reported the container
    // ready before its first probe.
    let name = pods
        .list(&ListParams::default().labels("app=echo"))
        .await?
        .items
        .into_iter()
        .find_map(|p| p.metadata.name)
        .context("no pod")?;
    let probed = until(60, "a probe answered in the pod's log", || {
        let (pods, name) = (pods.clone(), name.clone());
        async move {
            let logs = pods.logs(&name, &LogParams::default()).await?;
            Ok(logs
                .lines()
                .find(|l| l.contains("/grpc.health.v1.Health/Check HTTP/2.0\" 200"))
                .map(str::to_owned))
        }
    })
    .await?;
    println!("{probed}");
    let ready = ready_pods(&pods, "echo", 1, 60).await?;
    let ip = ready
        .get(&name)
        .with_context(|| format!("{name} is not the ready pod: {ready:?}"))?;
    endpoints_become(cluster, ns, "echo", &BTreeSet::from([ip.clone()]), 120).await?;

    // Through the Service (kube-proxy may still be taking up the endpoint).
    let addr = SocketAddr::new(vip, 9090);
    let said = format!("hello over HTTP/2 from {ns}");
    let answer = until(60, "an answer through the Service", || {
        let body = frame(&said);
        async move { call(addr, "/krustlet.test.Echo/Say", &body).await.map(Some) }
    })
    .await?;
    // Errors, not panics, in here: the namespace is removed whatever happens.
    ensure!(answer.version == "2", "not over HTTP/2: {answer:?}");
    ensure!(
        answer
            .headers
            .contains(&("content-type".into(), "application/grpc".into())),
        "{answer:?}"
    );
    ensure!(echoed(&answer.body)? == said, "not echoed: {answer:?}");
    ensure!(
        answer.trailer("grpc-status") == Some("0"),
        "no grpc-status 0 in the trailers: {answer:?}"
    );
    // A method the service does not have: the status is read from the trailers.
    let unknown = call(addr, "/krustlet.test.Echo/Shout", &frame(&said)).await?;
    ensure!(
        unknown.trailer("grpc-status") == Some("12"),
        "no grpc-status 12 in the trailers: {unknown:?}"
    );
    if !unknown.body.is_empty() {
        bail!("an unimplemented method answered a message: {unknown:?}");
    }
    Ok(())
}
