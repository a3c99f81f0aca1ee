//! Pods bound to this node: the watch, one worker per pod, and the shared registry the
//! kubelet API reads logs through.

pub mod admission;
mod container;
mod env;
#[cfg(test)]
mod machine_tests;
pub mod record;
mod sequence;
pub mod spec;
pub mod status;
mod termination;
#[cfg(test)]
mod testing;
mod worker;
mod writer;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ContainerImage, Pod};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Config, Runtime};
pub(crate) use worker::qos_class;

/// Where one container's logs are and whether it is running now.
#[derive(Debug, Clone)]
pub struct ContainerLogs {
    /// Directory holding `<restart count>.log` files.
    pub dir: PathBuf,
    /// Restart count of the current (or last) run.
    pub restart_count: i32,
    /// Whether the current run is still going (a `follow` keeps reading while it is).
    pub running: bool,
}

impl ContainerLogs {
    /// The log file of the current run, or of the one before it (`previous`).
    #[must_use]
    pub fn path(&self, previous: bool) -> Option<PathBuf> {
        let n = if previous {
            self.restart_count - 1
        } else {
            self.restart_count
        };
        (n >= 0).then(|| self.dir.join(format!("{n}.log")))
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// `(namespace, name)` → container name → logs.
    logs: HashMap<(String, String), HashMap<String, ContainerLogs>>,
    /// Image ID → what the node holds: `node.status.images` and the image GC's view.
    images: BTreeMap<String, ImageEntry>,
    /// Pod UID → handles of the images its containers use.
    pod_images: HashMap<String, HashSet<String>>,
}

/// An image the node holds, as the node agent tracks it.
#[derive(Debug, Clone)]
pub struct ImageEntry {
    /// References and the image ID.
    pub names: Vec<String>,
    /// Size in bytes.
    pub size: u64,
    /// The runtime's handle of its content.
    pub handle: String,
    /// When a container last used it (or when it was found).
    pub last_used: std::time::Instant,
}

/// State shared between pod workers, the node heartbeat and the kubelet API.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
    workers: Arc<tokio::sync::Mutex<HashMap<String, Worker>>>,
    /// The node's pressure conditions, set by the eviction manager.
    pub(crate) pressure: crate::eviction::PressureHandle,
}

#[derive(Debug)]
struct Worker {
    pod: watch::Sender<Pod>,
    /// Cancelled when the pod vanished from the API or the node shuts down: kill now.
    stop: CancellationToken,
    /// Set to the eviction message when the eviction manager evicts the pod.
    evict: watch::Sender<Option<String>>,
    task: JoinHandle<()>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The logs of `container` in pod `namespace/name`, if this node runs it.
    #[must_use]
    pub fn container_logs(
        &self,
        namespace: &str,
        name: &str,
        container: &str,
    ) -> Option<ContainerLogs> {
        self.lock()
            .logs
            .get(&(namespace.to_owned(), name.to_owned()))
            .and_then(|c| c.get(container).cloned())
    }

    pub(crate) fn set_container_logs(
        &self,
        namespace: &str,
        name: &str,
        container: &str,
        logs: ContainerLogs,
    ) {
        self.lock()
            .logs
            .entry((namespace.to_owned(), name.to_owned()))
            .or_default()
            .insert(container.to_owned(), logs);
    }

    fn forget_pod(&self, namespace: &str, name: &str, uid: &str) {
        let mut inner = self.lock();
        inner.logs.remove(&(namespace.to_owned(), name.to_owned()));
        inner.pod_images.remove(uid);
    }

    /// Records that the node holds an image (pulled, or found on disk at start) and that
    /// it was used now.
    pub fn add_image(&self, reference: &str, image_id: &str, size: u64, handle: &str) {
        let mut inner = self.lock();
        let entry = inner
            .images
            .entry(image_id.to_owned())
            .or_insert_with(|| ImageEntry {
                names: Vec::new(),
                size,
                handle: handle.to_owned(),
                last_used: std::time::Instant::now(),
            });
        entry.size = size;
        entry.handle = handle.to_owned();
        entry.last_used = std::time::Instant::now();
        for name in [image_id, reference] {
            if !entry.names.iter().any(|n| n == name) {
                entry.names.push(name.to_owned());
            }
        }
    }

    /// Records that pod `uid` uses the image content `handle`, so the image GC keeps it.
    pub(crate) fn use_image(&self, uid: &str, handle: &str) {
        self.lock()
            .pod_images
            .entry(uid.to_owned())
            .or_default()
            .insert(handle.to_owned());
    }

    /// Handles of the images some pod of this node uses.
    #[must_use]
    pub fn images_in_use(&self) -> HashSet<String> {
        self.lock().pod_images.values().flatten().cloned().collect()
    }

    /// The images the node holds, with their use times.
    #[must_use]
    pub fn image_entries(&self) -> Vec<ImageEntry> {
        self.lock().images.values().cloned().collect()
    }

    /// Forgets every image with content `handle` (removed by the image GC).
    pub fn remove_images(&self, handle: &str) {
        self.lock().images.retain(|_, e| e.handle != handle);
    }

    /// Images this node holds, for `node.status.images`, largest first as the kubelet
    /// lists them, and bounded as the kubelet bounds them: the [`MAX_STATUS_IMAGES`]
    /// largest, each with at most [`MAX_NAMES_PER_IMAGE`] names, so that many images (or
    /// many tags of one) cannot make the node object grow without bound.
    #[must_use]
    pub fn images(&self) -> Vec<ContainerImage> {
        status_images(self.image_entries())
    }

    /// The pods this node runs that are neither finished nor being deleted.
    pub(crate) async fn active_pods(&self) -> Vec<Pod> {
        self.workers
            .lock()
            .await
            .values()
            .map(|w| w.pod.borrow().clone())
            .filter(|p| !status::is_terminal(p) && p.metadata.deletion_timestamp.is_none())
            .collect()
    }

    /// Evicts `pod`: its worker kills its containers and reports it `Failed` with reason
    /// `Evicted` and `message`.
    pub(crate) async fn evict(&self, pod: &Pod, message: String) {
        let uid = pod.uid().unwrap_or_default();
        if let Some(w) = self.workers.lock().await.get(&uid) {
            w.evict.send_if_modified(|m| {
                let first = m.is_none();
                if first {
                    *m = Some(message);
                }
                first
            });
        }
    }

    /// Kills every pod's workloads and waits for the workers to end (node shutdown).
    pub async fn kill_all(&self) {
        let workers: Vec<Worker> = self.workers.lock().await.drain().map(|(_, w)| w).collect();
        for w in &workers {
            w.stop.cancel();
        }
        for w in workers {
            let _ = w.task.await;
        }
    }
}

/// The kubelet's `nodeStatusMaxImages` default: images listed in `node.status.images`.
pub const MAX_STATUS_IMAGES: usize = 50;
/// The kubelet's `maxNamesPerImageInNodeStatus`: names listed for one image.
pub const MAX_NAMES_PER_IMAGE: usize = 5;

fn status_images(mut entries: Vec<ImageEntry>) -> Vec<ContainerImage> {
    entries.sort_by_key(|e| std::cmp::Reverse(e.size));
    entries
        .into_iter()
        .take(MAX_STATUS_IMAGES)
        .map(|mut e| {
            e.names.truncate(MAX_NAMES_PER_IMAGE);
            ContainerImage {
                names: Some(e.names),
                size_bytes: i64::try_from(e.size).ok(),
            }
        })
        .collect()
}

/// `namespace_name_uid`, the kubelet's directory name for a pod.
pub(crate) fn pod_dir_name(pod: &Pod) -> String {
    format!(
        "{}_{}_{}",
        pod.namespace().unwrap_or_default(),
        pod.name_any(),
        pod.uid().unwrap_or_default()
    )
}

/// What every worker of this node shares.
pub(crate) struct Ctx {
    /// What the pod machinery reads and writes in the API.
    pub api: Arc<dyn crate::api::ClusterApi>,
    pub config: Arc<Config>,
    pub runtime: Arc<dyn Runtime>,
    pub registry: Registry,
    pub recorder: Arc<crate::events::Recorder>,
    /// ConfigMaps and Secrets lately read for volumes.
    pub objects: crate::volumes::ObjectCache,
    /// What the downward API reads of the node, read once at start.
    pub facts: crate::volumes::downward::NodeFacts,
}

impl Ctx {
    /// What volumes read their content through; objects cached up to `max_age` are used
    /// (zero: read everything afresh).
    pub fn volume_context(&self, max_age: std::time::Duration) -> crate::volumes::Context<'_> {
        crate::volumes::Context {
            api: &*self.api,
            facts: self.facts,
            cache: &self.objects,
            max_age,
        }
    }

    /// The directory of `pod`'s logs and volumes on this node.
    pub fn pod_dir(&self, pod: &Pod) -> PathBuf {
        self.config.data_dir.join("pods").join(pod_dir_name(pod))
    }
}

/// Watches the pods bound to this node and keeps one worker per pod, until `shutdown`.
pub async fn run(
    client: Client,
    api: Arc<dyn crate::api::ClusterApi>,
    config: Arc<Config>,
    runtime: Arc<dyn Runtime>,
    registry: Registry,
    recorder: Arc<crate::events::Recorder>,
    shutdown: CancellationToken,
) {
    let ctx = Arc::new(Ctx {
        recorder,
        api,
        config: config.clone(),
        runtime,
        registry: registry.clone(),
        objects: crate::volumes::ObjectCache::default(),
        facts: crate::volumes::downward::NodeFacts {
            ip: config.node_ip,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
            memory: crate::node::memory_bytes(),
        },
    });
    // Pods' logs and volumes (their secrets and tokens too) are for this agent alone.
    let root = config.data_dir.join("pods");
    if let Err(e) = std::fs::create_dir_all(&root).and_then(|()| {
        std::fs::set_permissions(
            &root,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o750),
        )
    }) {
        tracing::warn!(dir = %root.display(), error = %e, "cannot restrict the pods directory");
    }
    let pods: Api<Pod> = Api::all(client);
    let selector = format!("spec.nodeName={}", config.node_name);
    let mut listed: HashSet<String> = HashSet::new();
    let mut events = watcher(pods, watcher::Config::default().fields(&selector))
        .default_backoff()
        .boxed();
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            event = events.next() => event,
        };
        match event {
            Some(Ok(watcher::Event::Apply(pod))) => dispatch(&ctx, pod).await,
            Some(Ok(watcher::Event::InitApply(pod))) => {
                listed.insert(pod.uid().unwrap_or_default());
                dispatch(&ctx, pod).await;
            }
            Some(Ok(watcher::Event::Delete(pod))) => {
                let worker = registry
                    .workers
                    .lock()
                    .await
                    .remove(&pod.uid().unwrap_or_default());
                gone(&ctx, pod, worker);
            }
            Some(Ok(watcher::Event::Init)) => listed.clear(),
            Some(Ok(watcher::Event::InitDone)) => {
                // A (re)list: pods deleted while the watch was down are not announced,
                // they are just missing from the list.
                let missed: Vec<Worker> = {
                    let mut workers = registry.workers.lock().await;
                    let uids: Vec<String> = workers
                        .keys()
                        .filter(|uid| !listed.contains(*uid))
                        .cloned()
                        .collect();
                    uids.iter().filter_map(|uid| workers.remove(uid)).collect()
                };
                for worker in missed {
                    let pod = worker.pod.borrow().clone();
                    gone(&ctx, pod, Some(worker));
                }
                remove_orphans(&ctx).await;
            }
            Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; retrying"),
            None => return,
        }
    }
}

/// A pod that is gone from the API: its workloads stop, then its records, logs and
/// volumes go (a container stopping records its logs one last time).
fn gone(ctx: &Ctx, pod: Pod, worker: Option<Worker>) {
    let dir = ctx.pod_dir(&pod);
    let registry = ctx.registry.clone();
    tokio::spawn(async move {
        if let Some(w) = worker {
            w.stop.cancel();
            let _ = w.task.await;
        }
        let uid = pod.uid().unwrap_or_default();
        registry.forget_pod(&pod.namespace().unwrap_or_default(), &pod.name_any(), &uid);
        remove_pod_dir(&dir).await;
    });
}

pub(crate) async fn remove_pod_dir(dir: &std::path::Path) {
    // Memory-backed volumes are mounts: unmounted first, or the removal stops at them.
    let owned = dir.to_owned();
    let _ = tokio::task::spawn_blocking(move || crate::volumes::memory::unmount_all(&owned)).await;
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => tracing::debug!(dir = %dir.display(), "pod directory removed"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot remove pod directory"),
    }
}

/// Removes the directories (logs, volumes) of pods this node no longer has: those
/// deleted while the node agent was down. Those of pods it still has are kept, so a
/// running pod's `emptyDir` survives a restart of the agent.
async fn remove_orphans(ctx: &Ctx) {
    let live: HashSet<String> = ctx
        .registry
        .workers
        .lock()
        .await
        .values()
        .map(|w| pod_dir_name(&w.pod.borrow()))
        .collect();
    let root = ctx.config.data_dir.join("pods");
    let Ok(mut entries) = tokio::fs::read_dir(&root).await else {
        return;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !live.contains(&name) {
            tracing::info!(pod = %name, "removing the directory of a pod that is gone");
            remove_pod_dir(&entry.path()).await;
        }
    }
}

async fn dispatch(ctx: &Arc<Ctx>, pod: Pod) {
    let uid = pod.uid().unwrap_or_default();
    if let Some(w) = ctx.registry.workers.lock().await.get(&uid) {
        w.pod.send_replace(pod);
        return;
    }
    // The pods are borrowed, not cloned: a clone of every pod for every new one made
    // admission quadratic in the number of pods.
    let misfit = {
        let workers = ctx.registry.workers.lock().await;
        let seen: Vec<_> = workers.values().map(|w| w.pod.borrow()).collect();
        let others: Vec<&Pod> = seen
            .iter()
            .map(|p| &**p)
            .filter(|p| !status::is_terminal(p))
            .collect();
        admission::fit(&pod, &others, ctx.config.max_pods as usize)
            .or_else(|| crate::eviction::admit(&pod, ctx.registry.pressure.get()))
    };
    let (tx, rx) = watch::channel(pod);
    let (evict, evicted) = watch::channel(None);
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker::run(ctx.clone(), rx, stop.clone(), evicted, misfit));
    ctx.registry.workers.lock().await.insert(
        uid,
        Worker {
            pod: tx,
            stop,
            evict,
            task,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_status_lists_the_fifty_largest_images_with_five_names_each() {
        let now = std::time::Instant::now();
        let entries = (0..200u64)
            .map(|i| ImageEntry {
                names: (0..20).map(|n| format!("r/img{i}:t{n}")).collect(),
                size: i,
                handle: format!("h{i}"),
                last_used: now,
            })
            .collect();
        let listed = status_images(entries);
        assert_eq!(listed.len(), MAX_STATUS_IMAGES);
        let sizes: Vec<i64> = listed.iter().filter_map(|i| i.size_bytes).collect();
        let expected: Vec<i64> = (150..200).rev().collect();
        assert_eq!(sizes, expected);
        assert!(
            listed
                .iter()
                .all(|i| i.names.as_ref().map(Vec::len) == Some(MAX_NAMES_PER_IMAGE))
        );
    }
}
