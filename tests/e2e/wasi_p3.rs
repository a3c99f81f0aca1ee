//! WASI 0.3 command components as pods: `workloads/p3/command.wat` (a `wasi:cli/run@0.3.0`
//! that reads its arguments from `wasi:cli/environment@0.3.0` and fails when it has any)
//! and the componentize-py command `p3-py-command`, pushed as the wasm package tools push
//! it, pulled from the registry and run as a container, ending with the kubelet's phase,
//! exit code and reason as a 0.2 command does, its output in the container's log. The
//! served WASI 0.3 components are in `wasi_p3_serving` and `wasi_p3_grpc`.

use anyhow::Context;
use e2e::{
    Cluster, container_status, create_fresh, delete_and_wait, manifest_digest, phase,
    pod_with_spec, terminated, wait_pod, wasm_pod,
};
use kube::api::LogParams;

const NODE: &str = "p3-node";
const PY_NODE: &str = "p3-py-node";

#[tokio::test]
async fn a_wasi_0_3_command_runs_as_a_pod_and_ends_as_the_kubelet_says() -> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    let node = cluster.ready_node(NODE, 10581, &[]).await?;
    let image = cluster.push("p3-command.component", "v1").await?;
    let pods = cluster.pods();
    create_fresh(&pods, &wasm_pod("p3-ok", NODE, &image, &[], "Never")).await?;
    create_fresh(&pods, &wasm_pod("p3-err", NODE, &image, &["fail"], "Never")).await?;
    for (name, want_phase, code, reason) in [
        ("p3-ok", "Succeeded", 0, "Completed"),
        ("p3-err", "Failed", 1, "Error"),
    ] {
        let pod = wait_pod(&pods, name, 120, "an end", |p| {
            matches!(phase(p), "Succeeded" | "Failed")
        })
        .await?;
        ended_as(&pod, name, want_phase, code, reason)?;
    }
    for name in ["p3-ok", "p3-err"] {
        delete_and_wait(&pods, name, 60).await?;
    }
    drop(node);
    Ok(())
}

/// A pod of the Python command with `args`, its `POD_NAME` from the downward API.
/// Asserts that pod `name` ended in `want_phase`, its container `main` with `code` and
/// `reason`.
fn ended_as(
    pod: &k8s_openapi::api::core::v1::Pod,
    name: &str,
    want_phase: &str,
    code: i32,
    reason: &str,
) -> anyhow::Result<()> {
    assert_eq!(phase(pod), want_phase, "{name}");
    let ended = terminated(pod, "main").with_context(|| format!("{name} not terminated"))?;
    assert_eq!(
        (ended.exit_code, ended.reason.as_deref()),
        (code, Some(reason)),
        "{name}"
    );
    Ok(())
}

fn py_command_pod(name: &str, image: &str, args: &[&str]) -> k8s_openapi::api::core::v1::Pod {
    pod_with_spec(
        name,
        PY_NODE,
        serde_json::json!({
            "restartPolicy": "Never",
            "containers": [{
                "name": "main",
                "image": image,
                "args": args,
                "env": [{ "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }]
            }]
        }),
    )
}

#[tokio::test]
async fn a_python_wasi_0_3_command_pushed_as_wkg_pushes_it_logs_and_ends_as_the_kubelet_says()
-> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    let node = cluster.ready_node(PY_NODE, 10586, &[]).await?;
    // One `application/wasm` layer, an `os: wasip2` config listing the component's world.
    let started = std::time::Instant::now();
    let image = cluster.push_wkg("p3-py-command.component", "v1").await?;
    println!("pushed in {:?}", started.elapsed());
    let (digest, _) =
        manifest_digest(&cluster.registry, &image, &oci::RegistryAuth::Anonymous).await?;
    let pods = cluster.pods();
    create_fresh(&pods, &py_command_pod("p3-py-ok", &image, &["a", "b"])).await?;
    create_fresh(&pods, &py_command_pod("p3-py-err", &image, &["fail"])).await?;
    // The first start pulls 20 MB and compiles CPython: bounded generously. Each pod's
    // end and log are read before the pods are deleted, and checked after.
    let mut ends = Vec::new();
    for name in ["p3-py-ok", "p3-py-err"] {
        let pod = wait_pod(&pods, name, 240, "an end", |p| {
            matches!(phase(p), "Succeeded" | "Failed")
        })
        .await?;
        println!("{name} ended {:?} after the push began", started.elapsed());
        // What it wrote through its WASI 0.3 stdout stream, read through the API
        // server's log endpoint (`kubectl logs`).
        let logs = pods.logs(name, &LogParams::default()).await?;
        ends.push((pod, logs));
    }
    for name in ["p3-py-ok", "p3-py-err"] {
        delete_and_wait(&pods, name, 60).await?;
    }
    drop(node);
    let repo = image.rsplit_once(':').map_or(image.as_str(), |(r, _)| r);
    for ((pod, logs), (name, want_phase, code, reason, args)) in ends.into_iter().zip([
        ("p3-py-ok", "Succeeded", 0, "Completed", "a b"),
        ("p3-py-err", "Failed", 1, "Error", "fail"),
    ]) {
        ended_as(&pod, name, want_phase, code, reason)?;
        // The image the wasm package tools' manifest names, by its digest.
        let image_id = container_status(&pod, "main")
            .map(|c| c.image_id)
            .unwrap_or_default();
        assert_eq!(image_id, format!("{repo}@{digest}"), "{name}");
        // All of it, a failing run's too.
        assert_eq!(
            logs,
            format!("hello from python p3\nargs: {args}\npod: {name}\n"),
            "{name}"
        );
    }
    Ok(())
}
