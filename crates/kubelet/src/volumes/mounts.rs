//! A container's preopens: one per `volumeMount`, its `subPath` or `subPathExpr`
//! resolved beneath the volume without following a link out of it, a single file given a
//! directory of its own.

use std::path::{Component, Path};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Container;

use super::{FILES_DIR, Volumes, subpath};
use crate::blocking;
use crate::runtime::Mount;

/// Why a container's volumes cannot be mounted (`CreateContainerConfigError`); each
/// message is the one the kubelet gives.
#[derive(Debug, thiserror::Error)]
pub enum MountsError {
    /// A `subPath` or `subPathExpr` that cannot be used.
    #[error(
        "failed to prepare subPath for volumeMount {volume:?} of container {container:?}: {why}"
    )]
    SubPath {
        /// The volume mount's name.
        volume: String,
        /// The container's name.
        container: String,
        /// What is wrong with it.
        why: String,
    },
    /// A mount of a volume the pod does not have.
    #[error("cannot find volume {volume:?} to mount into container {container:?}")]
    NoVolume {
        /// The volume mount's name.
        volume: String,
        /// The container's name.
        container: String,
    },
    /// The volume's directory cannot be opened.
    #[error("cannot mount volume {volume:?} into container {container:?}: {source}")]
    Open {
        /// The volume mount's name.
        volume: String,
        /// The container's name.
        container: String,
        /// The error opening it.
        source: std::io::Error,
    },
    /// The node agent is stopping.
    #[error("{0}")]
    Stopped(String),
}

/// The variables `expr` references (`$(NAME)`, not the escaped `$$(NAME)`) that `env`
/// does not set or sets empty, sorted, each once.
pub(super) fn missing_references(expr: &str, env: &[(String, String)]) -> Vec<String> {
    let mut missing = std::collections::BTreeSet::new();
    crate::pods::spec::pieces(expr, |piece| {
        if let crate::pods::spec::Piece::Var(name) = piece
            && !env.iter().any(|(n, v)| n == name && !v.is_empty())
        {
            missing.insert(name.to_owned());
        }
    });
    missing.into_iter().collect()
}

/// Whether `path` is relative and has no `..`: the kubelet's subPath rule.
pub(super) fn plain_relative(path: &str) -> bool {
    Path::new(path)
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

impl Volumes {
    /// The preopens of `container`: one per `volumeMount`, `subPath` and `subPathExpr`
    /// (expanded with `env`) resolved inside the volume.
    ///
    /// # Errors
    /// The kubelet's message for a bad subPath (`CreateContainerConfigError`).
    pub async fn mounts(
        self: &Arc<Self>,
        container: &Container,
        env: &[(String, String)],
    ) -> Result<Vec<Mount>, MountsError> {
        // Opening subPaths and linking (or copying) single files block.
        let (volumes, container, env) = (self.clone(), container.clone(), env.to_vec());
        blocking::run(move || volumes.open_mounts(&container, &env))
            .await
            .map_err(|e| MountsError::Stopped(e.to_string()))?
    }

    /// [`Volumes::mounts`], on the calling thread.
    fn open_mounts(
        &self,
        container: &Container,
        env: &[(String, String)],
    ) -> Result<Vec<Mount>, MountsError> {
        let mut mounts = Vec::new();
        for (i, m) in container.volume_mounts.iter().flatten().enumerate() {
            let bad = |why: String| MountsError::SubPath {
                volume: m.name.clone(),
                container: container.name.clone(),
                why,
            };
            let volume = self
                .volumes
                .get(&m.name)
                .ok_or_else(|| MountsError::NoVolume {
                    volume: m.name.clone(),
                    container: container.name.clone(),
                })?;
            let read_only = volume.read_only || m.read_only.unwrap_or(false);
            let sub = match (&m.sub_path, &m.sub_path_expr) {
                (Some(s), _) if !s.is_empty() => Some(s.clone()),
                (_, Some(e)) if !e.is_empty() => {
                    // The kubelet refuses a reference to a variable unset or empty.
                    let missing = missing_references(e, env);
                    if !missing.is_empty() {
                        return Err(bad(format!("missing value for {}", missing.join(", "))));
                    }
                    Some(crate::pods::spec::expand(e, env))
                }
                _ => None,
            };
            let opened = match sub {
                Some(sub) => {
                    if !plain_relative(&sub) {
                        return Err(bad(format!(
                            "subPath {sub:?} must be a relative path without '..'"
                        )));
                    }
                    subpath::open_beneath(&volume.path, &sub).map_err(|e| bad(e.to_string()))?
                }
                None => subpath::open_whole(&volume.path).map_err(|source| MountsError::Open {
                    volume: m.name.clone(),
                    container: container.name.clone(),
                    source,
                })?,
            };
            if opened.is_dir {
                mounts.push(Mount {
                    dir: std::sync::Arc::new(opened.into_fd()),
                    container_path: m.mount_path.clone(),
                    read_only,
                });
                continue;
            }
            // A single file: a directory of its own holding just that file.
            let guest = Path::new(&m.mount_path);
            let (Some(parent), Some(file_name)) = (guest.parent(), guest.file_name()) else {
                return Err(bad(format!("cannot mount a file at {:?}", m.mount_path)));
            };
            let dir = self
                .pod_dir
                .join(FILES_DIR)
                .join(&container.name)
                .join(i.to_string());
            // The directory was writable: removed by the walk no depth can overflow.
            let _ = super::remove::remove_tree(&dir);
            std::fs::create_dir_all(&dir).map_err(|e| bad(e.to_string()))?;
            let copied = subpath::link_or_copy(&opened, &dir.join(file_name))
                .map_err(|e| bad(e.to_string()))?;
            // A copy cannot carry writes back: it is read-only.
            let guest = parent.to_string_lossy().into_owned();
            mounts.push(
                Mount::open(&dir, guest, read_only || copied).map_err(|e| bad(e.to_string()))?,
            );
        }
        Ok(mounts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_errors_read_as_the_kubelet_words_them() {
        let (volume, container) = ("v".to_owned(), "main".to_owned());
        let sub = MountsError::SubPath {
            volume: volume.clone(),
            container: container.clone(),
            why: "missing value for POD".to_owned(),
        };
        assert_eq!(
            sub.to_string(),
            "failed to prepare subPath for volumeMount \"v\" of container \"main\": missing value for POD"
        );
        let none = MountsError::NoVolume {
            volume: volume.clone(),
            container: container.clone(),
        };
        assert_eq!(
            none.to_string(),
            "cannot find volume \"v\" to mount into container \"main\""
        );
        let open = MountsError::Open {
            volume,
            container,
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(
            open.to_string(),
            "cannot mount volume \"v\" into container \"main\": entity not found"
        );
    }
}
