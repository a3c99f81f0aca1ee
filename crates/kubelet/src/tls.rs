//! The kubelet API's TLS: serving certificate (given, or self-signed in the data dir) and
//! optional client-certificate verification.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

use crate::{Config, Error, Result};

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).map_err(io(format!("reading {}", path.display())))?;
    rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io(format!("parsing {}", path.display())))
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).map_err(io(format!("reading {}", path.display())))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(io(format!("parsing {}", path.display())))?
        .ok_or_else(|| Error::Server(format!("no private key in {}", path.display())))
}

/// Generates `kubelet.crt`/`kubelet.key` in `dir` unless present, as the kubelet does
/// without `--tls-cert-file`: self-signed, for the node's name and IP.
fn self_signed(config: &Config) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let dir = config.data_dir.join("pki");
    let (cert, key) = (dir.join("kubelet.crt"), dir.join("kubelet.key"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let names = vec![config.node_name.clone(), config.node_ip.to_string()];
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| Error::Server(format!("cannot generate serving certificate: {e}")))?;
    std::fs::write(&key, generated.signing_key.serialize_pem())
        .map_err(io(format!("writing {}", key.display())))?;
    std::fs::write(&cert, generated.cert.pem())
        .map_err(io(format!("writing {}", cert.display())))?;
    tracing::info!(cert = %cert.display(), "generated a self-signed serving certificate");
    Ok((cert, key))
}

/// The TLS acceptor for the kubelet API.
pub(crate) fn acceptor(config: &Config) -> Result<TlsAcceptor> {
    let (cert, key) = match (&config.cert_file, &config.private_key_file) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        (None, None) => self_signed(config)?,
        _ => {
            return Err(Error::Server(
                "--cert-file and --private-key-file go together".into(),
            ));
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Server(e.to_string()))?;
    let builder = match &config.client_ca_file {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| Error::Server(format!("client CA: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| Error::Server(format!("client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder
        .with_single_cert(read_certs(&cert)?, read_key(&key)?)
        .map_err(|e| Error::Server(format!("serving certificate: {e}")))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}
