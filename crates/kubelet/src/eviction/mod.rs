//! The kubelet's eviction manager on a wasm node: every monitoring interval it measures
//! the host's available memory and the free space and inodes of the data dir's
//! filesystem against the hard thresholds (`--eviction-hard`), reports `MemoryPressure`
//! and `DiskPressure` on the node (kept for the pressure transition period after the last
//! crossing), refuses new pods under pressure as the kubelet's admission does, and under
//! disk pressure first removes unused images, then evicts the pod using the most disk,
//! and under memory pressure the pod ranked first by [`memory::rank`] (by the working sets
//! of its containers, memory-backed volumes counted in), one pod per interval, with the
//! kubelet's reason and message.

pub mod memory;
pub mod thresholds;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::Runtime;
use crate::images::ImageIndex;
use crate::pods::PodsHandle;
use crate::pods::admission::Rejection;
use crate::stats::StatsIndex;
pub use thresholds::{Crossed, Observation, Signal, Threshold};

/// The eviction manager's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Hard thresholds (`--eviction-hard`).
    pub hard: Vec<Threshold>,
    /// How often the node is measured (the kubelet's fixed 10 s).
    pub interval: Duration,
    /// How long a pressure condition stays after the last crossing
    /// (`evictionPressureTransitionPeriod`, 5 min).
    pub transition: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            hard: thresholds::parse(thresholds::DEFAULT_EVICTION_HARD).unwrap_or_default(),
            interval: Duration::from_secs(10),
            transition: Duration::from_secs(300),
        }
    }
}

/// The node's pressure conditions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressure {
    /// `MemoryPressure` is true.
    pub memory: bool,
    /// `DiskPressure` is true.
    pub disk: bool,
}

/// The current [`Pressure`], shared by the eviction manager (which sets it), the node
/// status and admission.
#[derive(Debug, Clone)]
pub struct PressureHandle(Arc<watch::Sender<Pressure>>);

impl Default for PressureHandle {
    fn default() -> Self {
        Self(Arc::new(watch::channel(Pressure::default()).0))
    }
}

impl PressureHandle {
    /// The pressure now.
    #[must_use]
    pub fn get(&self) -> Pressure {
        *self.0.borrow()
    }

    /// A receiver that sees every change.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<Pressure> {
        self.0.subscribe()
    }

    fn set(&self, pressure: Pressure) {
        self.0
            .send_if_modified(|p| std::mem::replace(p, pressure) != pressure);
    }
}

/// Pressure with the transition period: a condition stays true until `transition` has
/// passed since the last observation that crossed a threshold of its kind.
#[derive(Debug, Default)]
pub struct Hysteresis {
    memory_last: Option<Instant>,
    disk_last: Option<Instant>,
}

impl Hysteresis {
    /// The conditions after observing `crossed` at `now`.
    pub fn update(&mut self, crossed: &[Crossed], now: Instant, transition: Duration) -> Pressure {
        if crossed.iter().any(|c| !c.threshold.signal.is_disk()) {
            self.memory_last = Some(now);
        }
        if crossed.iter().any(|c| c.threshold.signal.is_disk()) {
            self.disk_last = Some(now);
        }
        let within = |last: Option<Instant>| {
            last.is_some_and(|t| now.saturating_duration_since(t) < transition)
        };
        Pressure {
            memory: within(self.memory_last),
            disk: within(self.disk_last),
        }
    }
}

/// A critical pod, as the kubelet has it: priority at least 2000000000
/// (`system-cluster-critical`), or a static pod. The eviction manager neither evicts nor
/// refuses it.
#[must_use]
pub fn is_critical(pod: &Pod) -> bool {
    const CRITICAL: i32 = 2_000_000_000;
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.priority).is_some_and(|p| p >= CRITICAL)
        || crate::pods::static_pods::annotation(pod, crate::pods::static_pods::SOURCE_ANNOTATION)
            == Some("file")
}

/// The kubelet's eviction admission: under disk pressure no pod is admitted, under
/// memory pressure no `BestEffort` pod, except critical pods ([`is_critical`]). Returns
/// the rejection, reason `Evicted`.
#[must_use]
pub fn admit(pod: &Pod, pressure: Pressure) -> Option<Rejection> {
    if !pressure.memory && !pressure.disk {
        return None;
    }
    if is_critical(pod) {
        return None;
    }
    let best_effort = crate::pods::qos_class(pod) == "BestEffort";
    if !pressure.disk && !best_effort {
        return None;
    }
    let mut conditions = Vec::new();
    if pressure.memory {
        conditions.push("MemoryPressure");
    }
    if pressure.disk {
        conditions.push("DiskPressure");
    }
    Some(Rejection::new(
        "Evicted",
        format!("The node had condition: [{}]. ", conditions.join(" ")),
    ))
}

/// Reads what the signals measure: `MemAvailable`/`MemTotal`, and the filesystem of
/// `data_dir` for both nodefs and imagefs (the image store lives in the data dir).
fn observe(data_dir: &Path) -> impl Fn(Signal) -> Option<Observation> + use<> {
    let memory = meminfo();
    let fs = rustix::fs::statvfs(data_dir).ok();
    move |signal| match signal {
        Signal::MemoryAvailable => memory,
        Signal::NodefsAvailable | Signal::ImagefsAvailable => fs.as_ref().map(|s| Observation {
            available: s.f_bavail.saturating_mul(s.f_frsize),
            capacity: s.f_blocks.saturating_mul(s.f_frsize),
        }),
        Signal::NodefsInodesFree | Signal::ImagefsInodesFree => {
            fs.as_ref().filter(|s| s.f_files > 0).map(|s| Observation {
                available: s.f_favail,
                capacity: s.f_files,
            })
        }
    }
}

/// Bytes of the filesystem holding `dir`, for the node's `ephemeral-storage` capacity.
#[must_use]
pub fn filesystem_capacity(dir: &Path) -> u64 {
    rustix::fs::statvfs(dir).map_or(0, |s| s.f_blocks.saturating_mul(s.f_frsize))
}

fn meminfo() -> Option<Observation> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib.saturating_mul(1024))
    };
    Some(Observation {
        available: field("MemAvailable:")?,
        capacity: field("MemTotal:")?,
    })
}

/// The pod to evict for disk pressure: the one whose directory (logs, volumes) holds the
/// most bytes.
fn disk_victim(pods: Vec<(Pod, PathBuf)>) -> Option<Pod> {
    pods.into_iter()
        .map(|(pod, dir)| (crate::volumes::usage::disk_usage(&dir), pod))
        .max_by_key(|(bytes, _)| *bytes)
        .map(|(_, pod)| pod)
}

/// Evicts the pod [`memory::rank`] puts first, for the memory threshold `crossed`.
async fn evict_for_memory(workers: &PodsHandle, stats: &StatsIndex, crossed: &Crossed) {
    let pods: Vec<Pod> = workers
        .active_pods()
        .await
        .into_iter()
        .filter(|p| !is_critical(p))
        .collect();
    let index = stats.clone();
    // A `statfs` of each memory-backed volume: blocking.
    let Ok(samples) = tokio::task::spawn_blocking(move || index.samples()).await else {
        return;
    };
    let mut usage: std::collections::HashMap<String, memory::PodMemory> =
        std::collections::HashMap::new();
    for s in samples {
        usage
            .entry(s.running.uid.clone())
            .or_default()
            .containers
            .push((s.running.container.clone(), s.usage.memory_working_set));
    }
    let Some(victim) = memory::rank(pods, &usage).into_iter().next() else {
        tracing::warn!(message = %crossed.message(), "memory pressure, no pod to evict");
        return;
    };
    let used = victim
        .metadata
        .uid
        .as_ref()
        .and_then(|uid| usage.get(uid))
        .cloned()
        .unwrap_or_default();
    let message = memory::message(crossed, &victim, &used);
    tracing::warn!(pod = ?victim.metadata.name, %message, "evicting pod");
    workers.evict(&victim, message).await;
}

/// What the eviction manager works with.
pub(crate) struct Parts {
    pub runtime: Arc<dyn Runtime>,
    pub images: ImageIndex,
    pub pods: PodsHandle,
    pub pressure: PressureHandle,
    pub data_dir: PathBuf,
    /// The running containers' usage, for memory pressure.
    pub stats: StatsIndex,
}

/// Runs the eviction manager until `shutdown`.
pub(crate) async fn run(
    Parts {
        runtime,
        images,
        pods: workers,
        pressure: shared,
        data_dir,
        stats,
    }: Parts,
    settings: Settings,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hysteresis = Hysteresis::default();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let measure = || {
            let (dir, hard) = (data_dir.clone(), settings.hard.clone());
            tokio::task::spawn_blocking(move || thresholds::crossed(&hard, observe(&dir)))
        };
        let Ok(mut crossed) = measure().await else {
            continue;
        };
        let pressure = hysteresis.update(&crossed, Instant::now(), settings.transition);
        shared.set(pressure);
        if !crossed.iter().any(|c| c.threshold.signal.is_disk()) {
            if let Some(memory) = crossed.into_iter().next() {
                evict_for_memory(&workers, &stats, &memory).await;
            }
            continue;
        }
        // Node-level resources first, as the kubelet: unused images.
        let reclaim = crate::images::GcPolicy {
            high_percent: 0,
            low_percent: 0,
            minimum_age: Duration::ZERO,
            period: settings.interval,
        };
        let plan = crate::images::collect(&*runtime, &images, &reclaim).await;
        if !plan.remove.is_empty() {
            match measure().await {
                Ok(again) => crossed = again,
                Err(_) => continue,
            }
        }
        let Some(reason) = crossed.into_iter().find(|c| c.threshold.signal.is_disk()) else {
            continue;
        };
        let pods: Vec<(Pod, PathBuf)> = workers
            .active_pods()
            .await
            .into_iter()
            .filter(|p| !is_critical(p))
            .map(|p| {
                let dir = data_dir.join("pods").join(crate::pods::pod_dir_name(&p));
                (p, dir)
            })
            .collect();
        let victim = tokio::task::spawn_blocking(move || disk_victim(pods))
            .await
            .ok()
            .flatten();
        match victim {
            Some(pod) => {
                let message = reason.message();
                tracing::warn!(pod = ?pod.metadata.name, %message, "evicting pod");
                workers.evict(&pod, message).await;
            }
            None => tracing::warn!(message = %reason.message(), "disk pressure, no pod to evict"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use thresholds::{Amount, Observation};

    fn crossing(signal: Signal) -> Crossed {
        Crossed {
            threshold: Threshold {
                signal,
                amount: Amount::Absolute(10),
            },
            observed: Observation {
                available: 1,
                capacity: 100,
            },
        }
    }

    #[test]
    fn pressure_stays_for_the_transition_period_after_the_last_crossing() {
        let t0 = Instant::now();
        let period = Duration::from_secs(300);
        let mut h = Hysteresis::default();
        assert_eq!(h.update(&[], t0, period), Pressure::default());
        let p = h.update(&[crossing(Signal::NodefsAvailable)], t0, period);
        assert_eq!(
            p,
            Pressure {
                memory: false,
                disk: true
            }
        );
        let p = h.update(&[], t0 + Duration::from_secs(299), period);
        assert!(p.disk);
        let p = h.update(&[], t0 + Duration::from_secs(300), period);
        assert!(!p.disk);
        let p = Hysteresis::default().update(&[crossing(Signal::MemoryAvailable)], t0, period);
        assert_eq!(
            p,
            Pressure {
                memory: true,
                disk: false
            }
        );
    }

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("pod")
    }

    #[test]
    fn admission_under_pressure_follows_the_kubelet() {
        let best_effort = pod(serde_json::json!({"spec": {"containers": [{"name": "a"}]}}));
        let burstable = pod(serde_json::json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"memory": "1Mi"}}}]}}));
        let critical = pod(serde_json::json!({"spec": {"priority": 2_000_001_000,
            "containers": [{"name": "a"}]}}));
        let memory = Pressure {
            memory: true,
            disk: false,
        };
        let disk = Pressure {
            memory: false,
            disk: true,
        };
        assert_eq!(admit(&best_effort, Pressure::default()), None);
        assert_eq!(
            admit(&best_effort, memory),
            Some(Rejection::new(
                "Evicted",
                "The node had condition: [MemoryPressure]. "
            ))
        );
        assert_eq!(admit(&burstable, memory), None);
        assert_eq!(
            admit(&burstable, disk),
            Some(Rejection::new(
                "Evicted",
                "The node had condition: [DiskPressure]. "
            ))
        );
        assert_eq!(admit(&critical, disk), None);
        let from_file = pod(serde_json::json!({"metadata": {"annotations":
            {"kubernetes.io/config.source": "file"}}, "spec": {"containers": [{"name": "c"}]}}));
        assert!(is_critical(&from_file));
        assert_eq!(admit(&from_file, disk), None, "a static pod is critical");
        let both = Pressure {
            memory: true,
            disk: true,
        };
        assert_eq!(
            admit(&best_effort, both).map(|r| r.message),
            Some("The node had condition: [MemoryPressure DiskPressure]. ".to_owned())
        );
    }

    #[test]
    fn the_pod_using_the_most_disk_is_evicted_first() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let named = |name: &str, bytes: usize| {
            let dir = tmp.path().join(name);
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(dir.join("f"), vec![0u8; bytes]).expect("write");
            let p = pod(serde_json::json!({"metadata": {"name": name}}));
            (p, dir)
        };
        let victim = disk_victim(vec![
            named("small", 10),
            named("big", 1000),
            named("mid", 100),
        ]);
        assert_eq!(victim.and_then(|p| p.metadata.name), Some("big".to_owned()));
        assert!(disk_victim(Vec::new()).is_none());
    }

    #[test]
    fn this_host_is_observed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let observe = observe(tmp.path());
        let memory = observe(Signal::MemoryAvailable).expect("meminfo");
        assert!(memory.available > 0 && memory.available <= memory.capacity);
        let disk = observe(Signal::NodefsAvailable).expect("statvfs");
        assert!(disk.capacity > 0 && disk.available <= disk.capacity);
        assert_eq!(filesystem_capacity(tmp.path()), disk.capacity);
    }
}
