//! The kubelet's Summary API (`/stats/summary`, `stats/v1alpha1`): the node's CPU,
//! memory and filesystems, and each pod's containers, volumes and ephemeral storage.
//!
//! Field names are the API's (camelCase, `ephemeral-storage`); a value the node cannot
//! tell is left out, as the kubelet leaves it out, rather than given as 0.

use std::path::Path;

use serde::Serialize;

use super::{NodeSample, Sample};
use crate::runtime::ImageFsUsage;

/// The whole answer.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// The node.
    pub node: NodeStats,
    /// Every pod with a running container.
    pub pods: Vec<PodStats>,
}

/// The node's part.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    /// Its name.
    pub node_name: String,
    /// When the agent started.
    pub start_time: String,
    /// The agent process's CPU (every container runs in it).
    pub cpu: CpuStats,
    /// The agent process's memory.
    pub memory: MemoryStats,
    /// The filesystem of the data directory (pods' logs and volumes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fs: Option<FsStats>,
    /// The image filesystem.
    pub runtime: RuntimeStats,
}

/// The runtime's filesystems.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeStats {
    /// Where images are held.
    pub image_fs: FsStats,
}

/// CPU usage.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    /// When it was read.
    pub time: String,
    /// The rate since an earlier read, in billionths of a core.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_nano_cores: Option<u64>,
    /// Cumulative CPU time, in core-nanoseconds.
    pub usage_core_nano_seconds: u64,
}

/// Memory usage.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    /// When it was read.
    pub time: String,
    /// Bytes in use.
    pub usage_bytes: u64,
    /// The working set.
    pub working_set_bytes: u64,
}

/// A filesystem or a part of one.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FsStats {
    /// When it was read.
    pub time: String,
    /// Bytes free for use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    /// The filesystem's size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
    /// Bytes used (by this part).
    pub used_bytes: u64,
    /// Inodes free.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inodes_free: Option<u64>,
    /// Inodes in all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inodes: Option<u64>,
}

/// A volume's usage.
#[derive(Debug, Serialize)]
pub struct VolumeStats {
    /// Its usage.
    #[serde(flatten)]
    pub fs: FsStats,
    /// The volume's name in the pod.
    pub name: String,
}

/// Which pod.
#[derive(Debug, Serialize)]
pub struct PodRef {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its UID.
    pub uid: String,
}

/// One pod.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    /// Which.
    pub pod_ref: PodRef,
    /// When its first running container started.
    pub start_time: String,
    /// Its running containers.
    pub containers: Vec<ContainerStats>,
    /// The sum of its containers' CPU.
    pub cpu: CpuStats,
    /// The sum of its containers' memory.
    pub memory: MemoryStats,
    /// Its volumes, as held on the node.
    pub volume: Vec<VolumeStats>,
    /// Its logs and volumes on the node.
    #[serde(rename = "ephemeral-storage")]
    pub ephemeral_storage: FsStats,
}

/// One container.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    /// Its name.
    pub name: String,
    /// When this run started.
    pub start_time: String,
    /// Its CPU.
    pub cpu: CpuStats,
    /// Its memory.
    pub memory: MemoryStats,
    /// Its log files.
    pub logs: FsStats,
}

/// What the summary is made of.
#[derive(Debug)]
pub struct Inputs<'a> {
    /// The node's name.
    pub node_name: &'a str,
    /// When the agent started.
    pub started: jiff::Timestamp,
    /// The node's usage.
    pub node: NodeSample,
    /// Each running container's.
    pub containers: &'a [Sample],
    /// The data directory (its filesystem is the node's).
    pub data_dir: &'a Path,
    /// The image filesystem.
    pub image_fs: ImageFsUsage,
}

fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Builds the summary; walks the pods' directories (blocking file work).
#[must_use]
pub fn build(inputs: &Inputs<'_>) -> Summary {
    let time = inputs.node.at.to_string();
    let fs_of = |dir: &Path| -> Option<FsStats> {
        let s = rustix::fs::statvfs(dir).ok()?;
        Some(FsStats {
            time: time.clone(),
            available_bytes: Some(s.f_bavail.saturating_mul(s.f_frsize)),
            capacity_bytes: Some(s.f_blocks.saturating_mul(s.f_frsize)),
            used_bytes: s
                .f_blocks
                .saturating_sub(s.f_bfree)
                .saturating_mul(s.f_frsize),
            inodes_free: (s.f_files > 0).then_some(s.f_ffree),
            inodes: (s.f_files > 0).then_some(s.f_files),
        })
    };
    let node_fs = fs_of(inputs.data_dir);
    // Parts of the node's filesystem: its free bytes and size, their own use.
    let part = |used: u64| FsStats {
        time: time.clone(),
        available_bytes: node_fs.as_ref().and_then(|f| f.available_bytes),
        capacity_bytes: node_fs.as_ref().and_then(|f| f.capacity_bytes),
        used_bytes: used,
        inodes_free: None,
        inodes: None,
    };
    let cpu = |at: &jiff::Timestamp, used: std::time::Duration, rate: Option<u64>| CpuStats {
        time: at.to_string(),
        usage_nano_cores: rate,
        usage_core_nano_seconds: nanos(used),
    };
    let memory = |at: &jiff::Timestamp, bytes: u64| MemoryStats {
        time: at.to_string(),
        usage_bytes: bytes,
        working_set_bytes: bytes,
    };
    let mut pods: Vec<PodStats> = Vec::new();
    for sum in super::resource::pods(inputs.containers) {
        let mine: Vec<&Sample> = inputs
            .containers
            .iter()
            .filter(|s| s.running.uid == sum.uid)
            .collect();
        let Some(first) = mine.first() else { continue };
        let pod_dir = &first.running.pod_dir;
        let rate = mine
            .iter()
            .map(|s| s.nano_cores)
            .try_fold(0u64, |acc, r| r.map(|r| acc.saturating_add(r)));
        let containers = mine
            .iter()
            .map(|s| ContainerStats {
                name: s.running.container.clone(),
                start_time: s.running.started.to_string(),
                cpu: cpu(&s.at, s.usage.cpu, s.nano_cores),
                memory: memory(&s.at, s.usage.memory_working_set),
                logs: part(crate::volumes::usage::disk_usage(
                    &pod_dir.join(&s.running.container),
                )),
            })
            .collect();
        let volumes_dir = pod_dir.join(crate::volumes::VOLUMES_DIR);
        let volume = std::fs::read_dir(&volumes_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| VolumeStats {
                fs: part(crate::volumes::usage::disk_usage(&e.path())),
                name: e.file_name().to_string_lossy().into_owned(),
            })
            .collect();
        let started = mine
            .iter()
            .map(|s| s.running.started)
            .min()
            .unwrap_or(first.running.started);
        pods.push(PodStats {
            pod_ref: PodRef {
                name: sum.pod.to_owned(),
                namespace: sum.namespace.to_owned(),
                uid: sum.uid.to_owned(),
            },
            start_time: started.to_string(),
            containers,
            cpu: cpu(&sum.at, sum.cpu, rate),
            memory: memory(&sum.at, sum.memory),
            volume,
            ephemeral_storage: part(crate::volumes::usage::disk_usage(pod_dir)),
        });
    }
    let node = &inputs.node;
    Summary {
        node: NodeStats {
            node_name: inputs.node_name.to_owned(),
            start_time: inputs.started.to_string(),
            cpu: cpu(&node.at, node.cpu, node.nano_cores),
            memory: memory(&node.at, node.memory_working_set),
            fs: node_fs.as_ref().map(|f| FsStats {
                time: f.time.clone(),
                available_bytes: f.available_bytes,
                capacity_bytes: f.capacity_bytes,
                used_bytes: f.used_bytes,
                inodes_free: f.inodes_free,
                inodes: f.inodes,
            }),
            runtime: RuntimeStats {
                image_fs: FsStats {
                    time: time.clone(),
                    available_bytes: Some(
                        inputs
                            .image_fs
                            .capacity
                            .saturating_sub(inputs.image_fs.used),
                    ),
                    capacity_bytes: Some(inputs.image_fs.capacity),
                    used_bytes: inputs.image_fs.used,
                    inodes_free: None,
                    inodes: None,
                },
            },
        },
        pods,
    }
}
