//! The node's API client when its client certificate rotates: kube's layers (base URI,
//! auth, headers) over a hyper client whose rustls configuration takes the certificate
//! from a [`Slot`] at every handshake, and whose connections [`Connections::close_all`]
//! ends, as the kubelet's rotating dialer does, so that every request after a rotation
//! is made on a connection authenticated with the new certificate.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::Result;
use super::resolve::{ClientResolver, Slot};

/// The connections the client opened since the last [`Connections::close_all`].
#[derive(Debug, Clone, Default)]
pub struct Connections(Arc<Mutex<CancellationToken>>);

impl Connections {
    fn current(&self) -> CancellationToken {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Ends every connection opened so far (idle, in use, or carrying a watch): their
    /// reads and writes fail, and the client connects again for what comes next.
    pub fn close_all(&self) {
        let old = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        old.cancel();
    }
}

/// A connector whose connections end when [`Connections::close_all`] is called.
#[derive(Debug, Clone)]
struct Closable<C> {
    inner: C,
    connections: Connections,
}

type Connecting<T, E> = Pin<Box<dyn Future<Output = Result<Closing<T>, E>> + Send>>;

impl<C> tower::Service<http::Uri> for Closable<C>
where
    C: tower::Service<http::Uri>,
    C::Future: Send + 'static,
{
    type Response = Closing<C::Response>;
    type Error = C::Error;
    type Future = Connecting<C::Response, C::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let closed = self.connections.current().cancelled_owned();
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            Ok(Closing {
                inner: connecting.await?,
                closed: Box::pin(closed),
            })
        })
    }
}

/// A connection that fails its reads and writes once closed.
struct Closing<T> {
    inner: T,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<T> Closing<T> {
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.closed.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed: the client certificate was rotated",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl<T: Read + Unpin> Read for Closing<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Closing<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<T: Connection> Connection for Closing<T> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

/// A client of `config`'s server (its CA, token or headers; a client certificate in it is
/// ignored) that presents the certificate in `slot`, and the handle that closes its
/// connections.
///
/// # Errors
/// When `config` cannot make a TLS configuration or its auth layer.
pub fn client(
    config: &kube::Config,
    slot: Arc<Slot>,
) -> Result<(kube::Client, Connections), kube::Error> {
    let mut config = config.clone();
    config.auth_info.client_certificate = None;
    config.auth_info.client_certificate_data = None;
    config.auth_info.client_key = None;
    config.auth_info.client_key_data = None;
    let mut tls = config.rustls_client_config()?;
    tls.client_auth_cert_resolver = Arc::new(ClientResolver(slot));
    // A resumed session keeps the client certificate of the handshake it resumes: the API
    // server would go on seeing the old certificate, past its expiry. Every connection
    // makes a full handshake (as Go's client, which keeps no session cache by default).
    tls.resumption = rustls::client::Resumption::disabled();
    let connections = Connections::default();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let closable = Closable {
        inner: http,
        connections: connections.clone(),
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(closable);
    let mut timeouts = hyper_timeout::TimeoutConnector::new(https);
    timeouts.set_connect_timeout(config.connect_timeout);
    timeouts.set_read_timeout(config.read_timeout);
    timeouts.set_write_timeout(config.write_timeout);
    let hyper_client: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(timeouts);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(tower::BoxError::from)
        .service(hyper_client);
    Ok((
        kube::Client::new(service, config.default_namespace.clone()),
        connections,
    ))
}

#[cfg(test)]
mod tests {
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tower::Service;

    use super::*;

    /// A connector whose connections are in-memory pipes (the far ends kept in `ends`).
    fn pipes(
        ends: Arc<Mutex<Vec<DuplexStream>>>,
    ) -> impl tower::Service<
        http::Uri,
        Response = TokioIo<DuplexStream>,
        Error = io::Error,
        Future = std::future::Ready<io::Result<TokioIo<DuplexStream>>>,
    > + Clone {
        tower::service_fn(move |_uri: http::Uri| {
            let (near, far) = tokio::io::duplex(64);
            ends.lock().expect("lock").push(far);
            std::future::ready(Ok(TokioIo::new(near)))
        })
    }

    #[tokio::test]
    async fn close_all_ends_the_connections_made_before_it_only() {
        let ends = Arc::new(Mutex::new(Vec::new()));
        let connections = Connections::default();
        let mut connector = Closable {
            inner: pipes(ends.clone()),
            connections: connections.clone(),
        };
        let uri = http::Uri::from_static("https://127.0.0.1:6443");
        let mut old = TokioIo::new(connector.call(uri.clone()).await.expect("connected"));
        old.write_all(b"x").await.expect("written before");
        connections.close_all();
        let error = old.write_all(b"y").await.expect_err("closed");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
        assert!(old.read(&mut [0u8; 4]).await.is_err(), "reads fail too");
        let mut new = TokioIo::new(connector.call(uri).await.expect("connected"));
        new.write_all(b"z").await.expect("a new connection works");
        let mut far = ends.lock().expect("lock").pop().expect("far end");
        let mut got = [0u8; 1];
        far.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"z");
    }
}
