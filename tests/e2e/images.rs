//! Images: every wasm artifact format, private registries with each pull-secret form,
//! pull policies, a registry that comes back, one download and one compile for many pods,
//! garbage collection, and images from an OCI layout on disk.

use std::time::Duration;

use e2e::{
    Cluster, KrustletNode, OwnRegistry, container_status, ensure_absent, manifest_digest, phase,
    pod_with_spec, push_as, push_container_image, push_index, setup, wait_gone, wait_pod,
    waiting_message, waiting_reason, workload,
};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, LogParams, PostParams};

/// Runs pod `name` on `node` with one container of `image` and `extra` fields.
async fn run(
    pods: &Api<Pod>,
    name: &str,
    node: &KrustletNode,
    image: &str,
    extra: serde_json::Value,
    pod_extra: serde_json::Value,
) -> anyhow::Result<()> {
    ensure_absent(pods, name).await?;
    let mut container = serde_json::json!({ "name": "main", "image": image });
    if let (Some(c), serde_json::Value::Object(e)) = (container.as_object_mut(), extra) {
        c.extend(e);
    }
    let mut spec = serde_json::json!({ "restartPolicy": "Never", "containers": [container] });
    if let (Some(s), serde_json::Value::Object(e)) = (spec.as_object_mut(), pod_extra) {
        s.extend(e);
    }
    pods.create(
        &PostParams::default(),
        &pod_with_spec(name, &node.name, spec),
    )
    .await?;
    Ok(())
}

fn none() -> serde_json::Value {
    serde_json::json!({})
}

async fn succeeded(pods: &Api<Pod>, name: &str) -> anyhow::Result<Pod> {
    wait_pod(pods, name, 60, "Succeeded", |p| phase(p) == "Succeeded").await
}

fn image_id(p: &Pod) -> String {
    container_status(p, "main")
        .map(|c| c.image_id)
        .unwrap_or_default()
}

/// Messages of the events about `name` with `reason`.
async fn messages(cluster: &Cluster, name: &str, reason: &str) -> anyhow::Result<Vec<String>> {
    Ok(cluster
        .events(name)
        .await?
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.message)
        .collect())
}

async fn delete_all(pods: &Api<Pod>, names: &[&str]) -> anyhow::Result<()> {
    for name in names {
        pods.delete(name, &DeleteParams::default()).await?;
    }
    for name in names {
        wait_gone(pods, name, 30).await?;
    }
    Ok(())
}

const HELLO: &str = "Hello from a wasm pod on krustlet!";

#[tokio::test]
async fn every_wasm_format_runs_and_a_container_image_is_refused() -> anyhow::Result<()> {
    let (cluster, node) = setup("e2e-formats", 10341, &[]).await?;
    let pods = cluster.pods();
    let registry = cluster.registry.clone();
    let anonymous = oci::RegistryAuth::Anonymous;
    let cncf = push_as(
        &registry,
        "hello",
        "e2e/formats:cncf",
        &oci::PushFormat::cncf(),
        &anonymous,
    )
    .await?;
    let legacy = push_as(
        &registry,
        "hello",
        "e2e/formats:wasm-to-oci",
        &oci::PushFormat::wasm_to_oci(),
        &anonymous,
    )
    .await?;
    let (index, index_digest) = push_index(&registry, "hello", "e2e/formats-multi:v1").await?;
    let container = push_container_image(&registry, "e2e/formats:container", b"tar bytes").await?;
    // WASI preview 2 command components, in the same artifact layout.
    let component = push_as(
        &registry,
        "hello.component",
        "e2e/formats:component",
        &oci::PushFormat::cncf(),
        &anonymous,
    )
    .await?;
    let failing = push_as(
        &registry,
        "exit.component",
        "e2e/formats:component-exit",
        &oci::PushFormat::cncf(),
        &anonymous,
    )
    .await?;

    for (name, image) in [
        ("e2e-fmt-cncf", &cncf),
        ("e2e-fmt-legacy", &legacy),
        ("e2e-fmt-index", &index),
    ] {
        run(&pods, name, &node, image, none(), none()).await?;
    }
    for name in ["e2e-fmt-cncf", "e2e-fmt-legacy", "e2e-fmt-index"] {
        succeeded(&pods, name).await?;
        let logs = pods.logs(name, &LogParams::default()).await?;
        assert!(logs.starts_with(HELLO), "{name}: {logs}");
    }
    run(
        &pods,
        "e2e-fmt-component",
        &node,
        &component,
        serde_json::json!({ "args": ["from-p2"] }),
        none(),
    )
    .await?;
    run(
        &pods,
        "e2e-fmt-component-exit",
        &node,
        &failing,
        serde_json::json!({ "args": ["7"] }),
        none(),
    )
    .await?;
    succeeded(&pods, "e2e-fmt-component").await?;
    let logs = pods
        .logs("e2e-fmt-component", &LogParams::default())
        .await?;
    assert!(
        logs.starts_with(&format!("{HELLO}\narg[0]=main\narg[1]=from-p2\n")),
        "{logs}"
    );
    let p = wait_pod(&pods, "e2e-fmt-component-exit", 60, "Failed", |p| {
        phase(p) == "Failed"
    })
    .await?;
    let code = container_status(&p, "main")
        .and_then(|c| c.state?.terminated)
        .map(|t| t.exit_code);
    // WASI 0.2's `exit` (which the preview 1 adapter calls) carries success or failure
    // only: a failure is exit code 1.
    assert_eq!(code, Some(1));
    assert_eq!(
        pods.logs("e2e-fmt-component-exit", &LogParams::default())
            .await?,
        "exiting with code 7\n"
    );
    // A multi-platform image reports the digest its tag points at: the index's.
    let p = pods.get("e2e-fmt-index").await?;
    assert_eq!(
        image_id(&p),
        format!("{registry}/e2e/formats-multi@{index_digest}")
    );

    run(
        &pods,
        "e2e-fmt-container",
        &node,
        &container,
        none(),
        none(),
    )
    .await?;
    let p = wait_pod(&pods, "e2e-fmt-container", 120, "ImagePullBackOff", |p| {
        waiting_reason(p, "main").as_deref() == Some("ImagePullBackOff")
    })
    .await?;
    let message = waiting_message(&p, "main").unwrap_or_default();
    assert!(
        message.starts_with(&format!(
            "Back-off pulling image \"{container}\": ErrImagePull: "
        )),
        "{message}"
    );
    let failed = messages(&cluster, "e2e-fmt-container", "Failed").await?;
    let expected = format!(
        "Failed to pull image \"{container}\": image {container} is not a wasm artifact: its layers are [\"application/vnd.oci.image.layer.v1.tar+gzip\"]"
    );
    assert!(failed.contains(&expected), "{failed:?}");
    assert!(
        failed.iter().any(|m| m == "Error: ErrImagePull"),
        "{failed:?}"
    );
    delete_all(
        &pods,
        &[
            "e2e-fmt-cncf",
            "e2e-fmt-legacy",
            "e2e-fmt-index",
            "e2e-fmt-container",
            "e2e-fmt-component",
            "e2e-fmt-component-exit",
        ],
    )
    .await
}

fn docker_secret(
    name: &str,
    type_: &str,
    key: &str,
    content: &serde_json::Value,
) -> anyhow::Result<Secret> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": name },
        "type": type_,
        "stringData": { key: content.to_string() }
    }))?)
}

#[tokio::test]
async fn a_private_registry_pulls_with_each_secret_form_and_refuses_a_wrong_password()
-> anyhow::Result<()> {
    let mut private = OwnRegistry::new("private", 15011, Some(("e2e-user", "e2e-password")))?;
    private.start().await?;
    let (cluster, node) = setup(
        "e2e-private",
        10342,
        &["--insecure-registries", &private.addr],
    )
    .await?;
    let image = push_as(
        &private.addr,
        "hello",
        "e2e/private:v1",
        &oci::PushFormat::cncf(),
        &private.auth(),
    )
    .await?;
    let host = private.addr.clone();
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), "default");
    let json = |user: &str, password: &str, key: &str| serde_json::json!({ "auths": { key: { "username": user, "password": password } } });
    let cfg_auth = serde_json::json!({
        format!("http://{host}/v2/"): { "auth": "ZTJlLXVzZXI6ZTJlLXBhc3N3b3Jk" }
    });
    for (name, secret) in [
        (
            "e2e-pull-json",
            docker_secret(
                "e2e-pull-json",
                "kubernetes.io/dockerconfigjson",
                ".dockerconfigjson",
                &json("e2e-user", "e2e-password", &host),
            )?,
        ),
        (
            "e2e-pull-cfg",
            docker_secret(
                "e2e-pull-cfg",
                "kubernetes.io/dockercfg",
                ".dockercfg",
                &cfg_auth,
            )?,
        ),
        (
            "e2e-pull-path",
            docker_secret(
                "e2e-pull-path",
                "kubernetes.io/dockerconfigjson",
                ".dockerconfigjson",
                &json("e2e-user", "e2e-password", &format!("https://{host}/e2e")),
            )?,
        ),
        (
            "e2e-pull-wrong",
            docker_secret(
                "e2e-pull-wrong",
                "kubernetes.io/dockerconfigjson",
                ".dockerconfigjson",
                &json("e2e-user", "not-the-password", &host),
            )?,
        ),
    ] {
        let _ = secrets.delete(name, &DeleteParams::default()).await;
        secrets.create(&PostParams::default(), &secret).await?;
    }
    // A service account's pull secrets reach its pods through the API server's
    // ServiceAccount admission.
    let accounts: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), "default");
    let _ = accounts
        .delete("e2e-puller", &DeleteParams::default())
        .await;
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": { "name": "e2e-puller" },
                "imagePullSecrets": [{ "name": "e2e-pull-json" }]
            }))?,
        )
        .await?;
    let pods = cluster.pods();
    let with = |secret: &str| serde_json::json!({ "imagePullSecrets": [{ "name": secret }] });
    run(
        &pods,
        "e2e-priv-json",
        &node,
        &image,
        none(),
        with("e2e-pull-json"),
    )
    .await?;
    run(
        &pods,
        "e2e-priv-cfg",
        &node,
        &image,
        none(),
        with("e2e-pull-cfg"),
    )
    .await?;
    run(
        &pods,
        "e2e-priv-path",
        &node,
        &image,
        none(),
        with("e2e-pull-path"),
    )
    .await?;
    run(
        &pods,
        "e2e-priv-sa",
        &node,
        &image,
        none(),
        serde_json::json!({ "serviceAccountName": "e2e-puller" }),
    )
    .await?;
    run(
        &pods,
        "e2e-priv-wrong",
        &node,
        &image,
        none(),
        with("e2e-pull-wrong"),
    )
    .await?;
    run(
        &pods,
        "e2e-priv-missing",
        &node,
        &image,
        none(),
        with("e2e-pull-absent"),
    )
    .await?;

    for name in [
        "e2e-priv-json",
        "e2e-priv-cfg",
        "e2e-priv-path",
        "e2e-priv-sa",
    ] {
        let p = succeeded(&pods, name).await?;
        assert_eq!(
            image_id(&p),
            format!(
                "{host}/e2e/private@{}",
                manifest_digest(&host, &image, &private.auth()).await?.0
            )
        );
    }
    // No secret, and the image is on the node now: still, a private image is not handed
    // to a pod without a credential that pulled it; it is pulled, and refused.
    run(&pods, "e2e-priv-none", &node, &image, none(), none()).await?;
    for name in ["e2e-priv-wrong", "e2e-priv-none", "e2e-priv-missing"] {
        let p = wait_pod(&pods, name, 120, "ImagePullBackOff", |p| {
            waiting_reason(p, "main").as_deref() == Some("ImagePullBackOff")
        })
        .await?;
        assert_eq!(phase(&p), "Pending");
        let failed = messages(&cluster, name, "Failed").await?;
        let pulled = failed
            .iter()
            .find(|m| m.starts_with(&format!("Failed to pull image \"{image}\": ")))
            .unwrap_or_else(|| panic!("{name}: {failed:?}"));
        assert!(pulled.contains("Not authorized"), "{name}: {pulled}");
    }
    let missing = messages(
        &cluster,
        "e2e-priv-missing",
        "FailedToRetrieveImagePullSecret",
    )
    .await?;
    assert_eq!(
        missing.first().map(String::as_str),
        Some(
            "Unable to retrieve some image pull secrets (e2e-pull-absent); attempting to pull the image may not succeed."
        )
    );
    delete_all(
        &pods,
        &[
            "e2e-priv-json",
            "e2e-priv-cfg",
            "e2e-priv-path",
            "e2e-priv-sa",
            "e2e-priv-wrong",
            "e2e-priv-none",
            "e2e-priv-missing",
        ],
    )
    .await
}

#[tokio::test]
async fn pull_policies_always_sees_a_moved_tag_and_never_waits_for_the_image() -> anyhow::Result<()>
{
    let (cluster, node) = setup("e2e-policy", 10343, &[]).await?;
    let pods = cluster.pods();
    let registry = cluster.registry.clone();
    let anonymous = oci::RegistryAuth::Anonymous;
    let cncf = oci::PushFormat::cncf();
    let always = serde_json::json!({ "imagePullPolicy": "Always" });

    let moving = push_as(&registry, "hello", "e2e/moving:v1", &cncf, &anonymous).await?;
    run(
        &pods,
        "e2e-moving-1",
        &node,
        &moving,
        always.clone(),
        none(),
    )
    .await?;
    let first = succeeded(&pods, "e2e-moving-1").await?;
    push_as(&registry, "exit", "e2e/moving:v1", &cncf, &anonymous).await?;
    let mut args = always.clone();
    args["args"] = serde_json::json!(["0"]);
    run(&pods, "e2e-moving-2", &node, &moving, args, none()).await?;
    let second = succeeded(&pods, "e2e-moving-2").await?;
    assert_ne!(image_id(&first), image_id(&second));
    assert_eq!(
        pods.logs("e2e-moving-2", &LogParams::default()).await?,
        "exiting with code 0\n"
    );
    let pulled = messages(&cluster, "e2e-moving-2", "Pulled").await?;
    assert!(
        pulled
            .iter()
            .any(|m| m.starts_with(&format!("Successfully pulled image \"{moving}\" in "))),
        "{pulled:?}"
    );

    // Never, before the image is on the node: waits, and runs once it is there.
    let never = push_as(&registry, "hello", "e2e/never:v1", &cncf, &anonymous).await?;
    let policy = serde_json::json!({ "imagePullPolicy": "Never" });
    run(
        &pods,
        "e2e-never-early",
        &node,
        &never,
        policy.clone(),
        none(),
    )
    .await?;
    let p = wait_pod(&pods, "e2e-never-early", 120, "ErrImageNeverPull", |p| {
        waiting_reason(p, "main").as_deref() == Some("ErrImageNeverPull")
    })
    .await?;
    assert_eq!(phase(&p), "Pending");
    let warned = messages(&cluster, "e2e-never-early", "ErrImageNeverPull").await?;
    assert_eq!(
        warned.first().map(String::as_str),
        Some(
            format!("Container image \"{never}\" is not present with pull policy of Never")
                .as_str()
        )
    );
    run(
        &pods,
        "e2e-never-fetch",
        &node,
        &never,
        serde_json::json!({ "imagePullPolicy": "IfNotPresent" }),
        none(),
    )
    .await?;
    succeeded(&pods, "e2e-never-fetch").await?;
    run(&pods, "e2e-never-late", &node, &never, policy, none()).await?;
    succeeded(&pods, "e2e-never-late").await?;
    let present = messages(&cluster, "e2e-never-late", "Pulled").await?;
    assert_eq!(
        present,
        [format!(
            "Container image \"{never}\" already present on machine"
        )]
    );
    assert!(
        messages(&cluster, "e2e-never-late", "Pulling")
            .await?
            .is_empty()
    );
    // The early pod retries and finds the image.
    succeeded(&pods, "e2e-never-early").await?;
    delete_all(
        &pods,
        &[
            "e2e-moving-1",
            "e2e-moving-2",
            "e2e-never-early",
            "e2e-never-fetch",
            "e2e-never-late",
        ],
    )
    .await
}

#[tokio::test]
async fn a_pod_recovers_on_its_own_when_its_registry_comes_back() -> anyhow::Result<()> {
    let mut late = OwnRegistry::new("late", 15012, None)?;
    let (cluster, node) = setup("e2e-late", 10344, &["--insecure-registries", &late.addr]).await?;
    let pods = cluster.pods();
    let image = format!("{}/e2e/late:v1", late.addr);
    run(&pods, "e2e-late", &node, &image, none(), none()).await?;
    let p = wait_pod(&pods, "e2e-late", 120, "ImagePullBackOff", |p| {
        waiting_reason(p, "main").as_deref() == Some("ImagePullBackOff")
    })
    .await?;
    assert_eq!(phase(&p), "Pending");
    late.start().await?;
    push_as(
        &late.addr,
        "hello",
        "e2e/late:v1",
        &oci::PushFormat::cncf(),
        &late.auth(),
    )
    .await?;
    // The next try after the 10 s back-off succeeds.
    let p = wait_pod(&pods, "e2e-late", 60, "Succeeded", |p| {
        phase(p) == "Succeeded"
    })
    .await?;
    assert!(image_id(&p).starts_with(&format!("{}/e2e/late@sha256:", late.addr)));
    delete_all(&pods, &["e2e-late"]).await
}

#[tokio::test]
async fn pods_of_one_image_started_together_download_and_compile_it_once() -> anyhow::Result<()> {
    let (cluster, node) = setup("e2e-dedup", 10345, &[]).await?;
    let pods = cluster.pods();
    let image = cluster.push("hello", "dedup").await?;
    let names: Vec<String> = (0..4).map(|i| format!("e2e-dedup-{i}")).collect();
    for name in &names {
        ensure_absent(&pods, name).await?;
    }
    let creations = names.iter().map(|name| {
        let pod = pod_with_spec(
            name,
            &node.name,
            serde_json::json!({ "restartPolicy": "Never", "containers": [{ "name": "main", "image": image }] }),
        );
        let pods = pods.clone();
        async move { pods.create(&PostParams::default(), &pod).await }
    });
    for created in futures::future::join_all(creations).await {
        created?;
    }
    for name in &names {
        succeeded(&pods, name).await?;
    }
    let metrics = node.metrics().await?;
    assert_eq!(
        metrics.get("krustlet_image_downloads_total"),
        Some(&1.0),
        "{metrics:?}"
    );
    assert_eq!(
        metrics.get("krustlet_module_compiles_total"),
        Some(&1.0),
        "{metrics:?}"
    );
    // Four starts, whose time is accounted (the compile is part of the first).
    assert_eq!(
        metrics.get("krustlet_container_starts_total"),
        Some(&4.0),
        "{metrics:?}"
    );
    let start_seconds = metrics["krustlet_container_start_seconds_total"];
    assert!(start_seconds > 0.0 && start_seconds < 60.0, "{metrics:?}");
    // The kubelet's own families beside ours, as a Prometheus parser reads the page.
    let (scrape, page) = node.scrape().await?;
    let value = |name: &str, op: Option<&str>| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == name && op.is_none_or(|op| s.labels.get("operation_type") == Some(op))
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!(
        scrape
            .samples
            .iter()
            .find(|s| s.metric == "kubelet_node_name")
            .and_then(|s| s.labels.get("node")),
        Some(node.name.as_str()),
        "{page}"
    );
    assert!(value("kubelet_running_pods", None).is_some(), "{page}");
    assert!(
        value("kubelet_running_containers", None).is_some(),
        "{page}"
    );
    assert_eq!(
        value("kubelet_runtime_operations_total", Some("start_container")),
        Some(4.0),
        "{page}"
    );
    assert!(
        value("kubelet_runtime_operations_total", Some("pull_image")) >= Some(1.0),
        "{page}"
    );
    for family in [
        "kubelet_pod_start_duration_seconds",
        "kubelet_pod_worker_duration_seconds",
        "kubelet_runtime_operations_duration_seconds",
    ] {
        assert!(
            page.contains(&format!("# TYPE {family} histogram\n")),
            "{family}: {page}"
        );
        assert!(
            scrape
                .samples
                .iter()
                .any(|s| s.metric == family
                    && matches!(s.value, prometheus_parse::Value::Histogram(_))),
            "{family}: {page}"
        );
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    delete_all(&pods, &names).await
}

#[tokio::test]
async fn image_gc_removes_unused_images_and_keeps_those_in_use() -> anyhow::Result<()> {
    // A 1 MB image filesystem: above 20 % the GC removes unused images down to 10 %.
    // The loop image alone (~100 kB) is below 20 %, and it with any other image (~235 kB
    // or more) is above: so all unused images go whatever order the pods' deletions
    // reach the GC in. (At 50 %, a GC pass that ran after only the first deletion
    // removed one image and left the rest just under the threshold for good.)
    let (cluster, node) = setup(
        "e2e-gc",
        10346,
        &[
            "--image-fs-capacity-bytes",
            "1000000",
            "--image-gc-high-threshold-percent",
            "20",
            "--image-gc-low-threshold-percent",
            "10",
            "--image-minimum-gc-age-seconds",
            "0",
            "--image-gc-period-seconds",
            "1",
            "--node-lease-renew-seconds",
            "2",
        ],
    )
    .await?;
    let pods = cluster.pods();
    let looping = cluster.push("loop", "gc").await?;
    let mut done = Vec::new();
    for w in ["hello", "exit", "tool"] {
        done.push(cluster.push(w, "gc").await?);
    }
    run(
        &pods,
        "e2e-gc-loop",
        &node,
        &looping,
        none(),
        serde_json::json!({ "restartPolicy": "Always" }),
    )
    .await?;
    for (i, image) in done.iter().enumerate() {
        let name = format!("e2e-gc-done-{i}");
        run(
            &pods,
            &name,
            &node,
            image,
            serde_json::json!({ "args": ["0"] }),
            none(),
        )
        .await?;
        wait_pod(&pods, &name, 60, "finished", |p| {
            matches!(phase(p), "Succeeded" | "Failed")
        })
        .await?;
    }
    // While their pods exist, their images stay (about 620 kB is above the threshold).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = node.metrics().await?;
    assert_eq!(held.get("krustlet_images"), Some(&4.0), "{held:?}");
    delete_all(&pods, &["e2e-gc-done-0", "e2e-gc-done-1", "e2e-gc-done-2"]).await?;
    // Then they go; the running pod's image stays, and so does the pod.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let node_images: Vec<Vec<String>> = cluster
            .nodes()
            .get(&node.name)
            .await?
            .status
            .and_then(|s| s.images)
            .unwrap_or_default()
            .into_iter()
            .map(|i| i.names.unwrap_or_default())
            .collect();
        if node_images.len() == 1 {
            assert!(node_images[0].contains(&looping), "{node_images:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node images: {node_images:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let p = pods.get("e2e-gc-loop").await?;
    assert_eq!(phase(&p), "Running");
    let metrics = node.metrics().await?;
    assert_eq!(metrics.get("krustlet_images"), Some(&1.0), "{metrics:?}");
    delete_all(&pods, &["e2e-gc-loop"]).await
}

/// Writes `wasm` as an OCI image layout at `dir` naming it `reference`; returns the
/// manifest digest.
fn write_layout(dir: &std::path::Path, wasm: &[u8], reference: &str) -> anyhow::Result<String> {
    use sha2::Digest as _;
    let blob = |data: &[u8]| -> anyhow::Result<(String, usize)> {
        let hex = format!("{:x}", sha2::Sha256::digest(data));
        std::fs::create_dir_all(dir.join("blobs/sha256"))?;
        std::fs::write(dir.join("blobs/sha256").join(&hex), data)?;
        Ok((format!("sha256:{hex}"), data.len()))
    };
    let (config, config_size) = blob(b"{}")?;
    let (layer, layer_size) = blob(wasm)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.wasm.config.v0+json", "digest": config, "size": config_size },
        "layers": [{ "mediaType": "application/wasm", "digest": layer, "size": layer_size }]
    });
    let (digest, size) = blob(manifest.to_string().as_bytes())?;
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index = serde_json::json!({ "schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": size,
        "annotations": { "org.opencontainers.image.ref.name": reference }
    }]});
    std::fs::write(dir.join("index.json"), index.to_string())?;
    Ok(digest)
}

#[tokio::test]
async fn images_from_an_oci_layout_on_disk_run_without_a_registry() -> anyhow::Result<()> {
    let layout = e2e::root().join("target/e2e/layout-offline");
    let _ = std::fs::remove_dir_all(&layout);
    let reference = "offline.example/e2e/hello:v1";
    let digest = write_layout(&layout, &workload("hello")?, reference)?;
    let layout_arg = layout.display().to_string();
    let (cluster, node) = setup("e2e-offline", 10347, &["--image-layout-dir", &layout_arg]).await?;
    let pods = cluster.pods();
    run(
        &pods,
        "e2e-offline",
        &node,
        reference,
        serde_json::json!({ "imagePullPolicy": "Never" }),
        none(),
    )
    .await?;
    let p = succeeded(&pods, "e2e-offline").await?;
    assert_eq!(image_id(&p), format!("offline.example/e2e/hello@{digest}"));
    assert!(
        pods.logs("e2e-offline", &LogParams::default())
            .await?
            .starts_with(HELLO)
    );
    delete_all(&pods, &["e2e-offline"]).await
}
