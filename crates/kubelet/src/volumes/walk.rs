//! What the walks over a tree a workload wrote share ([`super::usage`], [`super::remove`]):
//! directories opened relative to their parent without following a symlink, and the way
//! back up by `..`, checked against the identity seen on the way down, so that a walk
//! holds a bounded number of descriptors and no recursion at any depth.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{Mode, OFlags};

/// How every directory of a walk is opened: never through a symlink.
pub(super) const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Bytes of the buffer directory entries are read into.
pub(super) const ENTRIES_BUFFER: usize = 8192;

/// A directory's identity: its filesystem and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Identity {
    /// The filesystem (`st_dev`).
    pub dev: rustix::fs::Dev,
    /// The inode (`st_ino`).
    pub ino: u64,
}

impl Identity {
    /// The identity of the open file `fd`.
    ///
    /// # Errors
    /// When `fstat` fails.
    pub fn of(fd: impl AsFd) -> io::Result<Self> {
        let stat = rustix::fs::fstat(fd)?;
        Ok(Self {
            dev: stat.st_dev,
            ino: stat.st_ino,
        })
    }
}

/// Opens the directory `name` of the directory `dir`, without following a symlink.
///
/// # Errors
/// As `openat(2)`: `ELOOP` or `ENOTDIR` when `name` is not a directory.
pub(super) fn open_child(dir: impl AsFd, name: &std::ffi::CStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty())?)
}

/// Opens the parent of the directory `dir` by `..` and checks that it is the directory
/// `expected` the walk came down from (a directory moved meanwhile would lead elsewhere).
///
/// # Errors
/// When `..` cannot be opened, or is not `expected`.
pub(super) fn parent(dir: impl AsFd, expected: Identity) -> io::Result<OwnedFd> {
    let up = rustix::fs::openat(dir, c"..", DIR_FLAGS, Mode::empty())?;
    if Identity::of(&up)? != expected {
        return Err(io::Error::other(
            "a directory was moved during the walk: its parent is not the directory it was reached from",
        ));
    }
    Ok(up)
}

#[cfg(test)]
pub(super) mod testing {
    //! Deep trees for the tests, built descriptor by descriptor as a workload does.

    use std::os::fd::OwnedFd;
    use std::path::Path;

    use rustix::fs::{Mode, OFlags};

    /// Nests `depth` directories `d` under `root` (opened relative to each other, so no
    /// path grows) and returns the deepest one, open.
    pub fn nest(root: &Path, depth: usize) -> OwnedFd {
        let mut fd = rustix::fs::open(root, super::DIR_FLAGS, Mode::empty()).expect("open root");
        for _ in 0..depth {
            rustix::fs::mkdirat(&fd, c"d", Mode::from_raw_mode(0o755)).expect("mkdirat");
            fd = super::open_child(&fd, c"d").expect("openat");
        }
        fd
    }

    /// Writes `bytes` bytes to the file `name` of the directory `dir`.
    pub fn write_at(dir: &OwnedFd, name: &std::ffi::CStr, bytes: usize) {
        let file = rustix::fs::openat(
            dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .expect("create");
        let mut written = 0;
        let chunk = vec![7u8; bytes.min(65536)];
        while written < bytes {
            let n = chunk.len().min(bytes - written);
            written += rustix::io::write(&file, &chunk[..n]).expect("write");
        }
    }
}
