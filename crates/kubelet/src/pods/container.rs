//! One container's life inside a pod worker: pull, start, wait, restart with back-off.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use k8s_openapi::api::core::v1::{Container, ContainerStateTerminated, ObjectReference, Pod};
use kube::ResourceExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use super::spec::{expand, memory_limit, pull_policy};
use super::status::{self, ContainerRecord, Records};
use super::termination;
use crate::events::EventType;
use crate::keyring::{Credential, Keyring};
use crate::now;
use crate::runtime::{ContainerExit, ContainerRun, Image, ImageError, PullPolicy};

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

/// The field path of a container in events: `spec.containers{name}` or
/// `spec.initContainers{name}`.
pub(crate) fn field_path(init: bool, name: &str) -> String {
    let list = if init { "initContainers" } else { "containers" };
    format!("spec.{list}{{{name}}}")
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

/// A duration as Go prints it, truncated to milliseconds: `523ms`, `1.5s`, `1m2.25s`.
#[must_use]
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (minutes, rest) = (ms / 60_000, ms % 60_000);
    let secs = format!("{}.{:03}", rest / 1000, rest % 1000);
    let secs = secs.trim_end_matches('0').trim_end_matches('.');
    if minutes > 0 {
        format!("{minutes}m{secs}s")
    } else {
        format!("{secs}s")
    }
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

/// Runs the container in `slot` under `restart_policy` until it will not run again or
/// `kill` fires.
pub(crate) async fn supervise(
    ctx: Arc<Ctx>,
    pod: Arc<Pod>,
    slot: Slot,
    spec: Container,
    restart_policy: String,
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
    let before = sup.shared.get(slot).and_then(|r| r.state.terminated);
    let mut restarting = before.is_some();
    if let Some(t) = before {
        let again = match restart_policy.as_str() {
            "Never" => false,
            "OnFailure" => t.exit_code != 0,
            _ => true,
        };
        if !again || sup.kill.is_cancelled() {
            sup.shared.update(slot, |r| r.done = true);
            return;
        }
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
        let restart = match restart_policy.as_str() {
            "Never" => false,
            "OnFailure" => exit.code != 0,
            _ => true,
        };
        if !restart || sup.kill.is_cancelled() {
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
    fn set_waiting(&self, reason: &str, message: Option<String>) {
        self.shared.update(self.slot, |r| {
            let previous = std::mem::replace(&mut r.state, status::waiting(reason, message));
            if previous.terminated.is_some() {
                r.last_state = Some(previous);
            }
        });
    }

    /// Sleeps unless killed; returns false when killed.
    async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            () = self.kill.cancelled() => false,
            () = tokio::time::sleep(d) => true,
        }
    }

    /// The pod's pull credentials that match the image, from its `imagePullSecrets`
    /// (which the API server's ServiceAccount admission fills from the service account).
    async fn credentials(&self, reference: &str) -> Vec<Credential> {
        let names: Vec<String> = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.as_ref())
            .into_iter()
            .flatten()
            .map(|r| r.name.clone())
            .filter(|n| !n.is_empty())
            .collect();
        if names.is_empty() {
            return Vec::new();
        }
        let ns = self.pod.namespace().unwrap_or_default();
        let mut ring = Keyring::default();
        let mut missing = Vec::new();
        for name in names {
            match self.ctx.api.secret(&ns, &name).await {
                Ok(Some(secret)) => {
                    if let Err(e) = ring.add_secret(&secret) {
                        tracing::warn!(error = %e, "unusable pull secret");
                        missing.push(name);
                    }
                }
                Ok(None) => {
                    tracing::warn!(secret = %name, "pull secret not found");
                    missing.push(name);
                }
                Err(e) => {
                    tracing::warn!(secret = %name, error = %e, "cannot read pull secret");
                    missing.push(name);
                }
            }
        }
        if !missing.is_empty() {
            let note = format!(
                "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
                missing.join(", ")
            );
            self.pod_event(EventType::Warning, "FailedToRetrieveImagePullSecret", note)
                .await;
        }
        ring.lookup(reference)
    }

    /// Records a pulled or present image and returns it.
    fn took(&self, reference: &str, image: Image) -> Image {
        self.ctx
            .registry
            .add_image(reference, &image.image_id, image.size, &image.handle);
        self.ctx
            .registry
            .use_image(&self.pod.uid().unwrap_or_default(), &image.handle);
        let id = image.image_id.clone();
        self.shared.update(self.slot, |r| r.image_id = id);
        image
    }

    /// Makes the image available as the kubelet's image manager does, retrying with
    /// back-off; `None` when killed. A present image is used unless the policy is
    /// `Always`; `Never` waits (as `ErrImageNeverPull`) until the image appears.
    async fn pull(&self) -> Option<Image> {
        let reference = self.spec.image.clone().unwrap_or_default();
        let policy = pull_policy(&self.spec);
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let credentials = self.credentials(&reference).await;
            if policy != PullPolicy::Always {
                let present = tokio::select! {
                    () = self.kill.cancelled() => return None,
                    r = self.ctx.runtime.pull_image(&reference, PullPolicy::Never, &credentials) => r,
                };
                match present {
                    Ok(image) => {
                        let note =
                            format!("Container image \"{reference}\" already present on machine");
                        self.defer_pulled(note);
                        return Some(self.took(&reference, image));
                    }
                    Err(ImageError::InvalidName(m)) => {
                        if !self
                            .fail_and_wait("InspectFailed", "InvalidImageName", m, &mut backoff)
                            .await
                        {
                            return None;
                        }
                        continue;
                    }
                    Err(_) if policy == PullPolicy::Never => {
                        let m = format!(
                            "Container image \"{reference}\" is not present with pull policy of Never"
                        );
                        let reason = "ErrImageNeverPull";
                        if !self.fail_and_wait(reason, reason, m, &mut backoff).await {
                            return None;
                        }
                        continue;
                    }
                    Err(_) => {}
                }
            }
            self.event(
                EventType::Normal,
                "Pulling",
                format!("Pulling image \"{reference}\""),
            )
            .await;
            let began = Instant::now();
            let result = tokio::select! {
                () = self.kill.cancelled() => return None,
                r = self.ctx.runtime.pull_image(&reference, PullPolicy::Always, &credentials) => r,
            };
            let message = match result {
                Ok(image) => {
                    let took = go_duration(began.elapsed());
                    let note = format!(
                        "Successfully pulled image \"{reference}\" in {took} ({took} including waiting). Image size: {} bytes.",
                        image.size
                    );
                    self.defer_pulled(note);
                    return Some(self.took(&reference, image));
                }
                Err(
                    ImageError::InvalidName(m) | ImageError::NeverPull(m) | ImageError::Pull(m),
                ) => m,
            };
            self.event(
                EventType::Warning,
                "Failed",
                format!("Failed to pull image \"{reference}\": {message}"),
            )
            .await;
            self.event(
                EventType::Warning,
                "Failed",
                "Error: ErrImagePull".to_owned(),
            )
            .await;
            self.set_waiting("ErrImagePull", Some(message.clone()));
            // The kubelet shows the failure, then ImagePullBackOff while it waits.
            if !self.sleep(Duration::from_secs(1)).await {
                return None;
            }
            let msg = format!("Back-off pulling image \"{reference}\"");
            self.event(EventType::Normal, "BackOff", msg.clone()).await;
            self.set_waiting(
                "ImagePullBackOff",
                Some(format!("{msg}: ErrImagePull: {message}")),
            );
            if !self.sleep(backoff).await {
                return None;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Records a Warning `event` with `message`, shows the container waiting with
    /// `reason` and the kubelet's `Error: <reason>` event, and waits out the back-off
    /// (doubling it); false when killed.
    async fn fail_and_wait(
        &self,
        event: &str,
        reason: &str,
        message: String,
        backoff: &mut Duration,
    ) -> bool {
        self.event(EventType::Warning, event, message.clone()).await;
        self.event(EventType::Warning, "Failed", format!("Error: {reason}"))
            .await;
        self.set_waiting(reason, Some(message));
        let waited = self.sleep(*backoff).await;
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
        waited
    }

    /// The kubelet's `CreateContainerConfigError`: the event, the waiting reason.
    async fn config_error(&self, message: String) -> Run {
        self.record_pulled().await;
        self.event(EventType::Warning, "Failed", format!("Error: {message}"))
            .await;
        self.set_waiting("CreateContainerConfigError", Some(message));
        Run::NotStarted
    }

    /// argv and the environment; the kubelet's message when a source is missing.
    async fn argv_env(&self) -> Result<(Vec<String>, Vec<(String, String)>), String> {
        let (env, invalid) =
            super::env::resolve(&*self.ctx.api, &self.pod, &self.spec, &self.ctx.facts).await?;
        for message in invalid {
            self.event(
                EventType::Warning,
                "InvalidEnvironmentVariableNames",
                message,
            )
            .await;
        }
        let mut argv: Vec<String> = self.spec.command.clone().unwrap_or_default();
        if argv.is_empty() {
            argv.push(self.spec.name.clone());
        }
        argv.extend(self.spec.args.iter().flatten().cloned());
        let argv = argv.iter().map(|a| expand(a, &env)).collect();
        Ok((argv, env))
    }

    /// One run; `None` when the container could not be started (it is then waiting
    /// with the reason and the pod worker decides) or was killed before starting. A
    /// `restarting` run counts as a restart once it runs, as the kubelet counts them.
    async fn run_once(&self, image: &Image, restarting: bool) -> Run {
        let restart_count =
            self.shared.get(self.slot).map_or(0, |r| r.restart_count) + i32::from(restarting);
        let dir = self.ctx.pod_dir(&self.pod).join(&self.spec.name);
        if let Err(e) = tokio::fs::create_dir_all(&dir).await {
            self.record_pulled().await;
            self.set_waiting(
                "CreateContainerError",
                Some(format!("cannot create log directory: {e}")),
            );
            return Run::NotStarted;
        }
        let (args, env) = match self.argv_env().await {
            Ok(found) => found,
            Err(message) => return self.config_error(message).await,
        };
        let memory_limit = match memory_limit(&self.spec) {
            Ok(limit) => limit,
            Err(message) => return self.config_error(message).await,
        };
        let mut mounts = match self
            .shared
            .volumes
            .get()
            .map(|v| v.mounts(&self.spec, &env))
        {
            Some(Ok(mounts)) => mounts,
            Some(Err(message)) => return self.config_error(message).await,
            None => Vec::new(),
        };
        let term_dir = dir.join(format!("{restart_count}.termination"));
        let (term_mount, term_file) = match termination::prepare(&self.spec, &term_dir).await {
            Ok(t) => t,
            Err(e) => {
                self.record_pulled().await;
                self.set_waiting(
                    "CreateContainerError",
                    Some(format!("cannot prepare the termination message file: {e}")),
                );
                return Run::NotStarted;
            }
        };
        mounts.push(term_mount);
        let log_path = dir.join(format!("{restart_count}.log"));
        let old_runs = dir.clone();
        let _ = tokio::task::spawn_blocking(move || {
            crate::logs::remove_old_runs(&old_runs, restart_count - 1)
        })
        .await;
        let run = ContainerRun {
            image: image.clone(),
            args,
            env,
            log_path: log_path.clone(),
            mounts,
            memory_limit,
        };
        let (ns, pod_name) = (
            self.pod.namespace().unwrap_or_default(),
            self.pod.name_any(),
        );
        // Deletion, a deadline or node shutdown wins over a start that does not end (a
        // module that compiles for long): the runtime drops that start's work.
        let started = tokio::select! {
            started = self.ctx.runtime.start_container(run) => started,
            () = self.kill.cancelled() => return Run::NotStarted,
        };
        let handle = match started {
            Ok(h) => h,
            Err(message) => {
                self.record_pulled().await;
                self.event(EventType::Warning, "Failed", format!("Error: {message}"))
                    .await;
                self.set_waiting("CreateContainerError", Some(message));
                return Run::NotStarted;
            }
        };
        let container_id = format!(
            "wasmtime://{}-{}-{restart_count}",
            self.pod.uid().unwrap_or_default(),
            self.spec.name
        );
        let started_at = now();
        self.ctx.registry.set_container_logs(
            &ns,
            &pod_name,
            &self.spec.name,
            super::ContainerLogs {
                dir: dir.clone(),
                restart_count,
                running: true,
            },
        );
        let cid = container_id.clone();
        let at = started_at.clone();
        self.shared.update(self.slot, |r| {
            let previous = std::mem::replace(&mut r.state, status::running(at));
            if previous.terminated.is_some() {
                r.last_state = Some(previous);
            }
            r.restart_count = restart_count;
            r.container_id = Some(cid);
        });
        self.record_pulled().await;
        self.event(
            EventType::Normal,
            "Created",
            format!("Created container: {}", self.spec.name),
        )
        .await;
        self.event(
            EventType::Normal,
            "Started",
            format!("Started container {}", self.spec.name),
        )
        .await;
        // Stopped by deletion, a deadline, node shutdown or (for a sidecar) the end of the
        // app containers: the kubelet's Killing event, then the kill.
        let killer = handle.killer();
        let wait = handle.wait();
        tokio::pin!(wait);
        let exit = tokio::select! {
            exit = &mut wait => exit,
            () = self.kill.cancelled() => {
                self.event(
                    EventType::Normal,
                    "Killing",
                    format!("Stopping container {}", self.spec.name),
                )
                .await;
                killer();
                wait.await
            }
        };
        let message = termination::message(
            &self.spec,
            &term_file,
            &log_path,
            exit.code,
            exit.message.clone(),
        )
        .await;
        let terminated = ContainerStateTerminated {
            exit_code: exit.code,
            reason: Some(exit.reason.clone()),
            message,
            started_at: Some(started_at),
            finished_at: Some(now()),
            container_id: Some(container_id),
            signal: None,
        };
        self.ctx.registry.set_container_logs(
            &ns,
            &pod_name,
            &self.spec.name,
            super::ContainerLogs {
                dir,
                restart_count,
                running: false,
            },
        );
        self.shared
            .update(self.slot, |r| r.state = status::terminated(terminated));
        Run::Exited(exit)
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
        self.shared.update(self.slot, |r| {
            r.last_state = Some(std::mem::replace(
                &mut r.state,
                status::waiting("CrashLoopBackOff", Some(message)),
            ));
        });
        self.event(
            EventType::Warning,
            "BackOff",
            format!("Back-off restarting failed container {name} in pod {pod}"),
        )
        .await;
        self.sleep(delay).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_go_prints_them() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration(ms(0)), "0s");
        assert_eq!(go_duration(ms(523)), "523ms");
        assert_eq!(go_duration(Duration::from_micros(1_500_900)), "1.5s");
        assert_eq!(go_duration(ms(2000)), "2s");
        assert_eq!(go_duration(ms(62_250)), "1m2.25s");
        assert_eq!(go_duration(ms(120_000)), "2m0s");
    }
}
