//! The `Node` object, its status and its `Lease`, kept the way the kubelet keeps them.

mod facts;
pub mod reserved;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use crate::eviction::{Pressure, PressureHandle};
use crate::images::ImageIndex;
use crate::{Config, KUBE_VERSION, Result, now};
pub(crate) use facts::memory_bytes;
pub use facts::{Host, HostFacts, host_facts, load_host_facts};

/// The architecture label value, and the key of the taints that keep other pods off.
pub const ARCH: &str = "wasm32-wasi";
/// The `kubernetes.io/os` label value: these nodes run WASI, not Linux binaries.
pub const OS: &str = "wasip1";
/// Namespace of node leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Lease duration, the kubelet's default `nodeLeaseDurationSeconds`.
pub const LEASE_DURATION_SECONDS: i32 = 40;

/// The largest number of pods one node has been measured to hold (`hack/bench density`
/// on the 2-core, 24 GiB machine: 8000 idle pods Ready in 53 s, 143 KiB of krustlet
/// memory each, the lease on time). The computed default of `maxPods` never goes above
/// it; `--max-pods` may.
pub const MEASURED_MAX_PODS: u32 = 8000;

/// Memory kept back for the system and krustlet itself before pods are counted.
const RESERVED_MEMORY: u64 = 1 << 30;
/// Memory budgeted per pod: krustlet's bookkeeping for an idle pod is ~165 KiB, the rest
/// is room for a small module's linear memory and stack.
const MEMORY_PER_POD: u64 = 2 << 20;
/// Open files kept back for the API connections, the listener and the image store.
const RESERVED_FILES: u64 = 1024;
/// Open files budgeted per pod: an idle pod holds about 1.5 (its log file and the
/// termination-log directory), each volume mount one more; the rest is slack.
const FILES_PER_POD: u64 = 4;
/// The kubelet's default, and this node's floor.
const KUBELET_DEFAULT_MAX_PODS: u32 = 110;

/// The default `maxPods` for a host with `memory` bytes and a limit of `open_files` file
/// descriptors: what both can hold at the budgets above, at least the kubelet's 110 and
/// at most [`MEASURED_MAX_PODS`].
#[must_use]
pub fn max_pods_for(memory: u64, open_files: u64) -> u32 {
    let by_memory = memory.saturating_sub(RESERVED_MEMORY) / MEMORY_PER_POD;
    let by_files = open_files.saturating_sub(RESERVED_FILES) / FILES_PER_POD;
    let fit = u32::try_from(by_memory.min(by_files)).unwrap_or(u32::MAX);
    fit.clamp(KUBELET_DEFAULT_MAX_PODS, MEASURED_MAX_PODS)
}

/// [`max_pods_for`] this host's memory and `open_files`.
#[must_use]
pub fn default_max_pods(open_files: u64) -> u32 {
    max_pods_for(memory_bytes(), open_files)
}

/// Capacity: the host's CPUs and memory, `max_pods`, and the data dir's filesystem.
fn capacity(config: &Config, host: Host<'_>) -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".to_owned(), Quantity(host.facts.cpus.to_string())),
        (
            "memory".to_owned(),
            Quantity(format!("{}Ki", host.facts.memory / 1024)),
        ),
        ("pods".to_owned(), Quantity(config.max_pods.to_string())),
        (
            "ephemeral-storage".to_owned(),
            Quantity(format!("{}Ki", host.data_fs_bytes / 1024)),
        ),
    ])
}

/// Allocatable: capacity less `--system-reserved`, `--kube-reserved` and the hard
/// eviction thresholds ([`reserved`]).
fn allocatable(config: &Config, host: Host<'_>) -> BTreeMap<String, Quantity> {
    let hard = &config.eviction.hard;
    let cpu = reserved::allocatable_cpu_millis(host.facts.cpus, &config.reserved);
    let memory = reserved::allocatable_memory(host.facts.memory, &config.reserved, hard);
    let storage = reserved::allocatable_storage(host.data_fs_bytes, &config.reserved, hard);
    let mut resources = capacity(config, host);
    // Whole cores as the kubelet prints them ("3"), else millicores ("2900m").
    let cpu = if cpu.is_multiple_of(1000) {
        (cpu / 1000).to_string()
    } else {
        format!("{cpu}m")
    };
    resources.insert("cpu".to_owned(), Quantity(cpu));
    resources.insert(
        "memory".to_owned(),
        Quantity(format!("{}Ki", memory / 1024)),
    );
    resources.insert(
        "ephemeral-storage".to_owned(),
        Quantity(format!("{}Ki", storage / 1024)),
    );
    resources
}

/// The node's conditions. `transition` sets every `lastTransitionTime` (registration, a
/// change of readiness), `pressure_changed` those of the pressure conditions.
fn conditions(
    ready: bool,
    message: &str,
    transition: bool,
    pressure: Pressure,
    pressure_changed: bool,
) -> Vec<NodeCondition> {
    let now = now();
    let condition =
        |type_: &str, on: bool, (reason, message): (&str, &str), changed: bool| NodeCondition {
            type_: type_.to_owned(),
            status: if on { "True" } else { "False" }.to_owned(),
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: (transition || changed).then(|| now.clone()),
        };
    vec![
        condition(
            "MemoryPressure",
            pressure.memory,
            if pressure.memory {
                (
                    "KubeletHasInsufficientMemory",
                    "kubelet has insufficient memory available",
                )
            } else {
                (
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                )
            },
            pressure_changed,
        ),
        condition(
            "DiskPressure",
            pressure.disk,
            if pressure.disk {
                ("KubeletHasDiskPressure", "kubelet has disk pressure")
            } else {
                ("KubeletHasNoDiskPressure", "kubelet has no disk pressure")
            },
            pressure_changed,
        ),
        condition(
            "PIDPressure",
            false,
            (
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            false,
        ),
        NodeCondition {
            type_: "Ready".to_owned(),
            status: if ready { "True" } else { "False" }.to_owned(),
            reason: Some(
                if ready {
                    "KubeletReady"
                } else {
                    "KubeletNotReady"
                }
                .to_owned(),
            ),
            message: Some(message.to_owned()),
            last_heartbeat_time: Some(now.clone()),
            // Omitted on heartbeats: the strategic merge keeps the stored transition time.
            last_transition_time: transition.then(|| now.clone()),
        },
    ]
}

/// Whether the node is ready, as the status says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Readiness {
    Ready,
    /// A graceful node shutdown has begun.
    ShuttingDown,
}

fn status(
    config: &Config,
    host: Host<'_>,
    runtime_version: &str,
    images: Vec<k8s_openapi::api::core::v1::ContainerImage>,
    (readiness, transition): (Readiness, bool),
    (pressure, pressure_changed): (Pressure, bool),
) -> NodeStatus {
    // One measurement of the host for both.
    let (capacity, allocatable) = (capacity(config, host), allocatable(config, host));
    NodeStatus {
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".to_owned(),
                address: config.node_ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".to_owned(),
                address: host.facts.hostname.clone(),
            },
        ]),
        capacity: Some(capacity),
        allocatable: Some(allocatable),
        conditions: Some(conditions(
            readiness == Readiness::Ready,
            match readiness {
                Readiness::Ready => "krustlet is posting ready status",
                Readiness::ShuttingDown => crate::shutdown::NOT_READY_MESSAGE,
            },
            transition,
            pressure,
            pressure_changed,
        )),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(config.port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: ARCH.to_owned(),
            operating_system: OS.to_owned(),
            boot_id: host.facts.boot_id.clone(),
            machine_id: host.facts.machine_id.clone(),
            system_uuid: host.facts.machine_id.clone(),
            kernel_version: host.facts.kernel_version.clone(),
            os_image: host.facts.os_image.clone(),
            container_runtime_version: runtime_version.to_owned(),
            kubelet_version: format!("{KUBE_VERSION}-krustlet.{}", env!("CARGO_PKG_VERSION")),
            ..NodeSystemInfo::default()
        }),
        images: Some(images),
        ..NodeStatus::default()
    }
}

/// A reference to node `name`, for events about it (the kubelet uses the name as UID).
#[must_use]
pub fn reference(name: &str) -> k8s_openapi::api::core::v1::ObjectReference {
    k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Node".to_owned()),
        name: Some(name.to_owned()),
        uid: Some(name.to_owned()),
        ..Default::default()
    }
}

/// The `Node` object this agent registers, on `host`.
#[must_use]
pub fn node_object(config: &Config, host: Host<'_>, runtime_version: &str) -> Node {
    let mut labels = config.node_labels.clone();
    labels.extend([
        ("kubernetes.io/arch".to_owned(), ARCH.to_owned()),
        ("kubernetes.io/os".to_owned(), OS.to_owned()),
        (
            "kubernetes.io/hostname".to_owned(),
            config.node_name.clone(),
        ),
        (
            "node.kubernetes.io/instance-type".to_owned(),
            "krustlet".to_owned(),
        ),
        ("type".to_owned(), "krustlet".to_owned()),
    ]);
    let taint = |effect: &str| Taint {
        key: "kubernetes.io/arch".to_owned(),
        value: Some(ARCH.to_owned()),
        effect: effect.to_owned(),
        time_added: None,
    };
    let mut taints = vec![taint("NoSchedule"), taint("NoExecute")];
    for extra in &config.register_with_taints {
        if !taints
            .iter()
            .any(|t| t.key == extra.key && t.effect == extra.effect)
        {
            taints.push(extra.clone());
        }
    }
    Node {
        metadata: ObjectMeta {
            name: Some(config.node_name.clone()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                "node.alpha.kubernetes.io/ttl".to_owned(),
                "0".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            taints: Some(taints),
            ..NodeSpec::default()
        }),
        status: Some(status(
            config,
            host,
            runtime_version,
            Vec::new(),
            (Readiness::Ready, true),
            (Pressure::default(), false),
        )),
    }
}

/// Creates the node, or, when it exists (a restart), posts a fresh status.
///
/// # Errors
/// When the API server refuses both.
pub async fn register(client: &Client, config: &Config, runtime_version: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = node_object(
        config,
        Host::measure(&config.data_dir).await,
        runtime_version,
    );
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {
            tracing::info!(node = %config.node_name, "node exists; updating its status");
        }
        Err(e) => return Err(e.into()),
    }
    // Status is a subresource: a create ignores it, so post it explicitly.
    let patch = serde_json::json!({ "status": node.status });
    nodes
        .patch_status(
            &config.node_name,
            &PatchParams::default(),
            &Patch::Strategic(patch),
        )
        .await?;
    Ok(())
}

/// Gives the runtime the node's pod CIDRs (`spec.podCIDRs`, which the controller
/// manager assigns after registration) and every change of them, as the kubelet's
/// `UpdateRuntimeConfig`, until `shutdown`.
pub async fn follow_pod_cidrs(
    client: Client,
    node_name: String,
    runtime: Arc<dyn crate::Runtime>,
    shutdown: CancellationToken,
) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let nodes: Api<Node> = Api::all(client);
    let selector = format!("metadata.name={node_name}");
    let mut events = watcher(nodes, watcher::Config::default().fields(&selector))
        .default_backoff()
        .applied_objects()
        .boxed();
    let mut given: Option<Vec<String>> = None;
    loop {
        let node = tokio::select! {
            () = shutdown.cancelled() => return,
            n = events.next() => match n {
                Some(Ok(node)) => node,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "node watch failed; retrying");
                    continue;
                }
                None => return,
            },
        };
        let spec = node.spec.unwrap_or_default();
        let cidrs = spec
            .pod_cidrs
            .filter(|c| !c.is_empty())
            .or_else(|| spec.pod_cidr.map(|c| vec![c]))
            .unwrap_or_default();
        if given.as_ref() != Some(&cidrs) {
            tracing::info!(?cidrs, "pod CIDRs");
            runtime.update_pod_cidrs(cidrs.clone());
            given = Some(cidrs);
        }
    }
}

/// Renews the lease every `lease_renew_interval` and posts node status every
/// `status_report_interval`, until `shutdown`. Failures are logged and retried on the
/// next tick, never fatal.
pub async fn heartbeat(
    client: Client,
    config: Arc<Config>,
    runtime_version: String,
    (images, pressure, shutting_down): (ImageIndex, PressureHandle, crate::shutdown::ShuttingDown),
    shutdown: CancellationToken,
) {
    let mut shutting_down = shutting_down.subscribe();
    let mut posted_readiness = Readiness::Ready;
    let mut lease_tick = tokio::time::interval(config.lease_renew_interval);
    let mut status_tick = tokio::time::interval(config.status_report_interval);
    let mut posted_images = None;
    let mut pressure_changes = pressure.subscribe();
    let mut posted_pressure = Pressure::default();
    loop {
        // As the kubelet: status at least every report interval, and at once (checked at
        // each lease renewal) when something in it changed, here the images held; and
        // at once when a pressure condition changes.
        let images = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = lease_tick.tick() => {
                if let Err(e) = renew_lease(&client, &config).await {
                    tracing::warn!(error = %e, "cannot renew node lease");
                    // The API server is away: the node controller may mark the node
                    // NotReady meanwhile, so status is posted again at the first
                    // renewal that works.
                    posted_images = None;
                    continue;
                }
                let images = images.status_images();
                if posted_images.as_ref() == Some(&images)
                    && *pressure_changes.borrow() == posted_pressure
                    && readiness(&shutting_down) == posted_readiness
                {
                    continue;
                }
                images
            }
            _ = status_tick.tick() => images.status_images(),
            r = shutting_down.changed(), if posted_readiness == Readiness::Ready => {
                if r.is_err() {
                    return;
                }
                images.status_images()
            }
            r = pressure_changes.changed() => {
                if r.is_err() {
                    return;
                }
                images.status_images()
            }
        };
        let pressure = *pressure_changes.borrow_and_update();
        let changed = pressure != posted_pressure;
        let ready = readiness(&shutting_down);
        let host = Host::measure(&config.data_dir).await;
        let nodes: Api<Node> = Api::all(client.clone());
        let node_status = status(
            &config,
            host,
            &runtime_version,
            images.clone(),
            (ready, ready != posted_readiness),
            (pressure, changed),
        );
        let patch = serde_json::json!({ "status": node_status });
        match nodes
            .patch_status(
                &config.node_name,
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await
        {
            Ok(_) => {
                posted_images = Some(images);
                posted_pressure = pressure;
                if ready != posted_readiness {
                    tracing::info!(node = %config.node_name, "node marked not ready: shutting down");
                }
                posted_readiness = ready;
            }
            Err(e) => tracing::warn!(error = %e, "cannot update node status"),
        }
    }
}

fn readiness(shutting_down: &tokio::sync::watch::Receiver<bool>) -> Readiness {
    if *shutting_down.borrow() {
        Readiness::ShuttingDown
    } else {
        Readiness::Ready
    }
}

async fn renew_lease(client: &Client, config: &Config) -> Result<()> {
    let node_name = config.node_name.as_str();
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let renew = MicroTime(jiff::Timestamp::now());
    let patch = serde_json::json!({ "spec": {
        "renewTime": renew,
        "holderIdentity": node_name,
        "leaseDurationSeconds": config.lease_duration_seconds,
    } });
    match leases
        .patch(node_name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => return Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    let node: Node = Api::all(client.clone()).get(node_name).await?;
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(node_name.to_owned()),
            namespace: Some(LEASE_NAMESPACE.to_owned()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".to_owned(),
                kind: "Node".to_owned(),
                name: node_name.to_owned(),
                uid: node.metadata.uid.unwrap_or_default(),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node_name.to_owned()),
            lease_duration_seconds: Some(config.lease_duration_seconds),
            renew_time: Some(renew),
            ..LeaseSpec::default()
        }),
    };
    leases.create(&PostParams::default(), &lease).await?;
    Ok(())
}

/// Releases the node lease at the end of a graceful shutdown: no holder any more, and
/// no renewals. The node lifecycle controller reads only `renewTime`, so, as for any
/// stopped kubelet, it marks the node `Unknown` once `node-monitor-grace-period` has
/// passed since the last renewal. Best effort.
pub async fn release_lease(client: &Client, node_name: &str) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let patch = serde_json::json!({ "spec": { "holderIdentity": null } });
    match leases
        .patch(node_name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => tracing::info!(node = node_name, "node lease released"),
        Err(e) => tracing::warn!(error = %e, "cannot release the node lease"),
    }
}

/// Posts `Ready=False` with `message`; best effort (used on shutdown).
pub async fn mark_not_ready(client: &Client, node_name: &str, message: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = serde_json::json!({ "status": { "conditions": conditions(false, message, true, Pressure::default(), false) } });
    match nodes
        .patch_status(node_name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
    {
        Ok(_) => tracing::info!(node = node_name, "node marked not ready"),
        Err(e) => tracing::warn!(error = %e, "cannot mark node not ready"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn max_pods_follows_memory_and_open_files_within_the_kubelet_default_and_the_measured_maximum()
    {
        // 4 GiB and plenty of files: (4 - 1) GiB / 2 MiB.
        assert_eq!(max_pods_for(4 * GIB, 1 << 20), 1536);
        // The file limit binds: (5120 - 1024) / 4.
        assert_eq!(max_pods_for(24 * GIB, 5120), 1024);
        // A small host still gets the kubelet's 110; a large one stops at what was measured.
        assert_eq!(max_pods_for(GIB, 1024), 110);
        assert_eq!(max_pods_for(512 * GIB, 1 << 20), MEASURED_MAX_PODS);
    }

    #[test]
    fn status_reports_the_facts_given_and_reads_nothing_itself() {
        let facts = HostFacts {
            cpus: 3,
            memory: 4 * GIB,
            hostname: "host-a".to_owned(),
            boot_id: "boot".to_owned(),
            machine_id: "machine".to_owned(),
            kernel_version: "6.12.0".to_owned(),
            os_image: "Debian GNU/Linux 13 (trixie)".to_owned(),
        };
        let host = Host {
            facts: &facts,
            data_fs_bytes: 10 * GIB,
        };
        // A data dir that does not exist: a status that measured anything would say 0.
        let config = crate::tls::tests::config(std::path::Path::new("/nonexistent/krustlet"));
        let status = status(
            &config,
            host,
            "wasmtime",
            Vec::new(),
            (Readiness::Ready, false),
            (Pressure::default(), false),
        );
        let capacity = status.capacity.unwrap_or_default();
        let quantity = |name: &str| capacity.get(name).map(|q| q.0.as_str());
        assert_eq!(quantity("cpu"), Some("3"));
        assert_eq!(quantity("memory"), Some("4194304Ki"));
        assert_eq!(quantity("ephemeral-storage"), Some("10485760Ki"));
        // Allocatable: less the default hard thresholds (memory.available<100Mi,
        // nodefs.available<10%); nothing reserved.
        let allocatable = status.allocatable.unwrap_or_default();
        let allocatable = |name: &str| allocatable.get(name).map(|q| q.0.clone());
        assert_eq!(allocatable("cpu").as_deref(), Some("3"));
        assert_eq!(
            allocatable("memory"),
            Some(format!("{}Ki", (4 * GIB - (100 << 20)) / 1024))
        );
        assert_eq!(
            allocatable("ephemeral-storage"),
            Some(format!("{}Ki", (10 * GIB - GIB) / 1024))
        );
        assert_eq!(allocatable("pods"), quantity("pods").map(str::to_owned));
        let addresses = status.addresses.unwrap_or_default();
        assert!(
            addresses
                .iter()
                .any(|a| a.type_ == "Hostname" && a.address == "host-a")
        );
        let info = status.node_info.unwrap_or_default();
        assert_eq!(
            (
                info.boot_id.as_str(),
                info.machine_id.as_str(),
                info.system_uuid.as_str(),
                info.kernel_version.as_str(),
                info.os_image.as_str(),
            ),
            (
                "boot",
                "machine",
                "machine",
                "6.12.0",
                "Debian GNU/Linux 13 (trixie)"
            )
        );
    }
}
