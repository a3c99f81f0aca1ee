//! krustlet's own pod annotations (`wasm.krustlet.dev/...`), read and checked: the
//! request time limit and how a served component's instances are reused.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use crate::duration::InvalidDuration;
use crate::runtime::{
    IDLE_INSTANCE_TIMEOUT, InstanceReuse, MAX_INSTANCE_CONCURRENT_REUSE_COUNT,
    MAX_INSTANCE_REUSE_COUNT, REQUEST_TIMEOUT,
};

/// A pod annotation the pod cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid annotation {name}: {error}")]
pub struct InvalidAnnotation {
    /// The annotation's name.
    pub name: &'static str,
    /// Why it is refused.
    #[source]
    pub error: AnnotationError,
}

/// Why an annotation's value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    /// No Go duration, or one out of the annotation's range.
    #[error(transparent)]
    Duration(#[from] InvalidDuration),
    /// No positive integer (zero, negative, a fraction, too large, or no number).
    #[error("{0:?} is not a positive integer")]
    NotPositiveInteger(String),
}

/// The annotation `name`'s value, if the pod has it.
fn annotation<'a>(pod: &'a Pod, name: &str) -> Option<&'a String> {
    pod.metadata.annotations.as_ref()?.get(name)
}

/// The time limit of each request the pod's served components answer, from its
/// [`REQUEST_TIMEOUT`] annotation (`None`: unset).
///
/// # Errors
/// An annotation that is no Go duration, or is zero: the container gets
/// `CreateContainerConfigError` with this error's message.
pub fn request_timeout(pod: &Pod) -> Result<Option<Duration>, InvalidAnnotation> {
    let name = REQUEST_TIMEOUT;
    let Some(text) = annotation(pod, name) else {
        return Ok(None);
    };
    match crate::duration::parse(text) {
        Ok(d) if !d.is_zero() => Ok(Some(d)),
        Ok(_) => Err(InvalidAnnotation {
            name,
            error: InvalidDuration(text.clone()).into(),
        }),
        Err(error) => Err(InvalidAnnotation {
            name,
            error: error.into(),
        }),
    }
}

/// The positive integer of the annotation `name` (`None`: unset).
fn positive_count(pod: &Pod, name: &'static str) -> Result<Option<usize>, InvalidAnnotation> {
    let Some(text) = annotation(pod, name) else {
        return Ok(None);
    };
    match text.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(InvalidAnnotation {
            name,
            error: AnnotationError::NotPositiveInteger(text.clone()),
        }),
    }
}

/// How the instances of the pod's served WASI 0.3 components are reused, from its
/// [`MAX_INSTANCE_REUSE_COUNT`], [`MAX_INSTANCE_CONCURRENT_REUSE_COUNT`] and
/// [`IDLE_INSTANCE_TIMEOUT`] annotations (each unset one `None`).
///
/// # Errors
/// The first of them that is refused: a count that is no positive integer, a time-out
/// that is no Go duration (zero is allowed: an idle instance is dropped at once). The
/// container gets `CreateContainerConfigError` with this error's message.
pub fn instance_reuse(pod: &Pod) -> Result<InstanceReuse, InvalidAnnotation> {
    let idle_timeout = match annotation(pod, IDLE_INSTANCE_TIMEOUT) {
        None => None,
        Some(text) => Some(
            crate::duration::parse(text).map_err(|error| InvalidAnnotation {
                name: IDLE_INSTANCE_TIMEOUT,
                error: error.into(),
            })?,
        ),
    };
    Ok(InstanceReuse {
        max_requests: positive_count(pod, MAX_INSTANCE_REUSE_COUNT)?,
        max_concurrent: positive_count(pod, MAX_INSTANCE_CONCURRENT_REUSE_COUNT)?,
        idle_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotated(pairs: &[(&str, &str)]) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.annotations = Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        pod
    }

    #[test]
    fn the_request_timeout_annotation_is_a_positive_go_duration() {
        assert_eq!(request_timeout(&Pod::default()), Ok(None));
        assert_eq!(
            request_timeout(&annotated(&[(REQUEST_TIMEOUT, "1m30s")])),
            Ok(Some(Duration::from_secs(90)))
        );
        for bad in ["0", "soon", "1e400h", "-5s"] {
            let e = request_timeout(&annotated(&[(REQUEST_TIMEOUT, bad)])).expect_err(bad);
            assert!(
                e.to_string()
                    .starts_with("invalid annotation wasm.krustlet.dev/request-timeout"),
                "{e}"
            );
        }
    }

    #[test]
    fn unset_reuse_annotations_leave_the_node_defaults() {
        assert_eq!(
            instance_reuse(&Pod::default()),
            Ok(InstanceReuse::default())
        );
        assert_eq!(
            instance_reuse(&annotated(&[("other", "x")])),
            Ok(InstanceReuse::default())
        );
    }

    #[test]
    fn reuse_counts_are_positive_integers() {
        for name in [
            MAX_INSTANCE_REUSE_COUNT,
            MAX_INSTANCE_CONCURRENT_REUSE_COUNT,
        ] {
            let read = |value: &str| instance_reuse(&annotated(&[(name, value)]));
            let count = |n| {
                if name == MAX_INSTANCE_REUSE_COUNT {
                    InstanceReuse {
                        max_requests: Some(n),
                        ..InstanceReuse::default()
                    }
                } else {
                    InstanceReuse {
                        max_concurrent: Some(n),
                        ..InstanceReuse::default()
                    }
                }
            };
            assert_eq!(read("1"), Ok(count(1)), "{name}");
            assert_eq!(read("128"), Ok(count(128)), "{name}");
            for bad in [
                "0",
                "-1",
                "1.5",
                "1e3",
                "many",
                "",
                "99999999999999999999999",
            ] {
                assert_eq!(
                    read(bad),
                    Err(InvalidAnnotation {
                        name,
                        error: AnnotationError::NotPositiveInteger(bad.to_owned()),
                    }),
                    "{name}={bad:?}"
                );
            }
        }
    }

    #[test]
    fn the_idle_instance_timeout_is_a_go_duration_zero_allowed() {
        let read = |value: &str| instance_reuse(&annotated(&[(IDLE_INSTANCE_TIMEOUT, value)]));
        let idle = |d| {
            Ok(InstanceReuse {
                idle_timeout: Some(d),
                ..InstanceReuse::default()
            })
        };
        assert_eq!(read("0"), idle(Duration::ZERO));
        assert_eq!(read("0s"), idle(Duration::ZERO));
        assert_eq!(read("250ms"), idle(Duration::from_millis(250)));
        assert_eq!(read("1m"), idle(Duration::from_secs(60)));
        for bad in ["-1s", "5", "soon", "", "1e400h"] {
            let e = read(bad).expect_err(bad);
            assert_eq!(e.name, IDLE_INSTANCE_TIMEOUT);
            assert_eq!(
                e.error,
                AnnotationError::Duration(InvalidDuration(bad.to_owned()))
            );
        }
    }

    #[test]
    fn all_three_are_read_together_and_refusals_name_the_annotation() {
        let pod = annotated(&[
            (MAX_INSTANCE_REUSE_COUNT, "1"),
            (MAX_INSTANCE_CONCURRENT_REUSE_COUNT, "4"),
            (IDLE_INSTANCE_TIMEOUT, "30s"),
        ]);
        assert_eq!(
            instance_reuse(&pod),
            Ok(InstanceReuse {
                max_requests: Some(1),
                max_concurrent: Some(4),
                idle_timeout: Some(Duration::from_secs(30)),
            })
        );
        let message = |pairs: &[(&str, &str)]| {
            instance_reuse(&annotated(pairs))
                .expect_err("refused")
                .to_string()
        };
        assert_eq!(
            message(&[(MAX_INSTANCE_REUSE_COUNT, "0")]),
            "invalid annotation wasm.krustlet.dev/max-instance-reuse-count: \
             \"0\" is not a positive integer"
        );
        assert_eq!(
            message(&[
                (MAX_INSTANCE_REUSE_COUNT, "8"),
                (MAX_INSTANCE_CONCURRENT_REUSE_COUNT, "lots"),
            ]),
            "invalid annotation wasm.krustlet.dev/max-instance-concurrent-reuse-count: \
             \"lots\" is not a positive integer"
        );
        assert_eq!(
            message(&[(IDLE_INSTANCE_TIMEOUT, "-1s")]),
            "invalid annotation wasm.krustlet.dev/idle-instance-timeout: \
             invalid duration \"-1s\" (e.g. 1m, 30s, 1m30s, 500ms)"
        );
    }
}
