//! The order a pod's containers run in: init containers one at a time (sidecars, those
//! with `restartPolicy: Always`, started and left running), then every app container at
//! once; when the app containers are done, the sidecars are stopped.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use super::container::{Shared, Slot, supervise};
use super::record::{ContainerRecord, Reason, Records, State, Terminated};
use super::spec::{RestartPolicy, is_sidecar, restart_policy};
use crate::events::EventType;
use kube::Resource;

/// Fresh records for every container of `pod`. As with the kubelet, a container that
/// has not been created yet waits as `ContainerCreating`, or `PodInitializing` when the
/// pod has init containers.
pub(crate) fn records(pod: &Pod) -> Records {
    let spec = pod.spec.clone().unwrap_or_default();
    let mut records = Records {
        init: spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| {
                ContainerRecord::new_init(
                    &c.name,
                    c.image.as_deref().unwrap_or_default(),
                    is_sidecar(c),
                )
            })
            .collect(),
        app: spec
            .containers
            .iter()
            .map(|c| ContainerRecord::new(&c.name, c.image.as_deref().unwrap_or_default()))
            .collect(),
    };
    if !records.init.is_empty() {
        for r in records.init.iter_mut().chain(records.app.iter_mut()) {
            r.state = State::waiting(Reason::PodInitializing);
        }
    }
    records
}

/// The records of a pod this node ran before the node agent restarted, from the status
/// it reported then. The modules ran inside the old agent and stopped with it: a run
/// that was going is `terminated` with exit code 137 and reason
/// `ContainerStatusUnknown` (as the kubelet reports a container it can no longer find),
/// restart counts carry on, and each container's restart policy then decides, as after
/// any exit, whether it runs again; init containers that had succeeded do not.
pub(crate) fn adopted(pod: &Pod) -> Records {
    let mut records = records(pod);
    let Some(status) = pod.status.as_ref() else {
        return records;
    };
    let lists = [
        (&mut records.init, status.init_container_statuses.as_ref()),
        (&mut records.app, status.container_statuses.as_ref()),
    ];
    for (list, reported) in lists {
        for r in list.iter_mut() {
            let Some(s) = reported.into_iter().flatten().find(|s| s.name == r.name) else {
                continue;
            };
            let state = s.state.clone().unwrap_or_default();
            let last = if let Some(running) = state.running {
                Terminated {
                    exit_code: 137,
                    reason: Some("ContainerStatusUnknown".to_owned()),
                    message: Some(
                        "The node agent restarted; the module stopped with it".to_owned(),
                    ),
                    started_at: running.started_at,
                    finished_at: Some(crate::now()),
                    container_id: s.container_id.clone(),
                }
            } else if let Some(t) = state.terminated {
                Terminated::from_api(t)
            } else if let Some(t) = s.last_state.as_ref().and_then(|l| l.terminated.clone()) {
                // Waiting to restart (crash-loop back-off) when the agent stopped.
                Terminated::from_api(t)
            } else {
                continue;
            };
            r.state = State::Terminated(last);
            r.restart_count = s.restart_count;
            r.container_id.clone_from(&s.container_id);
            r.image_id.clone_from(&s.image_id);
        }
    }
    records
}

/// Runs the containers of `pod` in order until they are all done or `kill` fires: its
/// volumes first, then its sandbox, then the containers; the sandbox goes once every
/// container has stopped.
pub(crate) async fn drive(
    ctx: Arc<Ctx>,
    pod: Arc<Pod>,
    shared: Arc<Shared>,
    kill: CancellationToken,
) {
    if !mount_volumes(&ctx, &pod, &shared, &kill).await {
        return;
    }
    let Some(sandbox) = run_sandbox(&ctx, &pod, &kill).await else {
        return;
    };
    let _ = shared.sandbox.set(sandbox.clone());
    let (namespace, name) = (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    ctx.sandboxes.set(
        &namespace,
        &name,
        crate::sandboxes::PodSandbox {
            uid: uid.clone(),
            id: sandbox.id.clone(),
        },
    );
    run_containers(&ctx, &pod, &shared, &kill).await;
    ctx.sandboxes.forget(&namespace, &name, &uid);
    if !ctx.stopping.is_cancelled() {
        ctx.runtime.remove_pod_sandbox(&sandbox.id).await;
    }
}

/// Sets up the pod's sandbox, retrying with back-off (each failure a
/// `FailedCreatePodSandBox` event, as the kubelet's) until it is or `kill` fires.
async fn run_sandbox(
    ctx: &Ctx,
    pod: &Pod,
    kill: &CancellationToken,
) -> Option<crate::runtime::Sandbox> {
    let spec = pod.spec.clone().unwrap_or_default();
    let port_mappings: Vec<_> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            Some(crate::runtime::PortMapping {
                host_port: u16::try_from(p.host_port?).ok().filter(|p| *p > 0)?,
                container_port: u16::try_from(p.container_port).ok()?,
                protocol: p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                host_ip: p.host_ip.clone().filter(|ip| !ip.is_empty()),
            })
        })
        .collect();
    let mut backoff = MOUNT_BACKOFF;
    loop {
        let attempt = match sandbox_config(ctx, pod, &port_mappings).await {
            Ok(config) => tokio::select! {
                () = kill.cancelled() => return None,
                r = ctx.runtime.run_pod_sandbox(config) => r,
            },
            Err(e) => Err(e),
        };
        match attempt {
            Ok(sandbox) => return Some(sandbox),
            Err(e) => {
                let note = format!("Failed to create pod sandbox: {e}");
                ctx.recorder
                    .record(
                        &pod.object_ref(&()),
                        EventType::Warning,
                        "FailedCreatePodSandBox",
                        &note,
                    )
                    .await;
                tokio::select! {
                    () = kill.cancelled() => return None,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_MOUNT_BACKOFF);
            }
        }
    }
}

/// The pod's sandbox as the runtime is asked for it, its DNS composed as the kubelet's
/// (the node's resolver file read again each time, as the kubelet reads it); composing
/// it may call for events (`DNSConfigForming`, `MissingClusterDNS`), recorded here.
async fn sandbox_config(
    ctx: &Ctx,
    pod: &Pod,
    port_mappings: &[crate::runtime::PortMapping],
) -> Result<crate::runtime::SandboxConfig, String> {
    use crate::pods::dns;
    let settings = ctx.config.dns.clone();
    let file = settings.resolv_conf.clone();
    let host = crate::blocking::run(move || dns::host_config(file.as_deref()))
        .await
        .and_then(|read| read)
        .map_err(|e| format!("reading the node's DNS configuration: {e}"))?;
    let (hostname, host_domain) = dns::hostname_and_domain(pod, &settings.cluster_domain)?;
    let (config, warnings) = dns::pod_dns(&settings, host, pod, &[ctx.config.node_ip]);
    for w in warnings {
        if let Some(on_node) = &w.also_on_node {
            let node = crate::node::reference(&ctx.config.node_name);
            ctx.recorder
                .record(&node, EventType::Warning, w.reason, on_node)
                .await;
        }
        ctx.recorder
            .record(
                &pod.object_ref(&()),
                EventType::Warning,
                w.reason,
                &w.message,
            )
            .await;
    }
    Ok(crate::runtime::SandboxConfig {
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        attempt: 0,
        host_network: crate::pods::spec::host_network(pod),
        port_mappings: port_mappings.to_vec(),
        dns: config,
        hostname,
        host_domain,
        host_aliases: dns::host_aliases(pod),
    })
}

/// The init containers in order, then the app containers, then the sidecars stopped.
async fn run_containers(
    ctx: &Arc<Ctx>,
    pod: &Arc<Pod>,
    shared: &Arc<Shared>,
    kill: &CancellationToken,
) {
    let spec = pod.spec.clone().unwrap_or_default();
    let restart_policy = restart_policy(pod);
    let init_policy = restart_policy.for_init_containers();
    let sidecar_kill = kill.child_token();
    let mut sidecars = JoinSet::new();
    for (index, c) in spec.init_containers.iter().flatten().enumerate() {
        let slot = Slot { init: true, index };
        if is_sidecar(c) {
            sidecars.spawn(supervise(
                ctx.clone(),
                pod.clone(),
                slot,
                c.clone(),
                RestartPolicy::Always,
                shared.clone(),
                sidecar_kill.clone(),
            ));
            if !wait_started(shared, slot, kill).await {
                break;
            }
            continue;
        }
        supervise(
            ctx.clone(),
            pod.clone(),
            slot,
            c.clone(),
            init_policy,
            shared.clone(),
            kill.clone(),
        )
        .await;
        if kill.is_cancelled() || !shared.get(slot).is_some_and(|r| r.succeeded()) {
            sidecar_kill.cancel();
            while sidecars.join_next().await.is_some() {}
            return;
        }
    }
    let mut apps = JoinSet::new();
    if !kill.is_cancelled() {
        for (index, c) in spec.containers.iter().enumerate() {
            let slot = Slot { init: false, index };
            apps.spawn(supervise(
                ctx.clone(),
                pod.clone(),
                slot,
                c.clone(),
                restart_policy,
                shared.clone(),
                kill.clone(),
            ));
        }
    }
    while apps.join_next().await.is_some() {}
    sidecar_kill.cancel();
    while sidecars.join_next().await.is_some() {}
}

/// Sets up the pod's volumes, retrying with back-off (each failure a `FailedMount`
/// event, the containers still `ContainerCreating`) until they are or `kill` fires;
/// false when killed.
async fn mount_volumes(ctx: &Ctx, pod: &Pod, shared: &Shared, kill: &CancellationToken) -> bool {
    let mut backoff = MOUNT_BACKOFF;
    loop {
        let context = ctx.volume_context(std::time::Duration::ZERO);
        let pod_dir = ctx.pod_dir(pod);
        let attempt = tokio::select! {
            () = kill.cancelled() => return false,
            r = crate::volumes::Volumes::set_up(&context, pod, &pod_dir) => r,
        };
        match attempt {
            Ok(volumes) => {
                let _ = shared.volumes.set(Arc::new(volumes));
                return true;
            }
            Err(e) => {
                let object = pod.object_ref(&());
                ctx.recorder
                    .record(&object, EventType::Warning, "FailedMount", &e.to_string())
                    .await;
                tokio::select! {
                    () = kill.cancelled() => return false,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_MOUNT_BACKOFF);
            }
        }
    }
}

/// The volume manager's retry: from half a second, doubling to about two minutes.
const MOUNT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(500);
const MAX_MOUNT_BACKOFF: std::time::Duration = std::time::Duration::from_secs(122);

/// Waits until the sidecar in `slot` runs (or gave up); false when killed first.
async fn wait_started(shared: &Shared, slot: Slot, kill: &CancellationToken) -> bool {
    let mut changes = shared.changed.subscribe();
    loop {
        if shared.get(slot).is_some_and(|r| r.running() || r.done) {
            return true;
        }
        tokio::select! {
            () = kill.cancelled() => return false,
            r = changes.changed() => if r.is_err() { return false },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({ "metadata": { "name": "p" }, "spec": spec }))
            .expect("pod")
    }

    fn reasons(list: &[ContainerRecord]) -> Vec<String> {
        list.iter()
            .map(|r| match &r.state {
                State::Waiting { reason, .. } => reason.to_string(),
                _ => String::new(),
            })
            .collect()
    }

    #[test]
    fn a_pod_run_before_an_agent_restart_carries_its_runs_over() {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "p" },
            "spec": { "initContainers": [{ "name": "i" }], "containers": [{ "name": "a" }, { "name": "b" }] },
            "status": {
                "initContainerStatuses": [{ "name": "i", "image": "", "imageID": "x@sha256:1", "ready": false,
                    "restartCount": 0, "state": { "terminated": { "exitCode": 0 } } }],
                "containerStatuses": [
                    { "name": "a", "image": "", "imageID": "x@sha256:2", "ready": true, "restartCount": 2,
                      "state": { "running": { "startedAt": "2026-11-27T10:00:00Z" } } },
                    { "name": "b", "image": "", "imageID": "", "ready": false, "restartCount": 0,
                      "state": { "waiting": { "reason": "ContainerCreating" } } }
                ]
            }
        }))
        .expect("pod");
        let r = adopted(&p);
        assert!(r.init[0].succeeded());
        let a = r.app[0].state.terminated().cloned().expect("the lost run");
        assert_eq!(
            (a.exit_code, a.reason.as_deref()),
            (137, Some("ContainerStatusUnknown"))
        );
        assert_eq!(r.app[0].restart_count, 2);
        assert_eq!(r.app[0].image_id, "x@sha256:2");
        // Never started: nothing to carry over.
        assert_eq!(reasons(&r.app[1..]), ["PodInitializing"]);
    }

    #[test]
    fn containers_wait_as_the_kubelet_shows_them_before_they_exist() {
        let plain = records(&pod(serde_json::json!({ "containers": [{ "name": "a" }] })));
        assert_eq!(reasons(&plain.app), ["ContainerCreating"]);
        let with_init = records(&pod(serde_json::json!({
            "initContainers": [{ "name": "i" }, { "name": "s", "restartPolicy": "Always" }],
            "containers": [{ "name": "a" }]
        })));
        assert_eq!(
            reasons(&with_init.init),
            ["PodInitializing", "PodInitializing"]
        );
        assert_eq!(reasons(&with_init.app), ["PodInitializing"]);
        assert_eq!(
            with_init.init.iter().map(|r| r.sidecar).collect::<Vec<_>>(),
            [false, true]
        );
        assert_eq!(with_init.uninitialized(), ["i", "s"]);
    }
}
