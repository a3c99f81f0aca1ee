//! WASI 0.3 command components as pods: `workloads/p3/command.wat` (a `wasi:cli/run@0.3.0`
//! that reads its arguments from `wasi:cli/environment@0.3.0` and fails when it has any)
//! pulled from the registry and run as a container, ending with the kubelet's phase,
//! exit code and reason as a 0.2 command does.

use anyhow::Context;
use e2e::{Cluster, create_fresh, delete_and_wait, phase, terminated, wait_pod, wasm_pod};

const NODE: &str = "p3-node";

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
        assert_eq!(phase(&pod), want_phase, "{name}");
        let ended = terminated(&pod, "main").with_context(|| format!("{name} not terminated"))?;
        assert_eq!(
            (ended.exit_code, ended.reason.as_deref()),
            (code, Some(reason)),
            "{name}"
        );
    }
    for name in ["p3-ok", "p3-err"] {
        delete_and_wait(&pods, name, 60).await?;
    }
    drop(node);
    Ok(())
}
