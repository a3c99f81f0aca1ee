//! The user of a verified client certificate, as the kubelet's x509 authenticator reads
//! it: name = the subject's common name, groups = its organizations. A small DER reader
//! of just the subject: the chain was already verified against `--client-ca-file`.

/// A DER element: its tag and contents; `None` for what is not DER.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.rest.split_first()?;
        if tag & 0x1f == 0x1f {
            return None; // high tag numbers: none in a Name
        }
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let (bytes, after) = rest.split_at(n);
            rest = after;
            bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
        };
        if rest.len() < len {
            return None;
        }
        let (content, after) = rest.split_at(len);
        self.rest = after;
        Some((tag, content))
    }

    fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        match self.next()? {
            (t, content) if t == tag => Some(content),
            _ => None,
        }
    }
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
const ORGANIZATION: &[u8] = &[0x55, 0x04, 0x0a];

/// The subject's common name (the last one, as Go keeps) and organizations of a
/// DER certificate; `None` when it cannot be read.
pub(crate) fn subject(der: &[u8]) -> Option<(String, Vec<String>)> {
    let certificate = Reader::new(der).expect(SEQUENCE)?;
    let mut tbs = Reader::new(Reader::new(certificate).expect(SEQUENCE)?);
    let mut element = tbs.next()?;
    if element.0 == 0xa0 {
        element = tbs.next()?; // explicit version; then the serial number
    }
    if element.0 != 0x02 {
        return None;
    }
    tbs.expect(SEQUENCE)?; // signature algorithm
    tbs.expect(SEQUENCE)?; // issuer
    tbs.expect(SEQUENCE)?; // validity
    let mut name = Reader::new(tbs.expect(SEQUENCE)?);
    let (mut common_name, mut organizations) = (String::new(), Vec::new());
    while !name.rest.is_empty() {
        let mut rdn = Reader::new(name.expect(SET)?);
        while !rdn.rest.is_empty() {
            let mut pair = Reader::new(rdn.expect(SEQUENCE)?);
            let oid = pair.expect(OID)?;
            let (tag, value) = pair.next()?;
            let Some(text) = string(tag, value) else {
                continue; // not a string: Go skips it too
            };
            if oid == COMMON_NAME {
                common_name = text;
            } else if oid == ORGANIZATION {
                organizations.push(text);
            }
        }
    }
    Some((common_name, organizations))
}

/// The text of a directory string.
fn string(tag: u8, value: &[u8]) -> Option<String> {
    match tag {
        0x0c => String::from_utf8(value.to_vec()).ok(),
        // NumericString, PrintableString, IA5String
        0x12 | 0x13 | 0x16 => value
            .is_ascii()
            .then(|| String::from_utf8_lossy(value).into_owned()),
        // T61String, read as Latin-1
        0x14 => Some(value.iter().map(|b| char::from(*b)).collect()),
        // BMPString: UTF-16BE
        0x1e if value.len().is_multiple_of(2) => char::decode_utf16(
            value
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]])),
        )
        .collect::<Result<String, _>>()
        .ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cert(cn: &str, orgs: &[&str]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["client".to_owned()]).expect("params");
        let mut dn = rcgen::DistinguishedName::new();
        // rcgen keeps one value per type: a second organization goes by its OID.
        let types = [
            rcgen::DnType::OrganizationName,
            rcgen::DnType::CustomDnType(vec![2, 5, 4, 10]),
        ];
        for (ty, o) in types.into_iter().zip(orgs) {
            dn.push(ty, *o);
        }
        dn.push(rcgen::DnType::CommonName, cn);
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn the_user_is_the_common_name_and_the_groups_the_organizations() {
        let der = cert("system:node:other", &["system:nodes", "ops"]);
        assert_eq!(
            subject(&der),
            Some((
                "system:node:other".to_owned(),
                vec!["system:nodes".to_owned(), "ops".to_owned()]
            ))
        );
        let der = cert("kube-apiserver-kubelet-client", &[]);
        assert_eq!(
            subject(&der),
            Some(("kube-apiserver-kubelet-client".to_owned(), vec![]))
        );
    }

    #[test]
    fn directory_strings_of_every_kind_are_read() {
        assert_eq!(string(0x13, b"abc").as_deref(), Some("abc"));
        assert_eq!(string(0x13, &[0xff]), None);
        assert_eq!(string(0x14, &[0xe9]).as_deref(), Some("\u{e9}"));
        assert_eq!(string(0x1e, &[0, b'h', 0, b'i']).as_deref(), Some("hi"));
        assert_eq!(string(0x1e, &[0]), None);
        assert_eq!(string(0x02, b"1"), None);
    }

    #[test]
    fn truncated_or_overlong_lengths_are_refused() {
        let der = cert("a", &["b"]);
        for cut in 0..der.len() {
            assert_eq!(subject(&der[..cut]), None, "cut at {cut}");
        }
        assert_eq!(subject(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(subject(&[0x30, 0x80]), None);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = subject(&bytes);
        }

        #[test]
        fn mutated_certificates_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut der = cert("user", &["group"]);
            let len = der.len();
            for (at, byte) in flips {
                der[at % len] = byte;
            }
            let _ = subject(&der);
        }
    }
}
