//! `kubectl top` and the HorizontalPodAutoscaler on wasm pods, through metrics-server
//! (`hack/cluster metrics-server`) reading the nodes' `/metrics/resource`: a CPU-burning
//! pod limited to 200m shows near 200m and an idle one near zero; the node shows; an HPA
//! on CPU scales a burning Deployment from 1 to at least 3 and, once its pods idle, back
//! to 1. Every wait is on a condition with a generous bound (metrics-server scrapes every
//! 10 s, the HPA controller syncs every 15 s, CI shares two cores among many tests).

use std::time::Instant;

use anyhow::{Context as _, Result};
use e2e::{Cluster, create_fresh, delete_and_wait, setup, until, wait_pod, wasm_pod};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};

/// `kubectl top`'s CPU column in cores: `198m`, `0` or `2`.
fn cores(cell: &str) -> Option<f64> {
    match cell.strip_suffix('m') {
        Some(m) => m.parse::<f64>().ok().map(|m| m / 1000.0),
        None => cell.parse().ok(),
    }
}

/// The CPU (cores) and memory cells of `kubectl top pod NAME`, once it answers.
async fn top_pod(cluster: &Cluster, name: &str) -> Result<Option<(f64, String)>> {
    let out = cluster
        .kubectl(&["top", "pod", name, "--no-headers"])
        .await?;
    let cells: Vec<&str> = out.split_whitespace().collect();
    match cells.as_slice() {
        [n, cpu, memory] if *n == name => Ok(cores(cpu).map(|c| (c, (*memory).to_owned()))),
        _ => Ok(None),
    }
}

#[tokio::test]
async fn kubectl_top_shows_a_burning_wasm_pod_near_its_limit_and_an_idle_one_near_zero()
-> Result<()> {
    let node_name = "e2e-top";
    let (cluster, node) = setup(node_name, 10473, &[]).await?;
    cluster.metrics_server().await?;
    let image = cluster.push("tool", "top").await?;
    let pods = cluster.pods();
    let mut burning = wasm_pod("top-burn", node_name, &image, &["burn", "0"], "Never");
    burning.spec.as_mut().context("spec")?.containers[0].resources = Some(serde_json::from_value(
        serde_json::json!({ "limits": { "cpu": "200m" } }),
    )?);
    let idle = wasm_pod("top-idle", node_name, &image, &["sleep", "3600"], "Never");
    for pod in [&burning, &idle] {
        create_fresh(&pods, pod).await?;
    }
    for name in ["top-burn", "top-idle"] {
        wait_pod(&pods, name, 120, "Running", |p| e2e::phase(p) == "Running").await?;
    }
    let result = async {
        // The node answers first (its usage needs two scrapes, as the pods' does).
        let row = until(180, "kubectl top node", || async {
            let out = cluster
                .kubectl(&["top", "node", node_name, "--no-headers"])
                .await?;
            Ok(out.starts_with(node_name).then_some(out))
        })
        .await?;
        // A burning pod's rate settles once both scrapes of a window are past its start.
        let burn = until(240, "top-burn near 200m", || async {
            Ok(top_pod(&cluster, "top-burn")
                .await?
                .filter(|(cpu, _)| *cpu >= 0.08))
        })
        .await?;
        let idle = until(180, "top-idle in kubectl top", || {
            top_pod(&cluster, "top-idle")
        })
        .await?;
        Ok::<_, anyhow::Error>((row, burn, idle))
    }
    .await;
    for name in ["top-burn", "top-idle"] {
        delete_and_wait(&pods, name, 60).await?;
    }
    drop(node);
    let (row, (burn, burn_memory), (idle, idle_memory)) = result?;
    println!("kubectl top node: {}", row.trim());
    println!(
        "kubectl top pod: top-burn {burn:.3} cores {burn_memory}, top-idle {idle:.3} cores {idle_memory}"
    );
    // Generous: the limit holds (a little over for the window's edges), the share is
    // what two busy cores give.
    assert!(burn <= 0.26, "the 200m pod shows {burn:.3} cores");
    assert!(idle <= 0.02, "the idle pod shows {idle:.3} cores");
    // Both rows carry a memory cell (a tool module's working set is under 1 Mi, which
    // kubectl shows as 0Mi): metrics-server kept the pods (it drops one with a 0).
    for memory in [&burn_memory, &idle_memory] {
        assert!(memory.ends_with("Mi"), "memory cell {memory}");
    }
    Ok(())
}

fn deployment(name: &str, node: &str, image: &str, args: &[&str]) -> Result<Deployment> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": {
                    "nodeSelector": { "kubernetes.io/arch": "wasm32-wasi", "kubernetes.io/hostname": node },
                    "tolerations": e2e::wasm_toleration(),
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "main",
                        "image": image,
                        "args": args,
                        "resources": { "requests": { "cpu": "100m" }, "limits": { "cpu": "200m" } }
                    }]
                }
            }
        }
    }))?)
}

/// The HPA: average CPU utilization 25 % of the 100m request (a burning pod uses up to
/// 200 %, an idle one about 0), 1 to 4 replicas, scale-down decided over 15 s.
fn hpa(name: &str) -> Result<serde_json::Value> {
    Ok(serde_json::json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": { "name": name },
        "spec": {
            "scaleTargetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": name },
            "minReplicas": 1,
            "maxReplicas": 4,
            "metrics": [{
                "type": "Resource",
                "resource": { "name": "cpu", "target": { "type": "Utilization", "averageUtilization": 25 } }
            }],
            "behavior": { "scaleDown": { "stabilizationWindowSeconds": 15 } }
        }
    }))
}

async fn replicas(deployments: &kube::Api<Deployment>, name: &str) -> Result<i32> {
    Ok(deployments
        .get(name)
        .await?
        .spec
        .and_then(|s| s.replicas)
        .unwrap_or(0))
}

#[tokio::test]
async fn an_hpa_on_cpu_scales_a_wasm_deployment_up_under_load_and_back_down() -> Result<()> {
    const NAME: &str = "hpa-burn";
    let node_name = "e2e-hpa";
    let (cluster, node) = setup(node_name, 10472, &[]).await?;
    cluster.metrics_server().await?;
    let image = cluster.push("tool", "hpa").await?;
    let deployments: kube::Api<Deployment> = kube::Api::default_namespaced(cluster.client.clone());
    let _ = cluster
        .kubectl(&["delete", "hpa", NAME, "--ignore-not-found", "--wait"])
        .await?;
    let _ = deployments.delete(NAME, &DeleteParams::foreground()).await;
    until(120, "the last run's Deployment gone", || async {
        Ok(deployments.get_opt(NAME).await?.is_none().then_some(()))
    })
    .await?;
    deployments
        .create(
            &PostParams::default(),
            &deployment(NAME, node_name, &image, &["burn", "0"])?,
        )
        .await?;
    let manifest = serde_json::to_string(&hpa(NAME)?)?;
    let file = std::env::temp_dir().join(format!("krustlet-e2e-{NAME}.json"));
    std::fs::write(&file, manifest)?;
    cluster
        .kubectl(&["apply", "-f", &file.to_string_lossy()])
        .await?;
    let result = async {
        let began = Instant::now();
        let up = until(420, "the HPA at 3 replicas or more", || async {
            let n = replicas(&deployments, NAME).await?;
            Ok((n >= 3).then_some(n))
        })
        .await?;
        let up_after = began.elapsed();
        // The load stops: the pods are replaced by idle ones.
        deployments
            .patch(
                NAME,
                &PatchParams::default(),
                &Patch::Strategic(serde_json::json!({
                    "spec": { "template": { "spec": { "containers": [
                        { "name": "main", "args": ["sleep", "3600"] }
                    ] } } }
                })),
            )
            .await?;
        let idle_at = Instant::now();
        until(420, "the HPA back at 1 replica", || async {
            Ok((replicas(&deployments, NAME).await? == 1).then_some(()))
        })
        .await?;
        Ok::<_, anyhow::Error>((up, up_after, idle_at.elapsed()))
    }
    .await;
    let status = cluster
        .kubectl(&["get", "hpa", NAME, "-o", "jsonpath={.status}"])
        .await
        .unwrap_or_default();
    let _ = cluster
        .kubectl(&["delete", "hpa", NAME, "--ignore-not-found"])
        .await;
    let _ = deployments.delete(NAME, &DeleteParams::foreground()).await;
    let _ = std::fs::remove_file(&file);
    let pods = cluster.pods();
    until(120, "the Deployment's pods gone", || async {
        let left = pods
            .list(&kube::api::ListParams::default().labels(&format!("app={NAME}")))
            .await?;
        Ok(left.items.is_empty().then_some(()))
    })
    .await?;
    drop(node);
    let (up, up_after, down_after) = result.with_context(|| format!("HPA status: {status}"))?;
    println!(
        "HPA: 1 -> {up} replicas in {:.0} s under load, back to 1 {:.0} s after the load stopped",
        up_after.as_secs_f64(),
        down_after.as_secs_f64()
    );
    Ok(())
}
