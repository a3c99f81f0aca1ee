//! The seam for unit tests of the pod state machine (not a fake API server: every
//! end-to-end test still runs against the real control plane). [`MemoryApi`] is an
//! in-memory [`ClusterApi`] that keeps what the worker wrote (status patches, events,
//! the deletion) and serves the objects a test put in it; [`FakeRuntime`] runs scripted
//! containers (exits, traps, hangs, starts that fail or never end) and images (pulls that
//! fail, take time or never end); [`Harness`] runs one pod's worker over both, under
//! `tokio::time::pause()`, so minutes of back-off pass in microseconds.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
};
use kube::api::DeleteParams;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{BoxFuture, ClusterApi, not_found};
use crate::keyring::Credential;
use crate::runtime::{
    ContainerExit, ContainerHandle, ContainerRun, Counter, Image, ImageError, ImageFsUsage,
    ImageStatus, Runtime, SandboxConfig, StoredImage,
};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An event the worker recorded.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub type_: String,
    pub reason: String,
    pub message: String,
    /// `spec.containers{name}`, or empty for the pod itself.
    pub field_path: String,
    /// When (paused test time).
    pub at: Instant,
}

/// Everything written to the API, in order.
#[derive(Debug, Default)]
pub(crate) struct Written {
    /// Each status patch that landed, with the time it did.
    pub statuses: Vec<(Instant, serde_json::Value)>,
    pub events: Vec<Recorded>,
    /// Pods deleted (with grace 0, as the kubelet finishes a deletion).
    pub deleted: Vec<String>,
    /// Event name → its first record in `events`.
    names: HashMap<String, usize>,
}

/// An in-memory [`ClusterApi`]: it keeps what is written, serves what a test stores.
#[derive(Default)]
pub(crate) struct MemoryApi {
    written: Mutex<Written>,
    changed: watch::Sender<u64>,
    config_maps: Mutex<HashMap<String, ConfigMap>>,
    secrets: Mutex<HashMap<String, Secret>>,
    /// While true, every call fails as an unreachable API server does.
    pub down: AtomicBool,
}

impl MemoryApi {
    fn unreachable() -> kube::Error {
        kube::Error::Service(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        )))
    }

    fn write(&self, f: impl FnOnce(&mut Written)) -> Result<(), kube::Error> {
        if self.down.load(Ordering::Relaxed) {
            return Err(Self::unreachable());
        }
        f(&mut lock(&self.written));
        self.changed.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Stores a ConfigMap (by its name) for the worker to read.
    pub fn put_config_map(&self, cm: ConfigMap) {
        let name = cm.metadata.name.clone().unwrap_or_default();
        lock(&self.config_maps).insert(name, cm);
    }

    /// Stores a Secret (by its name) for the worker to read.
    pub fn put_secret(&self, secret: Secret) {
        let name = secret.metadata.name.clone().unwrap_or_default();
        lock(&self.secrets).insert(name, secret);
    }

    /// Runs `f` on what was written so far.
    pub fn with<T>(&self, f: impl FnOnce(&Written) -> T) -> T {
        f(&lock(&self.written))
    }

    /// The statuses written, in order.
    pub fn statuses(&self) -> Vec<serde_json::Value> {
        self.with(|w| w.statuses.iter().map(|(_, s)| s.clone()).collect())
    }

    /// The last status written.
    pub fn last_status(&self) -> serde_json::Value {
        self.with(|w| w.statuses.last().map(|(_, s)| s.clone()))
            .unwrap_or_default()
    }

    /// The reasons of the events recorded, in order.
    pub fn reasons(&self) -> Vec<String> {
        self.with(|w| w.events.iter().map(|e| e.reason.clone()).collect())
    }

    /// The events with `reason`.
    pub fn events(&self, reason: &str) -> Vec<Recorded> {
        self.with(|w| {
            w.events
                .iter()
                .filter(|e| e.reason == reason)
                .cloned()
                .collect()
        })
    }

    /// Waits until `done` holds of what was written, for at most `bound` of test time
    /// (which passes in no real time while the runtime idles).
    pub async fn until(&self, bound: Duration, what: &str, done: impl Fn(&Written) -> bool) {
        let mut changes = self.changed.subscribe();
        let waited = tokio::time::timeout(bound, async {
            loop {
                if self.with(&done) {
                    return;
                }
                let _ = changes.changed().await;
            }
        })
        .await;
        if waited.is_err() {
            let (reasons, last) = (self.reasons(), self.last_status());
            panic!("not within {bound:?}: {what}; events {reasons:?}; last status {last:#}");
        }
    }
}

fn ok<'a, T: Send + 'a>(r: Result<T, kube::Error>) -> BoxFuture<'a, Result<T, kube::Error>> {
    Box::pin(std::future::ready(r))
}

impl ClusterApi for MemoryApi {
    fn patch_pod_status<'a>(
        &'a self,
        _ns: &'a str,
        _name: &'a str,
        patch: serde_json::Value,
    ) -> BoxFuture<'a, Result<(), kube::Error>> {
        let status = patch.get("status").cloned().unwrap_or_default();
        ok(self.write(|w| w.statuses.push((Instant::now(), status))))
    }

    fn delete_pod<'a>(
        &'a self,
        _ns: &'a str,
        name: &'a str,
        _params: DeleteParams,
    ) -> BoxFuture<'a, Result<(), kube::Error>> {
        ok(self.write(|w| w.deleted.push(name.to_owned())))
    }

    fn create_event<'a>(
        &'a self,
        _ns: &'a str,
        event: Event,
    ) -> BoxFuture<'a, Result<(), kube::Error>> {
        let name = event.metadata.name.clone().unwrap_or_default();
        let recorded = Recorded {
            type_: event.type_.unwrap_or_default(),
            reason: event.reason.unwrap_or_default(),
            message: event.message.unwrap_or_default(),
            field_path: event.involved_object.field_path.unwrap_or_default(),
            at: Instant::now(),
        };
        ok(self.write(|w| {
            w.names.insert(name, w.events.len());
            w.events.push(recorded);
        }))
    }

    fn patch_event<'a>(
        &'a self,
        _ns: &'a str,
        name: &'a str,
        _patch: serde_json::Value,
    ) -> BoxFuture<'a, Result<(), kube::Error>> {
        // A repeat: kept as one more event with the first one's fields, so that tests
        // count repeats as the API server's count field does.
        ok(self.write(|w| {
            let first = w.names.get(name).and_then(|i| w.events.get(*i)).cloned();
            if let Some(first) = first {
                w.events.push(Recorded {
                    at: Instant::now(),
                    ..first
                });
            }
        }))
    }

    fn config_map<'a>(
        &'a self,
        _ns: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<ConfigMap>, kube::Error>> {
        ok(Ok(lock(&self.config_maps).get(name).cloned()))
    }

    fn secret<'a>(
        &'a self,
        _ns: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Secret>, kube::Error>> {
        ok(Ok(lock(&self.secrets).get(name).cloned()))
    }

    fn request_token<'a>(
        &'a self,
        _ns: &'a str,
        account: &'a str,
        _request: TokenRequest,
    ) -> BoxFuture<'a, Result<TokenRequest, kube::Error>> {
        ok(Err(not_found("serviceaccounts", account)))
    }

    fn claim<'a>(
        &'a self,
        _ns: &'a str,
        _name: &'a str,
    ) -> BoxFuture<'a, Result<Option<PersistentVolumeClaim>, kube::Error>> {
        ok(Ok(None))
    }

    fn volume<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<PersistentVolume, kube::Error>> {
        ok(Err(not_found("persistentvolumes", name)))
    }
}

/// What one run of a scripted container does.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Script {
    /// Runs for the duration, then exits with the code.
    Exit(Duration, i32),
    /// Runs for the duration, then traps (`unreachable`).
    Trap(Duration),
    /// Runs until killed.
    Hang,
    /// The start fails (`CreateContainerError`).
    StartFails,
    /// The start never ends (a module that compiles for ever) until killed.
    StartHangs,
}

/// What a pull of a scripted image does.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pull {
    /// Succeeds after the duration.
    Ok(Duration),
    /// Fails (a registry error).
    Fails,
    /// Never ends.
    Hangs,
}

/// Something the fake runtime did, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Did {
    /// A pull (not a presence check) of the reference.
    Pulled(String),
    /// A run of the container started.
    Started(String),
    /// A running container was killed.
    Killed(String),
    /// A run of the container ended by itself.
    Exited(String),
    /// A sandbox was set up for the pod of this UID.
    SandboxUp(String),
    /// The sandbox of the pod of this UID was removed.
    SandboxDown(String),
}

/// A [`Runtime`] that runs scripts instead of modules.
#[derive(Default)]
pub(crate) struct FakeRuntime {
    /// Container name → the script of each run in turn; the last one repeats.
    scripts: Mutex<HashMap<String, VecDeque<Script>>>,
    /// Reference → the outcome of each pull in turn; the last one repeats. An image
    /// without a script pulls at once.
    pulls: Mutex<HashMap<String, VecDeque<Pull>>>,
    /// References held locally → the IDs of the credentials that pulled them.
    present: Mutex<HashMap<String, Vec<String>>>,
    /// Sandboxes that fail to be set up before one succeeds.
    pub sandbox_failures: std::sync::atomic::AtomicU32,
    did: Mutex<Vec<(Instant, Did)>>,
}

fn next<T: Copy>(queue: &mut VecDeque<T>) -> Option<T> {
    if queue.len() > 1 {
        queue.pop_front()
    } else {
        queue.front().copied()
    }
}

impl FakeRuntime {
    /// Container `name` runs these scripts, one per run; the last repeats.
    pub fn script(&self, name: &str, runs: &[Script]) {
        lock(&self.scripts).insert(name.to_owned(), runs.iter().copied().collect());
    }

    /// Pulls of `reference` go these ways in turn; the last repeats.
    pub fn pulls(&self, reference: &str, pulls: &[Pull]) {
        lock(&self.pulls).insert(reference.to_owned(), pulls.iter().copied().collect());
    }

    /// What happened, with when.
    pub fn did(&self) -> Vec<(Instant, Did)> {
        lock(&self.did).clone()
    }

    /// When container `name` started, each run.
    pub fn starts(&self, name: &str) -> Vec<Instant> {
        let started = Did::Started(name.to_owned());
        self.did()
            .into_iter()
            .filter(|(_, d)| *d == started)
            .map(|(at, _)| at)
            .collect()
    }

    fn log(&self, did: Did) {
        lock(&self.did).push((Instant::now(), did));
    }

    fn image(reference: &str, downloaded: bool) -> Image {
        Image {
            reference: reference.to_owned(),
            image_id: format!("{reference}@sha256:{:064x}", reference.len()),
            downloaded,
            size: 1024,
            handle: format!("handle-{reference}"),
        }
    }

    /// Puts `reference` on the node as pulled with `credential` (`None`: public).
    pub fn hold(&self, reference: &str, credential: Option<&Credential>) {
        let ids = credential.map(Credential::id).into_iter().collect();
        lock(&self.present).insert(reference.to_owned(), ids);
    }

    fn status(&self, reference: &str) -> Result<Option<ImageStatus>, ImageError> {
        if reference.is_empty() || reference.contains(' ') {
            return Err(ImageError::InvalidName(format!(
                "invalid reference format: {reference:?}"
            )));
        }
        Ok(lock(&self.present).get(reference).map(|ids| ImageStatus {
            image: Self::image(reference, false),
            pulled_with: ids.clone(),
        }))
    }

    async fn pull(
        self: Arc<Self>,
        reference: String,
        credential: Option<Credential>,
    ) -> Result<Image, ImageError> {
        self.log(Did::Pulled(reference.clone()));
        let outcome = lock(&self.pulls)
            .get_mut(&reference)
            .and_then(next)
            .unwrap_or(Pull::Ok(Duration::ZERO));
        match outcome {
            Pull::Ok(took) => {
                tokio::time::sleep(took).await;
                self.hold(&reference, credential.as_ref());
                Ok(Self::image(&reference, true))
            }
            Pull::Fails => Err(ImageError::Pull(format!(
                "failed to resolve reference \"{reference}\": not found"
            ))),
            Pull::Hangs => std::future::pending().await,
        }
    }
}

/// [`Runtime`] for an `Arc` of the fake, so that a test keeps its own handle.
pub(crate) struct Shared(pub Arc<FakeRuntime>);

impl Runtime for Shared {
    fn version(&self) -> String {
        "fake://0.0.0".to_owned()
    }

    fn image_status<'a>(
        &'a self,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<Option<ImageStatus>, ImageError>> {
        Box::pin(std::future::ready(self.0.status(reference)))
    }

    fn pull_image<'a>(
        &'a self,
        reference: &'a str,
        credential: Option<&'a Credential>,
    ) -> BoxFuture<'a, Result<Image, ImageError>> {
        Box::pin(
            self.0
                .clone()
                .pull(reference.to_owned(), credential.cloned()),
        )
    }

    fn run_pod_sandbox(&self, config: SandboxConfig) -> BoxFuture<'_, Result<String, String>> {
        let failures = &self.0.sandbox_failures;
        let failed = failures
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if failed {
            return Box::pin(std::future::ready(Err("scripted failure".to_owned())));
        }
        self.0.log(Did::SandboxUp(config.uid.clone()));
        Box::pin(std::future::ready(Ok(format!("sandbox-{}", config.uid))))
    }

    fn remove_pod_sandbox<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ()> {
        let uid = id.strip_prefix("sandbox-").unwrap_or(id).to_owned();
        self.0.log(Did::SandboxDown(uid));
        Box::pin(std::future::ready(()))
    }

    fn start_container(&self, run: ContainerRun) -> BoxFuture<'_, Result<ContainerHandle, String>> {
        let fake = self.0.clone();
        Box::pin(async move {
            let name = run.name.clone();
            let id = format!("fake://{}-{}-{}", run.sandbox_id, run.name, run.attempt);
            let script = lock(&fake.scripts)
                .get_mut(&name)
                .and_then(next)
                .unwrap_or(Script::Exit(Duration::ZERO, 0));
            match script {
                Script::StartFails => return Err("failed to instantiate: scripted".to_owned()),
                Script::StartHangs => std::future::pending::<()>().await,
                _ => {}
            }
            fake.log(Did::Started(name.clone()));
            let killed = CancellationToken::new();
            let kill = killed.clone();
            let exit = async move {
                let (after, exit) = match script {
                    Script::Exit(after, code) => (
                        Some(after),
                        ContainerExit {
                            code,
                            reason: if code == 0 { "Completed" } else { "Error" }.to_owned(),
                            message: None,
                        },
                    ),
                    Script::Trap(after) => (
                        Some(after),
                        ContainerExit {
                            code: 134,
                            reason: "TrapUnreachableCodeReached".to_owned(),
                            message: Some(
                                "wasm trap: wasm `unreachable` instruction executed".to_owned(),
                            ),
                        },
                    ),
                    _ => (
                        None,
                        ContainerExit {
                            code: 0,
                            reason: String::new(),
                            message: None,
                        },
                    ),
                };
                let ran = async {
                    match after {
                        Some(after) => tokio::time::sleep(after).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = ran => {
                        fake.log(Did::Exited(name));
                        exit
                    }
                    () = killed.cancelled() => {
                        fake.log(Did::Killed(name));
                        ContainerExit { code: 137, reason: "Error".to_owned(), message: None }
                    }
                }
            };
            Ok(ContainerHandle::new(id, move || kill.cancel(), exit))
        })
    }

    fn counters(&self) -> Vec<Counter> {
        Vec::new()
    }

    fn images(&self) -> BoxFuture<'_, Vec<StoredImage>> {
        Box::pin(std::future::ready(Vec::new()))
    }

    fn remove_image<'a>(&'a self, _handle: &'a str) -> BoxFuture<'a, Result<u64, String>> {
        Box::pin(std::future::ready(Ok(0)))
    }

    fn image_fs_usage(&self) -> BoxFuture<'_, ImageFsUsage> {
        Box::pin(std::future::ready(ImageFsUsage {
            capacity: 1 << 40,
            used: 0,
        }))
    }
}

/// One pod's worker over a [`MemoryApi`] and a [`FakeRuntime`].
pub(crate) struct Harness {
    pub api: Arc<MemoryApi>,
    pub runtime: Arc<FakeRuntime>,
    pub ctx: Arc<super::Ctx>,
    _dir: tempfile::TempDir,
}

/// A running worker: its pod (to change, e.g. to delete it), its stop and evict signals.
pub(crate) struct Running {
    pub pod: watch::Sender<Pod>,
    pub stop: CancellationToken,
    pub evict: watch::Sender<Option<String>>,
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
            cert_file: None,
            private_key_file: None,
            client_ca_file: None,
            auth: crate::auth::AuthConfig::default(),
            max_pods: 110,
            node_labels: std::collections::BTreeMap::new(),
            image_gc: crate::images::GcPolicy::default(),
            lease_renew_interval: Duration::from_secs(10),
            status_report_interval: Duration::from_secs(60),
            sync_frequency: Duration::from_secs(60),
            event_qps: 0,
            event_burst: 0,
            eviction: crate::eviction::Settings::default(),
        };
        let cluster: Arc<dyn ClusterApi> = api.clone();
        let ctx = Arc::new(super::Ctx {
            api: cluster.clone(),
            config: Arc::new(config),
            runtime: Arc::new(Shared(runtime.clone())),
            images: crate::images::ImageIndex::default(),
            logs: crate::logs::LogIndex::default(),
            pressure: crate::eviction::PressureHandle::default(),
            recorder: Arc::new(crate::events::Recorder::new(cluster, "node-a").with_limits(0, 0)),
            objects: crate::volumes::ObjectCache::default(),
            facts: crate::volumes::downward::NodeFacts {
                ip: std::net::Ipv4Addr::new(10, 0, 0, 7).into(),
                cpus: 2,
                memory: 1 << 30,
            },
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
        let (evict, evicted) = watch::channel(None);
        let stop = CancellationToken::new();
        let task = tokio::spawn(super::worker::run(
            self.ctx.clone(),
            rx,
            stop.clone(),
            evicted,
            misfit,
        ));
        Running {
            pod: tx,
            stop,
            evict,
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
