//! The kubelet API cannot be locked out by strangers (issue 22, finding 1): connections
//! that finish the TLS handshake without a client certificate and then send nothing, or
//! only the HTTP/2 preface, neither take the places callers with credentials need nor
//! stay open for ever.
//!
//! The attack is real TLS from this process (rustls over blocking sockets, on a blocking
//! thread), capped at [`IDLE_CONNECTIONS`] connections and bounded in time, and every
//! socket is closed at the end.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use e2e::Cluster;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// Connections the attack opens (the old server served 1024 at once).
const IDLE_CONNECTIONS: usize = 1100;
/// How long one attacking handshake may take before it counts as refused.
const HANDSHAKE_BOUND: Duration = Duration::from_secs(3);
/// The whole attack's time bound (the old server let every handshake past the 1024th
/// hang: they would take `HANDSHAKE_BOUND` each).
const ATTACK_BOUND: Duration = Duration::from_secs(120);
/// The HTTP/2 connection preface, all some of the attacking connections send.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Accepts any server certificate, as `curl --insecure` does; the handshake's
/// signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client configuration without a client certificate: a stranger's.
fn stranger() -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// What the attack holds.
struct Held {
    /// Connections whose handshake finished, held open.
    streams: Vec<StreamOwned<ClientConnection, TcpStream>>,
    /// Handshakes that failed or did not finish within [`HANDSHAKE_BOUND`].
    refused: usize,
}

/// Opens up to `count` TLS connections to `port` without a client certificate; every
/// other one then sends the HTTP/2 preface. Blocking.
fn attack(port: u16, count: usize) -> Result<Held> {
    let config = stranger()?;
    let name = ServerName::try_from("127.0.0.1")?;
    let end = Instant::now() + ATTACK_BOUND;
    let mut held = Held {
        streams: Vec::with_capacity(count),
        refused: 0,
    };
    for i in 0..count {
        if Instant::now() > end {
            break;
        }
        let Ok(sock) = TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            HANDSHAKE_BOUND,
        ) else {
            held.refused += 1;
            continue;
        };
        sock.set_read_timeout(Some(HANDSHAKE_BOUND))?;
        sock.set_write_timeout(Some(HANDSHAKE_BOUND))?;
        let conn = ClientConnection::new(config.clone(), name.clone())?;
        let mut stream = StreamOwned::new(conn, sock);
        let mut handshake = || -> std::io::Result<()> {
            while stream.conn.is_handshaking() {
                stream.conn.complete_io(&mut stream.sock)?;
            }
            if i % 2 == 1 {
                stream.write_all(H2_PREFACE)?;
                stream.flush()?;
            }
            Ok(())
        };
        match handshake() {
            Ok(()) => held.streams.push(stream),
            Err(_) => held.refused += 1,
        }
    }
    Ok(held)
}

/// Reads each held connection until the server closes it or `bound` ran out: how many
/// are still open then. Blocking.
fn still_open(held: &mut Held, bound: Duration) -> usize {
    let end = Instant::now() + bound;
    let mut open = 0;
    let mut buf = [0u8; 4096];
    for stream in &mut held.streams {
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() || stream.sock.set_read_timeout(Some(left)).is_err() {
                open += 1;
                break;
            }
            match stream.read(&mut buf) {
                // The server's SETTINGS frame, for those that sent the HTTP/2 preface.
                Ok(n) if n > 0 => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    open += 1;
                    break;
                }
                // End of stream, reset, close_notify: closed.
                Ok(_) | Err(_) => break,
            }
        }
    }
    open
}

/// `GET /healthz` with the API server's kubelet client certificate (an authorized
/// caller): the status (0 when curl got none) and how long it took.
async fn healthz(port: u16) -> Result<(u16, Duration)> {
    let env = e2e::cluster_env()?;
    let cert = env
        .get("KUBELET_CLIENT_CERT")
        .context("KUBELET_CLIENT_CERT")?;
    let key = env
        .get("KUBELET_CLIENT_KEY")
        .context("KUBELET_CLIENT_KEY")?;
    let started = Instant::now();
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["--max-time", "20", "--insecure", "--cert"])
        .arg(cert)
        .arg("--key")
        .arg(key)
        .arg(format!("https://127.0.0.1:{port}/healthz"))
        .output()
        .await
        .context("running curl")?;
    let took = started.elapsed();
    let status = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    Ok((status, took))
}

#[tokio::test]
async fn idle_unauthenticated_connections_leave_healthz_answering_and_are_closed() -> Result<()> {
    let cluster = Cluster::connect().await?;
    let node = cluster.ready_node("e2e-api-bounds", 10547, &[]).await?;
    let port = node.port;
    let (status, took) = healthz(port).await?;
    assert_eq!(status, 200, "/healthz before the attack");
    println!("/healthz before the attack: {took:?}");

    let mut held = tokio::task::spawn_blocking(move || attack(port, IDLE_CONNECTIONS)).await??;
    println!(
        "{} idle unauthenticated TLS connections made, {} handshakes refused or hung",
        held.streams.len(),
        held.refused
    );
    // The old server: the 1025th handshake hung, and so did this request.
    let (status, took) = healthz(port).await?;
    println!("/healthz with the idle connections held: status {status} in {took:?}");
    assert_eq!(
        status,
        200,
        "an authorized /healthz while {} idle connections are held",
        held.streams.len()
    );

    // The server closes idle connections on its own (the first request's bound, then
    // the idle bound): none is left after a generous wait.
    let waited = Instant::now();
    let open = tokio::task::spawn_blocking(move || {
        let open = still_open(&mut held, Duration::from_secs(180));
        drop(held);
        open
    })
    .await?;
    println!(
        "the held connections were all closed by the server within {:?}",
        waited.elapsed()
    );
    assert_eq!(open, 0, "idle connections the server left open after 180 s");
    let (status, took) = healthz(port).await?;
    assert_eq!(status, 200, "/healthz after the attack");
    println!("/healthz after the attack: {took:?}");
    Ok(())
}
