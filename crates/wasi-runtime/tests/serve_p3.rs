//! Serving WASI 0.3 `wasi:http/handler@0.3.0` components (target/wasm/p3-hello and
//! p3-slow, written by hand in workloads/p3 and built by hack/build-wasm) in a network
//! namespace of the test's own, with reused instances: one instance answers many
//! requests, several at once, up to its pod's limits; an idle one is dropped; a request
//! past its time limit is answered 504 while the others of its instance are answered;
//! the memory limit holds across instances; a stop drains, a kill cuts. Every instance
//! answers with `x-instance-requests`, how many requests it has been given so far.
//! Needs root (network namespaces).

mod common;
#[path = "common/compiled.rs"]
mod compiled;
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
    let engine = Engine::new(&compiled::engine_config()).expect("engine");
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
    let access = |log: &str| {
        log.lines()
            .filter(|l| l.contains("\"GET /hello HTTP/1.1\" 200"))
            .count()
    };
    let log = http::log_when(&dir, |log| access(log) >= 5).await;
    let lines = access(&log);
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

/// An HTTP/2 connection (prior knowledge, as gRPC clients open them) to port 8080 in
/// the namespace.
async fn h2(
    net: &NetNs,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>> {
    let stream = net
        .run(|| std::net::TcpStream::connect(("127.0.0.1", 8080)))
        .await
        .expect("the namespace thread")
        .expect("connect");
    stream.set_nonblocking(true).expect("nonblocking");
    let stream = tokio::net::TcpStream::from_std(stream).expect("tokio stream");
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("an HTTP/2 handshake");
    tokio::spawn(conn);
    sender
}

/// `GET path` on an HTTP/2 connection: status, headers, body and trailers.
async fn h2_get(
    sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>,
    path: &str,
) -> (u16, hyper::HeaderMap, String, Option<hyper::HeaderMap>) {
    use http_body_util::BodyExt;
    sender.ready().await.expect("the connection takes requests");
    let request = hyper::Request::get(format!("http://pod{path}"))
        .body(http_body_util::Full::default())
        .expect("a request");
    let response = tokio::time::timeout(Duration::from_secs(60), sender.send_request(request))
        .await
        .expect("an answer in time")
        .expect("an answer");
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.expect("the body");
    let trailers = collected.trailers().cloned();
    let body = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
    (parts.status.as_u16(), parts.headers, body, trailers)
}

#[tokio::test]
async fn http2_with_prior_knowledge_and_http1_are_served_on_the_same_port() {
    let (_engine, dir, net, running) = serve("p3-hello", |_| {}).await;
    let mut sender = h2(&net).await;
    let (status, headers, body, _) = h2_get(&mut sender, "/over-h2").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "hello from p3\n"),
        "{headers:?}"
    );
    let (status, head, body) = send(&net, "/over-h1").await;
    assert_eq!((status, body.as_str()), (200, "hello from p3\n"), "{head}");
    let log = http::log_when(&dir, |log| {
        log.contains("\"GET http://pod/over-h2 HTTP/2.0\" 200")
    })
    .await;
    assert!(
        log.contains("\"GET http://pod/over-h2 HTTP/2.0\" 200"),
        "{log}"
    );
    kill(running).await;
}

#[tokio::test]
async fn a_hundred_streams_of_one_http2_connection_are_answered_at_once() {
    let (_engine, _dir, net, running) = serve("p3-slow", |_| {}).await;
    let sender = h2(&net).await;
    let began = std::time::Instant::now();
    let streams: Vec<_> = (0..100)
        .map(|_| {
            let mut sender = sender.clone();
            tokio::spawn(async move { h2_get(&mut sender, "/sleep/2000").await })
        })
        .collect();
    let mut instances = 0;
    for s in streams {
        let (status, headers, body, _) = s.await.expect("a stream");
        assert_eq!((status, body.as_str()), (200, "slept\n"), "{headers:?}");
        if headers["x-instance-requests"] == "1" {
            instances += 1;
        }
    }
    // At once, not one after another: 100 sleeps of 2 s in a row would take 200 s.
    // (A bound far from both, not a timing target.)
    assert!(
        began.elapsed() < Duration::from_secs(100),
        "{:?}",
        began.elapsed()
    );
    assert!(instances < 100, "{instances} instances for 100 streams");
    kill(running).await;
}

#[tokio::test]
async fn response_trailers_reach_an_http2_client() {
    let (_engine, _dir, net, running) = serve("p3-slow", |_| {}).await;
    let mut sender = h2(&net).await;
    let (status, headers, body, trailers) = h2_get(&mut sender, "/trailers").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "with trailers\n"),
        "{headers:?}"
    );
    let trailers = trailers.expect("trailers");
    assert_eq!(trailers["x-done"], "1", "{trailers:?}");
    kill(running).await;
}

#[tokio::test]
async fn a_wasi_0_2_component_is_served_over_http2_too() {
    let (_engine, _dir, net, running) = serve("http-hello", |_| {}).await;
    let mut sender = h2(&net).await;
    let (status, headers, body, _) = h2_get(&mut sender, "/p2").await;
    assert_eq!(status, 200, "{headers:?} {body}");
    assert!(body.contains("path: /p2"), "{body}");
    kill(running).await;
}

/// A service built by a real toolchain (componentize-py, CPython inside): it imports
/// the WASI 0.2 command world for its language runtime beside the 0.3 handler, and
/// reads its environment through 0.2.
#[tokio::test]
async fn a_python_service_is_served_with_its_environment_and_trailers() {
    let (_engine, _dir, net, running) = serve("p3-py-service", |s| {
        s.env.push(("POD_NAME".to_owned(), "py-pod".to_owned()));
    })
    .await;
    let (status, head, body) = send(&net, "/").await;
    assert_eq!(status, 200, "{head}\n{body}");
    assert_eq!(body, "hello from python p3\npod: py-pod\n");
    let mut sender = h2(&net).await;
    let (status, _, _, trailers) = h2_get(&mut sender, "/trailers").await;
    assert_eq!(status, 200);
    assert_eq!(trailers.expect("trailers")["x-done"], "1");
    kill(running).await;
}

/// HTTP/2 multiplies what one connection can ask for: a client with a few connections
/// and many streams each must not hold more requests of a pod than as many HTTP/1.1
/// connections could (the pod's share of the node's connections). The rest are
/// answered 503 at once instead of waiting, each holding its headers, in the agent.
#[tokio::test]
async fn http2_streams_count_against_the_pods_share_of_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = common::namespace(&dir).await;
    let engine = Engine::new(&EngineConfig {
        serving_pool: wasi_runtime::ServingPool {
            connections_per_pod: 8,
            ..wasi_runtime::ServingPool::default()
        },
        ..EngineConfig::default()
    })
    .expect("engine");
    let running = engine
        .start(spec(&dir, net.clone(), "p3-slow"))
        .await
        .expect("served");
    let sender = h2(&net).await;
    let streams: Vec<_> = (0..20)
        .map(|_| {
            let mut sender = sender.clone();
            tokio::spawn(async move { h2_get(&mut sender, "/sleep/3000").await.0 })
        })
        .collect();
    let mut statuses = Vec::new();
    for s in streams {
        statuses.push(s.await.expect("a stream"));
    }
    let answered = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 503).count();
    assert_eq!((answered, refused), (8, 12), "{statuses:?}");
    kill(running).await;
}
