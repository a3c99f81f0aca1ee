//! The CSR's contents and the checks of issued certificates, against a CA of the test's own.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509CertificationRequest};

use super::*;

/// A CA that signs whatever it is asked to.
pub(crate) struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// Its own certificate, for clients' roots.
    pub cert: rustls::pki_types::CertificateDer<'static>,
}

/// What the test CA puts in a certificate.
pub(crate) struct Signing<'a> {
    pub common_name: &'a str,
    pub organizations: &'a [&'a str],
    pub usage: ExtendedKeyUsagePurpose,
    pub expired: bool,
    pub ips: &'a [IpAddr],
    pub dns_names: &'a [&'a str],
}

impl Signing<'_> {
    /// What the cluster's signer issues for `template`.
    pub(crate) fn proper(template: &Template) -> Signing<'static> {
        Signing {
            common_name: Box::leak(template.common_name().into_boxed_str()),
            organizations: &[NODES_GROUP],
            usage: match template.kind {
                Kind::Client => ExtendedKeyUsagePurpose::ClientAuth,
                Kind::Serving => ExtendedKeyUsagePurpose::ServerAuth,
            },
            expired: false,
            ips: Box::leak(template.ips.clone().into_boxed_slice()),
            dns_names: Box::leak(
                template
                    .dns_names
                    .iter()
                    .map(|d| &*Box::leak(d.clone().into_boxed_str()))
                    .collect::<Vec<&str>>()
                    .into_boxed_slice(),
            ),
        }
    }
}

impl TestCa {
    pub(crate) fn new() -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "test-ca");
        let cert = params
            .self_signed(&key)
            .expect("CA certificate")
            .der()
            .clone();
        Self {
            issuer: Issuer::new(params, key),
            cert,
        }
    }

    /// A certificate of `template` for a new key, checked as the node checks it.
    pub(crate) fn issue(&self, template: &Template) -> Issued {
        let request = generate(template).expect("generated");
        let pem = self.sign(&request.key, &Signing::proper(template));
        validate(pem.as_bytes(), &request.key, template, SystemTime::now()).expect("valid")
    }

    /// A certificate for `key` as `how` says, in PEM.
    pub(crate) fn sign(&self, key: &KeyPair, how: &Signing<'_>) -> String {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, how.common_name);
        for o in how.organizations {
            params.distinguished_name.push(DnType::OrganizationName, *o);
        }
        params.extended_key_usages = vec![how.usage.clone()];
        for dns in how.dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName((*dns).try_into().expect("a DNS name")));
        }
        for ip in how.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        if how.expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        params.signed_by(key, &self.issuer).expect("signed").pem()
    }
}

fn serving() -> Template {
    Template::serving(
        "node-a",
        &[IpAddr::from([127, 0, 0, 1]), IpAddr::from([127, 0, 0, 1])],
        &["host-a".to_owned(), String::new()],
    )
}

#[test]
fn the_csr_names_the_node_and_carries_the_serving_addresses() {
    let request = generate(&serving()).expect("generated");
    let der = rustls_pemfile::csr(&mut request.csr_pem.as_bytes())
        .expect("PEM")
        .expect("a CSR");
    let (_, csr) = X509CertificationRequest::from_der(der.as_ref()).expect("PKCS#10");
    let info = &csr.certification_request_info;
    let cn: Vec<_> = info
        .subject
        .iter_common_name()
        .map(|a| a.as_str().expect("text"))
        .collect();
    let o: Vec<_> = info
        .subject
        .iter_organization()
        .map(|a| a.as_str().expect("text"))
        .collect();
    assert_eq!((cn, o), (vec!["system:node:node-a"], vec!["system:nodes"]));
    assert_eq!(
        info.subject_pki.subject_public_key.data.as_ref(),
        request.key.public_key_raw()
    );
    let mut names = Vec::new();
    for ext in csr.requested_extensions().expect("extension request") {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                names.push(match name {
                    GeneralName::DNSName(d) => format!("DNS:{d}"),
                    GeneralName::IPAddress(ip) => format!("IP:{ip:?}"),
                    other => format!("{other:?}"),
                });
            }
        }
    }
    assert_eq!(names, ["DNS:host-a", "IP:[127, 0, 0, 1]"], "deduplicated");
}

#[test]
fn a_client_csr_has_no_alternative_names_and_its_kind_says_how_it_is_signed() {
    let request = generate(&Template::client("node-a")).expect("generated");
    let der = rustls_pemfile::csr(&mut request.csr_pem.as_bytes())
        .expect("PEM")
        .expect("a CSR");
    let (_, csr) = X509CertificationRequest::from_der(der.as_ref()).expect("PKCS#10");
    assert!(
        csr.requested_extensions()
            .is_none_or(|mut e| e.next().is_none())
    );
    assert_eq!(
        Kind::Client.signer(),
        "kubernetes.io/kube-apiserver-client-kubelet"
    );
    assert_eq!(Kind::Client.usages(), ["digital signature", "client auth"]);
    assert_eq!(Kind::Serving.signer(), "kubernetes.io/kubelet-serving");
    assert_eq!(Kind::Serving.usages(), ["digital signature", "server auth"]);
}

#[test]
fn the_issued_certificate_is_taken_with_its_key() {
    let ca = TestCa::new();
    for template in [Template::client("node-a"), serving()] {
        let request = generate(&template).expect("generated");
        let pem = ca.sign(&request.key, &Signing::proper(&template));
        let issued =
            validate(pem.as_bytes(), &request.key, &template, SystemTime::now()).expect("valid");
        assert!(issued.valid_at(SystemTime::now()));
        assert!(issued.not_after > issued.not_before);
        assert!(issued.pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(issued.pem.contains("-----BEGIN CERTIFICATE-----"));
        // What the cert dir holds reads back as the same certificate.
        let again = from_pem(issued.pem.as_bytes(), &template, SystemTime::now()).expect("read");
        assert_eq!(again.not_after, issued.not_after);
    }
}

#[test]
fn a_certificate_for_another_key_subject_or_usage_is_refused() {
    let ca = TestCa::new();
    let template = Template::client("node-a");
    let request = generate(&template).expect("generated");
    let now = SystemTime::now();
    let other = KeyPair::generate().expect("key");
    let refused = |pem: String, why: &str| {
        let e = validate(pem.as_bytes(), &request.key, &template, now).expect_err(why);
        assert!(matches!(e, Error::Invalid { .. }), "{why}: {e}");
        e.to_string()
    };
    let proper = Signing::proper(&template);
    let e = refused(ca.sign(&other, &proper), "another key");
    assert!(e.contains("not for the key"), "{e}");
    let e = refused(
        ca.sign(
            &request.key,
            &Signing {
                common_name: "system:node:node-b",
                ..Signing::proper(&template)
            },
        ),
        "another node",
    );
    assert!(e.contains("node-b"), "{e}");
    refused(
        ca.sign(
            &request.key,
            &Signing {
                organizations: &["system:nodes", "system:masters"],
                ..Signing::proper(&template)
            },
        ),
        "an extra group",
    );
    refused(
        ca.sign(
            &request.key,
            &Signing {
                usage: ExtendedKeyUsagePurpose::ServerAuth,
                ..Signing::proper(&template)
            },
        ),
        "a serving certificate for a client one",
    );
    let e = refused(
        ca.sign(
            &request.key,
            &Signing {
                expired: true,
                ..Signing::proper(&template)
            },
        ),
        "expired",
    );
    assert!(e.contains("expired"), "{e}");
    refused("not a certificate".to_owned(), "no PEM");
    let huge = "A".repeat(MAX_PEM_BYTES + 1);
    let e = refused(huge, "too large");
    assert!(e.contains("more than"), "{e}");
    // A certificate still valid now has expired a little later.
    let pem = ca.sign(&request.key, &proper);
    let issued = validate(pem.as_bytes(), &request.key, &template, now).expect("valid");
    assert!(!issued.valid_at(issued.not_after + Duration::from_secs(1)));
}

#[test]
fn a_serving_certificate_must_name_the_nodes_addresses() {
    let ca = TestCa::new();
    let template = serving();
    let request = generate(&template).expect("generated");
    let now = SystemTime::now();
    for (ips, dns, missing) in [
        (&[][..], &["host-a"][..], "127.0.0.1"),
        (
            &[IpAddr::from([127, 0, 0, 1])][..],
            &["host-b"][..],
            "host-a",
        ),
        (
            &[IpAddr::from([10, 0, 0, 1])][..],
            &["host-a"][..],
            "127.0.0.1",
        ),
    ] {
        let pem = ca.sign(
            &request.key,
            &Signing {
                ips,
                dns_names: dns,
                ..Signing::proper(&template)
            },
        );
        let e = validate(pem.as_bytes(), &request.key, &template, now).expect_err(missing);
        assert!(e.to_string().contains(missing), "{e}");
    }
    let names = Signing {
        dns_names: &["HOST-A", "extra"],
        ..Signing::proper(&template)
    };
    let pem = ca.sign(&request.key, &names);
    validate(pem.as_bytes(), &request.key, &template, now).expect("more names, any case");
}

/// An issued certificate whose validity starts after `now` is refused (the API server's
/// client authentication and a TLS peer would refuse it too), and is not valid at a time
/// before its start.
#[test]
fn a_certificate_not_valid_yet_is_refused() {
    let ca = TestCa::new();
    let template = Template::client("node-a");
    let request = generate(&template).expect("generated");
    let pem = ca.sign(&request.key, &Signing::proper(&template));
    let issued =
        validate(pem.as_bytes(), &request.key, &template, SystemTime::now()).expect("valid");
    let early = issued.not_before - Duration::from_secs(1);
    let e = validate(pem.as_bytes(), &request.key, &template, early).expect_err("not valid yet");
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
    assert!(e.to_string().contains("not valid before"), "{e}");
    assert!(!issued.valid_at(early));
    assert!(issued.valid_at(issued.not_before));
    let e = from_pem(issued.pem.as_bytes(), &template, early).expect_err("not valid yet");
    assert!(e.to_string().contains("not valid before"), "{e}");
}
