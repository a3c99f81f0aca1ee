//! The cert dir as the kubelet lays it out: each certificate with its key in
//! `kubelet-client-<YYYY-MM-DD-HH-MM-SS>.pem` (or `kubelet-server-...`), mode 0600, and
//! `kubelet-client-current.pem` a symbolic link to the one in use, replaced atomically.
//! Blocking: callers run these on the blocking pool.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{Kind, MAX_PEM_BYTES, Result, io};

/// `<dir>/kubelet-{client,server}-current.pem`.
#[must_use]
pub fn current_path(dir: &Path, kind: Kind) -> PathBuf {
    dir.join(format!("{}-current.pem", kind.file_prefix()))
}

/// Creates `dir` (0700) when absent.
///
/// # Errors
/// When it cannot be created.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(format!("creating {}", dir.display())))
}

/// Writes `pem` (key and chain) as `kubelet-<kind>-<now>.pem`, mode 0600 from the start,
/// then points `kubelet-<kind>-current.pem` at it; returns the current link's path.
///
/// # Errors
/// When a file cannot be written.
pub fn write(dir: &Path, kind: Kind, pem: &str, now: jiff::Timestamp) -> Result<PathBuf> {
    ensure_dir(dir)?;
    let name = format!(
        "{}-{}.pem",
        kind.file_prefix(),
        now.strftime("%Y-%m-%d-%H-%M-%S")
    );
    write_private(&dir.join(&name), pem.as_bytes())?;
    // The link names the file relatively: the directory can move.
    let current = current_path(dir, kind);
    let link = dir.join(format!("{}-current.pem.updating", kind.file_prefix()));
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&name, &link).map_err(io(format!("linking {}", link.display())))?;
    std::fs::rename(&link, &current).map_err(io(format!("replacing {}", current.display())))?;
    Ok(current)
}

/// The content of `kubelet-<kind>-current.pem`; `None` when there is none. At most
/// [`MAX_PEM_BYTES`] are read; a larger file is refused.
///
/// # Errors
/// When it exists but cannot be read, or is too large.
pub fn read_current(dir: &Path, kind: Kind) -> Result<Option<Vec<u8>>> {
    read_bounded(&current_path(dir, kind))
}

/// A PEM file of at most [`MAX_PEM_BYTES`]; `None` when absent.
///
/// # Errors
/// When it cannot be read or is larger.
pub fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(format!("opening {}", path.display()))(e)),
    };
    let mut content = Vec::new();
    file.take(MAX_PEM_BYTES as u64 + 1)
        .read_to_end(&mut content)
        .map_err(io(format!("reading {}", path.display())))?;
    if content.len() > MAX_PEM_BYTES {
        return Err(io(format!("reading {}", path.display()))(
            std::io::Error::other(format!("larger than {MAX_PEM_BYTES} bytes")),
        ));
    }
    Ok(Some(content))
}

/// Writes a small private file (a kubeconfig), 0600, replacing `path` atomically.
///
/// # Errors
/// When it cannot be written.
pub fn write_private(path: &Path, content: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    }
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let _ = std::fs::remove_file(&partial);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(io(format!("creating {}", partial.display())))?;
    out.write_all(content)
        .and_then(|()| out.sync_all())
        .map_err(io(format!("writing {}", partial.display())))?;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("restricting {}", partial.display())))?;
    std::fs::rename(&partial, path).map_err(io(format!("writing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("exists")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn each_certificate_gets_a_dated_file_and_current_follows_the_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = dir.path().join("pki");
        assert_eq!(read_current(&pki, Kind::Client).expect("read"), None);
        let first: jiff::Timestamp = "2026-11-28T08:40:02Z".parse().expect("time");
        let current = write(&pki, Kind::Client, "one", first).expect("written");
        assert_eq!(current, pki.join("kubelet-client-current.pem"));
        let dated = pki.join("kubelet-client-2026-11-28-08-40-02.pem");
        assert_eq!(mode(&dated), 0o600);
        assert_eq!(mode(&pki), 0o700);
        assert_eq!(
            std::fs::read_link(&current).expect("a link"),
            Path::new("kubelet-client-2026-11-28-08-40-02.pem")
        );
        let later: jiff::Timestamp = "2026-11-28T08:43:30Z".parse().expect("time");
        write(&pki, Kind::Client, "two", later).expect("written");
        assert_eq!(
            read_current(&pki, Kind::Client).expect("read"),
            Some(b"two".to_vec())
        );
        assert_eq!(std::fs::read(&dated).expect("kept"), b"one");
        write(&pki, Kind::Serving, "served", later).expect("written");
        assert!(pki.join("kubelet-server-2026-11-28-08-43-30.pem").exists());
        assert_eq!(
            read_current(&pki, Kind::Serving).expect("read"),
            Some(b"served".to_vec())
        );
        let mut names: Vec<_> = std::fs::read_dir(&pki)
            .expect("list")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "kubelet-client-2026-11-28-08-40-02.pem",
                "kubelet-client-2026-11-28-08-43-30.pem",
                "kubelet-client-current.pem",
                "kubelet-server-2026-11-28-08-43-30.pem",
                "kubelet-server-current.pem",
            ],
            "no partial files or links left"
        );
    }

    #[test]
    fn large_files_are_refused_and_private_files_are_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'A'; MAX_PEM_BYTES + 1]).expect("write");
        assert!(read_bounded(&big).is_err());
        let kubeconfig = dir.path().join("sub/kubelet.kubeconfig");
        write_private(&kubeconfig, b"{}").expect("written");
        write_private(&kubeconfig, b"{ }").expect("replaced");
        assert_eq!(mode(&kubeconfig), 0o600);
        assert_eq!(std::fs::read(&kubeconfig).expect("read"), b"{ }");
    }
}
