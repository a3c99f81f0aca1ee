//! Port forwarding over a pipe with the tests' SPDY client and the fake runtime, whose
//! sandboxes reach the host's loopback: a listener of the test's own stands in for the
//! pod's port.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper::service::Service as _;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpListener;

use super::super::spdy::testing::{Client, Frame};
use super::*;

fn forwarder(pair_timeout: Duration) -> Forwarder {
    Forwarder {
        sandboxes: SandboxIndex::default(),
        runtime: Arc::new(crate::pods::testing::Shared(Arc::default())),
        pair_timeout,
        sessions: super::super::limits::Sessions::new(4, 2),
    }
}

fn sandbox() -> PodSandbox {
    PodSandbox {
        uid: "uid-1".to_owned(),
        id: "sandbox-uid-1".to_owned(),
    }
}

/// A session for pod `ns/web` on one end of a pipe, the client on the other.
fn connect(f: Forwarder) -> (Client<DuplexStream>, tokio::task::JoinHandle<()>) {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let task = tokio::spawn(run(f, sandbox(), "ns/web".to_owned(), theirs));
    (Client::new(ours), task)
}

/// A loopback listener that echoes each connection until its peer finishes, then
/// closes it; the port.
async fn echo_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    port
}

/// The headers kubectl sends for one stream of request `id`.
fn stream(kind: &str, port: u16, id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("streamtype", kind.to_owned()),
        ("port", port.to_string()),
        ("requestid", id.to_owned()),
    ]
}

async fn open(
    c: &mut Client<DuplexStream>,
    id: u32,
    headers: &[(&'static str, String)],
    fin: bool,
) {
    let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    c.open(id, &h, fin).await;
}

/// Opens request `request`'s error stream (finished at once, as kubectl does) and data
/// stream with IDs `id` and `id + 2`.
async fn pair(c: &mut Client<DuplexStream>, id: u32, port: u16, request: &str) {
    open(c, id, &stream("error", port, request), true).await;
    assert_eq!(c.next().await, Some(Frame::Reply(id)));
    open(c, id + 2, &stream("data", port, request), false).await;
    assert_eq!(c.next().await, Some(Frame::Reply(id + 2)));
}

#[tokio::test]
async fn a_forwarded_connection_carries_bytes_both_ways_and_ends_cleanly() {
    let port = echo_port().await;
    let (mut c, _task) = connect(forwarder(PAIR_TIMEOUT));
    pair(&mut c, 1, port, "0").await;
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    for piece in payload.chunks(100_000) {
        c.data(3, piece, false).await;
    }
    c.data(3, b"", true).await;
    assert_eq!(c.read_to_fin(3).await, payload);
    // No error: the error stream ends empty.
    assert_eq!(c.read_to_fin(1).await, b"");
    // A second connection over the same session.
    pair(&mut c, 5, port, "1").await;
    c.data(7, b"second", true).await;
    assert_eq!(c.read_to_fin(7).await, b"second");
    assert_eq!(c.read_to_fin(5).await, b"");
}

#[tokio::test]
async fn nothing_listening_is_reported_on_the_error_stream_in_the_kubelets_words() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr").port()
    };
    let (mut c, _task) = connect(forwarder(PAIR_TIMEOUT));
    pair(&mut c, 1, closed, "0").await;
    let msg = String::from_utf8(c.read_to_fin(1).await).expect("utf-8");
    assert!(
        msg.starts_with(&format!(
            "error forwarding port {closed} to pod ns/web, uid uid-1: "
        )),
        "{msg}"
    );
    assert!(msg.contains("refused"), "{msg}");
    assert_eq!(c.read_to_fin(3).await, b"");
    // The session goes on.
    let port = echo_port().await;
    pair(&mut c, 5, port, "1").await;
    c.data(7, b"ok", true).await;
    assert_eq!(c.read_to_fin(7).await, b"ok");
}

#[tokio::test]
async fn streams_with_bad_headers_are_refused() {
    let (mut c, _task) = connect(forwarder(PAIR_TIMEOUT));
    let cases: Vec<Vec<(&'static str, String)>> = vec![
        vec![
            ("streamtype", "data".to_owned()),
            ("requestid", "0".to_owned()),
        ],
        stream("data", 0, "0"),
        vec![
            ("streamtype", "data".to_owned()),
            ("port", "99999".to_owned()),
            ("requestid", "0".to_owned()),
        ],
        vec![
            ("streamtype", "data".to_owned()),
            ("port", "http".to_owned()),
            ("requestid", "0".to_owned()),
        ],
        stream("stdin", 80, "0"),
        vec![("port", "80".to_owned()), ("requestid", "0".to_owned())],
        stream("data", 80, &"x".repeat(65)),
    ];
    let mut id = 1;
    for headers in cases {
        open(&mut c, id, &headers, false).await;
        assert_eq!(
            c.next().await,
            Some(Frame::Reset {
                id,
                status: spdy::status::CANCEL
            }),
            "{headers:?}"
        );
        id += 2;
    }
}

#[test]
fn headers_parse_as_the_kubelet_reads_them() {
    let h = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .fold(spdy::Headers::default(), |h, (n, v)| h.with(n, v))
    };
    let ok = parse(
        &h(&[("streamtype", "data"), ("port", "8080"), ("requestid", "4")]),
        9,
    );
    assert_eq!(
        ok,
        Ok(StreamRequest {
            kind: Kind::Data,
            port: 8080,
            request_id: "4".to_owned()
        })
    );
    // Older clients without requestID: an error stream pairs with the data stream
    // opened right after it.
    let e = parse(&h(&[("streamtype", "error"), ("port", "80")]), 5).expect("error");
    let d = parse(&h(&[("streamtype", "data"), ("port", "80")]), 7).expect("data");
    assert_eq!(e.request_id, d.request_id);
    assert_eq!(
        parse(&h(&[("streamtype", "data")]), 1),
        Err("\"port\" header is required".to_owned())
    );
    assert_eq!(
        parse(&h(&[("streamtype", "tty"), ("port", "80")]), 1),
        Err("invalid stream type \"tty\"".to_owned())
    );
}

#[tokio::test(start_paused = true)]
async fn a_pair_missing_its_data_stream_times_out_with_a_message() {
    let (mut c, _task) = connect(forwarder(Duration::from_secs(30)));
    open(&mut c, 1, &stream("error", 80, "0"), true).await;
    assert_eq!(c.next().await, Some(Frame::Reply(1)));
    let asked = tokio::time::Instant::now();
    let msg = String::from_utf8(c.read_to_fin(1).await).expect("utf-8");
    assert!(msg.contains("timed out waiting for streams"), "{msg}");
    assert!(asked.elapsed() >= Duration::from_secs(30));
}

#[tokio::test]
async fn a_second_data_stream_for_one_request_is_an_error_on_its_own() {
    let port = echo_port().await;
    let (mut c, _task) = connect(forwarder(PAIR_TIMEOUT));
    open(&mut c, 1, &stream("data", port, "0"), false).await;
    assert_eq!(c.next().await, Some(Frame::Reply(1)));
    open(&mut c, 3, &stream("data", port, "0"), false).await;
    assert_eq!(c.next().await, Some(Frame::Reply(3)));
    // The intruder is finished at once; the first still pairs and forwards.
    assert_eq!(c.read_to_fin(3).await, b"");
    open(&mut c, 5, &stream("error", port, "0"), true).await;
    assert_eq!(c.next().await, Some(Frame::Reply(5)));
    c.data(1, b"first", true).await;
    assert_eq!(c.read_to_fin(1).await, b"first");
}

#[tokio::test]
async fn a_reset_data_stream_closes_the_pods_connection() {
    // The "pod" notes when its connection is closed.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let closed = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut buf = [0u8; 64];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    });
    let (mut c, _task) = connect(forwarder(PAIR_TIMEOUT));
    pair(&mut c, 1, port, "0").await;
    c.data(3, b"hello", false).await;
    c.reset(3, spdy::status::CANCEL).await;
    let seen = tokio::time::timeout(Duration::from_secs(20), closed).await;
    assert!(matches!(seen, Ok(Ok(true))));
}

#[tokio::test]
async fn the_client_going_away_ends_the_session_and_its_forwards() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (mut c, task) = connect(forwarder(PAIR_TIMEOUT));
    pair(&mut c, 1, port, "0").await;
    let (_pod_side, _) = listener.accept().await.expect("accept");
    drop(c);
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the session ends")
        .expect("no panic");
}

async fn call(f: &Forwarder, uri: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
    let app = axum::Router::new()
        .route(
            "/portForward/{namespace}/{pod}",
            axum::routing::post(by_name),
        )
        .route(
            "/portForward/{namespace}/{pod}/{uid}",
            axum::routing::post(by_uid),
        )
        .with_state(f.clone());
    let mut request = axum::http::Request::builder().method("POST").uri(uri);
    for (n, v) in headers {
        request = request.header(*n, *v);
    }
    let response = TowerToHyperService::new(app)
        .call(request.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_upgrade_is_answered_as_the_kubelet_answers_it() {
    let f = forwarder(PAIR_TIMEOUT);
    f.sandboxes.set("ns", "web", sandbox());
    let upgrade = [
        ("connection", "Upgrade"),
        ("upgrade", "SPDY/3.1"),
        ("x-stream-protocol-version", "portforward.k8s.io"),
    ];
    let (status, body) = call(&f, "/portForward/ns/other", &upgrade).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::NOT_FOUND, "pod does not exist\n")
    );
    let (status, _) = call(&f, "/portForward/ns/web/another-uid", &upgrade).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = call(&f, "/portForward/ns/web", &upgrade[..2]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body.contains("X-Stream-Protocol-Version does not exist"),
        "{body}"
    );
    let (status, body) = call(
        &f,
        "/portForward/ns/web",
        &[
            upgrade[0],
            upgrade[1],
            ("x-stream-protocol-version", "v4.channel.k8s.io"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("unable to negotiate protocol"), "{body}");
    let (status, body) = call(&f, "/portForward/ns/web", &upgrade[2..]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("missing upgrade headers"), "{body}");
    // Right headers: switching protocols (the upgrade itself needs a real connection:
    // the end-to-end tests go through kubectl).
    let (status, _) = call(&f, "/portForward/ns/web/uid-1", &upgrade).await;
    assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);
}

/// Issue 22, finding 1: the sessions to a pod and on the node are bounded, and a
/// session's place is held while it runs, not only while its request is served.
#[tokio::test]
async fn sessions_beyond_the_bounds_are_refused() {
    let f = forwarder(PAIR_TIMEOUT);
    f.sandboxes.set("ns", "web", sandbox());
    let upgrade = [
        ("connection", "Upgrade"),
        ("upgrade", "SPDY/3.1"),
        ("x-stream-protocol-version", "portforward.k8s.io"),
    ];
    // Two sessions to the pod are running (as an upgraded connection's task holds them).
    let _running = [
        f.sessions.open("uid-1").expect("a place"),
        f.sessions.open("uid-1").expect("a place"),
    ];
    let (status, body) = call(&f, "/portForward/ns/web", &upgrade).await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::TOO_MANY_REQUESTS,
            "too many port-forward sessions to this pod (at most 2)\n"
        )
    );
    // Two more to other pods: the node's four places are taken.
    let _others = [
        f.sessions.open("uid-2").expect("a place"),
        f.sessions.open("uid-3").expect("a place"),
    ];
    let (status, body) = call(&f, "/portForward/ns/web", &upgrade).await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::TOO_MANY_REQUESTS,
            "too many port-forward sessions on this node (at most 4)\n"
        )
    );
}

/// Issue 22, finding 8: a pair's deadline firing while a DATA frame is half read must not
/// lose the bytes already read (the rest of the payload was then parsed as frames).
#[tokio::test(start_paused = true)]
async fn a_pair_deadline_in_the_middle_of_a_frame_does_not_lose_its_place() {
    let (mut c, _task) = connect(forwarder(Duration::from_secs(30)));
    // A data stream whose error stream never comes: its pair times out in 30 s.
    open(&mut c, 1, &stream("data", 80, "0"), false).await;
    assert_eq!(c.next().await, Some(Frame::Reply(1)));
    // A DATA frame of 16 bytes, cut after 8; the second half would read as the header
    // of a DATA frame of 65535 bytes for stream 9.
    let payload = [1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 9, 0, 0, 0xff, 0xff];
    let mut frame = vec![0, 0, 0, 1, 0, 0, 0, 16];
    frame.extend_from_slice(&payload[..8]);
    c.raw(&frame).await;
    // The deadline fires with the frame half read: the data stream is finished.
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(
        c.next().await,
        Some(Frame::Data {
            id: 1,
            data: Vec::new(),
            fin: true
        })
    );
    // The rest of the frame, then a new stream: it is answered.
    c.raw(&payload[8..]).await;
    open(&mut c, 3, &stream("error", 80, "1"), true).await;
    let answer = tokio::time::timeout(Duration::from_secs(60), c.next()).await;
    assert_eq!(answer.ok().flatten(), Some(Frame::Reply(3)));
}
