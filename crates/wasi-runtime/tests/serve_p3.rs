//! Serving WASI 0.3 `wasi:http/handler@0.3.0` components (target/wasm/p3-hello and
//! p3-slow, written by hand in workloads/p3 and built by hack/build-wasm) in a network
//! namespace of the test's own, with reused instances: one instance answers many
//! requests, several at once, up to its pod's limits; an idle one is dropped; a request
//! past its time limit is answered 504 while the others of its instance are answered;
//! the memory limit holds across instances; a stop drains, a kill cuts. Every instance
//! answers with `x-instance-requests`, how many requests it has been given so far.
//! Needs root (network namespaces).

mod common;
#[path = "common/http.rs"]
mod http;

use std::sync::Arc;
use std::time::Duration;

use http::{header, send};
use network::NetNs;
use wasi_runtime::{ContainerSpec, Engine, EngineConfig, Exit, ReuseSpec, Running};

fn spec(dir: &tempfile::TempDir, net: Arc<NetNs>, name: &str) -> ContainerSpec {
    ContainerSpec {
        request_timeout: None,
        reuse: ReuseSpec::default(),
        dns: None,
        pod_id: String::new(),
        module_key: format!("sha256:{name}"),
        wasm: common::wasm(name),
        args: vec!["web".to_owned()],
        env: Vec::new(),
        log_path: dir.path().join("web.log"),
        memory_limit: Some(256 << 20),
        preopens: Vec::new(),
        network: Some(net),
        http_port: 8080,
        cpu: wasi_runtime::CpuShare::default(),
        allowed_outbound: None,
    }
}

/// `name` served in a namespace of its own, after `adjust`.
async fn serve(
    name: &str,
    adjust: impl FnOnce(&mut ContainerSpec),
) -> (Engine, tempfile::TempDir, Arc<NetNs>, Running) {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = common::namespace(&dir).await;
    let engine = Engine::new(&EngineConfig::default()).expect("engine");
    let mut spec = spec(&dir, net.clone(), name);
    adjust(&mut spec);
    let running = engine.start(spec).await.expect("served");
    (engine, dir, net, running)
}

/// The instance's count of requests in an answer's headers.
fn nth(head: &str) -> usize {
    header(head, "x-instance-requests")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no x-instance-requests in {head}"))
}

/// `n` requests for `path` at once.
async fn at_once(net: &Arc<NetNs>, path: &str, n: usize) -> Vec<(u16, String, String)> {
    let requests: Vec<_> = (0..n)
        .map(|_| {
            let (net, path) = (net.clone(), path.to_owned());
            tokio::spawn(async move { send(&net, &path).await })
        })
        .collect();
    let mut answers = Vec::new();
    for r in requests {
        answers.push(r.await.expect("a request"));
    }
    answers
}

async fn kill(running: Running) {
    running.killer().kill();
    let _ = tokio::time::timeout(Duration::from_secs(30), running.wait()).await;
}

#[tokio::test]
async fn one_instance_answers_request_after_request_and_each_is_logged() {
    let (_engine, dir, net, running) = serve("p3-hello", |_| {}).await;
    for i in 1..=5 {
        let (status, head, body) = send(&net, "/hello").await;
        assert_eq!(status, 200, "{head}\n{body}");
        assert_eq!(body, "hello from p3\n");
        // The reuse is what is under test: one instance per request would say 1.
        assert_eq!(nth(&head), i, "{head}");
    }
    let log = std::fs::read_to_string(dir.path().join("web.log")).expect("log");
    let lines = log
        .lines()
        .filter(|l| l.contains("\"GET /hello HTTP/1.1\" 200"))
        .count();
    assert_eq!(lines, 5, "{log}");
    kill(running).await;
}

#[tokio::test]
async fn an_instance_answers_at_most_its_reuse_count_then_another_takes_over() {
    let (_engine, _dir, net, running) = serve("p3-hello", |s| {
        s.reuse.max_requests = Some(3);
    })
    .await;
    let mut counts = Vec::new();
    for _ in 0..7 {
        let (status, head, _) = send(&net, "/").await;
        assert_eq!(status, 200, "{head}");
        counts.push(nth(&head));
    }
    assert_eq!(counts, [1, 2, 3, 1, 2, 3, 1]);
    kill(running).await;
}

#[tokio::test]
async fn an_idle_instance_is_dropped_after_its_idle_time() {
    let (_engine, _dir, net, running) = serve("p3-hello", |s| {
        s.reuse.idle_timeout = Some(Duration::from_millis(200));
    })
    .await;
    let (_, head, _) = send(&net, "/").await;
    assert_eq!(nth(&head), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A new instance: the old one was idle for ten times its idle time.
    let (status, head, _) = send(&net, "/").await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(nth(&head), 1, "{head}");
    kill(running).await;
}

#[tokio::test]
async fn requests_at_once_share_instances() {
    let (_engine, _dir, net, running) = serve("p3-slow", |_| {}).await;
    let answers = at_once(&net, "/sleep/1000", 16).await;
    for (status, head, body) in &answers {
        assert_eq!(*status, 200, "{head}\n{body}");
        assert_eq!(body, "slept\n");
    }
    // Each instance numbers its requests from 1: fewer 1s than requests means some
    // instance answered several of them while they all slept.
    let instances = answers.iter().filter(|(_, h, _)| nth(h) == 1).count();
    assert!(instances < 16, "16 requests took {instances} instances");
    kill(running).await;
}

#[tokio::test]
async fn a_request_past_its_time_limit_is_answered_504_and_the_others_of_its_instance_200() {
    let (_engine, dir, net, running) = serve("p3-slow", |s| {
        s.request_timeout = Some(Duration::from_secs(3));
        s.reuse.max_concurrent = Some(2);
    })
    .await;
    let long = {
        let net = net.clone();
        tokio::spawn(async move { send(&net, "/sleep/600000").await })
    };
    // The long one is taken first (its instance now has one request), then a short
    // one joins it and is answered while the long one still waits.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, head, body) = send(&net, "/sleep/10").await;
    assert_eq!(status, 200, "{head}\n{body}");
    let (status, head, body) = long.await.expect("the long request");
    assert_eq!(status, 504, "{head}\n{body}");
    let log = std::fs::read_to_string(dir.path().join("web.log")).expect("log");
    assert!(
        log.contains(
            "request GET /sleep/600000 HTTP/1.1 cut: it took longer than its time limit of 3s"
        ),
        "{log}"
    );
    // The pod serves on.
    let (status, head, _) = send(&net, "/").await;
    assert_eq!(status, 200, "{head}");
    kill(running).await;
}

#[tokio::test]
async fn a_guest_busy_in_a_loop_is_answered_504_and_the_pod_serves_on() {
    let (_engine, _dir, net, running) = serve("p3-slow", |s| {
        s.request_timeout = Some(Duration::from_secs(2));
    })
    .await;
    let (status, head, body) = send(&net, "/spin").await;
    assert_eq!(status, 504, "{head}\n{body}");
    let (status, head, body) = send(&net, "/sleep/10").await;
    assert_eq!(status, 200, "{head}\n{body}");
    kill(running).await;
}

#[tokio::test]
async fn a_trap_is_a_500_and_the_pod_serves_on_with_a_new_instance() {
    let (_engine, dir, net, running) = serve("p3-slow", |_| {}).await;
    let (status, _, _) = send(&net, "/").await;
    assert_eq!(status, 200);
    let (status, head, body) = send(&net, "/trap").await;
    assert_eq!(status, 500, "{head}\n{body}");
    let (status, head, _) = send(&net, "/").await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(nth(&head), 1, "the trapped instance is gone: {head}");
    let log = std::fs::read_to_string(dir.path().join("web.log")).expect("log");
    assert!(log.contains("request GET /trap HTTP/1.1 failed"), "{log}");
    kill(running).await;
}

#[tokio::test]
async fn the_memory_limit_bounds_all_of_a_pods_instances_together() {
    let (engine, _dir, net, running) = serve("p3-slow", |s| {
        s.memory_limit = Some(64 << 20);
        s.reuse.max_concurrent = Some(1);
        s.reuse.idle_timeout = Some(Duration::from_secs(60));
    })
    .await;
    // One instance takes 40 MiB and keeps it while idle.
    let (status, head, body) = send(&net, "/grow/40").await;
    assert_eq!((status, body.as_str()), (200, "grown\n"), "{head}");
    assert!(engine.memory_in_use() >= 40 << 20);
    // It is kept busy, so the next request needs a second instance, which may not
    // take another 40.
    let busy = {
        let net = net.clone();
        tokio::spawn(async move { send(&net, "/sleep/3000").await })
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (status, head, _) = send(&net, "/grow/40").await;
    assert_eq!(status, 500, "{head}");
    let (status, head, _) = busy.await.expect("the busy request");
    assert_eq!((status, nth(&head)), (200, 2), "{head}");
    kill(running).await;
}

#[tokio::test]
async fn a_stop_lets_the_requests_in_flight_finish() {
    let (_engine, _dir, net, running) = serve("p3-slow", |_| {}).await;
    let requests: Vec<_> = (0..4)
        .map(|_| {
            let net = net.clone();
            tokio::spawn(async move { send(&net, "/sleep/1500").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.killer().stop(Duration::from_secs(60));
    for r in requests {
        let (status, head, body) = r.await.expect("a request");
        assert_eq!(status, 200, "{head}\n{body}");
    }
    let exit = tokio::time::timeout(Duration::from_secs(60), running.wait())
        .await
        .expect("the run ends");
    assert!(matches!(exit, Exit::Code(0)), "{exit:?}");
}

#[tokio::test]
async fn a_kill_cuts_the_requests_in_flight() {
    let (_engine, _dir, net, running) = serve("p3-slow", |_| {}).await;
    let request = {
        let net = net.clone();
        tokio::spawn(async move { send(&net, "/sleep/600000").await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.killer().kill();
    let exit = tokio::time::timeout(Duration::from_secs(30), running.wait())
        .await
        .expect("the run ends");
    assert!(matches!(exit, Exit::Killed), "{exit:?}");
    let (status, _, _) = tokio::time::timeout(Duration::from_secs(30), request)
        .await
        .expect("the request ends")
        .expect("a request");
    assert_ne!(status, 200);
}
