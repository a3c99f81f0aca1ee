//! Pure readings of a pod or container spec: restart and pull policies, `$(VAR)`
//! expansion, the memory limit, krustlet's pod annotations.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;

use crate::quantity::{Quantity, QuantityError};
use crate::runtime::{CpuResources, PullPolicy};

mod annotations;
pub use annotations::{AnnotationError, InvalidAnnotation, instance_reuse, request_timeout};

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

/// Whether the pod is on the node's network (`hostNetwork: true`).
#[must_use]
pub fn host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_network) == Some(true)
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

/// A CPU limit or request the container cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cpu {which} {value:?}: {error}")]
pub struct InvalidCpu {
    /// `limit` or `request`.
    pub which: &'static str,
    /// The quantity as the pod wrote it.
    pub value: String,
    /// Why it is refused.
    #[source]
    pub error: QuantityError,
}

/// The container's CPU limit and request in millicores, rounded up as the kubelet's
/// `MilliValue()`; zero or unset is `None`.
///
/// # Errors
/// A quantity that does not parse or is negative (the API server refuses both):
/// `CreateContainerConfigError` with this error's message.
pub fn cpu_resources(container: &Container) -> Result<CpuResources, InvalidCpu> {
    let resources = container.resources.as_ref();
    let millis = |which, list: Option<&BTreeMap<String, ApiQuantity>>| {
        let Some(q) = list.and_then(|l| l.get("cpu")) else {
            return Ok(None);
        };
        let invalid = |error| InvalidCpu {
            which,
            value: q.0.clone(),
            error,
        };
        let parsed = Quantity::from_api(q).map_err(invalid)?;
        if parsed.is_negative() {
            return Err(invalid(QuantityError::Negative));
        }
        let m = u64::try_from(parsed.milli_value()).unwrap_or(u64::MAX);
        Ok((m != 0).then_some(m))
    };
    Ok(CpuResources {
        limit_millis: millis("limit", resources.and_then(|r| r.limits.as_ref()))?,
        request_millis: millis("request", resources.and_then(|r| r.requests.as_ref()))?,
    })
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
    fn cpu_quantities_become_millicores() {
        let cpu = |limit: Option<&str>, request: Option<&str>| {
            let list = |q: Option<&str>| {
                q.map(|q| {
                    [("cpu".to_owned(), ApiQuantity(q.to_owned()))]
                        .into_iter()
                        .collect()
                })
            };
            let c = Container {
                resources: Some(ResourceRequirements {
                    limits: list(limit),
                    requests: list(request),
                    ..ResourceRequirements::default()
                }),
                ..Container::default()
            };
            cpu_resources(&c)
        };
        let ok = |l, r| {
            Ok(CpuResources {
                limit_millis: l,
                request_millis: r,
            })
        };
        assert_eq!(cpu(None, None), ok(None, None));
        assert_eq!(cpu(Some("200m"), Some("100m")), ok(Some(200), Some(100)));
        assert_eq!(cpu(Some("1.5"), Some("2")), ok(Some(1500), Some(2000)));
        // Rounded up: a sliver of a millicore is still a limit.
        assert_eq!(cpu(Some("100u"), None), ok(Some(1), None));
        assert_eq!(cpu(Some("0"), None), ok(None, None));
        let err = cpu(Some("-1"), None).expect_err("negative").to_string();
        assert!(err.starts_with("invalid cpu limit \"-1\": "), "{err}");
        let err = cpu(None, Some("much")).expect_err("garbage").to_string();
        assert!(err.starts_with("invalid cpu request \"much\": "), "{err}");
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
