//! Memory-backed volumes: as the kubelet does, `secret` and `projected` volumes (they hold
//! secrets and service-account tokens) and `emptyDir` volumes with `medium: Memory` are a
//! tmpfs of their own, so their content never reaches the node's disk. Where the node
//! cannot mount (no `CAP_SYS_ADMIN`), they stay directories on disk, with one warning.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::mount::{MountFlags, UnmountFlags};

/// `TMPFS_MAGIC` of `statfs(2)`.
const TMPFS_MAGIC: i64 = 0x0102_1994;

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
/// default, half the memory), unless it is one already. Returns whether it is one.
///
/// # Errors
/// When `dir` cannot be created; a refused mount is not an error (see the module).
pub fn mount_tmpfs(dir: &Path, size: Option<u64>) -> std::io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    if is_own_tmpfs(dir) {
        return Ok(true);
    }
    let mut options = "mode=0750".to_owned();
    if let Some(size) = size {
        options.push_str(&format!(",size={}", size.max(4096)));
    }
    let options = std::ffi::CString::new(options).map_err(std::io::Error::other)?;
    match rustix::mount::mount(
        "tmpfs",
        dir,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        options.as_c_str(),
    ) {
        Ok(()) => Ok(true),
        Err(e) => {
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "cannot mount tmpfs: secrets, tokens and medium: Memory volumes stay on disk");
            }
            Ok(false)
        }
    }
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
}
