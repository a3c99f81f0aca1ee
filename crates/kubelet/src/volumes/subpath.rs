//! `subPath` resolution that a module cannot redirect out of its volume.
//!
//! A module can write symlinks into a writable volume (wasmtime refuses absolute targets
//! but not `../../..`), and another container sharing the volume can swap a directory for
//! such a link at any time. So the path is opened one component at a time from the
//! volume's root, relative to the directory opened last and never following a symlink;
//! missing directories are created the same way. The result is an open descriptor, and
//! the runtime preopens `/proc/self/fd/<n>`: the directory that was checked, whatever
//! the path names by then (the kubelet's answer to CVE-2017-1002101 and CVE-2021-25741).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags};

/// A file or directory inside a volume, held open.
#[derive(Debug)]
pub struct Opened {
    fd: OwnedFd,
    /// Whether it is a directory (else a regular file).
    pub is_dir: bool,
}

impl Opened {
    /// A path naming exactly the opened object while `self` lives.
    #[must_use]
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// The descriptor, to keep open until the runtime has opened [`Opened::proc_path`].
    #[must_use]
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

fn refused(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, why)
}

/// Opens `sub` (relative, without `..`) inside the directory `root`, creating missing
/// directories, never following a symlink on the way.
///
/// # Errors
/// A component is a symlink or not a directory, or the file system refuses.
pub fn open_beneath(root: &Path, sub: &str) -> io::Result<Opened> {
    let path_flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut current: OwnedFd = rustix::fs::openat(
        CWD,
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut is_dir = true;
    let components: Vec<_> = Path::new(sub).components().collect();
    for (i, component) in components.iter().enumerate() {
        let name = match component {
            Component::Normal(name) => *name,
            Component::CurDir => continue,
            _ => return Err(refused(format!("{sub:?} is not a plain relative path"))),
        };
        if !is_dir {
            return Err(refused(format!("{sub:?} goes through a file")));
        }
        let next = match rustix::fs::openat(&current, name, path_flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => {
                // Missing: a directory, made where the checked parent is.
                match rustix::fs::mkdirat(&current, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                rustix::fs::openat(&current, name, path_flags, Mode::empty())?
            }
            Err(e) => return Err(e.into()),
        };
        let stat = rustix::fs::fstat(&next)?;
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::Directory => is_dir = true,
            FileType::RegularFile if i + 1 == components.len() => is_dir = false,
            FileType::Symlink => {
                return Err(refused(format!(
                    "{} in {sub:?} is a symlink",
                    Path::new(name).display()
                )));
            }
            _ => {
                return Err(refused(format!(
                    "{} in {sub:?} is neither a directory nor a regular file",
                    Path::new(name).display()
                )));
            }
        }
        current = next;
    }
    Ok(Opened {
        fd: current,
        is_dir,
    })
}

/// Opens the volume's own path (the node's path of a hostPath or claim, or the pod's
/// volume directory), which the pod does not choose.
///
/// # Errors
/// When it cannot be opened, or is neither a directory nor a regular file.
pub fn open_whole(path: &Path) -> io::Result<Opened> {
    let fd = rustix::fs::openat(CWD, path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())?;
    let stat = rustix::fs::fstat(&fd)?;
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::Directory => Ok(Opened { fd, is_dir: true }),
        FileType::RegularFile => Ok(Opened { fd, is_dir: false }),
        _ => Err(refused(format!(
            "{} is neither a directory nor a regular file",
            path.display()
        ))),
    }
}

/// Hard-links the regular file `file` as `link` (the checked file itself, through its
/// descriptor); copies it when the two are on different file systems. Returns whether
/// it was copied (a copy cannot carry writes back, so it is mounted read-only).
///
/// # Errors
/// When neither works.
pub fn link_or_copy(file: &Opened, link: &Path) -> io::Result<bool> {
    let source = file.proc_path();
    match rustix::fs::linkat(CWD, &source, CWD, link, AtFlags::SYMLINK_FOLLOW) {
        Ok(()) => Ok(false),
        Err(_) => {
            // Opening the magic link reopens the same file, not whatever the path names.
            let mut from = std::fs::File::open(&source)?;
            let mut to = std::fs::File::create(link)?;
            io::copy(&mut from, &mut to)?;
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_creates_and_refuses_symlinks() -> io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("vol");
        std::fs::create_dir(&root)?;
        let made = open_beneath(&root, "a/b")?;
        assert!(made.is_dir && root.join("a/b").is_dir());
        assert_eq!(
            std::fs::canonicalize(made.proc_path())?,
            root.join("a/b").canonicalize()?
        );
        std::fs::write(root.join("a/f"), "x")?;
        assert!(!open_beneath(&root, "a/f")?.is_dir);
        assert!(open_beneath(&root, "a/f/deeper").is_err());
        // A link planted in the volume, even one pointing inside it, is not followed, and
        // nothing is created where it points.
        std::os::unix::fs::symlink("../..", root.join("up"))?;
        std::os::unix::fs::symlink("a", root.join("side"))?;
        assert!(open_beneath(&root, "up/escaped").is_err());
        assert!(!tmp.path().join("escaped").exists());
        assert!(open_beneath(&root, "side/b").is_err());
        assert!(open_beneath(&root, "../x").is_err());
        Ok(())
    }

    #[test]
    fn links_the_checked_file() -> io::Result<()> {
        let tmp = tempfile::tempdir()?;
        std::fs::write(tmp.path().join("f"), "one")?;
        let opened = open_beneath(tmp.path(), "f")?;
        // Swapping the path after the check changes nothing: the link is to the file
        // that was opened.
        std::fs::rename(tmp.path().join("f"), tmp.path().join("g"))?;
        std::fs::write(tmp.path().join("f"), "other")?;
        let link = tmp.path().join("link");
        assert!(!link_or_copy(&opened, &link)?);
        assert_eq!(std::fs::read_to_string(&link)?, "one");
        Ok(())
    }
}
