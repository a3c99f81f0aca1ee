//! Pod lifecycle parity with the kubelet: restarts and back-off, traps, termination
//! messages, deadlines, init containers, sidecars, admission. Each test checks the status
//! fields and the row `kubectl get pods` prints.

use e2e::{
    Cluster, KrustletNode, PodRow, container_status, create_fresh, delete_and_wait, node_condition,
    phase, pod_condition, pod_with_spec, setup, terminated, wait_pod, wait_row, waiting_reason,
};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::LogParams;

/// Creates pod `name` with `spec` on `node`, after removing any pod of that name left by
/// an earlier run.
async fn run(
    pods: &Api<Pod>,
    name: &str,
    node: &KrustletNode,
    spec: serde_json::Value,
) -> anyhow::Result<()> {
    create_fresh(pods, &pod_with_spec(name, &node.name, spec)).await
}

async fn delete(pods: &Api<Pod>, name: &str) -> anyhow::Result<()> {
    delete_and_wait(pods, name, 30).await
}

fn row(ready: &str, status: &str, restarts: u32) -> PodRow {
    PodRow {
        ready: ready.to_owned(),
        status: status.to_owned(),
        restarts,
    }
}

/// `(reason, message, count)` of each event about `name`, oldest first.
async fn events(cluster: &Cluster, name: &str) -> anyhow::Result<Vec<(String, String, i32)>> {
    Ok(cluster
        .events(name)
        .await?
        .into_iter()
        .map(|e| {
            (
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
                e.count.unwrap_or_default(),
            )
        })
        .collect())
}

fn logs(container: &str) -> LogParams {
    LogParams {
        container: Some(container.to_owned()),
        ..LogParams::default()
    }
}

#[tokio::test]
async fn a_crashing_container_restarts_with_back_off_and_counts_restarts() -> anyhow::Result<()> {
    let (cluster, node) = setup("e2e-crash", 10321, &[]).await?;
    let image = cluster.push("tool", "v1").await?;
    let pods = cluster.pods();
    let name = "e2e-crash";
    run(
        &pods,
        name,
        &node,
        serde_json::json!({
            "restartPolicy": "Always",
            "containers": [{ "name": "main", "image": image,
                "args": ["print", "run", "eprint", "oops", "exit", "3"] }]
        }),
    )
    .await?;
    // Fails, restarts at once, fails, waits 10 s, restarts, fails, waits 20 s.
    let p = wait_pod(&pods, name, 60, "2 restarts, then CrashLoopBackOff", |p| {
        container_status(p, "main").is_some_and(|c| c.restart_count == 2)
            && waiting_reason(p, "main").as_deref() == Some("CrashLoopBackOff")
    })
    .await?;
    assert_eq!(phase(&p), "Running");
    let cs = container_status(&p, "main").expect("status");
    let waiting = cs.state.and_then(|s| s.waiting).expect("waiting");
    assert!(
        waiting.message.as_deref().is_some_and(|m| m
            .starts_with("back-off 20s restarting failed container=main pod=e2e-crash_default(")),
        "{waiting:?}"
    );
    let last = cs
        .last_state
        .and_then(|s| s.terminated)
        .expect("lastState.terminated");
    assert_eq!((last.exit_code, last.reason.as_deref()), (3, Some("Error")));
    assert_eq!((cs.ready, cs.started), (false, Some(false)));
    assert_eq!(pod_condition(&p, "Ready").as_deref(), Some("False"));
    assert_eq!(
        cluster.pod_row(name).await?,
        row("0/1", "CrashLoopBackOff", 2)
    );

    // The last run's log, and the one before it with `--previous`.
    assert_eq!(pods.logs(name, &logs("main")).await?, "run\noops\n");
    let previous = LogParams {
        previous: true,
        ..logs("main")
    };
    assert_eq!(pods.logs(name, &previous).await?, "run\noops\n");

    // Two back-offs so far, aggregated into one event with a count, as the kubelet does.
    let back_offs: Vec<_> = events(&cluster, name)
        .await?
        .into_iter()
        .filter(|e| e.0 == "BackOff")
        .collect();
    assert_eq!(back_offs.len(), 1, "{back_offs:?}");
    assert_eq!(back_offs[0].2, 2, "{back_offs:?}");
    assert!(
        back_offs[0]
            .1
            .starts_with("Back-off restarting failed container main in pod e2e-crash_default("),
        "{back_offs:?}"
    );
    delete(&pods, name).await
}

#[tokio::test]
async fn a_trap_fails_the_container_with_134_and_a_reason_naming_the_trap() -> anyhow::Result<()> {
    let (cluster, node) = setup("e2e-trap", 10322, &[]).await?;
    let image = cluster.push("tool", "v1").await?;
    let pods = cluster.pods();
    let name = "e2e-trap";
    run(
        &pods,
        name,
        &node,
        serde_json::json!({
            "restartPolicy": "Never",
            "containers": [{ "name": "main", "image": image,
                "args": ["print", "before the trap", "trap"] }]
        }),
    )
    .await?;
    let p = wait_pod(&pods, name, 60, "Failed", |p| phase(p) == "Failed").await?;
    let t = terminated(&p, "main").expect("terminated");
    assert_eq!(
        (t.exit_code, t.reason.as_deref()),
        (134, Some("TrapUnreachableCodeReached"))
    );
    assert!(
        t.message
            .as_deref()
            .is_some_and(|m| m.contains("unreachable")),
        "{t:?}"
    );
    assert_eq!(
        cluster.pod_row(name).await?,
        row("0/1", "TrapUnreachableCodeReached", 0)
    );
    assert_eq!(pods.logs(name, &logs("main")).await?, "before the trap\n");
    // `kubectl get events` tells the container's story in the kubelet's words.
    let reasons: Vec<String> = events(&cluster, name)
        .await?
        .into_iter()
        .map(|e| e.0)
        .collect();
    let story: Vec<&str> = reasons
        .iter()
        .map(String::as_str)
        .filter(|r| ["Pulling", "Pulled", "Created", "Started"].contains(r))
        .collect();
    assert_eq!(
        story,
        ["Pulling", "Pulled", "Created", "Started"],
        "{reasons:?}"
    );
    let printed = cluster
        .kubectl(&[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={name}"),
        ])
        .await?;
    assert!(printed.contains("Started container main"), "{printed}");
    // The node is unaffected.
    let n = cluster.nodes().get(&node.name).await?;
    assert_eq!(node_condition(&n, "Ready").as_deref(), Some("True"));
    delete(&pods, name).await
}

#[tokio::test]
async fn containers_run_together_each_with_its_status_log_and_termination_message()
-> anyhow::Result<()> {
    let (cluster, node) = setup("e2e-term", 10323, &[]).await?;
    let image = cluster.push("tool", "v1").await?;
    let pods = cluster.pods();
    let name = "e2e-term";
    run(&pods, name, &node, serde_json::json!({
                "restartPolicy": "Never",
                "containers": [
                    { "name": "file", "image": image,
                      "args": ["sleep", "2", "write", "/dev/termination-log", "bye from file"] },
                    { "name": "fallback", "image": image,
                      "terminationMessagePolicy": "FallbackToLogsOnError",
                      "args": ["sleep", "2", "eprint", "first", "eprint", "last words", "exit", "4"] },
                    { "name": "custom", "image": image,
                      "terminationMessagePath": "/tmp/done",
                      "args": ["sleep", "2", "print", "custom ran", "write", "/tmp/done", "custom path"] }
                ]
            }),
    )
    .await?;
    let p = wait_pod(&pods, name, 60, "Failed", |p| phase(p) == "Failed").await?;
    let file = terminated(&p, "file").expect("file terminated");
    let fallback = terminated(&p, "fallback").expect("fallback terminated");
    let custom = terminated(&p, "custom").expect("custom terminated");
    assert_eq!(
        (file.exit_code, file.message.as_deref()),
        (0, Some("bye from file"))
    );
    assert_eq!(
        (fallback.exit_code, fallback.reason.as_deref()),
        (4, Some("Error"))
    );
    assert_eq!(fallback.message.as_deref(), Some("first\nlast words\n"));
    assert_eq!(custom.message.as_deref(), Some("custom path"));
    // They ran at the same time: each started before any of them finished.
    let all = [&file, &fallback, &custom];
    for a in all {
        for b in all {
            assert!(a.started_at <= b.finished_at, "{all:?}");
        }
    }
    assert_eq!(
        pods.logs(name, &logs("fallback")).await?,
        "first\nlast words\n"
    );
    assert_eq!(pods.logs(name, &logs("custom")).await?, "custom ran\n");
    assert_eq!(pods.logs(name, &logs("file")).await?, "");
    assert_eq!(cluster.pod_row(name).await?, row("0/3", "Error", 0));
    delete(&pods, name).await
}

#[tokio::test]
async fn active_deadline_seconds_kills_the_pod_and_fails_it() -> anyhow::Result<()> {
    let (cluster, node) = setup("e2e-deadline", 10324, &[]).await?;
    let image = cluster.push("loop", "v1").await?;
    let pods = cluster.pods();
    let name = "e2e-deadline";
    run(
        &pods,
        name,
        &node,
        serde_json::json!({
            "restartPolicy": "Always",
            "activeDeadlineSeconds": 30,
            "containers": [{ "name": "main", "image": image }]
        }),
    )
    .await?;
    // Running first, so that the deadline kills a running module (generous bounds: CI
    // shares 2 cores between 16 tests and the control plane).
    wait_pod(&pods, name, 120, "Running", |p| phase(p) == "Running").await?;
    let p = wait_pod(&pods, name, 90, "Failed", |p| phase(p) == "Failed").await?;
    let status = p.status.clone().unwrap_or_default();
    assert_eq!(status.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(
        status.message.as_deref(),
        Some("Pod was active on the node longer than the specified deadline")
    );
    let t = terminated(&p, "main").expect("terminated");
    assert_eq!(t.exit_code, 137);
    // kubectl prints the killed container's reason over the pod's, as it does for a
    // kubelet whose runtime reports the SIGKILLed container as `Error`.
    assert_eq!(t.reason.as_deref(), Some("Error"));
    assert_eq!(cluster.pod_row(name).await?, row("0/1", "Error", 0));
    let evs = events(&cluster, name).await?;
    assert!(evs.iter().any(|e| e.0 == "DeadlineExceeded"), "{evs:?}");
    assert!(
        evs.iter()
            .any(|e| e.0 == "Killing" && e.1 == "Stopping container main"),
        "{evs:?}"
    );
    delete(&pods, name).await
}

#[tokio::test]
async fn init_containers_run_in_order_before_the_app_containers() -> anyhow::Result<()> {
    let (cluster, node) = setup("e2e-init", 10325, &[]).await?;
    let tool = cluster.push("tool", "v1").await?;
    let looping = cluster.push("loop", "v1").await?;
    let pods = cluster.pods();
    let name = "e2e-init";
    run(
        &pods,
        name,
        &node,
        serde_json::json!({
            "restartPolicy": "Always",
            "initContainers": [
                { "name": "first", "image": tool, "args": ["print", "first"] },
                { "name": "second", "image": tool, "args": ["print", "second", "sleep", "6"] }
            ],
            "containers": [{ "name": "main", "image": looping }]
        }),
    )
    .await?;
    // While the second init container runs, kubectl shows how far initialization got.
    // Generous: on CI's two cores the first init container's pull and compile wait
    // behind the rest of the suite (30 s was once not enough).
    let during = wait_row(&cluster, name, 120, |r| r.status == "Init:1/2").await?;
    assert_eq!(during, row("0/1", "Init:1/2", 0));
    let p = wait_pod(&pods, name, 120, "Running and Ready", |p| {
        phase(p) == "Running" && pod_condition(p, "Ready").as_deref() == Some("True")
    })
    .await?;
    for c in [
        "PodScheduled",
        "PodReadyToStartContainers",
        "Initialized",
        "ContainersReady",
    ] {
        assert_eq!(pod_condition(&p, c).as_deref(), Some("True"), "{c}");
    }
    let first = terminated(&p, "first").expect("first terminated");
    let second = terminated(&p, "second").expect("second terminated");
    for (t, c) in [(&first, "first"), (&second, "second")] {
        assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
        assert!(
            container_status(&p, c).is_some_and(|s| s.ready),
            "{c} ready"
        );
    }
    let main = container_status(&p, "main").expect("main status");
    let started = main
        .state
        .and_then(|s| s.running)
        .and_then(|r| r.started_at);
    assert!(first.finished_at <= second.started_at);
    assert!(second.finished_at <= started, "{second:?} then {started:?}");
    assert_eq!(
        p.status
            .as_ref()
            .and_then(|s| s.init_container_statuses.as_ref())
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(cluster.pod_row(name).await?, row("1/1", "Running", 0));
    assert_eq!(pods.logs(name, &logs("second")).await?, "second\n");
    delete(&pods, name).await
}

#[tokio::test]
async fn a_failing_init_container_shows_init_error_or_init_crash_loop_back_off()
-> anyhow::Result<()> {
    let (cluster, node) = setup("e2e-init-fail", 10326, &[]).await?;
    let tool = cluster.push("tool", "v1").await?;
    let pods = cluster.pods();
    let spec = |policy: &str| {
        serde_json::json!({
            "restartPolicy": policy,
            "initContainers": [{ "name": "setup", "image": tool, "args": ["exit", "1"] }],
            "containers": [{ "name": "main", "image": tool }]
        })
    };
    run(&pods, "e2e-init-never", &node, spec("Never")).await?;
    run(&pods, "e2e-init-always", &node, spec("Always")).await?;

    let p = wait_pod(&pods, "e2e-init-never", 60, "Failed", |p| {
        phase(p) == "Failed"
    })
    .await?;
    let t = terminated(&p, "setup").expect("setup terminated");
    assert_eq!((t.exit_code, t.reason.as_deref()), (1, Some("Error")));
    assert_eq!(
        waiting_reason(&p, "main").as_deref(),
        Some("PodInitializing")
    );
    assert_eq!(pod_condition(&p, "Initialized").as_deref(), Some("False"));
    assert_eq!(
        cluster.pod_row("e2e-init-never").await?,
        row("0/1", "Init:Error", 0)
    );

    let p = wait_pod(&pods, "e2e-init-always", 60, "init CrashLoopBackOff", |p| {
        waiting_reason(p, "setup").as_deref() == Some("CrashLoopBackOff")
    })
    .await?;
    assert_eq!(phase(&p), "Pending");
    assert_eq!(
        waiting_reason(&p, "main").as_deref(),
        Some("PodInitializing")
    );
    let restarts = container_status(&p, "setup").map(|c| c.restart_count);
    assert_eq!(restarts, Some(1));
    assert_eq!(
        cluster.pod_row("e2e-init-always").await?,
        row("0/1", "Init:CrashLoopBackOff", 1)
    );
    delete(&pods, "e2e-init-never").await?;
    delete(&pods, "e2e-init-always").await
}

#[tokio::test]
async fn a_native_sidecar_runs_beside_the_app_and_stops_after_it() -> anyhow::Result<()> {
    let (cluster, node) = setup("e2e-sidecar", 10327, &[]).await?;
    let tool = cluster.push("tool", "v1").await?;
    let looping = cluster.push("loop", "v1").await?;
    let pods = cluster.pods();
    let name = "e2e-sidecar";
    run(
        &pods,
        name,
        &node,
        serde_json::json!({
            "restartPolicy": "Never",
            "initContainers": [{ "name": "logger", "image": looping, "restartPolicy": "Always" }],
            "containers": [{ "name": "main", "image": tool,
                "args": ["print", "working", "sleep", "15", "print", "done"] }]
        }),
    )
    .await?;
    let p = wait_pod(&pods, name, 90, "both running", |p| {
        ["logger", "main"]
            .iter()
            .all(|c| container_status(p, c).is_some_and(|s| s.ready))
    })
    .await?;
    assert_eq!(phase(&p), "Running");
    assert_eq!(pod_condition(&p, "Initialized").as_deref(), Some("True"));
    let during = wait_row(&cluster, name, 10, |r| r.ready == "2/2").await?;
    assert_eq!(during, row("2/2", "Running", 0));

    let p = wait_pod(&pods, name, 120, "Succeeded", |p| phase(p) == "Succeeded").await?;
    let main = terminated(&p, "main").expect("main terminated");
    assert_eq!(
        (main.exit_code, main.reason.as_deref()),
        (0, Some("Completed"))
    );
    let logger = container_status(&p, "logger").expect("logger status");
    assert!(
        logger
            .state
            .as_ref()
            .is_some_and(|s| s.terminated.is_some()),
        "the sidecar is stopped once the app is done: {logger:?}"
    );
    assert!(
        pods.logs(name, &logs("logger"))
            .await?
            .starts_with("tick 0\ntick 1\n")
    );
    assert_eq!(pods.logs(name, &logs("main")).await?, "working\ndone\n");
    assert_eq!(cluster.pod_row(name).await?, row("0/2", "Completed", 0));
    delete(&pods, name).await
}

#[tokio::test]
async fn pods_the_node_cannot_run_are_rejected_as_the_kubelet_rejects_them() -> anyhow::Result<()> {
    let (cluster, node) = setup("e2e-admit", 10328, &["--max-pods", "3"]).await?;
    let looping = cluster.push("loop", "v1").await?;
    let pods = cluster.pods();
    // Bound directly, as a scheduler that ignores capacity or ports would bind them.
    let bound = |name: &str, container: serde_json::Value| {
        let mut c = serde_json::json!({ "name": "main", "image": looping });
        if let (Some(c), serde_json::Value::Object(extra)) = (c.as_object_mut(), container) {
            c.extend(extra);
        }
        pod_with_spec(
            name,
            &node.name,
            serde_json::json!({ "nodeName": node.name, "containers": [c] }),
        )
    };
    let rejected = |name: &'static str| {
        let pods = pods.clone();
        async move {
            let p = wait_pod(&pods, name, 120, "Failed", |p| phase(p) == "Failed").await?;
            let s = p.status.unwrap_or_default();
            anyhow::Ok((s.reason.unwrap_or_default(), s.message.unwrap_or_default()))
        }
    };
    let running = |name: &'static str| {
        let pods = pods.clone();
        async move {
            wait_pod(&pods, name, 120, "Ready", |p| {
                pod_condition(p, "Ready").as_deref() == Some("True")
            })
            .await
        }
    };

    let privileged = bound(
        "e2e-admit-privileged",
        serde_json::json!({ "securityContext": { "privileged": true } }),
    );
    create_fresh(&pods, &privileged).await?;
    let (reason, message) = rejected("e2e-admit-privileged").await?;
    assert_eq!(reason, "UnsupportedSecurityContext");
    assert!(
        message.starts_with("Pod was rejected: container \"main\" asks for privileges"),
        "{message}"
    );
    assert_eq!(
        cluster.pod_row("e2e-admit-privileged").await?,
        row("0/1", "UnsupportedSecurityContext", 0)
    );
    let evs = events(&cluster, "e2e-admit-privileged").await?;
    assert!(
        evs.iter().any(|e| e.0 == "UnsupportedSecurityContext"),
        "{evs:?}"
    );

    let exec = bound(
        "e2e-admit-exec",
        serde_json::json!({ "livenessProbe": { "exec": { "command": ["true"] } } }),
    );
    create_fresh(&pods, &exec).await?;
    assert_eq!(rejected("e2e-admit-exec").await?.0, "UnsupportedProbe");

    // A network probe is admitted and run: the pod has no address of its own on a node
    // without a pod network, so the readiness probe fails (an Unhealthy event; it is not
    // sent to the node's own port instead) and the pod runs but is not Ready.
    let http = bound(
        "e2e-admit-http",
        serde_json::json!({ "readinessProbe": { "tcpSocket": { "port": 1 }, "periodSeconds": 1 } }),
    );
    create_fresh(&pods, &http).await?;
    // Running, never Ready: its probe cannot pass (this waited for Ready once, which a
    // container was for a moment before its first probe; no longer).
    let p = wait_pod(&pods, "e2e-admit-http", 120, "Running", |p| {
        phase(p) == "Running"
    })
    .await?;
    assert_eq!(
        p.status.and_then(|s| s.qos_class).as_deref(),
        Some("BestEffort")
    );
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let evs = events(&cluster, "e2e-admit-http").await?;
        if evs.iter().any(|e| {
            e.0 == "Unhealthy"
                && e.1
                    == "Readiness probe failed: the pod has no IP address to probe: it has no \
                        network of its own on this node"
        }) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{evs:?}");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let p = pods.get("e2e-admit-http").await?;
    assert_eq!(e2e::pod_condition(&p, "Ready").as_deref(), Some("False"));

    let port = |name: &str| {
        bound(
            name,
            serde_json::json!({
                "ports": [{ "containerPort": 8080, "hostPort": 18080 }],
                "resources": { "limits": { "cpu": "100m", "memory": "64Mi" } }
            }),
        )
    };
    create_fresh(&pods, &port("e2e-admit-port")).await?;
    let p = running("e2e-admit-port").await?;
    assert_eq!(
        p.status.and_then(|s| s.qos_class).as_deref(),
        Some("Guaranteed")
    );
    create_fresh(&pods, &port("e2e-admit-port-again")).await?;
    let (reason, message) = rejected("e2e-admit-port-again").await?;
    assert_eq!(reason, "NodePorts");
    assert_eq!(
        message,
        "Pod was rejected: Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports"
    );

    // Two pods run and rejected pods do not count: one more fits, the next does not.
    create_fresh(&pods, &bound("e2e-admit-third", serde_json::json!({}))).await?;
    running("e2e-admit-third").await?;
    create_fresh(&pods, &bound("e2e-admit-fourth", serde_json::json!({}))).await?;
    let (reason, message) = rejected("e2e-admit-fourth").await?;
    assert_eq!(reason, "OutOfpods");
    assert_eq!(
        message,
        "Pod was rejected: Node didn't have enough resource: pods, requested: 1, used: 3, capacity: 3"
    );

    let n = cluster.nodes().get(&node.name).await?;
    assert_eq!(node_condition(&n, "Ready").as_deref(), Some("True"));
    for name in [
        "e2e-admit-privileged",
        "e2e-admit-exec",
        "e2e-admit-http",
        "e2e-admit-port",
        "e2e-admit-port-again",
        "e2e-admit-third",
        "e2e-admit-fourth",
    ] {
        delete(&pods, name).await?;
    }
    Ok(())
}

#[tokio::test]
async fn restart_policy_on_failure_leaves_a_success_alone() -> anyhow::Result<()> {
    let (cluster, node) = setup("e2e-onfailure", 10329, &[]).await?;
    let tool = cluster.push("tool", "v1").await?;
    let pods = cluster.pods();
    let spec = |code: &str| {
        serde_json::json!({
            "restartPolicy": "OnFailure",
            "containers": [{ "name": "main", "image": tool, "args": ["exit", code] }]
        })
    };
    run(&pods, "e2e-onfailure-ok", &node, spec("0")).await?;
    run(&pods, "e2e-onfailure-bad", &node, spec("5")).await?;
    let p = wait_pod(&pods, "e2e-onfailure-ok", 120, "Succeeded", |p| {
        phase(p) == "Succeeded"
    })
    .await?;
    assert_eq!(
        container_status(&p, "main").map(|c| c.restart_count),
        Some(0)
    );
    assert_eq!(
        cluster.pod_row("e2e-onfailure-ok").await?,
        row("0/1", "Completed", 0)
    );
    let p = wait_pod(&pods, "e2e-onfailure-bad", 120, "restarted", |p| {
        container_status(p, "main").is_some_and(|c| c.restart_count >= 1)
    })
    .await?;
    assert_eq!(phase(&p), "Running");
    // Between its exits the restarted container is briefly running (and so ready, having no
    // probe), as on a kubelet; wait for the row of a container that exited again.
    wait_row(&cluster, "e2e-onfailure-bad", 120, |r| {
        r.restarts >= 1 && r.ready == "0/1"
    })
    .await?;
    delete(&pods, "e2e-onfailure-ok").await?;
    delete(&pods, "e2e-onfailure-bad").await
}
