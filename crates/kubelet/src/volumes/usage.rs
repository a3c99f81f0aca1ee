//! Disk usage of a directory a workload can write, measured without ever following a
//! symlink it planted.
//!
//! Each directory is opened by descriptor relative to its parent with `O_NOFOLLOW`, so a
//! directory swapped for a symlink between the listing and the descent is refused
//! instead of leading the walk to the rest of the node.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

/// Deepest directory level counted: the walk holds one descriptor per level.
pub const MAX_DEPTH: usize = 1024;

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// One directory being walked: its descriptor and the subdirectories still to visit.
struct Frame {
    fd: OwnedFd,
    pending: Vec<CString>,
}

/// Reads the entries of `fd`: adds the size of its regular files to `total` and returns
/// the names of its subdirectories.
fn scan(fd: &OwnedFd, total: &mut u64) -> Vec<CString> {
    let mut dirs = Vec::new();
    let Ok(entries) = rustix::fs::Dir::read_from(fd) else {
        return dirs;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let Ok(stat) = rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => *total += u64::try_from(stat.st_size).unwrap_or(0),
            FileType::Directory => dirs.push(name.to_owned()),
            _ => {}
        }
    }
    dirs
}

/// Bytes of regular files under `dir` (apparent sizes), down to [`MAX_DEPTH`] levels. A
/// `dir` that is itself a symlink, or cannot be opened, counts 0.
#[must_use]
pub fn disk_usage(dir: &Path) -> u64 {
    let Ok(root) = rustix::fs::open(dir, DIR_FLAGS, Mode::empty()) else {
        return 0;
    };
    let mut total = 0;
    let pending = scan(&root, &mut total);
    let mut stack = vec![Frame { fd: root, pending }];
    while let Some(frame) = stack.last_mut() {
        let Some(name) = frame.pending.pop() else {
            stack.pop();
            continue;
        };
        if stack.len() >= MAX_DEPTH {
            continue;
        }
        let Some(frame) = stack.last() else { break };
        let Ok(child) = rustix::fs::openat(&frame.fd, &name, DIR_FLAGS, Mode::empty()) else {
            continue;
        };
        let pending = scan(&child, &mut total);
        stack.push(Frame { fd: child, pending });
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_regular_files_at_every_level_and_no_symlink() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        std::fs::write(outside.join("big"), vec![0u8; 10_000]).expect("write");
        let vol = tmp.path().join("vol");
        std::fs::create_dir_all(vol.join("a/b/c")).expect("mkdir");
        std::fs::write(vol.join("top"), b"12345").expect("write");
        std::fs::write(vol.join("a/b/c/deep"), b"123").expect("write");
        std::os::unix::fs::symlink(&outside, vol.join("a/link")).expect("symlink");
        std::os::unix::fs::symlink(outside.join("big"), vol.join("filelink")).expect("symlink");
        assert_eq!(disk_usage(&vol), 8);
        // A volume that is itself a symlink is not followed either.
        let linked = tmp.path().join("linked");
        std::os::unix::fs::symlink(&outside, &linked).expect("symlink");
        assert_eq!(disk_usage(&linked), 0);
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_mid_walk_never_leads_outside() {
        // A workload swaps `vol/d` between a directory and a symlink to a large
        // directory of the node as fast as it can while the node measures the volume.
        // A walk that checks the type and then opens by path follows the symlink
        // whenever the swap lands between the two; this walk never may.
        let tmp = tempfile::tempdir().expect("tempdir");
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        for i in 0..50 {
            std::fs::write(outside.join(format!("f{i}")), vec![0u8; 100_000]).expect("write");
        }
        let vol = tmp.path().join("vol");
        std::fs::create_dir(&vol).expect("mkdir");
        for i in 0..50 {
            std::fs::create_dir(vol.join(format!("pad{i}"))).expect("mkdir");
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (vol, outside, stop) = (vol.clone(), outside.clone(), stop.clone());
            std::thread::spawn(move || {
                let (d, tmp_dir, tmp_link) = (vol.join("d"), vol.join(".d"), vol.join(".l"));
                let _ = std::fs::create_dir(&d);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = std::os::unix::fs::symlink(&outside, &tmp_link);
                    let _ = std::fs::rename(&tmp_link, d.with_extension("x"));
                    let _ = std::fs::rename(&d, &tmp_dir);
                    let _ = std::fs::rename(d.with_extension("x"), &d);
                    let _ = std::fs::remove_file(&d);
                    let _ = std::fs::rename(&tmp_dir, &d);
                }
            })
        };
        let mut worst = 0;
        for _ in 0..300 {
            worst = worst.max(disk_usage(&vol));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().expect("swapper");
        assert_eq!(worst, 0, "the walk counted files outside the volume");
    }
}
