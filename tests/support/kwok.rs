//! A kwok node on the local control plane: the benchmarks' peer for the cost of the API
//! round trips alone (kwok writes a pod's status and runs nothing). `hack/bench` builds
//! kwok from the Go module proxy and sets `KWOK_BIN` and `KWOK_STAGES` (its stock stages:
//! node initialize and heartbeat; pod ready, complete, delete).

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{DeleteParams, PostParams};

use crate::Cluster;

/// A kwok process, killed when dropped (also when a benchmark stops on an error: a kwok
/// left running keeps writing the statuses of the next run's fake node).
pub struct Kwok(std::process::Child);

impl Drop for Kwok {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts kwok for a fake Node `name` (made afresh, tainted like the krustlet nodes),
/// with its own kubelet-like ports, and waits until the node is Ready. The process is
/// stopped when the value returned is dropped.
///
/// # Errors
/// The node cannot be made, kwok cannot be started, or the node is not Ready in 60 s.
pub async fn kwok_node(
    cluster: &Cluster,
    name: &str,
    node_port: u16,
    server_port: u16,
) -> Result<Kwok> {
    let nodes: Api<Node> = cluster.nodes();
    let _ = nodes.delete(name, &DeleteParams::default()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let node: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": { "kwok.x-k8s.io/node": "fake" },
            "labels": { "type": "kwok", "kubernetes.io/hostname": name }
        },
        "spec": { "taints": [{ "key": "kubernetes.io/arch", "value": "wasm32-wasi", "effect": "NoSchedule" }] }
    }))?;
    nodes.create(&PostParams::default(), &node).await?;
    let env = crate::cluster_env()?;
    let kubeconfig = env.get("KUBECONFIG").cloned().unwrap_or_default();
    let bin = std::env::var("KWOK_BIN").unwrap_or_else(|_| "kwok".to_owned());
    let log = std::fs::File::create(crate::root().join(format!("target/bench-kwok-{name}.log")))?;
    let stages = std::env::var("KWOK_STAGES").unwrap_or_default();
    let child = Kwok(
        std::process::Command::new(bin)
            .args(["--kubeconfig", &kubeconfig])
            .args(["--config", &stages])
            .args([
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            ])
            .arg("--node-ip=127.0.0.1")
            .arg(format!("--node-port={node_port}"))
            .arg(format!("--server-address=127.0.0.1:{server_port}"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?,
    );
    crate::wait_node(&nodes, name, 60, "Ready", |n| {
        crate::node_condition(n, "Ready").as_deref() == Some("True")
    })
    .await?;
    Ok(child)
}
