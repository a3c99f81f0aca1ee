//! What a pod worker knows of its containers: one record per container and its state as
//! the node agent tracks it; `status.rs` turns them into the API's container statuses.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Why a container waits: the kubelet's reasons, each displayed as the kubelet writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Not created yet.
    ContainerCreating,
    /// Not created yet, the pod's init containers not done.
    PodInitializing,
    /// Waiting out the back-off before a restart.
    CrashLoopBackOff,
    /// The image pull just failed.
    ErrImagePull,
    /// Waiting out the back-off before pulling again.
    ImagePullBackOff,
    /// The image is absent and the pull policy is `Never`.
    ErrImageNeverPull,
    /// The image reference does not parse.
    InvalidImageName,
    /// The container's configuration cannot be resolved (environment, mounts, limits).
    CreateContainerConfigError,
    /// The runtime could not create or start the container.
    CreateContainerError,
}

impl Reason {
    /// The reason as the API shows it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ContainerCreating => "ContainerCreating",
            Self::PodInitializing => "PodInitializing",
            Self::CrashLoopBackOff => "CrashLoopBackOff",
            Self::ErrImagePull => "ErrImagePull",
            Self::ImagePullBackOff => "ImagePullBackOff",
            Self::ErrImageNeverPull => "ErrImageNeverPull",
            Self::InvalidImageName => "InvalidImageName",
            Self::CreateContainerConfigError => "CreateContainerConfigError",
            Self::CreateContainerError => "CreateContainerError",
        }
    }

    /// The container has simply not been created yet (nothing went wrong).
    #[must_use]
    pub fn not_created_yet(self) -> bool {
        matches!(self, Self::ContainerCreating | Self::PodInitializing)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a run of a container ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Terminated {
    /// The exit code (137 for a run the node agent lost track of).
    pub exit_code: i32,
    /// `Completed`, `Error`, `OOMKilled`, `ContainerStatusUnknown`...
    pub reason: Option<String>,
    /// The termination message.
    pub message: Option<String>,
    /// When the run started.
    pub started_at: Option<Time>,
    /// When it ended.
    pub finished_at: Option<Time>,
    /// `wasmtime://<id>` of the run.
    pub container_id: Option<String>,
}

/// A container's state.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Not running, and why.
    Waiting {
        /// The kubelet's reason.
        reason: Reason,
        /// What went wrong, when something did.
        message: Option<String>,
    },
    /// Running since `started_at`.
    Running {
        /// When this run started.
        started_at: Time,
    },
    /// Its last run ended (and it has not been restarted yet).
    Terminated(Terminated),
}

impl State {
    /// Waiting for `reason`, without a message.
    #[must_use]
    pub fn waiting(reason: Reason) -> Self {
        Self::Waiting {
            reason,
            message: None,
        }
    }

    /// The run that ended, when this is one.
    #[must_use]
    pub fn terminated(&self) -> Option<&Terminated> {
        match self {
            Self::Terminated(t) => Some(t),
            _ => None,
        }
    }

    /// The exit code of the run that ended, when this is one.
    #[must_use]
    pub fn exit_code(&self) -> Option<i32> {
        self.terminated().map(|t| t.exit_code)
    }
}

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
    pub state: State,
    /// The previous run, once there was one and the container left its terminated state.
    pub last_state: Option<Terminated>,
    /// The container will not run again (policy says so, or the pod is stopping).
    pub done: bool,
    /// An init container (reported in `initContainerStatuses`).
    pub init: bool,
    /// An init container with `restartPolicy: Always`: a sidecar that keeps running.
    pub sidecar: bool,
    /// The readiness probe's verdict on this run (`None`: no readiness probe, readiness
    /// follows the state).
    pub probe_ready: Option<bool>,
    /// The startup probe's verdict on this run (`None`: no startup probe).
    pub probe_started: Option<bool>,
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
            state: State::waiting(Reason::ContainerCreating),
            last_state: None,
            done: false,
            init: false,
            sidecar: false,
            probe_ready: None,
            probe_started: None,
        }
    }

    /// Running, past its startup probe and not failing its readiness probe.
    #[must_use]
    pub fn ready(&self) -> bool {
        self.running() && self.probe_started != Some(false) && self.probe_ready != Some(false)
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
        matches!(self.state, State::Running { .. })
    }

    /// Ran at least once.
    #[must_use]
    pub fn ever_ran(&self) -> bool {
        self.state.terminated().is_some() || self.last_state.is_some()
    }

    /// Terminated with exit code 0.
    #[must_use]
    pub fn succeeded(&self) -> bool {
        self.state.exit_code() == Some(0)
    }

    /// Moves to `state`; a finished run becomes the last state.
    pub fn enter(&mut self, state: State) {
        if let State::Terminated(previous) = std::mem::replace(&mut self.state, state) {
            self.last_state = Some(previous);
        }
    }
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
        self.init.iter().chain(&self.app).any(|c| match &c.state {
            State::Waiting { reason, .. } => !reason.not_created_yet(),
            State::Running { .. } | State::Terminated(_) => true,
        })
    }

    /// A regular init container failed and will not be retried.
    #[must_use]
    pub fn init_failed(&self) -> bool {
        self.init
            .iter()
            .any(|c| !c.sidecar && c.done && !c.succeeded())
    }
}
