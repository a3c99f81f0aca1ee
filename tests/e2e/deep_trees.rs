//! Deep directory trees (issue 22, finding 5): a module nests directories descriptor by
//! descriptor in its `emptyDir`, so that no path grows, as deep as it likes. The node
//! agent must remove them with the pod and at start-up, count the files at the bottom
//! toward `sizeLimit`, and stay alive throughout.

use std::path::Path;

use anyhow::{Context, Result};
use e2e::{
    KrustletNode, create_fresh, delete_and_wait, ensure_absent, node_condition, phase,
    pod_with_spec, setup, until, wait_node, wait_pod,
};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::LogParams;

const NODE: &str = "e2e-deep-trees";
const PORT: u16 = 10561;
const FLAGS: &[&str] = &["--sync-frequency", "1s"];
/// Levels the deep pod nests (the agent aborted on 30 000 before the fix).
const DEPTH: u32 = 30_000;

/// A pod on `node` running `nest /scratch ARGS...` with an `emptyDir` at `/scratch`.
fn nest_pod(
    node: &str,
    name: &str,
    image: &str,
    args: &[&str],
    empty_dir: serde_json::Value,
) -> Pod {
    let mut all = vec!["/scratch"];
    all.extend_from_slice(args);
    pod_with_spec(
        name,
        node,
        serde_json::json!({
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main", "image": image, "args": all,
                "volumeMounts": [{ "name": "scratch", "mountPath": "/scratch" }]
            }],
            "volumes": [{ "name": "scratch", "emptyDir": empty_dir }]
        }),
    )
}

/// Waits (up to `secs`) until pod `name`'s log has the line `line`.
async fn log_line(pods: &Api<Pod>, name: &str, line: &str, secs: u64) -> Result<()> {
    until(secs, &format!("{name} logging {line:?}"), || async {
        let log = pods.logs(name, &LogParams::default()).await?;
        if log.lines().any(|l| l == line) {
            return Ok(Some(()));
        }
        // Said as the last error: a read without the line says more than an earlier 404.
        let tail: Vec<&str> = log.lines().rev().take(3).collect();
        anyhow::bail!("not in the log yet, which ends {tail:?}")
    })
    .await
}

/// Whether the agent process runs (not exited: an aborted child stays a zombie until
/// the test reaps it).
fn alive(node: &KrustletNode) -> bool {
    let Some(pid) = node.pid() else { return false };
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// Whether a directory of pod `name` is still under the node's data dir.
fn pod_dir_left(data_dir: &Path, name: &str) -> Result<bool> {
    let prefix = format!("default_{name}_");
    let Ok(entries) = std::fs::read_dir(data_dir.join("pods")) else {
        return Ok(false);
    };
    Ok(entries
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(&prefix)))
}

/// Waits until pod `name`'s directory is gone from the node, the agent alive.
async fn dir_removed(node: &KrustletNode, name: &str) -> Result<()> {
    until(120, &format!("the directory of {name} removed"), || async {
        anyhow::ensure!(alive(node), "the agent died:\n{}", tail(node));
        Ok((!pod_dir_left(&node.data_dir, name)?).then_some(()))
    })
    .await
}

/// The end of the agent's log.
fn tail(node: &KrustletNode) -> String {
    let log = node.log().unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Removes what an earlier (failed) run left in the node's data dir with `rm`, which
/// walks iteratively: a 30 000-level tree would overflow the test's own stack in
/// `std::fs::remove_dir_all` (which the node harness uses).
fn clear_leftovers() -> Result<()> {
    let dir = e2e::root().join("target/e2e").join(NODE);
    let status = std::process::Command::new("rm")
        .args(["-rf", "--one-file-system"])
        .arg(&dir)
        .status()
        .context("running rm")?;
    anyhow::ensure!(status.success(), "rm -rf {} failed", dir.display());
    Ok(())
}

/// A pod nests 30 000 directories and is deleted: its directory is removed and the
/// agent stays alive; the same again with the agent stopped meanwhile, so its start-up
/// clean-up removes the tree. Before the fix the agent aborted ("has overflowed its
/// stack") removing it, and again at every start.
#[tokio::test]
async fn a_pod_nesting_30000_directories_cannot_crash_the_agent() -> Result<()> {
    clear_leftovers()?;
    let (cluster, mut node) = setup(NODE, PORT, FLAGS).await?;
    let pods = cluster.pods();
    let image = cluster.push("nest", "v1").await?;
    let depth = DEPTH.to_string();
    let reached = format!("nested {DEPTH}");

    create_fresh(
        &pods,
        &nest_pod(NODE, "deep-nest", &image, &[&depth], serde_json::json!({})),
    )
    .await?;
    log_line(&pods, "deep-nest", &reached, 600).await?;
    let deleting = std::time::Instant::now();
    delete_and_wait(&pods, "deep-nest", 120).await?;
    dir_removed(&node, "deep-nest").await?;
    println!(
        "{DEPTH} levels: pod deleted and its directory removed in {:?}",
        deleting.elapsed()
    );

    // Deleted while the agent is down: its start-up clean-up removes the tree.
    create_fresh(
        &pods,
        &nest_pod(
            NODE,
            "deep-orphan",
            &image,
            &[&depth],
            serde_json::json!({}),
        ),
    )
    .await?;
    log_line(&pods, "deep-orphan", &reached, 600).await?;
    node.stop()?;
    ensure_absent(&pods, "deep-orphan").await?;
    anyhow::ensure!(pod_dir_left(&node.data_dir, "deep-orphan")?);
    node.restart(FLAGS)?;
    wait_node(&cluster.nodes(), NODE, 120, "Ready again", |n| {
        node_condition(n, "Ready").as_deref() == Some("True")
    })
    .await?;
    dir_removed(&node, "deep-orphan").await?;
    let log = node.log()?;
    assert!(!log.contains("overflowed"), "{}", tail(&node));
    assert!(alive(&node), "{}", tail(&node));
    node.stop()?;
    Ok(())
}

/// A file written 1 100 levels down counts toward the `emptyDir`'s `sizeLimit`: the pod
/// is evicted as the kubelet evicts it. Before the fix the walk stopped at 1 024 levels
/// and the pod kept its 4 MiB under a 1 MiB limit. The module says `nested 1100` before
/// it writes; the eviction (usage checked every second) may end it in the middle of the
/// write, before it says it wrote, so the eviction's message is what shows the file
/// counted (nothing else is in the volume).
#[tokio::test]
async fn a_file_below_depth_1024_counts_toward_size_limit() -> Result<()> {
    // Its own node: the pod used to name the other test's node, and so ran only
    // while that test's node was up, and failed when it went first.
    const LIMIT_NODE: &str = "e2e-deep-limit";
    let (cluster, mut node) = setup(LIMIT_NODE, 10562, FLAGS).await?;
    let pods = cluster.pods();
    let image = cluster.push("nest", "v1").await?;
    let pod = nest_pod(
        LIMIT_NODE,
        "deep-limit",
        &image,
        &["1100", "4194304"],
        serde_json::json!({ "sizeLimit": "1Mi" }),
    );
    create_fresh(&pods, &pod).await?;
    log_line(&pods, "deep-limit", "nested 1100", 120).await?;
    let p = wait_pod(&pods, "deep-limit", 120, "Evicted", |p| {
        phase(p) == "Failed"
    })
    .await?;
    let status = p.status.unwrap_or_default();
    assert_eq!(status.reason.as_deref(), Some("Evicted"));
    assert_eq!(
        status.message.as_deref(),
        Some("Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". ")
    );
    assert!(alive(&node));
    delete_and_wait(&pods, "deep-limit", 120).await?;
    node.stop()?;
    Ok(())
}
