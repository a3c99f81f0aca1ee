//! The `certificates.k8s.io/v1` `CertificateSigningRequest`: created for a request, then
//! watched (by name, bounded in time) until it is issued, denied or failed.

use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use super::{Error, MAX_PEM_BYTES, Result, Template};

/// What became of a CSR, read from its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Neither decided nor issued yet (or approved but not yet signed).
    Pending,
    /// Approved and signed: the certificate chain, in PEM.
    Issued(Vec<u8>),
    /// `Denied`: reason and message.
    Denied(String),
    /// `Failed`: reason and message.
    Failed(String),
}

/// The outcome `csr`'s status tells. A `Denied` or `Failed` condition wins over a
/// certificate; an issued certificate larger than [`MAX_PEM_BYTES`] is a failure.
#[must_use]
pub fn outcome(csr: &CertificateSigningRequest) -> Outcome {
    let Some(status) = &csr.status else {
        return Outcome::Pending;
    };
    let conditions = status.conditions.as_deref().unwrap_or_default();
    let mut approved = false;
    for c in conditions.iter().filter(|c| c.status == "True") {
        let why = || {
            format!(
                "{}: {}",
                c.reason.as_deref().unwrap_or("no reason"),
                c.message.as_deref().unwrap_or("no message")
            )
        };
        match c.type_.as_str() {
            "Denied" => return Outcome::Denied(why()),
            "Failed" => return Outcome::Failed(why()),
            "Approved" => approved = true,
            _ => {}
        }
    }
    match &status.certificate {
        Some(ByteString(pem)) if pem.len() > MAX_PEM_BYTES => Outcome::Failed(format!(
            "the issued certificate is {} bytes, more than {MAX_PEM_BYTES}",
            pem.len()
        )),
        Some(ByteString(pem)) if approved && !pem.is_empty() => Outcome::Issued(pem.clone()),
        _ => Outcome::Pending,
    }
}

/// The object the kubelet creates for `csr_pem`: `generateName` `prefix`, the template's
/// signer and usages.
#[must_use]
pub fn object(template: &Template, csr_pem: &str, prefix: &str) -> CertificateSigningRequest {
    CertificateSigningRequest {
        metadata: ObjectMeta {
            generate_name: Some(prefix.to_owned()),
            ..ObjectMeta::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(csr_pem.as_bytes().to_vec()),
            signer_name: template.kind.signer().to_owned(),
            usages: Some(
                template
                    .kind
                    .usages()
                    .iter()
                    .map(|u| (*u).to_owned())
                    .collect(),
            ),
            ..CertificateSigningRequestSpec::default()
        },
        status: None,
    }
}

/// Creates the CSR of `csr_pem` and waits up to `wait` for its certificate; returns the
/// chain in PEM (not yet checked against the key: see [`super::request::validate`]).
///
/// # Errors
/// [`Error::Denied`], [`Error::Failed`], [`Error::NotIssued`] after `wait`, and
/// [`Error::Kube`] when it cannot be created.
pub async fn request(
    client: &Client,
    template: &Template,
    csr_pem: &str,
    prefix: &str,
    wait: Duration,
) -> Result<Vec<u8>> {
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let created = api
        .create(&PostParams::default(), &object(template, csr_pem, prefix))
        .await?;
    let name = created.metadata.name.clone().unwrap_or_default();
    tracing::info!(csr = %name, signer = template.kind.signer(), "certificate signing request created");
    let deadline = tokio::time::Instant::now() + wait;
    let decided = |csr: Option<&CertificateSigningRequest>| {
        csr.is_some_and(|csr| !matches!(outcome(csr), Outcome::Pending))
    };
    loop {
        let watched = tokio::time::timeout_at(
            deadline,
            kube::runtime::wait::await_condition(api.clone(), &name, decided),
        )
        .await;
        match watched {
            Err(_) => return Err(Error::NotIssued { name, waited: wait }),
            Ok(Ok(Some(csr))) => {
                return match outcome(&csr) {
                    Outcome::Issued(pem) => Ok(pem),
                    Outcome::Denied(reason) => Err(Error::Denied { name, reason }),
                    Outcome::Failed(reason) => Err(Error::Failed { name, reason }),
                    Outcome::Pending => continue,
                };
            }
            // Deleted while waited on: nothing will be issued.
            Ok(Ok(None)) => return Err(Error::NotIssued { name, waited: wait }),
            Ok(Err(e)) => {
                // The watch broke (the API server restarted, ...): watch again.
                tracing::debug!(csr = %name, error = %e, "watching the CSR failed; again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::certificates::v1::{
        CertificateSigningRequestCondition, CertificateSigningRequestStatus,
    };

    use super::*;

    fn with(conditions: &[(&str, &str)], certificate: Option<&[u8]>) -> CertificateSigningRequest {
        CertificateSigningRequest {
            status: Some(CertificateSigningRequestStatus {
                certificate: certificate.map(|c| ByteString(c.to_vec())),
                conditions: Some(
                    conditions
                        .iter()
                        .map(|(t, s)| CertificateSigningRequestCondition {
                            type_: (*t).to_owned(),
                            status: (*s).to_owned(),
                            reason: Some("Because".to_owned()),
                            ..CertificateSigningRequestCondition::default()
                        })
                        .collect(),
                ),
            }),
            ..object(&Template::client("n"), "pem", "csr-")
        }
    }

    #[test]
    fn the_object_is_the_kubelets() {
        let csr = object(&Template::client("node-a"), "PEM", "node-csr-");
        assert_eq!(csr.metadata.generate_name.as_deref(), Some("node-csr-"));
        assert_eq!(
            csr.spec.signer_name,
            "kubernetes.io/kube-apiserver-client-kubelet"
        );
        assert_eq!(
            csr.spec.usages.as_deref(),
            Some(&["digital signature".to_owned(), "client auth".to_owned()][..])
        );
        assert_eq!(csr.spec.request.0, b"PEM");
        let serving = object(&Template::serving("node-a", &[], &[]), "PEM", "csr-");
        assert_eq!(serving.spec.signer_name, "kubernetes.io/kubelet-serving");
    }

    #[test]
    fn only_an_approved_csr_with_a_certificate_is_issued() {
        assert_eq!(
            outcome(&object(&Template::client("n"), "p", "c")),
            Outcome::Pending
        );
        assert_eq!(
            outcome(&with(&[("Approved", "True")], None)),
            Outcome::Pending
        );
        assert_eq!(outcome(&with(&[], Some(b"CERT"))), Outcome::Pending);
        assert_eq!(
            outcome(&with(&[("Approved", "False")], Some(b"CERT"))),
            Outcome::Pending
        );
        assert_eq!(
            outcome(&with(&[("Approved", "True")], Some(b"CERT"))),
            Outcome::Issued(b"CERT".to_vec())
        );
        assert!(matches!(
            outcome(&with(
                &[("Approved", "True"), ("Failed", "True")],
                Some(b"C")
            )),
            Outcome::Failed(_)
        ));
        assert_eq!(
            outcome(&with(&[("Denied", "True")], None)),
            Outcome::Denied("Because: no message".to_owned())
        );
        let huge = vec![b'A'; MAX_PEM_BYTES + 1];
        assert!(matches!(
            outcome(&with(&[("Approved", "True")], Some(&huge))),
            Outcome::Failed(why) if why.contains("more than")
        ));
    }
}
