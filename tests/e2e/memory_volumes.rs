//! `emptyDir: {medium: Memory}` (issue 22, finding 3): a tmpfs sized as the kubelet sizes
//! it (the pod's memory limit here), what it holds counted in the pod's working set, and
//! the tmpfs gone with the pod and, for a pod deleted while the agent was down, at the
//! agent's start.

use anyhow::{Context, Result};
use e2e::{
    create_fresh, delete_and_wait, ensure_absent, mounts_under, node_condition, pod_with_spec,
    setup, until, wait_node,
};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::LogParams;

const NODE: &str = "e2e-memory-volumes";
const MIB: u64 = 1 << 20;

/// A pod limited to 64Mi that writes up to 512 MiB into its memory-backed emptyDir,
/// then sleeps.
fn filler(name: &str, image: &str) -> Pod {
    pod_with_spec(
        name,
        NODE,
        serde_json::json!({
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main", "image": image,
                "args": ["fill", "/scratch/f", "512", "sleep", "600"],
                "resources": { "limits": { "memory": "64Mi" } },
                "volumeMounts": [{ "name": "scratch", "mountPath": "/scratch" }]
            }],
            "volumes": [{ "name": "scratch", "emptyDir": { "medium": "Memory" } }]
        }),
    )
}

/// Waits for the fill's line; the bytes it wrote and the line.
async fn filled(pods: &Api<Pod>, name: &str) -> Result<(u64, String)> {
    let line = until(120, &format!("{name}'s fill line"), || async {
        let log = pods.logs(name, &LogParams::default()).await?;
        Ok(log
            .lines()
            .find(|l| l.starts_with("fill /scratch/f: "))
            .map(str::to_owned))
    })
    .await?;
    let bytes = line
        .strip_prefix("fill /scratch/f: ")
        .and_then(|rest| rest.split_once(" bytes"))
        .and_then(|(n, _)| n.parse().ok())
        .with_context(|| format!("unreadable line {line:?}"))?;
    Ok((bytes, line))
}

/// A 64Mi pod cannot put 512 MiB into a `medium: Memory` emptyDir (before the fix its
/// tmpfs had the kernel's default size, half the host's memory, and took all 512 MiB);
/// what it put there is in its working set; the tmpfs goes with the pod, and with a pod
/// deleted while the agent was stopped, at the agent's next start.
#[tokio::test]
async fn a_memory_empty_dir_under_a_64mi_limit_cannot_take_512_mib() -> Result<()> {
    let (cluster, mut node) = setup(NODE, 10563, &[]).await?;
    let pods = cluster.pods();
    let tool = cluster.push("tool", "v1").await?;

    create_fresh(&pods, &filler("memvol-fill", &tool)).await?;
    let (written, line) = filled(&pods, "memvol-fill").await?;
    println!("under a 64Mi limit: {line}");
    assert!(
        written <= 64 * MIB,
        "the volume took more than the pod's limit: {line}"
    );
    assert!(!line.ends_with(", ok"), "{line}");
    // Charged to the pod, as a cgroup charges tmpfs pages to the pod writing them.
    let charged = until(60, "the pod's working set", || async {
        let page = node.api_get("/metrics/resource").await?;
        let prefix = "pod_memory_working_set_bytes{namespace=\"default\",pod=\"memvol-fill\"} ";
        let value: Option<f64> = page
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok());
        Ok(value.filter(|&v| v >= written as f64))
    })
    .await?;
    assert!(charged >= written as f64);
    assert!(
        !mounts_under(&node.data_dir).is_empty(),
        "no tmpfs for the volume"
    );
    delete_and_wait(&pods, "memvol-fill", 120).await?;
    until(60, "the tmpfs removed with its pod", || async {
        Ok(mounts_under(&node.data_dir).is_empty().then_some(()))
    })
    .await?;

    // Deleted while the agent is stopped: its start-up clean-up removes the tmpfs.
    create_fresh(&pods, &filler("memvol-orphan", &tool)).await?;
    filled(&pods, "memvol-orphan").await?;
    node.stop()?;
    ensure_absent(&pods, "memvol-orphan").await?;
    node.restart(&[])?;
    wait_node(&cluster.nodes(), NODE, 120, "Ready again", |n| {
        node_condition(n, "Ready").as_deref() == Some("True")
    })
    .await?;
    until(120, "the orphan's tmpfs removed at start-up", || async {
        Ok(mounts_under(&node.data_dir).is_empty().then_some(()))
    })
    .await?;
    node.stop()?;
    Ok(())
}
