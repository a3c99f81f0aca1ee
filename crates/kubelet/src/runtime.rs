//! The boundary between the node agent and the runtime that runs containers, shaped as
//! the CRI is: images ([`Runtime::image_status`], [`Runtime::pull_image`] with one
//! credential, [`Runtime::images`], [`Runtime::remove_image`],
//! [`Runtime::image_fs_usage`]), pod sandboxes ([`Runtime::run_pod_sandbox`],
//! [`Runtime::remove_pod_sandbox`]: a pod's shared context, which will own its network
//! namespace), and containers ([`Runtime::start_container`], whose handle carries the
//! runtime's container ID and a kill). Everything Kubernetes-specific stays on this
//! side: pull policies and the rule that a private image is a pod's only with a
//! credential that pulled it (the kubelet's image manager, `pods/container/pull.rs`),
//! back-off, status and events.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
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
    /// The pull failed (`ErrImagePull`).
    #[error("{0}")]
    Pull(String),
}

/// What the runtime holds of an image (the CRI's `ImageStatus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageStatus {
    /// The image (`downloaded` false).
    pub image: Image,
    /// [`Credential::id`](crate::keyring::Credential::id)s of the credentials a registry
    /// accepted for it; empty when it was pulled anonymously (public).
    pub pulled_with: Vec<String>,
}

/// The pod annotation that narrows where its containers may connect to: patterns
/// `[scheme://]host[:port]` (`*` for any part), separated by commas.
pub const ALLOWED_OUTBOUND_HOSTS: &str = "wasm.krustlet.dev/allowed-outbound-hosts";

/// The pod annotation that sets the time limit of each request its served components
/// answer, a Go duration (`30s`, `5m`); unset, the node's default.
pub const REQUEST_TIMEOUT: &str = "wasm.krustlet.dev/request-timeout";

/// The pod annotation that sets how many requests one instance of its served WASI 0.3
/// components answers in its life, a positive integer; unset, the node's default.
pub const MAX_INSTANCE_REUSE_COUNT: &str = "wasm.krustlet.dev/max-instance-reuse-count";

/// The pod annotation that sets how many requests one instance of its served WASI 0.3
/// components answers at once, a positive integer; unset, the node's default.
pub const MAX_INSTANCE_CONCURRENT_REUSE_COUNT: &str =
    "wasm.krustlet.dev/max-instance-concurrent-reuse-count";

/// The pod annotation that sets how long an idle instance of its served WASI 0.3
/// components is kept, a Go duration (`0`: dropped as soon as idle); unset, the node's
/// default.
pub const IDLE_INSTANCE_TIMEOUT: &str = "wasm.krustlet.dev/idle-instance-timeout";

/// How the instances of a pod's served WASI 0.3 components are reused, from its
/// annotations; each `None` is the node's default. WASI 0.2 components ignore it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceReuse {
    /// [`MAX_INSTANCE_REUSE_COUNT`]: requests one instance answers in its life.
    pub max_requests: Option<usize>,
    /// [`MAX_INSTANCE_CONCURRENT_REUSE_COUNT`]: requests one instance answers at once.
    pub max_concurrent: Option<usize>,
    /// [`IDLE_INSTANCE_TIMEOUT`]: how long an instance with nothing to do is kept.
    pub idle_timeout: Option<std::time::Duration>,
}

/// A pod's sandbox as the runtime is asked for it (the CRI's `PodSandboxConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// The pod's UID.
    pub uid: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// How many sandboxes this pod had before on this node (0 for the first).
    pub attempt: u32,
    /// `hostNetwork: true`: the pod uses the node's network, no namespace of its own.
    pub host_network: bool,
    /// The containers' ports that ask for a `hostPort`.
    pub port_mappings: Vec<PortMapping>,
    /// The pod's resolver configuration, composed as the kubelet composes it (the CRI's
    /// `dns_config`): the runtime answers the pod's name lookups with it.
    pub dns: crate::pods::dns::DnsConfig,
    /// The pod's hostname (`spec.hostname` or its name, at most 63 characters).
    pub hostname: String,
    /// The domain of its hostname (`<subdomain>.<namespace>.svc.<cluster domain>`), or
    /// empty.
    pub host_domain: String,
    /// The pod's `hostAliases` (address, names), looked up before its DNS, as a
    /// container's `/etc/hosts`.
    pub host_aliases: Vec<crate::pods::dns::HostsEntry>,
}

/// A container port published on the node (`hostPort`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    /// The port on the node.
    pub host_port: u16,
    /// The container's port.
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// The node address it is limited to, if any.
    pub host_ip: Option<String>,
}

/// A pod's sandbox as the runtime set it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// The runtime's ID for it.
    pub id: String,
    /// The pod's own addresses (`status.podIPs`); empty when the pod uses the node's
    /// network (hostNetwork, or a runtime without a pod network).
    pub ips: Vec<std::net::IpAddr>,
}

/// One run of one container.
#[derive(Debug, Clone)]
pub struct ContainerRun {
    /// The sandbox it runs in ([`Runtime::run_pod_sandbox`]).
    pub sandbox_id: String,
    /// The container's name in the pod.
    pub name: String,
    /// Which run of this container this is (its restart count).
    pub attempt: u32,
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
    /// CPU limit and request.
    pub cpu: CpuResources,
    /// Host directories to expose, and nothing else.
    pub mounts: Vec<Mount>,
    /// The container's TCP `containerPort`s, in order.
    pub ports: Vec<u16>,
    /// The pod's [`ALLOWED_OUTBOUND_HOSTS`] annotation, as written: where it may
    /// connect to (`None`: anywhere its network reaches).
    pub allowed_outbound: Option<String>,
    /// The pod's [`REQUEST_TIMEOUT`] annotation: the time limit of each request a
    /// served component answers (`None`: the node's default).
    pub request_timeout: Option<std::time::Duration>,
    /// The pod's instance reuse annotations ([`InstanceReuse`]).
    pub reuse: InstanceReuse,
    /// Where the runtime tells what that annotation refused (`scheme://host:port` or
    /// `address:port`), best effort: a full channel drops the notice. Closed when the
    /// run's resources are gone.
    pub outbound_refused: Option<tokio::sync::mpsc::Sender<String>>,
}

/// A container's `resources` for the CPU, in millicores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuResources {
    /// `limits.cpu`: at most this much CPU over each period; `None`: unlimited.
    pub limit_millis: Option<u64>,
    /// `requests.cpu`: its weight when the CPU is contended.
    pub request_millis: Option<u64>,
}

/// What a running container has used (the CRI's `ContainerStats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerUsage {
    /// CPU time, cumulative since the container started.
    pub cpu: std::time::Duration,
    /// Its working set now, in bytes.
    pub memory_working_set: u64,
    /// CPU bandwidth periods it ran in (with a CPU limit).
    pub cpu_periods: u64,
    /// Of those, the periods it was throttled in.
    pub cpu_throttled_periods: u64,
    /// How long it was throttled, in all.
    pub cpu_throttled: std::time::Duration,
}

/// Reads a running container's usage; cheap, called on every scrape.
pub type UsageFn = Arc<dyn Fn() -> ContainerUsage + Send + Sync>;

/// Notices of refused outbound connections a run may queue before they are dropped.
pub const OUTBOUND_REFUSED_QUEUE: usize = 16;

/// A host directory exposed to a container, as an open descriptor: the runtime exposes
/// exactly the directory the node agent opened (checked, never re-resolved by path).
#[derive(Debug, Clone)]
pub struct Mount {
    /// The directory, opened.
    pub dir: Arc<OwnedFd>,
    /// Where the container sees it.
    pub container_path: String,
    /// Mounted read-only.
    pub read_only: bool,
}

impl Mount {
    /// Opens directory `path` of the node agent's own (never following a symlink at
    /// its end) as a mount at `container_path`.
    ///
    /// # Errors
    /// When `path` is not a directory that can be opened.
    pub fn open(path: &Path, container_path: String, read_only: bool) -> std::io::Result<Self> {
        use rustix::fs::{Mode, OFlags};
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let dir = rustix::fs::open(path, flags, Mode::empty())?;
        Ok(Self {
            dir: Arc::new(dir),
            container_path,
            read_only,
        })
    }
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
    id: String,
    usage: Option<UsageFn>,
    kill: Arc<dyn Fn(std::time::Duration) + Send + Sync>,
    exit: Pin<Box<dyn Future<Output = ContainerExit> + Send>>,
}

impl std::fmt::Debug for ContainerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerHandle").finish_non_exhaustive()
    }
}

impl ContainerHandle {
    /// Wraps the runtime's ID of a container (`<runtime>://<id>`, the status's
    /// `containerID`), its kill function and exit future.
    pub fn new(
        id: String,
        kill: impl Fn(std::time::Duration) + Send + Sync + 'static,
        exit: impl Future<Output = ContainerExit> + Send + 'static,
    ) -> Self {
        Self {
            id,
            usage: None,
            kill: Arc::new(kill),
            exit: Box::pin(exit),
        }
    }

    /// The same handle, whose container's usage `usage` reads.
    #[must_use]
    pub fn with_usage(mut self, usage: UsageFn) -> Self {
        self.usage = Some(usage);
        self
    }

    /// Reads the container's usage, when the runtime accounts for it.
    #[must_use]
    pub fn usage(&self) -> Option<UsageFn> {
        self.usage.clone()
    }

    /// The runtime's ID of the container, `<runtime>://<id>`.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A function that stops the container: a served component gets the grace period
    /// for its requests in flight, anything else stops at once; idempotent.
    #[must_use]
    pub fn killer(&self) -> Arc<dyn Fn(std::time::Duration) + Send + Sync> {
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

    /// What the runtime holds for `reference`, `None` when it holds nothing (an
    /// `InvalidName` error when the reference does not parse).
    fn image_status<'a>(
        &'a self,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<Option<ImageStatus>, ImageError>>;

    /// Pulls `reference` from its registry, with `credential` or anonymously.
    fn pull_image<'a>(
        &'a self,
        reference: &'a str,
        credential: Option<&'a crate::keyring::Credential>,
    ) -> BoxFuture<'a, Result<Image, ImageError>>;

    /// Sets up a pod's sandbox, the context its containers share; returns its ID. An
    /// error keeps the pod's containers from starting (`FailedCreatePodSandBox`).
    fn run_pod_sandbox(&self, config: SandboxConfig) -> BoxFuture<'_, Result<Sandbox, String>>;

    /// The node's pod CIDRs (`spec.podCIDRs`) changed, as the CRI's
    /// `UpdateRuntimeConfig`: new sandboxes take their addresses from them.
    fn update_pod_cidrs(&self, cidrs: Vec<String>);

    /// The sandboxes the runtime holds (also from before the agent restarted), as the
    /// CRI's `ListPodSandbox`: the pod UIDs they were made for.
    fn list_pod_sandboxes(&self) -> BoxFuture<'_, Vec<String>>;

    /// Tears a pod's sandbox down once none of its containers runs; idempotent.
    fn remove_pod_sandbox<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ()>;

    /// A TCP connection to `port` on the loopback address of the sandbox `id`'s own
    /// network, as the CRI's `PortForward` makes one: what `kubectl port-forward` is
    /// copied to and from. An error (no such sandbox, no network of its own, nothing
    /// listening) is shown to the client.
    fn port_forward<'a>(
        &'a self,
        id: &'a str,
        port: u16,
    ) -> BoxFuture<'a, Result<tokio::net::TcpStream, String>>;

    /// Starts one container run in its sandbox. An error is a failure to create or start
    /// it (`CreateContainerError` / `StartError`), not a failure of the workload.
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
