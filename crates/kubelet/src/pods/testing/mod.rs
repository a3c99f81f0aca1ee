//! The seam for unit tests of the pod state machine (not a fake API server: every
//! end-to-end test still runs against the real control plane). [`MemoryApi`] is an
//! in-memory [`ClusterApi`] that keeps what the worker wrote (status patches, events,
//! the deletion) and serves the objects a test put in it; [`FakeRuntime`] runs scripted
//! containers (exits, traps, hangs, starts that fail or never end) and images (pulls that
//! fail, take time or never end); [`Harness`] runs one pod's worker over both, under
//! `tokio::time::pause()`, so minutes of back-off pass in microseconds.

mod api;
mod runtime;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub(crate) use api::MemoryApi;
pub(crate) use runtime::{Did, FakeRuntime, Pull, Script, Shared};

use crate::api::ClusterApi;

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
/// One pod's worker over a [`MemoryApi`] and a [`FakeRuntime`].
pub(crate) struct Harness {
    pub api: Arc<MemoryApi>,
    pub runtime: Arc<FakeRuntime>,
    pub ctx: Arc<super::Ctx>,
    _dir: tempfile::TempDir,
}

/// A running worker: its pod (to change, e.g. to delete it), its stop and failure
/// signals, and whether it is done with its containers.
pub(crate) struct Running {
    pub pod: watch::Sender<Pod>,
    pub stop: CancellationToken,
    pub fail: watch::Sender<Option<super::worker::Failure>>,
    pub done: watch::Receiver<bool>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Marks the pod deleted (as `kubectl delete` does: a deletion timestamp).
    pub fn delete(&self) {
        self.pod.send_modify(|p| {
            p.metadata.deletion_timestamp = Some(crate::now());
        });
    }
}

impl Harness {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let api = Arc::new(MemoryApi::default());
        let runtime = Arc::new(FakeRuntime::default());
        let config = crate::Config {
            node_name: "node-a".to_owned(),
            node_ip: std::net::Ipv4Addr::new(10, 0, 0, 7).into(),
            bind_address: std::net::Ipv4Addr::LOCALHOST.into(),
            port: 0,
            data_dir: dir.path().to_owned(),
            cert_dir: dir.path().join("pki"),
            rotate_server_certificates: false,
            cert_file: None,
            private_key_file: None,
            client_ca_file: None,
            auth: crate::auth::AuthConfig::default(),
            max_pods: 110,
            reserved: Default::default(),
            node_labels: std::collections::BTreeMap::new(),
            image_gc: crate::images::GcPolicy::default(),
            lease_renew_interval: Duration::from_secs(10),
            status_report_interval: Duration::from_secs(60),
            sync_frequency: Duration::from_secs(60),
            event_qps: 0,
            event_burst: 0,
            eviction: crate::eviction::Settings::default(),
            static_pods: None,
            register_with_taints: Vec::new(),
            lease_duration_seconds: 40,
            shutdown: crate::shutdown::Settings::default(),
            dns: crate::pods::dns::Settings {
                cluster_dns: vec![std::net::IpAddr::from([10, 0, 0, 10])],
                cluster_domain: "cluster.local".into(),
                resolv_conf: None,
            },
        };
        let cluster: Arc<dyn ClusterApi> = api.clone();
        let ctx = Arc::new(super::Ctx {
            api: cluster.clone(),
            config: Arc::new(config),
            runtime: Arc::new(Shared(runtime.clone())),
            images: crate::images::ImageIndex::default(),
            logs: crate::logs::LogIndex::default(),
            sandboxes: crate::sandboxes::SandboxIndex::default(),
            stats: crate::stats::StatsIndex::default(),
            pressure: crate::eviction::PressureHandle::default(),
            shutting_down: crate::shutdown::ShuttingDown::default(),
            recorder: Arc::new(crate::events::Recorder::new(cluster, "node-a").with_limits(0, 0)),
            objects: crate::volumes::ObjectCache::default(),
            facts: crate::volumes::downward::NodeFacts {
                ip: std::net::Ipv4Addr::new(10, 0, 0, 7).into(),
                pod_ip: None,
                cpus: 2,
                memory: 1 << 30,
            },
            stopping: CancellationToken::new(),
            metrics: crate::metrics::KubeletMetrics::default(),
            statuses: super::StatusBook::default(),
        });
        Self {
            api,
            runtime,
            ctx,
            _dir: dir,
        }
    }

    /// Starts the worker of `pod` (admitted unless `misfit`).
    pub fn start(&self, pod: Pod, misfit: Option<super::admission::Rejection>) -> Running {
        let (tx, rx) = watch::channel(pod);
        let (fail, failed) = watch::channel(None);
        let (finished, done) = watch::channel(false);
        let stop = CancellationToken::new();
        let task = tokio::spawn(super::worker::run(
            self.ctx.clone(),
            rx,
            stop.clone(),
            super::worker::Outside { failed, finished },
            misfit,
        ));
        Running {
            pod: tx,
            stop,
            fail,
            done,
            task,
        }
    }
}

/// A pod named `p` (UID `uid-p`, namespace `default`) with `spec`.
pub(crate) fn pod(spec: serde_json::Value) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "p", "namespace": "default", "uid": "uid-p" },
        "spec": spec
    }))
    .expect("pod")
}

/// The state of container `name` in `status` (`containerStatuses` or
/// `initContainerStatuses`).
pub(crate) fn container<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    ["containerStatuses", "initContainerStatuses"]
        .iter()
        .filter_map(|list| status.get(list)?.as_array())
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or(&serde_json::Value::Null)
}
