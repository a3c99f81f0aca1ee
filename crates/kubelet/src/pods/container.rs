//! One container's life inside a pod worker: pull, start, wait, restart with back-off.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, ContainerStateTerminated, ObjectReference, Pod};
use kube::ResourceExt;
use kube::runtime::events::{Event, EventType};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use super::status::{self, ContainerRecord};
use crate::now;
use crate::runtime::{ContainerExit, ContainerRun, Image, ImageError, PullPolicy, Runtime};

/// First back-off delay (image pulls and crash loops), doubled up to [`MAX_BACKOFF`].
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(10);
/// Longest back-off delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A run this long resets the crash-loop back-off.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// What a supervisor shares with its pod worker.
pub(crate) struct Shared {
    pub records: Mutex<Vec<ContainerRecord>>,
    pub changed: Notify,
}

impl Shared {
    pub fn update(&self, index: usize, f: impl FnOnce(&mut ContainerRecord)) {
        {
            let mut records = self
                .records
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(r) = records.get_mut(index) {
                f(r);
            }
        }
        self.changed.notify_one();
    }

    pub fn snapshot(&self) -> Vec<ContainerRecord> {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The kubelet's default pull policy: `Always` for `:latest` or no tag, else `IfNotPresent`.
#[must_use]
pub fn pull_policy(container: &Container) -> PullPolicy {
    match container.image_pull_policy.as_deref() {
        Some("Always") => PullPolicy::Always,
        Some("Never") => PullPolicy::Never,
        Some("IfNotPresent") => PullPolicy::IfNotPresent,
        _ => {
            let image = container.image.as_deref().unwrap_or_default();
            let name = image.split('@').next().unwrap_or(image);
            let last = name.rsplit('/').next().unwrap_or(name);
            if image.contains('@') {
                PullPolicy::IfNotPresent
            } else {
                match last.split_once(':') {
                    None | Some((_, "latest")) => PullPolicy::Always,
                    Some(_) => PullPolicy::IfNotPresent,
                }
            }
        }
    }
}

/// Expands `$(VAR)` references the way the kubelet does: a defined variable is replaced,
/// `$$` escapes a `$`, anything else is left as written.
#[must_use]
pub fn expand(input: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match env.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Parses a memory quantity (`128Mi`, `1G`, `1048576`) into bytes.
#[must_use]
pub fn parse_bytes(q: &str) -> Option<u64> {
    const SUFFIXES: [(&str, u64); 12] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
    ];
    let q = q.trim();
    let (num, mult) = SUFFIXES
        .iter()
        .find_map(|(s, m)| q.strip_suffix(s).map(|n| (n, *m)))
        .unwrap_or((q, 1));
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult);
    }
    let f: f64 = num.parse().ok()?;
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    (f.is_finite() && f >= 0.0).then(|| (f * mult as f64).ceil() as u64)
}

fn reference(pod: &Pod, container: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Pod".to_owned()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        resource_version: pod.metadata.resource_version.clone(),
        field_path: Some(format!("spec.containers{{{container}}}")),
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

/// Runs container `index` of `pod` until it will not run again or `kill` fires.
pub(crate) async fn supervise<R: Runtime>(
    ctx: Arc<Ctx<R>>,
    pod: Arc<Pod>,
    index: usize,
    shared: Arc<Shared>,
    kill: CancellationToken,
) {
    let Some(spec) = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.get(index))
        .cloned()
    else {
        return;
    };
    let restart_policy = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".to_owned());
    let sup = Supervisor {
        ctx,
        pod,
        index,
        shared,
        kill,
        spec,
    };
    let mut crash_backoff = INITIAL_BACKOFF;
    loop {
        let Some(image) = sup.pull().await else { break };
        let started = Instant::now();
        let Some(exit) = sup.run_once(&image).await else {
            break;
        };
        let restart = match restart_policy.as_str() {
            "Never" => false,
            "OnFailure" => exit.code != 0,
            _ => true,
        };
        if !restart || sup.kill.is_cancelled() {
            break;
        }
        if started.elapsed() >= BACKOFF_RESET {
            crash_backoff = INITIAL_BACKOFF;
        }
        if !sup.crash_loop_wait(crash_backoff).await {
            break;
        }
        crash_backoff = (crash_backoff * 2).min(MAX_BACKOFF);
    }
    sup.shared.update(index, |r| r.done = true);
}

struct Supervisor<R> {
    ctx: Arc<Ctx<R>>,
    pod: Arc<Pod>,
    index: usize,
    shared: Arc<Shared>,
    kill: CancellationToken,
    spec: Container,
}

impl<R: Runtime> Supervisor<R> {
    async fn event(&self, type_: EventType, reason: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: reason.to_owned(),
            secondary: None,
        };
        if let Err(e) = self
            .ctx
            .recorder
            .publish(&ev, &reference(&self.pod, &self.spec.name))
            .await
        {
            tracing::warn!(error = %e, reason, "cannot record event");
        }
    }

    fn set_waiting(&self, reason: &str, message: Option<String>) {
        self.shared
            .update(self.index, |r| r.state = status::waiting(reason, message));
    }

    /// Sleeps unless killed; returns false when killed.
    async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            () = self.kill.cancelled() => false,
            () = tokio::time::sleep(d) => true,
        }
    }

    /// Pulls the image, retrying with back-off; `None` when killed.
    async fn pull(&self) -> Option<Image> {
        let reference = self.spec.image.clone().unwrap_or_default();
        let policy = pull_policy(&self.spec);
        let mut backoff = INITIAL_BACKOFF;
        loop {
            if policy != PullPolicy::Never {
                self.event(
                    EventType::Normal,
                    "Pulling",
                    format!("Pulling image \"{reference}\""),
                )
                .await;
            }
            let began = Instant::now();
            let result = tokio::select! {
                () = self.kill.cancelled() => return None,
                r = self.ctx.runtime.pull_image(&reference, policy) => r,
            };
            let (reason, message) = match result {
                Ok(image) => {
                    let note = if image.downloaded {
                        format!(
                            "Successfully pulled image \"{reference}\" in {:.3}s. Image size: {} bytes.",
                            began.elapsed().as_secs_f64(),
                            image.size
                        )
                    } else {
                        format!("Container image \"{reference}\" already present on machine")
                    };
                    self.event(EventType::Normal, "Pulled", note).await;
                    self.ctx
                        .registry
                        .add_image(&reference, &image.image_id, image.size);
                    let id = image.image_id.clone();
                    self.shared.update(self.index, |r| r.image_id = id);
                    return Some(image);
                }
                Err(ImageError::InvalidName(m)) => ("InvalidImageName", m),
                Err(ImageError::NeverPull(m)) => ("ErrImageNeverPull", m),
                Err(ImageError::Pull(m)) => ("ErrImagePull", m),
            };
            let note = if reason == "ErrImagePull" {
                format!("Failed to pull image \"{reference}\": {message}")
            } else {
                message.clone()
            };
            self.event(EventType::Warning, "Failed", note).await;
            self.event(EventType::Warning, "Failed", format!("Error: {reason}"))
                .await;
            self.set_waiting(reason, Some(message));
            // The kubelet shows the first failure, then ImagePullBackOff while it waits.
            if !self.sleep(Duration::from_secs(1)).await {
                return None;
            }
            if reason == "ErrImagePull" {
                let msg = format!("Back-off pulling image \"{reference}\"");
                self.event(EventType::Normal, "BackOff", msg.clone()).await;
                self.set_waiting("ImagePullBackOff", Some(msg));
            }
            if !self.sleep(backoff).await {
                return None;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn argv_env(&self) -> (Vec<String>, Vec<(String, String)>) {
        let mut env: Vec<(String, String)> = Vec::new();
        for var in self.spec.env.iter().flatten() {
            if let Some(value) = &var.value {
                let value = expand(value, &env);
                env.push((var.name.clone(), value));
            }
        }
        let mut argv: Vec<String> = self.spec.command.clone().unwrap_or_default();
        if argv.is_empty() {
            argv.push(self.spec.name.clone());
        }
        argv.extend(self.spec.args.iter().flatten().cloned());
        let argv = argv.iter().map(|a| expand(a, &env)).collect();
        (argv, env)
    }

    /// One run; `None` when the container could not be started (it is then waiting
    /// with the reason and the pod worker decides) or was killed before starting.
    async fn run_once(&self, image: &Image) -> Option<ContainerExit> {
        let restart_count = self
            .shared
            .snapshot()
            .get(self.index)
            .map_or(0, |r| r.restart_count);
        let dir = self
            .ctx
            .config
            .data_dir
            .join("pods")
            .join(pod_dir_name(&self.pod))
            .join(&self.spec.name);
        if let Err(e) = tokio::fs::create_dir_all(&dir).await {
            self.set_waiting(
                "CreateContainerError",
                Some(format!("cannot create log directory: {e}")),
            );
            return None;
        }
        let (args, env) = self.argv_env();
        let run = ContainerRun {
            image: image.clone(),
            args,
            env,
            log_path: dir.join(format!("{restart_count}.log")),
            memory_limit: self
                .spec
                .resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .and_then(|l| l.get("memory"))
                .and_then(|q| parse_bytes(&q.0)),
        };
        let (ns, pod_name) = (
            self.pod.namespace().unwrap_or_default(),
            self.pod.name_any(),
        );
        let handle = match self.ctx.runtime.start_container(run).await {
            Ok(h) => h,
            Err(message) => {
                self.event(EventType::Warning, "Failed", format!("Error: {message}"))
                    .await;
                self.set_waiting("CreateContainerError", Some(message));
                return None;
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
        self.shared.update(self.index, |r| {
            r.container_id = Some(cid);
            r.state = status::running(at);
        });
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
        let killer = handle.killer();
        let kill = self.kill.clone();
        let watchdog = tokio::spawn(async move {
            kill.cancelled().await;
            killer();
        });
        let exit = handle.wait().await;
        watchdog.abort();
        let terminated = ContainerStateTerminated {
            exit_code: exit.code,
            reason: Some(exit.reason.clone()),
            message: exit.message.clone(),
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
            .update(self.index, |r| r.state = status::terminated(terminated));
        Some(exit)
    }

    /// Moves the last run to `lastState`, shows `CrashLoopBackOff` and waits; false when killed.
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
        self.shared.update(self.index, |r| {
            r.last_state = Some(std::mem::replace(
                &mut r.state,
                status::waiting("CrashLoopBackOff", Some(message)),
            ));
            r.restart_count += 1;
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
    fn expands_like_the_kubelet() {
        let env = vec![
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "two".to_owned()),
        ];
        assert_eq!(expand("x$(A)y$(B)", &env), "x1ytwo");
        assert_eq!(expand("$(C)", &env), "$(C)");
        assert_eq!(expand("$$(A)", &env), "$(A)");
        assert_eq!(expand("$(A", &env), "$(A");
        assert_eq!(expand("cost $5", &env), "cost $5");
    }

    #[test]
    fn parses_quantities() {
        assert_eq!(parse_bytes("128Mi"), Some(128 << 20));
        assert_eq!(parse_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_bytes("1.5Ki"), Some(1536));
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("lots"), None);
    }

    #[test]
    fn default_pull_policy_by_tag() {
        let c = |image: &str| Container {
            image: Some(image.to_owned()),
            ..Container::default()
        };
        assert_eq!(pull_policy(&c("r:5000/a/b")), PullPolicy::Always);
        assert_eq!(pull_policy(&c("r:5000/a/b:latest")), PullPolicy::Always);
        assert_eq!(pull_policy(&c("r:5000/a/b:v1")), PullPolicy::IfNotPresent);
        assert_eq!(pull_policy(&c("r/a@sha256:00")), PullPolicy::IfNotPresent);
    }
}
