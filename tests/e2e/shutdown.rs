//! Graceful node shutdown: SIGTERM with `shutdownGracePeriod` set.

use std::time::Duration;

use e2e::{Cluster, node_condition, phase, pod_with_spec, root, wait_node, wait_pod};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};

/// What the test's watch has seen of the node's pods.
#[derive(Default)]
struct Seen {
    listed: Vec<String>,
    /// In the order they turned `Failed`.
    failed: Vec<String>,
}

const MESSAGE: &str = "Pod was terminated in response to imminent node shutdown.";

#[tokio::test]
async fn sigterm_fails_regular_pods_then_critical_ones_as_the_kubelet_does_and_exits_0()
-> anyhow::Result<()> {
    let name = "e2e-ops-shutdown";
    let file = root()
        .join("target/e2e")
        .join(format!("{name}.config.yaml"));
    std::fs::create_dir_all(file.parent().expect("a parent"))?;
    std::fs::write(
        &file,
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
         shutdownGracePeriod: 40s\nshutdownGracePeriodCriticalPods: 15s\n",
    )?;
    let cluster = Cluster::connect().await?;
    let mut node = cluster
        .ready_node(name, 10491, &["--config", file.to_str().expect("utf-8")])
        .await?;
    let image = cluster.push("loop", "v1").await?;
    // Three regular pods (one with a longer grace than its share), two critical ones:
    // system-node-critical in kube-system, system-cluster-critical in default.
    let spec = |priority_class: Option<&str>, grace: i64| {
        let mut spec = serde_json::json!({
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": grace,
            "containers": [{ "name": "main", "image": image }]
        });
        if let Some(class) = priority_class {
            spec["priorityClassName"] = serde_json::json!(class);
        }
        spec
    };
    let pods = [
        ("default", "e2e-ops-regular-a", spec(None, 30)),
        ("default", "e2e-ops-regular-b", spec(None, 60)),
        ("default", "e2e-ops-regular-c", spec(None, 1)),
        (
            "kube-system",
            "e2e-ops-critical-node",
            spec(Some("system-node-critical"), 30),
        ),
        (
            "default",
            "e2e-ops-critical-cluster",
            spec(Some("system-cluster-critical"), 30),
        ),
    ];
    let critical = |pod: &str| pod.contains("critical");
    for (namespace, pod, spec) in &pods {
        let api: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
        let _ = api
            .delete(pod, &DeleteParams::default().grace_period(0))
            .await;
        e2e::wait_gone(&api, pod, 60).await?;
        api.create(
            &PostParams::default(),
            &pod_with_spec(pod, name, spec.clone()),
        )
        .await?;
    }
    for (namespace, pod, _) in &pods {
        let api: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
        wait_pod(&api, pod, 120, "Running", |p| phase(p) == "Running").await?;
    }
    // The order in which the pods turn Failed, as the API server's watch tells it.
    let all: Api<Pod> = Api::all(cluster.client.clone());
    let (seen_tx, mut seen) = tokio::sync::watch::channel(Seen::default());
    let watching = {
        let selector = format!("spec.nodeName={name}");
        let mut events = watcher(all, watcher::Config::default().fields(&selector))
            .applied_objects()
            .boxed();
        tokio::spawn(async move {
            while let Some(Ok(pod)) = events.next().await {
                seen_tx.send_modify(|seen| {
                    let pod_name = pod.name_any();
                    if !seen.listed.contains(&pod_name) {
                        seen.listed.push(pod_name.clone());
                    }
                    if phase(&pod) == "Failed" && !seen.failed.contains(&pod_name) {
                        seen.failed.push(pod_name);
                    }
                });
            }
        })
    };
    // The watch is established once it has seen every pod.
    tokio::time::timeout(
        Duration::from_secs(60),
        seen.wait_for(|s| s.listed.len() == pods.len()),
    )
    .await??;

    let (exit, took) = node.signal_and_wait("TERM", Duration::from_secs(60))?;
    assert!(exit.success(), "{exit:?}");
    assert!(took < Duration::from_secs(40 + 10), "took {took:?}");

    for (namespace, pod, _) in &pods {
        let api: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
        let p = wait_pod(&api, pod, 30, "Failed", |p| phase(p) == "Failed").await?;
        let status = p.status.clone().unwrap_or_default();
        assert_eq!(status.reason.as_deref(), Some("Terminated"), "{pod}");
        assert_eq!(status.message.as_deref(), Some(MESSAGE), "{pod}");
        let disruption = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "DisruptionTarget")
            .unwrap_or_default();
        assert_eq!(
            (
                disruption.status.as_str(),
                disruption.reason.as_deref(),
                disruption.message.as_deref()
            ),
            ("True", Some("TerminationByKubelet"), Some(MESSAGE)),
            "{pod}"
        );
    }
    // Every regular pod failed before the first critical one.
    let order = tokio::time::timeout(
        Duration::from_secs(30),
        seen.wait_for(|s| s.failed.len() == pods.len()),
    )
    .await??
    .failed
    .clone();
    watching.abort();
    let first_critical = order
        .iter()
        .position(|p| critical(p))
        .expect("critical pods");
    assert_eq!(first_critical, 3, "regular pods first: {order:?}");
    // The node is not ready with the kubelet's message, its lease released.
    let n = wait_node(&cluster.nodes(), name, 30, "NotReady", |n| {
        node_condition(n, "Ready").as_deref() == Some("False")
    })
    .await?;
    let ready = n
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap_or_default();
    assert_eq!(
        (ready.reason.as_deref(), ready.message.as_deref()),
        (Some("KubeletNotReady"), Some("node is shutting down"))
    );
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "kube-node-lease");
    let lease = leases.get(name).await?;
    assert_eq!(lease.spec.and_then(|s| s.holder_identity), None);
    let log = node.log()?;
    assert!(log.contains("shutting down the node gracefully"), "{log}");

    for (namespace, pod, _) in &pods {
        let api: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
        let _ = api
            .delete(pod, &DeleteParams::default().grace_period(0))
            .await;
    }
    cluster.forget_node(name).await?;
    Ok(())
}
