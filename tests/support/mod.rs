//! Harness for the end-to-end tests: the real local cluster (started by `hack/test` or
//! `hack/cluster up`), krustlet nodes run as child processes, and helpers on pods.
//!
//! - `cluster`: `hack/cluster` (addresses, node credentials), the admin client, `kubectl`.
//! - `node`: krustlet node processes, waits on `Node` objects.
//! - `pods`: pod manifests, waits on pods, their status, `kubectl get pod` rows.
//! - `apps`: a namespace of a test's own, Deployments, ClusterIP Services, waits on a
//!   rollout, its pods and a Service's endpoints.
//! - `registry`: pushes of workloads and images, a registry process of a test's own.
//! - `network`: a pod network (bridge, CNI configuration, namespaces) of a test node's own.
//! - `hosts`: a host of the cluster's LAN (a network namespace standing for a machine)
//!   for a node, with its own pod bridge and kube-proxy.
//! - `port_forward`: `kubectl port-forward` to a pod, as a user runs it.
//! - [`bench`]: what the benchmarks share (a pod watch, bench pods, `/proc` readings).
//! - [`fleet`]: a Deployment spread over several nodes, a pod watch, a node's death measured.
//! - [`hostile`] and [`outage`]: a hostile registry and an API server that goes away.

mod apps;
pub mod bench;
mod cluster;
pub mod fleet;
pub mod hostile;
mod hosts;
mod kwok;
mod network;
mod node;
pub mod outage;
mod pods;
mod port_forward;
mod registry;

pub use apps::{
    deployment, endpoints_become, fresh_namespace, ready_pods, remove_namespace, rolled_out,
    service,
};
pub use cluster::{
    Cluster, ControllerTimings, bootstrap_token, client, cluster_env, node_credentials, root, setup,
};
pub use hosts::Host;
pub use kwok::{Kwok, kwok_node};
pub use network::PodNet;
pub use node::{KrustletNode, mounts_under, node_condition, proc_field, proc_status, wait_node};
pub use pods::{
    PodRow, container_status, create_fresh, delete_and_wait, ensure_absent, phase, pod_condition,
    pod_with_spec, terminated, until, wait_absent, wait_gone, wait_object, wait_pod, wait_row,
    waiting_message, waiting_reason, wasm_pod, wasm_pod_spec, wasm_toleration,
};
pub use port_forward::PortForward;
pub use registry::{
    OwnRegistry, manifest_digest, push_as, push_container_image, push_index, push_wkg, workload,
};
