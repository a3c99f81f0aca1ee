//! Outgoing requests of a pod with DNS of its own, through the send hook as a
//! component's `wasi:http/outgoing-handler` reaches it, in a network namespace of the
//! test's own: a DNS server and web servers on its loopback, and names only that DNS
//! server knows (the host's resolver cannot find them, nor reach its servers from there).
//! An `https` request goes where the pod's DNS says and is verified by the name.
//! Needs root (network namespaces).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use network::{Hosts, NetNs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmtime_wasi_http::{Error, RequestOptions, WasiHttpHooks};

use super::outgoing::Outgoing;
use super::{AllowList, PodDns};

/// The name the TLS server's certificate is for.
const BACKEND: &str = "backend.shop.svc.cluster.local";
/// Another name of the same server, which its certificate does not cover.
const OTHER: &str = "other.shop.svc.cluster.local";
/// A name whose first address has no server (127.0.0.2), its second one has.
const TWO: &str = "two.shop.svc.cluster.local";
const TLS_PORT: u16 = 8443;
const HTTP_PORT: u16 = 8080;
/// A port that takes connections and never says anything.
const SILENT_PORT: u16 = 8444;

// The integration tests' helpers (its `wasm` is theirs only).
#[allow(dead_code)]
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/dns.rs"]
mod dns;

use common::namespace;
use dns::DnsServer;

/// The pod's DNS as the kubelet composes it for a pod of namespace `shop`, asking the
/// test's server.
fn pod_dns() -> Arc<PodDns> {
    Arc::new(PodDns::new(
        dns::shop_resolver(Hosts::new()),
        &crate::LookupBudget::default(),
    ))
}

/// What a server saw of one request: the TLS server name, and the request's head.
#[derive(Debug, Clone, Default)]
struct Seen {
    sni: Option<String>,
    head: String,
}

type SeenLog = Arc<Mutex<Vec<Seen>>>;

/// A listener on 127.0.0.1:`port` of the namespace, polled by the test's runtime.
async fn listen(net: &NetNs, port: u16) -> tokio::net::TcpListener {
    let listener = net
        .run(move || {
            let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
            l.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(l)
        })
        .await
        .expect("the namespace thread")
        .expect("bind");
    tokio::net::TcpListener::from_std(listener).expect("listener")
}

/// Reads a request's head and answers 200 with `body`; what it read.
async fn serve_one<S>(mut stream: S, body: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 << 10 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
    String::from_utf8_lossy(&head).into_owned()
}

/// An HTTPS server on [`TLS_PORT`] with a certificate for [`BACKEND`] only, and a
/// client configuration trusting that certificate alone.
async fn tls_server(net: &NetNs, seen: SeenLog) -> Arc<rustls::ClientConfig> {
    let made = rcgen::generate_simple_self_signed(vec![BACKEND.to_owned()]).expect("cert");
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(made.signing_key.serialize_der()).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![made.cert.der().clone()], key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = listen(net, TLS_PORT).await;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake.
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().map(str::to_owned);
                let head = serve_one(tls, "hello over TLS").await;
                seen.lock().expect("lock").push(Seen { sni, head });
            });
        }
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(made.cert.der().clone()).expect("root");
    crate::send::tls_config(Some(&roots)).expect("client config")
}

/// A plain HTTP server on [`HTTP_PORT`].
async fn http_server(net: &NetNs, seen: SeenLog) {
    let listener = listen(net, HTTP_PORT).await;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let head = serve_one(stream, "hello").await;
                seen.lock().expect("lock").push(Seen { sni: None, head });
            });
        }
    });
}

/// A server on [`SILENT_PORT`] that takes connections and holds them, silent.
async fn silent_server(net: &NetNs) {
    let listener = listen(net, SILENT_PORT).await;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
}

/// The namespace, its DNS server (knowing [`BACKEND`], [`OTHER`] and [`TWO`]) and its
/// servers; what the web servers saw, and a client configuration trusting the TLS one.
struct Pod {
    _dir: tempfile::TempDir,
    net: Arc<NetNs>,
    dns: DnsServer,
    seen: SeenLog,
    tls: Arc<rustls::ClientConfig>,
}

impl Pod {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let net = namespace(&dir).await;
        let zone = HashMap::from([
            (BACKEND, vec![Ipv4Addr::LOCALHOST]),
            (OTHER, vec![Ipv4Addr::LOCALHOST]),
            (TWO, vec![Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::LOCALHOST]),
        ]);
        let dns = DnsServer::start(&net, zone).await;
        let seen = SeenLog::default();
        let tls = tls_server(&net, seen.clone()).await;
        http_server(&net, seen.clone()).await;
        silent_server(&net).await;
        Self {
            _dir: dir,
            net,
            dns,
            seen,
            tls,
        }
    }

    /// The send hook of a container of this pod, with the pod's DNS, trusting the test's
    /// TLS server.
    fn outgoing(&self) -> Outgoing {
        Outgoing {
            net: Some(self.net.clone()),
            allow: None,
            log: None,
            dns: Some(pod_dns()),
            tls: Some(self.tls.clone()),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

/// GETs `url` as a component would (the `Host` header from the authority); the status
/// and body, or the error the component sees. Bounded: neither hangs.
async fn get(
    outgoing: &mut Outgoing,
    url: &str,
    options: Option<RequestOptions>,
) -> Result<(u16, String), Error> {
    let uri: hyper::Uri = url.parse().expect("url");
    let authority = uri.authority().expect("authority").to_string();
    let body = http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync();
    let request = hyper::Request::get(uri)
        .header(hyper::header::HOST, authority)
        .body(body)
        .expect("request");
    let sent = outgoing.send_request(request, options, Box::new(async { Ok(()) }));
    let exchange = async {
        let (response, io) = Box::into_pin(sent).await?;
        tokio::spawn(Box::into_pin(io));
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .expect("the request ends")
}

#[tokio::test]
async fn an_https_request_goes_where_the_pods_dns_says_verified_by_the_name() {
    let pod = Pod::start().await;
    let url = format!("https://{BACKEND}:{TLS_PORT}/hello?x=1");
    let (status, body) = get(&mut pod.outgoing(), &url, None)
        .await
        .expect("the request succeeds");
    assert_eq!((status, body.as_str()), (200, "hello over TLS"));
    assert!(
        pod.dns.asked().iter().any(|n| n == BACKEND),
        "{:?}",
        pod.dns.asked()
    );
    let seen = pod.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    // The server was asked by name (SNI), for the path alone, with the name as Host.
    assert_eq!(seen[0].sni.as_deref(), Some(BACKEND));
    assert!(
        seen[0].head.starts_with("GET /hello?x=1 HTTP/1.1\r\n"),
        "{seen:?}"
    );
    assert!(
        seen[0]
            .head
            .to_ascii_lowercase()
            .contains(&format!("host: {BACKEND}:{TLS_PORT}\r\n")),
        "{seen:?}"
    );

    // Without the pod's DNS the host's resolver is asked, which knows no such name.
    let mut host_dns = Outgoing {
        dns: None,
        ..pod.outgoing()
    };
    let failed = get(&mut host_dns, &url, None).await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(pod.seen().len(), 1);
}

#[tokio::test]
async fn a_certificate_that_is_not_for_the_name_is_a_certificate_error() {
    let pod = Pod::start().await;
    // The same server, by a name its certificate does not cover.
    let failed = get(
        &mut pod.outgoing(),
        &format!("https://{OTHER}:{TLS_PORT}/"),
        None,
    )
    .await;
    assert!(
        matches!(failed, Err(Error::TlsCertificateError)),
        "{failed:?}"
    );
    // By its name, but trusting webpki's roots only (no test certificate among them).
    let mut webpki = Outgoing {
        tls: None,
        ..pod.outgoing()
    };
    let failed = get(&mut webpki, &format!("https://{BACKEND}:{TLS_PORT}/"), None).await;
    assert!(
        matches!(failed, Err(Error::TlsCertificateError)),
        "{failed:?}"
    );
    assert!(pod.seen().is_empty(), "{:?}", pod.seen());
}

#[tokio::test]
async fn the_addresses_are_tried_in_turn_and_a_missing_name_is_a_dns_error() {
    let pod = Pod::start().await;
    // 127.0.0.2 refuses; 127.0.0.1 answers. Plain http takes the same way.
    let url = format!("http://{TWO}:{HTTP_PORT}/path");
    let (status, body) = get(&mut pod.outgoing(), &url, None)
        .await
        .expect("the second address answers");
    assert_eq!((status, body.as_str()), (200, "hello"));
    let seen = pod.seen();
    assert!(
        seen[0].head.starts_with("GET /path HTTP/1.1\r\n"),
        "{seen:?}"
    );
    assert!(
        seen[0]
            .head
            .to_ascii_lowercase()
            .contains(&format!("host: {TWO}:{HTTP_PORT}\r\n")),
        "{seen:?}"
    );

    let failed = get(
        &mut pod.outgoing(),
        "https://missing.shop.svc.cluster.local/",
        None,
    )
    .await;
    assert!(
        matches!(&failed, Err(Error::DnsError { rcode: Some(r), .. }) if r == "NXDOMAIN"),
        "{failed:?}"
    );
}

#[tokio::test]
async fn a_server_silent_in_the_handshake_or_the_answer_times_out() {
    let pod = Pod::start().await;
    let quick = RequestOptions {
        connect_timeout: Some(Duration::from_millis(300)),
        first_byte_timeout: Some(Duration::from_millis(300)),
        between_bytes_timeout: None,
    };
    // The TLS handshake is bounded by the connect timeout.
    let url = format!("https://{BACKEND}:{SILENT_PORT}/");
    let failed = get(&mut pod.outgoing(), &url, Some(quick)).await;
    assert!(
        matches!(failed, Err(Error::ConnectionTimeout)),
        "{failed:?}"
    );
    // A request sent and never answered, by the first-byte timeout.
    let url = format!("http://{BACKEND}:{SILENT_PORT}/");
    let failed = get(&mut pod.outgoing(), &url, Some(quick)).await;
    assert!(
        matches!(failed, Err(Error::ConnectionReadTimeout)),
        "{failed:?}"
    );
}

#[tokio::test]
async fn with_an_allow_list_a_name_it_does_not_allow_is_not_looked_up() {
    let pod = Pod::start().await;
    let allow = AllowList::parse(&format!("https://{BACKEND}:{TLS_PORT}")).expect("allow-list");
    let mut outgoing = Outgoing {
        allow: Some(Arc::new(allow)),
        ..pod.outgoing()
    };
    let ok = get(
        &mut outgoing,
        &format!("https://{BACKEND}:{TLS_PORT}/"),
        None,
    )
    .await;
    assert_eq!(ok.map(|(status, _)| status).ok(), Some(200));
    let failed = get(&mut outgoing, &format!("https://{OTHER}:{TLS_PORT}/"), None).await;
    assert!(
        matches!(failed, Err(Error::HttpRequestDenied)),
        "{failed:?}"
    );
    assert!(
        !pod.dns.asked().iter().any(|n| n.starts_with("other.")),
        "{:?}",
        pod.dns.asked()
    );
}
