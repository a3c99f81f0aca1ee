//! krustlet nodes in a fleet under the real controllers: a node killed without a goodbye
//! has its pods moved by the node-lifecycle controller, taint-based eviction and the
//! ReplicaSet, and cleans up what it no longer owns when it comes back; a node cordoned,
//! drained under a PodDisruptionBudget and uncordoned.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use e2e::fleet::{
    PodWatch, Pods, TOLERATION_SECONDS, group_flags, kill_and_measure, node_of, remove_deployment,
    spread_deployment, unreachable_taint,
};
use e2e::{Cluster, ControllerTimings, KrustletNode, node_condition, pod_condition, wait_node};
use jiff::SignedDuration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// Starts the nodes `names` (ports from `port`) of `group`, all Ready.
async fn fleet(
    cluster: &Cluster,
    group: &str,
    names: &[&str],
    port: u16,
) -> anyhow::Result<Vec<KrustletNode>> {
    let flags = group_flags(group);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut nodes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let port = port + u16::try_from(i)?;
        nodes.push(cluster.ready_node(name, port, &flags).await?);
    }
    Ok(nodes)
}

/// How many of the pods not being deleted are on each of `nodes`.
fn spread(pods: &Pods, nodes: &[&str]) -> Vec<usize> {
    nodes.iter().map(|n| pods.active_on(n).len()).collect()
}

/// The `namespace_name_uid` directories of `node`'s pods.
fn pod_dirs(node: &KrustletNode) -> Vec<String> {
    std::fs::read_dir(node.data_dir.join("pods"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_killed_node_has_its_pods_replaced_after_the_tolerations_and_cleans_up_on_return()
-> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    let timings = ControllerTimings::read()?;
    let names = ["e2e-fleet-a", "e2e-fleet-b", "e2e-fleet-c"];
    let mut nodes = fleet(&cluster, "failover", &names, 10501).await?;
    let tool = cluster.push("tool", "fleet").await?;
    let app = "e2e-fleet-failover";
    let deployments: Api<Deployment> = Api::default_namespaced(cluster.client.clone());
    remove_deployment(&cluster, app, 120).await?;
    let pods = PodWatch::start(cluster.pods(), &format!("app={app}")).await?;
    deployments
        .create(
            &PostParams::default(),
            &spread_deployment(app, "failover", &tool, 6),
        )
        .await?;
    pods.until(180, "6 replicas Ready", |p| p.ready_elsewhere("") == 6)
        .await?;
    // Spread evenly: two on each node.
    assert_eq!(spread(&pods.get(), &names), [2, 2, 2]);

    let dead = &mut nodes[2];
    let failover = kill_and_measure(&cluster, dead, &pods, 6, 240).await?;
    let victims = failover.victims.clone();
    eprintln!(
        "failover of {} pods: unreachable after {:?}, evicted after {:?}, Ready after {:?}",
        victims.len(),
        failover.to_unreachable,
        failover.to_evicted,
        failover.to_ready
    );
    // The node-lifecycle controller marked the node Unknown no sooner than its grace
    // period after the last heartbeat (timestamps are whole seconds: 1 s of slack).
    let grace = SignedDuration::try_from(timings.grace_period)?;
    let second = SignedDuration::from_secs(1);
    assert!(
        failover.unknown_since >= failover.last_heartbeat + grace - second,
        "Unknown at {} but the last heartbeat was {}",
        failover.unknown_since,
        failover.last_heartbeat
    );
    // Taint-based eviction waited for the pods' tolerationSeconds after the taint.
    let toleration = SignedDuration::from_secs(TOLERATION_SECONDS as i64);
    assert_eq!(failover.deleted_at.len(), victims.len());
    for (pod, at) in &failover.deleted_at {
        assert!(
            *at >= failover.tainted_at + toleration - second,
            "{pod} deleted at {at}, tainted at {}",
            failover.tainted_at
        );
    }
    // From the kill to all replicas Ready: not before grace + tolerationSeconds after the
    // last heartbeat, and well within the controller's timings plus a generous bound.
    let lower = failover.lower_bound(&timings);
    assert!(
        failover.to_ready + Duration::from_secs(1) >= lower,
        "Ready again after {:?}, before the controller's bound {lower:?}",
        failover.to_ready
    );
    let upper = timings.grace_period
        + timings.monitor_period
        + Duration::from_secs(TOLERATION_SECONDS + 150);
    assert!(
        failover.to_ready <= upper,
        "{:?} > {upper:?}",
        failover.to_ready
    );
    assert!(failover.to_unreachable <= failover.to_evicted);
    assert!(failover.to_evicted <= failover.to_ready);
    // The replacements are on the two live nodes, three each.
    let now = pods.get();
    assert_eq!(spread(&now, &names), [3, 3, 0]);
    // The evicted pods stay bound to the dead node, Terminating, until it confirms:
    // nothing else may decide that their containers have stopped.
    for v in &victims {
        let p = now
            .now
            .get(v)
            .expect("an evicted pod stays until its node confirms");
        assert!(p.metadata.deletion_timestamp.is_some());
        assert_eq!(node_of(p), Some(names[2]));
        // Taint-based eviction says why.
        let target = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "DisruptionTarget"))
            .map(|c| (c.status.clone(), c.reason.clone()));
        assert_eq!(
            target,
            Some(("True".to_owned(), Some("DeletionByTaintManager".to_owned())))
        );
    }
    let dead = &mut nodes[2];
    let dirs = pod_dirs(dead);
    for v in &victims {
        assert!(
            dirs.iter().any(|d| d.starts_with(&format!("default_{v}_"))),
            "{v} has no directory on the dead node: {dirs:?}"
        );
    }

    // The node comes back on its old data dir: it kills (nothing runs) and deletes
    // what it no longer owns, with the kubelet's final statuses, and removes its
    // directories; it runs none of them again.
    let flags = group_flags("failover");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    dead.restart(&flags)?;
    pods.until(120, "the evicted pods deleted by their node", |p| {
        victims.iter().all(|v| p.deleted.contains_key(v))
    })
    .await?;
    let seen = pods.get();
    for v in &victims {
        let last = &seen.deleted[v];
        let status = last.status.clone().unwrap_or_default();
        assert_eq!(status.phase.as_deref(), Some("Failed"), "{v}: {status:?}");
        let main = status
            .container_statuses
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.name == "main")
            .expect("the container's status");
        let ended = main.state.and_then(|s| s.terminated).expect("terminated");
        assert_eq!(ended.reason.as_deref(), Some("ContainerStatusUnknown"));
        assert_eq!(ended.exit_code, 137);
        assert!(!main.ready);
    }
    wait_node(
        &cluster.nodes(),
        names[2],
        90,
        "Ready again, untainted",
        |n| node_condition(n, "Ready").as_deref() == Some("True") && unreachable_taint(n).is_none(),
    )
    .await?;
    // A deleted pod's directory goes after its worker ends, off the watch loop.
    let left = e2e::until(60, "the evicted pods' directories removed", || async {
        Ok(pod_dirs(dead).is_empty().then_some(()))
    })
    .await;
    let dirs = pod_dirs(dead);
    assert!(
        left.is_ok() && dirs.is_empty(),
        "left on the node: {dirs:?}"
    );
    let now = pods.get();
    assert_eq!(now.ready_elsewhere(names[2]), 6);
    assert!(now.active_on(names[2]).is_empty());

    remove_deployment(&cluster, app, 120).await?;
    drop(nodes);
    for name in names {
        cluster.forget_node(name).await?;
    }
    Ok(())
}

#[tokio::test]
async fn cordon_drain_and_uncordon_move_pods_only_as_the_disruption_budget_allows()
-> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    let names = ["e2e-fleet-drain-a", "e2e-fleet-drain-b"];
    let nodes = fleet(&cluster, "drain", &names, 10504).await?;
    let (a, b) = (nodes[0].name.as_str(), nodes[1].name.as_str());
    let tool = cluster.push("tool", "fleet").await?;
    let app = "e2e-fleet-drain";
    let deployments: Api<Deployment> = Api::default_namespaced(cluster.client.clone());
    let budgets: Api<PodDisruptionBudget> = Api::default_namespaced(cluster.client.clone());
    remove_deployment(&cluster, app, 120).await?;
    let _ = budgets.delete(app, &Default::default()).await;
    e2e::wait_absent(&budgets, app, 60).await?;
    let pods = PodWatch::start(cluster.pods(), &format!("app={app}")).await?;
    deployments
        .create(
            &PostParams::default(),
            &spread_deployment(app, "drain", &tool, 4),
        )
        .await?;
    budgets
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": { "name": app },
                "spec": { "minAvailable": 4, "selector": { "matchLabels": { "app": app } } }
            }))?,
        )
        .await?;
    pods.until(180, "4 replicas Ready", |p| p.ready_elsewhere("") == 4)
        .await?;
    assert_eq!(spread(&pods.get(), &names), [2, 2]);
    // The budget first allows no disruption at all.
    e2e::wait_object(&budgets, "pdb", app, 60, "4 healthy, none allowed", |p| {
        p.status
            .as_ref()
            .is_some_and(|s| s.current_healthy == Some(4) && s.disruptions_allowed == Some(0))
    })
    .await?;
    let drained: Vec<String> = pods
        .get()
        .active_on(a)
        .iter()
        .map(|p| p.name_any())
        .collect();

    let out = cluster.kubectl(&["cordon", a]).await?;
    assert!(out.contains(&format!("node/{a} cordoned")), "{out}");
    let node = cluster.nodes().get(a).await?;
    assert_eq!(node.spec.and_then(|s| s.unschedulable), Some(true));

    // Fewer than 3 Ready replicas at any moment would break the budget.
    let fewest = Arc::new(AtomicUsize::new(usize::MAX));
    let mut rx = pods.subscribe();
    let watching = {
        let fewest = fewest.clone();
        tokio::spawn(async move {
            loop {
                let ready = rx.borrow_and_update().ready_elsewhere("");
                fewest.fetch_min(ready, Ordering::Relaxed);
                if rx.changed().await.is_err() {
                    break;
                }
            }
        })
    };
    let mut drain = cluster
        .kubectl_command(&[
            "drain",
            a,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=240s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut stderr_lines = BufReader::new(drain.stderr.take().expect("piped stderr")).lines();
    let mut stderr = String::new();
    // While the budget allows nothing, every eviction is refused and retried.
    let refused = "Cannot evict pod as it would violate the pod's disruption budget";
    tokio::time::timeout(Duration::from_secs(90), async {
        while let Some(line) = stderr_lines.next_line().await? {
            stderr.push_str(&line);
            stderr.push('\n');
            if line.contains(refused) {
                return anyhow::Ok(());
            }
        }
        anyhow::bail!("drain ended")
    })
    .await
    .map_err(|_| anyhow::anyhow!("no eviction refused within 90 s: {stderr}"))??;
    let now = pods.get();
    assert_eq!(spread(&now, &names), [2, 2], "evicted against the budget");
    assert_eq!(now.ready_elsewhere(""), 4);
    // One disruption allowed: the drain goes on, a pod at a time.
    budgets
        .patch(
            app,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": { "minAvailable": 3 } })),
        )
        .await?;
    let rest = tokio::spawn(async move {
        let mut rest = String::new();
        while let Ok(Some(line)) = stderr_lines.next_line().await {
            rest.push_str(&line);
            rest.push('\n');
        }
        rest
    });
    let mut stdout = String::new();
    drain
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_string(&mut stdout)
        .await?;
    let status = tokio::time::timeout(Duration::from_secs(300), drain.wait()).await??;
    stderr.push_str(&rest.await?);
    assert!(status.success(), "drain failed: {stdout}\n{stderr}");
    assert!(stdout.contains(&format!("node/{a} drained")), "{stdout}");
    watching.abort();
    assert!(
        fewest.load(Ordering::Relaxed) >= 3,
        "only {} Ready replicas during the drain",
        fewest.load(Ordering::Relaxed)
    );
    // The drain waited for the pods to be gone; the watch sees it a moment later.
    pods.until(60, "the drained pods' deletions seen", |p| {
        drained.iter().all(|d| p.deleted.contains_key(d))
    })
    .await?;
    let watch = pods.get();
    // krustlet stopped them and finished their deletion, with the kubelet's final
    // statuses.
    for name in &drained {
        let last = watch.deleted.get(name).expect("the drained pod deleted");
        let status = last.status.clone().unwrap_or_default();
        assert_eq!(
            status.phase.as_deref(),
            Some("Failed"),
            "{name}: {status:?}"
        );
        assert_eq!(pod_condition(last, "Ready").as_deref(), Some("False"));
        let target = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "DisruptionTarget")
            .map(|c| (c.status, c.reason));
        assert_eq!(
            target,
            Some(("True".to_owned(), Some("EvictionByEvictionAPI".to_owned())))
        );
        let main = status
            .container_statuses
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.name == "main")
            .and_then(|c| c.state?.terminated)
            .expect("terminated");
        assert_eq!(main.exit_code, 137, "{main:?}");
        assert_eq!(node_of(last), Some(a));
    }
    pods.until(120, "4 replicas Ready on b", |p| {
        p.active_on(b).len() == 4 && p.ready_elsewhere(a) == 4
    })
    .await?;
    assert_eq!(spread(&pods.get(), &names), [0, 4]);
    assert!(pods.get().now.values().all(|p| node_of(p) == Some(b)));

    let out = cluster.kubectl(&["uncordon", a]).await?;
    assert!(out.contains(&format!("node/{a} uncordoned")), "{out}");
    let node = cluster.nodes().get(a).await?;
    assert_ne!(node.spec.and_then(|s| s.unschedulable), Some(true));
    // Schedulable again: two more replicas go to a (the spread puts them there).
    deployments
        .patch(
            app,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": { "replicas": 6 } })),
        )
        .await?;
    pods.until(180, "2 replicas Ready on a", |p| {
        p.active_on(a)
            .iter()
            .filter(|p| pod_condition(p, "Ready").as_deref() == Some("True"))
            .count()
            == 2
    })
    .await?;
    remove_deployment(&cluster, app, 120).await?;
    budgets.delete(app, &Default::default()).await?;
    drop(nodes);
    for name in names {
        cluster.forget_node(name).await?;
    }
    Ok(())
}
