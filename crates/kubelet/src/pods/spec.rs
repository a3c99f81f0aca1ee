//! Pure readings of a pod or container spec: restart and pull policies, `$(VAR)`
//! expansion, the memory limit.

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::quantity::{Quantity, QuantityError};
use crate::runtime::PullPolicy;

/// A `restartPolicy`: of the pod, or `Always` on an init container (a sidecar).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Restart after every exit (the API server's default).
    Always,
    /// Restart after a non-zero exit.
    OnFailure,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    /// The policy named `name`; anything else (the API server accepts nothing else) is
    /// the default, `Always`.
    #[must_use]
    pub fn parse(name: &str) -> Self {
        match name {
            "OnFailure" => Self::OnFailure,
            "Never" => Self::Never,
            _ => Self::Always,
        }
    }

    /// Whether a container that exited with `exit_code` runs again.
    #[must_use]
    pub fn restarts_after(self, exit_code: i32) -> bool {
        match self {
            Self::Always => true,
            Self::OnFailure => exit_code != 0,
            Self::Never => false,
        }
    }

    /// The policy of a pod's regular init containers: a failed one is retried unless the
    /// pod never restarts anything.
    #[must_use]
    pub fn for_init_containers(self) -> Self {
        match self {
            Self::Never => Self::Never,
            Self::Always | Self::OnFailure => Self::OnFailure,
        }
    }
}

/// The pod's `restartPolicy`, `Always` when unset (the API server's default).
#[must_use]
pub fn restart_policy(pod: &Pod) -> RestartPolicy {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .map_or(RestartPolicy::Always, RestartPolicy::parse)
}

/// Whether `container` is a sidecar: an init container with `restartPolicy: Always`
/// (the only value the API server accepts on a container).
#[must_use]
pub fn is_sidecar(container: &Container) -> bool {
    container.restart_policy.as_deref() == Some("Always")
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

/// A piece of a text with `$(VAR)` references.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Text to keep as it is (`$$` already reduced to `$`).
    Text(&'a str),
    /// A complete `$(NAME)` reference: the name.
    Var(&'a str),
}

/// Cuts `input` into text and `$(VAR)` references with the kubelet's syntax: `$$` is an
/// escaped `$`, `$(` without a closing `)` and a `$` before anything else are text.
pub fn pieces<'a>(input: &'a str, mut f: impl FnMut(Piece<'a>)) {
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        if i > 0 {
            f(Piece::Text(&rest[..i]));
        }
        let after = &rest[i + 1..];
        if let Some(escaped) = after.strip_prefix('$') {
            f(Piece::Text("$"));
            rest = escaped;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
        {
            f(Piece::Var(&body[..end]));
            rest = &body[end + 1..];
        } else {
            f(Piece::Text("$"));
            rest = after;
        }
    }
    if !rest.is_empty() {
        f(Piece::Text(rest));
    }
}

/// Expands `$(VAR)` references the way the kubelet does: a defined variable is replaced,
/// `$$` escapes a `$`, anything else is left as written.
#[must_use]
pub fn expand(input: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(input.len());
    pieces(input, |piece| match piece {
        Piece::Text(text) => out.push_str(text),
        Piece::Var(name) => match env.iter().rev().find(|(k, _)| k == name) {
            Some((_, v)) => out.push_str(v),
            None => {
                out.push_str("$(");
                out.push_str(name);
                out.push(')');
            }
        },
    });
    out
}

/// A `limits.memory` the container cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid memory limit {value:?}: {error}")]
pub struct InvalidMemoryLimit {
    /// The limit as the pod wrote it.
    pub value: String,
    /// Why it is refused.
    #[source]
    pub error: QuantityError,
}

/// The container's memory limit in bytes, rounded up as the kubelet's `Value()` does;
/// `None` when unset or zero (the kubelet passes 0 to the runtime, which sets no limit).
///
/// # Errors
/// A limit that does not parse, is negative or exceeds `u64` bytes (the API server
/// refuses the first two): the container is not run unlimited, it gets
/// `CreateContainerConfigError` with this error's message.
pub fn memory_limit(container: &Container) -> Result<Option<u64>, InvalidMemoryLimit> {
    let Some(q) = container
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
    else {
        return Ok(None);
    };
    let bytes = Quantity::from_api(q)
        .and_then(Quantity::bytes)
        .map_err(|error| InvalidMemoryLimit {
            value: q.0.clone(),
            error,
        })?;
    Ok((bytes != 0).then_some(bytes))
}

/// The field path of a container in events: `spec.containers{name}` or
/// `spec.initContainers{name}`.
pub(crate) fn field_path(init: bool, name: &str) -> String {
    let list = if init { "initContainers" } else { "containers" };
    format!("spec.{list}{{{name}}}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;

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
    fn memory_limits_round_up_and_never_vanish() {
        let limit = |q: Option<&str>| {
            let mut c = Container::default();
            if let Some(q) = q {
                c.resources = Some(ResourceRequirements {
                    limits: Some(
                        [("memory".to_owned(), ApiQuantity(q.to_owned()))]
                            .into_iter()
                            .collect(),
                    ),
                    ..ResourceRequirements::default()
                });
            }
            memory_limit(&c)
        };
        assert_eq!(limit(None), Ok(None));
        assert_eq!(limit(Some("128Mi")), Ok(Some(128 << 20)));
        assert_eq!(limit(Some("1G")), Ok(Some(1_000_000_000)));
        assert_eq!(limit(Some("1.5Ki")), Ok(Some(1536)));
        // Was None (no limit at all) with the old parser.
        assert_eq!(limit(Some("67108864500m")), Ok(Some(67_108_865)));
        assert_eq!(limit(Some("64e6")), Ok(Some(64_000_000)));
        assert_eq!(limit(Some("0")), Ok(None));
        for bad in ["lots", "-1Mi", "100E"] {
            let err = limit(Some(bad)).expect_err(bad).to_string();
            assert!(
                err.starts_with(&format!("invalid memory limit {bad:?}: ")),
                "{err}"
            );
        }
    }

    proptest::proptest! {
        /// With nothing defined, expansion only turns `$$` outside a `$(...)` into `$`.
        #[test]
        fn expansion_without_variables_only_unescapes(input in "[$()a-z]{0,40}") {
            let mut expected = String::new();
            let mut rest = input.as_str();
            while let Some(c) = rest.chars().next() {
                if rest.starts_with("$$") {
                    expected.push('$');
                    rest = &rest[2..];
                } else if rest.starts_with("$(") && let Some(end) = rest.find(')') {
                    expected.push_str(&rest[..=end]);
                    rest = &rest[end + 1..];
                } else {
                    expected.push(c);
                    rest = &rest[c.len_utf8()..];
                }
            }
            proptest::prop_assert_eq!(expand(&input, &[]), expected);
        }

        #[test]
        fn expansion_never_panics(input in proptest::prelude::any::<String>()) {
            let env = vec![("A".to_owned(), "$(A)".to_owned())];
            let _ = expand(&input, &env);
        }
    }

    #[test]
    fn restart_policies_decide_on_the_exit_code() {
        use RestartPolicy::{Always, Never, OnFailure};
        let decide = |p: RestartPolicy| (p.restarts_after(0), p.restarts_after(1));
        assert_eq!(decide(Always), (true, true));
        assert_eq!(decide(OnFailure), (false, true));
        assert_eq!(decide(Never), (false, false));
        assert_eq!(Always.for_init_containers(), OnFailure);
        assert_eq!(Never.for_init_containers(), Never);
        assert_eq!(restart_policy(&Pod::default()), Always);
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
