//! Pod UIDs where they name paths: the pod's directory `namespace_name_uid` (its logs and
//! volumes), the sandbox's network namespace `krustlet-<uid>` and its CNI container ID.
//! A UID from the API server is a UUID, but one from a static pod's manifest is whatever
//! the file says (the kubelet keeps it); either way a UID is checked before it names
//! anything: one plain name of at most [`MAX_UID_BYTES`] bytes.

use k8s_openapi::api::core::v1::Pod;
use sha2::{Digest, Sha256};

use super::admission::Rejection;

/// The longest UID taken (a UUID is 36 bytes; the kubelet's hash of a static pod, 32).
pub const MAX_UID_BYTES: usize = 128;

/// Why a UID cannot name a path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadUid {
    /// No UID at all.
    #[error("is empty")]
    Empty,
    /// Longer than [`MAX_UID_BYTES`].
    #[error("is {0} bytes long, more than {MAX_UID_BYTES}")]
    TooLong(usize),
    /// A character other than an ASCII letter, digit, `-`, `_` or `.` (such as `/` or NUL).
    #[error("contains {0:?}: only ASCII letters, digits, '-', '_' and '.' may name a path")]
    Character(char),
    /// `..`, which could climb out of a directory.
    #[error("contains \"..\"")]
    DotDot,
}

/// Whether `uid` may name a path: non-empty, at most [`MAX_UID_BYTES`] bytes of ASCII
/// letters, digits, `-`, `_` and `.`, without `..`.
///
/// # Errors
/// What is wrong with it.
pub fn check(uid: &str) -> Result<(), BadUid> {
    if uid.is_empty() {
        return Err(BadUid::Empty);
    }
    if uid.len() > MAX_UID_BYTES {
        return Err(BadUid::TooLong(uid.len()));
    }
    if let Some(c) = uid
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(BadUid::Character(c));
    }
    if uid.contains("..") {
        return Err(BadUid::DotDot);
    }
    Ok(())
}

/// The rejection of a pod whose UID cannot name its directory (phase `Failed`, reason
/// `InvalidPodUID`, a reason of krustlet's: the kubelet trusts the UID).
#[must_use]
pub fn admit(pod: &Pod) -> Option<Rejection> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    check(uid).err().map(|e| {
        Rejection::new(
            "InvalidPodUID",
            format!("the pod's UID {:?} {e}", shorten(uid)),
        )
    })
}

/// The part of `uid` that goes into a file name: itself when [`check`] takes it, else
/// `invalid-` and a hash of it, which names no other place (such a pod is refused at
/// admission, so nothing creates that directory; its removal finds nothing).
pub(crate) fn path_part(uid: &str) -> std::borrow::Cow<'_, str> {
    if check(uid).is_ok() {
        return uid.into();
    }
    let digest = Sha256::digest(uid.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("invalid-{hex}").into()
}

/// At most 140 bytes of `uid`, for messages.
fn shorten(uid: &str) -> &str {
    let mut end = uid.len().min(140);
    while !uid.is_char_boundary(end) {
        end -= 1;
    }
    &uid[..end]
}

#[cfg(test)]
mod tests {
    use std::path::{Component, Path};

    use super::super::pod_dir_name;
    use super::*;

    fn pod(uid: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "default", "uid": uid}
        }))
        .expect("pod")
    }

    /// Whatever the UID, the pod's directory is one plain name inside the pods directory.
    #[test]
    fn a_uid_never_takes_the_pod_directory_elsewhere() {
        let long = "a".repeat(5000);
        for uid in [
            "../../x",
            "../../../../etc",
            "a/b",
            "..",
            "/abs",
            "a\0b",
            &long,
        ] {
            let name = pod_dir_name(&pod(uid));
            let parts: Vec<_> = Path::new(&name).components().collect();
            assert!(
                matches!(parts[..], [Component::Normal(_)]),
                "{uid:?} names {name:?}"
            );
            assert!(
                !name.contains('\0') && name.len() <= 255,
                "{uid:?}: {name:?}"
            );
        }
        // A UID of the API (a UUID) names it as the kubelet does.
        let uuid = "0b9e3c1a-5d2f-4a8e-9c1b-2f3e4d5a6b7c";
        assert_eq!(pod_dir_name(&pod(uuid)), format!("default_p_{uuid}"));
        // Two bad UIDs do not share a directory.
        assert_ne!(pod_dir_name(&pod("../a")), pod_dir_name(&pod("../b")));
    }

    #[test]
    fn a_uid_is_one_plain_bounded_name_or_refused_saying_why() {
        assert_eq!(check("0b9e3c1a-5d2f-4a8e-9c1b-2f3e4d5a6b7c"), Ok(()));
        assert_eq!(check("d41d8cd98f00b204e9800998ecf8427e"), Ok(()));
        assert_eq!(check("static_web.v1"), Ok(()));
        assert_eq!(check(&"a".repeat(MAX_UID_BYTES)), Ok(()));
        assert_eq!(check(""), Err(BadUid::Empty));
        assert_eq!(
            check(&"a".repeat(MAX_UID_BYTES + 1)),
            Err(BadUid::TooLong(MAX_UID_BYTES + 1))
        );
        assert_eq!(check("../../x"), Err(BadUid::Character('/')));
        assert_eq!(check("a\0b"), Err(BadUid::Character('\0')));
        assert_eq!(check("a b"), Err(BadUid::Character(' ')));
        assert_eq!(check("é"), Err(BadUid::Character('é')));
        assert_eq!(check(".."), Err(BadUid::DotDot));
        assert_eq!(check("a..b"), Err(BadUid::DotDot));
    }

    /// A pod of such a UID is refused at admission (it never gets a directory, a
    /// sandbox or a log), with the reason in its status.
    #[test]
    fn a_pod_of_a_bad_uid_is_rejected_with_a_clear_message() {
        let rejected = admit(&pod("../../x")).expect("rejected");
        assert_eq!(rejected.reason, "InvalidPodUID");
        assert!(
            rejected.message.contains("\"../../x\"") && rejected.message.contains("'/'"),
            "{}",
            rejected.message
        );
        let long = admit(&pod(&"a".repeat(10_000))).expect("rejected");
        assert!(long.message.len() < 400, "{}", long.message);
        assert!(admit(&pod("0b9e3c1a-5d2f-4a8e-9c1b-2f3e4d5a6b7c")).is_none());
        let none: Pod =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}})).expect("pod");
        assert!(admit(&none).is_some());
    }
}
