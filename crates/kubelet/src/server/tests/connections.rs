//! The kubelet API's connection limits over real TLS on loopback (issue 22, finding 1):
//! handshakes, strangers, idle connections and port-forward sessions.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

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
    let auth = Arc::new(Auth::new(
        AuthConfig::default(),
        "node-a",
        reviewer(&[Subresource::Healthz, Subresource::Proxy]),
    ));
    start_with(limits, timeouts, parts(auth, Arc::new(String::new))).await
}

/// [`start`] serving `parts`.
async fn start_with(
    limits: limits::Limits,
    timeouts: limits::Timeouts,
    parts: Parts,
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
    tokio::spawn(serve(listener, parts, shutdown.clone()));
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

/// The head of the answer to a port-forward upgrade of pod `ns/web` on a new connection
/// (kept open: an upgraded session runs on it).
async fn upgrade(
    addr: std::net::SocketAddr,
    client: &Arc<rustls::ClientConfig>,
) -> (
    String,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
    let mut conn = handshake(addr, client).await;
    conn.write_all(
        b"POST /portForward/ns/web HTTP/1.1\r\nhost: localhost\r\n\
          authorization: Bearer token\r\nconnection: Upgrade\r\nupgrade: SPDY/3.1\r\n\
          x-stream-protocol-version: portforward.k8s.io\r\ncontent-length: 0\r\n\r\n",
    )
    .await
    .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        match tokio::time::timeout(Duration::from_secs(20), conn.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            _ => break,
        }
    }
    (String::from_utf8_lossy(&head).into_owned(), conn)
}

/// Issue 22, finding 1: an upgraded port-forward session keeps its place for its whole
/// life (the connection's place used to be given back at the upgrade, so sessions were
/// unbounded): the pod's ninth at once is refused.
#[tokio::test]
async fn upgraded_port_forward_sessions_keep_their_places() {
    let (limits, mut timeouts) = small(8, 8);
    timeouts.first_request = Duration::from_secs(600);
    let auth = Arc::new(Auth::new(
        AuthConfig::default(),
        "node-a",
        reviewer(&[Subresource::Proxy]),
    ));
    let parts = parts(auth, Arc::new(String::new));
    parts.sandboxes.set(
        "ns",
        "web",
        crate::sandboxes::PodSandbox {
            uid: "uid-1".to_owned(),
            id: "sandbox-uid-1".to_owned(),
        },
    );
    let (addr, client, shutdown) = start_with(limits, timeouts, parts).await;
    let mut sessions = Vec::new();
    for _ in 0..limits::MAX_SESSIONS_PER_POD {
        let (head, conn) = upgrade(addr, &client).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        sessions.push(conn);
    }
    let (head, _) = upgrade(addr, &client).await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    // A session that ends gives its place back.
    drop(sessions.pop());
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (head, conn) = upgrade(addr, &client).await;
        if head.starts_with("HTTP/1.1 101") {
            sessions.push(conn);
            break;
        }
        assert!(tokio::time::Instant::now() < end, "{head}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
}
