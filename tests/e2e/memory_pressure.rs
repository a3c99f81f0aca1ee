//! Memory pressure on a live node, made by a test pod rather than by filling the host:
//! the node's `--eviction-hard memory.available` is set 3 GiB below the memory the host
//! has free when the test starts, and a `BestEffort` pod allocates up to 4 GiB (then
//! stops). The eviction manager evicts that pod, with the kubelet's reason and message,
//! and leaves a pod within its request alone; the agent stays up.

use anyhow::{Context as _, Result};
use e2e::{
    Cluster, KrustletNode, create_fresh, delete_and_wait, node_condition, pod_with_spec,
    proc_field, wait_node, wait_pod,
};
use k8s_openapi::api::core::v1::Pod;

/// The headroom below the free memory at the start, which the hog's allocation crosses.
const MARGIN_MIB: u64 = 3 << 10;
/// The most the hog allocates: the test never takes more than this from the host.
const HOG_MIB: u64 = 4 << 10;

fn tool_pod(name: &str, node: &str, image: &str, mib: u64, request: Option<&str>) -> Pod {
    let resources = request.map_or(
        serde_json::json!({}),
        |r| serde_json::json!({ "requests": { "memory": r } }),
    );
    pod_with_spec(
        name,
        node,
        serde_json::json!({
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main",
                "image": image,
                "args": ["alloc", mib.to_string(), "print", "allocated", "sleep", "600"],
                "resources": resources
            }]
        }),
    )
}

#[tokio::test]
async fn memory_pressure_evicts_the_pod_using_the_most_above_its_request() -> Result<()> {
    let name = "e2e-memory-pressure";
    let cluster = Cluster::connect().await?;
    let image = cluster.push("tool", "v1").await?;
    let available_mib = proc_field("/proc/meminfo", "MemAvailable").context("MemAvailable")? / 1024;
    anyhow::ensure!(
        available_mib > MARGIN_MIB + 1024,
        "too little free memory for this test: {available_mib} MiB"
    );
    let threshold = format!("memory.available<{}Mi", available_mib - MARGIN_MIB);
    cluster.forget_node(name).await?;
    let mut node = KrustletNode::start(
        name,
        10534,
        &[
            "--eviction-hard",
            &threshold,
            "--eviction-monitoring-interval",
            "500ms",
            "--eviction-pressure-transition-period",
            "30s",
        ],
    )?;
    let nodes = cluster.nodes();
    wait_node(&nodes, name, 60, "Ready without pressure", |n| {
        node_condition(n, "Ready").as_deref() == Some("True")
            && node_condition(n, "MemoryPressure").as_deref() == Some("False")
    })
    .await?;
    let pods = cluster.pods();
    // Within its request (Burstable): neither evicted nor refused under pressure.
    create_fresh(
        &pods,
        &tool_pod("pressure-modest", name, &image, 8, Some("64Mi")),
    )
    .await?;
    wait_pod(&pods, "pressure-modest", 120, "Running", |p| {
        e2e::phase(p) == "Running"
    })
    .await?;
    create_fresh(
        &pods,
        &tool_pod("pressure-hog", name, &image, HOG_MIB, None),
    )
    .await?;
    let evicted = wait_pod(&pods, "pressure-hog", 180, "evicted", |p| {
        p.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("Evicted")
    })
    .await?;
    let status = evicted.status.clone().unwrap_or_default();
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    let message = status.message.unwrap_or_default();
    println!("{threshold}: {message}");
    assert!(
        message.starts_with("The node was low on resource: memory. Threshold quantity: "),
        "{message}"
    );
    assert!(
        message.contains("Container main was using ")
            && message.ends_with(", request is 0, has larger consumption of memory. "),
        "{message}"
    );
    let events = cluster.events("pressure-hog").await?;
    assert!(
        events.iter().any(|e| e.reason.as_deref() == Some("Evicted")
            && e.message.as_deref() == Some(message.as_str())),
        "no Evicted event: {events:?}"
    );
    wait_node(&nodes, name, 60, "MemoryPressure", |n| {
        node_condition(n, "MemoryPressure").as_deref() == Some("True")
    })
    .await?;
    // The modest pod runs on, and the agent with it.
    let modest = pods.get("pressure-modest").await?;
    assert_eq!(e2e::phase(&modest), "Running");
    assert!(node.pid().is_some());
    wait_node(&nodes, name, 120, "MemoryPressure over, Ready", |n| {
        node_condition(n, "MemoryPressure").as_deref() == Some("False")
            && node_condition(n, "Ready").as_deref() == Some("True")
    })
    .await?;
    for pod in ["pressure-hog", "pressure-modest"] {
        delete_and_wait(&pods, pod, 120).await?;
    }
    node.stop()?;
    Ok(())
}
