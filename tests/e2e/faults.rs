//! Faults the node must survive: its data dir's filesystem filling up.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use e2e::{
    Cluster, KrustletNode, create_fresh, node_condition, pod_with_spec, wait_node, wait_pod,
};

/// A tmpfs of `mib` MiB mounted at `path` for the test's life (the tests run as root, as
/// `hack/test` does), unmounted on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(path: &Path, mib: u32) -> Result<Self> {
        let _ = Command::new("umount").arg(path).status();
        let _ = std::fs::remove_dir_all(path);
        std::fs::create_dir_all(path)?;
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .context("running mount")?
            .success();
        if !ok {
            bail!(
                "cannot mount a tmpfs at {} (the e2e tests run as root)",
                path.display()
            );
        }
        Ok(Self(path.to_owned()))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn filler(name: &str, node: &str, image: &str, mib: u32) -> k8s_openapi::api::core::v1::Pod {
    pod_with_spec(
        name,
        node,
        serde_json::json!({
            "restartPolicy": "Never",
            "containers": [{
                "name": "main",
                "image": image,
                "args": ["fill", "/scratch/f", mib.to_string(), "sleep", "600"],
                "volumeMounts": [{ "name": "scratch", "mountPath": "/scratch" }]
            }],
            "volumes": [{ "name": "scratch", "emptyDir": {} }]
        }),
    )
}

/// A pod fills the node's data dir: the node reports `DiskPressure`, refuses new pods
/// as the kubelet does, evicts the pod using the disk with the kubelet's reason and
/// message, frees its volumes, and recovers; the agent and the node stay up throughout.
#[tokio::test]
async fn a_full_data_dir_gives_disk_pressure_eviction_and_recovery() -> Result<()> {
    let name = "e2e-diskfull";
    let cluster = Cluster::connect().await?;
    let image = cluster.push("tool", "v1").await?;
    let dir = e2e::root().join("target/e2e").join(name);
    let fs = SmallFs::mount(&dir, 48)?;
    cluster.forget_node(name).await?;
    let mut node = KrustletNode::start_in(
        name,
        10390,
        &[
            "--eviction-hard",
            "nodefs.available<25%",
            "--eviction-monitoring-interval",
            "500ms",
            "--eviction-pressure-transition-period",
            "60s",
        ],
        fs.0.clone(),
    )?;
    let nodes = cluster.nodes();
    wait_node(&nodes, name, 60, "Ready without pressure", |n| {
        node_condition(n, "Ready").as_deref() == Some("True")
            && node_condition(n, "DiskPressure").as_deref() == Some("False")
    })
    .await?;
    let pods = cluster.pods();
    create_fresh(&pods, &filler("diskfull-filler", name, &image, 100)).await?;
    // It writes until the disk is full; the eviction manager then sees less than 25 %
    // free and evicts it (the only pod, and the one using the disk).
    let evicted = wait_pod(&pods, "diskfull-filler", 120, "evicted", |p| {
        p.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("Evicted")
    })
    .await?;
    let status = evicted.status.clone().unwrap_or_default();
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    let message = status.message.unwrap_or_default();
    assert!(
        message
            .starts_with("The node was low on resource: ephemeral-storage. Threshold quantity: "),
        "{message}"
    );
    let events = cluster.events("diskfull-filler").await?;
    assert!(
        events.iter().any(|e| e.reason.as_deref() == Some("Evicted")
            && e.message.as_deref() == Some(message.as_str())),
        "no Evicted event: {events:?}"
    );
    // The condition lasts the transition period after the last crossing, and while it
    // lasts new pods are refused as the kubelet refuses them.
    wait_node(&nodes, name, 30, "DiskPressure", |n| {
        node_condition(n, "DiskPressure").as_deref() == Some("True")
    })
    .await?;
    // Bound by `nodeName`: the scheduler keeps pods off the node while the controller
    // manager's disk-pressure taint is on it, so only a direct binding reaches admission.
    let mut refused = filler("diskfull-refused", name, &image, 1);
    if let Some(spec) = refused.spec.as_mut() {
        spec.node_name = Some(name.to_owned());
    }
    create_fresh(&pods, &refused).await?;
    let refused = wait_pod(&pods, "diskfull-refused", 60, "rejected", |p| {
        e2e::phase(p) == "Failed"
    })
    .await?;
    let status = refused.status.unwrap_or_default();
    assert_eq!(status.reason.as_deref(), Some("Evicted"));
    assert_eq!(
        status.message.as_deref(),
        Some("Pod was rejected: The node had condition: [DiskPressure]. ")
    );
    // The evicted pod's volumes are removed, so the disk frees and the pressure ends
    // after the transition period; the node stayed Ready and the agent alive.
    wait_node(&nodes, name, 180, "DiskPressure over", |n| {
        node_condition(n, "DiskPressure").as_deref() == Some("False")
            && node_condition(n, "Ready").as_deref() == Some("True")
    })
    .await?;
    assert!(node.pid().is_some());
    let volumes = std::fs::read_dir(fs.0.join("pods"))?
        .flatten()
        .map(|e| e.path().join("_volumes"))
        .filter(|p| p.exists())
        .count();
    assert_eq!(
        volumes, 0,
        "the evicted pod's volumes are still on the disk"
    );
    // A new pod runs again.
    create_fresh(&pods, &filler("diskfull-after", name, &image, 1)).await?;
    wait_pod(&pods, "diskfull-after", 60, "Running", |p| {
        e2e::phase(p) == "Running"
    })
    .await?;
    for pod in ["diskfull-filler", "diskfull-refused", "diskfull-after"] {
        e2e::ensure_absent(&pods, pod).await?;
    }
    node.stop()?;
    drop(fs);
    Ok(())
}

/// The API server away for 60 s (the node's connections to it cut and refused by a proxy,
/// while it keeps serving the other tests): the running pod keeps running and is neither
/// restarted nor duplicated, a pod that finished meanwhile and a restart that happened
/// meanwhile are reported once it is back, with their events, and the node is Ready
/// again.
#[tokio::test]
async fn an_api_server_outage_loses_nothing() -> Result<()> {
    use std::time::{Duration, Instant};
    let name = "e2e-outage";
    let cluster = Cluster::connect().await?;
    let tool = cluster.push("tool", "v1").await?;
    let env = e2e::cluster_env()?;
    let apiserver = env
        .get("APISERVER")
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:16443".to_owned());
    let proxy = e2e::outage::Proxy::start(&apiserver).await?;
    cluster.forget_node(name).await?;
    let mut node = KrustletNode::start_via(name, 10391, &[], &proxy.addr)?;
    let nodes = cluster.nodes();
    let ready = |n: &k8s_openapi::api::core::v1::Node| {
        node_condition(n, "Ready").as_deref() == Some("True")
    };
    wait_node(&nodes, name, 60, "Ready", ready).await?;
    let pods = cluster.pods();
    let pod = |pod: &str, args: &[&str], policy: &str| {
        pod_with_spec(
            pod,
            name,
            serde_json::json!({
                "restartPolicy": policy,
                "containers": [{ "name": "main", "image": tool, "args": args }]
            }),
        )
    };
    create_fresh(
        &pods,
        &pod("outage-steady", &["print", "up", "sleep", "600"], "Never"),
    )
    .await?;
    create_fresh(
        &pods,
        &pod(
            "outage-finisher",
            &["sleep", "15", "print", "finished"],
            "Never",
        ),
    )
    .await?;
    create_fresh(
        &pods,
        &pod("outage-crasher", &["sleep", "15", "exit", "3"], "Always"),
    )
    .await?;
    let mut before = Vec::new();
    for p in ["outage-steady", "outage-finisher", "outage-crasher"] {
        let running = wait_pod(&pods, p, 60, "Running", |p| e2e::phase(p) == "Running").await?;
        before.push(running);
    }
    proxy.down();
    let down_at = jiff::Timestamp::now();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(60)).await;
    proxy.up();
    let up_at = jiff::Timestamp::now();
    assert!(t0.elapsed() >= Duration::from_secs(60));
    wait_node(&nodes, name, 120, "Ready again", ready).await?;
    // The pod that finished during the outage is reported, exit code and all.
    let finished = wait_pod(&pods, "outage-finisher", 120, "Succeeded", |p| {
        e2e::phase(p) == "Succeeded"
    })
    .await?;
    let t = e2e::terminated(&finished, "main").context("terminated")?;
    assert_eq!(t.exit_code, 0);
    // So is the restart during the outage, and its events carry the time they happened.
    wait_pod(&pods, "outage-crasher", 120, "restarted", |p| {
        e2e::container_status(p, "main").is_some_and(|s| s.restart_count >= 1)
    })
    .await?;
    let during = |e: &k8s_openapi::api::core::v1::Event| {
        e.first_timestamp
            .as_ref()
            .is_some_and(|t| t.0 > down_at && t.0 < up_at)
    };
    let events = cluster.events("outage-crasher").await?;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("Started") && during(e)),
        "no Started event from the outage reached the API server: {events:?}"
    );
    // The steady pod ran on: same pod, same container run, never restarted.
    let steady = pods.get("outage-steady").await?;
    assert_eq!(e2e::phase(&steady), "Running");
    assert_eq!(steady.metadata.uid, before[0].metadata.uid);
    let status = e2e::container_status(&steady, "main").context("status")?;
    assert_eq!(status.restart_count, 0);
    assert_eq!(
        status.container_id,
        e2e::container_status(&before[0], "main").and_then(|s| s.container_id)
    );
    assert!(node.pid().is_some());
    for p in ["outage-steady", "outage-finisher", "outage-crasher"] {
        e2e::ensure_absent(&pods, p).await?;
    }
    node.stop()?;
    Ok(())
}

/// The registry goes away and comes back: a pull backs off while it is away and succeeds
/// once it is back; a pod whose image is on the node starts meanwhile.
#[tokio::test]
async fn a_registry_away_and_back_delays_pulls_only() -> Result<()> {
    let mut registry = e2e::OwnRegistry::new("away", 15013, None)?;
    registry.start().await?;
    let (cluster, node) = e2e::setup(
        "e2e-registry-away",
        10392,
        &["--insecure-registries", &registry.addr],
    )
    .await?;
    let image = e2e::push_as(
        &registry.addr,
        "tool",
        "e2e/away:v1",
        &oci::PushFormat::cncf(),
        &oci::RegistryAuth::Anonymous,
    )
    .await?;
    let pods = cluster.pods();
    let pod = |name: &str, policy: &str| {
        pod_with_spec(
            name,
            &node.name,
            serde_json::json!({
                "restartPolicy": "Never",
                "containers": [{ "name": "main", "image": image, "imagePullPolicy": policy,
                    "args": ["print", "up", "sleep", "600"] }]
            }),
        )
    };
    create_fresh(&pods, &pod("away-first", "IfNotPresent")).await?;
    wait_pod(&pods, "away-first", 60, "Running", |p| {
        e2e::phase(p) == "Running"
    })
    .await?;
    registry.stop();
    // A pull that must reach the registry backs off...
    create_fresh(&pods, &pod("away-always", "Always")).await?;
    wait_pod(&pods, "away-always", 120, "ImagePullBackOff", |p| {
        e2e::waiting_reason(p, "main").as_deref() == Some("ImagePullBackOff")
    })
    .await?;
    // ...while the image the node holds still starts pods, and the running one runs on.
    create_fresh(&pods, &pod("away-cached", "IfNotPresent")).await?;
    wait_pod(&pods, "away-cached", 60, "Running", |p| {
        e2e::phase(p) == "Running"
    })
    .await?;
    let first = pods.get("away-first").await?;
    assert_eq!(e2e::phase(&first), "Running");
    registry.start().await?;
    // Back-off is at most 5 minutes; the first retries come after 10 s, 20 s, 40 s.
    wait_pod(
        &pods,
        "away-always",
        180,
        "Running once the registry is back",
        |p| e2e::phase(p) == "Running",
    )
    .await?;
    for p in ["away-first", "away-always", "away-cached"] {
        e2e::ensure_absent(&pods, p).await?;
    }
    drop(node);
    Ok(())
}

/// Guest code cannot starve the agent: with twice as many CPU-bound modules as cores,
/// the node lease is still renewed and the kubelet API still answers, both well within
/// their periods (the bounds are generous: CI shares 2 cores among 16 tests and the
/// control plane; `hack/bench` is where latency is measured).
#[tokio::test]
async fn busy_modules_on_every_core_do_not_starve_the_agent() -> Result<()> {
    use std::time::{Duration, Instant};
    let (cluster, node) = e2e::setup("e2e-busy", 10393, &[]).await?;
    let image = cluster.push("hash", "v1").await?;
    let pods = cluster.pods();
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let names: Vec<String> = (0..2 * cores).map(|i| format!("busy-{i}")).collect();
    for name in &names {
        // About 30 s of hashing on a core of its own (8000 rounds take about 1.2 s), so a minute here where 2 modules share each core.
        let pod = pod_with_spec(
            name,
            &node.name,
            serde_json::json!({
                "restartPolicy": "Never",
                "containers": [{ "name": "main", "image": image, "args": ["200000"] }]
            }),
        );
        create_fresh(&pods, &pod).await?;
    }
    for name in &names {
        wait_pod(&pods, name, 60, "Running", |p| e2e::phase(p) == "Running").await?;
    }
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(cluster.client.clone(), "kube-node-lease");
    let mut slowest = Duration::ZERO;
    let mut oldest_lease = jiff::SignedDuration::ZERO;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) {
        let asked = Instant::now();
        node.metrics().await?;
        slowest = slowest.max(asked.elapsed());
        let lease = leases.get(&node.name).await?;
        let renewed = lease
            .spec
            .and_then(|s| s.renew_time)
            .context("lease never renewed")?;
        oldest_lease = oldest_lease.max(jiff::Timestamp::now().duration_since(renewed.0));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // Still busy at the end, so the whole window was under load.
    for name in &names {
        assert_eq!(e2e::phase(&pods.get(name).await?), "Running", "{name}");
    }
    assert!(
        slowest < Duration::from_secs(5),
        "the kubelet API took {slowest:?}"
    );
    assert!(
        oldest_lease < jiff::SignedDuration::from_secs(25),
        "the lease went {oldest_lease} without renewal (renewed every 10 s)"
    );
    for name in &names {
        e2e::ensure_absent(&pods, name).await?;
    }
    drop(node);
    Ok(())
}

/// `kill -9` of the agent in the middle of a download: at restart the store holds no torn
/// file (what was being downloaded lived under `images/tmp/` and is dropped), every blob
/// it holds matches its digest, and pods run.
#[tokio::test]
async fn a_kill_9_mid_pull_leaves_a_consistent_store() -> Result<()> {
    use std::time::Duration;
    let registry = e2e::hostile::HostileRegistry::start("unused", Path::new("/unused")).await?;
    let flags = ["--insecure-registries", registry.addr.as_str()];
    let (cluster, mut node) = e2e::setup("e2e-kill9", 10394, &flags).await?;
    let tool = cluster.push("tool", "v1").await?;
    let pods = cluster.pods();
    let node_name = node.name.clone();
    let pod = |name: &str, image: &str| {
        pod_with_spec(
            name,
            &node_name,
            serde_json::json!({
                "restartPolicy": "Never",
                "containers": [{ "name": "main", "image": image, "args": ["print", "ran"] }]
            }),
        )
    };
    // The slow-loris blob sends its headers and one byte, then nothing for longer than
    // the test needs: the download stands half done under `images/tmp/`.
    let slow = registry.image(e2e::hostile::Attack::SlowLorisBlob);
    create_fresh(&pods, &pod("kill9-pulling", &slow)).await?;
    let tmp = node.data_dir.join("images/tmp");
    let mut torn: Vec<PathBuf> = Vec::new();
    for _ in 0..300 {
        torn = std::fs::read_dir(&tmp)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        if !torn.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !torn.is_empty(),
        "no download in progress under {}",
        tmp.display()
    );
    let pid = node.pid().context("node not running")?;
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    assert!(killed.success());
    node.restart(&flags)?;
    wait_node(
        &cluster.nodes(),
        &node.name,
        60,
        "Ready after the restart",
        |n| node_condition(n, "Ready").as_deref() == Some("True"),
    )
    .await?;
    // The torn download is gone (the new process may have begun the same pull again,
    // under a name of its own) and every blob kept is whole.
    // (The node may still look Ready from before the kill: wait for the new process.)
    let mut kept: Vec<&PathBuf> = torn.iter().collect();
    for _ in 0..600 {
        kept.retain(|p| p.exists());
        if kept.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(kept.is_empty(), "torn downloads kept: {kept:?}");
    let blobs = node.data_dir.join("images/blobs/sha256");
    for entry in std::fs::read_dir(&blobs)?.flatten() {
        use sha2::Digest as _;
        let data = std::fs::read(entry.path())?;
        let hex = format!("{:x}", sha2::Sha256::digest(&data));
        assert_eq!(
            entry.file_name().to_string_lossy(),
            hex,
            "a blob that is not whole"
        );
    }
    create_fresh(&pods, &pod("kill9-after", &tool)).await?;
    wait_pod(&pods, "kill9-after", 60, "Succeeded", |p| {
        e2e::phase(p) == "Succeeded"
    })
    .await?;
    for p in ["kill9-pulling", "kill9-after"] {
        e2e::ensure_absent(&pods, p).await?;
    }
    Ok(())
}
