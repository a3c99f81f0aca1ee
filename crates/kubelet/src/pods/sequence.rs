//! The order a pod's containers run in: init containers one at a time (sidecars, those
//! with `restartPolicy: Always`, started and left running), then every app container at
//! once; when the app containers are done, the sidecars are stopped.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use super::container::{Shared, Slot, supervise};
use super::spec::restart_policy;
use super::status::{self, ContainerRecord, Records};
use crate::Runtime;
use crate::events::EventType;
use kube::Resource;

fn is_sidecar(c: &k8s_openapi::api::core::v1::Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

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
            r.state = status::waiting("PodInitializing", None);
        }
    }
    records
}

/// Runs the containers of `pod` in order until they are all done or `kill` fires.
pub(crate) async fn drive<R: Runtime>(
    ctx: Arc<Ctx<R>>,
    pod: Arc<Pod>,
    shared: Arc<Shared>,
    kill: CancellationToken,
) {
    if !mount_volumes(&ctx, &pod, &shared, &kill).await {
        return;
    }
    let spec = pod.spec.clone().unwrap_or_default();
    let restart_policy = restart_policy(&pod);
    // A failed init container is retried unless the pod never restarts anything.
    let init_policy = if restart_policy == "Never" {
        "Never"
    } else {
        "OnFailure"
    };
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
                "Always".to_owned(),
                shared.clone(),
                sidecar_kill.clone(),
            ));
            if !wait_started(&shared, slot, &kill).await {
                break;
            }
            continue;
        }
        supervise(
            ctx.clone(),
            pod.clone(),
            slot,
            c.clone(),
            init_policy.to_owned(),
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
                restart_policy.clone(),
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
async fn mount_volumes<R: Runtime>(
    ctx: &Ctx<R>,
    pod: &Pod,
    shared: &Shared,
    kill: &CancellationToken,
) -> bool {
    let mut backoff = MOUNT_BACKOFF;
    loop {
        let context = crate::volumes::Context {
            client: &ctx.client,
            facts: ctx.facts(),
            cache: &ctx.objects,
            max_age: std::time::Duration::ZERO,
        };
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
            .map(|r| {
                r.state
                    .waiting
                    .as_ref()
                    .and_then(|w| w.reason.clone())
                    .unwrap_or_default()
            })
            .collect()
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
