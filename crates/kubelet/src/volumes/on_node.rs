//! What setting up a volume does on the node (the kubelet's checks of node paths, the
//! tmpfs of a memory-backed volume, its directory, the atomic write of its files), each
//! volume's part in one call on a blocking thread, away from the pods' tasks.

use std::path::Path;

use super::host::host_path;
use super::{atomic, memory};
use crate::blocking;

/// A tmpfs for a memory-backed volume.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tmpfs {
    /// Its size in bytes; `None`: the kernel's default.
    pub(super) size: Option<u64>,
}

/// What setting up one volume asks of the node before any content is written, done in
/// one call on a blocking thread.
#[derive(Debug)]
pub(super) enum NodeWork {
    /// A hostPath: the kubelet's `type` check (creating what the `...OrCreate` types
    /// ask for).
    HostPath(String),
    /// A claim's volume path: it must be a directory of this node.
    ClaimDir,
    /// The volume's own directory: mounted as `tmpfs` when memory-backed, then created
    /// when `create` (an emptyDir; the atomic writer makes a projected volume's).
    OwnDir { tmpfs: Option<Tmpfs>, create: bool },
}

impl NodeWork {
    pub(super) fn is_nothing(&self) -> bool {
        matches!(
            self,
            Self::OwnDir {
                tmpfs: None,
                create: false
            }
        )
    }

    /// Does the work for the volume at `path`; the error is the `FailedMount` message.
    pub(super) fn apply(&self, path: &Path) -> Result<(), String> {
        let cannot_create = |e: std::io::Error| format!("cannot create {}: {e}", path.display());
        match self {
            Self::HostPath(type_) => host_path(path, type_),
            Self::ClaimDir if path.is_dir() => Ok(()),
            Self::ClaimDir => Err(format!(
                "the claim's volume path {} is not a directory on this node",
                path.display()
            )),
            Self::OwnDir { tmpfs, create } => {
                if let Some(Tmpfs { size }) = tmpfs {
                    memory::mount_tmpfs(path, *size).map_err(cannot_create)?;
                }
                if *create {
                    std::fs::create_dir_all(path).map_err(cannot_create)?;
                }
                Ok(())
            }
        }
    }
}

/// [`atomic::write`] of a volume's `files`, the whole write in one call on a blocking
/// thread.
pub(super) async fn write_files(dir: &Path, files: atomic::Files) -> std::io::Result<bool> {
    let dir = dir.to_owned();
    blocking::run(move || atomic::write(&dir, &files)).await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_work_fails_with_the_kubelet_messages() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let file = tmp.path().join("f");
        std::fs::write(&file, "x")?;
        assert_eq!(NodeWork::ClaimDir.apply(tmp.path()), Ok(()));
        assert_eq!(
            NodeWork::ClaimDir.apply(&file),
            Err(format!(
                "the claim's volume path {} is not a directory on this node",
                file.display()
            ))
        );
        assert_eq!(
            NodeWork::HostPath("Directory".to_owned()).apply(&file),
            Err(format!(
                "hostPath type check failed: {} is not a directory",
                file.display()
            ))
        );
        let scratch = tmp.path().join("vol/scratch");
        let empty_dir = NodeWork::OwnDir {
            tmpfs: None,
            create: true,
        };
        assert!(!empty_dir.is_nothing());
        assert_eq!(empty_dir.apply(&scratch), Ok(()));
        assert!(scratch.is_dir());
        let under_file = file.join("scratch");
        assert!(
            empty_dir
                .apply(&under_file)
                .is_err_and(|e| e.starts_with(&format!("cannot create {}: ", under_file.display())))
        );
        let config_map = NodeWork::OwnDir {
            tmpfs: None,
            create: false,
        };
        assert!(config_map.is_nothing());
        Ok(())
    }

    #[tokio::test]
    async fn files_are_written_off_the_async_thread() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let files = atomic::Files::from([(
            "key".to_owned(),
            atomic::File {
                data: b"value".to_vec(),
                mode: 0o644,
            },
        )]);
        let dir = tmp.path().join("vol");
        assert!(write_files(&dir, files.clone()).await?);
        assert!(!write_files(&dir, files).await?);
        assert_eq!(std::fs::read_to_string(dir.join("key"))?, "value");
        Ok(())
    }
}
