//! The boundary between the node agent and the runtime that runs containers.
//!
//! The node agent needs exactly two things from a runtime: an image made available
//! locally ([`Runtime::pull_image`]) and a container started from it
//! ([`Runtime::start_container`]). Everything Kubernetes-specific (policies, backoff,
//! status, events) stays on this side.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

pub use crate::api::BoxFuture;

/// `imagePullPolicy`, resolved (the `:latest` default already applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Always ask the registry what the reference points at.
    Always,
    /// Use the local copy when there is one.
    IfNotPresent,
    /// Never contact the registry.
    Never,
}

/// An image the runtime holds locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The reference as the pod gave it.
    pub reference: String,
    /// `repo@sha256:...`, reported as the container's `imageID`.
    pub image_id: String,
    /// Whether this call downloaded it (false: it was already present).
    pub downloaded: bool,
    /// Size in bytes.
    pub size: u64,
    /// The runtime's own handle for the content (for wasm: the module's digest).
    pub handle: String,
}

/// Why an image is not available; each maps to the kubelet's waiting reason.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse (`InvalidImageName`).
    #[error("{0}")]
    InvalidName(String),
    /// Policy `Never` and no local copy (`ErrImageNeverPull`).
    #[error("{0}")]
    NeverPull(String),
    /// The pull failed (`ErrImagePull`).
    #[error("{0}")]
    Pull(String),
}

/// One run of one container.
#[derive(Debug, Clone)]
pub struct ContainerRun {
    /// The image to run.
    pub image: Image,
    /// `argv`, including `argv[0]`.
    pub args: Vec<String>,
    /// Environment, in order.
    pub env: Vec<(String, String)>,
    /// Log file of this run.
    pub log_path: PathBuf,
    /// Memory limit in bytes.
    pub memory_limit: Option<u64>,
    /// Host directories to expose, and nothing else.
    pub mounts: Vec<Mount>,
}

/// A host directory exposed to a container.
#[derive(Debug, Clone)]
pub struct Mount {
    /// The directory on the host.
    pub host_path: PathBuf,
    /// Where the container sees it.
    pub container_path: String,
    /// Mounted read-only.
    pub read_only: bool,
    /// A descriptor `host_path` names (`/proc/self/fd/<n>`), to keep open until the
    /// runtime has opened the directory.
    pub keep_open: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
}

/// How a container run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerExit {
    /// Exit code, as a container runtime reports it.
    pub code: i32,
    /// `Completed`, `Error` or `OOMKilled`.
    pub reason: String,
    /// Details for `terminated.message` (a trap's description).
    pub message: Option<String>,
}

/// A started container: await [`ContainerHandle::wait`], or [`ContainerHandle::kill`] it.
pub struct ContainerHandle {
    kill: Arc<dyn Fn() + Send + Sync>,
    exit: Pin<Box<dyn Future<Output = ContainerExit> + Send>>,
}

impl std::fmt::Debug for ContainerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerHandle").finish_non_exhaustive()
    }
}

impl ContainerHandle {
    /// Wraps a runtime's kill function and exit future.
    pub fn new(
        kill: impl Fn() + Send + Sync + 'static,
        exit: impl Future<Output = ContainerExit> + Send + 'static,
    ) -> Self {
        Self {
            kill: Arc::new(kill),
            exit: Box::pin(exit),
        }
    }

    /// A function that stops the container without cooperation; idempotent.
    #[must_use]
    pub fn killer(&self) -> Arc<dyn Fn() + Send + Sync> {
        self.kill.clone()
    }

    /// Waits for the container to end.
    pub async fn wait(self) -> ContainerExit {
        self.exit.await
    }
}

/// A counter a runtime keeps, served on the kubelet API's `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct Counter {
    /// Metric name, e.g. `krustlet_image_downloads_total`.
    pub name: &'static str,
    /// One line on what it counts.
    pub help: &'static str,
    /// The count (a number of events, or a sum of seconds).
    pub value: f64,
}

/// An image the runtime holds on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    /// A reference it was pulled by.
    pub reference: String,
    /// `repo@sha256:...`.
    pub image_id: String,
    /// The runtime's handle for its content (several references may share one).
    pub handle: String,
    /// Size in bytes.
    pub size: u64,
}

/// How full the filesystem holding images is, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageFsUsage {
    /// Its size.
    pub capacity: u64,
    /// What is used.
    pub used: u64,
}

/// What the node agent needs from a container runtime.
pub trait Runtime: Send + Sync + 'static {
    /// Runtime name and version for `nodeInfo.containerRuntimeVersion`.
    fn version(&self) -> String;

    /// Makes `reference` available locally according to `policy`. `credentials` are the
    /// pod's pull secrets that match the image, to be tried in order; empty means an
    /// anonymous pull.
    fn pull_image<'a>(
        &'a self,
        reference: &'a str,
        policy: PullPolicy,
        credentials: &'a [crate::keyring::Credential],
    ) -> BoxFuture<'a, Result<Image, ImageError>>;

    /// Starts one container run. An error is a failure to create or start it
    /// (`CreateContainerError` / `StartError`), not a failure of the workload.
    fn start_container(&self, run: ContainerRun) -> BoxFuture<'_, Result<ContainerHandle, String>>;

    /// The runtime's counters, for `/metrics`.
    fn counters(&self) -> Vec<Counter>;

    /// Every image held on disk.
    fn images(&self) -> BoxFuture<'_, Vec<StoredImage>>;

    /// Removes the image content with `handle` (every reference to it); returns the
    /// bytes freed.
    fn remove_image<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, Result<u64, String>>;

    /// How full the image filesystem is.
    fn image_fs_usage(&self) -> BoxFuture<'_, ImageFsUsage>;
}
