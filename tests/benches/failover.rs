//! Failover across krustlet nodes (issue 13): three nodes under a Deployment spread over
//! them; one node killed with SIGKILL; the time until every replica is Ready again on
//! the other two. Run with `hack/bench failover`, which builds krustlet in release mode
//! and sets `KRUSTLET_BIN`.
//!
//! For each N of `FAILOVER_SIZES` (10,100) the killed node runs N pods (the Deployment
//! has 3N replicas), and the time is split into kill -> node `Ready` `Unknown` (the
//! controller's grace period), -> its pods evicted (their `tolerationSeconds`), -> first
//! replacement created, -> every replacement `Ready` (the part krustlet controls). The
//! controller's timings are printed beside it. The killed node is then restarted on its
//! data dir (it finishes the evicted pods) before the next size. Written to
//! `bench-results/failover.json`.

use std::time::Duration;

use e2e::fleet::{
    PodWatch, TOLERATION_SECONDS, group_flags, kill_and_measure, remove_deployment,
    spread_deployment,
};
use e2e::{Cluster, ControllerTimings};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::PostParams;

const NODES: [&str; 3] = ["bench-fleet-a", "bench-fleet-b", "bench-fleet-c"];
const APP: &str = "bench-fleet";

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    let timings = ControllerTimings::read()?;
    let sizes: Vec<usize> = std::env::var("FAILOVER_SIZES")
        .unwrap_or_else(|_| "10,100".to_owned())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let flags = group_flags("bench");
    let mut flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    flags.extend(["--max-pods", "1000"]);
    let mut nodes = Vec::new();
    for (i, name) in NODES.iter().enumerate() {
        nodes.push(cluster.ready_node(name, 10511 + i as u16, &flags).await?);
    }
    let tool = cluster.push("tool", "bench").await?;
    let deployments: Api<Deployment> = Api::default_namespaced(cluster.client.clone());
    remove_deployment(&cluster, APP, 300).await?;
    println!(
        "controller: --node-monitor-grace-period {:?}, --node-monitor-period {:?}; pods: tolerationSeconds {TOLERATION_SECONDS} (unreachable, not-ready)",
        timings.grace_period, timings.monitor_period
    );
    println!(
        "| pods on the killed node | kill -> node Unknown | -> pods evicted | -> first replacement | -> all replacements Ready | total | earliest possible |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let mut rows = Vec::new();
    for n in sizes {
        let replicas = 3 * n;
        let pods = PodWatch::start(cluster.pods(), &format!("app={APP}")).await?;
        deployments
            .create(
                &PostParams::default(),
                &spread_deployment(APP, "bench", &tool, i32::try_from(replicas)?),
            )
            .await?;
        pods.until(120 + replicas as u64, "every replica Ready", |p| {
            p.ready_elsewhere("") == replicas
        })
        .await?;
        let on_dead = pods.get().active_on(NODES[2]).len();
        let f = kill_and_measure(&cluster, &mut nodes[2], &pods, replicas, 300 + n as u64).await?;
        let lower = f.lower_bound(&timings);
        // From the first replacement to the last Ready: creation by the ReplicaSet,
        // scheduling, and the start on krustlet.
        let replacing = f.to_ready.saturating_sub(f.to_first_replacement);
        println!(
            "| {on_dead} | {:.1} s | {:.1} s | {:.1} s | {:.1} s | {:.1} s | {:.1} s |",
            secs(f.to_unreachable),
            secs(f.to_evicted.saturating_sub(f.to_unreachable)),
            secs(f.to_first_replacement.saturating_sub(f.to_evicted)),
            secs(replacing),
            secs(f.to_ready),
            secs(lower),
        );
        rows.push(serde_json::json!({
            "pods_on_killed_node": on_dead,
            "replicas": replicas,
            "seconds_to_unreachable": secs(f.to_unreachable),
            "seconds_to_evicted": secs(f.to_evicted),
            "seconds_to_first_replacement": secs(f.to_first_replacement),
            "seconds_to_all_ready": secs(f.to_ready),
            "seconds_first_replacement_to_all_ready": secs(replacing),
            "earliest_possible_seconds": secs(lower),
            "last_heartbeat_before_kill_seconds": secs(Duration::try_from(f.killed_at.duration_since(f.last_heartbeat)).unwrap_or_default()),
        }));
        // The node comes back and finishes the evicted pods; then the next size.
        let dead = &mut nodes[2];
        dead.restart(&flags)?;
        let victims = f.victims.clone();
        pods.until(
            120 + n as u64,
            "the evicted pods finished by their node",
            |p| victims.iter().all(|v| !p.now.contains_key(v)),
        )
        .await?;
        e2e::wait_node(&cluster.nodes(), NODES[2], 120, "Ready", |node| {
            e2e::node_condition(node, "Ready").as_deref() == Some("True")
        })
        .await?;
        drop(pods);
        remove_deployment(&cluster, APP, 300 + replicas as u64).await?;
    }
    let dir = e2e::root().join("bench-results");
    std::fs::create_dir_all(&dir)?;
    let json = serde_json::json!({
        "node_monitor_grace_period_seconds": secs(timings.grace_period),
        "node_monitor_period_seconds": secs(timings.monitor_period),
        "toleration_seconds": TOLERATION_SECONDS,
        "sizes": rows,
    });
    std::fs::write(
        dir.join("failover.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    println!("written: bench-results/failover.json");
    drop(nodes);
    for name in NODES {
        cluster.forget_node(name).await?;
    }
    Ok(())
}
