//! Sending an outgoing `wasi:http` request of a pod that has DNS of its own: as
//! wasmtime-wasi-http's default sender does (HTTP/1.1, its timeouts), except for where the
//! request goes. The pod's resolver gives the addresses of the authority's name, they are
//! tried in turn, and an `https` server is sent the name (SNI) and verified by it, not by
//! the address. Called on the pod namespace's thread, where the connection's socket is
//! made.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep, timeout};
use wasmtime_wasi::p2::bindings::sockets::network::ErrorCode;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

/// How long connecting, the first byte of the answer and each later wait for its body
/// may take when the guest sets no timeout: wasmtime-wasi-http's default sender's.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// An answer, and the connection's work that goes on while its body is read.
pub(crate) type Sent = (
    hyper::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
);

/// The TLS client configuration that trusts `roots` (`None`: webpki's roots, as
/// wasmtime-wasi-http's default sender).
///
/// # Errors
/// The ring provider refuses the safe default protocol versions (it does not).
pub(crate) fn tls_config(
    roots: Option<&rustls::RootCertStore>,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let roots = roots.cloned().unwrap_or_else(|| rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    });
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The configuration with webpki's roots, made once.
fn default_tls() -> Result<Arc<rustls::ClientConfig>, Error> {
    static DEFAULT: OnceLock<Option<Arc<rustls::ClientConfig>>> = OnceLock::new();
    DEFAULT
        .get_or_init(|| tls_config(None).ok())
        .clone()
        .ok_or(Error::ConfigurationError)
}

/// The guest's timeouts, each [`DEFAULT_TIMEOUT`] when unset.
#[derive(Clone, Copy)]
struct Timeouts {
    connect: Duration,
    first_byte: Duration,
    between_bytes: Duration,
}

impl Timeouts {
    fn of(options: Option<RequestOptions>) -> Self {
        let options = options.unwrap_or_default();
        Self {
            connect: options.connect_timeout.unwrap_or(DEFAULT_TIMEOUT),
            first_byte: options.first_byte_timeout.unwrap_or(DEFAULT_TIMEOUT),
            between_bytes: options.between_bytes_timeout.unwrap_or(DEFAULT_TIMEOUT),
        }
    }
}

/// Sends `request` to an address `dns` gives for its authority's name (an address as the
/// authority is used as it is), over TLS verified against the name with `tls` (`None`:
/// webpki's roots) when its scheme is `https`.
///
/// # Errors
/// What the guest sees: a DNS error or timeout when the name has no address, connection
/// refused or timed out when no address answers, a TLS certificate error when the server
/// cannot prove it is the name, and wasmtime-wasi-http's errors of the exchange.
pub(crate) async fn send(
    mut request: hyper::Request<WasiBody>,
    options: Option<RequestOptions>,
    dns: &crate::PodDns,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Sent, Error> {
    let uri = request.uri();
    let https = uri.scheme_str() == Some("https");
    let host = uri.host().ok_or(Error::HttpRequestUriInvalid)?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    // The request line carries the path only (no proxy is asked).
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    *request.uri_mut() = path.parse().map_err(|_| Error::HttpRequestUriInvalid)?;
    let timeouts = Timeouts::of(options);

    let addresses = addresses(dns, &host).await?;
    let stream = connect(&addresses, port, timeouts.connect).await?;
    if !https {
        return exchange(stream, request, timeouts).await;
    }
    let name = match host.parse::<IpAddr>() {
        Ok(ip) => ServerName::from(ip),
        Err(_) => ServerName::try_from(host)?,
    };
    let tls = match tls {
        Some(tls) => tls,
        None => default_tls()?,
    };
    let stream = timeout(
        timeouts.connect,
        tokio_rustls::TlsConnector::from(tls).connect(name, stream),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)?
    .map_err(tls_error)?;
    exchange(stream, request, timeouts).await
}

/// The addresses of `host`, IPv4 first, as the pod's resolver orders them.
async fn addresses(dns: &crate::PodDns, host: &str) -> Result<Vec<IpAddr>, Error> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let found = dns.lookup(host).await.map_err(|code| match code {
        ErrorCode::NameUnresolvable => Error::DnsError {
            rcode: Some("NXDOMAIN".to_owned()),
            info_code: None,
        },
        ErrorCode::InvalidArgument => Error::HttpRequestUriInvalid,
        _ => Error::DnsTimeout,
    })?;
    if found.is_empty() {
        return Err(Error::DestinationNotFound);
    }
    Ok(found)
}

/// A connection to the first of `addresses` on `port` that takes one, all of them within
/// `within`: each gets an equal share of the time left, so that one that never answers
/// leaves time for the next.
async fn connect(addresses: &[IpAddr], port: u16, within: Duration) -> Result<TcpStream, Error> {
    let deadline = Instant::now() + within;
    let mut failure = Error::DestinationNotFound;
    for (i, ip) in addresses.iter().enumerate() {
        let left = u32::try_from(addresses.len() - i).unwrap_or(u32::MAX);
        let share = deadline.saturating_duration_since(Instant::now()) / left;
        match timeout(share, TcpStream::connect(SocketAddr::new(*ip, port))).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => failure = Error::Connect(e),
            Err(_) => failure = Error::ConnectionTimeout,
        }
    }
    Err(failure)
}

/// A TLS failure as the guest's error code: a certificate that does not prove the name
/// (or is not trusted) is `TLS-certificate-error`, an alert from the server
/// `TLS-alert-received`.
fn tls_error(error: std::io::Error) -> Error {
    match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(_)) => Error::TlsCertificateError,
        Some(rustls::Error::AlertReceived(alert)) => Error::TlsAlertReceived {
            alert_id: Some(u8::from(*alert)),
            alert_message: Some(format!("{alert:?}")),
        },
        _ => Error::Tls(error),
    }
}

/// One HTTP/1.1 exchange over `stream`: the answer's head, waited for while the
/// connection is driven, and the rest of the connection's work.
async fn exchange<S>(
    stream: S,
    request: hyper::Request<WasiBody>,
    timeouts: Timeouts,
) -> Result<Sent, Error>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = timeout(
        timeouts.connect,
        hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;
    let mut conn = Some(Box::pin(conn));
    let answer = timeout(timeouts.first_byte, sender.send_request(request));
    tokio::pin!(answer);
    let answer = loop {
        match conn.as_mut() {
            Some(running) => tokio::select! {
                answer = &mut answer => break answer,
                // The connection ended first: its error, or (closed cleanly) the answer
                // it may still have delivered.
                ended = running => {
                    ended?;
                    conn = None;
                }
            },
            None => break (&mut answer).await,
        }
    };
    let answer = answer
        .map_err(|_| Error::ConnectionReadTimeout)?
        .map_err(Error::from)?;
    let answer = answer.map(|incoming| {
        Timed {
            incoming,
            between: timeouts.between_bytes,
            idle: Box::pin(tokio::time::sleep(timeouts.between_bytes)),
        }
        .boxed_unsync()
    });
    let rest: Box<dyn Future<Output = Result<(), Error>> + Send> = Box::new(async move {
        match conn {
            Some(conn) => conn.await.map_err(|e| {
                if e.is_timeout() {
                    Error::HttpResponseTimeout
                } else {
                    Error::from(e)
                }
            }),
            None => Ok(()),
        }
    });
    Ok((answer, rest))
}

/// An answer's body that fails with `connection-read-timeout` when no frame comes for
/// `between` (the guest's between-bytes timeout).
struct Timed {
    incoming: Incoming,
    between: Duration,
    idle: Pin<Box<Sleep>>,
}

impl Body for Timed {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.as_mut().reset(Instant::now() + this.between);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) if e.is_timeout() => {
                Poll::Ready(Some(Err(Error::HttpResponseTimeout)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Error::from(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                ready!(this.idle.as_mut().poll(cx));
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}
