//! What the node's containers use, for the resource endpoints: [`resource`] renders
//! `/metrics/resource` (what metrics-server reads) and `/metrics/cadvisor` (CPU
//! throttling), [`summary`] the Summary API of `/stats/summary`.
//!
//! [`StatsIndex`] holds the running containers, each registered by its supervisor when
//! it starts and gone when it ends, with the runtime's reader of its usage. The node's
//! own usage is the agent process's: every container runs inside it.

pub mod resource;
pub mod summary;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::runtime::{ContainerUsage, UsageFn};

/// A running container as its usage is reported.
#[derive(Clone)]
pub struct Running {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The pod's UID.
    pub uid: String,
    /// The container's name.
    pub container: String,
    /// The image it runs, as the pod names it.
    pub image: String,
    /// When this run of it started.
    pub started: jiff::Timestamp,
    /// The pod's directory on the node (logs, volumes).
    pub pod_dir: PathBuf,
    /// Reads its usage.
    pub usage: UsageFn,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("namespace", &self.namespace)
            .field("pod", &self.pod)
            .field("container", &self.container)
            .finish_non_exhaustive()
    }
}

/// One container's usage, read at `at`.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The container.
    pub running: Running,
    /// What it used; CPU at least a nanosecond and memory at least a byte, since
    /// metrics-server drops a pod with a zero anywhere (a container that has only
    /// just started has used a little).
    pub usage: ContainerUsage,
    /// When it was read.
    pub at: jiff::Timestamp,
    /// Its CPU rate over the window since an earlier read, in nanocores (`None` until
    /// there is one).
    pub nano_cores: Option<u64>,
}

/// The running containers of the node, by the runtime's container ID; cloning is cheap.
#[derive(Debug, Clone, Default)]
pub struct StatsIndex(Arc<Mutex<Entries>>);

#[derive(Debug, Default)]
struct Entries {
    running: HashMap<String, Entry>,
    /// The agent's CPU rate, as the containers'.
    node_rate: Rate,
}

#[derive(Debug)]
struct Entry {
    running: Running,
    rate: Rate,
}

/// A CPU rate from cumulative readings at least [`RATE_WINDOW`] apart.
#[derive(Debug, Default, Clone, Copy)]
struct Rate {
    last: Option<(Instant, Duration)>,
    nano_cores: Option<u64>,
}

/// The shortest window a CPU rate is computed over.
const RATE_WINDOW: Duration = Duration::from_secs(1);

impl Rate {
    fn read(&mut self, now: Instant, cpu: Duration) -> Option<u64> {
        match self.last {
            None => self.last = Some((now, cpu)),
            Some((then, before)) if now.saturating_duration_since(then) >= RATE_WINDOW => {
                let window = now.saturating_duration_since(then).as_nanos();
                let used = cpu.saturating_sub(before).as_nanos();
                self.nano_cores = Some(
                    u64::try_from(used.saturating_mul(1_000_000_000) / window).unwrap_or(u64::MAX),
                );
                self.last = Some((now, cpu));
            }
            Some(_) => {}
        }
        self.nano_cores
    }
}

/// Removes its container from the index when dropped (the run ended).
#[derive(Debug)]
pub struct Registration {
    index: StatsIndex,
    id: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.index.lock().running.remove(&self.id);
    }
}

impl StatsIndex {
    /// Adds container `id` until the returned registration is dropped.
    #[must_use]
    pub fn register(&self, id: &str, running: Running) -> Registration {
        self.lock().running.insert(
            id.to_owned(),
            Entry {
                running,
                rate: Rate::default(),
            },
        );
        Registration {
            index: self.clone(),
            id: id.to_owned(),
        }
    }

    /// Every running container's usage now, ordered by namespace, pod and container;
    /// each pod's memory-backed volumes counted in its first container's working set.
    /// Blocking file work (a `statfs` of each memory-backed volume).
    #[must_use]
    pub fn samples(&self) -> Vec<Sample> {
        let at = jiff::Timestamp::now();
        let now = Instant::now();
        // The readers are atomics: cheap enough to call under the lock.
        let mut entries = self.lock();
        let mut samples: Vec<Sample> = entries
            .running
            .values_mut()
            .map(|e| {
                let mut usage = (e.running.usage)();
                usage.cpu = usage.cpu.max(Duration::from_nanos(1));
                usage.memory_working_set = usage.memory_working_set.max(1);
                Sample {
                    nano_cores: e.rate.read(now, usage.cpu),
                    running: e.running.clone(),
                    usage,
                    at,
                }
            })
            .collect();
        drop(entries);
        samples.sort_by(|a, b| {
            let key = |s: &Sample| {
                (
                    s.running.namespace.clone(),
                    s.running.pod.clone(),
                    s.running.container.clone(),
                )
            };
            key(a).cmp(&key(b))
        });
        charge_memory_volumes(&mut samples);
        samples
    }

    /// How many containers run (for `kubelet_running_containers`); reads no usage.
    #[must_use]
    pub fn running(&self) -> usize {
        self.lock().running.len()
    }

    /// The node's (the agent process's) usage now.
    #[must_use]
    pub fn node(&self) -> NodeSample {
        let cpu = process_cpu().max(Duration::from_nanos(1));
        let nano_cores = self.lock().node_rate.read(Instant::now(), cpu);
        NodeSample {
            cpu,
            nano_cores,
            memory_working_set: process_rss().max(1),
            at: jiff::Timestamp::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Adds what each pod's memory-backed volumes hold to the working set of its first
/// container in `samples` (sorted by pod): the kubelet's cgroups charge tmpfs pages to
/// the container that writes them, and a wasm container's own figure is its linear
/// memory only, so a pod filling a `medium: Memory` emptyDir was charged nothing.
fn charge_memory_volumes(samples: &mut [Sample]) {
    let mut last_uid: Option<String> = None;
    for s in samples.iter_mut() {
        if last_uid.as_deref() == Some(s.running.uid.as_str()) {
            continue;
        }
        last_uid = Some(s.running.uid.clone());
        let held = crate::volumes::memory::pod_usage(&s.running.pod_dir);
        s.usage.memory_working_set = s.usage.memory_working_set.saturating_add(held);
    }
}

/// What the resource endpoints read: the containers, and the node they run on.
#[derive(Debug, Clone)]
pub struct Source {
    /// The running containers.
    pub index: StatsIndex,
    /// The node's name.
    pub node_name: String,
    /// The data directory (pods' logs and volumes).
    pub data_dir: PathBuf,
    /// When the agent started.
    pub started: jiff::Timestamp,
}

/// The node's usage: the agent process, which runs every container.
#[derive(Debug, Clone, Copy)]
pub struct NodeSample {
    /// CPU time of the whole process since it started.
    pub cpu: Duration,
    /// Its CPU rate over the window since an earlier read.
    pub nano_cores: Option<u64>,
    /// Its resident memory.
    pub memory_working_set: u64,
    /// When it was read.
    pub at: jiff::Timestamp,
}

/// CPU time of every thread of this process, from the kernel's process clock.
fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Resident bytes of this process (`/proc/self/statm`'s second field, in pages).
fn process_rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| {
            pages.saturating_mul(u64::try_from(rustix::param::page_size()).unwrap_or(4096))
        })
}

#[cfg(test)]
mod tests;
