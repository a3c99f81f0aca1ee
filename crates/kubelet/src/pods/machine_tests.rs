//! The pod state machine without a cluster: one worker over the in-memory API and the
//! scripted runtime of [`super::testing`], in paused time (minutes of back-off pass in
//! microseconds). The end-to-end tests check what the real control plane sees; these
//! check the timing and the order of things.

use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::testing::{Did, Harness, Pull, Script, container, pod};

const SEC: Duration = Duration::from_secs(1);

/// Polls `done` every 100 ms of test time for at most `bound` (test time: no real
/// waiting while the runtime idles).
async fn eventually(bound: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(bound, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "not within {bound:?}: {what}");
}

fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

/// `got` is `want`, each within a second over (the worker's own small steps).
fn assert_about(got: &[Duration], want: &[u64]) {
    assert_eq!(got.len(), want.len(), "{got:?} against {want:?} s");
    for (g, w) in got.iter().zip(want) {
        let w = Duration::from_secs(*w);
        assert!(*g >= w && *g <= w + SEC, "{got:?} against {want:?} s");
    }
}

/// Waits until the last status written has phase `want`, for at most `secs` of test
/// time.
async fn phase_reported(h: &Harness, secs: u64, want: &str) {
    h.api
        .until(Duration::from_secs(secs), want, |w| {
            w.statuses.last().is_some_and(|(_, s)| phase(s) == want)
        })
        .await;
}

/// Waits until container `c` has started once, for at most `secs` of test time.
async fn started(h: &Harness, secs: u64) {
    eventually(Duration::from_secs(secs), "c started", || {
        !h.runtime.starts("c").is_empty()
    })
    .await;
}

/// Waits until the worker deleted the pod, for at most `secs` of test time.
async fn deleted(h: &Harness, secs: u64) {
    h.api
        .until(Duration::from_secs(secs), "deleted", |w| {
            !w.deleted.is_empty()
        })
        .await;
}

/// Asserts the worker's task ends within a minute of test time.
async fn ended(task: tokio::task::JoinHandle<()>) {
    let ended = tokio::time::timeout(Duration::from_secs(60), task).await;
    assert!(ended.is_ok(), "the worker did not end");
}

fn phase(status: &serde_json::Value) -> &str {
    status["phase"].as_str().unwrap_or_default()
}

fn waiting_reason<'a>(status: &'a serde_json::Value, name: &str) -> &'a str {
    container(status, name)["state"]["waiting"]["reason"]
        .as_str()
        .unwrap_or_default()
}

fn one(name: &str, policy: &str) -> serde_json::Value {
    json!({ "restartPolicy": policy, "containers": [{ "name": name, "image": "r/img:1" }] })
}

#[tokio::test(start_paused = true)]
async fn a_crash_loop_restarts_at_once_then_backs_off_from_ten_seconds_to_five_minutes() {
    let h = Harness::new();
    h.runtime.script("c", &[Script::Exit(Duration::ZERO, 1)]);
    let _w = h.start(pod(one("c", "Always")), None);
    eventually(Duration::from_secs(3600), "nine runs", || {
        h.runtime.starts("c").len() >= 9
    })
    .await;
    let starts = h.runtime.starts("c");
    assert_about(&gaps(&starts[..9]), &[0, 10, 20, 40, 80, 160, 300, 300]);
    // While it waits: CrashLoopBackOff, the last run in lastState, the restarts counted.
    let message = "back-off 20s restarting failed container=c pod=p_default(uid-p)";
    let statuses = h.api.statuses();
    let s = statuses
        .iter()
        .find(|s| container(s, "c")["state"]["waiting"]["message"] == message)
        .expect("the second back-off reported");
    let c = container(s, "c");
    assert_eq!(c["state"]["waiting"]["reason"], "CrashLoopBackOff");
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 1);
    assert_eq!(c["restartCount"], 2);
    assert_eq!(phase(s), "Running");
    assert!(!h.api.events("BackOff").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_run_of_ten_minutes_forgets_the_crash_loop_back_off() {
    let h = Harness::new();
    let quick = Script::Exit(Duration::ZERO, 1);
    h.runtime.script(
        "c",
        &[
            quick,
            quick,
            quick,
            Script::Exit(Duration::from_secs(600), 1),
            quick,
        ],
    );
    let _w = h.start(pod(one("c", "Always")), None);
    eventually(Duration::from_secs(3600), "seven runs", || {
        h.runtime.starts("c").len() >= 7
    })
    .await;
    // At once, 10 s, 20 s of back-off; a run of 600 s, after which the next restart is
    // at once (the back-off forgotten), then 10 s and 20 s again.
    assert_about(
        &gaps(&h.runtime.starts("c")[..7]),
        &[0, 10, 20, 600, 10, 20],
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_pull_backs_off_as_image_pull_back_off_then_succeeds() {
    let h = Harness::new();
    h.runtime.pulls(
        "r/img:1",
        &[Pull::Fails, Pull::Fails, Pull::Fails, Pull::Ok(2 * SEC)],
    );
    h.runtime.script("c", &[Script::Hang]);
    let _w = h.start(pod(one("c", "Always")), None);
    started(&h, 3600).await;
    let pulls: Vec<Instant> = h
        .runtime
        .did()
        .into_iter()
        .filter(|(_, d)| matches!(d, Did::Pulled(_)))
        .map(|(at, _)| at)
        .collect();
    // Each failure shows for a second as ErrImagePull, then the back-off: 10, 20, 40 s.
    assert_about(&gaps(&pulls), &[11, 21, 41]);
    let reasons: Vec<String> = h
        .api
        .statuses()
        .iter()
        .map(|s| waiting_reason(s, "c").to_owned())
        .filter(|r| !r.is_empty())
        .collect();
    assert!(reasons.contains(&"ErrImagePull".to_owned()), "{reasons:?}");
    let backoff = h
        .api
        .statuses()
        .into_iter()
        .find(|s| waiting_reason(s, "c") == "ImagePullBackOff")
        .expect("ImagePullBackOff reported");
    let message = container(&backoff, "c")["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.starts_with("Back-off pulling image \"r/img:1\": ErrImagePull: "),
        "{message}"
    );
    let reasons = h.api.reasons();
    let order: Vec<&str> = [
        "Pulling", "Failed", "BackOff", "Pulled", "Created", "Started",
    ]
    .into_iter()
    .filter(|r| reasons.iter().any(|x| x == r))
    .collect();
    assert_eq!(order.len(), 6, "{reasons:?}");
    let pulled = reasons.iter().position(|r| r == "Pulled");
    let created = reasons.iter().position(|r| r == "Created");
    assert!(pulled < created, "{reasons:?}");
    eventually(Duration::from_secs(60), "Running", || {
        phase(&h.api.last_status()) == "Running"
            && container(&h.api.last_status(), "c")["state"]["running"].is_object()
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn the_active_deadline_fails_the_pod_and_kills_its_containers() {
    let h = Harness::new();
    h.runtime.script("c", &[Script::Hang]);
    let mut spec = one("c", "Always");
    spec["activeDeadlineSeconds"] = json!(30);
    let began = Instant::now();
    let w = h.start(pod(spec), None);
    phase_reported(&h, 120, "Failed").await;
    let last = h.api.last_status();
    assert_eq!(last["reason"], "DeadlineExceeded");
    assert_eq!(
        last["message"],
        "Pod was active on the node longer than the specified deadline"
    );
    let failed_at = h.api.with(|w| w.statuses.last().map(|(at, _)| *at));
    let failed_after = failed_at.map(|at| at - began).unwrap_or_default();
    assert!(
        failed_after >= Duration::from_secs(30) && failed_after <= Duration::from_secs(31),
        "{failed_after:?}"
    );
    assert!(
        h.runtime
            .did()
            .iter()
            .any(|(_, d)| *d == Did::Killed("c".to_owned()))
    );
    let reasons = h.api.reasons();
    assert!(
        reasons.contains(&"DeadlineExceeded".to_owned()),
        "{reasons:?}"
    );
    assert!(reasons.contains(&"Killing".to_owned()), "{reasons:?}");
    assert_eq!(
        container(&last, "c")["state"]["terminated"]["exitCode"],
        137
    );
    // The object stays until it is deleted; then the worker finishes the deletion.
    assert!(h.api.with(|w| w.deleted.is_empty()));
    w.delete();
    deleted(&h, 60).await;
}

#[tokio::test(start_paused = true)]
async fn init_containers_run_one_at_a_time_before_the_app_containers() {
    let h = Harness::new();
    h.runtime.script("i1", &[Script::Exit(5 * SEC, 0)]);
    h.runtime.script("i2", &[Script::Exit(5 * SEC, 0)]);
    h.runtime.script("a", &[Script::Hang]);
    h.runtime.script("b", &[Script::Hang]);
    let spec = json!({
        "initContainers": [{ "name": "i1", "image": "r/i:1" }, { "name": "i2", "image": "r/i:1" }],
        "containers": [{ "name": "a", "image": "r/a:1" }, { "name": "b", "image": "r/a:1" }]
    });
    let _w = h.start(pod(spec), None);
    eventually(Duration::from_secs(120), "both app containers", || {
        h.runtime.starts("a").len() == 1 && h.runtime.starts("b").len() == 1
    })
    .await;
    let (i1, i2, a) = (
        h.runtime.starts("i1")[0],
        h.runtime.starts("i2")[0],
        h.runtime.starts("a")[0],
    );
    assert_about(&[i2 - i1, a - i2], &[5, 5]);
    // Pending (PodInitializing) while the init containers run.
    let statuses = h.api.statuses();
    let first = statuses.first().expect("a status");
    assert_eq!(phase(first), "Pending");
    assert_eq!(waiting_reason(first, "a"), "PodInitializing");
    eventually(Duration::from_secs(60), "Running", || {
        phase(&h.api.last_status()) == "Running"
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_init_container_fails_a_pod_that_never_restarts() {
    let h = Harness::new();
    h.runtime.script("i", &[Script::Exit(SEC, 3)]);
    let spec = json!({
        "restartPolicy": "Never",
        "initContainers": [{ "name": "i", "image": "r/i:1" }],
        "containers": [{ "name": "a", "image": "r/a:1" }]
    });
    let _w = h.start(pod(spec), None);
    phase_reported(&h, 120, "Failed").await;
    let last = h.api.last_status();
    assert_eq!(container(&last, "i")["state"]["terminated"]["exitCode"], 3);
    assert!(h.runtime.starts("a").is_empty());
    assert_eq!(h.runtime.starts("i").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_init_container_is_retried_under_on_failure() {
    let h = Harness::new();
    h.runtime.script(
        "i",
        &[
            Script::Exit(SEC, 1),
            Script::Exit(SEC, 1),
            Script::Exit(SEC, 0),
        ],
    );
    h.runtime.script("a", &[Script::Exit(SEC, 0)]);
    let spec = json!({
        "restartPolicy": "OnFailure",
        "initContainers": [{ "name": "i", "image": "r/i:1" }],
        "containers": [{ "name": "a", "image": "r/a:1" }]
    });
    let _w = h.start(pod(spec), None);
    h.api
        .until(Duration::from_secs(300), "Succeeded", |w| {
            w.statuses
                .last()
                .is_some_and(|(_, s)| phase(s) == "Succeeded")
        })
        .await;
    // Runs of a second each: at once, then after 10 s of back-off.
    assert_about(&gaps(&h.runtime.starts("i")), &[1, 11]);
    assert_eq!(h.runtime.starts("a").len(), 1);
    assert_eq!(container(&h.api.last_status(), "i")["restartCount"], 2);
}

#[tokio::test(start_paused = true)]
async fn a_sidecar_starts_before_the_app_containers_and_stops_after_them() {
    let h = Harness::new();
    h.runtime.script("s", &[Script::Hang]);
    h.runtime.script("a", &[Script::Exit(5 * SEC, 0)]);
    let spec = json!({
        "restartPolicy": "Never",
        "initContainers": [{ "name": "s", "image": "r/s:1", "restartPolicy": "Always" }],
        "containers": [{ "name": "a", "image": "r/a:1" }]
    });
    let _w = h.start(pod(spec), None);
    h.api
        .until(Duration::from_secs(120), "Succeeded", |w| {
            w.statuses
                .last()
                .is_some_and(|(_, s)| phase(s) == "Succeeded")
        })
        .await;
    let did: Vec<Did> = h.runtime.did().into_iter().map(|(_, d)| d).collect();
    let at = |d: Did| did.iter().position(|x| *x == d).expect("happened");
    assert!(at(Did::Started("s".into())) < at(Did::Started("a".into())));
    assert!(at(Did::Exited("a".into())) < at(Did::Killed("s".into())));
    // While the app ran, the pod was Running with the sidecar running beside it.
    assert!(
        h.api
            .statuses()
            .iter()
            .any(|s| phase(s) == "Running" && container(s, "s")["state"]["running"].is_object())
    );
}

#[tokio::test(start_paused = true)]
async fn restart_policies_decide_what_runs_again() {
    // (policy, exit codes of the runs, runs expected, final phase or None for Running)
    let cases: [(&str, &[i32], usize, Option<&str>); 5] = [
        ("Never", &[1], 1, Some("Failed")),
        ("Never", &[0], 1, Some("Succeeded")),
        ("OnFailure", &[1, 0], 2, Some("Succeeded")),
        ("OnFailure", &[2, 2, 0], 3, Some("Succeeded")),
        ("Always", &[0], 3, None),
    ];
    for (policy, codes, runs, end) in cases {
        let h = Harness::new();
        let scripts: Vec<Script> = codes.iter().map(|c| Script::Exit(SEC, *c)).collect();
        h.runtime.script("c", &scripts);
        let _w = h.start(pod(one("c", policy)), None);
        let what = format!("{policy} {codes:?}");
        match end {
            Some(end) => {
                phase_reported(&h, 600, end).await;
                // Nothing runs after the pod finished.
                tokio::time::sleep(Duration::from_secs(600)).await;
            }
            None => {
                eventually(Duration::from_secs(600), &what, || {
                    h.runtime.starts("c").len() >= runs
                })
                .await;
                assert_eq!(phase(&h.api.last_status()), "Running", "{what}");
            }
        }
        assert_eq!(h.runtime.starts("c").len().min(runs), runs, "{what}");
        if end.is_some() {
            assert_eq!(h.runtime.starts("c").len(), runs, "{what}");
        }
    }
}

/// A pod as the node reported it before the agent restarted: container `c` running,
/// restarted twice.
fn reported(policy: &str) -> k8s_openapi::api::core::v1::Pod {
    let mut p = pod(one("c", policy));
    p.status = serde_json::from_value(json!({
        "phase": "Running",
        "startTime": "2026-11-27T10:00:00Z",
        "containerStatuses": [{ "name": "c", "image": "r/img:1", "imageID": "r/img@sha256:1",
            "ready": true, "restartCount": 2, "containerID": "wasmtime://uid-p-c-2",
            "state": { "running": { "startedAt": "2026-11-27T10:00:00Z" } } }]
    }))
    .expect("status");
    p
}

#[tokio::test(start_paused = true)]
async fn an_adopted_pod_runs_again_by_its_policy_and_counts_on() {
    let h = Harness::new();
    h.runtime.script("c", &[Script::Hang]);
    let _w = h.start(reported("Always"), None);
    started(&h, 60).await;
    h.api
        .until(Duration::from_secs(60), "running again", |w| {
            w.statuses
                .last()
                .is_some_and(|(_, s)| container(s, "c")["state"]["running"].is_object())
        })
        .await;
    let c = container(&h.api.last_status(), "c").clone();
    assert_eq!(c["restartCount"], 3);
    assert_eq!(
        c["lastState"]["terminated"]["reason"],
        "ContainerStatusUnknown"
    );
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 137);

    let h = Harness::new();
    let _w = h.start(reported("Never"), None);
    phase_reported(&h, 60, "Failed").await;
    assert!(h.runtime.starts("c").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_pod_deleted_during_its_pull_never_starts_and_is_removed() {
    let h = Harness::new();
    h.runtime.pulls("r/img:1", &[Pull::Hangs]);
    let w = h.start(pod(one("c", "Always")), None);
    eventually(Duration::from_secs(60), "pulling", || {
        h.runtime
            .did()
            .iter()
            .any(|(_, d)| matches!(d, Did::Pulled(_)))
    })
    .await;
    w.delete();
    deleted(&h, 60).await;
    assert!(h.runtime.starts("c").is_empty());
    let reasons = h.api.reasons();
    assert!(!reasons.contains(&"Pulled".to_owned()), "{reasons:?}");
    ended(w.task).await;
}

#[tokio::test(start_paused = true)]
async fn a_pod_deleted_during_a_start_that_never_ends_is_removed() {
    let h = Harness::new();
    h.runtime.script("c", &[Script::StartHangs]);
    let w = h.start(pod(one("c", "Always")), None);
    tokio::time::sleep(Duration::from_secs(30)).await;
    w.delete();
    deleted(&h, 60).await;
    assert!(!h.api.reasons().contains(&"Started".to_owned()));
    ended(w.task).await;
}

#[tokio::test(start_paused = true)]
async fn a_running_pod_deleted_is_killed_reported_and_removed() {
    let h = Harness::new();
    h.runtime.script("c", &[Script::Hang]);
    let w = h.start(pod(one("c", "Always")), None);
    started(&h, 60).await;
    w.delete();
    deleted(&h, 60).await;
    assert!(
        h.runtime
            .did()
            .iter()
            .any(|(_, d)| *d == Did::Killed("c".to_owned()))
    );
    let killing = h.api.events("Killing");
    assert_eq!(killing.len(), 1);
    assert_eq!(killing[0].message, "Stopping container c");
    assert_eq!(killing[0].field_path, "spec.containers{c}");
    // The final status, written before the deletion: the run ended, not restarted, and
    // the pod is terminal (the kubelet's rule for deleted pods, restart policy or not).
    let last = h.api.last_status();
    assert_eq!(
        container(&last, "c")["state"]["terminated"]["exitCode"],
        137
    );
    assert_eq!(phase(&last), "Failed");
    assert_eq!(h.runtime.starts("c").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_pod_deleted_while_the_agent_was_away_is_reported_failed_and_deleted_never_run() {
    // As a node back from being unreachable finds a pod the taint manager evicted: it
    // ran here, then the agent died (no goodbye) and the pod was deleted meanwhile.
    let h = Harness::new();
    h.runtime.script("c", &[Script::Hang]);
    h.runtime
        .left
        .lock()
        .expect("lock")
        .push("uid-p".to_owned());
    let mut evicted = reported("Always");
    evicted.metadata.deletion_timestamp = Some(crate::now());
    let w = h.start(evicted, None);
    deleted(&h, 60).await;
    ended(w.task).await;
    assert!(h.runtime.starts("c").is_empty(), "it ran again");
    let statuses = h.api.statuses();
    assert_eq!(statuses.len(), 1, "{statuses:?}");
    let last = &statuses[0];
    assert_eq!(phase(last), "Failed");
    let c = container(last, "c");
    assert_eq!(c["state"]["terminated"]["reason"], "ContainerStatusUnknown");
    assert_eq!(c["state"]["terminated"]["exitCode"], 137);
    assert_eq!(c["restartCount"], 2);
    assert_eq!(c["ready"], false);
    // The sandbox the earlier agent left is taken down.
    assert!(
        h.runtime
            .did()
            .iter()
            .any(|(_, d)| *d == Did::SandboxDown("uid-p".into()))
    );
    assert!(h.runtime.left.lock().expect("lock").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_deleted_pod_whose_containers_all_exited_zero_ends_succeeded() {
    let h = Harness::new();
    let mut done = reported("Always");
    if let Some(s) = done.status.as_mut() {
        s.container_statuses = serde_json::from_value(json!([{
            "name": "c", "image": "r/img:1", "imageID": "r/img@sha256:1", "ready": false,
            "restartCount": 0, "state": { "terminated": { "exitCode": 0, "reason": "Completed" } }
        }]))
        .expect("statuses");
    }
    done.metadata.deletion_timestamp = Some(crate::now());
    let w = h.start(done, None);
    deleted(&h, 60).await;
    ended(w.task).await;
    assert_eq!(phase(&h.api.last_status()), "Succeeded");
    assert!(h.runtime.starts("c").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_start_that_fails_waits_as_create_container_error_and_is_tried_again() {
    let h = Harness::new();
    h.runtime
        .script("c", &[Script::StartFails, Script::StartFails, Script::Hang]);
    let _w = h.start(pod(one("c", "Always")), None);
    started(&h, 60).await;
    assert!(
        h.api
            .statuses()
            .iter()
            .any(|s| waiting_reason(s, "c") == "CreateContainerError")
    );
    // The sync retry: 1 s, then 2 s.
    let started = h.runtime.starts("c")[0];
    let first = h.api.with(|w| w.statuses.first().map(|(at, _)| *at));
    let waited = first.map(|at| started - at).unwrap_or_default();
    assert!(waited >= 3 * SEC && waited <= 4 * SEC, "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_rejected_pod_fails_with_the_reason_and_never_runs() {
    let h = Harness::new();
    let misfit = Some(super::admission::Rejection::new(
        "OutOfpods",
        "Node didn't have enough resource: pods",
    ));
    let _w = h.start(pod(one("c", "Always")), misfit);
    phase_reported(&h, 60, "Failed").await;
    let last = h.api.last_status();
    assert_eq!(last["reason"], "OutOfpods");
    assert_eq!(
        last["message"],
        "Pod was rejected: Node didn't have enough resource: pods"
    );
    assert_eq!(h.api.events("OutOfpods").len(), 1);
    assert!(h.runtime.starts("c").is_empty());
}

#[tokio::test(start_paused = true)]
async fn statuses_reached_while_the_api_server_is_away_land_when_it_is_back() {
    let h = Harness::new();
    h.runtime.script("c", &[Script::Exit(20 * SEC, 0)]);
    let _w = h.start(pod(one("c", "Never")), None);
    started(&h, 60).await;
    h.api.down.store(true, std::sync::atomic::Ordering::Relaxed);
    eventually(Duration::from_secs(60), "exited", || {
        h.runtime
            .did()
            .iter()
            .any(|(_, d)| *d == Did::Exited("c".to_owned()))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_ne!(phase(&h.api.last_status()), "Succeeded");
    h.api
        .down
        .store(false, std::sync::atomic::Ordering::Relaxed);
    // The writer's back-off is at most 10 s.
    h.api
        .until(Duration::from_secs(11), "Succeeded", |w| {
            w.statuses
                .last()
                .is_some_and(|(_, s)| phase(s) == "Succeeded")
        })
        .await;
}

#[tokio::test(start_paused = true)]
async fn an_evicted_pod_fails_as_evicted_once_its_containers_are_killed() {
    let h = Harness::new();
    h.runtime.script("c", &[Script::Hang]);
    let w = h.start(pod(one("c", "Always")), None);
    started(&h, 60).await;
    let message = "The node was low on resource: ephemeral-storage. ";
    w.fail
        .send_replace(Some(super::worker::Failure::Evicted(message.to_owned())));
    phase_reported(&h, 60, "Failed").await;
    let last = h.api.last_status();
    assert_eq!(
        (&last["reason"], &last["message"]),
        (&json!("Evicted"), &json!(message))
    );
    let evicted = h.api.events("Evicted");
    assert_eq!(evicted.len(), 1);
    assert_eq!(evicted[0].type_, "Warning");
    // The status is written after the kill, never before.
    let killed_at = h
        .runtime
        .did()
        .into_iter()
        .find(|(_, d)| *d == Did::Killed("c".to_owned()))
        .map(|(at, _)| at)
        .expect("killed");
    assert!(
        h.api
            .with(|w| w.statuses.last().is_some_and(|(at, _)| *at >= killed_at))
    );
    assert!(evicted[0].at <= killed_at);
}

#[tokio::test(start_paused = true)]
async fn a_graceful_node_shutdown_fails_the_pod_as_the_kubelet_does_and_says_when_done() {
    let h = Harness::new();
    h.runtime.script("c", &[Script::Hang]);
    let mut w = h.start(pod(one("c", "Always")), None);
    started(&h, 60).await;
    assert!(!*w.done.borrow());
    w.fail
        .send_replace(Some(super::worker::Failure::NodeShutdown {
            grace: Duration::from_secs(5),
        }));
    tokio::time::timeout(Duration::from_secs(60), w.done.wait_for(|d| *d))
        .await
        .expect("done within the bound")
        .expect("worker alive");
    // Done means the final status was written, not merely asked for.
    let last = h.api.last_status();
    assert_eq!(last["phase"], json!("Failed"));
    assert_eq!(last["reason"], json!(crate::shutdown::REASON));
    assert_eq!(last["message"], json!(crate::shutdown::MESSAGE));
    let disruption = last["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "DisruptionTarget"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (
            &disruption["status"],
            &disruption["reason"],
            &disruption["message"]
        ),
        (
            &json!("True"),
            &json!("TerminationByKubelet"),
            &json!(crate::shutdown::MESSAGE)
        )
    );
    assert!(
        h.runtime
            .did()
            .iter()
            .any(|(_, d)| *d == Did::Killed("c".to_owned()))
    );
    // Each container's Killing says it; the shutdown has no Warning of its own.
    assert!(h.api.events("Terminated").is_empty());
    assert_eq!(h.api.events("Killing").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_node_shutdown_stops_the_worker_and_its_containers_without_a_report() {
    let h = Harness::new();
    h.runtime.script("c", &[Script::Hang]);
    let w = h.start(pod(one("c", "Always")), None);
    started(&h, 60).await;
    // Every status asked for so far written first (the writer runs on its own), so
    // that any later write is the shutdown's.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let written = h.api.with(|w| w.statuses.len());
    w.stop.cancel();
    ended(w.task).await;
    assert!(
        h.runtime
            .did()
            .iter()
            .any(|(_, d)| *d == Did::Killed("c".to_owned()))
    );
    // Nothing reported: the pod runs on in the API until another agent decides.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(h.api.with(|w| w.statuses.len()), written);
    assert!(h.api.with(|w| w.deleted.is_empty()));
}

#[tokio::test(start_paused = true)]
async fn a_missing_config_map_holds_the_container_until_it_appears() {
    let h = Harness::new();
    h.runtime.script("c", &[Script::Hang]);
    let spec = json!({ "containers": [{ "name": "c", "image": "r/img:1", "env": [{
        "name": "GREETING",
        "valueFrom": { "configMapKeyRef": { "name": "settings", "key": "greeting" } }
    }] }] });
    let _w = h.start(pod(spec), None);
    h.api
        .until(Duration::from_secs(60), "CreateContainerConfigError", |w| {
            w.statuses
                .last()
                .is_some_and(|(_, s)| waiting_reason(s, "c") == "CreateContainerConfigError")
        })
        .await;
    let last = h.api.last_status();
    assert_eq!(
        container(&last, "c")["state"]["waiting"]["message"],
        "configmap \"settings\" not found"
    );
    assert!(h.runtime.starts("c").is_empty());
    h.api.put_config_map(
        serde_json::from_value(json!({
            "metadata": { "name": "settings", "namespace": "default" },
            "data": { "greeting": "hello" }
        }))
        .expect("config map"),
    );
    // Tried again at the sync retry: at most 10 s apart.
    started(&h, 11).await;
}

#[tokio::test(start_paused = true)]
async fn a_trap_ends_the_run_with_its_reason_and_message() {
    let h = Harness::new();
    h.runtime.script("c", &[Script::Trap(SEC)]);
    let _w = h.start(pod(one("c", "Never")), None);
    phase_reported(&h, 60, "Failed").await;
    let t = container(&h.api.last_status(), "c")["state"]["terminated"].clone();
    assert_eq!(t["reason"], "TrapUnreachableCodeReached");
    assert_eq!(t["exitCode"], 134);
    assert_eq!(
        t["message"],
        "wasm trap: wasm `unreachable` instruction executed"
    );
}

const PRIVATE: &str = "registry.test:5000/team/img:1";

fn credential(username: &str) -> crate::keyring::Credential {
    crate::keyring::Credential {
        username: username.to_owned(),
        password: "secret".to_owned(),
    }
}

/// A pod running [`PRIVATE`] with a pull secret holding `username`'s credential.
fn private_pod(h: &Harness, username: &str) -> k8s_openapi::api::core::v1::Pod {
    use base64::Engine as _;
    let config = json!({ "auths": { "registry.test:5000": {
        "username": username, "password": "secret"
    } } });
    let encoded = base64::engine::general_purpose::STANDARD.encode(config.to_string());
    h.api.put_secret(
        serde_json::from_value(json!({
            "metadata": { "name": "pull", "namespace": "default" },
            "type": "kubernetes.io/dockerconfigjson",
            "data": { ".dockerconfigjson": encoded }
        }))
        .expect("secret"),
    );
    pod(json!({
        "imagePullSecrets": [{ "name": "pull" }],
        "containers": [{ "name": "c", "image": PRIVATE }]
    }))
}

fn pulls(h: &Harness) -> usize {
    h.runtime
        .did()
        .iter()
        .filter(|(_, d)| matches!(d, Did::Pulled(_)))
        .count()
}

#[tokio::test(start_paused = true)]
async fn a_private_image_on_the_node_is_used_only_by_a_pod_with_a_credential_that_pulled_it() {
    // Pulled before with alice's credential: alice's pod uses it as it is.
    let h = Harness::new();
    h.runtime.hold(PRIVATE, Some(&credential("alice")));
    h.runtime.script("c", &[Script::Hang]);
    let _w = h.start(private_pod(&h, "alice"), None);
    started(&h, 60).await;
    assert_eq!(pulls(&h), 0);
    let pulled = h.api.events("Pulled");
    assert!(pulled[0].message.contains("already present on machine"));

    // Bob's pod, and a pod with no credential at all, pull again: the registry decides.
    for bob in [true, false] {
        let h = Harness::new();
        h.runtime.hold(PRIVATE, Some(&credential("alice")));
        h.runtime.script("c", &[Script::Hang]);
        let p = if bob {
            private_pod(&h, "bob")
        } else {
            pod(json!({ "containers": [{ "name": "c", "image": PRIVATE }] }))
        };
        let _w = h.start(p, None);
        started(&h, 60).await;
        assert_eq!(pulls(&h), 1, "bob: {bob}");
    }

    // A public image (pulled anonymously) is everyone's.
    let h = Harness::new();
    h.runtime.hold(PRIVATE, None);
    h.runtime.script("c", &[Script::Hang]);
    let _w = h.start(
        pod(json!({ "containers": [{ "name": "c", "image": PRIVATE }] })),
        None,
    );
    started(&h, 60).await;
    assert_eq!(pulls(&h), 0);
}

#[tokio::test(start_paused = true)]
async fn a_pod_never_pulling_an_image_it_may_not_use_waits_as_err_image_never_pull() {
    let h = Harness::new();
    h.runtime.hold(PRIVATE, Some(&credential("alice")));
    let p = pod(json!({ "containers": [{
        "name": "c", "image": PRIVATE, "imagePullPolicy": "Never"
    }] }));
    let _w = h.start(p, None);
    h.api
        .until(Duration::from_secs(60), "ErrImageNeverPull", |w| {
            w.statuses
                .last()
                .is_some_and(|(_, s)| waiting_reason(s, "c") == "ErrImageNeverPull")
        })
        .await;
    assert_eq!(pulls(&h), 0);
}

#[tokio::test(start_paused = true)]
async fn the_sandbox_gets_the_pods_dns_and_names_and_a_cut_is_an_event() {
    let h = Harness::new();
    h.runtime.script("c", &[Script::Exit(SEC, 0)]);
    let mut spec = one("c", "Never");
    spec["hostname"] = json!("db-0");
    spec["subdomain"] = json!("dbs");
    spec["dnsConfig"] = json!({
        "nameservers": ["192.0.2.1", "192.0.2.2", "192.0.2.3"],
        "searches": ["extra.example"]
    });
    spec["hostAliases"] = json!([{ "ip": "192.0.2.9", "hostnames": ["legacy"] }]);
    let _w = h.start(pod(spec), None);
    h.api
        .until(Duration::from_secs(120), "Succeeded", |w| {
            w.statuses
                .last()
                .is_some_and(|(_, s)| phase(s) == "Succeeded")
        })
        .await;
    let made = h.runtime.sandboxes.lock().expect("lock").clone();
    let [sandbox] = made.as_slice() else {
        panic!("{made:?}")
    };
    // The harness's node: --cluster-dns 10.0.0.10, --cluster-domain cluster.local.
    assert_eq!(sandbox.dns.servers, ["10.0.0.10", "192.0.2.1", "192.0.2.2"]);
    assert_eq!(
        sandbox.dns.searches,
        [
            "default.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
            "extra.example"
        ]
    );
    assert_eq!(sandbox.dns.options, ["ndots:5"]);
    assert_eq!(
        (sandbox.hostname.as_str(), sandbox.host_domain.as_str()),
        ("db-0", "dbs.default.svc.cluster.local")
    );
    assert_eq!(
        sandbox.host_aliases,
        [("192.0.2.9".to_string(), vec!["legacy".to_string()])]
    );
    let cut = h.api.events("DNSConfigForming");
    assert_eq!(cut.len(), 1, "{cut:?}");
    assert_eq!(
        cut[0].message,
        "Nameserver limits were exceeded, some nameservers have been omitted, the applied \
         nameserver line is: 10.0.0.10 192.0.2.1 192.0.2.2"
    );
}

#[tokio::test(start_paused = true)]
async fn the_sandbox_comes_before_the_containers_and_goes_after_them() {
    let h = Harness::new();
    h.runtime
        .sandbox_failures
        .store(2, std::sync::atomic::Ordering::Relaxed);
    h.runtime.script("c", &[Script::Exit(SEC, 0)]);
    let _w = h.start(pod(one("c", "Never")), None);
    h.api
        .until(Duration::from_secs(120), "Succeeded", |w| {
            w.statuses
                .last()
                .is_some_and(|(_, s)| phase(s) == "Succeeded")
        })
        .await;
    eventually(Duration::from_secs(10), "the sandbox removed", || {
        h.runtime
            .did()
            .iter()
            .any(|(_, d)| *d == Did::SandboxDown("uid-p".into()))
    })
    .await;
    let did: Vec<Did> = h.runtime.did().into_iter().map(|(_, d)| d).collect();
    let at = |d: Did| did.iter().position(|x| *x == d).expect("happened");
    assert!(at(Did::SandboxUp("uid-p".into())) < at(Did::Started("c".into())));
    assert!(at(Did::Exited("c".into())) < at(Did::SandboxDown("uid-p".into())));
    // Two failures, each a FailedCreatePodSandBox event, retried.
    let failed = h.api.events("FailedCreatePodSandBox");
    assert_eq!(failed.len(), 2);
    assert_eq!(
        failed[0].message,
        "Failed to create pod sandbox: scripted failure"
    );
    // The runtime's container ID is the one reported.
    let last = h.api.last_status();
    assert_eq!(
        container(&last, "c")["containerID"],
        "fake://sandbox-uid-p-c-0"
    );
}

#[tokio::test(start_paused = true)]
async fn a_running_container_is_accounted_with_its_cpu_resources_until_it_ends() {
    let h = Harness::new();
    h.runtime
        .script("c", &[Script::Exit(Duration::from_secs(30), 0)]);
    let spec = json!({ "restartPolicy": "Never", "containers": [{
        "name": "c", "image": "r/img:1",
        "resources": { "limits": { "cpu": "250m" }, "requests": { "cpu": "100m" } },
    }] });
    let _w = h.start(pod(spec), None);
    started(&h, 60).await;
    assert_eq!(
        h.runtime.cpu_of("c"),
        Some(crate::runtime::CpuResources {
            limit_millis: Some(250),
            request_millis: Some(100),
        })
    );
    eventually(Duration::from_secs(10), "c accounted", || {
        h.ctx.stats.samples().len() == 1
    })
    .await;
    let sample = &h.ctx.stats.samples()[0];
    assert_eq!(
        (
            sample.running.namespace.as_str(),
            sample.running.pod.as_str(),
            sample.running.container.as_str()
        ),
        ("default", "p", "c")
    );
    assert_eq!(sample.usage.memory_working_set, 65536);
    phase_reported(&h, 120, "Succeeded").await;
    assert!(
        h.ctx.stats.samples().is_empty(),
        "an ended run is no longer reported"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cpu_quantity_that_does_not_parse_is_a_config_error_not_an_unlimited_run() {
    let h = Harness::new();
    let spec = json!({ "restartPolicy": "Never", "containers": [{
        "name": "c", "image": "r/img:1",
        "resources": { "limits": { "cpu": "lots" } },
    }] });
    let _w = h.start(pod(spec), None);
    h.api
        .until(Duration::from_secs(60), "config error", |w| {
            w.statuses
                .last()
                .is_some_and(|(_, s)| waiting_reason(s, "c") == "CreateContainerConfigError")
        })
        .await;
    assert!(h.runtime.starts("c").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_pod_without_a_network_of_its_own_has_no_address_and_a_host_network_pod_the_nodes() {
    // The fake runtime's sandboxes have no address: a node without a pod network.
    for (host_network, want) in [(false, None), (true, Some("10.0.0.7"))] {
        let h = Harness::new();
        h.runtime.script("c", &[Script::Hang]);
        let mut spec = one("c", "Always");
        spec["hostNetwork"] = json!(host_network);
        let _w = h.start(pod(spec), None);
        phase_reported(&h, 60, "Running").await;
        let statuses = h.api.statuses();
        let last = statuses.last().expect("a status");
        assert_eq!(last["podIP"].as_str(), want, "hostNetwork: {host_network}");
        let ips = last["podIPs"].as_array().map(Vec::len).unwrap_or_default();
        assert_eq!(
            ips,
            usize::from(want.is_some()),
            "hostNetwork: {host_network}"
        );
    }
}
