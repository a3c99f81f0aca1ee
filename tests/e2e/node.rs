//! Node registration, lease, readiness and shutdown.

use std::time::Duration;

use e2e::{Cluster, node_condition, wait_node};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

#[tokio::test]
async fn node_registers_stays_ready_past_the_grace_period_and_goes_not_ready_on_shutdown()
-> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    let nodes = cluster.nodes();
    let mut node = cluster.fresh_node("e2e-node", 10301).await?;
    let n = wait_node(&nodes, &node.name, 60, "Ready", |n| {
        node_condition(n, "Ready").as_deref() == Some("True")
    })
    .await?;

    let labels = n.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("kubernetes.io/arch").map(String::as_str),
        Some("wasm32-wasi")
    );
    assert_eq!(
        labels.get("kubernetes.io/os").map(String::as_str),
        Some("wasip1")
    );
    assert_eq!(labels.get("kubernetes.io/hostname"), Some(&node.name));
    assert_eq!(labels.get("type").map(String::as_str), Some("krustlet"));
    let taints = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    for effect in ["NoSchedule", "NoExecute"] {
        assert!(
            taints.iter().any(|t| t.key == "kubernetes.io/arch"
                && t.value.as_deref() == Some("wasm32-wasi")
                && t.effect == effect),
            "missing {effect} taint in {taints:?}"
        );
    }
    let status = n.status.clone().unwrap_or_default();
    let info = status.node_info.clone().unwrap_or_default();
    assert!(
        info.container_runtime_version.starts_with("wasmtime://"),
        "{}",
        info.container_runtime_version
    );
    assert!(
        info.kubelet_version.starts_with("v1.36"),
        "{}",
        info.kubelet_version
    );
    assert_eq!(info.architecture, "wasm32-wasi");
    let capacity = status.capacity.clone().unwrap_or_default();
    for key in ["cpu", "memory", "pods"] {
        assert!(
            capacity.contains_key(key),
            "capacity lacks {key}: {capacity:?}"
        );
    }
    // Without --max-pods: 2 MiB of memory and 4 open files per pod after 1 GiB and 1024
    // files kept back, within [110, 8000]; the node raised its soft file limit to the hard.
    let limits = std::fs::read_to_string(format!(
        "/proc/{}/limits",
        node.pid().expect("krustlet runs")
    ))?;
    let files: Vec<u64> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a file limit")
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(files[0], files[1], "soft file limit not raised: {limits}");
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let memory: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .map(|kib: u64| kib * 1024)
        .expect("MemTotal");
    let fit = ((memory - (1 << 30)) / (2 << 20)).min(files[0].saturating_sub(1024) / 4);
    // The API server writes quantities canonically: 2000 comes back as "2k".
    let pods = &capacity["pods"].0;
    let pods: u64 = match pods.strip_suffix('k') {
        Some(thousands) => thousands.parse::<u64>()? * 1000,
        None => pods.parse()?,
    };
    assert_eq!(pods, fit.clamp(110, 8000));
    let port = status
        .daemon_endpoints
        .and_then(|d| d.kubelet_endpoint)
        .map(|e| e.port);
    assert_eq!(port, Some(i32::from(node.port)));
    let addresses = status.addresses.unwrap_or_default();
    assert!(
        addresses
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == "127.0.0.1"),
        "{addresses:?}"
    );

    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "kube-node-lease");
    let mut lease = None;
    for _ in 0..50 {
        if let Some(l) = leases.get_opt(&node.name).await? {
            lease = Some(l);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first = lease
        .expect("node lease created within 10s")
        .spec
        .unwrap_or_default();
    assert_eq!(first.holder_identity.as_deref(), Some(node.name.as_str()));

    // hack/cluster runs the controller manager with --node-monitor-grace-period 20s: a node
    // that stopped renewing its lease would be NotReady (Unknown) by now.
    let pid = node.pid().expect("krustlet runs");
    let cpu_before = e2e::bench::cpu_ticks(pid).expect("its CPU time");
    tokio::time::sleep(Duration::from_secs(26)).await;
    // An idle node (no pods) renews its lease and reports its status, nothing more: far
    // under a quarter of one core. A loop that spins takes whatever core it is given.
    let ticks = e2e::bench::cpu_ticks(pid).expect("its CPU time") - cpu_before;
    assert!(
        ticks < 26 * 100 / 4,
        "an idle node used {ticks} ticks of CPU in 26 s"
    );
    let n = nodes.get(&node.name).await?;
    assert_eq!(node_condition(&n, "Ready").as_deref(), Some("True"));
    let renewed = leases.get(&node.name).await?.spec.unwrap_or_default();
    assert!(
        renewed.renew_time > first.renew_time,
        "lease not renewed: {:?} then {:?}",
        first.renew_time,
        renewed.renew_time
    );

    let exit = node.stop()?;
    assert!(exit.success(), "krustlet exited with {exit}");
    let n = nodes.get(&node.name).await?;
    let ready = n
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready condition");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_deref()),
        ("False", Some("KubeletNotReady"))
    );
    nodes.delete(&node.name, &Default::default()).await?;
    Ok(())
}

#[tokio::test]
async fn a_container_pod_without_the_toleration_is_never_scheduled_to_the_node()
-> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    let node = cluster.fresh_node("e2e-taint", 10302).await?;
    wait_node(&cluster.nodes(), &node.name, 60, "Ready", |n| {
        node_condition(n, "Ready").as_deref() == Some("True")
    })
    .await?;
    let pods = cluster.pods();
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "e2e-container-pod" },
        "spec": { "containers": [{ "name": "nginx", "image": "nginx:1.27" }] }
    }))?;
    let _ = pods.delete("e2e-container-pod", &Default::default()).await;
    e2e::wait_gone(&pods, "e2e-container-pod", 30).await?;
    pods.create(&Default::default(), &pod).await?;
    let p = e2e::wait_pod(&pods, "e2e-container-pod", 120, "PodScheduled=False", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter().any(|c| {
                    c.type_ == "PodScheduled"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("Unschedulable")
                })
            })
    })
    .await?;
    let message = p
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "PodScheduled")
        .and_then(|c| c.message)
        .unwrap_or_default();
    assert!(message.contains("untolerated taint"), "{message}");
    // Keep watching for a while: the pod must stay unbound while our node is Ready.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let p = pods.get("e2e-container-pod").await?;
    assert_eq!(p.spec.and_then(|s| s.node_name), None);
    pods.delete("e2e-container-pod", &Default::default())
        .await?;
    Ok(())
}
