//! Pure readings of a pod or container spec: restart and pull policies, `$(VAR)`
//! expansion, quantities.

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::runtime::PullPolicy;

/// The pod's `restartPolicy`, `Always` when unset (the API server's default).
#[must_use]
pub fn restart_policy(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".to_owned())
}

/// The kubelet's default pull policy: `Always` for `:latest` or no tag, else `IfNotPresent`.
#[must_use]
pub fn pull_policy(container: &Container) -> PullPolicy {
    match container.image_pull_policy.as_deref() {
        Some("Always") => PullPolicy::Always,
        Some("Never") => PullPolicy::Never,
        Some("IfNotPresent") => PullPolicy::IfNotPresent,
        _ => {
            let image = container.image.as_deref().unwrap_or_default();
            let name = image.split('@').next().unwrap_or(image);
            let last = name.rsplit('/').next().unwrap_or(name);
            if image.contains('@') {
                PullPolicy::IfNotPresent
            } else {
                match last.split_once(':') {
                    None | Some((_, "latest")) => PullPolicy::Always,
                    Some(_) => PullPolicy::IfNotPresent,
                }
            }
        }
    }
}

/// Expands `$(VAR)` references the way the kubelet does: a defined variable is replaced,
/// `$$` escapes a `$`, anything else is left as written.
#[must_use]
pub fn expand(input: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match env.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Parses a memory quantity (`128Mi`, `1G`, `1048576`) into bytes.
#[must_use]
pub fn parse_bytes(q: &str) -> Option<u64> {
    const SUFFIXES: [(&str, u64); 12] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
    ];
    let q = q.trim();
    let (num, mult) = SUFFIXES
        .iter()
        .find_map(|(s, m)| q.strip_suffix(s).map(|n| (n, *m)))
        .unwrap_or((q, 1));
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult);
    }
    let f: f64 = num.parse().ok()?;
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    (f.is_finite() && f >= 0.0).then(|| (f * mult as f64).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_like_the_kubelet() {
        let env = vec![
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "two".to_owned()),
        ];
        assert_eq!(expand("x$(A)y$(B)", &env), "x1ytwo");
        assert_eq!(expand("$(C)", &env), "$(C)");
        assert_eq!(expand("$$(A)", &env), "$(A)");
        assert_eq!(expand("$(A", &env), "$(A");
        assert_eq!(expand("cost $5", &env), "cost $5");
    }

    #[test]
    fn parses_quantities() {
        assert_eq!(parse_bytes("128Mi"), Some(128 << 20));
        assert_eq!(parse_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_bytes("1.5Ki"), Some(1536));
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("lots"), None);
    }

    #[test]
    fn default_pull_policy_by_tag() {
        let c = |image: &str| Container {
            image: Some(image.to_owned()),
            ..Container::default()
        };
        assert_eq!(pull_policy(&c("r:5000/a/b")), PullPolicy::Always);
        assert_eq!(pull_policy(&c("r:5000/a/b:latest")), PullPolicy::Always);
        assert_eq!(pull_policy(&c("r:5000/a/b:v1")), PullPolicy::IfNotPresent);
        assert_eq!(pull_policy(&c("r/a@sha256:00")), PullPolicy::IfNotPresent);
    }
}
