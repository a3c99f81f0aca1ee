//! Tests of the kubelet API's gate through the real router (bodies, unknown paths, no way
//! around it by path tricks) and of the connection limits.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper::service::Service as _;
use hyper_util::service::TowerToHyperService;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::auth::fake::FakeReviewer;
use crate::auth::{AuthConfig, Subresource};

const METRICS: &str = "METRICS-MARKER";

/// The API's parts around `auth`, with a fake runtime and no pods.
fn parts(auth: Arc<Auth>, metrics: Metrics) -> Parts {
    Parts {
        logs: LogIndex::default(),
        sandboxes: SandboxIndex::default(),
        runtime: Arc::new(crate::pods::testing::Shared(Arc::default())),
        metrics,
        stats: crate::stats::Source {
            index: crate::stats::StatsIndex::default(),
            node_name: "node-a".to_owned(),
            data_dir: std::env::temp_dir(),
            started: jiff::Timestamp::now(),
        },
        auth,
        pods: (
            crate::pods::PodsHandle::new().0,
            crate::pods::StatusBook::default(),
        ),
    }
}

fn app(fake: Arc<FakeReviewer>, config: AuthConfig, peer: Option<User>) -> Router {
    let auth = Arc::new(Auth::new(config, "node-a", fake));
    let metrics: Metrics = Arc::new(|| METRICS.to_owned());
    router(parts(auth, metrics)).layer(axum::Extension(Peer(peer.map(Arc::new))))
}

async fn call(app: Router, method: &str, uri: &str, token: Option<&str>) -> (StatusCode, String) {
    let mut request = axum::http::Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    let request = request.body(Body::empty()).expect("request");
    let response = TowerToHyperService::new(app)
        .call(request)
        .await
        .expect("infallible");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn reviewer(allowed: &'static [Subresource]) -> Arc<FakeReviewer> {
    Arc::new(FakeReviewer::new(&[("token", "sa", &[])], move |a| {
        allowed.contains(&a.subresource)
    }))
}

#[tokio::test]
async fn anonymous_requests_get_401_everywhere_unknown_paths_included() {
    for path in [
        "/healthz",
        "/metrics",
        "/containerLogs/a/b/c",
        "/portForward/a/b",
        "/portForward/a/b/uid",
        "/nope",
        "/",
    ] {
        let app = app(reviewer(&[]), AuthConfig::default(), None);
        assert_eq!(
            call(app, "GET", path, None).await,
            (StatusCode::UNAUTHORIZED, "Unauthorized".to_owned()),
            "{path}"
        );
    }
}

#[tokio::test]
async fn forbidden_requests_get_403_with_the_kubelets_body() {
    let app = app(reviewer(&[]), AuthConfig::default(), None);
    assert_eq!(
        call(
            app.clone(),
            "GET",
            "/containerLogs/ns/p/c?follow=true",
            Some("token")
        )
        .await,
        (
            StatusCode::FORBIDDEN,
            "Forbidden (user=sa, verb=get, resource=nodes, subresource(s)=[proxy])".to_owned()
        )
    );
    // Port forwarding is the proxy subresource, verb create for the API server's POST.
    assert_eq!(
        call(app.clone(), "POST", "/portForward/ns/p", Some("token")).await,
        (
            StatusCode::FORBIDDEN,
            "Forbidden (user=sa, verb=create, resource=nodes, subresource(s)=[proxy])".to_owned()
        )
    );
    assert_eq!(
        call(app.clone(), "GET", "/healthz", Some("token")).await,
        (
            StatusCode::FORBIDDEN,
            "Forbidden (user=sa, verb=get, resource=nodes, subresource(s)=[healthz proxy])"
                .to_owned()
        )
    );
    assert_eq!(
        call(app, "GET", "/metrics", Some("other")).await,
        (StatusCode::UNAUTHORIZED, "Unauthorized".to_owned())
    );
}

#[tokio::test]
async fn allowed_requests_reach_their_handler() {
    let sa = app(
        reviewer(&[Subresource::Metrics, Subresource::Healthz]),
        AuthConfig::default(),
        None,
    );
    assert_eq!(
        call(sa.clone(), "GET", "/metrics", Some("token")).await,
        (StatusCode::OK, METRICS.to_owned())
    );
    assert_eq!(
        call(sa.clone(), "GET", "/healthz", Some("token")).await,
        (StatusCode::OK, "ok".to_owned())
    );
    // The resource metrics are nodes/metrics, the summary nodes/stats.
    let (status, page) = call(sa.clone(), "GET", "/metrics/resource", Some("token")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("\nnode_cpu_usage_seconds_total "), "{page}");
    let (status, page) = call(sa.clone(), "GET", "/metrics/cadvisor", Some("token")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        call(sa.clone(), "GET", "/stats/summary", Some("token"))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let stats = app(reviewer(&[Subresource::Stats]), AuthConfig::default(), None);
    let (status, json) = call(stats, "GET", "/stats/summary", Some("token")).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let summary: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(summary["node"]["nodeName"], "node-a");
    assert_eq!(summary["pods"], serde_json::json!([]));
    assert_eq!(
        call(sa, "GET", "/containerLogs/a/b/c", Some("token"))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    // The API server's certificate, with nodes/proxy.
    let apiserver = User {
        name: "kube-apiserver-kubelet-client".to_owned(),
        ..User::default()
    };
    let apiserver_app = app(
        reviewer(&[Subresource::Proxy]),
        AuthConfig::default(),
        Some(apiserver),
    );
    let (status, body) = call(apiserver_app, "GET", "/containerLogs/ns/pod/c", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("is not known on this node"), "{body}");
}

/// Which handler produced a response, if any did.
fn handler_of(status: StatusCode, body: &str) -> Option<&'static str> {
    if body.contains("is not known on this node") {
        Some("containerLogs")
    } else if body == METRICS {
        Some("metrics")
    } else if status == StatusCode::OK && body == "ok" {
        Some("healthz")
    } else {
        None
    }
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("containerLogs".to_owned()),
        Just("metrics".to_owned()),
        Just("healthz".to_owned()),
        Just("..".to_owned()),
        Just(".".to_owned()),
        Just(String::new()),
        Just("%2e%2e".to_owned()),
        Just("%2F".to_owned()),
        Just("%63ontainerLogs".to_owned()),
        Just("ns".to_owned()),
        "[a-z0-9%.]{1,6}",
    ]
}

const ALL: [Subresource; 9] = [
    Subresource::Stats,
    Subresource::Metrics,
    Subresource::Log,
    Subresource::Checkpoint,
    Subresource::Pods,
    Subresource::Healthz,
    Subresource::Configz,
    Subresource::Statusz,
    Subresource::Proxy,
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Whatever the path (dot segments, encodings, empty segments), a handler only runs
    /// when a subresource that guards it is allowed.
    #[test]
    fn no_path_reaches_a_handler_its_subresource_does_not_allow(
        before in proptest::collection::vec(segment(), 0..3),
        target in prop_oneof![
            Just(vec!["containerLogs", "ns", "pod", "c"]),
            Just(vec!["metrics"]),
            Just(vec!["healthz"]),
        ],
        after in proptest::collection::vec(segment(), 0..2),
        allowed in proptest::sample::subsequence(ALL.to_vec(), 0..ALL.len()),
        method in prop_oneof![4 => Just("GET"), 1 => Just("HEAD"), 1 => Just("POST")],
    ) {
        // Each handler's own path, behind and before arbitrary segments.
        let segments: Vec<&str> = before
            .iter()
            .map(String::as_str)
            .chain(target)
            .chain(after.iter().map(String::as_str))
            .collect();
        let uri = format!("/{}", segments.join("/"));
        prop_assume!(uri.parse::<axum::http::Uri>().is_ok());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let allowed_here = allowed.clone();
        let fake = Arc::new(FakeReviewer::new(&[("token", "sa", &[])], move |a| {
            // HEAD has the empty verb: nothing but `*` would allow it, so nothing here.
            !a.verb.is_empty() && allowed_here.contains(&a.subresource)
        }));
        let (status, body) = runtime.block_on(call(app(fake, AuthConfig::default(), None), method, &uri, Some("token")));
        let guards: &[Subresource] = match handler_of(status, &body) {
            Some("containerLogs") => &[Subresource::Proxy],
            Some("metrics") => &[Subresource::Metrics],
            Some("healthz") => &[Subresource::Healthz, Subresource::Proxy],
            _ => return Ok(()),
        };
        prop_assert!(method != "HEAD", "{} {} ran a handler", method, uri);
        prop_assert!(
            guards.iter().any(|g| allowed.contains(g)),
            "{} {} ran a handler guarded by {:?} with only {:?} allowed", method, uri, guards, allowed
        );
    }
}

/// A TLS acceptor with a fresh self-signed certificate for `localhost`, and a client
/// configuration that trusts it.
fn tls_pair() -> (TlsAcceptor, Arc<rustls::ClientConfig>) {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let key = rustls::pki_types::PrivateKeyDer::try_from(generated.signing_key.serialize_der())
        .expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![generated.cert.der().clone()], key)
        .expect("config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(generated.cert.der().clone()).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    (TlsAcceptor::from(Arc::new(config)), Arc::new(client))
}

/// A server on a free loopback port with `limits` and `timeouts`; its address, a client
/// configuration that trusts it, and what shuts it down.
async fn start(
    limits: limits::Limits,
    timeouts: limits::Timeouts,
) -> (
    std::net::SocketAddr,
    Arc<rustls::ClientConfig>,
    CancellationToken,
) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let (tls, client) = tls_pair();
    let listener = Listener {
        tcp,
        tls,
        serving: Arc::default(),
        limits: Arc::new(limits),
        timeouts,
    };
    let shutdown = CancellationToken::new();
    let auth = Arc::new(Auth::new(
        AuthConfig::default(),
        "node-a",
        reviewer(&[Subresource::Healthz]),
    ));
    tokio::spawn(serve(
        listener,
        parts(auth, Arc::new(String::new)),
        shutdown.clone(),
    ));
    (addr, client, shutdown)
}

/// Small pools and short timeouts.
fn small(handshakes: usize, anonymous: usize) -> (limits::Limits, limits::Timeouts) {
    let limits = limits::Limits {
        handshakes: limits::Pool::new(handshakes),
        anonymous: limits::Pool::new(anonymous),
        authenticated: Arc::new(tokio::sync::Semaphore::new(4)),
    };
    let timeouts = limits::Timeouts {
        handshake: Duration::from_millis(300),
        first_request: Duration::from_millis(300),
        idle: Duration::from_millis(600),
    };
    (limits, timeouts)
}

/// A TLS connection to `addr` without a client certificate.
async fn handshake(
    addr: std::net::SocketAddr,
    client: &Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(client.clone())
        .connect(name, tcp)
        .await
        .expect("handshake")
}

/// Whether the server closes `stream` within `within`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read).await.is_ok()
}

#[tokio::test]
async fn an_unfinished_handshake_is_dropped_after_the_timeout() {
    let (limits, timeouts) = small(4, 4);
    let (addr, _, shutdown) = start(limits, timeouts).await;
    let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // Without the timeout the server would wait for a ClientHello forever.
    assert!(closed_within(&mut silent, Duration::from_secs(20)).await);
    shutdown.cancel();
}

/// Issue 22, finding 1: silent handshakes never make a newcomer wait; the oldest makes
/// room.
#[tokio::test]
async fn a_newcomer_beyond_the_handshakes_closes_the_oldest_instead_of_waiting() {
    let (limits, mut timeouts) = small(2, 4);
    timeouts.handshake = Duration::from_secs(600);
    let (addr, client, shutdown) = start(limits, timeouts).await;
    let mut first = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _second = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // Let the server take both before the third comes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = tokio::time::timeout(Duration::from_secs(20), handshake(addr, &client))
        .await
        .expect("the third handshake is served at once");
    assert!(closed_within(&mut first, Duration::from_secs(20)).await);
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut head = [0u8; 12];
    third.read_exact(&mut head).await.expect("an answer");
    assert_eq!(&head, b"HTTP/1.1 401");
    shutdown.cancel();
}

/// Issue 22, finding 1: a connection that finished its handshake and then says nothing,
/// or only the HTTP/2 preface, is closed after the first request's bound; one with a
/// request answered is closed after the idle bound.
#[tokio::test]
async fn silent_and_idle_connections_are_closed() {
    let (limits, timeouts) = small(4, 8);
    let (addr, client, shutdown) = start(limits, timeouts).await;
    let mut silent = handshake(addr, &client).await;
    let mut preface = handshake(addr, &client).await;
    preface
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("write");
    let mut served = handshake(addr, &client).await;
    served
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut head = [0u8; 12];
    served.read_exact(&mut head).await.expect("an answer");
    assert!(closed_within(&mut silent, Duration::from_secs(20)).await);
    assert!(closed_within(&mut preface, Duration::from_secs(20)).await);
    assert!(closed_within(&mut served, Duration::from_secs(20)).await);
    shutdown.cancel();
}

/// Issue 22, finding 1: strangers beyond the pool close the oldest stranger, never a
/// connection whose request was authorized.
#[tokio::test]
async fn strangers_beyond_the_pool_close_the_oldest_stranger() {
    let (limits, mut timeouts) = small(8, 2);
    timeouts.first_request = Duration::from_secs(600);
    timeouts.idle = Duration::from_secs(600);
    let (addr, client, shutdown) = start(limits, timeouts).await;
    let mut authorized = handshake(addr, &client).await;
    authorized
        .write_all(
            b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer token\r\n\r\n",
        )
        .await
        .expect("write");
    let mut head = [0u8; 12];
    authorized.read_exact(&mut head).await.expect("an answer");
    assert_eq!(&head, b"HTTP/1.1 200");
    let mut oldest = handshake(addr, &client).await;
    let _held = [
        handshake(addr, &client).await,
        handshake(addr, &client).await,
    ];
    assert!(closed_within(&mut oldest, Duration::from_secs(20)).await);
    assert!(!closed_within(&mut authorized, Duration::from_millis(500)).await);
    shutdown.cancel();
}
