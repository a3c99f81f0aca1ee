//! The kubelet's own metric families on `/metrics`, beside the runtime's `krustlet_*`
//! counters: the node's name, running pods and containers, pod start and pod worker
//! durations, and every runtime operation (counted, failed, timed by [`instrumented`]).
//!
//! A small registry of our own: [`KubeletMetrics`] holds the counters and histograms
//! (cheap to clone, shared by the pod workers and the runtime decorator) and
//! [`text`] writes them in the Prometheus text exposition format. The names, labels,
//! help texts and buckets are the upstream kubelet's (`pkg/kubelet/metrics`).

pub mod instrumented;
pub mod text;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

pub use instrumented::Instrumented;
pub use text::{Family, Kind, Sample};

/// The kubelet's pod start buckets (seconds), for `kubelet_pod_start_duration_seconds`.
pub const POD_START_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 240.0,
    300.0, 360.0, 480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
];

/// Prometheus' default buckets (seconds), for `kubelet_pod_worker_duration_seconds`.
pub const DEFAULT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// `ExponentialBuckets(0.005, 2.5, 14)`, for `kubelet_runtime_operations_duration_seconds`.
#[must_use]
pub fn runtime_operation_buckets() -> Vec<f64> {
    std::iter::successors(Some(0.005_f64), |b| Some(b * 2.5))
        .take(14)
        .collect()
}

/// A histogram's cumulative state.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Upper bounds, ascending (`+Inf` is implied).
    pub bounds: Vec<f64>,
    /// Observations at or below each bound (not yet cumulative).
    pub counts: Vec<u64>,
    /// Observations above the last bound.
    pub overflow: u64,
    /// Sum of all observations.
    pub sum: f64,
}

impl Histogram {
    /// An empty histogram over `bounds`.
    #[must_use]
    pub fn new(bounds: &[f64]) -> Self {
        Self {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len()],
            overflow: 0,
            sum: 0.0,
        }
    }

    /// Records one observation of `value`.
    pub fn observe(&mut self, value: f64) {
        self.sum += value;
        match self.bounds.iter().position(|b| value <= *b) {
            Some(i) => self.counts[i] += 1,
            None => self.overflow += 1,
        }
    }

    /// Observations in all.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.counts.iter().sum::<u64>() + self.overflow
    }
}

/// How the pod worker spent a round, the `operation_type` of
/// `kubelet_pod_worker_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WorkerOperation {
    /// A new pod, up to its first status.
    Create,
    /// A change of the pod object or of its containers.
    Update,
    /// The periodic sync (`--sync-frequency`).
    Sync,
}

impl WorkerOperation {
    /// The label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Sync => "sync",
        }
    }
}

#[derive(Debug, Default)]
struct State {
    pod_start: Option<Histogram>,
    pod_worker: BTreeMap<WorkerOperation, Histogram>,
    /// By operation type: calls, errors, durations.
    operations: BTreeMap<&'static str, (u64, u64, Histogram)>,
}

/// The kubelet's counters and histograms; clones share them.
#[derive(Debug, Clone, Default)]
pub struct KubeletMetrics(Arc<Mutex<State>>);

impl KubeletMetrics {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A pod ran (phase Running) `took` after the kubelet first saw it.
    pub fn pod_started(&self, took: Duration) {
        self.with(|s| {
            s.pod_start
                .get_or_insert_with(|| Histogram::new(POD_START_BUCKETS))
                .observe(took.as_secs_f64());
        });
    }

    /// A pod worker's round of `operation` took `took`.
    pub fn pod_worker(&self, operation: WorkerOperation, took: Duration) {
        self.with(|s| {
            s.pod_worker
                .entry(operation)
                .or_insert_with(|| Histogram::new(DEFAULT_BUCKETS))
                .observe(took.as_secs_f64());
        });
    }

    /// A runtime operation `operation` took `took`, and failed or not.
    pub fn runtime_operation(&self, operation: &'static str, took: Duration, failed: bool) {
        self.with(|s| {
            let (calls, errors, hist) = s
                .operations
                .entry(operation)
                .or_insert_with(|| (0, 0, Histogram::new(&runtime_operation_buckets())));
            *calls += 1;
            *errors += u64::from(failed);
            hist.observe(took.as_secs_f64());
        });
    }

    /// The families, for a node named `node` running `pods` pods (a sandbox up) and
    /// `containers` containers.
    #[must_use]
    pub fn families(&self, node: &str, pods: usize, containers: usize) -> Vec<Family> {
        let mut out = vec![
            Family::gauge(
                "kubelet_node_name",
                "[ALPHA] The node's name. The count is always 1.",
            )
            .with(Sample::new(1.0).label("node", node)),
            Family::gauge(
                "kubelet_running_pods",
                "[ALPHA] Number of pods that have a running pod sandbox",
            )
            .with(Sample::new(count(pods))),
            Family::gauge(
                "kubelet_running_containers",
                "[ALPHA] Number of containers currently running",
            )
            .with(Sample::new(count(containers)).label("container_state", "running")),
        ];
        self.with(|s| {
            let mut start = Family::histogram(
                "kubelet_pod_start_duration_seconds",
                "[ALPHA] Duration in seconds from kubelet seeing a pod for the first time to the pod starting to run",
            );
            let empty = Histogram::new(POD_START_BUCKETS);
            start.add_histogram(&[], s.pod_start.as_ref().unwrap_or(&empty));
            out.push(start);
            let mut worker = Family::histogram(
                "kubelet_pod_worker_duration_seconds",
                "[ALPHA] Duration in seconds to sync a single pod. Broken down by operation type: create, update, or sync",
            );
            for (op, h) in &s.pod_worker {
                worker.add_histogram(&[("operation_type", op.as_str())], h);
            }
            out.push(worker);
            let mut total = Family::counter(
                "kubelet_runtime_operations_total",
                "[ALPHA] Cumulative number of runtime operations by operation type.",
            );
            let mut errors = Family::counter(
                "kubelet_runtime_operations_errors_total",
                "[ALPHA] Cumulative number of runtime operation errors by operation type.",
            );
            let mut durations = Family::histogram(
                "kubelet_runtime_operations_duration_seconds",
                "[ALPHA] Duration in seconds of runtime operations. Broken down by operation type.",
            );
            for (op, (calls, failed, h)) in &s.operations {
                total.samples.push(Sample::new(count64(*calls)).label("operation_type", op));
                if *failed > 0 {
                    errors
                        .samples
                        .push(Sample::new(count64(*failed)).label("operation_type", op));
                }
                durations.add_histogram(&[("operation_type", *op)], h);
            }
            out.extend([total, errors, durations]);
        });
        out
    }
}

fn count(n: usize) -> f64 {
    n as f64
}

fn count64(n: u64) -> f64 {
    n as f64
}

#[cfg(test)]
mod tests;
