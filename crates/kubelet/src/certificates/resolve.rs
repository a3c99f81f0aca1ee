//! The certificate rustls presents, swappable while connections run: [`Slot`] holds the
//! current one; [`ClientResolver`] hands it to the API client at each handshake,
//! [`ServingResolver`] to the kubelet API's clients. A handshake takes what the slot holds
//! then; connections already established keep the certificate they started with.

use std::sync::{Arc, PoisonError, RwLock};

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{SignatureScheme, pki_types::CertificateDer};

/// The current certificate and key; empty until the first one.
#[derive(Default)]
pub struct Slot(RwLock<Option<Arc<CertifiedKey>>>);

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("filled", &self.get().is_some())
            .finish()
    }
}

impl Slot {
    /// A slot holding `certified`.
    #[must_use]
    pub fn with(certified: Arc<CertifiedKey>) -> Self {
        Self(RwLock::new(Some(certified)))
    }

    /// What new handshakes present.
    #[must_use]
    pub fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the certificate for the handshakes to come.
    pub fn set(&self, certified: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Some(certified);
    }

    /// The DER of the current leaf (for tests and logs).
    #[must_use]
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        self.get().and_then(|c| c.cert.first().cloned())
    }
}

/// The API client's certificate, read from the slot at every handshake.
#[derive(Debug, Clone)]
pub struct ClientResolver(pub Arc<Slot>);

impl ResolvesClientCert for ClientResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        schemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0
            .get()
            .filter(|c| c.key.choose_scheme(schemes).is_some())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The kubelet API's certificate, read from the slot at every handshake. An empty slot
/// (a serving certificate requested but not yet issued) fails the handshake, as the
/// kubelet's `GetCertificate` does.
#[derive(Debug, Clone)]
pub struct ServingResolver(pub Arc<Slot>);

impl ResolvesServerCert for ServingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.get()
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::certificates::Template;
    use crate::certificates::request::tests::TestCa;

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// An echo server over TLS with the certificate in `slot`.
    async fn echo_server(slot: Arc<Slot>) -> std::net::SocketAddr {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(ServingResolver(slot)));
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = tcp.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = tcp.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let mut buf = [0u8; 64];
                    while let Ok(n @ 1..) = tls.read(&mut buf).await {
                        if tls.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    type Client = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

    async fn connect(addr: std::net::SocketAddr, ca: &TestCa) -> std::io::Result<Client> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert.clone()).expect("root");
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = ServerName::IpAddress(IpAddr::from([127, 0, 0, 1]).into());
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    }

    fn served(client: &Client) -> CertificateDer<'static> {
        client
            .get_ref()
            .1
            .peer_certificates()
            .expect("a certificate")[0]
            .clone()
    }

    async fn echo(client: &mut Client, text: &[u8]) {
        client.write_all(text).await.expect("write");
        let mut buf = vec![0u8; text.len()];
        client.read_exact(&mut buf).await.expect("read");
        assert_eq!(buf, text);
    }

    #[tokio::test]
    async fn new_handshakes_get_the_new_certificate_and_open_connections_go_on() {
        let ca = TestCa::new();
        let template = Template::serving("node-a", &[IpAddr::from([127, 0, 0, 1])], &[]);
        let slot = Arc::new(Slot::default());
        let addr = echo_server(slot.clone()).await;
        // Nothing issued yet: no handshake succeeds.
        assert!(connect(addr, &ca).await.is_err());
        let first = ca.issue(&template);
        slot.set(first.certified.clone());
        let mut open = connect(addr, &ca).await.expect("handshake");
        assert_eq!(served(&open), first.certified.cert[0]);
        echo(&mut open, b"before").await;
        let second = ca.issue(&template);
        slot.set(second.certified.clone());
        assert_eq!(slot.leaf().as_ref(), Some(&second.certified.cert[0]));
        // The open connection goes on with the certificate it started with...
        echo(&mut open, b"after the rotation").await;
        assert_eq!(served(&open), first.certified.cert[0]);
        // ...and the next one gets the new certificate.
        let fresh = connect(addr, &ca).await.expect("handshake");
        assert_eq!(served(&fresh), second.certified.cert[0]);
    }
}
