//! Workloads through the real controllers: Deployments roll out and update, Jobs complete
//! or hit their back-off limit, a DaemonSet runs on every krustlet node, `kubectl drain`
//! empties a node.

use std::time::Duration;

use e2e::{Cluster, phase, wasm_toleration};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::wait::await_condition;
use kube::{Api, Resource};

/// Waits up to `secs` for `cond` on object `name`; the error shows the last status.
async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    secs: u64,
    what: &str,
    cond: impl Fn(&K) -> bool,
) -> anyhow::Result<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let fut = await_condition(api.clone(), name, move |o: Option<&K>| o.is_some_and(&cond));
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(Ok(Some(o))) => Ok(o),
        Ok(Ok(None)) => anyhow::bail!("{name} vanished waiting for {what}"),
        Ok(Err(e)) => anyhow::bail!("watching {name}: {e}"),
        Err(_) => {
            let last = api.get(name).await.ok();
            anyhow::bail!("{name}: timed out after {secs}s waiting for {what}; last: {last:?}")
        }
    }
}

/// Deletes `name` with its dependents (foreground) if it exists, and waits until it is gone.
async fn remove<K>(api: &Api<K>, name: &str) -> anyhow::Result<()>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    let gone = await_condition(api.clone(), name, |o: Option<&K>| o.is_none());
    tokio::time::timeout(Duration::from_secs(60), gone).await??;
    Ok(())
}

/// A pod template running `image` with `args`, pinned to nodes labelled `selector`.
fn template(
    app: &str,
    selector: serde_json::Value,
    image: &str,
    args: &[&str],
    restart: &str,
) -> serde_json::Value {
    serde_json::json!({
        "metadata": { "labels": { "app": app } },
        "spec": {
            "restartPolicy": restart,
            "nodeSelector": selector,
            "tolerations": wasm_toleration(),
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 5,
            "containers": [{ "name": "main", "image": image, "args": args }]
        }
    })
}

fn on_node(node: &str) -> serde_json::Value {
    serde_json::json!({ "kubernetes.io/arch": "wasm32-wasi", "kubernetes.io/hostname": node })
}

async fn pods_of(cluster: &Cluster, app: &str) -> anyhow::Result<Vec<Pod>> {
    Ok(cluster
        .pods()
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?
        .items)
}

#[tokio::test]
async fn a_deployment_rolls_out_and_a_rolling_update_completes() -> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    let node = cluster.ready_node("e2e-deploy", 10331, &[]).await?;
    let v1 = cluster.push("loop", "v1").await?;
    let v2 = cluster.push("loop", "v2").await?;
    let api: Api<Deployment> = Api::namespaced(cluster.client.clone(), "default");
    let name = "e2e-deploy";
    remove(&api, name).await?;
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "replicas": 3,
            "selector": { "matchLabels": { "app": name } },
            "template": template(name, on_node(&node.name), &v1, &[], "Always"),
        }
    }))?;
    api.create(&PostParams::default(), &deployment).await?;
    let available = |generation: i64| {
        move |d: &Deployment| {
            let s = d.status.clone().unwrap_or_default();
            s.observed_generation >= Some(generation)
                && s.updated_replicas == Some(3)
                && s.ready_replicas == Some(3)
                && s.available_replicas == Some(3)
                && s.replicas == Some(3)
        }
    };
    wait_for(&api, name, 90, "3 available replicas", available(1)).await?;
    let printed = cluster
        .kubectl(&["get", "deployment", name, "--no-headers"])
        .await?;
    assert!(
        printed.split_whitespace().nth(1) == Some("3/3"),
        "{printed}"
    );

    let patch = serde_json::json!({
        "spec": { "template": { "spec": { "containers": [{ "name": "main", "image": v2 }] } } }
    });
    api.patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await?;
    wait_for(&api, name, 120, "the update rolled out", available(2)).await?;
    // Every old pod is gone and every new one runs the new image.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let pods = pods_of(&cluster, name).await?;
        let images: Vec<String> = pods
            .iter()
            .filter_map(|p| p.spec.as_ref()?.containers.first()?.image.clone())
            .collect();
        let all_new = pods.len() == 3
            && images.iter().all(|i| *i == v2)
            && pods.iter().all(|p| phase(p) == "Running");
        if all_new {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after the update: {images:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    remove(&api, name).await
}

#[tokio::test]
async fn jobs_complete_or_reach_their_back_off_limit() -> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    let node = cluster.ready_node("e2e-jobs", 10332, &[]).await?;
    let tool = cluster.push("tool", "v1").await?;
    let api: Api<Job> = Api::namespaced(cluster.client.clone(), "default");
    let job = |name: &str, args: &[&str], spec: serde_json::Value| -> anyhow::Result<Job> {
        let mut full = serde_json::json!({
            "template": template(name, on_node(&node.name), &tool, args, "Never"),
        });
        if let (Some(f), serde_json::Value::Object(extra)) = (full.as_object_mut(), spec) {
            f.extend(extra);
        }
        Ok(serde_json::from_value(serde_json::json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": { "name": name },
            "spec": full,
        }))?)
    };
    let condition = |j: &Job, type_: &str| {
        j.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == type_ && c.status == "True"))
            .map(|c| c.reason.clone().unwrap_or_default())
    };
    for name in ["e2e-job-five", "e2e-job-fails"] {
        remove(&api, name).await?;
    }
    api.create(
        &PostParams::default(),
        &job(
            "e2e-job-five",
            &["print", "working", "sleep", "1"],
            serde_json::json!({ "completions": 5, "parallelism": 2 }),
        )?,
    )
    .await?;
    api.create(
        &PostParams::default(),
        &job(
            "e2e-job-fails",
            &["exit", "2"],
            serde_json::json!({ "backoffLimit": 1 }),
        )?,
    )
    .await?;

    let done = wait_for(&api, "e2e-job-five", 120, "Complete", |j| {
        condition(j, "Complete").is_some()
    })
    .await?;
    assert_eq!(done.status.as_ref().and_then(|s| s.succeeded), Some(5));
    let pods = pods_of(&cluster, "e2e-job-five").await?;
    assert_eq!(pods.iter().filter(|p| phase(p) == "Succeeded").count(), 5);
    // Never more than two at once: each pod's run overlaps at most one other.
    let spans: Vec<_> = pods
        .iter()
        .filter_map(|p| {
            let cs = p
                .status
                .as_ref()?
                .container_statuses
                .as_ref()?
                .first()?
                .clone();
            let t = cs.state?.terminated?;
            Some((t.started_at?.0, t.finished_at?.0))
        })
        .collect();
    assert_eq!(spans.len(), 5);
    for (i, (start, _)) in spans.iter().enumerate() {
        let overlapping = spans
            .iter()
            .enumerate()
            .filter(|(j, (s, f))| *j != i && s <= start && start < f)
            .count();
        assert!(overlapping <= 1, "parallelism 2 exceeded: {spans:?}");
    }
    let printed = cluster
        .kubectl(&["get", "job", "e2e-job-five", "--no-headers"])
        .await?;
    assert!(printed.contains("5/5"), "{printed}");

    let failed = wait_for(&api, "e2e-job-fails", 120, "Failed", |j| {
        condition(j, "Failed").is_some()
    })
    .await?;
    assert_eq!(
        condition(&failed, "Failed").as_deref(),
        Some("BackoffLimitExceeded")
    );
    assert_eq!(failed.status.as_ref().and_then(|s| s.failed), Some(2));
    let pods = pods_of(&cluster, "e2e-job-fails").await?;
    assert_eq!(pods.len(), 2);
    for p in &pods {
        assert_eq!(phase(p), "Failed");
        let code = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .and_then(|c| c.state.as_ref()?.terminated.as_ref())
            .map(|t| t.exit_code);
        assert_eq!(code, Some(2));
    }
    for name in ["e2e-job-five", "e2e-job-fails"] {
        remove(&api, name).await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_daemon_set_runs_on_each_krustlet_node_and_drain_empties_a_node() -> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    let label = ["--node-labels", "e2e-group=daemons"];
    let a = cluster.ready_node("e2e-ds-a", 10333, &label).await?;
    let b = cluster.ready_node("e2e-ds-b", 10334, &label).await?;
    let looping = cluster.push("loop", "v1").await?;
    let selector =
        serde_json::json!({ "kubernetes.io/arch": "wasm32-wasi", "e2e-group": "daemons" });

    let daemons: Api<DaemonSet> = Api::namespaced(cluster.client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), "default");
    let ds = "e2e-daemon";
    let app = "e2e-drained";
    remove(&daemons, ds).await?;
    remove(&deployments, app).await?;
    daemons
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "metadata": { "name": ds },
                "spec": {
                    "selector": { "matchLabels": { "app": ds } },
                    "template": template(ds, selector, &looping, &[], "Always"),
                }
            }))?,
        )
        .await?;
    // A Deployment pinned to node a, for drain to evict.
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": { "name": app },
                "spec": {
                    "replicas": 2,
                    "selector": { "matchLabels": { "app": app } },
                    "template": template(app, on_node(&a.name), &looping, &[], "Always"),
                }
            }))?,
        )
        .await?;
    let ready = wait_for(&daemons, ds, 90, "a ready pod on both nodes", |d| {
        let s = d.status.clone().unwrap_or_default();
        s.desired_number_scheduled == 2 && s.number_ready == 2 && s.number_available == Some(2)
    })
    .await?;
    assert_eq!(ready.status.map(|s| s.current_number_scheduled), Some(2));
    let mut nodes: Vec<String> = pods_of(&cluster, ds)
        .await?
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    nodes.sort();
    assert_eq!(nodes, [a.name.clone(), b.name.clone()]);
    wait_for(&deployments, app, 90, "2 available", |d| {
        d.status.as_ref().and_then(|s| s.available_replicas) == Some(2)
    })
    .await?;

    // Drain: cordons the node and evicts every pod but the DaemonSet's.
    let drained = cluster
        .kubectl(&["drain", &a.name, "--ignore-daemonsets", "--timeout=90s"])
        .await?;
    assert!(
        drained.contains(&format!("node/{} drained", a.name)),
        "{drained}"
    );
    let node = cluster.nodes().get(&a.name).await?;
    assert_eq!(node.spec.and_then(|s| s.unschedulable), Some(true));
    let on_a = |pods: &[Pod]| {
        pods.iter()
            .filter(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(a.name.as_str())
            })
            .count()
    };
    // The Deployment's replacements have nowhere to go (the node is cordoned).
    let replaced = pods_of(&cluster, app).await?;
    assert_eq!(on_a(&replaced), 0, "{replaced:?}");
    assert!(replaced.iter().all(|p| phase(p) == "Pending"));
    // The DaemonSet's pod stays.
    let daemon_pods = pods_of(&cluster, ds).await?;
    assert_eq!(on_a(&daemon_pods), 1);

    remove(&deployments, app).await?;
    remove(&daemons, ds).await?;
    Ok(())
}
