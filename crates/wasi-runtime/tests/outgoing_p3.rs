//! Outgoing `wasi:http` 0.3 requests (`wasi:http/client.send`) of a served WASI 0.3
//! component (target/wasm/p3-py-forward, built from workloads/p3/forward.py by
//! componentize-py) in a network namespace of the test's own, with an upstream that
//! listens only inside that namespace: a request reaches it, so it went out from the
//! pod's namespace; a pod's allow-list refuses a request to a host it does not name
//! (the guest gets `HTTP-request-denied`, the container's log says so, the upstream sees
//! no connection) as it does for WASI 0.2 (target/wasm/http-forward).
//! Needs root (network namespaces).

mod common;
#[path = "common/compiled.rs"]
mod compiled;
#[path = "common/http.rs"]
mod http;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::send;
use network::NetNs;
use wasi_runtime::{AllowList, ContainerSpec, Engine, Running};

/// What the container's log says of a refused request to the upstream.
const REFUSAL: &str = "krustlet: outbound connection refused by the pod's allowed outbound \
                       hosts: http://127.0.0.1:9000";

/// An HTTP server on 127.0.0.1:9000 inside a namespace that answers each request
/// `200 hi` and keeps the request line of each connection (or `""` if none came).
struct Upstream {
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    async fn start(net: &NetNs) -> Self {
        let listener = net
            .run(|| std::net::TcpListener::bind(("127.0.0.1", 9000)))
            .await
            .expect("the namespace thread")
            .expect("bind 9000");
        listener.set_nonblocking(true).expect("nonblocking");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sn, st) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((c, _)) => sn.lock().expect("lock").push(answer(c)),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { seen, stop }
    }

    /// The request line of each connection so far.
    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads a request's head from `c` and answers `200 hi`: its request line.
fn answer(mut c: std::net::TcpStream) -> String {
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut buf = [0; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 << 10 {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi");
    let head = String::from_utf8_lossy(&head);
    head.lines().next().unwrap_or("").to_owned()
}

/// `name` served in a namespace of its own beside an [`Upstream`], its requests sent
/// to `target`, with `allowed_outbound`.
async fn serve(
    name: &str,
    target: &str,
    allowed_outbound: Option<AllowList>,
) -> (Engine, tempfile::TempDir, Arc<NetNs>, Running, Upstream) {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = common::namespace(&dir).await;
    let upstream = Upstream::start(&net).await;
    let engine = Engine::new(&compiled::engine_config()).expect("engine");
    let spec = ContainerSpec {
        request_timeout: None,
        reuse: wasi_runtime::ReuseSpec::default(),
        dns: None,
        pod_id: String::new(),
        module_key: format!("sha256:{name}"),
        wasm: common::wasm(name),
        args: vec!["web".to_owned()],
        env: vec![("TARGET_URL".to_owned(), target.to_owned())],
        log_path: dir.path().join("web.log"),
        memory_limit: Some(256 << 20),
        preopens: Vec::new(),
        network: Some(net.clone()),
        http_port: 8080,
        cpu: wasi_runtime::CpuShare::default(),
        allowed_outbound,
    };
    let running = engine.start(spec).await.expect("served");
    (engine, dir, net, running, upstream)
}

fn log(dir: &tempfile::TempDir) -> String {
    std::fs::read_to_string(dir.path().join("web.log")).expect("log")
}

async fn kill(running: Running) {
    running.killer().kill();
    let _ = tokio::time::timeout(Duration::from_secs(30), running.wait()).await;
}

/// The upstream listens in the pod's namespace alone: its answer in the component's
/// shows that the request went out from there. Several requests, each with its own
/// path, to one reused instance: each answer carries the whole upstream body.
#[tokio::test]
async fn without_an_allow_list_p3_requests_go_out_from_the_pods_namespace() {
    let (_engine, dir, net, running, upstream) =
        serve("p3-py-forward", "http://127.0.0.1:9000", None).await;
    let mut expected = Vec::new();
    for i in 0..10 {
        let path = format!("/through/p3?n={i}");
        let (status, head, body) = send(&net, &path).await;
        assert_eq!(
            (status, body.as_str()),
            (200, "upstream 200: hi"),
            "{path}: {head}\n{}",
            log(&dir)
        );
        expected.push(format!("GET {path} HTTP/1.1"));
    }
    assert_eq!(upstream.seen(), expected);
    assert!(!log(&dir).contains("refused"), "{}", log(&dir));
    kill(running).await;
}

#[tokio::test]
async fn an_allow_list_refuses_a_p3_request_to_a_host_it_does_not_name() {
    refused_by_a_list_naming_another_host(
        "p3-py-forward",
        "http://127.0.0.1:9000",
        "/denied",
        "HTTP-request-denied\n",
    )
    .await;
}

/// The refusal above is the list's doing: the same pattern naming the upstream lets
/// the request through.
#[tokio::test]
async fn an_allow_list_naming_the_upstream_lets_a_p3_request_through() {
    let allow = AllowList::parse("http://127.0.0.1:9000").expect("allow-list");
    let (_engine, dir, net, running, upstream) =
        serve("p3-py-forward", "http://127.0.0.1:9000", Some(allow)).await;
    let (status, head, body) = send(&net, "/allowed").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "upstream 200: hi"),
        "{head}\n{}",
        log(&dir)
    );
    assert_eq!(upstream.seen(), ["GET /allowed HTTP/1.1"]);
    assert!(!log(&dir).contains(REFUSAL), "{}", log(&dir));
    kill(running).await;
}

/// The WASI 0.2 forward component under the same list: refused the same way, so 0.3
/// and 0.2 requests obey one allow-list.
#[tokio::test]
async fn an_allow_list_refuses_a_p2_request_the_same_way() {
    refused_by_a_list_naming_another_host(
        "http-forward",
        "http://127.0.0.1:9000/p2",
        "/",
        "outgoing request failed: HTTP-request-denied\n",
    )
    .await;
}

/// `name` sending to `target` under a list that names another host only: `path` is
/// answered 502 with `answer`, the log has one refusal line, the upstream sees nothing.
async fn refused_by_a_list_naming_another_host(name: &str, target: &str, path: &str, answer: &str) {
    let allow = AllowList::parse("http://other-host:9000").expect("allow-list");
    let (_engine, dir, net, running, upstream) = serve(name, target, Some(allow)).await;
    let (status, head, body) = send(&net, path).await;
    assert_eq!(
        (status, body.as_str()),
        (502, answer),
        "{head}\n{}",
        log(&dir)
    );
    let log = log(&dir);
    assert_eq!(
        log.lines().filter(|l| l.contains(REFUSAL)).count(),
        1,
        "{log}"
    );
    // The accept loop polls every 5 ms: a connection would be in by now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.seen(), Vec::<String>::new());
    kill(running).await;
}
