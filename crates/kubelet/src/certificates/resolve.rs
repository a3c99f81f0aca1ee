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
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
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
