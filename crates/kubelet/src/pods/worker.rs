//! One pod's worker: admits it, runs its containers, posts its status, and finishes its
//! deletion.

use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{HostIP, Pod, PodIP, PodStatus};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use super::container::{self, Shared};
use super::status::{self, ContainerRecord};
use crate::{Runtime, now};

fn deleting(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn qos_class(pod: &Pod) -> &'static str {
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let mut any = false;
    let mut guaranteed = true;
    for c in containers {
        let res = c.resources.clone().unwrap_or_default();
        let (req, lim) = (
            res.requests.unwrap_or_default(),
            res.limits.unwrap_or_default(),
        );
        any |= !req.is_empty() || !lim.is_empty();
        for r in ["cpu", "memory"] {
            let l = lim.get(r);
            guaranteed &= l.is_some() && req.get(r).is_none_or(|q| Some(q) == l);
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

struct PodWorker<R> {
    ctx: Arc<Ctx<R>>,
    pod: watch::Receiver<Pod>,
    api: Api<Pod>,
    name: String,
    last_posted: Option<serde_json::Value>,
}

impl<R: Runtime> PodWorker<R> {
    fn current(&self) -> Pod {
        self.pod.borrow().clone()
    }

    async fn post(&mut self, status: PodStatus) {
        let value = serde_json::json!({ "status": status });
        if self.last_posted.as_ref() == Some(&value) {
            return;
        }
        match self
            .api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&value))
            .await
        {
            Ok(_) => self.last_posted = Some(value),
            Err(e) => tracing::warn!(pod = %self.name, error = %e, "cannot update pod status"),
        }
    }

    fn status(&self, records: &[ContainerRecord], phase: &str) -> PodStatus {
        let pod = self.current();
        let existing = pod.status.clone().unwrap_or_default();
        let ip = self.ctx.config.node_ip.to_string();
        let conditions = status::conditions(
            existing.conditions.as_deref().unwrap_or_default(),
            records,
            phase,
            &now(),
        );
        PodStatus {
            phase: Some(phase.to_owned()),
            conditions: Some(conditions),
            host_ip: Some(ip.clone()),
            host_ips: Some(vec![HostIP { ip: ip.clone() }]),
            pod_ip: Some(ip.clone()),
            pod_ips: Some(vec![PodIP { ip }]),
            start_time: existing.start_time.or_else(|| Some(now())),
            container_statuses: Some(records.iter().map(ContainerRecord::status).collect()),
            qos_class: Some(qos_class(&pod).to_owned()),
            ..PodStatus::default()
        }
    }

    /// Deletes the pod object for good once its workloads are stopped, as the kubelet does.
    async fn finish_deletion(&self) {
        let uid = self.current().uid();
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid,
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self.api.delete(&self.name, &params).await {
            Ok(_) => tracing::info!(pod = %self.name, "pod deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => tracing::warn!(pod = %self.name, error = %e, "cannot delete pod"),
        }
    }

    /// Waits until the pod is being deleted; false if the worker is stopped first.
    async fn wait_for_deletion(&mut self, stop: &CancellationToken) -> bool {
        loop {
            if deleting(&self.pod.borrow()) {
                return true;
            }
            tokio::select! {
                () = stop.cancelled() => return false,
                r = self.pod.changed() => if r.is_err() { return false },
            }
        }
    }

    async fn reject(&mut self, reason: &str, message: String) {
        let pod = self.current();
        let reference = pod.object_ref(&());
        let ev = Event {
            type_: EventType::Warning,
            reason: reason.to_owned(),
            note: Some(message.clone()),
            action: "Admit".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.ctx.recorder.publish(&ev, &reference).await {
            tracing::warn!(error = %e, "cannot record event");
        }
        let status = PodStatus {
            phase: Some("Failed".to_owned()),
            reason: Some(reason.to_owned()),
            message: Some(message),
            ..PodStatus::default()
        };
        self.post(status).await;
    }
}

/// Drives one pod from admission to the removal of its object.
pub(crate) async fn run<R: Runtime>(
    ctx: Arc<Ctx<R>>,
    pod: watch::Receiver<Pod>,
    stop: CancellationToken,
    admitted: bool,
) {
    let first = pod.borrow().clone();
    let api = Api::namespaced(ctx.client.clone(), &first.namespace().unwrap_or_default());
    let mut w = PodWorker {
        name: first.name_any(),
        ctx,
        pod,
        api,
        last_posted: None,
    };
    if status::is_terminal(&first) || deleting(&first) {
        // Known from before (a restart of the node agent), or deleted before it started.
        if w.wait_for_deletion(&stop).await {
            w.finish_deletion().await;
        }
        return;
    }
    if !admitted {
        let max = w.ctx.config.max_pods;
        w.reject(
            "OutOfpods",
            format!(
                "Node didn't have enough resource: pods, requested: 1, used: {max}, capacity: {max}"
            ),
        )
        .await;
        if w.wait_for_deletion(&stop).await {
            w.finish_deletion().await;
        }
        return;
    }
    let spec = first.spec.clone().unwrap_or_default();
    let restart_policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".to_owned());
    let records = spec
        .containers
        .iter()
        .map(|c| ContainerRecord::new(&c.name, c.image.as_deref().unwrap_or_default()))
        .collect();
    let shared = Arc::new(Shared {
        records: Mutex::new(records),
        changed: Notify::new(),
    });
    let kill = stop.child_token();
    let snapshot = Arc::new(first);
    let mut supervisors = JoinSet::new();
    for index in 0..spec.containers.len() {
        supervisors.spawn(container::supervise(
            w.ctx.clone(),
            snapshot.clone(),
            index,
            shared.clone(),
            kill.clone(),
        ));
    }
    let pending = w.status(&shared.snapshot(), "Pending");
    w.post(pending).await;
    let mut terminating = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                // The pod object is gone or the node is shutting down: stop, report nothing.
                kill.cancel();
                while supervisors.join_next().await.is_some() {}
                return;
            }
            () = shared.changed.notified() => {}
            r = w.pod.changed(), if !terminating => {
                if r.is_err() { return; }
            }
            j = supervisors.join_next(), if !supervisors.is_empty() => {
                if let Some(Err(e)) = j { tracing::error!(pod = %w.name, error = %e, "container supervisor failed"); }
            }
        }
        if !terminating && deleting(&w.pod.borrow()) {
            terminating = true;
            for record in shared
                .snapshot()
                .iter()
                .filter(|r| r.container_id.is_some() && !r.done)
            {
                let pod = w.current();
                let mut reference = pod.object_ref(&());
                reference.field_path = Some(format!("spec.containers{{{}}}", record.name));
                let ev = Event {
                    type_: EventType::Normal,
                    reason: "Killing".to_owned(),
                    note: Some(format!("Stopping container {}", record.name)),
                    action: "Killing".to_owned(),
                    secondary: None,
                };
                if let Err(e) = w.ctx.recorder.publish(&ev, &reference).await {
                    tracing::warn!(error = %e, "cannot record event");
                }
            }
            kill.cancel();
        }
        let records = shared.snapshot();
        let all_done = supervisors.is_empty();
        let phase = status::phase(&records, &restart_policy);
        let status = w.status(&records, phase);
        w.post(status).await;
        if all_done {
            break;
        }
    }
    if terminating || w.wait_for_deletion(&stop).await {
        w.finish_deletion().await;
    }
}
