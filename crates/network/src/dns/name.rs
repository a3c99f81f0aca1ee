//! The names a pod may look up, and the names asked for one of them (the search list).

use super::LookupError;

/// Longest name, without its trailing dot (RFC 1035: 255 bytes on the wire).
const MAX_NAME: usize = 253;
/// Longest label (RFC 1035).
const MAX_LABEL: usize = 63;
/// Most search domains tried, as Kubernetes allows (`MaxDNSSearchPaths`).
const MAX_SEARCHES: usize = 32;

/// A checked name: without its trailing dot, and whether it had one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Name {
    pub text: String,
    pub absolute: bool,
}

/// Checks `name` as a host name: labels of letters, digits, `-` and `_`, 1 to 63 bytes
/// each, at most 253 bytes in all; one trailing dot makes it absolute.
pub(crate) fn check(name: &str) -> Result<Name, LookupError> {
    let invalid = |reason| Err(LookupError::invalid(name, reason));
    let (text, absolute) = match name.strip_suffix('.') {
        Some(text) => (text, true),
        None => (name, false),
    };
    if text.is_empty() {
        return invalid("the name is empty");
    }
    if text.len() > MAX_NAME {
        return invalid("the name is longer than 253 bytes");
    }
    for label in text.split('.') {
        if label.is_empty() {
            return invalid("the name has an empty label");
        }
        if label.len() > MAX_LABEL {
            return invalid("a label is longer than 63 bytes");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return invalid("a label holds a character other than a letter, a digit, '-' or '_'");
        }
    }
    Ok(Name {
        text: text.to_owned(),
        absolute,
    })
}

/// The names asked for `name`, in glibc's order (`res_search`): an absolute name alone;
/// otherwise the name as it is first when it has at least `ndots` dots, then the name in
/// each search domain (the first 32; one that makes it too long is skipped), then the
/// name as it is if not asked yet.
pub(crate) fn candidates(name: &Name, searches: &[String], ndots: u8) -> Vec<String> {
    if name.absolute {
        return vec![name.text.clone()];
    }
    let mut out = Vec::new();
    let dots = name.text.bytes().filter(|&b| b == b'.').count();
    let as_is_first = dots >= usize::from(ndots);
    if as_is_first {
        out.push(name.text.clone());
    }
    for domain in searches.iter().take(MAX_SEARCHES) {
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        if domain.is_empty() {
            continue;
        }
        let full = format!("{}.{domain}", name.text);
        if check(&full).is_ok() && !out.contains(&full) {
            out.push(full);
        }
    }
    if !as_is_first {
        out.push(name.text.clone());
    }
    out
}
