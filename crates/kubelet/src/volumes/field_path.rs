//! Downward API field paths (`metadata.labels['app']`, `status.podIP`), parsed into the
//! set the kubelet supports, with its messages for the rest.

/// A pod field the downward API can give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldPath {
    /// `metadata.name`.
    Name,
    /// `metadata.namespace`.
    Namespace,
    /// `metadata.uid`.
    Uid,
    /// `metadata.labels`: every label, one `k="v"` line each.
    Labels,
    /// `metadata.annotations`: every annotation, one `k="v"` line each.
    Annotations,
    /// `metadata.labels['key']`.
    Label(String),
    /// `metadata.annotations['key']`.
    Annotation(String),
    /// `spec.nodeName` (and its old spelling `spec.host`).
    NodeName,
    /// `spec.serviceAccountName`.
    ServiceAccountName,
    /// `status.hostIP`.
    HostIp,
    /// `status.hostIPs`.
    HostIps,
    /// `status.podIP`.
    PodIp,
    /// `status.podIPs`.
    PodIps,
}

/// `path['subscript']` split as the kubelet's `SplitMaybeSubscriptedPath` does: the
/// text must end with `']`, and is cut at the first `['`, after a non-empty path.
fn split_subscript(path: &str) -> Option<(&str, &str)> {
    let inner = path.strip_suffix("']")?;
    let (path, key) = inner.split_once("['")?;
    (!path.is_empty()).then_some((path, key))
}

/// Whether `s` is non-empty, starts and ends alphanumeric, and `inner` accepts every
/// one of its bytes.
fn alnum_ends(s: &str, inner: impl Fn(u8) -> bool) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter().all(|c| inner(*c))
        }
        _ => false,
    }
}

/// A DNS-1123 subdomain: at most 253 characters, lower-case dot-separated labels.
fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(label_chars)
}

/// A DNS-1123 label: at most 63 lower-case letters, digits and `-`, alphanumeric at both
/// ends (Kubernetes' `IsDNS1123Label`).
pub(crate) fn dns_label(s: &str) -> bool {
    s.len() <= 63 && label_chars(s)
}

/// The characters of a DNS-1123 label (of any length).
fn label_chars(label: &str) -> bool {
    alnum_ends(label, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'
    }) && !label.bytes().any(|c| c.is_ascii_uppercase())
}

/// Kubernetes' `IsQualifiedName`: `[prefix/]name`, the prefix a DNS-1123 subdomain,
/// the name at most 63 characters of `[A-Za-z0-9_.-]` starting and ending
/// alphanumeric.
#[must_use]
pub fn is_qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    prefix.is_none_or(|p| !p.is_empty() && dns_subdomain(p))
        && name.len() <= 63
        && alnum_ends(name, |c| {
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')
        })
}

/// Parses a `fieldRef.fieldPath`. A downwardAPI volume (`for_volume`) gets the pod's
/// metadata only, as the kubelet's volume plugin reads it; an environment variable
/// (`api_version` `v1`, the API server's default) also gets the spec and status fields
/// the kubelet resolves itself.
///
/// # Errors
/// The kubelet's message for a path it does not support there, or for a subscript that
/// is not a valid label or annotation key.
pub fn parse(path: &str, api_version: Option<&str>, for_volume: bool) -> Result<FieldPath, String> {
    if !for_volume
        && let Some(version) = api_version
        && version != "v1"
    {
        return Err(format!("unsupported pod version: {version}"));
    }
    if let Some((map, key)) = split_subscript(path) {
        let valid = |k: &str| {
            if is_qualified_name(k) {
                Ok(k.to_owned())
            } else {
                Err(format!(
                    "invalid key subscript in {path}: {key:?} is not a qualified name"
                ))
            }
        };
        return match map {
            // The kubelet lower-cases an annotation key before checking it.
            "metadata.annotations" => {
                valid(&key.to_ascii_lowercase()).map(|_| FieldPath::Annotation(key.to_owned()))
            }
            "metadata.labels" => valid(key).map(FieldPath::Label),
            _ if for_volume => Err(format!("fieldPath {path:?} does not support subscript")),
            _ => Err(format!("field label does not support subscript: {path}")),
        };
    }
    Ok(match path {
        "metadata.name" => FieldPath::Name,
        "metadata.namespace" => FieldPath::Namespace,
        "metadata.uid" => FieldPath::Uid,
        "metadata.labels" => FieldPath::Labels,
        "metadata.annotations" => FieldPath::Annotations,
        _ if for_volume => return Err(format!("unsupported fieldPath: {path}")),
        "spec.nodeName" | "spec.host" => FieldPath::NodeName,
        "spec.serviceAccountName" => FieldPath::ServiceAccountName,
        "status.hostIP" => FieldPath::HostIp,
        "status.hostIPs" => FieldPath::HostIps,
        "status.podIP" => FieldPath::PodIp,
        "status.podIPs" => FieldPath::PodIps,
        // Known to the API but not resolved by the kubelet for a container.
        "spec.restartPolicy" | "spec.schedulerName" | "status.phase" => {
            return Err(format!("unsupported fieldPath: {path}"));
        }
        _ => return Err(format!("field label not supported: {path}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ENV_ONLY: [&str; 7] = [
        "spec.nodeName",
        "spec.host",
        "spec.serviceAccountName",
        "status.hostIP",
        "status.hostIPs",
        "status.podIP",
        "status.podIPs",
    ];
    const BOTH: [&str; 5] = [
        "metadata.name",
        "metadata.namespace",
        "metadata.uid",
        "metadata.labels",
        "metadata.annotations",
    ];

    #[test]
    fn the_kubelets_set() {
        for p in BOTH {
            assert!(parse(p, None, true).is_ok(), "{p}");
            assert!(parse(p, Some("v1"), false).is_ok(), "{p}");
        }
        for p in ENV_ONLY {
            assert!(parse(p, None, true).is_err(), "{p}");
            assert!(parse(p, None, false).is_ok(), "{p}");
        }
        assert_eq!(parse("spec.host", None, false), Ok(FieldPath::NodeName));
        assert_eq!(
            parse("metadata.labels['app.kubernetes.io/name']", None, true),
            Ok(FieldPath::Label("app.kubernetes.io/name".to_owned()))
        );
        assert_eq!(
            parse("metadata.annotations['Example.COM/Note']", None, false),
            Ok(FieldPath::Annotation("Example.COM/Note".to_owned()))
        );
        for bad in [
            "metadata.labels['']",
            "metadata.labels['a']b']",
            "metadata.labels['Example.COM/x']",
            "metadata.labels['-a']",
            "metadata.name['a']",
            "['a']",
            "status.phase",
            "metadata.labels[a]",
            "metadata",
            "",
        ] {
            assert!(parse(bad, None, false).is_err(), "{bad:?}");
            assert!(parse(bad, None, true).is_err(), "{bad:?}");
        }
        assert!(parse("metadata.name", Some("v2"), false).is_err());
        let long = format!("metadata.labels['{}']", "a".repeat(64));
        assert!(parse(&long, None, true).is_err());
    }

    /// The kubelet's set, written as a predicate independently of `parse`.
    fn accepted(path: &str, for_volume: bool) -> bool {
        for map in ["metadata.labels", "metadata.annotations"] {
            if let Some(key) = path
                .strip_prefix(map)
                .and_then(|r| r.strip_prefix("['"))
                .and_then(|r| r.strip_suffix("']"))
            {
                let key = if map == "metadata.annotations" {
                    key.to_ascii_lowercase()
                } else {
                    key.to_owned()
                };
                return is_qualified_name(&key);
            }
        }
        BOTH.contains(&path) || (!for_volume && ENV_ONLY.contains(&path))
    }

    proptest! {
        #[test]
        fn never_panics(path in any::<String>(), vol in any::<bool>()) {
            let _ = parse(&path, None, vol);
        }

        #[test]
        fn accepts_exactly_the_kubelets_set(
            path in prop_oneof![
                "(metadata|spec|status)\\.[a-zA-Z]{0,20}",
                "metadata\\.(labels|annotations|name)\\['[-a-zA-Z0-9_./'\\[\\]]{0,20}'\\]",
                "[a-z.\\['\\]]{0,30}",
            ],
            vol in any::<bool>(),
        ) {
            prop_assert_eq!(parse(&path, None, vol).is_ok(), accepted(&path, vol), "{}", path);
        }
    }
}
