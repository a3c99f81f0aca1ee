//! Removal of a pod's directory, whatever its workloads wrote into it.
//!
//! `std::fs::remove_dir_all` (and `tokio::fs::remove_dir_all`, which runs it) recurses
//! once per directory level and keeps a descriptor open per level: a module that nests
//! 30 000 directories, descriptor by descriptor so that no path grows, overflowed the
//! stack of the thread removing its pod and aborted the agent, at every start-up after.
//! This removal is a loop: it goes down by descriptor relative to the parent, back up by
//! `..` (checked against the directory it came from), and holds at most three descriptors
//! and 16 bytes per level of depth. As the kubelet's `RemoveAllOneFilesystem`, it never
//! follows a symlink and refuses to cross into another filesystem mounted below.

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, RawDir, SeekFrom};
use rustix::io::Errno;

use super::walk::{DIR_FLAGS, ENTRIES_BUFFER, Identity, open_child, parent};

/// Removes `path` and everything under it; `path` may also be a file or a symlink
/// (removed itself, never followed).
///
/// # Errors
/// `NotFound` when `path` does not exist; any entry that cannot be removed, a filesystem
/// mounted below `path`, or a directory moved during the removal stops it with an error
/// (what could be removed until then is gone).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let root = match rustix::fs::open(path, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOTDIR | Errno::LOOP) => return std::fs::remove_file(path),
        Err(e) => return Err(e.into()),
    };
    let filesystem = Identity::of(&root)?.dev;
    let mut buffer = vec![MaybeUninit::<u8>::uninit(); ENTRIES_BUFFER];
    // The directories above the current one, outermost first.
    let mut above: Vec<Identity> = Vec::new();
    let mut current = root;
    loop {
        match empty_out(&current, &mut buffer)? {
            Some(full) => {
                let child = open_child(&current, &full)?;
                if Identity::of(&child)?.dev != filesystem {
                    return Err(io::Error::other(format!(
                        "refusing to remove {}: another filesystem is mounted below it",
                        path.display()
                    )));
                }
                above.push(Identity::of(&current)?);
                current = child;
            }
            None => {
                let Some(up) = above.pop() else { break };
                // Now empty: the parent's next pass removes it.
                current = parent(&current, up)?;
            }
        }
    }
    drop(current);
    std::fs::remove_dir(path)
}

/// Removes every entry of the directory `dir` that is not a directory, and every empty
/// subdirectory; returns the name of the first subdirectory that is not empty (to be
/// emptied first), `None` when `dir` is empty.
///
/// # Errors
/// The first entry that cannot be removed (other than a subdirectory not empty).
fn empty_out(dir: &OwnedFd, buffer: &mut [MaybeUninit<u8>]) -> io::Result<Option<CString>> {
    // From the start: what an earlier pass removed is gone, what it left is not.
    rustix::fs::seek(dir, SeekFrom::Start(0))?;
    let mut entries = RawDir::new(dir, buffer);
    while let Some(entry) = entries.next() {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        // The type only orders the attempts: `unlink` of a directory fails with EISDIR.
        let as_dir = entry.file_type() == FileType::Directory;
        if !as_dir {
            match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
                Ok(()) => continue,
                Err(Errno::ISDIR | Errno::PERM) => {}
                Err(e) => return Err(e.into()),
            }
        }
        match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
            Ok(()) => {}
            Err(Errno::NOTEMPTY | Errno::EXIST) => return Ok(Some(name.to_owned())),
            Err(Errno::NOTDIR) if as_dir => {
                // Swapped for a file since it was listed.
                rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::super::walk::testing::{nest, write_at};
    use super::*;

    /// Runs `work` on a thread with a 256 KiB stack: a removal that recursed per level
    /// would overflow it (and abort the test run).
    fn on_small_stack<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(work)
            .expect("spawn")
            .join()
            .expect("join")
    }

    #[test]
    fn a_tree_30000_levels_deep_is_removed_on_a_small_stack() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pod = tmp.path().join("pod");
        std::fs::create_dir(&pod).expect("mkdir");
        std::fs::write(pod.join("top"), b"x").expect("write");
        std::fs::create_dir_all(pod.join("wide/a/b")).expect("mkdir");
        for i in 0..100 {
            std::fs::write(pod.join(format!("wide/a/f{i}")), b"x").expect("write");
            std::fs::create_dir(pod.join(format!("wide/e{i}"))).expect("mkdir");
        }
        std::os::unix::fs::symlink(tmp.path(), pod.join("wide/a/b/up")).expect("symlink");
        let bottom = nest(&pod, 30_000);
        write_at(&bottom, c"f", 10);
        drop(bottom);
        let dir = pod.clone();
        on_small_stack(move || remove_tree(&dir)).expect("remove");
        assert!(!pod.exists());
        // The symlink was removed, not followed.
        assert!(tmp.path().exists());
        assert_eq!(
            remove_tree(&pod).map_err(|e| e.kind()),
            Err(io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn a_symlink_given_is_removed_not_followed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let target = tmp.path().join("target");
        std::fs::create_dir(&target).expect("mkdir");
        std::fs::write(target.join("keep"), b"x").expect("write");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        remove_tree(&link).expect("remove");
        assert!(link.symlink_metadata().is_err());
        assert!(target.join("keep").exists());
    }

    /// Needs the right to mount, as the test suite has (it runs as root).
    #[test]
    fn a_filesystem_mounted_below_is_not_crossed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pod = tmp.path().join("pod");
        let mounted = pod.join("_volumes/memory");
        assert!(super::super::memory::mount_tmpfs(&mounted, Some(1 << 20)).expect("mount"));
        std::fs::write(mounted.join("kept"), b"x").expect("write");
        let refused = remove_tree(&pod);
        assert!(refused.is_err(), "{refused:?}");
        assert!(mounted.join("kept").exists());
        super::super::memory::unmount_all(&pod);
        remove_tree(&pod).expect("remove");
        assert!(!pod.exists());
    }
}
