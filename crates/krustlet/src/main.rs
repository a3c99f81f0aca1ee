//! `krustlet`: a Kubernetes node agent whose pods are WebAssembly (WASI) modules.

mod address;
mod config_file;
mod credentials;
mod runtime;
mod sandbox;
mod taint;

use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio_util::sync::CancellationToken;

/// A Kubernetes node agent whose pods are WebAssembly (WASI) modules run by wasmtime.
///
/// Without a subcommand, registers NODE_NAME with the cluster of --kubeconfig and runs
/// the pods scheduled to it. Every flag can also be set by the environment variable
/// named after it (KRUSTLET_NODE_NAME for --node-name, ...).
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    pub(crate) node: NodeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish a .wasm file to an OCI registry as a Wasm OCI artifact (or, with
    /// --layout, into an OCI image layout directory for --image-layout-dir).
    Push {
        /// The module to publish.
        file: PathBuf,
        /// Where to publish it, e.g. 127.0.0.1:15000/demo/hello:v1.
        reference: String,
        /// Write it into this OCI image layout directory (created if missing), named
        /// by REFERENCE, instead of sending it to the registry.
        #[arg(long)]
        layout: Option<PathBuf>,
        /// Registries (host:port) to reach over plain HTTP.
        #[arg(long, env = "KRUSTLET_INSECURE_REGISTRIES", value_delimiter = ',')]
        insecure_registries: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    /// The kubelet's configuration file (apiVersion kubelet.config.k8s.io/v1beta1, kind
    /// KubeletConfiguration); fields krustlet cannot honour are warned about at start.
    /// krustlet's own older form (no apiVersion/kind, keys the flags' names in camelCase)
    /// is still read. Flags and environment variables override it.
    #[arg(long, env = "KRUSTLET_CONFIG")]
    config: Option<PathBuf>,
    /// Kubeconfig with the node's credentials for the API server. With
    /// --bootstrap-kubeconfig, written there when absent or when its client certificate
    /// has expired.
    #[arg(long, env = "KRUSTLET_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig whose credentials (a bootstrap token) request the node's client
    /// certificate by CSR (signer kubernetes.io/kube-apiserver-client-kubelet) when
    /// --kubeconfig is absent or its certificate expired; the certificate goes to
    /// CERT_DIR and --kubeconfig (required with it) is written to use it.
    #[arg(long, env = "KRUSTLET_BOOTSTRAP_KUBECONFIG")]
    bootstrap_kubeconfig: Option<PathBuf>,
    /// Where the node's certificates are kept: the self-signed serving certificate and
    /// those obtained by CSR (kubelet-client-current.pem, kubelet-server-current.pem)
    /// [default: DATA_DIR/pki].
    #[arg(long, env = "KRUSTLET_CERT_DIR")]
    cert_dir: Option<PathBuf>,
    /// Renew the client certificate by CSR at 70-90 % of its lifetime and use the new
    /// one without a restart (the kubelet's --rotate-certificates).
    #[arg(long, env = "KRUSTLET_ROTATE_CERTIFICATES", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    rotate_certificates: bool,
    /// Obtain the kubelet API's serving certificate by CSR (signer
    /// kubernetes.io/kubelet-serving, the node's addresses as names; approved by an
    /// operator) and renew it at 70-90 % of its lifetime. TLS handshakes fail until
    /// the first is issued. Excludes --cert-file.
    #[arg(long, env = "KRUSTLET_ROTATE_SERVER_CERTIFICATES", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, conflicts_with = "cert_file")]
    rotate_server_certificates: bool,
    /// Directory of static pod manifests (YAML or JSON, several documents per file):
    /// they run as pods of this node, changes and removals are picked up, and with an
    /// API server each has a mirror pod (the kubelet's `--pod-manifest-path`).
    #[arg(long, env = "KRUSTLET_POD_MANIFEST_PATH")]
    pod_manifest_path: Option<PathBuf>,
    /// How often the static pod directory is read again (the kubelet's
    /// `--file-check-frequency`), a Go duration.
    #[arg(long, env = "KRUSTLET_FILE_CHECK_FREQUENCY", default_value = "20s", value_parser = parse_duration)]
    file_check_frequency: Duration,
    /// Name of the Node object [default: the host name].
    #[arg(long, env = "KRUSTLET_NODE_NAME")]
    node_name: Option<String>,
    /// Address reported as the node's InternalIP and as pod IPs [default: the host
    /// name's first address].
    #[arg(long, env = "KRUSTLET_NODE_IP")]
    node_ip: Option<IpAddr>,
    /// Address the kubelet API listens on [default: 0.0.0.0; 127.0.0.1 in standalone
    /// mode with --anonymous-auth and --authorization-mode AlwaysAllow, where anyone who
    /// reaches the port may do anything].
    #[arg(long, env = "KRUSTLET_ADDRESS")]
    address: Option<IpAddr>,
    /// Port of the kubelet API (HTTPS), reported in the node's daemonEndpoints.
    #[arg(long, env = "KRUSTLET_PORT", default_value_t = 10250)]
    port: u16,
    /// Directory for images, compiled modules, pod logs and generated certificates.
    #[arg(long, env = "KRUSTLET_DATA_DIR", default_value = "/var/lib/krustlet")]
    data_dir: PathBuf,
    /// Serving certificate of the kubelet API (PEM) [default: self-signed, generated
    /// in CERT_DIR].
    #[arg(long, env = "KRUSTLET_CERT_FILE", requires = "private_key_file")]
    cert_file: Option<PathBuf>,
    /// Private key of --cert-file (PEM).
    #[arg(long, env = "KRUSTLET_PRIVATE_KEY_FILE", requires = "cert_file")]
    private_key_file: Option<PathBuf>,
    /// CA bundle that authenticates client certificates of the kubelet API (user = the
    /// common name, groups = the organizations), such as the API server's kubelet client
    /// certificate.
    #[arg(long, env = "KRUSTLET_CLIENT_CA_FILE")]
    client_ca_file: Option<PathBuf>,
    /// Authenticate bearer tokens at the kubelet API by TokenReview. When false, a bearer
    /// token is no credential: the request is served as `system:anonymous` with
    /// --anonymous-auth, and answered 401 without it (the kubelet's flag, whose default
    /// here is its config file's, true).
    #[arg(long, env = "KRUSTLET_AUTHENTICATION_TOKEN_WEBHOOK", default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    authentication_token_webhook: bool,
    /// Serve kubelet API requests without credentials as `system:anonymous` (still
    /// subject to authorization) instead of answering 401.
    #[arg(long, env = "KRUSTLET_ANONYMOUS_AUTH", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    anonymous_auth: bool,
    /// How kubelet API requests are authorized: `Webhook` (a SubjectAccessReview of
    /// `nodes/<subresource>` per request, cached) or `AlwaysAllow`.
    #[arg(long, env = "KRUSTLET_AUTHORIZATION_MODE", default_value = "Webhook")]
    authorization_mode: kubelet::auth::AuthorizationMode,
    /// How long bearer-token reviews are cached (a Go duration).
    #[arg(long, env = "KRUSTLET_AUTHENTICATION_TOKEN_WEBHOOK_CACHE_TTL", default_value = "2m", value_parser = parse_duration)]
    authentication_token_webhook_cache_ttl: Duration,
    /// How long allowed authorization decisions are cached (a Go duration).
    #[arg(long, env = "KRUSTLET_AUTHORIZATION_WEBHOOK_CACHE_AUTHORIZED_TTL", default_value = "5m", value_parser = parse_duration)]
    authorization_webhook_cache_authorized_ttl: Duration,
    /// How long denied authorization decisions are cached (a Go duration).
    #[arg(long, env = "KRUSTLET_AUTHORIZATION_WEBHOOK_CACHE_UNAUTHORIZED_TTL", default_value = "30s", value_parser = parse_duration)]
    authorization_webhook_cache_unauthorized_ttl: Duration,
    /// Most pods this node runs at once (node capacity "pods"). By default computed from
    /// the host: 2 MiB of memory and 4 open files per pod after 1 GiB and 1024 files kept
    /// back, at least 110 (the kubelet's default) and at most 8000 (the most measured).
    #[arg(long, env = "KRUSTLET_MAX_PODS")]
    max_pods: Option<u32>,
    /// Registries (host:port, comma-separated) reached over plain HTTP instead of HTTPS.
    #[arg(long, env = "KRUSTLET_INSECURE_REGISTRIES", value_delimiter = ',')]
    insecure_registries: Vec<String>,
    /// Extra labels for the node at registration, `key=value` pairs separated by commas,
    /// as the kubelet's `--node-labels`. They may not replace the labels krustlet sets.
    #[arg(long, env = "KRUSTLET_NODE_LABELS", value_delimiter = ',', value_parser = parse_label)]
    node_labels: Vec<(String, String)>,
    /// Resources kept back for the system (the kubelet's `--system-reserved`):
    /// `resource=quantity` pairs separated by commas, of cpu, memory, ephemeral-storage
    /// (and pid, accepted without effect). Allocatable is capacity less this,
    /// --kube-reserved and the hard eviction thresholds; all pods' memory together is
    /// bounded by the allocatable memory.
    #[arg(long, env = "KRUSTLET_SYSTEM_RESERVED", value_delimiter = ',', value_parser = parse_label)]
    system_reserved: Vec<(String, String)>,
    /// Resources kept back for Kubernetes' own daemons, here the agent itself (the
    /// kubelet's `--kube-reserved`), in the form of --system-reserved. Every pod runs
    /// inside the agent's process: a memory reserve keeps the agent's own memory out of
    /// the pods' reach.
    #[arg(long, env = "KRUSTLET_KUBE_RESERVED", value_delimiter = ',', value_parser = parse_label)]
    kube_reserved: Vec<(String, String)>,
    /// The cluster's DNS servers, addresses separated by commas (the kubelet's
    /// `--cluster-dns`): pods of dnsPolicy ClusterFirst ask them. Unset, such pods fall
    /// back to the node's resolver (a `MissingClusterDNS` event).
    #[arg(long, env = "KRUSTLET_CLUSTER_DNS", value_delimiter = ',')]
    cluster_dns: Vec<IpAddr>,
    /// The cluster's domain (the kubelet's `--cluster-domain`, e.g. `cluster.local`):
    /// cluster-first pods search `<namespace>.svc.<domain>`, `svc.<domain>` and it.
    #[arg(long, env = "KRUSTLET_CLUSTER_DOMAIN", default_value = "")]
    cluster_domain: String,
    /// The node's resolver file (the kubelet's `--resolv-conf`): its nameservers, search
    /// paths and options are the DNS of dnsPolicy Default pods, and its search paths
    /// follow the cluster's for cluster-first pods. Empty: none.
    #[arg(long, env = "KRUSTLET_RESOLV_CONF", default_value = "/etc/resolv.conf")]
    resolv_conf: String,
    /// Seconds between renewals of the node lease; node status is also checked for
    /// changes then (the file's nodeStatusUpdateFrequency sets it).
    #[arg(long, env = "KRUSTLET_NODE_LEASE_RENEW_SECONDS", default_value_t = 10)]
    node_lease_renew_seconds: u64,
    /// The node lease's leaseDurationSeconds (the kubelet's
    /// `--node-lease-duration-seconds`): how long after its last renewal the lease
    /// counts as expired. Must be above --node-lease-renew-seconds.
    #[arg(long, env = "KRUSTLET_NODE_LEASE_DURATION_SECONDS", default_value_t = 40, value_parser = clap::value_parser!(i32).range(1..))]
    node_lease_duration_seconds: i32,
    /// Taints the node registers with, `key=value:Effect` (or `key:Effect`) separated by
    /// commas (the kubelet's `--register-with-taints`), beside krustlet's own
    /// kubernetes.io/arch taints. A node object that exists already keeps its taints.
    #[arg(long, env = "KRUSTLET_REGISTER_WITH_TAINTS", value_delimiter = ',', value_parser = taint::parse)]
    register_with_taints: Vec<taint::Taint>,
    /// How long a node shutdown (SIGTERM, SIGINT) may take (the kubelet's
    /// `--shutdown-grace-period`), a Go duration. Above 0: the node turns NotReady, new
    /// pods are rejected, running pods are killed and reported Failed (regular pods
    /// first, critical ones in the last --shutdown-grace-period-critical-pods), the
    /// lease is released; a second signal stops at once. 0: the agent stops its
    /// workloads and keeps the pods' sandboxes for its next start.
    #[arg(long, env = "KRUSTLET_SHUTDOWN_GRACE_PERIOD", default_value = "0s", value_parser = parse_duration)]
    shutdown_grace_period: Duration,
    /// The part of --shutdown-grace-period kept for critical pods (priority at least
    /// 2000000000, system-cluster-critical's), a Go duration.
    #[arg(long, env = "KRUSTLET_SHUTDOWN_GRACE_PERIOD_CRITICAL_PODS", default_value = "0s", value_parser = parse_duration)]
    shutdown_grace_period_critical_pods: Duration,
    /// Seconds between node status reports when nothing changed.
    #[arg(
        long,
        env = "KRUSTLET_NODE_STATUS_REPORT_SECONDS",
        default_value_t = 60
    )]
    node_status_report_seconds: u64,
    /// How often each pod is synced: ConfigMap, Secret, downward API and token volumes
    /// rewritten from the current objects, emptyDir size limits checked. A Go duration
    /// as the kubelet's flag takes it: `1m`, `10s`, `1m30s`, `500ms`.
    #[arg(long, env = "KRUSTLET_SYNC_FREQUENCY", default_value = "1m", value_parser = parse_duration)]
    sync_frequency: Duration,
    /// Events the node creates per second at most (the kubelet's `--event-qps`; 0: no
    /// limit). Over it, and over 25 events per object then one every 5 minutes (client-go's
    /// spam filter), events are dropped and counted.
    #[arg(long, env = "KRUSTLET_EVENT_QPS", default_value_t = 50)]
    event_qps: u32,
    /// Events the node may create at once (the kubelet's `--event-burst`).
    #[arg(long, env = "KRUSTLET_EVENT_BURST", default_value_t = 100)]
    event_burst: u32,
    /// Hard eviction thresholds, `signal<amount` pairs separated by commas (the kubelet's
    /// `--eviction-hard`; signals memory.available, nodefs.available, nodefs.inodesFree,
    /// imagefs.available, imagefs.inodesFree; amounts a quantity or a percentage).
    /// nodefs and imagefs are both the data dir's filesystem.
    #[arg(long, env = "KRUSTLET_EVICTION_HARD", default_value = kubelet::eviction::thresholds::DEFAULT_EVICTION_HARD)]
    eviction_hard: String,
    /// How long a pressure condition stays after the last crossing (the kubelet's
    /// `--eviction-pressure-transition-period`), a Go duration.
    #[arg(long, env = "KRUSTLET_EVICTION_PRESSURE_TRANSITION_PERIOD", default_value = "5m", value_parser = parse_duration)]
    eviction_pressure_transition_period: Duration,
    /// How often the eviction manager measures the node (the kubelet's fixed 10s), a Go
    /// duration.
    #[arg(long, env = "KRUSTLET_EVICTION_MONITORING_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    eviction_monitoring_interval: Duration,
    /// Image filesystem usage (percent) above which unused images are removed, least
    /// recently used first (the kubelet's `imageGCHighThresholdPercent`).
    #[arg(long, env = "KRUSTLET_IMAGE_GC_HIGH_THRESHOLD_PERCENT", default_value_t = 85, value_parser = clap::value_parser!(u8).range(0..=100))]
    image_gc_high_threshold_percent: u8,
    /// Usage (percent) the image GC brings it down to (`imageGCLowThresholdPercent`).
    #[arg(long, env = "KRUSTLET_IMAGE_GC_LOW_THRESHOLD_PERCENT", default_value_t = 80, value_parser = clap::value_parser!(u8).range(0..=100))]
    image_gc_low_threshold_percent: u8,
    /// Seconds an image must be unused before the GC may remove it (`imageMinimumGCAge`).
    #[arg(
        long,
        env = "KRUSTLET_IMAGE_MINIMUM_GC_AGE_SECONDS",
        default_value_t = 120
    )]
    image_minimum_gc_age_seconds: u64,
    /// Seconds between image GC checks (the kubelet's fixed 5 minutes).
    #[arg(long, env = "KRUSTLET_IMAGE_GC_PERIOD_SECONDS", default_value_t = 300)]
    image_gc_period_seconds: u64,
    /// Treat the image store as a filesystem of this many bytes (usage = the store's own
    /// size) instead of measuring the filesystem of the data dir.
    #[arg(long, env = "KRUSTLET_IMAGE_FS_CAPACITY_BYTES")]
    image_fs_capacity_bytes: Option<u64>,
    /// OCI image-layout directory whose images (named by full reference in
    /// `org.opencontainers.image.ref.name` or `io.containerd.image.name`) are imported at
    /// start, for nodes without a registry.
    #[arg(long, env = "KRUSTLET_IMAGE_LAYOUT_DIR")]
    image_layout_dir: Option<PathBuf>,
    /// Directory of CNI network configurations (the first `*.conflist`, `*.conf` or
    /// `*.json` in lexical order is the pod network). Unset: pods have no network of
    /// their own (they report the node's address and cannot open sockets).
    #[arg(long, env = "KRUSTLET_CNI_CONF_DIR")]
    cni_conf_dir: Option<PathBuf>,
    /// Directories of CNI plugin binaries, comma-separated.
    #[arg(
        long,
        env = "KRUSTLET_CNI_BIN_DIR",
        value_delimiter = ',',
        default_value = "/opt/cni/bin"
    )]
    cni_bin_dir: Vec<PathBuf>,
    /// Where CNI results are cached (default: `<data-dir>/cni`).
    #[arg(long, env = "KRUSTLET_CNI_CACHE_DIR")]
    cni_cache_dir: Option<PathBuf>,
    /// Attach pods to the standard bridge network (`bridge` with `host-local`, then
    /// `portmap`) in-process over netlink, with the plugins' result and lease files,
    /// instead of exec'ing the plugins; other networks, and pods with host ports, always
    /// exec them. false: always exec.
    #[arg(long, env = "KRUSTLET_CNI_IN_PROCESS", default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    cni_in_process: bool,
    /// Where pods' network namespaces are pinned, as `krustlet-<pod UID>`.
    #[arg(long, env = "KRUSTLET_NETNS_DIR", default_value = "/run/netns")]
    netns_dir: PathBuf,
    /// Largest wasm layer pulled or imported, in bytes: a layer declaring more is refused
    /// before it is downloaded, one sending more than it declared is cut off.
    #[arg(long, env = "KRUSTLET_MAX_IMAGE_SIZE_BYTES", default_value_t = oci::StoreConfig::DEFAULT_MAX_BLOB_SIZE)]
    max_image_size_bytes: u64,
    /// Handles (open files, directories, streams) one container may hold at once; the
    /// module traps when it opens one more.
    #[arg(
        long,
        env = "KRUSTLET_CONTAINER_MAX_OPEN_FILES",
        default_value_t = 1024
    )]
    container_max_open_files: usize,
    /// Longest a module may take to compile before its start fails (a Go duration).
    #[arg(long, env = "KRUSTLET_MODULE_COMPILE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    module_compile_timeout: Duration,
    /// Size past which a container's log file is rotated (the kubelet's
    /// `containerLogMaxSize`): bytes, or a quantity such as `10Mi`, `500Ki`, `1G`.
    #[arg(long, env = "KRUSTLET_CONTAINER_LOG_MAX_SIZE", default_value = "10Mi", value_parser = parse_log_size)]
    container_log_max_size: u64,
    /// Log files kept per container run, the one being written included
    /// (`containerLogMaxFiles`, at least 2); older rotated files are removed.
    #[arg(long, env = "KRUSTLET_CONTAINER_LOG_MAX_FILES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..))]
    container_log_max_files: u32,
}

/// A byte size as the kubelet's `containerLogMaxSize` takes it: a Kubernetes quantity
/// (`10Mi`, `512Ki`, `1G`, `1048576`), rounded up to whole bytes, at least 1 byte.
fn parse_log_size(text: &str) -> Result<u64, String> {
    let bad = |e: &dyn std::fmt::Display| {
        format!("invalid size {text:?} (e.g. 10Mi, 512Ki, 1G, 1048576): {e}")
    };
    let quantity: kubelet::quantity::Quantity = text.parse().map_err(|e| bad(&e))?;
    match quantity.bytes().map_err(|e| bad(&e))? {
        0 => Err(format!("size {text:?} must be above 0")),
        n => Ok(n),
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not key=value")),
    }
}

fn default_ip(host: &str) -> IpAddr {
    (host, 0)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.find(|a| a.is_ipv4()))
        .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |a| a.ip())
}

pub(crate) async fn client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// The stop token, and the token that begins a graceful node shutdown. Without
/// `graceful`, the first SIGTERM or SIGINT stops the agent; with it, the first begins
/// the graceful shutdown and the second stops the agent at once.
fn shutdown_on_signal(graceful: bool) -> (CancellationToken, CancellationToken) {
    let (stop, begin) = (CancellationToken::new(), CancellationToken::new());
    let (s, b) = (stop.clone(), begin.clone());
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        let mut interrupt =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGINT");
                    return;
                }
            };
        let mut signals = 0;
        loop {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = term.recv() => {}
                () = s.cancelled() => return,
            }
            signals += 1;
            if graceful && signals == 1 {
                tracing::info!("shutting down the node gracefully; a second signal stops at once");
                b.cancel();
            } else {
                tracing::info!("shutting down");
                s.cancel();
                return;
            }
        }
    });
    (stop, begin)
}

async fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    let open_files = raise_open_file_limit();
    let host = match kubelet::node::host_facts().hostname.as_str() {
        "" => "localhost".to_owned(),
        name => name.to_owned(),
    };
    let node_name = args.node_name.clone().unwrap_or_else(|| host.clone());
    let node_ip = args.node_ip.unwrap_or_else(|| default_ip(&host));
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    protect_from_oom_killer();
    let eviction_hard =
        kubelet::eviction::thresholds::parse(&args.eviction_hard).map_err(anyhow::Error::msg)?;
    let reserved = kubelet::node::reserved::Reserved::default()
        .with_pairs(&args.system_reserved)
        .and_then(|r| r.with_pairs(&args.kube_reserved))?;
    let node_memory = kubelet::node::reserved::allocatable_memory(
        kubelet::node::host_facts().memory,
        &reserved,
        &eviction_hard,
    );
    let engine = wasi_runtime::Engine::new(&wasi_runtime::EngineConfig {
        node_memory_limit: Some(node_memory),
        cache_dir: Some(args.data_dir.join("compiled")),
        log_rotation: wasi_runtime::LogRotation {
            max_size: args.container_log_max_size,
            max_files: usize::try_from(args.container_log_max_files).unwrap_or(usize::MAX),
        },
        max_open_handles: args.container_max_open_files,
        compile_timeout: args.module_compile_timeout,
        ..wasi_runtime::EngineConfig::default()
    })?;
    if args.image_gc_low_threshold_percent > args.image_gc_high_threshold_percent {
        anyhow::bail!(
            "--image-gc-low-threshold-percent is above --image-gc-high-threshold-percent"
        );
    }
    let image_dir = args.data_dir.join("images");
    let store = oci::Store::open_with(
        &image_dir,
        oci::StoreConfig {
            insecure_registries: args.insecure_registries.clone(),
            max_blob_size: args.max_image_size_bytes,
            ..oci::StoreConfig::default()
        },
    )?;
    if let Some(layout) = &args.image_layout_dir {
        let imported = store
            .import_layout(layout)
            .await
            .with_context(|| format!("importing images from {}", layout.display()))?;
        for image in imported {
            tracing::info!(image = %image.reference, id = %image.image_id, "image imported");
        }
    }
    let network = args.cni_conf_dir.clone().map(|conf_dir| {
        sandbox::PodNetwork::new(
            network::cni::Cni {
                conf_dir,
                bin_dirs: args.cni_bin_dir.clone(),
                cache_dir: args
                    .cni_cache_dir
                    .clone()
                    .unwrap_or_else(|| args.data_dir.join("cni")),
                timeout: std::time::Duration::from_secs(60),
                in_process: args.cni_in_process,
            },
            args.netns_dir.clone(),
        )
    });
    let runtime = Arc::new(runtime::WasmRuntime {
        engine,
        store,
        image_dir,
        image_fs_capacity: args.image_fs_capacity_bytes,
        network,
        dns: Default::default(),
    });
    let cert_dir = args
        .cert_dir
        .clone()
        .unwrap_or_else(|| args.data_dir.join("pki"));
    let node_shutdown = kubelet::shutdown::Settings::new(
        args.shutdown_grace_period,
        args.shutdown_grace_period_critical_pods,
    )?;
    if u64::try_from(args.node_lease_duration_seconds).unwrap_or(0) <= args.node_lease_renew_seconds
    {
        anyhow::bail!(
            "--node-lease-duration-seconds ({}) must be above --node-lease-renew-seconds ({})",
            args.node_lease_duration_seconds,
            args.node_lease_renew_seconds
        );
    }
    let (shutdown, begin_node_shutdown) = shutdown_on_signal(node_shutdown.enabled());
    // No kubeconfig of any kind: standalone mode, as the kubelet without --kubeconfig.
    let standalone = address::standalone(&args);
    let (client, rotation) = if standalone {
        standalone_checks(&args)?;
        (None, None)
    } else {
        let (client, rotation) =
            credentials::node_client(&args, &cert_dir, &node_name, &shutdown).await?;
        (Some(client), rotation)
    };
    let config = kubelet::Config {
        node_name,
        node_ip,
        bind_address: address::listen_address(&args),
        port: args.port,
        data_dir: args.data_dir,
        cert_dir,
        rotate_server_certificates: args.rotate_server_certificates,
        cert_file: args.cert_file,
        private_key_file: args.private_key_file,
        client_ca_file: args.client_ca_file,
        auth: kubelet::auth::AuthConfig {
            anonymous: args.anonymous_auth,
            token_webhook: args.authentication_token_webhook,
            mode: args.authorization_mode,
            token_cache_ttl: args.authentication_token_webhook_cache_ttl,
            authorized_ttl: args.authorization_webhook_cache_authorized_ttl,
            unauthorized_ttl: args.authorization_webhook_cache_unauthorized_ttl,
        },
        max_pods: args
            .max_pods
            .unwrap_or_else(|| kubelet::node::default_max_pods(open_files)),
        node_labels: args.node_labels.into_iter().collect(),
        image_gc: kubelet::images::GcPolicy {
            high_percent: args.image_gc_high_threshold_percent,
            low_percent: args.image_gc_low_threshold_percent,
            minimum_age: Duration::from_secs(args.image_minimum_gc_age_seconds),
            period: Duration::from_secs(args.image_gc_period_seconds.max(1)),
        },
        lease_renew_interval: Duration::from_secs(args.node_lease_renew_seconds.max(1)),
        status_report_interval: Duration::from_secs(args.node_status_report_seconds.max(1)),
        sync_frequency: args.sync_frequency.max(Duration::from_millis(100)),
        event_qps: args.event_qps,
        event_burst: args.event_burst,
        static_pods: args.pod_manifest_path.map(|dir| kubelet::StaticPods {
            dir,
            check_frequency: args.file_check_frequency.max(Duration::from_millis(100)),
        }),
        reserved,
        eviction: kubelet::eviction::Settings {
            hard: eviction_hard,
            interval: args
                .eviction_monitoring_interval
                .max(Duration::from_millis(100)),
            transition: args.eviction_pressure_transition_period,
        },
        register_with_taints: args
            .register_with_taints
            .iter()
            .map(taint::Taint::to_api)
            .collect(),
        lease_duration_seconds: args.node_lease_duration_seconds,
        shutdown: node_shutdown,
        dns: kubelet::pods::dns::Settings {
            cluster_dns: args.cluster_dns,
            cluster_domain: args.cluster_domain.trim_end_matches('.').to_string(),
            resolv_conf: Some(args.resolv_conf)
                .filter(|f| !f.is_empty())
                .map(PathBuf::from),
        },
    };
    kubelet::Kubelet::run(config, client, runtime, shutdown, begin_node_shutdown).await?;
    match rotation {
        Some(rotation) if rotation.is_finished() => Ok(rotation.await??),
        _ => Ok(()),
    }
}

/// What standalone mode cannot do, refused at start with the way out.
fn standalone_checks(args: &NodeArgs) -> anyhow::Result<()> {
    if args.pod_manifest_path.is_none() {
        anyhow::bail!(
            "standalone mode (no --kubeconfig) runs static pods only: give --pod-manifest-path"
        );
    }
    if args.rotate_certificates || args.rotate_server_certificates {
        anyhow::bail!("standalone mode (no --kubeconfig) cannot rotate certificates by CSR");
    }
    if args.authorization_mode == kubelet::auth::AuthorizationMode::Webhook {
        anyhow::bail!(
            "standalone mode (no --kubeconfig) has no API server to authorize kubelet API \
             requests: pass --authorization-mode AlwaysAllow (with --client-ca-file or \
             --anonymous-auth, and --address 127.0.0.1 to keep it on this machine)"
        );
    }
    Ok(())
}

/// A Go duration (`1m30s`, `10s`, `500ms`, `1h`), as the kubelet's duration flags take.
fn parse_duration(text: &str) -> Result<Duration, String> {
    kubelet::duration::parse(text).map_err(|e| e.to_string())
}

/// Makes the agent the last choice of the kernel's OOM killer, as the kubelet sets its
/// own `oom_score_adj` to -999: every pod lives in this process, so the agent's death
/// would be every pod's. Warns where the kernel refuses (no `CAP_SYS_RESOURCE`).
fn protect_from_oom_killer() {
    const KUBELET_OOM_SCORE_ADJ: &str = "-999";
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", KUBELET_OOM_SCORE_ADJ) {
        tracing::warn!(error = %e, "cannot set the agent's oom_score_adj to -999");
    }
}

/// Raises the soft limit on open files to the hard limit, as a daemon holding a log file
/// and volume directories per pod should (Go's runtime does the same for the kubelet);
/// returns the limit now in force.
fn raise_open_file_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => limit = raised,
            Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
        }
    }
    limit.current.unwrap_or(u64::MAX)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // One TLS implementation for every client and server in the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches)?;
    if let Some(path) = cli.node.config.clone() {
        let (file, warnings) = config_file::FileConfig::read(&path)?;
        for warning in warnings {
            tracing::warn!(config = %path.display(), "{warning}");
        }
        file.apply(&mut cli.node, &matches);
    }
    match cli.command {
        Some(Command::Push {
            file,
            reference,
            layout: Some(layout),
            ..
        }) => {
            let wasm =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let digest = oci::write_layout(&wasm, &reference, &layout)?;
            println!(
                "wrote {} to {} as {reference} ({digest})",
                file.display(),
                layout.display()
            );
            Ok(())
        }
        Some(Command::Push {
            file,
            reference,
            layout: None,
            insecure_registries,
        }) => {
            let wasm =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let url = oci::push(
                wasm,
                &reference,
                &oci::RegistryAuth::Anonymous,
                &insecure_registries,
            )
            .await?;
            println!("pushed {} to {url}", file.display());
            Ok(())
        }
        None => run_node(cli.node).await,
    }
}
