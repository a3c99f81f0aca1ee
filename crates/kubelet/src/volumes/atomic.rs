//! The kubelet's atomic writer for configMap, secret, downwardAPI and projected volumes:
//! a reader sees either the whole old content or the whole new one, never a mix.
//!
//! Layout inside the volume directory:
//! ```text
//! ..2026_11_27_14_30_05.123456789/   the current files
//! ..data -> ..2026_11_27_14_30_05.123456789
//! key -> ..data/key                  one symlink per top-level name
//! ```
//! An update writes a new timestamped directory, points `..data` at it with one
//! `rename` (atomic), fixes the top-level links and removes the old directory. All links
//! are relative and stay inside the volume, so WASI's sandboxed path resolution follows
//! them.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path};

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// One file of a volume: its relative path (may contain `/`), bytes and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Contents.
    pub data: Vec<u8>,
    /// Permission bits (`defaultMode` or the item's `mode`).
    pub mode: u32,
}

/// Files by relative path.
pub type Files = BTreeMap<String, File>;

/// Whether `path` is a relative path with no `..`, no empty and no leading-`..` parts,
/// as the API server validates item paths.
#[must_use]
pub fn valid_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with("..")
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

fn read_current(dir: &Path) -> io::Result<Option<Files>> {
    let data = dir.join(DATA);
    if std::fs::symlink_metadata(&data).is_err() {
        return Ok(None);
    }
    let mut files = Files::new();
    let mut stack = vec![String::new()];
    while let Some(prefix) = stack.pop() {
        for entry in std::fs::read_dir(data.join(&prefix))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(rel);
            } else {
                files.insert(
                    rel,
                    File {
                        data: std::fs::read(entry.path())?,
                        mode: meta.permissions().mode() & 0o7777,
                    },
                );
            }
        }
    }
    Ok(Some(files))
}

/// Writes `files` under `dir`, each created with its mode (never readable by others
/// for a moment).
fn fill(dir: &Path, files: &Files) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    for (rel, file) in files {
        if !valid_path(rel) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid path {rel:?}"),
            ));
        }
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file.mode)
            .open(&path)?;
        out.write_all(&file.data)?;
        // The umask may have taken bits away: set exactly what was asked.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode))?;
    }
    Ok(())
}

/// Makes `dir` hold exactly `files`; does nothing when it already does. Returns whether
/// it changed the content. A write cut short (the agent killed) is completed by the next
/// one: the links are made to match and whatever the cut write left is removed, even when
/// the content is already in place.
///
/// # Errors
/// When a file cannot be written; the previous content then stays in place.
pub fn write(dir: &Path, files: &Files) -> io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let changed = read_current(dir)?.as_ref() != Some(files);
    if changed {
        swap(dir, files)?;
    }
    reconcile(dir, files)?;
    Ok(changed)
}

/// Writes `files` into a new timestamped directory and points `..data` at it with one
/// `rename`.
fn swap(dir: &Path, files: &Files) -> io::Result<()> {
    let stamp = jiff::Zoned::now()
        .strftime("%Y_%m_%d_%H_%M_%S.%f")
        .to_string();
    let fresh = format!("..{stamp}");
    let fresh_dir = dir.join(&fresh);
    std::fs::create_dir(&fresh_dir)?;
    if let Err(e) = fill(&fresh_dir, files) {
        // Nothing half-written stays behind; the old content is still in place.
        let _ = std::fs::remove_dir_all(&fresh_dir);
        return Err(e);
    }
    let tmp = dir.join(DATA_TMP);
    let _ = std::fs::remove_file(&tmp);
    symlink(&fresh, &tmp)?;
    std::fs::rename(&tmp, dir.join(DATA))
}

/// One link per top-level name of `files` and none other; of the `..` entries only
/// `..data` and the directory it points at.
fn reconcile(dir: &Path, files: &Files) -> io::Result<()> {
    let top: std::collections::BTreeSet<&str> =
        files.keys().filter_map(|k| k.split('/').next()).collect();
    let current = std::fs::read_link(dir.join(DATA))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let keep = if name.starts_with("..") {
            name == DATA || Path::new(&name) == current
        } else {
            top.contains(name.as_str())
        };
        if keep {
            continue;
        }
        // Never followed: a link is removed as a link.
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    for name in top {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA).join(name), &link)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(pairs: &[(&str, &str)]) -> Files {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    (*k).to_owned(),
                    File {
                        data: v.as_bytes().to_vec(),
                        mode: 0o644,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn writes_links_and_replaces_content_whole() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let v = dir.path().join("vol");
        assert!(write(&v, &files(&[("a", "1"), ("sub/b", "2")]))?);
        assert_eq!(std::fs::read_to_string(v.join("a"))?, "1");
        assert_eq!(std::fs::read_to_string(v.join("sub/b"))?, "2");
        assert!(std::fs::symlink_metadata(v.join("a"))?.is_symlink());
        // Unchanged content writes nothing.
        assert!(!write(&v, &files(&[("a", "1"), ("sub/b", "2")]))?);
        assert!(write(&v, &files(&[("a", "3")]))?);
        assert_eq!(std::fs::read_to_string(v.join("a"))?, "3");
        assert!(std::fs::symlink_metadata(v.join("sub")).is_err());
        // One timestamped directory is left, the one `..data` points at.
        let stamped: Vec<_> = std::fs::read_dir(&v)?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("..") && n != DATA)
            .collect();
        assert_eq!(stamped.len(), 1, "{stamped:?}");
        assert_eq!(std::fs::read_link(v.join(DATA))?, Path::new(&stamped[0]));
        Ok(())
    }

    /// The names beside `..data` in `v`: timestamped directories and stray links.
    fn dotted(v: &Path) -> io::Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(v)?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("..") && n != DATA)
            .collect();
        names.sort();
        Ok(names)
    }

    #[test]
    fn a_write_cut_short_by_a_kill_is_completed_by_the_next_one() -> io::Result<()> {
        // The agent killed (-9) at each step of an update from {a} to {a, b}, then the
        // same update done again at the restart (the volume set up anew): each key reads
        // its new content through its link, and nothing of the cut write stays behind.
        let old = files(&[("a", "1")]);
        let new = files(&[("a", "2"), ("b", "3")]);
        type Crash = fn(&Path) -> io::Result<()>;
        let crashes: [(&str, Crash); 3] = [
            ("while filling the new directory", |v| {
                std::fs::create_dir(v.join("..2026_01_01_00_00_00.000000001"))?;
                std::fs::write(v.join("..2026_01_01_00_00_00.000000001/a"), "2")
            }),
            ("after the temporary link, before the swap", |v| {
                symlink("..2026_01_01_00_00_00.000000001", v.join(DATA_TMP))
            }),
            ("after the swap, before the links and the removal", |v| {
                let fresh = "..2026_01_01_00_00_00.000000002";
                std::fs::create_dir(v.join(fresh))?;
                std::fs::write(v.join(fresh).join("a"), "2")?;
                std::fs::write(v.join(fresh).join("b"), "3")?;
                symlink(fresh, v.join(DATA_TMP))?;
                std::fs::rename(v.join(DATA_TMP), v.join(DATA))
            }),
        ];
        for (when, crash) in crashes {
            let dir = tempfile::tempdir()?;
            let v = dir.path().join("vol");
            write(&v, &old)?;
            crash(&v)?;
            write(&v, &new)?;
            assert_eq!(std::fs::read_to_string(v.join("a"))?, "2", "{when}");
            assert_eq!(std::fs::read_to_string(v.join("b"))?, "3", "{when}");
            let left = dotted(&v)?;
            assert_eq!(left.len(), 1, "{when}: {left:?}");
            assert_eq!(
                std::fs::read_link(v.join(DATA))?,
                Path::new(&left[0]),
                "{when}"
            );
        }
        Ok(())
    }

    #[test]
    fn item_paths_must_stay_inside() {
        assert!(valid_path("a/b.txt"));
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "..x"] {
            assert!(!valid_path(bad), "{bad}");
        }
    }
}
