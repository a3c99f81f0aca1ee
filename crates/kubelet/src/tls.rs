//! The kubelet API's TLS: serving certificate (given, self-signed in the cert dir, or with
//! `--rotate-server-certificates` issued by CSR and swapped in place, see
//! [`crate::certificates`]) and optional client-certificate verification.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::certificates::Slot;
use crate::certificates::resolve::ServingResolver;
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

/// Generates `kubelet.crt`/`kubelet.key` in the cert dir unless present, as the kubelet
/// does without `--tls-cert-file`: self-signed, for the node's name and IP. The directory
/// is 0700 and the key 0600 (an older, wider key or directory is narrowed).
fn self_signed(config: &Config) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let dir = config.cert_dir.clone();
    let (cert, key) = (dir.join("kubelet.crt"), dir.join("kubelet.key"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io(format!("creating {}", dir.display())))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io(format!("restricting {}", dir.display())))?;
    if cert.exists() && key.exists() {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .map_err(io(format!("restricting {}", key.display())))?;
        return Ok((cert, key));
    }
    let names = vec![config.node_name.clone(), config.node_ip.to_string()];
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| Error::Server(format!("cannot generate serving certificate: {e}")))?;
    // Written under another name with its final mode from the start, then renamed: the
    // key is never readable by others, nor found half-written.
    let partial = dir.join("kubelet.key.partial");
    let _ = std::fs::remove_file(&partial);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(io(format!("creating {}", partial.display())))?;
    std::io::Write::write_all(&mut file, generated.signing_key.serialize_pem().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io(format!("writing {}", partial.display())))?;
    std::fs::rename(&partial, &key).map_err(io(format!("writing {}", key.display())))?;
    std::fs::write(&cert, generated.cert.pem())
        .map_err(io(format!("writing {}", cert.display())))?;
    tracing::info!(cert = %cert.display(), "generated a self-signed serving certificate");
    Ok((cert, key))
}

/// The serving certificate the API starts with: the given or self-signed one; with
/// `--rotate-server-certificates` none (the cert dir's current one, or the one the CSR
/// brings, is put in the slot by the rotation).
fn initial(config: &Config, provider: &rustls::crypto::CryptoProvider) -> Result<Slot> {
    let (cert, key) = match (&config.cert_file, &config.private_key_file) {
        _ if config.rotate_server_certificates => {
            if config.cert_file.is_some() {
                return Err(Error::Server(
                    "--cert-file and --rotate-server-certificates exclude each other".into(),
                ));
            }
            return Ok(Slot::default());
        }
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        (None, None) => self_signed(config)?,
        _ => {
            return Err(Error::Server(
                "--cert-file and --private-key-file go together".into(),
            ));
        }
    };
    let key = provider
        .key_provider
        .load_private_key(read_key(&key)?)
        .map_err(|e| Error::Server(format!("serving certificate key: {e}")))?;
    let certified = CertifiedKey::new(read_certs(&cert)?, key);
    // As `with_single_cert` did: a key that is not the certificate's is refused at start,
    // not at every handshake.
    certified
        .keys_match()
        .map_err(|e| Error::Server(format!("serving certificate: {e}")))?;
    Ok(Slot::with(Arc::new(certified)))
}

/// The verifier of client certificates against the `--client-ca-file` bundle: webpki's,
/// which at each handshake checks the chain's signatures, the client-auth usage and
/// every certificate's validity (not before and not after) against the time, as Go's
/// crypto/tls does for the kubelet. A client without a certificate passes, to be
/// authenticated by token or as anonymous.
fn client_verifier(
    ca: &Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(ca)? {
        roots
            .add(c)
            .map_err(|e| Error::Server(format!("client CA: {e}")))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::Server(format!("client CA: {e}")))
}

/// The TLS acceptor for the kubelet API, and the slot of the certificate it serves (read
/// at each handshake: a rotation reaches new connections only).
pub(crate) fn acceptor(config: &Config) -> Result<(TlsAcceptor, Arc<Slot>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let slot = Arc::new(initial(config, &provider)?);
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Server(e.to_string()))?;
    let builder = match &config.client_ca_file {
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, provider)?),
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_cert_resolver(Arc::new(ServingResolver(slot.clone())));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(server)), slot))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A configuration for tests, with its data in `data_dir`.
    pub(crate) fn config(data_dir: &Path) -> Config {
        Config {
            node_name: "node-a".to_owned(),
            node_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            bind_address: std::net::IpAddr::from([127, 0, 0, 1]),
            port: 0,
            data_dir: data_dir.to_owned(),
            cert_dir: data_dir.join("pki"),
            rotate_server_certificates: false,
            cert_file: None,
            private_key_file: None,
            client_ca_file: None,
            auth: crate::auth::AuthConfig::default(),
            max_pods: 1,
            reserved: Default::default(),
            node_labels: std::collections::BTreeMap::new(),
            image_gc: crate::images::GcPolicy::default(),
            lease_renew_interval: std::time::Duration::from_secs(1),
            status_report_interval: std::time::Duration::from_secs(1),
            sync_frequency: std::time::Duration::from_secs(1),
            event_qps: 50,
            event_burst: 100,
            eviction: crate::eviction::Settings::default(),
            static_pods: None,
            register_with_taints: Vec::new(),
            lease_duration_seconds: 40,
            shutdown: crate::shutdown::Settings::default(),
            dns: crate::pods::dns::Settings {
                cluster_dns: vec![std::net::IpAddr::from([10, 0, 0, 10])],
                cluster_domain: "cluster.local".into(),
                resolv_conf: None,
            },
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("exists")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn the_generated_key_is_0600_in_a_0700_directory() {
        let data = tempfile::tempdir().expect("tempdir");
        let (cert, key) = self_signed(&config(data.path())).expect("generated");
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&data.path().join("pki")), 0o700);
        assert!(read_key(&key).is_ok() && !read_certs(&cert).expect("certs").is_empty());
        assert!(!data.path().join("pki/kubelet.key.partial").exists());
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused_and_rotation_starts_empty() {
        let data = tempfile::tempdir().expect("tempdir");
        let (cert, _) = self_signed(&config(data.path())).expect("generated");
        let other = data.path().join("other.key");
        let key = rcgen::KeyPair::generate().expect("key");
        std::fs::write(&other, key.serialize_pem()).expect("key file");
        let mismatched = Config {
            cert_file: Some(cert.clone()),
            private_key_file: Some(other),
            ..config(data.path())
        };
        assert!(acceptor(&mismatched).is_err());
        let rotating = Config {
            rotate_server_certificates: true,
            ..config(data.path())
        };
        let (_, slot) = acceptor(&rotating).expect("acceptor");
        assert!(
            slot.get().is_none(),
            "nothing served before a CSR is issued"
        );
        let both = Config {
            cert_file: Some(cert),
            ..rotating
        };
        assert!(acceptor(&both).is_err());
    }

    /// A guard: a client certificate of the CA is refused before its validity starts and
    /// after it ends, and accepted within it.
    #[test]
    fn a_client_certificate_is_verified_against_both_ends_of_its_validity() {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, date_time_ymd,
        };
        let data = tempfile::tempdir().expect("tempdir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "test-ca");
        let ca_pem = ca.self_signed(&ca_key).expect("CA").pem();
        let ca_file = data.path().join("ca.pem");
        std::fs::write(&ca_file, ca_pem).expect("CA file");
        let issuer = Issuer::new(ca, ca_key);
        let client = |from: (i32, u8), to: (i32, u8)| {
            let mut p = CertificateParams::default();
            p.distinguished_name.push(DnType::CommonName, "alice");
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            p.not_before = date_time_ymd(from.0, from.1, 1);
            p.not_after = date_time_ymd(to.0, to.1, 1);
            let key = KeyPair::generate().expect("key");
            p.signed_by(&key, &issuer).expect("signed").der().clone()
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = client_verifier(&ca_file, provider).expect("verifier");
        let now = rustls::pki_types::UnixTime::now();
        let verdict = |cert| verifier.verify_client_cert(&cert, &[], now).is_ok();
        assert!(verdict(client((2000, 1), (4000, 1))), "valid now");
        assert!(!verdict(client((3000, 1), (4000, 1))), "not valid yet");
        assert!(!verdict(client((2000, 1), (2001, 1))), "expired");
    }

    #[test]
    fn a_key_left_readable_by_an_older_version_is_narrowed() {
        let data = tempfile::tempdir().expect("tempdir");
        let (_, key) = self_signed(&config(data.path())).expect("generated");
        let before = std::fs::read(&key).expect("key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::set_permissions(
            data.path().join("pki"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        let (_, again) = self_signed(&config(data.path())).expect("reused");
        assert_eq!(
            std::fs::read(&again).expect("key"),
            before,
            "the key is kept"
        );
        assert_eq!(mode(&again), 0o600);
        assert_eq!(mode(&data.path().join("pki")), 0o700);
    }
}
