//! Pods bound to this node: the watch loop, which alone holds one worker per pod (other
//! parts ask it through a [`PodsHandle`]), and the workers.

pub mod admission;
mod container;
pub mod dns;
mod env;
mod grpc_health;
#[cfg(test)]
mod machine_tests;
mod mirror;
pub mod probe;
pub mod record;
mod sequence;
pub mod service_env;
pub mod spec;
pub mod static_pods;
pub mod status;
mod termination;
#[cfg(test)]
pub(crate) mod testing;
pub(crate) mod uid;
mod worker;
mod writer;
pub use writer::StatusBook;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::eviction::PressureHandle;
use crate::images::ImageIndex;
use crate::logs::LogIndex;
use crate::{Config, Runtime};
pub(crate) use mirror::{MirrorApi, Mirrors, Parts as MirrorParts, run as mirror_run};
pub(crate) use worker::qos_class;

/// A pod's worker, owned by the watch loop ([`run`]).
#[derive(Debug)]
struct Worker {
    pod: watch::Sender<Pod>,
    /// Cancelled when the pod vanished from the API or the node shuts down: kill now.
    stop: CancellationToken,
    /// Set when the pod is failed from outside: evicted (with the eviction message) or
    /// shut down with the node.
    fail: watch::Sender<Option<worker::Failure>>,
    /// True once the worker is done with the pod's containers and its final status is
    /// written (or it never ran them).
    done: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

/// What other parts of the node agent ask of the watch loop, which alone holds the
/// workers.
#[derive(Debug)]
pub(crate) enum Command {
    /// The pods this node runs that are neither finished nor being deleted.
    ActivePods(oneshot::Sender<Vec<Pod>>),
    /// Evict the pod of this UID: its worker kills its containers and reports it
    /// `Failed` with reason `Evicted` and the message.
    Evict { uid: String, message: String },
    /// Every pod this node holds (static ones included), as its worker last saw it.
    AllPods(oneshot::Sender<Vec<Pod>>),
    /// Fail these pods for the node's shutdown, each killed with its grace period;
    /// answered with a receiver per pod that turns true once it is done.
    Shutdown {
        pods: Vec<(String, std::time::Duration)>,
        reply: oneshot::Sender<Vec<watch::Receiver<bool>>>,
    },
}

/// The way to the watch loop's workers (the eviction manager's).
#[derive(Debug, Clone)]
pub struct PodsHandle(mpsc::Sender<Command>);

impl PodsHandle {
    /// A handle and the receiving end for [`run`].
    pub(crate) fn new() -> (Self, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(64);
        (Self(tx), rx)
    }

    /// The pods this node runs that are neither finished nor being deleted (none once
    /// the watch loop has stopped).
    pub(crate) async fn active_pods(&self) -> Vec<Pod> {
        let (tx, rx) = oneshot::channel();
        if self.0.send(Command::ActivePods(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Every pod this node holds (none once the watch loop has stopped).
    pub(crate) async fn all_pods(&self) -> Vec<Pod> {
        let (tx, rx) = oneshot::channel();
        if self.0.send(Command::AllPods(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Evicts `pod` (see [`Command::Evict`]).
    pub(crate) async fn evict(&self, pod: &Pod, message: String) {
        let uid = pod.uid().unwrap_or_default();
        let _ = self.0.send(Command::Evict { uid, message }).await;
    }

    /// Shuts `pods` (UIDs, each with its grace period) down for the node's shutdown (see
    /// [`Command::Shutdown`]); a receiver per pod found.
    pub(crate) async fn shut_down(
        &self,
        pods: Vec<(String, std::time::Duration)>,
    ) -> Vec<watch::Receiver<bool>> {
        let (reply, rx) = oneshot::channel();
        if self
            .0
            .send(Command::Shutdown { pods, reply })
            .await
            .is_err()
        {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

/// `namespace_name_uid`, the kubelet's directory name for a pod; a UID that could name
/// another place is replaced by a hash of it (see [`uid::path_part`]).
pub(crate) fn pod_dir_name(pod: &Pod) -> String {
    format!(
        "{}_{}_{}",
        pod.namespace().unwrap_or_default(),
        pod.name_any(),
        uid::path_part(&pod.uid().unwrap_or_default())
    )
}

/// What every worker of this node shares.
pub(crate) struct Ctx {
    /// What the pod machinery reads and writes in the API.
    pub api: Arc<dyn crate::api::ClusterApi>,
    pub config: Arc<Config>,
    pub runtime: Arc<dyn Runtime>,
    /// The node's images and their users.
    pub images: ImageIndex,
    /// Where each container logs.
    pub logs: LogIndex,
    /// The pods' sandboxes while they are up (for port forwarding).
    pub sandboxes: crate::sandboxes::SandboxIndex,
    /// The running containers' usage readers (for the resource endpoints).
    pub stats: crate::stats::StatsIndex,
    /// The node's pressure conditions, set by the eviction manager (admission).
    pub pressure: PressureHandle,
    /// Whether the node is shutting down (admission).
    pub shutting_down: crate::shutdown::ShuttingDown,
    pub recorder: Arc<crate::events::Recorder>,
    /// ConfigMaps and Secrets lately read for volumes.
    pub objects: crate::volumes::ObjectCache,
    /// What the downward API reads of the node, read once at start.
    pub facts: crate::volumes::downward::NodeFacts,
    /// The agent is stopping: pods' workloads are killed but their sandboxes stay (a
    /// restarted agent takes them up again, addresses and all).
    pub stopping: CancellationToken,
    /// The kubelet's metrics (pod start, pod worker durations).
    pub metrics: crate::metrics::KubeletMetrics,
    /// The last status of each pod (`/pods`).
    pub statuses: writer::StatusBook,
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

/// The static pods (the file source's reading) and, with an API server, where the
/// watch loop passes on the mirror pods it sees.
pub(crate) struct Statics {
    pub pods: watch::Receiver<Vec<Pod>>,
    pub mirrors: Arc<mirror::Mirrors>,
    pub seen: Option<mpsc::UnboundedSender<mirror::Seen>>,
}

/// What the watch loop is given: the parts of the node agent its workers share.
pub(crate) struct Parts {
    /// The API server's client; `None` in standalone mode (static pods only).
    pub client: Option<Client>,
    pub statics: Option<Statics>,
    pub api: Arc<dyn crate::api::ClusterApi>,
    pub config: Arc<Config>,
    pub runtime: Arc<dyn Runtime>,
    pub images: ImageIndex,
    pub logs: LogIndex,
    pub sandboxes: crate::sandboxes::SandboxIndex,
    pub stats: crate::stats::StatsIndex,
    pub pressure: PressureHandle,
    pub shutting_down: crate::shutdown::ShuttingDown,
    pub recorder: Arc<crate::events::Recorder>,
    /// The kubelet's metrics (pod start, pod worker durations).
    pub metrics: crate::metrics::KubeletMetrics,
    /// The last status of each pod (`/pods`).
    pub statuses: writer::StatusBook,
}

/// Watches the pods bound to this node and keeps one worker per pod (the loop alone holds
/// them), answering `commands`, until `shutdown`; then kills every pod's workloads and
/// waits for the workers to end.
pub(crate) async fn run(
    parts: Parts,
    mut commands: mpsc::Receiver<Command>,
    shutdown: CancellationToken,
) {
    let Parts {
        client,
        statics,
        api,
        config,
        runtime,
        images,
        logs,
        sandboxes,
        stats,
        pressure,
        shutting_down,
        recorder,
        metrics,
        statuses,
    } = parts;
    let facts = crate::node::load_host_facts().await;
    let ctx = Arc::new(Ctx {
        recorder,
        api,
        config: config.clone(),
        runtime,
        images,
        logs,
        sandboxes,
        stats,
        pressure,
        shutting_down,
        objects: crate::volumes::ObjectCache::default(),
        facts: crate::volumes::downward::NodeFacts {
            ip: config.node_ip,
            pod_ip: None,
            cpus: facts.cpus,
            memory: facts.memory,
        },
        stopping: shutdown.clone(),
        metrics,
        statuses,
    });
    // Pods' logs and volumes (their secrets and tokens too) are for this agent alone.
    let root = config.data_dir.join("pods");
    let restricted = crate::blocking::run(move || {
        std::fs::create_dir_all(&root)?;
        std::fs::set_permissions(
            &root,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o750),
        )
    });
    if let Err(e) = restricted.await.and_then(|r| r) {
        tracing::warn!(error = %e, "cannot restrict the pods directory");
    }
    let selector = format!("spec.nodeName={}", config.node_name);
    let mut workers: HashMap<String, Worker> = HashMap::new();
    let mut listed: HashSet<String> = HashSet::new();
    let standalone = client.is_none();
    let mut events = match client {
        Some(client) => watcher(
            Api::<Pod>::all(client),
            watcher::Config::default().fields(&selector),
        )
        .default_backoff()
        .boxed(),
        None => futures::stream::pending().boxed(),
    };
    let (mut static_pods, mirrors, seen) = match statics {
        Some(s) => (Some(s.pods), Some(s.mirrors), s.seen),
        None => (None, None, None),
    };
    // Static pods by UID; they run before the API's pods are listed.
    let mut static_uids: HashSet<String> = HashSet::new();
    if let (Some(pods), Some(mirrors)) = (static_pods.as_mut(), mirrors.as_deref()) {
        let desired = pods.borrow_and_update().clone();
        apply_statics(&ctx, &mut workers, &mut static_uids, mirrors, desired);
    }
    if standalone {
        remove_orphans(&ctx, &workers).await;
    }
    let tell = |event: mirror::Seen| {
        if let Some(seen) = &seen {
            let _ = seen.send(event);
        }
    };
    let mut commands_open = true;
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => break,
            command = commands.recv(), if commands_open => {
                match command {
                    Some(command) => answer(&workers, command),
                    None => commands_open = false,
                }
                continue;
            }
            changed = static_change(static_pods.as_mut()) => {
                match (changed, static_pods.as_mut(), mirrors.as_deref()) {
                    (Some(()), Some(pods), Some(mirrors)) => {
                        let desired = pods.borrow_and_update().clone();
                        apply_statics(&ctx, &mut workers, &mut static_uids, mirrors, desired);
                    }
                    _ => static_pods = None,
                }
                continue;
            }
            event = events.next() => event,
        };
        match event {
            // Mirror pods are never run: their static pods are.
            Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)))
                if static_pods::is_mirror(&pod) =>
            {
                tell(mirror::Seen::Applied(pod));
            }
            Some(Ok(watcher::Event::Delete(pod))) if static_pods::is_mirror(&pod) => {
                tell(mirror::Seen::Deleted(pod));
            }
            Some(Ok(watcher::Event::Apply(pod))) => dispatch(&ctx, &mut workers, pod),
            Some(Ok(watcher::Event::InitApply(pod))) => {
                listed.insert(pod.uid().unwrap_or_default());
                dispatch(&ctx, &mut workers, pod);
            }
            Some(Ok(watcher::Event::Delete(pod))) => {
                let worker = workers.remove(&pod.uid().unwrap_or_default());
                gone(&ctx, pod, worker);
            }
            Some(Ok(watcher::Event::Init)) => {
                listed.clear();
                tell(mirror::Seen::Relist);
            }
            Some(Ok(watcher::Event::InitDone)) => {
                tell(mirror::Seen::Listed);
                // A (re)list: pods deleted while the watch was down are not announced,
                // they are just missing from the list. Static pods are never listed.
                let missed: Vec<String> = workers
                    .keys()
                    .filter(|uid| !listed.contains(*uid) && !static_uids.contains(*uid))
                    .cloned()
                    .collect();
                for uid in missed {
                    if let Some(worker) = workers.remove(&uid) {
                        let pod = worker.pod.borrow().clone();
                        gone(&ctx, pod, Some(worker));
                    }
                }
                remove_orphans(&ctx, &workers).await;
            }
            Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; retrying"),
            None => break,
        }
    }
    // Node shutdown: every pod's workloads killed, the workers waited for.
    for w in workers.values() {
        w.stop.cancel();
    }
    for (_, w) in workers {
        let _ = w.task.await;
    }
}

/// The next change of the static pods: `Some` when they changed, `None` once their source
/// is gone. Without static pods it never completes, so that the pod loop's `select!` waits
/// on its other branches (a future that completed at once here made it spin a whole core).
async fn static_change(pods: Option<&mut watch::Receiver<Vec<Pod>>>) -> Option<()> {
    match pods {
        Some(pods) => pods.changed().await.ok(),
        None => std::future::pending().await,
    }
}

/// Runs the static pods of `desired` that do not run yet, and stops those that are no
/// longer there (a changed manifest is a new UID: the old pod stops, the new one starts).
fn apply_statics(
    ctx: &Arc<Ctx>,
    workers: &mut HashMap<String, Worker>,
    static_uids: &mut HashSet<String>,
    mirrors: &mirror::Mirrors,
    desired: Vec<Pod>,
) {
    let uids: Vec<String> = desired.iter().filter_map(ResourceExt::uid).collect();
    // Known as static before their workers write a status.
    mirrors.set_static(&uids);
    for uid in static_uids.iter() {
        if !uids.contains(uid)
            && let Some(worker) = workers.remove(uid)
        {
            let pod = worker.pod.borrow().clone();
            tracing::info!(pod = %pod.name_any(), "static pod removed");
            gone(ctx, pod, Some(worker));
        }
    }
    for pod in desired {
        if !workers.contains_key(&pod.uid().unwrap_or_default()) {
            tracing::info!(pod = %pod.name_any(), "static pod added");
            dispatch(ctx, workers, pod);
        }
    }
    *static_uids = uids.into_iter().collect();
}

/// Answers a command of another part of the node agent.
fn answer(workers: &HashMap<String, Worker>, command: Command) {
    match command {
        Command::ActivePods(reply) => {
            let active = workers
                .values()
                .map(|w| w.pod.borrow().clone())
                .filter(|p| !status::is_terminal(p) && p.metadata.deletion_timestamp.is_none())
                .collect();
            let _ = reply.send(active);
        }
        Command::AllPods(reply) => {
            let _ = reply.send(workers.values().map(|w| w.pod.borrow().clone()).collect());
        }
        Command::Evict { uid, message } => {
            if let Some(w) = workers.get(&uid) {
                fail(w, worker::Failure::Evicted(message));
            }
        }
        Command::Shutdown { pods, reply } => {
            let done = pods
                .into_iter()
                .filter_map(|(uid, grace)| {
                    let w = workers.get(&uid)?;
                    fail(w, worker::Failure::NodeShutdown { grace });
                    Some(w.done.clone())
                })
                .collect();
            let _ = reply.send(done);
        }
    }
}

/// Fails a worker's pod from outside; the first failure given wins.
fn fail(w: &Worker, failure: worker::Failure) {
    w.fail.send_if_modified(|f| {
        let first = f.is_none();
        if first {
            *f = Some(failure);
        }
        first
    });
}

/// A pod that is gone from the API: its workloads stop, then its records, logs and
/// volumes go (a container stopping records its logs one last time).
fn gone(ctx: &Ctx, pod: Pod, worker: Option<Worker>) {
    let dir = ctx.pod_dir(&pod);
    let (images, logs) = (ctx.images.clone(), ctx.logs.clone());
    let sandboxes = ctx.sandboxes.clone();
    let statuses = ctx.statuses.clone();
    tokio::spawn(async move {
        if let Some(w) = worker {
            w.stop.cancel();
            let _ = w.task.await;
        }
        let namespace = pod.namespace().unwrap_or_default();
        sandboxes.forget(&namespace, &pod.name_any(), &pod.uid().unwrap_or_default());
        logs.forget(&namespace, &pod.name_any(), &dir);
        images.forget_pod(&pod.uid().unwrap_or_default());
        statuses.forget(&pod.uid().unwrap_or_default());
        remove_pod_dir(&dir).await;
    });
}

/// Removes a pod's directory (or its volumes' directory) on a blocking thread, with the
/// walk that no depth of tree a workload wrote can overflow (`remove_dir_all` could).
pub(crate) async fn remove_pod_dir(dir: &std::path::Path) {
    let owned = dir.to_owned();
    let removed = crate::blocking::run(move || {
        // Memory-backed volumes are mounts: unmounted first, or the removal stops at them.
        crate::volumes::memory::unmount_all(&owned);
        crate::volumes::remove::remove_tree(&owned)
    })
    .await;
    match removed.and_then(|r| r) {
        Ok(()) => tracing::debug!(dir = %dir.display(), "pod directory removed"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot remove pod directory"),
    }
}

/// Removes the directories (logs, volumes) of pods this node no longer has: those
/// deleted while the node agent was down. Those of pods it still has are kept, so a
/// running pod's `emptyDir` survives a restart of the agent.
async fn remove_orphans(ctx: &Ctx, workers: &HashMap<String, Worker>) {
    // Sandboxes (pod networks) of pods that are gone, also from before a restart.
    for uid in ctx.runtime.list_pod_sandboxes().await {
        if !workers.contains_key(&uid) {
            tracing::info!(pod = %uid, "removing the sandbox of a pod that is gone");
            ctx.runtime.remove_pod_sandbox(&uid).await;
        }
    }
    let live: HashSet<String> = workers
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

fn dispatch(ctx: &Arc<Ctx>, workers: &mut HashMap<String, Worker>, pod: Pod) {
    let uid = pod.uid().unwrap_or_default();
    if let Some(w) = workers.get(&uid) {
        w.pod.send_replace(pod);
        return;
    }
    // The pods are borrowed, not cloned: a clone of every pod for every new one made
    // admission quadratic in the number of pods.
    let misfit = {
        let seen: Vec<_> = workers.values().map(|w| w.pod.borrow()).collect();
        let others: Vec<&Pod> = seen
            .iter()
            .map(|p| &**p)
            .filter(|p| !status::is_terminal(p))
            .collect();
        uid::admit(&pod)
            .or_else(|| admission::fit(&pod, &others, ctx.config.max_pods as usize))
            .or_else(|| crate::eviction::admit(&pod, ctx.pressure.get()))
            .or_else(|| crate::shutdown::admit(ctx.shutting_down.get()))
    };
    let (tx, rx) = watch::channel(pod);
    let (fail, failed) = watch::channel(None);
    let (finished, done) = watch::channel(false);
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker::run(
        ctx.clone(),
        rx,
        stop.clone(),
        worker::Outside { failed, finished },
        misfit,
    ));
    workers.insert(
        uid,
        Worker {
            pod: tx,
            stop,
            fail,
            done,
            task,
        },
    );
}

#[cfg(test)]
mod loop_tests {
    use super::*;

    #[tokio::test]
    async fn without_static_pods_the_loop_has_nothing_to_wake_it() {
        let mut change = std::pin::pin!(static_change(None));
        assert!(futures::poll!(change.as_mut()).is_pending());
        // Still nothing later: the branch must never complete.
        tokio::task::yield_now().await;
        assert!(futures::poll!(change.as_mut()).is_pending());
    }

    #[tokio::test]
    async fn static_pods_wake_it_on_a_change_and_once_when_their_source_goes() {
        let (tx, mut rx) = watch::channel(Vec::<Pod>::new());
        {
            let mut change = std::pin::pin!(static_change(Some(&mut rx)));
            assert!(futures::poll!(change.as_mut()).is_pending());
            tx.send_replace(vec![Pod::default()]);
            assert_eq!(change.await, Some(()));
        }
        rx.borrow_and_update();
        drop(tx);
        assert_eq!(static_change(Some(&mut rx)).await, None);
    }
}
