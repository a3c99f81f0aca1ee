//! Container probes as the kubelet runs them (`httpGet`, `tcpSocket`, `grpc`), from the
//! node against the pod's address: the spec with the kubelet's defaults, one check, and
//! the thresholds that turn results into a verdict. `container/probe.rs` runs them
//! beside a container's run.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `startupProbe`: until it succeeds, the others wait and the container is not started.
    Startup,
    /// `livenessProbe`: failing it restarts the container.
    Liveness,
    /// `readinessProbe`: the container's readiness, and so the Service's endpoints.
    Readiness,
}

impl Kind {
    /// `Startup`, `Liveness`, `Readiness`: as the kubelet's messages name them.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Startup => "Startup",
            Self::Liveness => "Liveness",
            Self::Readiness => "Readiness",
        }
    }

    /// `startup`, `liveness`: as the kubelet's kill message names them.
    #[must_use]
    pub fn lower(self) -> &'static str {
        match self {
            Self::Startup => "startup",
            Self::Liveness => "liveness",
            Self::Readiness => "readiness",
        }
    }
}

/// What one probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// An HTTP GET; 200 to 399 is a success.
    Http {
        /// `host` (default: the pod's address).
        host: Option<String>,
        /// The port.
        port: u16,
        /// The path and query.
        path: String,
        /// `httpHeaders`.
        headers: Vec<(String, String)>,
        /// `scheme: HTTPS`.
        https: bool,
    },
    /// A TCP connection that opens.
    Tcp {
        /// `host` (default: the pod's address).
        host: Option<String>,
        /// The port.
        port: u16,
    },
    /// A probe whose port cannot be resolved: it fails with this message every time.
    Invalid(String),
    /// The gRPC health checking protocol: `SERVING` is a success.
    Grpc {
        /// The port.
        port: u16,
        /// The service asked about (empty: the server as a whole).
        service: String,
    },
}

/// A probe with the kubelet's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// What is checked.
    pub check: Check,
    /// `initialDelaySeconds` (0).
    pub initial_delay: Duration,
    /// `periodSeconds` (10).
    pub period: Duration,
    /// `timeoutSeconds` (1).
    pub timeout: Duration,
    /// `successThreshold` (1).
    pub success_threshold: u32,
    /// `failureThreshold` (3).
    pub failure_threshold: u32,
}

fn seconds(v: Option<i32>, default: u64, min: u64) -> Duration {
    Duration::from_secs(
        v.and_then(|s| u64::try_from(s).ok())
            .unwrap_or(default)
            .max(min),
    )
}

fn count(v: Option<i32>, default: u32) -> u32 {
    v.and_then(|s| u32::try_from(s).ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// A port by number or by the name of one of the container's ports.
fn port(p: &IntOrString, container: &Container) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("invalid port number: {n}")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            container
                .ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                .and_then(|cp| u16::try_from(cp.container_port).ok())
                .ok_or_else(|| format!("couldn't find port: {name} in {}", container.name))
        }
    }
}

/// The probe's spec; `None` for an `exec` probe (refused at admission) or none at all.
/// A port that is out of range or names no port of the container makes a check that
/// fails with that message.
pub fn spec(probe: &Probe, container: &Container) -> Option<Spec> {
    let check = if let Some(h) = &probe.http_get {
        port(&h.port, container).map(|port| Check::Http {
            host: h.host.clone().filter(|s| !s.is_empty()),
            port,
            path: match h.path.as_deref() {
                None | Some("") => "/".to_owned(),
                Some(p) if p.starts_with('/') => p.to_owned(),
                Some(p) => format!("/{p}"),
            },
            headers: h
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
            https: h.scheme.as_deref() == Some("HTTPS"),
        })
    } else if let Some(t) = &probe.tcp_socket {
        port(&t.port, container).map(|port| Check::Tcp {
            host: t.host.clone().filter(|s| !s.is_empty()),
            port,
        })
    } else if let Some(g) = &probe.grpc {
        u16::try_from(g.port)
            .ok()
            .filter(|p| *p > 0)
            .map(|port| Check::Grpc {
                port,
                service: g.service.clone().unwrap_or_default(),
            })
            .ok_or_else(|| format!("invalid port number: {}", g.port))
    } else {
        return None;
    };
    Some(Spec {
        check: check.unwrap_or_else(Check::Invalid),
        initial_delay: seconds(probe.initial_delay_seconds, 0, 0),
        period: seconds(probe.period_seconds, 10, 1),
        timeout: seconds(probe.timeout_seconds, 1, 1),
        success_threshold: count(probe.success_threshold, 1),
        failure_threshold: count(probe.failure_threshold, 3),
    })
}

/// Consecutive results against the thresholds.
#[derive(Debug, Clone, Default)]
pub struct Thresholds {
    successes: u32,
    failures: u32,
    /// The verdict so far: `None` before the first threshold is met.
    pub state: Option<bool>,
}

impl Thresholds {
    /// Counts a result; the new verdict when it changed.
    pub fn observe(&mut self, spec: &Spec, ok: bool) -> Option<bool> {
        if ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
        }
        let verdict = if self.successes >= spec.success_threshold {
            Some(true)
        } else if self.failures >= spec.failure_threshold {
            Some(false)
        } else {
            None
        };
        match verdict {
            Some(v) if self.state != Some(v) => {
                self.state = Some(v);
                Some(v)
            }
            _ => None,
        }
    }
}

/// The largest body read of an HTTP probe's answer (the kubelet reads 10 KiB).
const MAX_BODY: usize = 10 << 10;

/// Runs `check` against the pod at `pod_ip`, within `timeout`; the kubelet's failure
/// message.
///
/// # Errors
/// Why the probe failed, in the kubelet's words.
pub async fn run(check: &Check, pod_ip: IpAddr, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, run_untimed(check, pod_ip)).await {
        Ok(r) => r,
        Err(_) => Err(match check {
            Check::Http { .. } => format!(
                "Get \"{}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)",
                url(check, pod_ip)
            ),
            Check::Tcp { host, port } => {
                format!(
                    "dial tcp {}: i/o timeout",
                    target(host.as_deref(), pod_ip, *port)
                )
            }
            Check::Grpc { .. } => format!(
                "timeout: health rpc did not complete within {}s",
                timeout.as_secs()
            ),
            Check::Invalid(e) => e.clone(),
        }),
    }
}

fn target(host: Option<&str>, pod_ip: IpAddr, port: u16) -> String {
    match host {
        Some(h) => format!("{h}:{port}"),
        None => SocketAddr::new(pod_ip, port).to_string(),
    }
}

fn url(check: &Check, pod_ip: IpAddr) -> String {
    match check {
        Check::Http {
            host,
            port,
            path,
            https,
            ..
        } => format!(
            "{}://{}{path}",
            if *https { "https" } else { "http" },
            target(host.as_deref(), pod_ip, *port)
        ),
        _ => String::new(),
    }
}

async fn connect(
    host: Option<&str>,
    pod_ip: IpAddr,
    port: u16,
) -> Result<tokio::net::TcpStream, String> {
    let addr = target(host, pod_ip, port);
    tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("dial tcp {addr}: connect: {}", io_reason(&e)))
}

/// Go's wording of the common connect errors.
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        std::io::ErrorKind::HostUnreachable => "no route to host".to_owned(),
        std::io::ErrorKind::NetworkUnreachable => "network is unreachable".to_owned(),
        _ => e.to_string(),
    }
}

async fn run_untimed(check: &Check, pod_ip: IpAddr) -> Result<(), String> {
    match check {
        Check::Tcp { host, port } => connect(host.as_deref(), pod_ip, *port).await.map(drop),
        Check::Http {
            host,
            port,
            path,
            headers,
            https,
        } => {
            let url = url(check, pod_ip);
            let stream = connect(host.as_deref(), pod_ip, *port)
                .await
                .map_err(|e| format!("Get \"{url}\": {e}"))?;
            let authority = target(host.as_deref(), pod_ip, *port);
            let got = if *https {
                // As the kubelet: TLS without verifying the pod's certificate.
                let name = host.clone().unwrap_or_else(|| pod_ip.to_string());
                match tls_insecure(stream, &name).await {
                    Ok(tls) => http_get(tls, &authority, path, headers).await,
                    Err(e) => Err(e),
                }
            } else {
                http_get(stream, &authority, path, headers).await
            };
            got.map_err(|e| format!("Get \"{url}\": {e}"))
                .and_then(|status| {
                    if (200..400).contains(&status) {
                        Ok(())
                    } else {
                        Err(format!("HTTP probe failed with statuscode: {status}"))
                    }
                })
        }
        Check::Grpc { port, service } => {
            crate::pods::grpc_health::check(pod_ip, *port, service).await
        }
        Check::Invalid(e) => Err(e.clone()),
    }
}

/// A TLS connection over `stream` that checks the handshake's signatures but not who
/// signed the certificate, nor its name (the kubelet's `InsecureSkipVerify` for HTTPS
/// probes).
async fn tls_insecure(
    stream: tokio::net::TcpStream,
    name: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    use rustls::pki_types::ServerName;
    // One client configuration for every HTTPS probe of the node.
    static CONFIG: std::sync::OnceLock<Result<std::sync::Arc<rustls::ClientConfig>, String>> =
        std::sync::OnceLock::new();
    let config = CONFIG
        .get_or_init(|| {
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(std::sync::Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            Ok(std::sync::Arc::new(config))
        })
        .clone()?;
    let server = ServerName::try_from(name.to_owned())
        .unwrap_or_else(|_| ServerName::try_from("probe.invalid".to_owned()).expect("a name"));
    tokio_rustls::TlsConnector::from(config)
        .connect(server, stream)
        .await
        .map_err(|e| e.to_string())
}

/// Accepts any certificate; the handshake's signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
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

/// One GET over `stream` with the kubelet's headers; the status code.
async fn http_get<S>(
    stream: S,
    authority: &str,
    path: &str,
    headers: &[(String, String)],
) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, http_body_util::Empty<bytes::Bytes>>(io)
            .await
            .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let mut req = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, "kube-probe/1.36")
        .header(hyper::header::ACCEPT, "*/*");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(http_body_util::Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string());
    let result = match resp {
        Ok(resp) => {
            let status = resp.status().as_u16();
            // Read (and drop) at most the kubelet's share of the body.
            let mut body = resp.into_body();
            let mut read = 0usize;
            while read < MAX_BODY {
                match body.frame().await {
                    Some(Ok(f)) => read += f.data_ref().map_or(0, bytes::Bytes::len),
                    _ => break,
                }
            }
            Ok(status)
        }
        Err(e) => Err(e),
    };
    driver.abort();
    result
}

/// The grace a container killed for failing its `kind` probe gets, as the kubelet gives
/// it: the probe's own `terminationGracePeriodSeconds` when set (startup and liveness
/// probes), else the pod's (`pod_grace`), else 30 s.
#[must_use]
pub fn kill_grace(kind: Kind, container: &Container, pod_grace: Option<i64>) -> Duration {
    let probe = match kind {
        Kind::Startup => container.startup_probe.as_ref(),
        Kind::Liveness => container.liveness_probe.as_ref(),
        Kind::Readiness => None,
    };
    let seconds = probe
        .and_then(|p| p.termination_grace_period_seconds)
        .or(pod_grace)
        .and_then(|s| u64::try_from(s).ok())
        .unwrap_or(30);
    Duration::from_secs(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container() -> Container {
        serde_json::from_value(serde_json::json!({
            "name": "web",
            "ports": [{ "name": "http", "containerPort": 8080 }]
        }))
        .expect("test")
    }

    fn probe(v: serde_json::Value) -> Probe {
        serde_json::from_value(v).expect("test")
    }

    #[test]
    fn specs_take_the_kubelets_defaults_and_named_ports() {
        let s = spec(
            &probe(serde_json::json!({ "httpGet": { "port": "http", "path": "healthz" } })),
            &container(),
        )
        .expect("test");
        assert_eq!(
            s,
            Spec {
                check: Check::Http {
                    host: None,
                    port: 8080,
                    path: "/healthz".into(),
                    headers: vec![],
                    https: false
                },
                initial_delay: Duration::ZERO,
                period: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                success_threshold: 1,
                failure_threshold: 3,
            }
        );
        let bad = spec(
            &probe(serde_json::json!({ "tcpSocket": { "port": "nope" } })),
            &container(),
        )
        .expect("test");
        assert_eq!(
            bad.check,
            Check::Invalid("couldn't find port: nope in web".to_owned())
        );
        assert!(
            spec(
                &probe(serde_json::json!({ "exec": { "command": ["x"] } })),
                &container()
            )
            .is_none()
        );
        let g = spec(&probe(serde_json::json!({ "grpc": { "port": 9000 }, "periodSeconds": 0, "failureThreshold": 0 })), &container())
            .expect("test");
        assert_eq!(g.period, Duration::from_secs(1));
        assert_eq!(g.failure_threshold, 3);
    }

    #[test]
    fn thresholds_need_consecutive_results() {
        let s = Spec {
            check: Check::Tcp {
                host: None,
                port: 1,
            },
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: 2,
            failure_threshold: 3,
        };
        let mut t = Thresholds::default();
        assert_eq!(t.observe(&s, true), None);
        assert_eq!(t.observe(&s, false), None);
        assert_eq!(t.observe(&s, true), None);
        assert_eq!(t.observe(&s, true), Some(true));
        assert_eq!(t.observe(&s, true), None);
        assert_eq!(t.observe(&s, false), None);
        assert_eq!(t.observe(&s, false), None);
        assert_eq!(t.observe(&s, true), None, "a success resets the failures");
        assert_eq!(t.observe(&s, false), None);
        assert_eq!(t.observe(&s, false), None);
        assert_eq!(t.observe(&s, false), Some(false));
    }

    #[tokio::test]
    async fn http_and_tcp_checks_give_the_kubelets_messages() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("test");
        let port = listener.local_addr().expect("test").port();
        let server = tokio::spawn(async move {
            for status in [200, 503, 302] {
                let (mut s, _) = listener.accept().await.expect("test");
                let mut buf = vec![0; 4096];
                let n = s.read(&mut buf).await.expect("test");
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(req.starts_with("GET /healthz HTTP/1.1\r\n"), "{req}");
                assert!(
                    req.to_ascii_lowercase().contains("user-agent: kube-probe/"),
                    "{req}"
                );
                assert!(req.to_ascii_lowercase().contains("x-check: 1"), "{req}");
                let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok");
                s.write_all(reply.as_bytes()).await.expect("test");
            }
        });
        let ip: IpAddr = "127.0.0.1".parse().expect("test");
        let check = Check::Http {
            host: None,
            port,
            path: "/healthz".into(),
            headers: vec![("X-Check".into(), "1".into())],
            https: false,
        };
        let t = Duration::from_secs(5);
        assert_eq!(run(&check, ip, t).await, Ok(()));
        assert_eq!(
            run(&check, ip, t).await,
            Err("HTTP probe failed with statuscode: 503".into())
        );
        assert_eq!(run(&check, ip, t).await, Ok(()), "3xx is a success");
        server.await.expect("test");
        // Nothing listens any more.
        let refused = run(&Check::Tcp { host: None, port }, ip, t)
            .await
            .expect_err("test");
        assert_eq!(
            refused,
            format!("dial tcp 127.0.0.1:{port}: connect: connection refused")
        );
        let refused = run(&check, ip, t).await.expect_err("test");
        assert!(
            refused.starts_with(&format!(
                "Get \"http://127.0.0.1:{port}/healthz\": dial tcp"
            )),
            "{refused}"
        );
        // A server that accepts and never answers: the timeout.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("test");
        let check = Check::Http {
            host: None,
            port: silent.local_addr().expect("test").port(),
            path: "/".into(),
            headers: vec![],
            https: false,
        };
        let slow = run(&check, ip, Duration::from_millis(300))
            .await
            .expect_err("test");
        assert!(slow.contains("context deadline exceeded"), "{slow}");
    }

    #[tokio::test]
    async fn https_checks_skip_verification_of_a_self_signed_certificate() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A server whose certificate names neither the pod nor any CA the node knows.
        let cert =
            rcgen::generate_simple_self_signed(vec!["somewhere.else".to_owned()]).expect("test");
        let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
            .expect("test");
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("test")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("test");
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("test");
        let port = listener.local_addr().expect("test").port();
        let server = tokio::spawn(async move {
            for status in [204, 500] {
                let (tcp, _) = listener.accept().await.expect("test");
                let mut s = acceptor.accept(tcp).await.expect("a TLS handshake");
                let mut buf = vec![0; 4096];
                let n = s.read(&mut buf).await.expect("test");
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(req.starts_with("GET /tls HTTP/1.1\r\n"), "{req}");
                let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                s.write_all(reply.as_bytes()).await.expect("test");
                let _ = s.shutdown().await;
            }
            // A plain-text server where TLS is expected.
            let (mut plain, _) = listener.accept().await.expect("test");
            let _ = plain.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
        });
        let ip: IpAddr = "127.0.0.1".parse().expect("test");
        let check = Check::Http {
            host: None,
            port,
            path: "/tls".into(),
            headers: vec![],
            https: true,
        };
        let t = Duration::from_secs(10);
        assert_eq!(run(&check, ip, t).await, Ok(()));
        assert_eq!(
            run(&check, ip, t).await,
            Err("HTTP probe failed with statuscode: 500".into())
        );
        let plain = run(&check, ip, t).await.expect_err("not TLS");
        assert!(
            plain.starts_with(&format!("Get \"https://127.0.0.1:{port}/tls\": ")),
            "{plain}"
        );
        server.await.expect("test");
    }

    #[test]
    fn a_probes_own_grace_period_wins_over_the_pods() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "web",
            "livenessProbe": { "tcpSocket": { "port": 80 }, "terminationGracePeriodSeconds": 3 },
            "startupProbe": { "tcpSocket": { "port": 80 } }
        }))
        .expect("container");
        assert_eq!(
            kill_grace(Kind::Liveness, &c, Some(60)),
            Duration::from_secs(3)
        );
        assert_eq!(
            kill_grace(Kind::Startup, &c, Some(60)),
            Duration::from_secs(60)
        );
        assert_eq!(kill_grace(Kind::Startup, &c, None), Duration::from_secs(30));
        // A negative value is no grace the kubelet would give: the default.
        assert_eq!(
            kill_grace(Kind::Startup, &c, Some(-1)),
            Duration::from_secs(30)
        );
    }
}
