//! Memory-backed volumes: as the kubelet does, `secret` and `projected` volumes (they hold
//! secrets and service-account tokens) and `emptyDir` volumes with `medium: Memory` are a
//! tmpfs of their own, so their content never reaches the node's disk. Where the node
//! cannot mount (no `CAP_SYS_ADMIN`), they stay directories on disk, with one warning.
//!
//! A `medium: Memory` emptyDir is sized as the kubelet sizes it ([`empty_dir_size`]):
//! never the kernel's default of half the host's memory. What the pod's memory volumes
//! hold is part of its working set ([`pod_usage`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::{Container, Pod};
use rustix::mount::{MountFlags, UnmountFlags};

use crate::quantity::Quantity;

/// `TMPFS_MAGIC` of `statfs(2)`.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// The flags of every memory-backed volume: nothing on it runs or is a device.
const FLAGS: MountFlags = MountFlags::NOSUID
    .union(MountFlags::NODEV)
    .union(MountFlags::NOEXEC);

static WARNED: AtomicBool = AtomicBool::new(false);

/// Whether `dir` is a tmpfs mounted at `dir` itself (not a directory of a tmpfs mounted
/// higher up, such as a data dir on tmpfs).
fn is_own_tmpfs(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let on_tmpfs = rustix::fs::statfs(dir).is_ok_and(|s| s.f_type == TMPFS_MAGIC);
    let (Ok(this), Some(Ok(parent))) = (
        std::fs::symlink_metadata(dir),
        dir.parent().map(std::fs::symlink_metadata),
    ) else {
        return false;
    };
    on_tmpfs && this.dev() != parent.dev()
}

/// Makes `dir` (created if missing) a tmpfs of at most `size` bytes (unset: the kernel's
/// default, half the memory), unless it is one already (then it is resized to `size`).
/// Returns whether it is one.
///
/// # Errors
/// When `dir` cannot be created; a refused mount is not an error (see the module).
pub fn mount_tmpfs(dir: &Path, size: Option<u64>) -> std::io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    if is_own_tmpfs(dir) {
        // Mounted before this start of the agent, perhaps sized otherwise: resized.
        if let Some(size) = size {
            let options = std::ffi::CString::new(format!("size={}", size.max(4096)))
                .map_err(std::io::Error::other)?;
            if let Err(e) = rustix::mount::mount_remount(dir, FLAGS, options.as_c_str()) {
                tracing::warn!(path = %dir.display(), error = %e, "cannot resize tmpfs");
            }
        }
        return Ok(true);
    }
    let mut options = "mode=0750".to_owned();
    if let Some(size) = size {
        options.push_str(&format!(",size={}", size.max(4096)));
    }
    let options = std::ffi::CString::new(options).map_err(std::io::Error::other)?;
    match rustix::mount::mount("tmpfs", dir, "tmpfs", FLAGS, options.as_c_str()) {
        Ok(()) => Ok(true),
        Err(e) => {
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "cannot mount tmpfs: secrets, tokens and medium: Memory volumes stay on disk");
            }
            Ok(false)
        }
    }
}

/// The pod's memory limit in bytes as the kubelet computes it for the pod's cgroup:
/// `None` unless every container and init container has one; otherwise the larger of the
/// containers' sum (with the restartable init containers, sidecars, which run beside
/// them) and each other init container's limit (with the sidecars started before it),
/// plus the pod's `overhead`.
#[must_use]
pub fn pod_memory_limit(pod: &Pod) -> Option<u64> {
    let spec = pod.spec.as_ref()?;
    let limit = |c: &Container| crate::pods::spec::memory_limit(c).ok().flatten();
    let mut sidecars: u64 = 0;
    let mut init_peak: u64 = 0;
    for c in spec.init_containers.iter().flatten() {
        let l = limit(c)?;
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars = sidecars.saturating_add(l);
            init_peak = init_peak.max(sidecars);
        } else {
            init_peak = init_peak.max(sidecars.saturating_add(l));
        }
    }
    let mut sum = sidecars;
    for c in &spec.containers {
        sum = sum.saturating_add(limit(c)?);
    }
    let overhead = spec
        .overhead
        .as_ref()
        .and_then(|o| o.get("memory"))
        .and_then(|q| Quantity::from_api(q).and_then(Quantity::bytes).ok())
        .unwrap_or(0);
    Some(sum.max(init_peak).saturating_add(overhead))
}

/// The size of a `medium: Memory` emptyDir's tmpfs, as the kubelet sizes it: the node's
/// allocatable memory (no pod can have more), or the pod's memory limit when it has one
/// and it is smaller, or the volume's `sizeLimit` when it is set and smaller still.
#[must_use]
pub fn empty_dir_size(pod: &Pod, size_limit: Option<u64>, allocatable: u64) -> u64 {
    [pod_memory_limit(pod), size_limit]
        .into_iter()
        .flatten()
        .filter(|&l| l > 0)
        .fold(allocatable, u64::min)
}

/// Bytes held by the memory-backed volumes (their own tmpfs) of the pod whose directory
/// is `pod_dir`: part of the pod's working set, as tmpfs pages are charged to the cgroup
/// of the pod that writes them. Blocking file work.
#[must_use]
pub fn pod_usage(pod_dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(pod_dir.join(super::VOLUMES_DIR)) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_own_tmpfs(p))
        .filter_map(|p| rustix::fs::statvfs(&p).ok())
        .map(|s| {
            s.f_blocks
                .saturating_sub(s.f_bfree)
                .saturating_mul(s.f_frsize)
        })
        .fold(0, u64::saturating_add)
}

/// Mount points at or below `dir`, deepest first, from `/proc/self/mountinfo`.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    // mountinfo names mount points by their canonical path (a data dir given as
    // `a/../b` must still match).
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(&dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// A mountinfo path with its `\NNN` octal escapes decoded.
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .map(|d| d.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0')));
        if let Some(n) = octal.and_then(|n| u8::try_from(n).ok()) {
            out.push(n);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts every mount at or below `dir` (before the directory is removed). Mounts are
/// detached, so a file still open elsewhere cannot keep one in place.
pub fn unmount_all(dir: &Path) {
    for mount in mounts_under(dir) {
        if let Err(e) = rustix::mount::unmount(&mount, UnmountFlags::DETACH) {
            tracing::warn!(path = %mount.display(), error = %e, "cannot unmount");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({ "spec": spec })).expect("pod")
    }

    fn limited(name: &str, memory: &str) -> serde_json::Value {
        serde_json::json!({ "name": name, "resources": { "limits": { "memory": memory } } })
    }

    #[test]
    fn a_memory_empty_dir_is_sized_as_the_kubelet_sizes_it() {
        const MI: u64 = 1 << 20;
        let node = 8192 * MI;
        let one = pod(serde_json::json!({ "containers": [limited("a", "64Mi")] }));
        // The pod's limit, not half the host's memory.
        assert_eq!(empty_dir_size(&one, None, node), 64 * MI);
        // A smaller sizeLimit wins; a larger one does not.
        assert_eq!(empty_dir_size(&one, Some(MI), node), MI);
        assert_eq!(empty_dir_size(&one, Some(128 * MI), node), 64 * MI);
        // A container without a limit: the pod has none, the node's allocatable counts.
        let open = pod(serde_json::json!({
            "containers": [limited("a", "64Mi"), { "name": "b" }]
        }));
        assert_eq!(pod_memory_limit(&open), None);
        assert_eq!(empty_dir_size(&open, None, node), node);
        assert_eq!(empty_dir_size(&open, Some(2 * MI), node), 2 * MI);
        // Containers add up; an init container alone may need more; sidecars run beside
        // both; the overhead is added.
        let full = pod(serde_json::json!({
            "initContainers": [
                { "name": "side", "restartPolicy": "Always",
                  "resources": { "limits": { "memory": "10Mi" } } },
                limited("setup", "300Mi"),
            ],
            "containers": [limited("a", "64Mi"), limited("b", "32Mi")],
            "overhead": { "memory": "1Mi" }
        }));
        assert_eq!(pod_memory_limit(&full), Some(311 * MI));
        // Without the init container that needs most: the sum of what runs together.
        let plain = pod(serde_json::json!({
            "initContainers": [limited("setup", "100Mi")],
            "containers": [limited("a", "64Mi"), limited("b", "32Mi")]
        }));
        assert_eq!(pod_memory_limit(&plain), Some(100 * MI));
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(r"/a\040b/c"), "/a b/c");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }

    /// Needs the right to mount, as the test suite has (it runs as root).
    #[test]
    fn a_memory_volume_is_its_own_tmpfs_and_goes_with_its_pod() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let vol = tmp.path().join("pod/_volumes/secret");
        assert!(
            mount_tmpfs(&vol, Some(1 << 20)).expect("mount"),
            "cannot mount tmpfs"
        );
        assert!(is_own_tmpfs(&vol));
        // Idempotent: a second set-up does not stack another mount.
        assert!(mount_tmpfs(&vol, Some(1 << 20)).expect("mount"));
        assert_eq!(mounts_under(tmp.path()).len(), 1);
        std::fs::write(vol.join("token"), b"t").expect("write");
        // Given as a path with `..` in it, as a data dir may be.
        unmount_all(&tmp.path().join("pod/_volumes/../../pod"));
        assert!(mounts_under(tmp.path()).is_empty());
        // The token was only in memory.
        assert!(!vol.join("token").exists());
    }

    /// Needs the right to mount, as the test suite has (it runs as root).
    #[test]
    fn a_memory_volume_is_resized_and_its_content_counted_for_its_pod() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pod = tmp.path().join("pod");
        let vol = pod.join("_volumes/cache");
        std::fs::create_dir_all(pod.join("main")).expect("mkdir");
        std::fs::write(pod.join("main/0.log"), vec![0u8; 300_000]).expect("write");
        assert!(mount_tmpfs(&vol, None).expect("mount"));
        // Mounted by an earlier start, unsized: a set-up gives it its size.
        assert!(mount_tmpfs(&vol, Some(1 << 20)).expect("mount"));
        let size = rustix::fs::statvfs(&vol).map(|s| s.f_blocks * s.f_frsize);
        assert_eq!(size.ok(), Some(1 << 20));
        std::fs::write(vol.join("f"), vec![1u8; 200_000]).expect("write");
        // Its content is the pod's memory, the log on disk is not.
        let used = pod_usage(&pod);
        assert!((200_000..300_000).contains(&used), "{used}");
        // And not the pod's disk.
        assert_eq!(super::super::usage::disk_usage(&pod), 300_000);
        unmount_all(&pod);
        assert_eq!(pod_usage(&pod), 0);
    }
}
