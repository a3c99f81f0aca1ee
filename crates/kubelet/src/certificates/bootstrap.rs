//! TLS bootstrap (`--bootstrap-kubeconfig`): when `--kubeconfig` is absent or its client
//! certificate no longer valid, a client certificate is requested with the bootstrap
//! credentials (a bootstrap token), written to the cert dir, and `--kubeconfig` written to
//! use it. And the rotating API client of `--rotate-certificates`, built from that
//! kubeconfig.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use kube::config::{
    AuthInfo, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};
use secrecy::ExposeSecret;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::request::{self, Issued};
use super::rotation::{Rotator, load_current};
use super::{CSR_WAIT, Error, Kind, Result, Slot, Template, blocking, connector, signing, store};

fn kubeconfig_error(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Kubeconfig {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The kube configuration of the kubeconfig at `path` (its current context).
///
/// # Errors
/// When it cannot be read or names no usable context.
pub async fn load_config(path: &Path) -> Result<kube::Config> {
    let owned = path.to_owned();
    let kubeconfig =
        blocking(move || Kubeconfig::read_from(&owned).map_err(|e| kubeconfig_error(&owned, e)))
            .await?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| kubeconfig_error(path, e))
}

/// The client certificate and key (PEM) of `config`'s user, from data or files (each
/// at most [`super::MAX_PEM_BYTES`]); `None` when it has no certificate.
fn client_pem(config: &kube::Config) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    let auth = &config.auth_info;
    let decode = |what: &str, data: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| Error::Invalid {
                what: what.to_owned(),
                reason: format!("not base64: {e}"),
            })
    };
    let read = |path: &str| -> Result<Vec<u8>> {
        store::read_bounded(Path::new(path))?.ok_or_else(|| Error::Invalid {
            what: path.to_owned(),
            reason: "missing".to_owned(),
        })
    };
    let cert = match (&auth.client_certificate_data, &auth.client_certificate) {
        (Some(data), _) => decode("client-certificate-data", data)?,
        (None, Some(path)) => read(path)?,
        (None, None) => return Ok(None),
    };
    let key = match (&auth.client_key_data, &auth.client_key) {
        (Some(data), _) => decode("client-key-data", data.expose_secret())?,
        (None, Some(path)) => read(path)?,
        (None, None) => return Ok(None),
    };
    Ok(Some((cert, key)))
}

/// Whether every certificate of `pem` is valid at `now` (there being at least one): not
/// expired and not valid only later, the kubelet's test of an existing kubeconfig.
fn all_valid(pem: &[u8], now: SystemTime) -> bool {
    let Ok(chain) = rustls_pemfile::certs(&mut &pem[..]).collect::<std::io::Result<Vec<_>>>()
    else {
        return false;
    };
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    !chain.is_empty()
        && chain.iter().all(|der| {
            X509Certificate::from_der(der).is_ok_and(|(_, c)| {
                let validity = c.validity();
                validity.not_before.timestamp() <= now && now < validity.not_after.timestamp()
            })
        })
}

/// Whether the kubeconfig at `path` exists and has a client certificate valid now.
pub async fn still_valid(path: &Path) -> bool {
    if !path.exists() {
        return false;
    }
    match load_config(path).await.and_then(|c| client_pem(&c)) {
        Ok(Some((cert, _))) => all_valid(&cert, SystemTime::now()),
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(kubeconfig = %path.display(), error = %e, "the kubeconfig is not usable");
            false
        }
    }
}

/// The kubeconfig the kubelet writes after bootstrap: the bootstrap kubeconfig's cluster,
/// and the user's certificate and key both in `pem` (the cert dir's current link).
fn node_kubeconfig(bootstrap: &Kubeconfig, pem: &Path) -> Result<Kubeconfig> {
    let context = bootstrap
        .current_context
        .as_ref()
        .and_then(|name| bootstrap.contexts.iter().find(|c| &c.name == name))
        .and_then(|c| c.context.as_ref());
    let cluster = bootstrap
        .clusters
        .iter()
        .find(|c| context.is_some_and(|ctx| ctx.cluster == c.name))
        .or_else(|| bootstrap.clusters.first())
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| Error::Kubeconfig {
            path: "--bootstrap-kubeconfig".to_owned(),
            reason: "it names no cluster".to_owned(),
        })?;
    let pem = pem.display().to_string();
    Ok(Kubeconfig {
        api_version: Some("v1".to_owned()),
        kind: Some("Config".to_owned()),
        clusters: vec![NamedCluster {
            name: "default-cluster".to_owned(),
            cluster: Some(cluster),
            ..NamedCluster::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "default-auth".to_owned(),
            auth_info: Some(AuthInfo {
                client_certificate: Some(pem.clone()),
                client_key: Some(pem),
                ..AuthInfo::default()
            }),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: "default-context".to_owned(),
            context: Some(Context {
                cluster: "default-cluster".to_owned(),
                user: Some("default-auth".to_owned()),
                namespace: Some("default".to_owned()),
                ..Context::default()
            }),
            ..NamedContext::default()
        }],
        current_context: Some("default-context".to_owned()),
        ..Kubeconfig::default()
    })
}

/// What bootstrapping needs.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// `--kubeconfig`: used when its certificate is valid, written otherwise.
    pub kubeconfig: PathBuf,
    /// `--bootstrap-kubeconfig`: the credentials to request a certificate with.
    pub bootstrap_kubeconfig: PathBuf,
    /// `--cert-dir`.
    pub cert_dir: PathBuf,
    /// The node's name (`CN=system:node:<name>`).
    pub node_name: String,
    /// How long the CSR is waited on.
    pub wait: Duration,
}

impl Bootstrap {
    /// Makes `kubeconfig` usable: kept when its client certificate is valid; otherwise
    /// written for the cert dir's current certificate, requested first when there is no
    /// valid one.
    ///
    /// # Errors
    /// When the bootstrap kubeconfig is unusable, the CSR is denied, failed or not issued
    /// in time, the certificate is not the one asked for, or a file cannot be written.
    pub async fn run(&self) -> Result<()> {
        if still_valid(&self.kubeconfig).await {
            tracing::info!(kubeconfig = %self.kubeconfig.display(), "the kubeconfig's client certificate is valid; no bootstrap");
            return Ok(());
        }
        let template = Template::client(&self.node_name);
        let path = self.bootstrap_kubeconfig.clone();
        let bootstrap =
            blocking(move || Kubeconfig::read_from(&path).map_err(|e| kubeconfig_error(&path, e)))
                .await?;
        let current = store::current_path(&self.cert_dir, Kind::Client);
        if load_current(self.cert_dir.clone(), &template)
            .await
            .is_none()
        {
            let config = kube::Config::from_custom_kubeconfig(
                bootstrap.clone(),
                &KubeConfigOptions::default(),
            )
            .await
            .map_err(|e| kubeconfig_error(&self.bootstrap_kubeconfig, e))?;
            let client = kube::Client::try_from(config)?;
            tracing::info!(bootstrap = %self.bootstrap_kubeconfig.display(), "requesting a client certificate");
            let request = request::generate(&template)?;
            let pem =
                signing::request(&client, &template, &request.csr_pem, "node-csr-", self.wait)
                    .await?;
            let issued = request::validate(&pem, &request.key, &template, SystemTime::now())?;
            let dir = self.cert_dir.clone();
            blocking(move || store::write(&dir, Kind::Client, &issued.pem, jiff::Timestamp::now()))
                .await?;
            tracing::info!(pem = %current.display(), "client certificate issued");
        }
        let kubeconfig = node_kubeconfig(&bootstrap, &current)?;
        let json = serde_json::to_vec_pretty(&kubeconfig).map_err(|e| Error::Kubeconfig {
            path: self.kubeconfig.display().to_string(),
            reason: e.to_string(),
        })?;
        let path = self.kubeconfig.clone();
        blocking(move || store::write_private(&path, &json)).await?;
        tracing::info!(kubeconfig = %self.kubeconfig.display(), "kubeconfig written");
        Ok(())
    }
}

/// The node's API client over a swappable client certificate, and the [`Rotator`] that
/// renews it (to be run). The certificate in use at first is the cert dir's current one
/// when valid, otherwise the kubeconfig's.
///
/// # Errors
/// When the kubeconfig is unusable or has no valid node client certificate.
pub async fn rotating_client(
    kubeconfig: &Path,
    cert_dir: &Path,
    node_name: &str,
) -> Result<(kube::Client, Rotator)> {
    let config = load_config(kubeconfig).await?;
    let template = Template::client(node_name);
    let initial: Issued = match load_current(cert_dir.to_owned(), &template).await {
        Some(issued) => issued,
        None => {
            let (cert, key) = client_pem(&config)?
                .ok_or_else(|| kubeconfig_error(kubeconfig, "no client certificate to rotate"))?;
            let mut pem = key;
            pem.push(b'\n');
            pem.extend_from_slice(&cert);
            request::from_pem(&pem, &template, SystemTime::now())?
        }
    };
    let slot = Arc::new(Slot::with(initial.certified.clone()));
    let (client, connections) = connector::client(&config, slot.clone())?;
    let rotator = Rotator {
        template,
        client: client.clone(),
        slot,
        cert_dir: cert_dir.to_owned(),
        current: Some(initial),
        connections: Some(connections),
        wait: CSR_WAIT,
    };
    Ok((client, rotator))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certificates::request::tests::{Signing, TestCa};

    #[test]
    fn the_written_kubeconfig_points_at_the_current_pem_and_keeps_the_cluster() {
        let bootstrap = Kubeconfig::from_yaml(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: other\n  cluster: {server: https://other:1}\n- name: local\n  cluster: {server: 'https://127.0.0.1:6443', certificate-authority-data: Q0E=}\nusers:\n- name: boot\n  user: {token: abcdef.0123456789abcdef}\ncontexts:\n- name: boot\n  context: {cluster: local, user: boot}\ncurrent-context: boot\n",
        )
        .expect("yaml");
        let written = node_kubeconfig(&bootstrap, Path::new("/pki/kubelet-client-current.pem"))
            .expect("made");
        let json = serde_json::to_value(&written).expect("json");
        assert_eq!(
            json["clusters"][0]["cluster"]["server"],
            "https://127.0.0.1:6443"
        );
        assert_eq!(
            json["clusters"][0]["cluster"]["certificate-authority-data"],
            "Q0E="
        );
        let user = &json["users"][0]["user"];
        assert_eq!(
            user["client-certificate"],
            "/pki/kubelet-client-current.pem"
        );
        assert_eq!(user["client-key"], "/pki/kubelet-client-current.pem");
        assert!(
            user.get("token").is_none(),
            "the bootstrap token is not kept"
        );
        assert_eq!(json["current-context"], "default-context");
    }

    #[tokio::test]
    async fn a_kubeconfig_is_still_valid_only_with_an_unexpired_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = TestCa::new();
        let template = Template::client("node-a");
        let write = |name: &str, signing: &Signing<'_>| {
            let request = request::generate(&template).expect("key");
            let cert = ca.sign(&request.key, signing);
            let pem = dir.path().join(format!("{name}.pem"));
            std::fs::write(&pem, format!("{}{cert}", request.key.serialize_pem())).expect("pem");
            let kubeconfig = dir.path().join(format!("{name}.kubeconfig"));
            let yaml = format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: 'https://127.0.0.1:1'}}\nusers:\n- name: u\n  user: {{client-certificate: {p}, client-key: {p}}}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
                p = pem.display()
            );
            std::fs::write(&kubeconfig, yaml).expect("kubeconfig");
            kubeconfig
        };
        let fresh = write("fresh", &Signing::proper(&template));
        let expired = write(
            "expired",
            &Signing {
                expired: true,
                ..Signing::proper(&template)
            },
        );
        assert!(still_valid(&fresh).await);
        assert!(!still_valid(&expired).await);
        assert!(!still_valid(&dir.path().join("absent.kubeconfig")).await);
        let config = load_config(&fresh).await.expect("config");
        let (cert, key) = client_pem(&config).expect("read").expect("present");
        let mut pem = key;
        pem.extend_from_slice(&cert);
        request::from_pem(&pem, &template, SystemTime::now()).expect("a node certificate");
    }

    /// The kubelet's test of an existing kubeconfig refuses a certificate not valid yet
    /// ("not yet valid"), as it refuses an expired one.
    #[test]
    fn a_certificate_not_valid_yet_is_not_still_valid() {
        let ca = TestCa::new();
        let template = Template::client("node-a");
        let request = request::generate(&template).expect("key");
        let cert = ca.sign(&request.key, &Signing::proper(&template));
        let (before, after) = validity(cert.as_bytes());
        assert!(all_valid(cert.as_bytes(), before + Duration::from_secs(1)));
        assert!(!all_valid(cert.as_bytes(), before - Duration::from_secs(1)));
        assert!(!all_valid(cert.as_bytes(), after + Duration::from_secs(1)));
    }

    /// The validity of the first certificate of `pem`.
    fn validity(pem: &[u8]) -> (SystemTime, SystemTime) {
        let der = rustls_pemfile::certs(&mut &pem[..])
            .next()
            .expect("a block")
            .expect("PEM");
        let (_, c) = X509Certificate::from_der(&der).expect("X.509");
        let at = |t: i64| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t).expect("after 1970"))
        };
        let v = c.validity();
        (at(v.not_before.timestamp()), at(v.not_after.timestamp()))
    }
}
