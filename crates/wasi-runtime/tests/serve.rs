//! Serving the hello `wasi:http` component (target/wasm/http-hello.component.wasm, built
//! by hack/build-wasm) in a network namespace of the test's own: requests answered with
//! access log lines, the container's memory limit over its instances, stop and kill; the
//! instance pool (with the forward component, whose requests wait on an upstream that
//! holds them): a full pool answers 503 and serving goes on, a pod's share of it queues
//! requests, a pod holding slow requests leaves another its share, a request past its
//! time limit is answered 504.
//! Needs root (network namespaces).

mod common;
#[path = "common/http.rs"]
mod http;

use http::send;

use std::sync::Arc;
use std::time::Duration;

use network::NetNs;
use wasi_runtime::{ContainerSpec, Engine, EngineConfig, Exit, Running, ServingPool};

fn component() -> Arc<[u8]> {
    common::wasm("http-hello")
}

fn spec(
    dir: &tempfile::TempDir,
    net: Option<Arc<NetNs>>,
    memory_limit: Option<u64>,
) -> ContainerSpec {
    ContainerSpec {
        request_timeout: None,
        reuse: wasi_runtime::ReuseSpec::default(),
        dns: None,
        pod_id: String::new(),
        module_key: "sha256:hello-http".to_owned(),
        wasm: component(),
        args: vec!["web".to_owned()],
        env: vec![("POD_NAME".to_owned(), "pod-under-test".to_owned())],
        log_path: dir.path().join("web.log"),
        memory_limit,
        preopens: Vec::new(),
        network: net,
        http_port: 8080,
        cpu: wasi_runtime::CpuShare::default(),
        allowed_outbound: None,
    }
}

/// One request from inside the namespace, with `Connection: close`: status and body.
async fn get(net: &NetNs, path: &'static str) -> (u16, String) {
    let (status, _, body) = send(net, path).await;
    (status, body)
}

#[tokio::test]
async fn a_served_component_answers_each_request_from_a_fresh_instance_and_logs_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = common::namespace(&dir).await;
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
    let access = |l: &str| l.contains("\"GET /hello?x=1 HTTP/1.1\" 200");
    let log = http::log_when(&dir, |log| log.lines().filter(|l| access(l)).count() >= 3).await;
    let lines: Vec<&str> = log.lines().filter(|l| access(l)).collect();
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
async fn an_instance_past_the_memory_limit_is_a_500_with_the_reason_logged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = common::namespace(&dir).await;
    let engine = Engine::new(&EngineConfig::default()).expect("engine");
    // Far below what the component's memories need at instantiation.
    let running = engine
        .start(spec(&dir, Some(net.clone()), Some(16 << 10)))
        .await
        .expect("served");
    let (status, body) = get(&net, "/").await;
    assert_eq!(status, 500, "{body}");
    let log = http::log_when(&dir, |log| log.contains("\"GET / HTTP/1.1\" 500")).await;
    assert!(
        log.contains("stderr F request GET / HTTP/1.1 failed:") && log.contains("memory limit"),
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

/// An upstream in the namespace on 127.0.0.1:9000 that accepts connections and never
/// answers, holding each forward instance until released.
struct Upstream {
    held: Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Upstream {
    async fn start(net: &NetNs) -> Self {
        let listener = net
            .run(|| std::net::TcpListener::bind(("127.0.0.1", 9000)))
            .await
            .expect("the namespace thread")
            .expect("bind 9000");
        listener.set_nonblocking(true).expect("nonblocking");
        let held = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (h, st) = (held.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((c, _)) => h.lock().expect("lock").push(c),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { held, stop }
    }

    /// Waits until `n` requests are held.
    async fn holding(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.held.lock().expect("lock").len() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{n} requests never held"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Closes the listener and every held connection: the instances answer 502.
    fn release(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.held.lock().expect("lock").clear();
    }
}

fn forward_spec(dir: &tempfile::TempDir, net: Arc<NetNs>) -> ContainerSpec {
    let mut spec = spec(dir, Some(net), Some(64 << 20));
    spec.module_key = "sha256:forward".to_owned();
    spec.wasm = common::wasm("http-forward");
    spec.env
        .push(("TARGET_URL".to_owned(), "http://127.0.0.1:9000/".to_owned()));
    spec
}

/// An engine whose serving pool holds `instances`, at most `per_pod` for one pod.
fn pool_engine(instances: u32, per_pod: usize) -> Engine {
    Engine::new(&EngineConfig {
        serving_pool: ServingPool {
            instances,
            per_pod,
            ..ServingPool::default()
        },
        ..EngineConfig::default()
    })
    .expect("engine")
}

/// The forward component served from a pool of `instances` (`per_pod` for it) in a
/// namespace of its own, with the upstream it calls (and the engine, kept for as long
/// as the test serves).
async fn forward_in_pool(
    instances: u32,
    per_pod: usize,
) -> (Engine, tempfile::TempDir, Arc<NetNs>, Running, Upstream) {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = common::namespace(&dir).await;
    let engine = pool_engine(instances, per_pod);
    let running = engine
        .start(forward_spec(&dir, net.clone()))
        .await
        .expect("served");
    let upstream = Upstream::start(&net).await;
    (engine, dir, net, running, upstream)
}

#[tokio::test]
async fn a_full_instance_pool_answers_503_and_serving_goes_on() {
    let (_engine, dir, net, running, upstream) = forward_in_pool(2, 100).await;
    // Two requests take the node's two instances and wait on the upstream.
    let held: Vec<_> = (0..2)
        .map(|_| {
            let net = net.clone();
            tokio::spawn(async move { send(&net, "/held").await })
        })
        .collect();
    upstream.holding(2).await;
    // More than the pool holds: refused once they waited their turn in vain, with a
    // hint to retry.
    let more: Vec<_> = (0..3)
        .map(|_| {
            let net = net.clone();
            tokio::spawn(async move { send(&net, "/more").await })
        })
        .collect();
    for m in more {
        let (status, head, body) = m.await.expect("client");
        assert_eq!(status, 503, "{head}\n{body}");
        assert!(head.to_lowercase().contains("retry-after: 1"), "{head}");
    }
    let log = std::fs::read_to_string(dir.path().join("web.log")).expect("log");
    assert!(
        log.contains("request GET /more HTTP/1.1 refused: no instance of the pod was free"),
        "{log}"
    );
    // The held ones finish (the upstream went away) and the pool serves again.
    upstream.release();
    for h in held {
        let (status, _, body) = h.await.expect("client");
        assert_eq!(status, 502, "{body}");
    }
    let (status, body) = get(&net, "/after").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("outgoing request failed"), "{body}");
    running.killer().kill();
    let exit = tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .expect("killed");
    assert_eq!(exit, Exit::Killed);
}

#[tokio::test]
async fn requests_beyond_a_pods_share_of_the_pool_wait_their_turn() {
    let (_engine, _dir, net, running, upstream) = forward_in_pool(8, 1).await;
    let first = {
        let net = net.clone();
        tokio::spawn(async move { send(&net, "/first").await })
    };
    upstream.holding(1).await;
    let second = {
        let net = net.clone();
        tokio::spawn(async move { send(&net, "/second").await })
    };
    // The second waits for the pod's one instance (neither refused nor sent upstream).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished());
    assert_eq!(upstream.held.lock().expect("lock").len(), 1);
    upstream.release();
    for (name, h) in [("first", first), ("second", second)] {
        let (status, _, body) = h.await.expect("client");
        assert_eq!(status, 502, "{name}: {body}");
    }
    running.killer().kill();
    let _ = tokio::time::timeout(Duration::from_secs(10), running.wait()).await;
}

/// A pod holding more slow requests than the node has instances (ten of them, the
/// attack, held by an upstream that never answers) leaves another pod its reserve: the
/// other pod's requests are answered.
#[tokio::test]
async fn a_pod_holding_slow_requests_leaves_another_pod_its_share_of_the_pool() {
    let engine = pool_engine(16, 100);
    let quiet_dir = tempfile::tempdir().expect("tempdir");
    let quiet_net = common::namespace(&quiet_dir).await;
    let quiet = engine
        .start(spec(&quiet_dir, Some(quiet_net.clone()), None))
        .await
        .expect("served");
    let dir = tempfile::tempdir().expect("tempdir");
    let net = common::namespace(&dir).await;
    let greedy = engine
        .start(forward_spec(&dir, net.clone()))
        .await
        .expect("served");
    let upstream = Upstream::start(&net).await;
    let held: Vec<_> = (0..20)
        .map(|_| {
            let net = net.clone();
            tokio::spawn(async move { send(&net, "/held").await })
        })
        .collect();
    // Sixteen instances, two served pods: each is guaranteed eight.
    upstream.holding(8).await;
    for _ in 0..3 {
        let (status, body) = get(&quiet_net, "/quiet").await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(upstream.held.lock().expect("lock").len(), 8);
    upstream.release();
    for h in held {
        let (status, _, body) = h.await.expect("client");
        assert!(status == 502 || status == 503, "{status}: {body}");
    }
    for running in [quiet, greedy] {
        running.killer().kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), running.wait()).await;
    }
}

/// A request past its pod's time limit is cut alone and answered 504; the container
/// serves on.
#[tokio::test]
async fn a_request_past_its_time_limit_is_answered_504() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = common::namespace(&dir).await;
    let engine = pool_engine(8, 8);
    let mut spec = forward_spec(&dir, net.clone());
    spec.request_timeout = Some(Duration::from_secs(1));
    let running = engine.start(spec).await.expect("served");
    let upstream = Upstream::start(&net).await;
    let (status, _, body) = send(&net, "/slow").await;
    assert_eq!(status, 504, "{body}");
    let log = std::fs::read_to_string(dir.path().join("web.log")).expect("log");
    assert!(
        log.contains("request GET /slow HTTP/1.1 cut: it took longer than its time limit of 1s"),
        "{log}"
    );
    upstream.release();
    let (status, body) = get(&net, "/after").await;
    assert_eq!(status, 502, "{body}");
    running.killer().kill();
    let _ = tokio::time::timeout(Duration::from_secs(10), running.wait()).await;
}

#[tokio::test]
async fn the_memory_limit_holds_for_pooled_instances() {
    let engine = pool_engine(4, 4);
    // The same component, in two pods of one engine: one limit too small for its
    // memories, one enough. Pool slots are 4 GiB: only the limiter tells them apart.
    for (limit, expected) in [(16 << 10, 500), (64 << 20, 200), (16 << 10, 500)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let net = common::namespace(&dir).await;
        let running = engine
            .start(spec(&dir, Some(net.clone()), Some(limit)))
            .await
            .expect("served");
        for _ in 0..3 {
            let (status, body) = get(&net, "/").await;
            assert_eq!(status, expected, "limit {limit}: {body}");
        }
        running.killer().kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), running.wait()).await;
    }
}
