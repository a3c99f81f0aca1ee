//! The node agent: everything a kubelet does that is not running wasm.
//!
//! - [`node`]: registering the `Node`, its status and its `Lease`.
//! - [`pods`]: watching the pods bound to this node and driving one worker per pod.
//! - [`server`]: the kubelet HTTPS API (`/healthz`, `/containerLogs`).
//! - [`auth`]: who may call it (client certificates, token and access reviews).
//! - [`certificates`]: the node's client and serving certificates by CSR, and rotation.
//! - [`runtime`]: the small trait through which all of this reaches the container runtime.
//!
//! [`Kubelet::run`] wires them together.

pub mod api;
pub mod auth;
mod blocking;
pub mod certificates;
pub mod duration;
pub mod events;
pub mod eviction;
pub mod images;
pub mod keyring;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod pods;
pub mod quantity;
pub mod ratelimit;
pub mod runtime;
pub mod sandboxes;
pub mod server;
pub mod shutdown;
pub mod standalone;
pub mod stats;
mod tls;
pub mod volumes;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use kube::Client;
use tokio_util::sync::CancellationToken;

pub use runtime::Runtime;

/// The Kubernetes minor version whose kubelet behaviour krustlet follows.
pub const KUBE_VERSION: &str = "v1.36.0";

/// Node agent settings (the binary fills these from flags, env and config file).
#[derive(Debug, Clone)]
pub struct Config {
    /// The `Node` object's name.
    pub node_name: String,
    /// The address reported as the node's `InternalIP` and used for pod IPs.
    pub node_ip: IpAddr,
    /// Address the kubelet API binds to.
    pub bind_address: IpAddr,
    /// Port of the kubelet API.
    pub port: u16,
    /// Where pods' logs, images and compiled modules live.
    pub data_dir: PathBuf,
    /// Where the node's certificates live (`--cert-dir`): the self-signed serving
    /// certificate, and those obtained by CSR (see [`certificates`]).
    pub cert_dir: PathBuf,
    /// Obtain the serving certificate by CSR (`kubernetes.io/kubelet-serving`) and renew it
    /// before it expires (`--rotate-server-certificates`); until the first is issued, TLS
    /// handshakes of the kubelet API fail.
    pub rotate_server_certificates: bool,
    /// Serving certificate (PEM); generated self-signed in `cert_dir` when absent.
    pub cert_file: Option<PathBuf>,
    /// Key of `cert_file` (PEM).
    pub private_key_file: Option<PathBuf>,
    /// CA that authenticates client certificates of the kubelet API (user = common
    /// name, groups = organizations).
    pub client_ca_file: Option<PathBuf>,
    /// Authentication (anonymous, token review cache) and authorization of the kubelet
    /// API.
    pub auth: auth::AuthConfig,
    /// Pods this node admits at most.
    pub max_pods: u32,
    /// What the node keeps back from pods (`--system-reserved` and `--kube-reserved`):
    /// allocatable is capacity less these and the hard eviction thresholds.
    pub reserved: node::reserved::Reserved,
    /// Labels added to the node at registration (`--node-labels`).
    pub node_labels: std::collections::BTreeMap<String, String>,
    /// Image garbage collection.
    pub image_gc: images::GcPolicy,
    /// How often the node lease is renewed.
    pub lease_renew_interval: std::time::Duration,
    /// How often node status is posted even when nothing changed.
    pub status_report_interval: std::time::Duration,
    /// How often each pod is synced: its ConfigMap, Secret, downward API and token
    /// volumes rewritten from the current objects, its `emptyDir` size limits checked
    /// (the kubelet's `syncFrequency`).
    pub sync_frequency: std::time::Duration,
    /// Events created per second at most, node-wide (the kubelet's `eventRecordQPS`;
    /// 0: no limit). Events over the limit are dropped and counted.
    pub event_qps: u32,
    /// Events created at once at most (the kubelet's `eventBurst`).
    pub event_burst: u32,
    /// The eviction manager's thresholds and periods.
    pub eviction: eviction::Settings,
    /// Where static pod manifests are read from, if anywhere.
    pub static_pods: Option<StaticPods>,
    /// Taints the node is registered with besides krustlet's own (the kubelet's
    /// `registerWithTaints`); a node that exists already keeps its taints.
    pub register_with_taints: Vec<k8s_openapi::api::core::v1::Taint>,
    /// The node lease's `leaseDurationSeconds` (the kubelet's `nodeLeaseDurationSeconds`).
    pub lease_duration_seconds: i32,
    /// Graceful node shutdown (`shutdownGracePeriod`, `shutdownGracePeriodCriticalPods`).
    pub shutdown: shutdown::Settings,
    /// The pods' DNS (`--cluster-dns`, `--cluster-domain`, `--resolv-conf`).
    pub dns: pods::dns::Settings,
}

/// The static pod source (the kubelet's `staticPodPath` and `fileCheckFrequency`).
#[derive(Debug, Clone)]
pub struct StaticPods {
    /// The directory of manifests.
    pub dir: PathBuf,
    /// How often it is read again.
    pub check_frequency: std::time::Duration,
}

/// Errors that stop the node agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request the agent cannot do without.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The kubelet API could not be served.
    #[error("kubelet API server: {0}")]
    Server(String),
    /// A file of the node agent could not be used.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The running node agent.
#[derive(Debug)]
pub struct Kubelet;

impl Kubelet {
    /// Registers the node, serves the kubelet API and runs pods until `shutdown` fires;
    /// then marks the node not ready, stops every pod's workloads and returns.
    ///
    /// With a `shutdownGracePeriod` ([`Config::shutdown`]), `node_shutdown` begins a
    /// graceful node shutdown ([`shutdown`]): the pods are killed and reported `Failed`,
    /// the node lease is released, and the agent stops as if `shutdown` had fired (which
    /// cuts the graceful shutdown short if it fires first).
    ///
    /// # Errors
    /// When the node cannot be registered or the API port cannot be bound.
    pub async fn run(
        config: Config,
        client: Option<Client>,
        runtime: Arc<dyn Runtime>,
        shutdown: CancellationToken,
        node_shutdown: CancellationToken,
    ) -> Result<()> {
        let config = Arc::new(config);
        // Every call into the runtime is counted and timed (kubelet_runtime_operations_*).
        let kubelet_metrics = metrics::KubeletMetrics::default();
        let runtime: Arc<dyn Runtime> =
            Arc::new(metrics::Instrumented::new(runtime, kubelet_metrics.clone()));
        // What the parts share: the node's images, where each container logs, the
        // pressure conditions; the pod watch loop alone holds the workers.
        let (images, logs) = (images::ImageIndex::default(), logs::LogIndex::default());
        let sandboxes = sandboxes::SandboxIndex::default();
        let stats = stats::StatsIndex::default();
        let started = jiff::Timestamp::now();
        let pressure = eviction::PressureHandle::default();
        let shutting_down = shutdown::ShuttingDown::default();
        let (pods_handle, commands) = pods::PodsHandle::new();
        let statuses = pods::StatusBook::default();
        let graceful = tokio::spawn(shutdown::run(
            config.shutdown,
            pods_handle.clone(),
            shutting_down.clone(),
            node_shutdown,
            shutdown.clone(),
        ));
        let listener = server::bind(&config).await?;
        // Read once, off the async threads, for the node status and the pods' downward API.
        node::load_host_facts().await;
        // The node's own objects, with an API server.
        let mut tasks = Vec::new();
        if let Some(client) = &client {
            node::register(client, &config, &runtime.version()).await?;
            tracing::info!(node = %config.node_name, "node registered");
            if config.rotate_server_certificates {
                tasks.push(tokio::spawn(certificates::keep_serving(
                    config.clone(),
                    client.clone(),
                    listener.serving_certificate(),
                    shutdown.clone(),
                )));
            }
            tasks.push(tokio::spawn(node::follow_pod_cidrs(
                client.clone(),
                config.node_name.clone(),
                runtime.clone(),
                shutdown.clone(),
            )));
            tasks.push(tokio::spawn(node::heartbeat(
                client.clone(),
                config.clone(),
                runtime.version(),
                (images.clone(), pressure.clone(), shutting_down.clone()),
                shutdown.clone(),
            )));
        } else {
            tracing::info!(node = %config.node_name, "standalone mode: no API server, static pods only");
        }
        // Images left by an earlier run are the node's too (status, GC).
        for image in runtime.images().await {
            images.add(&image.reference, &image.image_id, image.size, &image.handle);
        }
        let mut cluster: Arc<dyn api::ClusterApi> = match &client {
            Some(client) => Arc::new(api::KubeApi::new(client.clone())),
            None => Arc::new(standalone::LocalApi),
        };
        let statics = match &config.static_pods {
            Some(source) => {
                let statics = Self::static_pods(source, &config, client.as_ref(), &shutdown).await;
                // Their statuses go to their mirror pods.
                if statics.seen.is_some() {
                    cluster = Arc::new(pods::MirrorApi {
                        inner: cluster,
                        mirrors: statics.mirrors.clone(),
                    });
                }
                Some(statics)
            }
            None => None,
        };
        let recorder = Arc::new(
            events::Recorder::new(cluster.clone(), &config.node_name)
                .with_limits(config.event_qps, config.event_burst),
        );
        tokio::spawn(dns_startup_check(
            config.dns.clone(),
            recorder.clone(),
            node::reference(&config.node_name),
        ));
        let gc = tokio::spawn(images::run(
            runtime.clone(),
            images.clone(),
            config.image_gc,
            recorder.clone(),
            node::reference(&config.node_name),
            shutdown.clone(),
        ));
        let eviction = tokio::spawn(eviction::run(
            eviction::Parts {
                runtime: runtime.clone(),
                images: images.clone(),
                pods: pods_handle.clone(),
                pressure: pressure.clone(),
                data_dir: config.data_dir.clone(),
                stats: stats.clone(),
            },
            config.eviction.clone(),
            shutdown.clone(),
        ));
        let metrics = {
            let (runtime, images) = (runtime.clone(), images.clone());
            let (sandboxes, stats) = (sandboxes.clone(), stats.clone());
            let (kubelet_metrics, node) = (kubelet_metrics.clone(), config.node_name.clone());
            Arc::new(move || {
                let mut page = server::render_metrics(&runtime.counters(), &images);
                let families = kubelet_metrics.families(&node, sandboxes.len(), stats.running());
                metrics::text::write(&mut page, &families);
                page
            })
        };
        let reviewer: Arc<dyn auth::Reviewer> = match &client {
            Some(client) => Arc::new(auth::KubeReviewer::new(client.clone())),
            None => Arc::new(standalone::NoReviews),
        };
        let auth = Arc::new(auth::Auth::new(config.auth, &config.node_name, reviewer));
        let api = tokio::spawn(server::serve(
            listener,
            server::Parts {
                logs: logs.clone(),
                sandboxes: sandboxes.clone(),
                runtime: runtime.clone(),
                metrics,
                stats: stats::Source {
                    index: stats.clone(),
                    node_name: config.node_name.clone(),
                    data_dir: config.data_dir.clone(),
                    started,
                },
                auth,
                pods: (pods_handle, statuses.clone()),
            },
            shutdown.clone(),
        ));
        // Returns at shutdown once every pod's workloads are killed.
        pods::run(
            pods::Parts {
                client: client.clone(),
                statics,
                api: cluster,
                config: config.clone(),
                runtime,
                images,
                logs,
                sandboxes,
                stats,
                pressure,
                shutting_down,
                recorder,
                metrics: kubelet_metrics,
                statuses,
            },
            commands,
            shutdown.clone(),
        )
        .await;
        for task in tasks {
            let _ = task.await;
        }
        let _ = api.await;
        let _ = gc.await;
        let _ = eviction.await;
        if let Some(client) = &client {
            node::mark_not_ready(client, &config.node_name, "krustlet is shutting down").await;
        }
        let graceful = graceful.await.unwrap_or(false);
        if let Some(client) = &client {
            if graceful {
                node::release_lease(client, &config.node_name).await;
                node::mark_not_ready(client, &config.node_name, shutdown::NOT_READY_MESSAGE).await;
            } else {
                node::mark_not_ready(client, &config.node_name, "krustlet is shutting down").await;
            }
        }
        Ok(())
    }

    /// The static pod source: the directory read once now (so that static pods start
    /// before the API's pods are listed) and then followed; with an API server, the
    /// keeper of their mirror pods.
    async fn static_pods(
        source: &StaticPods,
        config: &Arc<Config>,
        client: Option<&Client>,
        shutdown: &CancellationToken,
    ) -> pods::Statics {
        let (dir, node) = (source.dir.clone(), config.node_name.clone());
        let first = tokio::task::spawn_blocking(move || pods::static_pods::read_dir(&dir, &node))
            .await
            .map(|(pods, _)| pods)
            .unwrap_or_default();
        let (tx, rx) = tokio::sync::watch::channel(first);
        tokio::spawn(pods::static_pods::watch(
            source.dir.clone(),
            source.check_frequency,
            config.node_name.clone(),
            tx,
            shutdown.clone(),
        ));
        let mirrors = Arc::new(pods::Mirrors::default());
        let keeper = client.map(|client| {
            let (seen_tx, seen) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(pods::mirror_run(
                pods::MirrorParts {
                    client: client.clone(),
                    node: config.node_name.clone(),
                    mirrors: mirrors.clone(),
                    statics: rx.clone(),
                    seen,
                    every: source.check_frequency,
                },
                shutdown.clone(),
            ));
            seen_tx
        });
        pods::Statics {
            pods: rx,
            mirrors,
            seen: keeper,
        }
    }
}

pub(crate) fn now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now())
}

/// The node's resolver file checked once at start, as the kubelet's sync loop checks it:
/// a `CheckLimitsForResolvConf` warning on the node when it cannot be read or its search
/// line leaves pods no room.
async fn dns_startup_check(
    settings: pods::dns::Settings,
    recorder: Arc<events::Recorder>,
    node: k8s_openapi::api::core::v1::ObjectReference,
) {
    let warning = blocking::run(move || pods::dns::startup_warning(&settings)).await;
    if let Ok(Some(message)) = warning {
        tracing::warn!("{message}");
        recorder
            .record(
                &node,
                events::EventType::Warning,
                "CheckLimitsForResolvConf",
                &message,
            )
            .await;
    }
}
