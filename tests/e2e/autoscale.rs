//! metrics-server, `kubectl top` and the HorizontalPodAutoscaler on wasm pods: the real
//! metrics-server reads the node's `/metrics/resource`, `kubectl top` shows a CPU-burning
//! pod near its limit and an idle one near zero, and an HPA on CPU scales a Deployment up
//! while its pods burn and back down once they idle.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use e2e::{Cluster, create_fresh, delete_and_wait, setup, wait_pod, wasm_pod};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{DeleteParams, PostParams};

/// Millicores in `kubectl top`'s CPU column (`199m`, or whole cores `1`).
fn millicores(cell: &str) -> Option<f64> {
    match cell.strip_suffix('m') {
        Some(m) => m.parse().ok(),
        None => cell.parse::<f64>().ok().map(|c| c * 1000.0),
    }
}

/// `kubectl top pod NAME` until it answers (metrics-server needs two scrapes of a pod):
/// its CPU in millicores and its memory cell.
async fn top_pod(cluster: &Cluster, name: &str) -> Result<(f64, String)> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        match cluster.kubectl(&["top", "pod", name, "--no-headers"]).await {
            Ok(out) => {
                let cells: Vec<&str> = out.split_whitespace().collect();
                if let [n, cpu, mem, ..] = cells.as_slice()
                    && *n == name
                {
                    let cpu =
                        millicores(cpu).with_context(|| format!("kubectl top printed {out:?}"))?;
                    return Ok((cpu, (*mem).to_owned()));
                }
                bail!("kubectl top pod {name} printed {out:?}");
            }
            // Not yet: metrics-server has not scraped the pod twice.
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            Err(e) => return Err(e.context(format!("kubectl top pod {name} for 180 s"))),
        }
    }
}

#[tokio::test]
async fn kubectl_top_shows_a_burning_pod_near_its_limit_and_an_idle_one_near_zero() -> Result<()> {
    let node_name = "e2e-top";
    let (cluster, _node) = setup(node_name, 10473, &[]).await?;
    cluster.metrics_server().await?;
    let image = cluster.push("tool", "top").await?;
    let pods = cluster.pods();
    let mut burn = wasm_pod("top-burn", node_name, &image, &["burn", "0"], "Never");
    burn.spec.as_mut().expect("spec").containers[0].resources = Some(serde_json::from_value(
        serde_json::json!({ "limits": { "cpu": "200m" }, "requests": { "cpu": "200m" } }),
    )?);
    let idle = wasm_pod("top-idle", node_name, &image, &["sleep", "3600"], "Never");
    for pod in [&burn, &idle] {
        create_fresh(&pods, pod).await?;
    }
    for name in ["top-burn", "top-idle"] {
        wait_pod(&pods, name, 120, "Running", |p| e2e::phase(p) == "Running").await?;
    }
    let measured = async {
        let burning = top_pod(&cluster, "top-burn").await?;
        let idle = top_pod(&cluster, "top-idle").await?;
        let node = cluster
            .kubectl(&["top", "node", node_name, "--no-headers"])
            .await?;
        anyhow::Ok((burning, idle, node))
    }
    .await;
    for name in ["top-burn", "top-idle"] {
        delete_and_wait(&pods, name, 60).await?;
    }
    let ((burn_cpu, burn_mem), (idle_cpu, idle_mem), node) = measured?;
    println!(
        "kubectl top: top-burn {burn_cpu}m {burn_mem}, top-idle {idle_cpu}m {idle_mem}; node: {node}"
    );
    // metrics-server's rate is over its last two scrapes: near the 200m limit (generous
    // below, CI shares two cores; never much above, the limit holds).
    assert!(
        (80.0..=240.0).contains(&burn_cpu),
        "top-burn at {burn_cpu}m"
    );
    assert!(idle_cpu <= 20.0, "top-idle at {idle_cpu}m");
    assert!(
        node.starts_with(node_name),
        "kubectl top node printed {node:?}"
    );
    Ok(())
}

#[tokio::test]
async fn an_hpa_on_cpu_scales_a_wasm_deployment_up_under_load_and_back_down() -> Result<()> {
    let node_name = "e2e-hpa";
    let (cluster, _node) = setup(node_name, 10472, &[]).await?;
    cluster.metrics_server().await?;
    let image = cluster.push("tool", "hpa").await?;
    let client = cluster.client.clone();
    let deployments: Api<Deployment> = Api::default_namespaced(client.clone());
    let hpas: Api<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler> =
        Api::default_namespaced(client.clone());
    let _ = hpas.delete("hpa-burn", &DeleteParams::default()).await;
    let _ = deployments
        .delete("hpa-burn", &DeleteParams::foreground())
        .await;
    // Each pod burns 200m (its limit, twice its request) for 90 s after it starts, then
    // idles: the load is the pods' own.
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "hpa-burn" },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": "hpa-burn" } },
            "template": {
                "metadata": { "labels": { "app": "hpa-burn" } },
                "spec": {
                    "nodeSelector": { "kubernetes.io/arch": "wasm32-wasi", "kubernetes.io/hostname": node_name },
                    "tolerations": e2e::wasm_toleration(),
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "main", "image": image, "args": ["burn", "90", "sleep", "3600"],
                        "resources": { "requests": { "cpu": "100m" }, "limits": { "cpu": "200m" } }
                    }]
                }
            }
        }
    }))?;
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    let hpa = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "hpa-burn" },
        "spec": {
            "scaleTargetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": "hpa-burn" },
            "minReplicas": 1, "maxReplicas": 4,
            "metrics": [{ "type": "Resource", "resource": {
                "name": "cpu", "target": { "type": "Utilization", "averageUtilization": 50 } } }],
            "behavior": { "scaleDown": { "stabilizationWindowSeconds": 0,
                "policies": [{ "type": "Percent", "value": 100, "periodSeconds": 15 }] } }
        }
    }))?;
    hpas.create(&PostParams::default(), &hpa).await?;
    let replicas = |d: &Deployment| d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let result = async {
        let up = e2e::wait_object(
            &deployments,
            "deployment",
            "hpa-burn",
            420,
            "3 replicas or more",
            |d| replicas(d) >= 3,
        )
        .await?;
        println!("scaled up to {}", replicas(&up));
        let down = e2e::wait_object(
            &deployments,
            "deployment",
            "hpa-burn",
            600,
            "back to 1 replica",
            |d| replicas(d) == 1,
        )
        .await?;
        println!("scaled back down to {}", replicas(&down));
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        let hpa = cluster
            .kubectl(&["describe", "hpa", "hpa-burn"])
            .await
            .unwrap_or_default();
        println!("{hpa}");
    }
    let _ = hpas.delete("hpa-burn", &DeleteParams::default()).await;
    let _ = deployments
        .delete("hpa-burn", &DeleteParams::foreground())
        .await;
    result
}
