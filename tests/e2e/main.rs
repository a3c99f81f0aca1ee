//! End-to-end tests against the real local control plane and registry (see `hack/test`).
//!
//! Each test runs its own krustlet node (own name, port and data dir), so the tests also
//! show that several nodes can share one machine and one control plane.

mod api_bounds;
mod auth;
mod autoscale;
mod certificates;
mod cluster_dns;
mod cni_paths;
mod cross_node;
mod deep_trees;
mod faults;
mod fleet;
mod host;
mod hostile;
mod images;
mod kubelet_config;
mod lifecycle;
mod memory;
mod memory_pressure;
mod memory_volumes;
mod network;
mod node;
mod pod_dns;
mod pods;
mod port_forward;
mod resources;
mod serving_share;
mod shutdown;
mod static_pods;
mod volumes;
mod wasi_p3;
mod wasi_p3_grpc;
mod wasi_p3_serving;
mod workloads;
