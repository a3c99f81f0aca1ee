//! Disk usage of a directory a workload can write, measured without ever following a
//! symlink it planted, at any depth.
//!
//! Each directory is opened by descriptor relative to its parent with `O_NOFOLLOW`, so a
//! directory swapped for a symlink between the listing and the descent is refused
//! instead of leading the walk to the rest of the node. The walk is a loop, not a
//! recursion: it keeps the descriptors of the top [`KEPT_DESCRIPTORS`] levels, goes back
//! up from deeper ones by `..` (checked against the directory it came down from), and
//! resumes each directory's listing at the position it had reached; it holds 32 bytes
//! per level of depth. It counts files at every depth (it stopped at 1024 levels, so a
//! pod could hide any amount below them from its `sizeLimit`), and stays on the
//! filesystem it started on (a memory-backed volume mounted below is memory, not disk).

use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, RawDir, SeekFrom};

use super::walk::{DIR_FLAGS, ENTRIES_BUFFER, Identity, open_child, parent};

/// Levels from the top whose descriptors the walk keeps; deeper ones are reopened by `..`.
pub const KEPT_DESCRIPTORS: usize = 16;

/// A directory above the one being read.
struct Level {
    /// What `..` must be when the walk comes back up to it.
    id: Identity,
    /// Its descriptor, for the top [`KEPT_DESCRIPTORS`] levels.
    fd: Option<OwnedFd>,
    /// Where its listing resumes: after the subdirectory being walked.
    cookie: u64,
}

/// What reading a directory found next.
enum Next {
    /// A subdirectory (open), and where the listing resumes after it.
    Down(OwnedFd, u64),
    /// The end of the directory.
    End,
}

/// Reads the directory `fd` from the position `cookie`: adds the size of its regular
/// files to `total` until it reaches a subdirectory of the filesystem `filesystem`.
fn read_on(
    fd: &OwnedFd,
    cookie: u64,
    filesystem: rustix::fs::Dev,
    total: &mut u64,
    buffer: &mut [MaybeUninit<u8>],
) -> Next {
    if rustix::fs::seek(fd, SeekFrom::Start(cookie)).is_err() {
        return Next::End;
    }
    let mut entries = RawDir::new(fd, buffer);
    while let Some(Ok(entry)) = entries.next() {
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let Ok(stat) = rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => *total += u64::try_from(stat.st_size).unwrap_or(0),
            FileType::Directory if stat.st_dev == filesystem => {
                if let Ok(child) = open_child(fd, name) {
                    return Next::Down(child, entry.next_entry_cookie());
                }
            }
            _ => {}
        }
    }
    Next::End
}

/// Bytes of regular files under `dir` (apparent sizes), at every depth, on `dir`'s
/// filesystem. A `dir` that is itself a symlink, or cannot be opened, counts 0.
#[must_use]
pub fn disk_usage(dir: &Path) -> u64 {
    let Ok(root) = rustix::fs::open(dir, DIR_FLAGS, Mode::empty()) else {
        return 0;
    };
    let Ok(root_id) = Identity::of(&root) else {
        return 0;
    };
    let mut buffer = vec![MaybeUninit::<u8>::uninit(); ENTRIES_BUFFER];
    let mut total = 0;
    let mut above: Vec<Level> = Vec::new();
    let (mut current, mut id, mut cookie) = (root, root_id, 0);
    loop {
        match read_on(&current, cookie, root_id.dev, &mut total, &mut buffer) {
            Next::Down(child, resume) => {
                let Ok(child_id) = Identity::of(&child) else {
                    cookie = resume;
                    continue;
                };
                let keep = above.len() < KEPT_DESCRIPTORS;
                above.push(Level {
                    id,
                    fd: keep.then_some(current),
                    cookie: resume,
                });
                (current, id, cookie) = (child, child_id, 0);
            }
            Next::End => {
                let Some(level) = above.pop() else {
                    return total;
                };
                let up = match level.fd {
                    Some(fd) => Ok(fd),
                    None => parent(&current, level.id),
                };
                match up {
                    Ok(fd) => (current, id, cookie) = (fd, level.id, level.cookie),
                    Err(_) => {
                        // Moved meanwhile: resume at the deepest level still held (the
                        // root's is always held), past the subtree it was walking.
                        while above.last().is_some_and(|l| l.fd.is_none()) {
                            above.pop();
                        }
                        let Some(Level {
                            id: held,
                            fd: Some(fd),
                            cookie: resume,
                        }) = above.pop()
                        else {
                            return total;
                        };
                        (current, id, cookie) = (fd, held, resume);
                    }
                }
            }
        }
    }
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
    fn files_below_depth_1024_count() {
        use super::super::walk::testing::{nest, write_at};
        let tmp = tempfile::tempdir().expect("tempdir");
        let vol = tmp.path().join("vol");
        std::fs::create_dir(&vol).expect("mkdir");
        std::fs::write(vol.join("top"), b"12345").expect("write");
        // Siblings after the deep chain: the listings resume where they were.
        std::fs::create_dir(vol.join("a")).expect("mkdir");
        std::fs::create_dir(vol.join("b")).expect("mkdir");
        let middle = nest(&vol.join("a"), 600);
        write_at(&middle, c"m", 7);
        std::fs::create_dir(vol.join("e")).expect("mkdir");
        std::fs::write(vol.join("e/after"), b"123").expect("write");
        let bottom = nest(&vol.join("b"), 2_400);
        write_at(&bottom, c"deep", 1 << 20);
        let mut second = super::super::walk::open_child(&bottom, c".").expect("open");
        for _ in 0..3 {
            second = super::super::walk::open_child(&second, c"..").expect("open");
        }
        write_at(&second, c"beside", 11);
        drop((middle, bottom, second));
        let vol2 = vol.clone();
        // A small stack: a walk that recursed per level would overflow it.
        let counted = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || disk_usage(&vol2))
            .expect("spawn")
            .join()
            .expect("join");
        assert_eq!(counted, 5 + 7 + 3 + (1 << 20) + 11);
        super::super::remove::remove_tree(&vol).expect("remove");
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
