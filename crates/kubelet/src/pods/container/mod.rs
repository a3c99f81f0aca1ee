//! One container's life inside a pod worker: pull, start, wait, restart with back-off.
//!
//! `pull.rs`: the image (the kubelet's image manager: present, pull, back-off, pull
//! secrets); `start.rs`: one run (environment, mounts, start, wait, the terminated state);
//! this file: the restart loop and its back-off.

mod probe;
mod pull;
mod start;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use k8s_openapi::api::core::v1::{Container, ObjectReference, Pod};
use kube::ResourceExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use super::record::{ContainerRecord, Reason, Records, State};
use super::spec::{RestartPolicy, field_path};
use crate::events::EventType;
use crate::runtime::ContainerExit;

/// First back-off delay (image pulls and crash loops), doubled up to [`MAX_BACKOFF`].
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(10);
/// Longest back-off delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A run this long resets the crash-loop back-off.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// First wait before trying again to create a container that could not be (a missing
/// ConfigMap, a bad subPath), doubled up to [`MAX_CREATE_BACKOFF`], about the kubelet's
/// pod sync retry period.
const CREATE_BACKOFF: Duration = Duration::from_secs(1);
const MAX_CREATE_BACKOFF: Duration = Duration::from_secs(10);

/// How one attempt to run the container ended.
enum Run {
    /// It ran and exited (or was killed).
    Exited(ContainerExit),
    /// It could not be created or started; it waits with the reason, to be tried again.
    NotStarted,
}

/// Which container of the pod: an init container or an app container, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub init: bool,
    pub index: usize,
}

/// What a supervisor shares with its pod worker.
pub(crate) struct Shared {
    pub records: Mutex<Records>,
    /// Bumped on every update; the worker and the init sequence wait on it.
    pub changed: watch::Sender<u64>,
    /// The pod's volumes, once set up (before any container starts).
    pub volumes: std::sync::OnceLock<Arc<crate::volumes::Volumes>>,
    /// The pod's sandbox, once the runtime set it up (before any container starts).
    pub sandbox: std::sync::OnceLock<crate::runtime::Sandbox>,
    /// The longest grace a kill may give (the node's shutdown caps it), once set.
    pub grace_cap: std::sync::OnceLock<Duration>,
}

impl Shared {
    pub fn update(&self, slot: Slot, f: impl FnOnce(&mut ContainerRecord)) {
        {
            let mut records = self
                .records
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let list = if slot.init {
                &mut records.init
            } else {
                &mut records.app
            };
            if let Some(r) = list.get_mut(slot.index) {
                f(r);
            }
        }
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn snapshot(&self) -> Records {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn get(&self, slot: Slot) -> Option<ContainerRecord> {
        let records = self
            .records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let list = if slot.init {
            &records.init
        } else {
            &records.app
        };
        list.get(slot.index).cloned()
    }
}

fn reference(pod: &Pod, field_path: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Pod".to_owned()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        resource_version: pod.metadata.resource_version.clone(),
        field_path,
    }
}

/// Runs the container in `slot` under `restart_policy` until it will not run again or
/// `kill` fires.
pub(crate) async fn supervise(
    ctx: Arc<Ctx>,
    pod: Arc<Pod>,
    slot: Slot,
    spec: Container,
    restart_policy: RestartPolicy,
    shared: Arc<Shared>,
    kill: CancellationToken,
) {
    let sup = Supervisor {
        ctx,
        pod,
        slot,
        shared,
        kill,
        spec,
        pulled: std::sync::Mutex::new(None),
    };
    // As the kubelet's back-off: the first restart is immediate, each later one waits
    // 10 s, doubling to 5 min; a run of 10 min forgets the back-off.
    let mut crash_backoff: Option<Duration> = None;
    let mut create_backoff = CREATE_BACKOFF;
    // A container that ran under the node agent before a restart of it (see
    // `sequence::adopted`): its policy decides on that run's exit as on any other.
    let before = sup.shared.get(slot).and_then(|r| r.state.exit_code());
    let mut restarting = before.is_some();
    if let Some(code) = before
        && (!restart_policy.restarts_after(code) || sup.kill.is_cancelled())
    {
        sup.shared.update(slot, |r| r.done = true);
        return;
    }
    loop {
        let Some(image) = sup.pull().await else { break };
        let started = Instant::now();
        let exit = match sup.run_once(&image, restarting).await {
            Run::Exited(exit) => exit,
            Run::NotStarted => {
                // CreateContainerConfigError / CreateContainerError: the kubelet tries
                // again at its next sync of the pod.
                if !sup.sleep(create_backoff).await {
                    break;
                }
                create_backoff = (create_backoff * 2).min(MAX_CREATE_BACKOFF);
                continue;
            }
        };
        create_backoff = CREATE_BACKOFF;
        if !restart_policy.restarts_after(exit.code) || sup.kill.is_cancelled() {
            break;
        }
        if started.elapsed() >= BACKOFF_RESET {
            crash_backoff = None;
        }
        match crash_backoff {
            None => crash_backoff = Some(INITIAL_BACKOFF),
            Some(delay) => {
                if !sup.crash_loop_wait(delay).await {
                    break;
                }
                crash_backoff = Some((delay * 2).min(MAX_BACKOFF));
            }
        }
        restarting = true;
    }
    sup.shared.update(slot, |r| r.done = true);
}

struct Supervisor {
    ctx: Arc<Ctx>,
    pod: Arc<Pod>,
    slot: Slot,
    shared: Arc<Shared>,
    kill: CancellationToken,
    spec: Container,
    /// The `Pulled` event of the image just made available, recorded once the container
    /// runs (in the kubelet's order, Pulled then Created then Started) so that recording
    /// it does not delay the start.
    pulled: std::sync::Mutex<Option<String>>,
}

impl Supervisor {
    fn defer_pulled(&self, note: String) {
        *self
            .pulled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(note);
    }

    async fn record_pulled(&self) {
        let note = self
            .pulled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(note) = note {
            self.event(EventType::Normal, "Pulled", note).await;
        }
    }

    /// An event about the pod itself (no container field path).
    async fn pod_event(&self, type_: EventType, reason: &str, note: String) {
        let object = reference(&self.pod, None);
        self.ctx
            .recorder
            .record(&object, type_, reason, &note)
            .await;
    }

    async fn event(&self, type_: EventType, reason: &str, note: String) {
        let object = reference(&self.pod, Some(field_path(self.slot.init, &self.spec.name)));
        self.ctx
            .recorder
            .record(&object, type_, reason, &note)
            .await;
    }

    /// Shows the container waiting; a finished run moves to `lastState`.
    fn set_waiting(&self, reason: Reason, message: Option<String>) {
        self.shared
            .update(self.slot, |r| r.enter(State::Waiting { reason, message }));
    }

    /// Sleeps unless killed; returns false when killed.
    async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            () = self.kill.cancelled() => false,
            () = tokio::time::sleep(d) => true,
        }
    }

    /// Moves the last run to `lastState`, shows `CrashLoopBackOff` and waits; false when
    /// killed. The restart count rises when the container starts again.
    async fn crash_loop_wait(&self, delay: Duration) -> bool {
        let name = &self.spec.name;
        let pod = format!(
            "{}_{}({})",
            self.pod.name_any(),
            self.pod.namespace().unwrap_or_default(),
            self.pod.uid().unwrap_or_default()
        );
        let message = format!(
            "back-off {}s restarting failed container={name} pod={pod}",
            delay.as_secs()
        );
        self.set_waiting(Reason::CrashLoopBackOff, Some(message));
        self.event(
            EventType::Warning,
            "BackOff",
            format!("Back-off restarting failed container {name} in pod {pod}"),
        )
        .await;
        self.sleep(delay).await
    }
}
