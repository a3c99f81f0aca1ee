//! Pod status as the kubelet computes it: phase, conditions, container statuses.
//!
//! Pure functions of the worker's view of its containers (`record.rs`), so they are
//! unit-tested here; the API's container states are built here and nowhere else.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Pod, PodCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::record::{ContainerRecord, Records, State, Terminated};
use super::spec::RestartPolicy;

/// A pod phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepted, but some container has not run yet.
    Pending,
    /// Some container runs or will run again.
    Running,
    /// Every container succeeded and none will run again.
    Succeeded,
    /// Every container stopped, some failed; or the pod was failed (rejected, evicted,
    /// past its deadline).
    Failed,
}

impl Phase {
    /// The phase as the API writes it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
        }
    }

    /// `Succeeded` or `Failed`: nothing of the pod runs again.
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Records {
    /// The pod phase: init containers first, then the app containers by [`phase`];
    /// sidecars do not count towards completion.
    #[must_use]
    pub fn phase(&self, restart_policy: RestartPolicy) -> Phase {
        if self.init_failed() {
            Phase::Failed
        } else if !self.uninitialized().is_empty() {
            Phase::Pending
        } else {
            phase(&self.app, restart_policy)
        }
    }
}

impl ContainerRecord {
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
                self.ready()
            },
            started: Some(self.running() && self.probe_started != Some(false)),
            state: Some(self.state.to_api()),
            last_state: Some(
                self.last_state
                    .as_ref()
                    .map(Terminated::to_api_state)
                    .unwrap_or_default(),
            ),
            ..ContainerStatus::default()
        }
    }
}

impl State {
    /// The API's `ContainerState`.
    #[must_use]
    pub fn to_api(&self) -> ContainerState {
        match self {
            Self::Waiting { reason, message } => ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.to_string()),
                    message: message.clone(),
                }),
                ..ContainerState::default()
            },
            Self::Running { started_at } => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(started_at.clone()),
                }),
                ..ContainerState::default()
            },
            Self::Terminated(t) => t.to_api_state(),
        }
    }
}

impl Terminated {
    /// The API's `ContainerState` of this ended run.
    #[must_use]
    pub fn to_api_state(&self) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: self.exit_code,
                reason: self.reason.clone(),
                message: self.message.clone(),
                started_at: self.started_at.clone(),
                finished_at: self.finished_at.clone(),
                container_id: self.container_id.clone(),
                signal: None,
            }),
            ..ContainerState::default()
        }
    }

    /// A run as a status reported it (the node agent never reports a signal).
    #[must_use]
    pub fn from_api(t: ContainerStateTerminated) -> Self {
        Self {
            exit_code: t.exit_code,
            reason: t.reason,
            message: t.message,
            started_at: t.started_at,
            finished_at: t.finished_at,
            container_id: t.container_id,
        }
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
            State::Terminated(Terminated {
                exit_code: 137,
                reason: Some("ContainerStatusUnknown".to_owned()),
                message: Some(
                    "The container could not be located when the pod was terminated".to_owned(),
                ),
                ..Terminated::default()
            })
        };
        let started = |c: &ContainerRecord| {
            !matches!(c.state, State::Waiting { .. }) || c.last_state.is_some()
        };
        let initialized = self.uninitialized().is_empty() || self.app.iter().any(started);
        if initialized {
            for c in &mut self.app {
                if c.state.terminated().is_none() {
                    c.state = unknown();
                }
            }
        }
        if let Some(last) = self.init.iter().rposition(started) {
            for c in &mut self.init[..last] {
                if c.state.terminated().is_none() {
                    c.state = unknown();
                }
            }
        }
        self
    }
}

impl Records {
    /// The phase of a deleted pod whose containers have all stopped (its records
    /// [`Records::finalized`]): `Succeeded` when every app container ended with exit
    /// code 0, else `Failed`, as the kubelet reports a deleted pod since 1.27.
    #[must_use]
    pub fn deleted_phase(&self) -> Phase {
        let succeeded = self
            .app
            .iter()
            .all(|c| c.state.terminated().is_some_and(|t| t.exit_code == 0));
        if succeeded && !self.init_failed() {
            Phase::Succeeded
        } else {
            Phase::Failed
        }
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
pub fn phase(containers: &[ContainerRecord], restart_policy: RestartPolicy) -> Phase {
    let mut running = 0;
    let mut waiting = 0;
    let mut stopped = 0;
    let mut succeeded = 0;
    for c in containers {
        // Waiting to restart counts as stopped with its last exit.
        if c.running() {
            running += 1;
        } else if let Some(t) = c.state.terminated().or(c.last_state.as_ref()) {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else {
            waiting += 1;
        }
    }
    let all_done = containers.iter().all(|c| c.done);
    match () {
        () if waiting > 0 => Phase::Pending,
        () if running > 0 => Phase::Running,
        () if stopped > 0 => match restart_policy {
            RestartPolicy::Always => Phase::Running,
            RestartPolicy::OnFailure if succeeded < stopped || !all_done => Phase::Running,
            _ if !all_done => Phase::Running,
            _ if succeeded == stopped => Phase::Succeeded,
            _ => Phase::Failed,
        },
        () => Phase::Pending,
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
    phase: Phase,
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
        .filter(|c| !c.ready())
        .map(|c| c.name.as_str())
        .collect();
    let terminal = phase.is_terminal();
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
    use super::super::record::Reason;
    use super::*;
    use RestartPolicy::{Always, Never, OnFailure};

    fn ended(exit_code: i32) -> Terminated {
        Terminated {
            exit_code,
            ..Terminated::default()
        }
    }

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
        records.init[0].state = State::Terminated(ended(0));
        records.app[0].state = State::Running { started_at: now() };
        let done = records.finalized();
        for c in &done.app {
            let t = c.state.terminated().expect("terminated");
            assert_eq!(
                (t.exit_code, t.reason.as_deref()),
                (137, Some("ContainerStatusUnknown"))
            );
        }
        assert_eq!(done.init[0].state.exit_code(), Some(0));
    }

    fn exited(name: &str, code: i32, done: bool) -> ContainerRecord {
        let mut c = ContainerRecord::new(name, "img");
        c.state = State::Terminated(ended(code));
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
        up.state = State::Running { started_at: now() };
        assert_eq!(
            phase(std::slice::from_ref(&creating), Never),
            Phase::Pending
        );
        assert_eq!(phase(&[creating, up.clone()], Never), Phase::Pending);
        assert_eq!(
            phase(&[up.clone(), exited("c", 0, true)], Never),
            Phase::Running
        );
        assert_eq!(
            phase(&[exited("a", 0, true), exited("b", 0, true)], Never),
            Phase::Succeeded
        );
        assert_eq!(
            phase(&[exited("a", 0, true), exited("b", 2, true)], Never),
            Phase::Failed
        );
        assert_eq!(phase(&[exited("a", 2, true)], Always), Phase::Running);
        assert_eq!(phase(&[exited("a", 2, false)], OnFailure), Phase::Running);
        assert_eq!(phase(&[exited("a", 0, true)], OnFailure), Phase::Succeeded);
        assert_eq!(Phase::Succeeded.to_string(), "Succeeded");
    }

    #[test]
    fn waiting_after_a_run_is_not_pending() {
        let mut c = ContainerRecord::new("a", "img");
        c.state = State::Terminated(ended(1));
        c.enter(State::Waiting {
            reason: Reason::CrashLoopBackOff,
            message: None,
        });
        assert_eq!(c.last_state.as_ref().map(|t| t.exit_code), Some(1));
        assert_eq!(phase(&[c], Always), Phase::Running);
    }

    #[test]
    fn container_statuses_show_the_api_states() {
        let mut c = ContainerRecord::new("a", "img");
        c.state = State::Terminated(ended(2));
        c.enter(State::Waiting {
            reason: Reason::CrashLoopBackOff,
            message: Some("back-off".to_owned()),
        });
        let status = c.status();
        let waiting = status.state.and_then(|s| s.waiting).expect("waiting");
        assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
        assert_eq!(waiting.message.as_deref(), Some("back-off"));
        let last = status.last_state.and_then(|s| s.terminated).expect("last");
        assert_eq!(last.exit_code, 2);
        let fresh = ContainerRecord::new("b", "img").status();
        assert_eq!(fresh.last_state, Some(ContainerState::default()));
        assert_eq!(
            fresh.state.and_then(|s| s.waiting).and_then(|w| w.reason),
            Some("ContainerCreating".to_owned())
        );
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
            Phase::Pending,
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
            Phase::Succeeded,
            &now(),
        );
        let ready = done.iter().find(|c| c.type_ == "Ready").expect("Ready");
        assert_eq!(ready.reason.as_deref(), Some("PodCompleted"));
    }
}
