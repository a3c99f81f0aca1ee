//! Static pods (`--pod-manifest-path`): with an API server, each runs and has a mirror
//! pod (`<name>-<node>`, the `kubernetes.io/config.mirror` annotation, owned by the
//! Node) that shows its status and its logs, is made again when deleted, is replaced
//! when the manifest changes and goes when the manifest does. Without one (standalone
//! mode, no kubeconfig), the node runs its static pods alone and serves their status
//! (`/pods`) and logs on its API.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use e2e::{Cluster, KrustletNode, phase, wait_pod};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::DeleteParams;

const MIRROR: &str = "kubernetes.io/config.mirror";

/// A static pod manifest of the `tool` module running `args`. It tolerates the wasm
/// taints as any pod of a krustlet node must: the taint manager deletes the mirror pod of
/// one that does not (`NoExecute`), and the node makes it again, over and over.
fn manifest(name: &str, image: &str, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  tolerations:\n  - {{key: kubernetes.io/arch, operator: Equal, value: wasm32-wasi}}\n  containers:\n  - name: main\n    image: {image}\n    args: [{}]\n",
        args.join(", ")
    )
}

fn mirror_hash(pod: &Pod) -> Option<String> {
    pod.annotations().get(MIRROR).cloned()
}

fn running_mirror(pod: &Pod) -> bool {
    mirror_hash(pod).is_some()
        && pod.metadata.deletion_timestamp.is_none()
        && phase(pod) == "Running"
}

/// Writes `text` to `dir/file` whole (a rename), as an operator's tool would.
fn put(dir: &Path, file: &str, text: &str) -> Result<()> {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(file))?;
    Ok(())
}

#[tokio::test]
async fn a_static_pod_runs_with_a_mirror_pod_that_follows_its_manifest() -> Result<()> {
    let node_name = "e2e-static-a";
    let cluster = Cluster::connect().await?;
    let image = cluster.push("tool", "static").await?;
    let dir = e2e::root()
        .join("target/e2e")
        .join("e2e-static-a-manifests");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    put(
        &dir,
        "idle.yaml",
        &manifest("idle", &image, &["print", "static-v1", "sleep", "3600"]),
    )?;
    // A file that is not a pod is refused and the rest still runs.
    put(&dir, "broken.yaml", "apiVersion: v1\nkind: Service\n")?;
    let dir_flag = dir.to_str().context("path")?.to_owned();
    let pods = cluster.pods();
    let name = format!("idle-{node_name}");
    // A mirror pod an earlier, failed run left (its node gone, the garbage collector
    // about to delete it) would pass for this run's.
    e2e::ensure_absent(&pods, &name).await?;
    let node = cluster
        .ready_node(
            node_name,
            10521,
            &[
                "--pod-manifest-path",
                &dir_flag,
                "--file-check-frequency",
                "1s",
            ],
        )
        .await?;
    let node_uid = cluster.nodes().get(node_name).await?.metadata.uid;

    // The mirror pod shows the static pod's status, and its logs come from the node.
    let first = wait_pod(&pods, &name, 120, "a running mirror pod", running_mirror).await?;
    let owner = first.owner_references();
    if owner.len() != 1
        || owner[0].kind != "Node"
        || owner[0].name != node_name
        || Some(&owner[0].uid) != node_uid.as_ref()
    {
        bail!("the mirror pod is not owned by its node: {owner:?}");
    }
    let ready = e2e::pod_condition(&first, "Ready");
    if ready.as_deref() != Some("True") {
        bail!("mirror pod not Ready: {ready:?}");
    }
    let logs = cluster.kubectl(&["logs", &name]).await?;
    if !logs.contains("static-v1") {
        bail!("kubectl logs of the mirror pod: {logs:?}");
    }
    let log = std::fs::read_to_string(node.data_dir.with_extension("log"))?;
    if !log.contains("broken.yaml") {
        bail!("the refused manifest is not reported in the node's log");
    }

    // Deleted by someone: made again (a new UID), with the status.
    pods.delete(&name, &DeleteParams::default()).await?;
    let old_uid = first.uid();
    let again = wait_pod(&pods, &name, 120, "the mirror pod made again", |p| {
        running_mirror(p) && p.uid() != old_uid
    })
    .await?;
    if mirror_hash(&again) != mirror_hash(&first) {
        bail!("the static pod changed when only its mirror was deleted");
    }

    // A changed manifest is a new static pod: its mirror says so, and it runs.
    put(
        &dir,
        "idle.yaml",
        &manifest("idle", &image, &["print", "static-v2", "sleep", "3600"]),
    )?;
    let changed = wait_pod(&pods, &name, 120, "the mirror of the changed pod", |p| {
        running_mirror(p) && mirror_hash(p) != mirror_hash(&first)
    })
    .await?;
    let logs = e2e::until(120, "the new pod's output", || async {
        let logs = cluster.kubectl(&["logs", &name]).await?;
        Ok(logs.contains("static-v2").then_some(logs))
    })
    .await?;
    if logs.contains("static-v1") {
        bail!("the old pod's output under the new mirror pod: {logs:?}");
    }
    let pod_dirs = || -> Result<Vec<String>> {
        Ok(std::fs::read_dir(node.data_dir.join("pods"))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect())
    };
    let new_hash = mirror_hash(&changed).context("hash")?;

    // Removed: the mirror pod goes, and so does the pod's directory on the node.
    std::fs::remove_file(dir.join("idle.yaml"))?;
    e2e::wait_gone(&pods, &name, 120).await?;
    e2e::until(60, "the pod's directory removed", || async {
        let left = pod_dirs()?;
        Ok(left.iter().all(|d| !d.contains(&new_hash)).then_some(()))
    })
    .await?;
    drop(node);
    cluster.forget_node(node_name).await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test]
async fn standalone_mode_runs_static_pods_and_serves_their_status_and_logs() -> Result<()> {
    let node_name = "e2e-static-alone";
    // Only the registry of the local cluster is used (for the image); no API server.
    let cluster = Cluster::connect().await?;
    let image = cluster.push("tool", "standalone").await?;
    let dir = e2e::root()
        .join("target/e2e")
        .join("e2e-static-alone-manifests");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let text = format!(
        "{}---\n{}",
        manifest(
            "alone",
            &image,
            &["print", "standalone-hello", "sleep", "3600"]
        ),
        manifest("done", &image, &["print", "finished"])
            .replace("spec:\n", "spec:\n  restartPolicy: Never\n")
    );
    put(&dir, "pods.yaml", &text)?;
    let dir_flag = dir.to_str().context("path")?.to_owned();
    let node = KrustletNode::start_standalone(
        node_name,
        10522,
        &[
            "--pod-manifest-path",
            &dir_flag,
            "--file-check-frequency",
            "1s",
        ],
    )?;
    let phases = || async {
        let body = node.api_get("/pods").await?;
        let list: serde_json::Value = serde_json::from_str(&body)?;
        let mut out = std::collections::BTreeMap::new();
        for item in list["items"].as_array().context("items")? {
            let name = item["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let phase = item["status"]["phase"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            out.insert(name, phase);
        }
        Ok::<_, anyhow::Error>(out)
    };
    let alone = format!("alone-{node_name}");
    let done = format!("done-{node_name}");
    e2e::until(
        120,
        "both static pods in /pods with their phases",
        || async {
            let p = phases().await?;
            let ok = p.get(&alone).map(String::as_str) == Some("Running")
                && p.get(&done).map(String::as_str) == Some("Succeeded");
            Ok(ok.then_some(()))
        },
    )
    .await?;
    let logs = node
        .api_get(&format!("/containerLogs/default/{alone}/main"))
        .await?;
    if !logs.contains("standalone-hello") {
        bail!("the standalone pod's log: {logs:?}");
    }
    // Nothing of it reached the API server.
    if cluster.nodes().get_opt(node_name).await?.is_some() {
        bail!("a standalone node registered itself");
    }
    // Removing the file stops the pods.
    std::fs::remove_file(dir.join("pods.yaml"))?;
    e2e::until(60, "the static pods gone from /pods", || async {
        Ok(phases().await?.is_empty().then_some(()))
    })
    .await?;
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
