//! The node's own certificates, obtained and renewed through `CertificateSigningRequest`s as
//! the kubelet does (TLS bootstrap, `--rotate-certificates`, `--rotate-server-certificates`).
//!
//! - [`request`]: a new P-256 key and its CSR; the issued certificate checked against both.
//! - [`signing`]: the `certificates.k8s.io/v1` object, waited on until issued (bounded).
//! - [`store`]: `kubelet-{client,server}-<timestamp>.pem` and the `-current.pem` links.
//! - [`bootstrap`]: a client certificate from `--bootstrap-kubeconfig`, and the kubeconfig.
//! - [`resolve`]: the swappable certificate that rustls presents (client and server side).
//! - [`connector`]: the API client over that certificate, whose connections can be closed.
//! - [`rotation`]: the deadline at 70-90 % of the lifetime, and the loop that renews.

pub mod bootstrap;
pub mod connector;
pub mod request;
pub mod resolve;
pub mod rotation;
pub mod signing;
pub mod store;

use std::net::IpAddr;
use std::time::Duration;

pub use request::Issued;
pub use resolve::Slot;

/// The most bytes of certificate PEM taken from the API or read from a file.
pub const MAX_PEM_BYTES: usize = 64 * 1024;

/// The longest a CSR is waited on before it is given up (and, when rotating, requested
/// again): client-go's certificate manager waits 15 minutes.
pub const CSR_WAIT: Duration = Duration::from_secs(15 * 60);

/// Which of the node's two certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The client certificate the node authenticates to the API server with.
    Client,
    /// The kubelet API's serving certificate.
    Serving,
}

impl Kind {
    /// The `signerName` of its CSRs.
    #[must_use]
    pub fn signer(self) -> &'static str {
        match self {
            Self::Client => "kubernetes.io/kube-apiserver-client-kubelet",
            Self::Serving => "kubernetes.io/kubelet-serving",
        }
    }

    /// The usages the kubelet asks for with an ECDSA key (no key encipherment: an EC
    /// key cannot encipher).
    #[must_use]
    pub fn usages(self) -> [&'static str; 2] {
        match self {
            Self::Client => ["digital signature", "client auth"],
            Self::Serving => ["digital signature", "server auth"],
        }
    }

    /// The files' prefix in the cert dir.
    #[must_use]
    pub fn file_prefix(self) -> &'static str {
        match self {
            Self::Client => "kubelet-client",
            Self::Serving => "kubelet-server",
        }
    }

    /// For logs and errors.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Self::Client => "client certificate",
            Self::Serving => "serving certificate",
        }
    }
}

/// What a certificate of the node must say: `CN=system:node:<node>, O=system:nodes`, and
/// for the serving one the node's addresses as subject alternative names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Client or serving.
    pub kind: Kind,
    /// The `Node`'s name.
    pub node_name: String,
    /// IP SANs (serving only): the addresses the node reports.
    pub ips: Vec<IpAddr>,
    /// DNS SANs (serving only): its host name.
    pub dns_names: Vec<String>,
}

impl Template {
    /// The client certificate of node `node_name`.
    #[must_use]
    pub fn client(node_name: &str) -> Self {
        Self {
            kind: Kind::Client,
            node_name: node_name.to_owned(),
            ips: Vec::new(),
            dns_names: Vec::new(),
        }
    }

    /// The serving certificate of node `node_name` for these addresses and names (empty
    /// and duplicate names are left out).
    #[must_use]
    pub fn serving(node_name: &str, ips: &[IpAddr], dns_names: &[String]) -> Self {
        let mut names: Vec<String> = Vec::new();
        for name in dns_names {
            if !name.is_empty() && !names.contains(name) {
                names.push(name.clone());
            }
        }
        let mut addresses: Vec<IpAddr> = Vec::new();
        for ip in ips {
            if !addresses.contains(ip) {
                addresses.push(*ip);
            }
        }
        Self {
            kind: Kind::Serving,
            node_name: node_name.to_owned(),
            ips: addresses,
            dns_names: names,
        }
    }

    /// `system:node:<node>`.
    #[must_use]
    pub fn common_name(&self) -> String {
        format!("system:node:{}", self.node_name)
    }
}

/// The organization of every node certificate.
pub const NODES_GROUP: &str = "system:nodes";

/// Errors of obtaining, checking, storing and using the node's certificates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A kubeconfig could not be read or used.
    #[error("kubeconfig {path}: {reason}")]
    Kubeconfig {
        /// Its path.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A key or CSR could not be generated.
    #[error("generating a key or CSR: {0}")]
    Generate(String),
    /// The CSR was denied (`Denied` condition).
    #[error("certificate signing request {name} was denied: {reason}")]
    Denied {
        /// The CSR's name.
        name: String,
        /// Its condition's reason and message.
        reason: String,
    },
    /// The signer failed the CSR (`Failed` condition).
    #[error("certificate signing request {name} failed: {reason}")]
    Failed {
        /// The CSR's name.
        name: String,
        /// Its condition's reason and message.
        reason: String,
    },
    /// The CSR was not issued in time (or it disappeared).
    #[error("certificate signing request {name} was not issued within {waited:?}")]
    NotIssued {
        /// The CSR's name.
        name: String,
        /// How long it was waited on.
        waited: Duration,
    },
    /// The client certificate expired and could not be renewed: the agent stops, so that
    /// a restart bootstraps again.
    #[error("the {what} expired at {since} and could not be renewed; restart to bootstrap again")]
    Expired {
        /// Which certificate.
        what: String,
        /// When it expired.
        since: jiff::Timestamp,
    },
    /// A certificate (issued, or found on disk) is not one the node can use.
    #[error("unusable {what}: {reason}")]
    Invalid {
        /// Which certificate.
        what: String,
        /// Why.
        reason: String,
    },
}

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// Keeps the kubelet API's certificate (`--rotate-server-certificates`) until `shutdown`:
/// for the node's address and host name (those its status reports), starting from the cert
/// dir's current one when still valid, otherwise requested at once (handshakes fail
/// until it is issued), then renewed before expiry.
pub async fn keep_serving(
    config: std::sync::Arc<crate::Config>,
    client: kube::Client,
    slot: std::sync::Arc<Slot>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let hostname = crate::node::host_facts().hostname.clone();
    let template = Template::serving(&config.node_name, &[config.node_ip], &[hostname]);
    let current = rotation::load_current(config.cert_dir.clone(), &template).await;
    match &current {
        Some(issued) => {
            slot.set(issued.certified.clone());
            tracing::info!(
                ?issued,
                "serving the cert dir's current serving certificate"
            );
        }
        None => tracing::info!(
            "requesting a serving certificate; the kubelet API refuses TLS handshakes until \
             it is approved and issued"
        ),
    }
    let rotator = rotation::Rotator {
        template,
        client,
        slot,
        cert_dir: config.cert_dir.clone(),
        current,
        connections: None,
        wait: CSR_WAIT,
    };
    // Only the client certificate is ever given up on.
    let _ = rotator.run(shutdown).await;
}

/// Runs blocking file work on tokio's blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    crate::blocking::run(f)
        .await
        .map_err(io("file work".to_owned()))?
}
