//! A pod's volumes as WASI capabilities: each volume is a directory on the node, and a
//! container sees exactly the directories its `volumeMounts` name, preopened at their
//! `mountPath` with the permissions asked; nothing else of the node is visible.
//!
//! Where each kind lives on the node:
//! - `emptyDir`, `configMap`, `secret`, `downwardAPI`, `projected`:
//!   `DATA_DIR/pods/<namespace>_<name>_<uid>/_volumes/<volume>/` (the underscore keeps
//!   them apart from the containers' log directories, whose names cannot contain one);
//!   the last four are written with the kubelet's atomic writer ([`atomic`]) and always
//!   mounted read-only;
//! - `hostPath`: the host path itself, after the kubelet's `type` check;
//! - `persistentVolumeClaim`: the path of the bound `local` or `hostPath` volume.
//!
//! A mount that selects a single file (a `hostPath` of type `File`, a `subPath` naming a
//! file) cannot be a preopen, which is a directory: the file is hard-linked (or, across
//! filesystems, copied read-only) into a directory of its own that is preopened as the
//! mount path's parent.

pub mod atomic;
pub mod downward;
pub mod field_path;
mod host;
pub mod memory;
mod mounts;
mod on_node;
pub mod remove;
mod sources;
pub mod subpath;
pub mod usage;
mod walk;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{EmptyDirVolumeSource, Pod, Volume};
use kube::ResourceExt;

use crate::blocking;
use crate::quantity::Quantity;
pub use mounts::MountsError;
#[cfg(test)]
use mounts::{missing_references, plain_relative};
use on_node::{NodeWork, Tmpfs, write_files};
pub use sources::{Context, ObjectCache};
use sources::{Part, Token, mode};
pub(crate) use sources::{config_map_data, read, secret_data};

/// Directory, under a pod's directory, that holds its volumes.
pub const VOLUMES_DIR: &str = "_volumes";
/// Directory, under a pod's directory, that holds single-file mounts.
const FILES_DIR: &str = "_files";
/// Mode of projected files when the volume names none (the API server defaults it too).
const DEFAULT_MODE: u32 = 0o644;

/// Why a volume cannot be set up: the kubelet's `FailedMount` event says
/// `MountVolume.SetUp failed for volume "<volume>" : <message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountError {
    /// The volume's name.
    pub volume: String,
    /// What went wrong.
    pub message: String,
}

impl std::fmt::Display for MountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MountVolume.SetUp failed for volume {:?} : {}",
            self.volume, self.message
        )
    }
}

#[derive(Debug, Clone)]
enum Kind {
    /// Scratch space; `limit` is a positive `sizeLimit` (zero or unset: none, as for
    /// the kubelet's eviction manager).
    EmptyDir { limit: Option<Quantity> },
    /// Files written by the node agent and refreshed while the pod lives.
    Projected { parts: Vec<Part>, mode: u32 },
    /// A directory or file of the node (hostPath, or a claim's volume).
    Node,
}

/// One set-up volume.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Where it is on the node.
    pub path: PathBuf,
    /// Whether every mount of it is read-only whatever the mount asks.
    pub read_only: bool,
    kind: Kind,
}

impl Prepared {
    fn new(path: PathBuf, read_only: bool, kind: Kind) -> Self {
        Self {
            path,
            read_only,
            kind,
        }
    }
}

/// The volumes of one pod, set up.
#[derive(Debug)]
pub struct Volumes {
    pod_dir: PathBuf,
    volumes: HashMap<String, Prepared>,
    tokens: Mutex<HashMap<(String, String), Token>>,
}

/// The kind of `volume`, by the name of its one source field.
fn kind_name(volume: &Volume) -> String {
    serde_json::to_value(volume)
        .ok()
        .and_then(|v| {
            v.as_object()?
                .keys()
                .find(|k| k.as_str() != "name")
                .cloned()
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The positive `sizeLimit` of an `emptyDir`, `None` when unset or zero.
///
/// # Errors
/// A limit that does not parse or is negative (the API server refuses both): it is
/// not taken as no limit.
fn size_limit(e: &EmptyDirVolumeSource) -> Result<Option<Quantity>, String> {
    let Some(q) = &e.size_limit else {
        return Ok(None);
    };
    let limit =
        Quantity::from_api(q).map_err(|err| format!("emptyDir sizeLimit {:?}: {err}", q.0))?;
    if limit.is_negative() {
        return Err(format!("emptyDir sizeLimit {:?} must not be negative", q.0));
    }
    Ok((!limit.is_zero()).then_some(limit))
}

impl Volumes {
    /// Sets up every volume of `pod` under `pod_dir`. Stops at the first volume that
    /// cannot be set up; a later call retries.
    ///
    /// # Errors
    /// The volume and the reason, for the `FailedMount` event.
    pub async fn set_up(ctx: &Context<'_>, pod: &Pod, pod_dir: &Path) -> Result<Self, MountError> {
        let this = Self {
            pod_dir: pod_dir.to_owned(),
            volumes: HashMap::new(),
            tokens: Mutex::new(HashMap::new()),
        };
        let mut volumes = HashMap::new();
        let ns = pod.namespace().unwrap_or_default();
        for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let failed = |message: String| MountError {
                volume: volume.name.clone(),
                message,
            };
            let own_dir = pod_dir.join(VOLUMES_DIR).join(&volume.name);
            // As the kubelet: secrets, tokens and `medium: Memory` never touch the disk.
            let in_memory = volume.secret.is_some()
                || volume.projected.is_some()
                || volume
                    .empty_dir
                    .as_ref()
                    .is_some_and(|e| e.medium.as_deref() == Some("Memory"));
            let (prepared, work) = if let Some(e) = &volume.empty_dir {
                let limit = size_limit(e).map_err(failed)?;
                // As the kubelet sizes it: never the kernel's half of the host's memory
                // (an allocatable the node could not tell, 0, bounds nothing).
                let allocatable = match ctx.facts.memory {
                    0 => u64::MAX,
                    m => m,
                };
                let size =
                    memory::empty_dir_size(pod, limit.and_then(|q| q.bytes().ok()), allocatable);
                let work = NodeWork::OwnDir {
                    tmpfs: in_memory.then_some(Tmpfs {
                        size: (size != u64::MAX).then_some(size),
                    }),
                    create: true,
                };
                let kind = Kind::EmptyDir { limit };
                (Prepared::new(own_dir, false, kind), work)
            } else if let Some(kind) = projection(volume) {
                let work = NodeWork::OwnDir {
                    tmpfs: in_memory.then_some(Tmpfs { size: None }),
                    create: false,
                };
                (Prepared::new(own_dir, true, kind), work)
            } else if let Some(h) = &volume.host_path {
                let work = NodeWork::HostPath(h.type_.clone().unwrap_or_default());
                (
                    Prepared::new(PathBuf::from(&h.path), false, Kind::Node),
                    work,
                )
            } else if let Some(c) = &volume.persistent_volume_claim {
                let path = ctx.claim_path(&ns, &c.claim_name).await.map_err(failed)?;
                let read_only = c.read_only.unwrap_or(false);
                (
                    Prepared::new(path, read_only, Kind::Node),
                    NodeWork::ClaimDir,
                )
            } else {
                return Err(failed(format!(
                    "{} volumes are not supported by krustlet: a wasm pod is given directories of this node (emptyDir, configMap, secret, downwardAPI, projected, hostPath, persistentVolumeClaim of a local or hostPath volume)",
                    kind_name(volume)
                )));
            };
            if !work.is_nothing() {
                let path = prepared.path.clone();
                blocking::run(move || work.apply(&path))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
                    .map_err(failed)?;
            }
            if let Kind::Projected { parts, mode } = &prepared.kind {
                let files = ctx
                    .project(pod, &volume.name, parts, *mode, &this.tokens)
                    .await
                    .map_err(failed)?;
                write_files(&prepared.path, files)
                    .await
                    .map_err(|e| failed(format!("cannot write files: {e}")))?;
            }
            volumes.insert(volume.name.clone(), prepared);
        }
        Ok(Self { volumes, ..this })
    }

    /// Rewrites the projected volumes from the current objects (a changed ConfigMap or
    /// Secret, new labels, a token near its end), each atomically. Returns the volumes
    /// that changed, or the first error (the kubelet keeps the old content then).
    ///
    /// # Errors
    /// As [`Volumes::set_up`].
    pub async fn refresh(&self, ctx: &Context<'_>, pod: &Pod) -> Result<Vec<String>, MountError> {
        let mut changed = Vec::new();
        let mut first_error = None;
        for (name, v) in &self.volumes {
            let Kind::Projected { parts, mode } = &v.kind else {
                continue;
            };
            let failed = |message: String| MountError {
                volume: name.clone(),
                message,
            };
            // One volume failing leaves the others to be refreshed.
            let written = match ctx.project(pod, name, parts, *mode, &self.tokens).await {
                Ok(files) => write_files(&v.path, files)
                    .await
                    .map_err(|e| failed(e.to_string())),
                Err(message) => Err(failed(message)),
            };
            match written {
                Ok(true) => changed.push(name.clone()),
                Ok(false) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok(changed)
    }

    /// The first `emptyDir` volume over its `sizeLimit`: (volume, the limit as written).
    /// The sizes are summed on a blocking thread, away from the pods' tasks.
    pub async fn over_limit(&self, pod: &Pod) -> Option<(String, String)> {
        let limited: Vec<(String, PathBuf, Quantity)> = self
            .volumes
            .iter()
            .filter_map(|(name, v)| match v.kind {
                Kind::EmptyDir { limit: Some(limit) } => {
                    Some((name.clone(), v.path.clone(), limit))
                }
                _ => None,
            })
            .collect();
        if limited.is_empty() {
            return None;
        }
        let over = tokio::task::spawn_blocking(move || {
            limited
                .into_iter()
                .find(|(_, path, limit)| Quantity::from(usage::disk_usage(path)) > *limit)
                .map(|(name, _, _)| name)
        })
        .await
        .ok()
        .flatten()?;
        let written = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .find(|x| x.name == over)
            .and_then(|x| x.empty_dir.as_ref()?.size_limit.clone())
            .map(|q| q.0)
            .unwrap_or_default();
        Some((over, written))
    }
}

/// The projected kinds of `volume` as parts; `None` for other kinds.
fn projection(volume: &Volume) -> Option<Kind> {
    if let Some(c) = &volume.config_map {
        return Some(Kind::Projected {
            parts: vec![Part::ConfigMap {
                name: c.name.clone(),
                items: c.items.clone(),
                optional: c.optional.unwrap_or(false),
            }],
            mode: mode(c.default_mode, DEFAULT_MODE),
        });
    }
    if let Some(s) = &volume.secret {
        return Some(Kind::Projected {
            parts: vec![Part::Secret {
                name: s.secret_name.clone().unwrap_or_default(),
                items: s.items.clone(),
                optional: s.optional.unwrap_or(false),
            }],
            mode: mode(s.default_mode, DEFAULT_MODE),
        });
    }
    if let Some(d) = &volume.downward_api {
        return Some(Kind::Projected {
            parts: vec![Part::Downward(d.items.clone().unwrap_or_default())],
            mode: mode(d.default_mode, DEFAULT_MODE),
        });
    }
    let p = volume.projected.as_ref()?;
    let mut parts = Vec::new();
    for source in p.sources.iter().flatten() {
        if let Some(c) = &source.config_map {
            parts.push(Part::ConfigMap {
                name: c.name.clone(),
                items: c.items.clone(),
                optional: c.optional.unwrap_or(false),
            });
        }
        if let Some(s) = &source.secret {
            parts.push(Part::Secret {
                name: s.name.clone(),
                items: s.items.clone(),
                optional: s.optional.unwrap_or(false),
            });
        }
        if let Some(d) = &source.downward_api {
            parts.push(Part::Downward(d.items.clone().unwrap_or_default()));
        }
        if let Some(t) = &source.service_account_token {
            parts.push(Part::Token(t.clone()));
        }
        if source.cluster_trust_bundle.is_some() {
            parts.push(Part::Unsupported("clusterTrustBundle"));
        }
        if source.pod_certificate.is_some() {
            parts.push(Part::Unsupported("podCertificate"));
        }
    }
    Some(Kind::Projected {
        parts,
        mode: mode(p.default_mode, DEFAULT_MODE),
    })
}

#[cfg(test)]
mod tests;
