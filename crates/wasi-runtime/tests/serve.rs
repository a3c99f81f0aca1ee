//! Serving the hello `wasi:http` component (target/wasm/http-hello.component.wasm, built
//! by hack/build-wasm) in a network namespace of the test's own: requests answered with
//! access log lines, the memory limit per instance, stop and kill. Needs root (network
//! namespaces).

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use network::NetNs;
use wasi_runtime::{ContainerSpec, Engine, EngineConfig, Exit};

fn component() -> Arc<[u8]> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../target/wasm/http-hello.component.wasm"
    );
    let bytes =
        std::fs::read(path).expect("target/wasm/http-hello.component.wasm (run hack/build-wasm)");
    Arc::from(bytes)
}

/// A namespace with its loopback up, so the test reaches the server from inside it.
async fn namespace(dir: &tempfile::TempDir) -> Arc<NetNs> {
    let path = dir.path().join("ns");
    let ns = NetNs::create(&path)
        .await
        .expect("a network namespace (root)");
    let up = std::process::Command::new("nsenter")
        .arg(format!("--net={}", path.display()))
        .args(["ip", "link", "set", "lo", "up"])
        .status()
        .expect("nsenter");
    assert!(up.success());
    Arc::new(ns)
}

fn spec(
    dir: &tempfile::TempDir,
    net: Option<Arc<NetNs>>,
    memory_limit: Option<u64>,
) -> ContainerSpec {
    ContainerSpec {
        module_key: "sha256:hello-http".to_owned(),
        wasm: component(),
        args: vec!["web".to_owned()],
        env: vec![("POD_NAME".to_owned(), "pod-under-test".to_owned())],
        log_path: dir.path().join("web.log"),
        memory_limit,
        preopens: Vec::new(),
        network: net,
        http_port: 8080,
        allowed_outbound: None,
    }
}

/// One request from inside the namespace, with `Connection: close`: status and body.
async fn get(net: &NetNs, path: &'static str) -> (u16, String) {
    net.run(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut s = loop {
            match std::net::TcpStream::connect(("127.0.0.1", 8080)) {
                Ok(s) => break s,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("connect: {e}"),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: pod\r\nX-Probe: 1\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).expect("write");
        let mut raw = String::new();
        s.read_to_string(&mut raw).expect("read");
        let status = raw
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status");
        let body = raw
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    })
    .await
    .expect("the namespace thread")
}

#[tokio::test]
async fn a_served_component_answers_each_request_from_a_fresh_instance_and_logs_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = namespace(&dir).await;
    let engine = Engine::new(&EngineConfig::default()).expect("engine");
    let running = engine
        .start(spec(&dir, Some(net.clone()), None))
        .await
        .expect("served");
    for i in 0..3 {
        let (status, body) = get(&net, "/hello?x=1").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("path: /hello?x=1"), "{body}");
        assert!(body.contains("pod: pod-under-test"), "{body}");
        assert!(body.contains("x-probe: 1"), "request {i}: {body}");
    }
    let log = std::fs::read_to_string(dir.path().join("web.log")).expect("log");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"GET /hello?x=1 HTTP/1.1\" 200"))
        .collect();
    assert_eq!(lines.len(), 3, "{log}");
    assert!(lines[0].contains(" stdout F 127.0.0.1:"), "{log}");
    // Stopped with a grace period and nothing in flight: it ends at once, cleanly.
    let killer = running.killer();
    let began = std::time::Instant::now();
    killer.stop(Duration::from_secs(30));
    let exit = tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .expect("stopped");
    assert_eq!(exit, Exit::Code(0));
    assert!(began.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn each_instance_gets_the_memory_limit_and_a_failure_is_a_500_with_the_reason_logged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = namespace(&dir).await;
    let engine = Engine::new(&EngineConfig::default()).expect("engine");
    // Far below what the component's memories need at instantiation.
    let running = engine
        .start(spec(&dir, Some(net.clone()), Some(16 << 10)))
        .await
        .expect("served");
    let (status, body) = get(&net, "/").await;
    assert_eq!(status, 500, "{body}");
    let log = std::fs::read_to_string(dir.path().join("web.log")).expect("log");
    assert!(
        log.contains("stderr F request GET / HTTP/1.1 failed:"),
        "{log}"
    );
    assert!(log.contains("\"GET / HTTP/1.1\" 500"), "{log}");
    // The server itself keeps serving (each request its own instance) until killed.
    let (status, _) = get(&net, "/").await;
    assert_eq!(status, 500);
    running.killer().kill();
    let exit = tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .expect("killed");
    assert_eq!(exit, Exit::Killed);
}

#[tokio::test]
async fn a_component_to_serve_needs_a_pod_network() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::new(&EngineConfig::default()).expect("engine");
    let err = engine
        .start(spec(&dir, None, None))
        .await
        .expect_err("no network");
    assert!(err.to_string().contains("has no pod network"), "{err}");
}
