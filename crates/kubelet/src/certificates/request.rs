//! A fresh ECDSA P-256 key with its PKCS#10 request, and the check of what comes back: the
//! issued certificate must be for that key, say `CN=system:node:<node>, O=system:nodes`,
//! carry the expected extended key usage (and, serving, the node's names) and be valid now
//! (neither expired nor valid only later).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{DistinguishedName, DnType, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{Error, Kind, MAX_PEM_BYTES, NODES_GROUP, Result, Template};

/// A key made for one CSR, and the request in PEM.
pub struct Request {
    /// The private key; never leaves the node.
    pub key: KeyPair,
    /// `-----BEGIN CERTIFICATE REQUEST-----`.
    pub csr_pem: String,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").finish_non_exhaustive()
    }
}

/// Makes a new P-256 key and its CSR for `template`.
///
/// # Errors
/// When the key or the request cannot be made (a DNS name that is not one).
pub fn generate(template: &Template) -> Result<Request> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Error::Generate(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, NODES_GROUP);
    name.push(DnType::CommonName, template.common_name());
    params.distinguished_name = name;
    for dns in &template.dns_names {
        let dns = dns
            .clone()
            .try_into()
            .map_err(|e| Error::Generate(format!("DNS name {dns:?}: {e}")))?;
        params.subject_alt_names.push(SanType::DnsName(dns));
    }
    for ip in &template.ips {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| Error::Generate(e.to_string()))?;
    Ok(Request { key, csr_pem })
}

/// A certificate the node uses: its key and chain as rustls takes them, the PEM written
/// to the cert dir (key first, then the chain), and its validity.
#[derive(Clone)]
pub struct Issued {
    /// Key and chain for rustls.
    pub certified: Arc<CertifiedKey>,
    /// `PRIVATE KEY` then `CERTIFICATE` blocks, as the kubelet's pem files hold them.
    pub pem: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Issued {
    /// Whether it is valid at `now`: not before its start, not after its end.
    #[must_use]
    pub fn valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

fn invalid(kind: Kind, reason: impl Into<String>) -> Error {
    Error::Invalid {
        what: kind.describe().to_owned(),
        reason: reason.into(),
    }
}

/// The `CERTIFICATE` blocks of `pem` (at most [`MAX_PEM_BYTES`]).
fn certificates(kind: Kind, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    if pem.len() > MAX_PEM_BYTES {
        return Err(invalid(
            kind,
            format!("{} bytes of PEM, more than {MAX_PEM_BYTES}", pem.len()),
        ));
    }
    let chain = rustls_pemfile::certs(&mut &pem[..])
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| invalid(kind, format!("not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(invalid(kind, "no CERTIFICATE block"));
    }
    Ok(chain)
}

fn system_time(seconds: i64) -> SystemTime {
    match u64::try_from(seconds) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH,
    }
}

/// Checks `chain_pem` (as the API's `status.certificate` or a pem file holds it) against
/// `key` and `template` at `now`, and makes the [`Issued`] of both.
///
/// # Errors
/// [`Error::Invalid`] when it is too large, not PEM, not for `key`, of another subject,
/// without the usage of its kind, or not valid at `now` (expired, or not valid yet).
pub fn validate(
    chain_pem: &[u8],
    key: &KeyPair,
    template: &Template,
    now: SystemTime,
) -> Result<Issued> {
    let kind = template.kind;
    let chain = certificates(kind, chain_pem)?;
    let (not_before, not_after) = {
        let (_, leaf) = X509Certificate::from_der(&chain[0])
            .map_err(|e| invalid(kind, format!("not an X.509 certificate: {e}")))?;
        if leaf.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(invalid(kind, "it is not for the key the node generated"));
        }
        check_subject(&leaf, template)?;
        check_names(&leaf, template)?;
        let usage = leaf
            .extended_key_usage()
            .map_err(|e| invalid(kind, format!("extended key usage: {e}")))?;
        let usable = usage.is_some_and(|u| match kind {
            Kind::Client => u.value.client_auth,
            Kind::Serving => u.value.server_auth,
        });
        if !usable {
            return Err(invalid(kind, format!("no {} usage", kind.usages()[1])));
        }
        let validity = leaf.validity();
        (
            system_time(validity.not_before.timestamp()),
            system_time(validity.not_after.timestamp()),
        )
    };
    if not_after <= now || not_after <= not_before {
        return Err(invalid(kind, "it has expired"));
    }
    if now < not_before {
        // The API server (and any TLS peer) refuses it until then; a clock behind the
        // signer's by more than its backdating gets here.
        let start = jiff::Timestamp::try_from(not_before).unwrap_or_default();
        return Err(invalid(
            kind,
            format!("it is not valid before {start} (check this node's clock)"),
        ));
    }
    let key_pem = key.serialize_pem();
    let certified = certified_key(kind, chain, &key.serialize_der())?;
    let pem = format!(
        "{key_pem}{}",
        String::from_utf8_lossy(chain_pem).trim_start()
    );
    Ok(Issued {
        certified,
        pem,
        not_before,
        not_after,
    })
}

/// A serving certificate must name every address and host name of the template (one
/// issued for addresses the node no longer has is replaced at start).
fn check_names(leaf: &X509Certificate<'_>, template: &Template) -> Result<()> {
    use x509_parser::prelude::GeneralName;
    if template.kind != Kind::Serving {
        return Ok(());
    }
    let kind = template.kind;
    let san = leaf
        .subject_alternative_name()
        .map_err(|e| invalid(kind, format!("subject alternative names: {e}")))?;
    let names = san
        .map(|s| s.value.general_names.as_slice())
        .unwrap_or_default();
    for ip in &template.ips {
        let octets = match ip {
            std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
            std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        if !names
            .iter()
            .any(|n| matches!(n, GeneralName::IPAddress(a) if *a == octets.as_slice()))
        {
            return Err(invalid(
                kind,
                format!("it does not name the node's address {ip}"),
            ));
        }
    }
    for dns in &template.dns_names {
        if !names
            .iter()
            .any(|n| matches!(n, GeneralName::DNSName(d) if d.eq_ignore_ascii_case(dns)))
        {
            return Err(invalid(kind, format!("it does not name the host {dns:?}")));
        }
    }
    Ok(())
}

fn check_subject(leaf: &X509Certificate<'_>, template: &Template) -> Result<()> {
    let kind = template.kind;
    let subject = leaf.subject();
    let common_name = subject
        .iter_common_name()
        .filter_map(|a| a.as_str().ok())
        .last();
    if common_name != Some(template.common_name().as_str()) {
        return Err(invalid(
            kind,
            format!(
                "its common name is {common_name:?}, not {:?}",
                template.common_name()
            ),
        ));
    }
    let organizations: Vec<&str> = subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok())
        .collect();
    if organizations != [NODES_GROUP] {
        return Err(invalid(
            kind,
            format!("its organizations are {organizations:?}, not [{NODES_GROUP:?}]"),
        ));
    }
    Ok(())
}

fn certified_key(
    kind: Kind,
    chain: Vec<CertificateDer<'static>>,
    pkcs8: &[u8],
) -> Result<Arc<CertifiedKey>> {
    let provider = rustls::crypto::ring::default_provider();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec()));
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| invalid(kind, format!("its key: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// Reads a pem file's content (key and chain, in any order) as a certificate of
/// `template`'s kind and subject.
///
/// # Errors
/// As [`validate`], and when it holds no key.
pub fn from_pem(pem: &[u8], template: &Template, now: SystemTime) -> Result<Issued> {
    let kind = template.kind;
    if pem.len() > MAX_PEM_BYTES {
        return Err(invalid(kind, "the file is too large"));
    }
    let text = std::str::from_utf8(pem).map_err(|_| invalid(kind, "not PEM text"))?;
    let key = KeyPair::from_pem(text).map_err(|e| invalid(kind, format!("its key: {e}")))?;
    let chain: String = pem::blocks(text, "CERTIFICATE");
    validate(chain.as_bytes(), &key, template, now)
}

/// PEM block selection.
mod pem {
    /// The `label` blocks of `text`, in order, each with its armour.
    pub(super) fn blocks(text: &str, label: &str) -> String {
        let (begin, end) = (
            format!("-----BEGIN {label}-----"),
            format!("-----END {label}-----"),
        );
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find(&begin) {
            let Some(stop) = rest[start..].find(&end) else {
                break;
            };
            let stop = start + stop + end.len();
            out.push_str(&rest[start..stop]);
            out.push('\n');
            rest = &rest[stop..];
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests;
