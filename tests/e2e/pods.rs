//! Pods on a krustlet node: scheduling, logs, exit codes, deletion.

use std::time::{Duration, Instant};

use e2e::{
    Cluster, KrustletNode, ensure_absent, node_condition, phase, wait_gone, wait_pod, wasm_pod,
};
use futures::{AsyncBufReadExt, StreamExt};
use kube::api::{DeleteParams, LogParams};

async fn ready_node(cluster: &Cluster, name: &str, port: u16) -> anyhow::Result<KrustletNode> {
    cluster.ready_node(name, port, &[]).await
}

#[tokio::test]
async fn a_scheduled_pod_runs_to_completion_and_its_logs_match() -> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    let node = ready_node(&cluster, "e2e-hello", 10311).await?;
    let image = cluster.push("hello", "v1").await?;
    let pods = cluster.pods();
    ensure_absent(&pods, "e2e-hello").await?;
    let pod = wasm_pod(
        "e2e-hello",
        &node.name,
        &image,
        &["first", "$(GREETING)"],
        "Never",
    );
    assert!(
        pod.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .is_none(),
        "the scheduler must place it"
    );
    pods.create(&Default::default(), &pod).await?;
    let p = wait_pod(&pods, "e2e-hello", 60, "Succeeded", |p| {
        phase(p) == "Succeeded"
    })
    .await?;

    let spec = p.spec.clone().unwrap_or_default();
    assert_eq!(spec.node_name.as_deref(), Some(node.name.as_str()));
    let status = p.status.clone().unwrap_or_default();
    assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
    // No pod network on this node: the pod has no address, and never the node's.
    assert_eq!(status.pod_ip, None);
    assert!(status.start_time.is_some());
    let cs = &status.container_statuses.unwrap_or_default()[0];
    let t = cs
        .state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .expect("terminated state");
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    assert!(t.started_at.is_some() && t.finished_at.is_some());
    assert!(
        cs.image_id.contains("/e2e/hello@sha256:"),
        "{}",
        cs.image_id
    );
    assert_eq!(
        (cs.ready, cs.restart_count, cs.started),
        (false, 0, Some(false))
    );
    let conditions = status.conditions.unwrap_or_default();
    let ready = conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready condition");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_deref()),
        ("False", Some("PodCompleted"))
    );
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "PodScheduled" && c.status == "True")
    );

    // Through the API server, which reaches the kubelet API with its client certificate.
    let logs = pods.logs("e2e-hello", &LogParams::default()).await?;
    assert_eq!(
        logs.lines().take(4).collect::<Vec<_>>(),
        [
            "Hello from a wasm pod on krustlet!",
            "arg[0]=main",
            "arg[1]=first",
            "arg[2]=hello-e2e"
        ]
    );
    assert!(
        logs.lines().any(|l| l == "env GREETING=hello-e2e"),
        "{logs}"
    );
    let tail = pods
        .logs(
            "e2e-hello",
            &LogParams {
                tail_lines: Some(1),
                ..LogParams::default()
            },
        )
        .await?;
    assert_eq!(tail, "env GREETING=hello-e2e\n");
    pods.delete("e2e-hello", &DeleteParams::default()).await?;
    wait_gone(&pods, "e2e-hello", 30).await?;
    Ok(())
}

#[tokio::test]
async fn a_non_zero_exit_fails_the_pod_with_that_exit_code() -> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    let node = ready_node(&cluster, "e2e-exit", 10312).await?;
    let image = cluster.push("exit", "v1").await?;
    let pods = cluster.pods();
    ensure_absent(&pods, "e2e-exit").await?;
    pods.create(
        &Default::default(),
        &wasm_pod("e2e-exit", &node.name, &image, &["7"], "Never"),
    )
    .await?;
    let p = wait_pod(&pods, "e2e-exit", 60, "Failed", |p| phase(p) == "Failed").await?;
    let cs = &p
        .status
        .unwrap_or_default()
        .container_statuses
        .unwrap_or_default()[0];
    let t = cs
        .state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .expect("terminated state");
    assert_eq!((t.exit_code, t.reason.as_deref()), (7, Some("Error")));
    let logs = pods.logs("e2e-exit", &LogParams::default()).await?;
    assert_eq!(logs, "exiting with code 7\n");
    pods.delete("e2e-exit", &DeleteParams::default()).await?;
    wait_gone(&pods, "e2e-exit", 30).await?;
    Ok(())
}

#[tokio::test]
async fn deleting_a_running_pod_stops_it_within_its_grace_period() -> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    let node = ready_node(&cluster, "e2e-loop", 10313).await?;
    let image = cluster.push("loop", "v1").await?;
    let pods = cluster.pods();
    ensure_absent(&pods, "e2e-loop").await?;
    pods.create(
        &Default::default(),
        &wasm_pod("e2e-loop", &node.name, &image, &[], "Always"),
    )
    .await?;
    let p = wait_pod(&pods, "e2e-loop", 60, "Running and Ready", |p| {
        phase(p) == "Running"
            && p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    })
    .await?;
    let cs = &p
        .status
        .unwrap_or_default()
        .container_statuses
        .unwrap_or_default()[0];
    assert!(cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some());
    assert_eq!((cs.ready, cs.started), (true, Some(true)));

    // `kubectl logs -f`: lines arrive while the module runs.
    let mut lines = pods
        .log_stream(
            "e2e-loop",
            &LogParams {
                follow: true,
                ..LogParams::default()
            },
        )
        .await?
        .lines();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next())
            .await?
            .expect("stream open")?;
        seen.push(line);
    }
    assert_eq!(seen, ["tick 0", "tick 1", "tick 2"]);

    let grace = 30;
    const GRACE_SECS: u64 = 30;
    let start = Instant::now();
    pods.delete(
        "e2e-loop",
        &DeleteParams {
            grace_period_seconds: Some(grace),
            ..DeleteParams::default()
        },
    )
    .await?;
    // The follow ends when the module is killed.
    let rest = tokio::time::timeout(Duration::from_secs(GRACE_SECS), async {
        while let Some(line) = lines.next().await {
            line?;
        }
        anyhow::Ok(())
    })
    .await;
    assert!(
        rest.is_ok(),
        "log stream did not end when the pod was killed"
    );
    let took = wait_gone(&pods, "e2e-loop", GRACE_SECS).await?;
    let total = start.elapsed();
    assert!(
        total < Duration::from_secs(GRACE_SECS),
        "deletion took {total:?} (wait {took:?})"
    );
    Ok(())
}

#[tokio::test]
async fn a_missing_image_waits_in_image_pull_back_off_with_an_event() -> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    let node = ready_node(&cluster, "e2e-missing", 10314).await?;
    let pods = cluster.pods();
    ensure_absent(&pods, "e2e-missing").await?;
    let image = format!("{}/e2e/does-not-exist:v1", cluster.registry);
    pods.create(
        &Default::default(),
        &wasm_pod("e2e-missing", &node.name, &image, &[], "Never"),
    )
    .await?;
    let waiting_reason = |p: &k8s_openapi::api::core::v1::Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.clone())
    };
    let p = wait_pod(&pods, "e2e-missing", 120, "ImagePullBackOff", |p| {
        waiting_reason(p).as_deref() == Some("ImagePullBackOff")
    })
    .await?;
    assert_eq!(phase(&p), "Pending");
    let list = cluster.events("e2e-missing").await?;
    let failed = list
        .iter()
        .find(|e| e.reason.as_deref() == Some("Failed") && e.type_.as_deref() == Some("Warning"));
    let message = failed.and_then(|e| e.message.clone()).unwrap_or_default();
    assert!(
        message.starts_with(&format!("Failed to pull image \"{image}\"")),
        "{list:?}"
    );
    // The node is unaffected.
    let n = cluster.nodes().get(&node.name).await?;
    assert_eq!(node_condition(&n, "Ready").as_deref(), Some("True"));
    pods.delete("e2e-missing", &DeleteParams::default()).await?;
    wait_gone(&pods, "e2e-missing", 30).await?;
    Ok(())
}
