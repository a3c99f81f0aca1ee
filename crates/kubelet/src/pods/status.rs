//! Pod status as the kubelet computes it: phase, conditions, container statuses.
//!
//! Pure functions of the worker's view of its containers, so they are unit-tested here.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Pod, PodCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// What a worker knows about one container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerRecord {
    /// Container name.
    pub name: String,
    /// The image as the pod gave it.
    pub image: String,
    /// `repo@sha256:...` once pulled.
    pub image_id: String,
    /// `wasmtime://<id>` of the current or last run.
    pub container_id: Option<String>,
    /// Restarts so far.
    pub restart_count: i32,
    /// Current state.
    pub state: ContainerState,
    /// State of the previous run, once there was one.
    pub last_state: Option<ContainerState>,
    /// The container will not run again (policy says so, or the pod is stopping).
    pub done: bool,
    /// An init container (reported in `initContainerStatuses`).
    pub init: bool,
    /// An init container with `restartPolicy: Always`: a sidecar that keeps running.
    pub sidecar: bool,
}

/// The records of a pod's init and app containers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Records {
    /// `spec.initContainers`, in order.
    pub init: Vec<ContainerRecord>,
    /// `spec.containers`, in order.
    pub app: Vec<ContainerRecord>,
}

impl Records {
    /// Regular init containers that have not succeeded yet and sidecars that have not
    /// started: what keeps the pod from being `Initialized`.
    #[must_use]
    pub fn uninitialized(&self) -> Vec<&str> {
        self.init
            .iter()
            .filter(|c| {
                if c.sidecar {
                    !c.running() && !c.ever_ran()
                } else {
                    !c.succeeded()
                }
            })
            .map(|c| c.name.as_str())
            .collect()
    }

    /// Something to report beyond "not started yet": a container runs or ran, or waits
    /// for a reason other than being created.
    #[must_use]
    pub fn started_or_failed(&self) -> bool {
        self.init.iter().chain(&self.app).any(|c| {
            c.state.running.is_some()
                || c.state.terminated.is_some()
                || c.state
                    .waiting
                    .as_ref()
                    .and_then(|w| w.reason.as_deref())
                    .is_some_and(|r| !matches!(r, "ContainerCreating" | "PodInitializing"))
        })
    }

    /// A regular init container failed and will not be retried.
    #[must_use]
    pub fn init_failed(&self) -> bool {
        self.init
            .iter()
            .any(|c| !c.sidecar && c.done && !c.succeeded())
    }

    /// The pod phase: init containers first, then the app containers by [`phase`];
    /// sidecars do not count towards completion.
    #[must_use]
    pub fn phase(&self, restart_policy: &str) -> &'static str {
        if self.init_failed() {
            "Failed"
        } else if !self.uninitialized().is_empty() {
            "Pending"
        } else {
            phase(&self.app, restart_policy)
        }
    }
}

impl ContainerRecord {
    /// A container that has not started yet.
    #[must_use]
    pub fn new(name: &str, image: &str) -> Self {
        Self {
            name: name.to_owned(),
            image: image.to_owned(),
            image_id: String::new(),
            container_id: None,
            restart_count: 0,
            state: waiting("ContainerCreating", None),
            last_state: None,
            done: false,
            init: false,
            sidecar: false,
        }
    }

    /// An init container's record (`sidecar` for `restartPolicy: Always`).
    #[must_use]
    pub fn new_init(name: &str, image: &str, sidecar: bool) -> Self {
        Self {
            init: true,
            sidecar,
            ..Self::new(name, image)
        }
    }

    /// Running now.
    #[must_use]
    pub fn running(&self) -> bool {
        self.state.running.is_some()
    }

    fn ever_ran(&self) -> bool {
        self.state.terminated.is_some() || self.last_state.is_some()
    }

    /// Terminated with exit code 0.
    #[must_use]
    pub fn succeeded(&self) -> bool {
        self.state
            .terminated
            .as_ref()
            .is_some_and(|t| t.exit_code == 0)
    }

    /// The `containerStatuses` entry.
    #[must_use]
    pub fn status(&self) -> ContainerStatus {
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: self.image_id.clone(),
            container_id: self.container_id.clone(),
            restart_count: self.restart_count,
            // A regular init container is ready once it has succeeded.
            ready: if self.init && !self.sidecar {
                self.succeeded()
            } else {
                self.running()
            },
            started: Some(self.running()),
            state: Some(self.state.clone()),
            last_state: Some(self.last_state.clone().unwrap_or_default()),
            ..ContainerStatus::default()
        }
    }
}

/// A `waiting` state with `reason` and `message`.
#[must_use]
pub fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_owned()),
            message,
        }),
        ..ContainerState::default()
    }
}

/// A `running` state started at `at`.
#[must_use]
pub fn running(at: Time) -> ContainerState {
    ContainerState {
        running: Some(ContainerStateRunning {
            started_at: Some(at),
        }),
        ..ContainerState::default()
    }
}

/// A `terminated` state.
#[must_use]
pub fn terminated(t: ContainerStateTerminated) -> ContainerState {
    ContainerState {
        terminated: Some(t),
        ..ContainerState::default()
    }
}

impl Records {
    /// The container states of a pod that has ended, as the kubelet's status manager
    /// reports them: once the pod had initialized, an app container that never finished
    /// is `terminated` with exit code 137 and reason `ContainerStatusUnknown`; so is an
    /// init container before the last one that started.
    #[must_use]
    pub fn finalized(mut self) -> Self {
        let unknown = || {
            terminated(ContainerStateTerminated {
                exit_code: 137,
                reason: Some("ContainerStatusUnknown".to_owned()),
                message: Some(
                    "The container could not be located when the pod was terminated".to_owned(),
                ),
                ..ContainerStateTerminated::default()
            })
        };
        let started = |c: &ContainerRecord| c.state.waiting.is_none() || c.last_state.is_some();
        let initialized = self.uninitialized().is_empty() || self.app.iter().any(started);
        if initialized {
            for c in &mut self.app {
                if c.state.terminated.is_none() {
                    c.state = unknown();
                }
            }
        }
        if let Some(last) = self.init.iter().rposition(started) {
            for c in &mut self.init[..last] {
                if c.state.terminated.is_none() {
                    c.state = unknown();
                }
            }
        }
        self
    }
}

/// Whether a pod has reached `Succeeded` or `Failed`.
#[must_use]
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The pod phase, by the kubelet's rules: `Pending` while a container has not run yet,
/// `Running` while one runs or will run again, then `Succeeded` or `Failed`.
#[must_use]
pub fn phase(containers: &[ContainerRecord], restart_policy: &str) -> &'static str {
    let mut running = 0;
    let mut waiting = 0;
    let mut stopped = 0;
    let mut succeeded = 0;
    for c in containers {
        if c.running() {
            running += 1;
        } else if let Some(t) = &c.state.terminated {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if let Some(last) = c.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
            // Waiting to restart: counts as stopped with its last exit.
            stopped += 1;
            if last.exit_code == 0 {
                succeeded += 1;
            }
        } else {
            waiting += 1;
        }
    }
    let all_done = containers.iter().all(|c| c.done);
    match () {
        () if waiting > 0 => "Pending",
        () if running > 0 => "Running",
        () if stopped > 0 => match restart_policy {
            "Always" => "Running",
            "OnFailure" if succeeded < stopped || !all_done => "Running",
            _ if !all_done => "Running",
            _ if succeeded == stopped => "Succeeded",
            _ => "Failed",
        },
        () => "Pending",
    }
}

fn condition(type_: &str, ok: bool, reason: Option<&str>, message: Option<String>) -> PodCondition {
    PodCondition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.map(str::to_owned),
        message,
        ..PodCondition::default()
    }
}

/// The pod's conditions. Those the kubelet does not own (`PodScheduled`,
/// `DisruptionTarget`, readiness gates) are kept from `existing`; a condition keeps its
/// `lastTransitionTime` while its status does not change.
#[must_use]
pub fn conditions(
    existing: &[PodCondition],
    records: &Records,
    phase: &str,
    now: &Time,
) -> Vec<PodCondition> {
    let sidecars = records.init.iter().filter(|c| c.sidecar);
    let containers: Vec<&ContainerRecord> = sidecars.chain(records.app.iter()).collect();
    let uninitialized = records.uninitialized();
    const OWNED: [&str; 4] = [
        "PodReadyToStartContainers",
        "Initialized",
        "ContainersReady",
        "Ready",
    ];
    let not_ready: Vec<&str> = containers
        .into_iter()
        .filter(|c| !c.running())
        .map(|c| c.name.as_str())
        .collect();
    let terminal = matches!(phase, "Succeeded" | "Failed");
    let (ready_reason, ready_message) = if terminal {
        (Some("PodCompleted"), None)
    } else if not_ready.is_empty() {
        (None, None)
    } else {
        (
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: [{}]",
                not_ready.join(" ")
            )),
        )
    };
    let ready = not_ready.is_empty() && !terminal;
    let mut out: Vec<PodCondition> = existing
        .iter()
        .filter(|c| !OWNED.contains(&c.type_.as_str()))
        .cloned()
        .collect();
    let mine = [
        condition("PodReadyToStartContainers", !terminal, None, None),
        if uninitialized.is_empty() {
            condition(
                "Initialized",
                true,
                terminal.then_some("PodCompleted"),
                None,
            )
        } else {
            condition(
                "Initialized",
                false,
                Some("ContainersNotInitialized"),
                Some(format!(
                    "containers with incomplete status: [{}]",
                    uninitialized.join(" ")
                )),
            )
        },
        condition(
            "ContainersReady",
            ready,
            ready_reason,
            ready_message.clone(),
        ),
        condition("Ready", ready, ready_reason, ready_message),
    ];
    for mut c in mine {
        let previous = existing.iter().find(|e| e.type_ == c.type_);
        c.last_transition_time = match previous {
            Some(p) if p.status == c.status => {
                p.last_transition_time.clone().or_else(|| Some(now.clone()))
            }
            _ => Some(now.clone()),
        };
        c.last_probe_time = None;
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ended_pod_reports_unfinished_containers_as_status_unknown() {
        let mut records = Records {
            init: vec![ContainerRecord::new_init("i", "img", false)],
            app: vec![
                ContainerRecord::new("a", "img"),
                ContainerRecord::new("b", "img"),
            ],
        };
        // Not initialized: nothing changes.
        assert_eq!(records.clone().finalized(), records);
        records.init[0].state = terminated(ContainerStateTerminated {
            exit_code: 0,
            ..ContainerStateTerminated::default()
        });
        records.app[0].state = running(Time(jiff::Timestamp::now()));
        let done = records.finalized();
        for c in &done.app {
            let t = c.state.terminated.as_ref().expect("terminated");
            assert_eq!(
                (t.exit_code, t.reason.as_deref()),
                (137, Some("ContainerStatusUnknown"))
            );
        }
        assert_eq!(
            done.init[0].state.terminated.as_ref().map(|t| t.exit_code),
            Some(0)
        );
    }

    fn exited(name: &str, code: i32, done: bool) -> ContainerRecord {
        let mut c = ContainerRecord::new(name, "img");
        c.state = terminated(ContainerStateTerminated {
            exit_code: code,
            ..Default::default()
        });
        c.done = done;
        c
    }

    fn now() -> Time {
        Time(jiff::Timestamp::now())
    }

    #[test]
    fn phase_follows_the_kubelet() {
        let creating = ContainerRecord::new("a", "img");
        let mut up = ContainerRecord::new("b", "img");
        up.state = running(now());
        assert_eq!(phase(std::slice::from_ref(&creating), "Never"), "Pending");
        assert_eq!(phase(&[creating, up.clone()], "Never"), "Pending");
        assert_eq!(
            phase(&[up.clone(), exited("c", 0, true)], "Never"),
            "Running"
        );
        assert_eq!(
            phase(&[exited("a", 0, true), exited("b", 0, true)], "Never"),
            "Succeeded"
        );
        assert_eq!(
            phase(&[exited("a", 0, true), exited("b", 2, true)], "Never"),
            "Failed"
        );
        assert_eq!(phase(&[exited("a", 2, true)], "Always"), "Running");
        assert_eq!(phase(&[exited("a", 2, false)], "OnFailure"), "Running");
        assert_eq!(phase(&[exited("a", 0, true)], "OnFailure"), "Succeeded");
    }

    #[test]
    fn waiting_after_a_run_is_not_pending() {
        let mut c = ContainerRecord::new("a", "img");
        c.last_state = Some(terminated(ContainerStateTerminated {
            exit_code: 1,
            ..Default::default()
        }));
        c.state = waiting("CrashLoopBackOff", None);
        assert_eq!(phase(&[c], "Always"), "Running");
    }

    #[test]
    fn conditions_keep_foreign_ones_and_transition_times() {
        let t0 = Time(jiff::Timestamp::from_second(1_000).expect("valid"));
        let existing = vec![
            PodCondition {
                type_: "PodScheduled".into(),
                status: "True".into(),
                ..Default::default()
            },
            PodCondition {
                type_: "Initialized".into(),
                status: "True".into(),
                last_transition_time: Some(t0.clone()),
                ..Default::default()
            },
            PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some(t0.clone()),
                ..Default::default()
            },
        ];
        let t1 = now();
        let got = conditions(
            &existing,
            &Records {
                init: vec![],
                app: vec![ContainerRecord::new("a", "img")],
            },
            "Pending",
            &t1,
        );
        let find = |t: &str| got.iter().find(|c| c.type_ == t).expect(t).clone();
        assert_eq!(find("PodScheduled").status, "True");
        assert_eq!(find("Initialized").last_transition_time, Some(t0));
        let ready = find("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("False", Some("ContainersNotReady"))
        );
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [a]")
        );
        assert_eq!(ready.last_transition_time, Some(t1));
        let done = conditions(
            &got,
            &Records {
                init: vec![],
                app: vec![exited("a", 0, true)],
            },
            "Succeeded",
            &now(),
        );
        let ready = done.iter().find(|c| c.type_ == "Ready").expect("Ready");
        assert_eq!(ready.reason.as_deref(), Some("PodCompleted"));
    }
}
