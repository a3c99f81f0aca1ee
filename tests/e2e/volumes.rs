//! Volumes, configuration and identity (issue 5): every volume is a preopened directory
//! and nothing else of the node is visible. The `tool` workload reads, writes and lists
//! files and prints its environment; each test reads what it could and could not do
//! from its log.

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::{
    Cluster, create_fresh, delete_and_wait, ensure_absent, phase, pod_with_spec, setup, wait_gone,
    wait_pod, waiting_message, waiting_reason,
};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, LogParams, Patch, PatchParams, PostParams};

async fn delete(pods: &Api<Pod>, name: &str) -> anyhow::Result<()> {
    delete_and_wait(pods, name, 60).await
}

/// Waits until container `main` of pod `name` waits as `CreateContainerConfigError`;
/// returns its message.
async fn config_error(pods: &Api<Pod>, name: &str, secs: u64) -> anyhow::Result<String> {
    let p = wait_pod(pods, name, secs, "CreateContainerConfigError", |p| {
        waiting_reason(p, "main").as_deref() == Some("CreateContainerConfigError")
    })
    .await?;
    Ok(waiting_message(&p, "main").unwrap_or_default())
}

async fn logs(pods: &Api<Pod>, name: &str) -> anyhow::Result<String> {
    Ok(pods.logs(name, &LogParams::default()).await?)
}

/// The line of `log` that starts with `prefix`.
fn line<'a>(log: &'a str, prefix: &str) -> &'a str {
    log.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{log}"))
}

async fn put_config_map(
    cluster: &Cluster,
    name: &str,
    data: &[(&str, &str)],
) -> anyhow::Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": name },
        "data": data.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>(),
    }))?;
    api.patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&cm))
        .await?;
    Ok(())
}

async fn remove_config_map(cluster: &Cluster, name: &str) -> anyhow::Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "default");
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) | Err(kube::Error::Api(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn put_secret(cluster: &Cluster, name: &str, data: &[(&str, &str)]) -> anyhow::Result<()> {
    let api: Api<Secret> = Api::namespaced(cluster.client.clone(), "default");
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": name },
        "stringData": data.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>(),
    }))?;
    api.patch(
        name,
        &PatchParams::apply("e2e").force(),
        &Patch::Apply(&secret),
    )
    .await?;
    Ok(())
}

/// Reasons and messages of the events about pod `name`.
async fn event_messages(cluster: &Cluster, name: &str) -> anyhow::Result<Vec<(String, String)>> {
    Ok(cluster
        .events(name)
        .await?
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect())
}

async fn wait_event(
    cluster: &Cluster,
    name: &str,
    reason: &str,
    message: &str,
) -> anyhow::Result<()> {
    for _ in 0..120 {
        let events = event_messages(cluster, name).await?;
        if events
            .iter()
            .any(|(r, m)| r == reason && m.contains(message))
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!(
        "no {reason} event with {message:?} for {name}: {:?}",
        event_messages(cluster, name).await?
    )
}

#[tokio::test]
async fn config_maps_secrets_downward_api_and_env_sources_reach_the_module() -> anyhow::Result<()> {
    let (cluster, node) = setup("e2e-vol-files", 10351, &[]).await?;
    let pods = cluster.pods();
    let tool = cluster.push("tool", "volumes").await?;
    put_config_map(
        &cluster,
        "e2e-vol-cm",
        &[("greeting", "hello\nworld"), ("colour", "blue")],
    )
    .await?;
    put_secret(&cluster, "e2e-vol-secret", &[("password", "s3cret")]).await?;
    let mut pod = pod_with_spec(
        "e2e-vol-files",
        &node.name,
        serde_json::json!({
            "restartPolicy": "Never",
            "containers": [{
                "name": "main", "image": tool,
                "args": [
                    "cat", "/cfg/conf/greeting.txt", "ls", "/cfg", "ls", "/all-cfg",
                    "cat", "/sec/password", "cat", "/info/labels", "cat", "/info/name",
                    "cat", "/info/mem", "try-write", "/cfg/new", "no",
                    "cat", "/by-name/marker", "try-write", "/by-name/marker", "x",
                    "cat", "/whole/e2e-vol-files/marker", "ls", "/whole", "ls", "/opt", "env"
                ],
                "resources": { "limits": { "memory": "64Mi" } },
                "env": [
                    { "name": "FROM_CM", "valueFrom": { "configMapKeyRef": { "name": "e2e-vol-cm", "key": "colour" } } },
                    { "name": "FROM_SECRET", "valueFrom": { "secretKeyRef": { "name": "e2e-vol-secret", "key": "password" } } },
                    { "name": "OPTIONAL_GONE", "valueFrom": { "configMapKeyRef": { "name": "e2e-vol-none", "key": "x", "optional": true } } },
                    { "name": "APP", "valueFrom": { "fieldRef": { "fieldPath": "metadata.labels['app']" } } },
                    { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                    { "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } },
                    { "name": "NODE", "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } } },
                    { "name": "MEM_MI", "valueFrom": { "resourceFieldRef": { "resource": "limits.memory", "divisor": "1Mi" } } },
                    { "name": "COMBINED", "value": "$(APP)-$(FROM_CM)" }
                ],
                "envFrom": [{ "prefix": "CM_", "configMapRef": { "name": "e2e-vol-cm" } }],
                "volumeMounts": [
                    { "name": "cfg", "mountPath": "/cfg" },
                    { "name": "all-cfg", "mountPath": "/all-cfg" },
                    { "name": "sec", "mountPath": "/sec" },
                    { "name": "info", "mountPath": "/info" },
                    { "name": "scratch", "mountPath": "/scratch" },
                    { "name": "scratch", "mountPath": "/whole" },
                    { "name": "scratch", "mountPath": "/by-name", "subPathExpr": "$(POD_NAME)" },
                    { "name": "opt", "mountPath": "/opt" }
                ]
            }],
            "volumes": [
                { "name": "cfg", "configMap": { "name": "e2e-vol-cm", "items": [{ "key": "greeting", "path": "conf/greeting.txt" }] } },
                { "name": "all-cfg", "configMap": { "name": "e2e-vol-cm" } },
                { "name": "sec", "secret": { "secretName": "e2e-vol-secret", "defaultMode": 256 } },
                { "name": "info", "downwardAPI": { "items": [
                    { "path": "labels", "fieldRef": { "fieldPath": "metadata.labels" } },
                    { "path": "name", "fieldRef": { "fieldPath": "metadata.name" } },
                    { "path": "mem", "resourceFieldRef": { "containerName": "main", "resource": "limits.memory", "divisor": "1Mi" } }
                ] } },
                { "name": "scratch", "emptyDir": {} },
                { "name": "opt", "configMap": { "name": "e2e-vol-none", "optional": true } }
            ]
        }),
    );
    pod.metadata.labels = Some(BTreeMap::from([
        ("app".to_owned(), "demo".to_owned()),
        ("tier".to_owned(), "web".to_owned()),
    ]));
    create_fresh(&pods, &pod).await?;
    let p = wait_pod(&pods, "e2e-vol-files", 60, "Succeeded", |p| {
        matches!(phase(p), "Succeeded" | "Failed")
    })
    .await?;
    let log = logs(&pods, "e2e-vol-files").await?;
    assert_eq!(phase(&p), "Succeeded", "{log}");
    // configMap items at their path; the whole map as one file per key; read-only.
    assert_eq!(
        line(&log, "cat /cfg/conf"),
        "cat /cfg/conf/greeting.txt: hello\\nworld"
    );
    // The kubelet's layout: a timestamped directory, `..data` pointing at it, a link
    // per top-level name.
    assert!(line(&log, "ls /cfg:").ends_with(" ..data conf"), "{log}");
    assert!(
        line(&log, "ls /all-cfg:").ends_with(" ..data colour greeting"),
        "{log}"
    );
    assert!(line(&log, "try-write /cfg/new").contains("error"), "{log}");
    assert_eq!(line(&log, "cat /sec/password"), "cat /sec/password: s3cret");
    assert_eq!(
        line(&log, "cat /info/labels"),
        "cat /info/labels: app=\"demo\"\\ntier=\"web\""
    );
    assert_eq!(
        line(&log, "cat /info/name"),
        "cat /info/name: e2e-vol-files"
    );
    assert_eq!(line(&log, "cat /info/mem"), "cat /info/mem: 64");
    // One emptyDir mounted whole and by subPathExpr: the subdirectory named by the pod's
    // name was created, and a write through one mount shows through the other.
    assert!(
        line(&log, "cat /by-name/marker").contains(": error: "),
        "{log}"
    );
    assert_eq!(
        line(&log, "try-write /by-name/marker"),
        "try-write /by-name/marker: ok"
    );
    assert_eq!(
        line(&log, "cat /whole/e2e-vol-files/marker"),
        "cat /whole/e2e-vol-files/marker: x"
    );
    assert_eq!(line(&log, "ls /whole"), "ls /whole: e2e-vol-files");
    for expected in [
        "env FROM_CM=blue",
        "env FROM_SECRET=s3cret",
        "env APP=demo",
        "env POD_NAME=e2e-vol-files",
        "env POD_IP=",
        &format!("env NODE={}", node.name),
        "env MEM_MI=64",
        "env COMBINED=demo-blue",
        "env CM_colour=blue",
    ] {
        assert!(
            log.lines().any(|l| l == expected),
            "{expected} missing:\n{log}"
        );
    }
    assert!(!log.contains("OPTIONAL_GONE"), "{log}");
    // An optional ConfigMap that does not exist is an empty volume.
    let opt = line(&log, "ls /opt");
    assert!(!opt.contains("error") && opt.ends_with(" ..data"), "{log}");
    // defaultMode 0400 (256) on the node's copy of the secret; configMap files 0644.
    let pod_dir = std::fs::read_dir(node.data_dir.join("pods"))?
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().contains("e2e-vol-files"))
        .map(|e| e.path())
        .ok_or_else(|| anyhow::anyhow!("no pod directory"))?;
    let mode = |rel: &str| -> anyhow::Result<u32> {
        use std::os::unix::fs::PermissionsExt;
        Ok(std::fs::metadata(pod_dir.join("_volumes").join(rel))?
            .permissions()
            .mode()
            & 0o777)
    };
    assert_eq!(mode("sec/password")?, 0o400);
    assert_eq!(mode("all-cfg/colour")?, 0o644);
    // As the kubelet: the secret volume is a tmpfs of its own (the secret never reaches
    // the node's disk); the configMap volume is not.
    let mounts = e2e::mounts_under(&pod_dir);
    let volumes = pod_dir.join("_volumes").canonicalize()?;
    assert!(mounts.contains(&volumes.join("sec")), "{mounts:?}");
    assert!(!mounts.contains(&volumes.join("all-cfg")), "{mounts:?}");
    delete(&pods, "e2e-vol-files").await?;
    // The pod's volumes and logs go with it, once its workloads have stopped.
    let mut dirs = Vec::new();
    for _ in 0..50 {
        dirs = std::fs::read_dir(node.data_dir.join("pods"))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("e2e-vol-files"))
            .collect();
        if dirs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dirs.is_empty(), "left behind: {dirs:?}");
    assert!(
        e2e::mounts_under(&node.data_dir).is_empty(),
        "mounts left behind"
    );
    Ok(())
}

#[tokio::test]
async fn a_missing_env_source_waits_as_create_container_config_error_then_recovers()
-> anyhow::Result<()> {
    let (cluster, node) = setup("e2e-vol-late-env", 10352, &[]).await?;
    let pods = cluster.pods();
    let tool = cluster.push("tool", "volumes").await?;
    remove_config_map(&cluster, "e2e-late-env").await?;
    let pod = pod_with_spec(
        "e2e-vol-late-env",
        &node.name,
        serde_json::json!({
            "restartPolicy": "Never",
            "containers": [{
                "name": "main", "image": tool, "args": ["env"],
                "env": [{ "name": "LATE", "valueFrom": { "configMapKeyRef": { "name": "e2e-late-env", "key": "k" } } }]
            }]
        }),
    );
    create_fresh(&pods, &pod).await?;
    let waiting = config_error(&pods, "e2e-vol-late-env", 30).await?;
    assert_eq!(waiting, "configmap \"e2e-late-env\" not found");
    wait_event(
        &cluster,
        "e2e-vol-late-env",
        "Failed",
        "Error: configmap \"e2e-late-env\" not found",
    )
    .await?;
    assert_eq!(
        cluster.pod_row("e2e-vol-late-env").await?.status,
        "CreateContainerConfigError"
    );
    // The key missing gives the kubelet's other message; the value arriving, a start.
    put_config_map(&cluster, "e2e-late-env", &[("other", "x")]).await?;
    wait_pod(&pods, "e2e-vol-late-env", 120, "missing key", |p| {
        waiting_message(p, "main")
            .is_some_and(|m| m == "couldn't find key k in ConfigMap default/e2e-late-env")
    })
    .await?;
    put_config_map(&cluster, "e2e-late-env", &[("k", "arrived")]).await?;
    wait_pod(&pods, "e2e-vol-late-env", 120, "Succeeded", |p| {
        phase(p) == "Succeeded"
    })
    .await?;
    assert!(
        logs(&pods, "e2e-vol-late-env")
            .await?
            .contains("env LATE=arrived")
    );
    delete(&pods, "e2e-vol-late-env").await?;
    remove_config_map(&cluster, "e2e-late-env").await
}

#[tokio::test]
async fn volumes_that_cannot_be_mounted_fail_the_mount_and_the_pod_waits() -> anyhow::Result<()> {
    let (cluster, node) = setup("e2e-vol-mount", 10353, &[]).await?;
    let pods = cluster.pods();
    let tool = cluster.push("tool", "volumes").await?;
    remove_config_map(&cluster, "e2e-late-vol").await?;
    let host = tempfile::tempdir()?;
    let not_a_file = host.path().display().to_string();
    let cases = [
        (
            "e2e-vol-late",
            serde_json::json!({ "name": "v", "configMap": { "name": "e2e-late-vol" } }),
            "MountVolume.SetUp failed for volume \"v\" : configmap \"e2e-late-vol\" not found"
                .to_owned(),
        ),
        (
            "e2e-vol-csi",
            serde_json::json!({ "name": "v", "csi": { "driver": "nfs.csi.k8s.io" } }),
            "MountVolume.SetUp failed for volume \"v\" : csi volumes are not supported by krustlet"
                .to_owned(),
        ),
        (
            "e2e-vol-type",
            serde_json::json!({ "name": "v", "hostPath": { "path": not_a_file, "type": "File" } }),
            format!(
                "MountVolume.SetUp failed for volume \"v\" : hostPath type check failed: {not_a_file} is not a file"
            ),
        ),
    ];
    for (name, volume, _) in &cases {
        let pod = pod_with_spec(
            name,
            &node.name,
            serde_json::json!({
                "restartPolicy": "Never",
                "containers": [{
                    "name": "main", "image": tool, "args": ["ls", "/v"],
                    "volumeMounts": [{ "name": "v", "mountPath": "/v" }]
                }],
                "volumes": [volume]
            }),
        );
        create_fresh(&pods, &pod).await?;
    }
    for (name, _, message) in &cases {
        wait_event(&cluster, name, "FailedMount", message).await?;
        // The event can be seen before the first status lands (it waits briefly for
        // the containers): wait for the status, then check it.
        let p = wait_pod(&pods, name, 120, "a container status", |p| {
            waiting_reason(p, "main").is_some()
        })
        .await?;
        assert_eq!(phase(&p), "Pending");
        assert_eq!(
            waiting_reason(&p, "main").as_deref(),
            Some("ContainerCreating")
        );
        assert_eq!(cluster.pod_row(name).await?.status, "ContainerCreating");
    }
    // The node stays healthy and the missing ConfigMap, once there, is mounted.
    put_config_map(&cluster, "e2e-late-vol", &[("here", "now")]).await?;
    wait_pod(&pods, "e2e-vol-late", 150, "Succeeded", |p| {
        phase(p) == "Succeeded"
    })
    .await?;
    assert!(logs(&pods, "e2e-vol-late").await?.contains(" ..data here"));
    for (name, _, _) in &cases {
        delete(&pods, name).await?;
    }
    remove_config_map(&cluster, "e2e-late-vol").await
}

#[tokio::test]
async fn host_paths_are_checked_read_only_is_enforced_and_nothing_escapes() -> anyhow::Result<()> {
    let (cluster, node) = setup("e2e-vol-host", 10354, &[]).await?;
    let pods = cluster.pods();
    let tool = cluster.push("tool", "volumes").await?;
    let host = tempfile::tempdir()?;
    let shared = host.path().join("shared");
    std::fs::create_dir(&shared)?;
    std::fs::write(shared.join("data.txt"), "on the host")?;
    std::os::unix::fs::symlink("/etc/hostname", shared.join("absolute"))?;
    std::os::unix::fs::symlink("../secret.txt", shared.join("relative"))?;
    std::fs::write(host.path().join("secret.txt"), "outside")?;
    std::fs::write(host.path().join("single.txt"), "one file")?;
    let made = host.path().join("made/deeper");
    let p = |p: &std::path::Path| p.display().to_string();
    let pod = pod_with_spec(
        "e2e-vol-host",
        &node.name,
        serde_json::json!({
            "restartPolicy": "Never",
            "containers": [{
                "name": "main", "image": tool,
                "args": [
                    "cat", "/host/data.txt", "try-write", "/host/new", "x",
                    "cat", "/host/absolute", "cat", "/host/relative", "cat", "/host/../secret.txt",
                    "cat", "/etc/hostname", "ls", "/", "ls", "/host/..",
                    "try-write", "/made/file", "made", "symlink", "/etc/hostname", "/made/link",
                    "cat", "/made/link", "symlink", "../../secret.txt", "/made/up",
                    "cat", "/made/up", "cat", "/one/single.txt", "ls", "/one",
                    "try-write", "/one/single.txt", "changed"
                ],
                "volumeMounts": [
                    { "name": "shared", "mountPath": "/host", "readOnly": true },
                    { "name": "made", "mountPath": "/made" },
                    { "name": "single", "mountPath": "/one/single.txt" }
                ]
            }],
            "volumes": [
                { "name": "shared", "hostPath": { "path": p(&shared), "type": "Directory" } },
                { "name": "made", "hostPath": { "path": p(&made), "type": "DirectoryOrCreate" } },
                { "name": "single", "hostPath": { "path": p(&host.path().join("single.txt")), "type": "File" } }
            ]
        }),
    );
    create_fresh(&pods, &pod).await?;
    wait_pod(&pods, "e2e-vol-host", 60, "Succeeded", |p| {
        phase(p) == "Succeeded"
    })
    .await?;
    let log = logs(&pods, "e2e-vol-host").await?;
    assert_eq!(
        line(&log, "cat /host/data.txt"),
        "cat /host/data.txt: on the host"
    );
    // readOnly: the write fails inside the module.
    assert!(
        line(&log, "try-write /host/new").contains(": error: "),
        "{log}"
    );
    assert!(!shared.join("new").exists());
    // Escapes: symlinks out of the volume, `..`, paths outside every preopen.
    for attempt in [
        "cat /host/absolute",
        "cat /host/relative",
        "cat /host/../secret.txt",
        "cat /etc/hostname",
        "ls /:",
        "ls /host/..",
        "cat /made/link",
        "cat /made/up",
    ] {
        assert!(
            line(&log, attempt).contains(": error: "),
            "{attempt} was allowed:\n{log}"
        );
    }
    assert!(!log.contains("outside"), "{log}");
    // DirectoryOrCreate made the directory; the write landed on the node.
    assert_eq!(std::fs::read_to_string(made.join("file"))?, "made");
    // A single-file hostPath: only that file is visible, and writes reach the node.
    assert_eq!(
        line(&log, "cat /one/single.txt"),
        "cat /one/single.txt: one file"
    );
    assert_eq!(line(&log, "ls /one"), "ls /one: single.txt");
    assert_eq!(
        line(&log, "try-write /one/single.txt"),
        "try-write /one/single.txt: ok"
    );
    assert_eq!(
        std::fs::read_to_string(host.path().join("single.txt"))?,
        "changed"
    );
    delete(&pods, "e2e-vol-host").await
}

#[tokio::test]
async fn a_bad_sub_path_is_a_create_container_config_error() -> anyhow::Result<()> {
    let (cluster, node) = setup("e2e-vol-subpath", 10355, &[]).await?;
    let pods = cluster.pods();
    let tool = cluster.push("tool", "volumes").await?;
    let pod = pod_with_spec(
        "e2e-vol-subpath",
        &node.name,
        serde_json::json!({
            "restartPolicy": "Never",
            "containers": [{
                "name": "main", "image": tool, "args": ["ls", "/v"],
                "env": [{ "name": "UP", "value": ".." }],
                "volumeMounts": [{ "name": "v", "mountPath": "/v", "subPathExpr": "$(UP)/$(UP)" }]
            }],
            "volumes": [{ "name": "v", "emptyDir": {} }]
        }),
    );
    create_fresh(&pods, &pod).await?;
    let message = config_error(&pods, "e2e-vol-subpath", 30).await?;
    assert!(
        message
            .starts_with("failed to prepare subPath for volumeMount \"v\" of container \"main\""),
        "{message}"
    );
    delete(&pods, "e2e-vol-subpath").await
}

#[tokio::test]
async fn service_account_tokens_are_mounted_bound_to_the_pod_and_valid() -> anyhow::Result<()> {
    let (cluster, node) = setup("e2e-vol-token", 10356, &[]).await?;
    let pods = cluster.pods();
    let tool = cluster.push("tool", "volumes").await?;
    let sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    let pod = pod_with_spec(
        "e2e-vol-token",
        &node.name,
        serde_json::json!({
            "restartPolicy": "Never",
            "automountServiceAccountToken": true,
            "containers": [{
                "name": "main", "image": tool,
                "args": ["ls", sa_dir, "cat", &format!("{sa_dir}/namespace"), "cat", &format!("{sa_dir}/token"),
                         "cat", "/vault/token"],
                "volumeMounts": [{ "name": "vault", "mountPath": "/vault" }]
            }],
            "volumes": [{ "name": "vault", "projected": { "sources": [
                { "serviceAccountToken": { "audience": "vault", "expirationSeconds": 600, "path": "token" } }
            ] } }]
        }),
    );
    create_fresh(&pods, &pod).await?;
    let p = wait_pod(&pods, "e2e-vol-token", 60, "Succeeded", |p| {
        matches!(phase(p), "Succeeded" | "Failed")
    })
    .await?;
    let log = logs(&pods, "e2e-vol-token").await?;
    assert_eq!(phase(&p), "Succeeded", "{log}");
    // The API server's ServiceAccount admission added the kube-api-access volume: the
    // node fills it as the kubelet does.
    assert!(
        line(&log, &format!("ls {sa_dir}")).ends_with(" ..data ca.crt namespace token"),
        "{log}"
    );
    assert_eq!(
        line(&log, &format!("cat {sa_dir}/namespace")),
        format!("cat {sa_dir}/namespace: default")
    );
    let token_of = |prefix: &str| {
        line(&log, prefix)
            .split_once(": ")
            .map(|(_, t)| t.to_owned())
            .unwrap_or_default()
    };
    let uid = p.metadata.uid.clone().unwrap_or_default();
    let reviews: Api<TokenReview> = Api::all(cluster.client.clone());
    for (token, audiences) in [
        (token_of(&format!("cat {sa_dir}/token")), None),
        (token_of("cat /vault/token"), Some(vec!["vault".to_owned()])),
    ] {
        let review = TokenReview {
            spec: TokenReviewSpec { token, audiences },
            ..TokenReview::default()
        };
        let status = reviews
            .create(&PostParams::default(), &review)
            .await?
            .status
            .unwrap_or_default();
        assert_eq!(status.authenticated, Some(true), "{status:?}");
        let user = status.user.unwrap_or_default();
        assert_eq!(
            user.username.as_deref(),
            Some("system:serviceaccount:default:default")
        );
        // Bound to this pod: the token dies with it.
        let extra = user.extra.unwrap_or_default();
        assert_eq!(
            extra.get("authentication.kubernetes.io/pod-uid"),
            Some(&vec![uid.clone()]),
            "{extra:?}"
        );
    }
    delete(&pods, "e2e-vol-token").await
}

#[tokio::test]
async fn config_map_and_label_changes_reach_a_running_pod_whole() -> anyhow::Result<()> {
    let (cluster, node) = setup("e2e-vol-update", 10357, &["--sync-frequency", "1s"]).await?;
    let pods = cluster.pods();
    let tool = cluster.push("tool", "volumes").await?;
    put_config_map(&cluster, "e2e-vol-update", &[("k", "old-old-old")]).await?;
    let mut args = Vec::new();
    for _ in 0..60 {
        args.extend(["cat", "/cfg/k", "cat", "/info/labels", "sleep", "1"]);
    }
    let mut pod = pod_with_spec(
        "e2e-vol-update",
        &node.name,
        serde_json::json!({
            "restartPolicy": "Never",
            "containers": [{
                "name": "main", "image": tool, "args": args,
                "volumeMounts": [{ "name": "cfg", "mountPath": "/cfg" }, { "name": "info", "mountPath": "/info" }]
            }],
            "volumes": [
                { "name": "cfg", "configMap": { "name": "e2e-vol-update" } },
                { "name": "info", "downwardAPI": { "items": [{ "path": "labels", "fieldRef": { "fieldPath": "metadata.labels" } }] } }
            ]
        }),
    );
    pod.metadata.labels = Some(BTreeMap::from([("stage".to_owned(), "one".to_owned())]));
    create_fresh(&pods, &pod).await?;
    wait_pod(&pods, "e2e-vol-update", 60, "Running", |p| {
        phase(p) == "Running"
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    put_config_map(&cluster, "e2e-vol-update", &[("k", "new-new-new")]).await?;
    pods.patch(
        "e2e-vol-update",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "metadata": { "labels": { "stage": "two" } } })),
    )
    .await?;
    let mut log = String::new();
    for _ in 0..40 {
        log = logs(&pods, "e2e-vol-update").await?;
        if log.contains("new-new-new") && log.contains("stage=\\\"two\\\"") {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(log.contains("cat /cfg/k: new-new-new"), "{log}");
    assert!(log.contains("cat /info/labels: stage=\"two\""), "{log}");
    // Every read saw one whole version, old or new, never a torn or missing file.
    for l in log.lines().filter(|l| l.starts_with("cat /cfg/k")) {
        assert!(
            l == "cat /cfg/k: old-old-old" || l == "cat /cfg/k: new-new-new",
            "torn read: {l}"
        );
    }
    delete(&pods, "e2e-vol-update").await?;
    remove_config_map(&cluster, "e2e-vol-update").await
}

#[tokio::test]
async fn an_empty_dir_over_its_size_limit_gets_the_pod_evicted() -> anyhow::Result<()> {
    let (cluster, node) = setup("e2e-vol-evict", 10358, &["--sync-frequency", "1s"]).await?;
    let pods = cluster.pods();
    let tool = cluster.push("tool", "volumes").await?;
    let big = "x".repeat(8192);
    let pod = pod_with_spec(
        "e2e-vol-evict",
        &node.name,
        serde_json::json!({
            "restartPolicy": "Never",
            "containers": [{
                "name": "main", "image": tool, "args": ["try-write", "/scratch/big", big, "sleep", "600"],
                "volumeMounts": [{ "name": "scratch", "mountPath": "/scratch" }]
            }],
            "volumes": [{ "name": "scratch", "emptyDir": { "sizeLimit": "4Ki" } }]
        }),
    );
    create_fresh(&pods, &pod).await?;
    let p = wait_pod(&pods, "e2e-vol-evict", 60, "Failed", |p| {
        phase(p) == "Failed"
    })
    .await?;
    let status = p.status.clone().unwrap_or_default();
    let message = "Usage of EmptyDir volume \"scratch\" exceeds the limit \"4Ki\". ";
    assert_eq!(status.reason.as_deref(), Some("Evicted"));
    assert_eq!(status.message.as_deref(), Some(message));
    wait_event(&cluster, "e2e-vol-evict", "Evicted", message.trim_end()).await?;
    // The container was killed for it (exit 137); `kubectl get pods` then shows the
    // container's reason, as it does for the kubelet's evictions.
    let killed = e2e::terminated(&p, "main").map(|t| t.exit_code);
    assert_eq!(killed, Some(137));
    delete(&pods, "e2e-vol-evict").await
}

#[tokio::test]
async fn a_claim_bound_to_a_host_path_volume_is_mounted() -> anyhow::Result<()> {
    let (cluster, node) = setup("e2e-vol-claim", 10359, &[]).await?;
    let pods = cluster.pods();
    let tool = cluster.push("tool", "volumes").await?;
    let dir = tempfile::tempdir()?;
    let pvs: Api<PersistentVolume> = Api::all(cluster.client.clone());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), "default");
    ensure_absent(&pods, "e2e-vol-claim").await?;
    for _ in 0..60 {
        let _ = pvcs.delete("e2e-vol-claim", &DeleteParams::default()).await;
        let _ = pvs.delete("e2e-vol-claim", &DeleteParams::default()).await;
        if pvcs.get_opt("e2e-vol-claim").await?.is_none()
            && pvs.get_opt("e2e-vol-claim").await?.is_none()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": { "name": "e2e-vol-claim" },
        "spec": {
            "capacity": { "storage": "1Mi" }, "accessModes": ["ReadWriteOnce"],
            "storageClassName": "", "hostPath": { "path": dir.path().display().to_string() },
            "claimRef": { "namespace": "default", "name": "e2e-vol-claim" }
        }
    }))?;
    pvs.create(&PostParams::default(), &pv).await?;
    let pvc: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": { "name": "e2e-vol-claim" },
        "spec": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": "e2e-vol-claim",
            "resources": { "requests": { "storage": "1Mi" } }
        }
    }))?;
    pvcs.create(&PostParams::default(), &pvc).await?;
    let pod = pod_with_spec(
        "e2e-vol-claim",
        &node.name,
        serde_json::json!({
            "restartPolicy": "Never",
            "containers": [{
                "name": "main", "image": tool, "args": ["try-write", "/data/kept", "persisted"],
                "volumeMounts": [{ "name": "data", "mountPath": "/data" }]
            }],
            "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": "e2e-vol-claim" } }]
        }),
    );
    pods.create(&PostParams::default(), &pod).await?;
    // Until the PV controller binds the claim the mount fails; then the pod runs.
    wait_pod(&pods, "e2e-vol-claim", 120, "Succeeded", |p| {
        phase(p) == "Succeeded"
    })
    .await?;
    assert_eq!(
        std::fs::read_to_string(dir.path().join("kept"))?,
        "persisted"
    );
    delete(&pods, "e2e-vol-claim").await?;
    pvcs.delete("e2e-vol-claim", &DeleteParams::default())
        .await?;
    pvs.delete("e2e-vol-claim", &DeleteParams::default())
        .await?;
    Ok(())
}

#[tokio::test]
async fn volumes_of_running_pods_survive_an_agent_restart_and_those_of_deleted_pods_go()
-> anyhow::Result<()> {
    let (cluster, mut node) = setup("e2e-vol-restart", 10360, &[]).await?;
    let pods = cluster.pods();
    let tool = cluster.push("tool", "volumes").await?;
    for name in ["e2e-vol-keep", "e2e-vol-gone", "e2e-vol-never"] {
        let policy = if name == "e2e-vol-never" {
            "Never"
        } else {
            "Always"
        };
        let pod = pod_with_spec(
            name,
            &node.name,
            serde_json::json!({
                "restartPolicy": policy,
                "containers": [{
                    "name": "main", "image": tool,
                    "args": ["cat", "/scratch/f", "try-write", "/scratch/f", name, "sleep", "600"],
                    "volumeMounts": [{ "name": "scratch", "mountPath": "/scratch" }]
                }],
                "volumes": [{ "name": "scratch", "emptyDir": {} }]
            }),
        );
        create_fresh(&pods, &pod).await?;
        wait_pod(&pods, name, 60, "Running", |p| phase(p) == "Running").await?;
    }
    let dir_of = |name: &str| -> anyhow::Result<std::path::PathBuf> {
        std::fs::read_dir(node.data_dir.join("pods"))?
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().contains(name))
            .map(|e| e.path())
            .ok_or_else(|| anyhow::anyhow!("no directory for {name}"))
    };
    let keep = dir_of("e2e-vol-keep")?;
    let gone = dir_of("e2e-vol-gone")?;
    let scratch = keep.join("_volumes/scratch/f");
    for _ in 0..50 {
        if scratch.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The agent goes down; meanwhile one pod is deleted for good.
    node.stop()?;
    pods.delete(
        "e2e-vol-gone",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await?;
    wait_gone(&pods, "e2e-vol-gone", 30).await?;
    node.restart(&[])?;
    for _ in 0..100 {
        if !gone.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!gone.exists(), "{} left behind", gone.display());
    assert!(keep.exists());
    // The running pod's scratch data is still there, and its module, started again by the
    // new agent, reads it.
    assert_eq!(std::fs::read_to_string(&scratch)?, "e2e-vol-keep");
    let mut log = String::new();
    for _ in 0..100 {
        log = logs(&pods, "e2e-vol-keep").await.unwrap_or_default();
        if log.contains("cat /scratch/f: e2e-vol-keep") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(log.contains("cat /scratch/f: e2e-vol-keep"), "{log}");
    // The run that stopped with the old agent is counted: a restart, the lost run in
    // lastState as the kubelet reports a container it can no longer find.
    let p = wait_pod(&pods, "e2e-vol-keep", 120, "restart counted", |p| {
        e2e::container_status(p, "main").is_some_and(|s| s.restart_count == 1)
    })
    .await?;
    let last = e2e::container_status(&p, "main")
        .and_then(|s| s.last_state?.terminated)
        .ok_or_else(|| anyhow::anyhow!("no lastState"))?;
    assert_eq!(
        (last.exit_code, last.reason.as_deref()),
        (137, Some("ContainerStatusUnknown"))
    );
    // restartPolicy Never: the lost run is not run again; the pod fails.
    let p = wait_pod(&pods, "e2e-vol-never", 120, "Failed", |p| {
        phase(p) == "Failed"
    })
    .await?;
    let t = e2e::terminated(&p, "main").ok_or_else(|| anyhow::anyhow!("not terminated"))?;
    assert_eq!(
        (t.exit_code, t.reason.as_deref()),
        (137, Some("ContainerStatusUnknown"))
    );
    delete(&pods, "e2e-vol-never").await?;
    delete(&pods, "e2e-vol-keep").await
}

#[tokio::test]
async fn a_sub_path_through_a_symlink_the_pod_planted_is_refused() -> anyhow::Result<()> {
    let (cluster, node) = setup("e2e-vol-plant", 10361, &[]).await?;
    let pods = cluster.pods();
    let tool = cluster.push("tool", "volumes").await?;
    // A directory outside every volume, reached by enough `..` from the emptyDir.
    let outside = tempfile::tempdir()?;
    let target = format!("{}{}", "../".repeat(24), outside.path().display()).replace("//", "/");
    let pod = pod_with_spec(
        "e2e-vol-plant",
        &node.name,
        serde_json::json!({
            "restartPolicy": "Never",
            "initContainers": [{
                "name": "plant", "image": tool, "args": ["symlink", target, "/work/esc"],
                "volumeMounts": [{ "name": "work", "mountPath": "/work" }]
            }],
            "containers": [{
                "name": "main", "image": tool, "args": ["try-write", "/escaped/x", "out"],
                "volumeMounts": [{ "name": "work", "mountPath": "/escaped", "subPath": "esc/made" }]
            }],
            "volumes": [{ "name": "work", "emptyDir": {} }]
        }),
    );
    create_fresh(&pods, &pod).await?;
    let message = config_error(&pods, "e2e-vol-plant", 60).await?;
    assert!(message.contains("is a symlink"), "{message}");
    // The link was really planted, and nothing was created where it points.
    let planted = pods
        .logs(
            "e2e-vol-plant",
            &LogParams {
                container: Some("plant".to_owned()),
                ..LogParams::default()
            },
        )
        .await?;
    assert!(planted.contains("symlink /work/esc: ok"), "{planted}");
    assert!(!outside.path().join("made").exists());
    assert_eq!(std::fs::read_dir(outside.path())?.count(), 0);
    delete(&pods, "e2e-vol-plant").await
}
