//! One pod's worker: admits it, runs its containers, posts its status, and finishes its
//! deletion.

use std::sync::{Arc, Mutex};

use crate::events::EventType;
use k8s_openapi::api::core::v1::{HostIP, Pod, PodIP, PodStatus};
use kube::api::{DeleteParams, Preconditions};
use kube::{Resource, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use super::admission::{self, Rejection};
use super::container::Shared;
use super::record::{ContainerRecord, Records};
use super::sequence;
use super::spec::{host_network, restart_policy};
use super::status::{self, Phase};
use crate::metrics::WorkerOperation;
use crate::now;
use tokio::time::Instant;

fn deleting(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

pub(crate) fn qos_class(pod: &Pod) -> &'static str {
    use crate::quantity::Quantity as Q;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
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
            // Equal by value (`1Gi` is `1024Mi`), as the kubelet compares quantities.
            let same = |a: &Quantity, b: &Quantity| match (Q::from_api(a), Q::from_api(b)) {
                (Ok(a), Ok(b)) => a == b,
                _ => a == b,
            };
            guaranteed &= l.is_some_and(|l| req.get(r).is_none_or(|q| same(q, l)));
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// Why the worker fails a pod that runs: reported once its containers have stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// `activeDeadlineSeconds` ran out.
    DeadlineExceeded,
    /// Evicted (node pressure, an `emptyDir` over its limit), with the kubelet's message.
    Evicted(String),
    /// Killed for the node's graceful shutdown, each container within `grace`.
    NodeShutdown { grace: std::time::Duration },
}

impl Failure {
    fn reason(&self) -> &'static str {
        match self {
            Self::DeadlineExceeded => "DeadlineExceeded",
            Self::Evicted(_) => "Evicted",
            Self::NodeShutdown { .. } => crate::shutdown::REASON,
        }
    }

    fn message(&self) -> &str {
        match self {
            Self::DeadlineExceeded => {
                "Pod was active on the node longer than the specified deadline"
            }
            Self::Evicted(message) => message,
            Self::NodeShutdown { .. } => crate::shutdown::MESSAGE,
        }
    }

    /// The `DisruptionTarget` condition the kubelet adds to a pod it kills for the
    /// node's shutdown.
    fn disruption(&self) -> Option<k8s_openapi::api::core::v1::PodCondition> {
        matches!(self, Self::NodeShutdown { .. }).then(|| {
            k8s_openapi::api::core::v1::PodCondition {
                type_: "DisruptionTarget".to_owned(),
                status: "True".to_owned(),
                reason: Some(crate::shutdown::DISRUPTION_REASON.to_owned()),
                message: Some(crate::shutdown::MESSAGE.to_owned()),
                last_transition_time: Some(now()),
                ..Default::default()
            }
        })
    }
}

/// What reaches a worker from outside its pod: a failure (eviction, node shutdown),
/// and where it says it is done with the pod's containers.
pub(crate) struct Outside {
    pub failed: watch::Receiver<Option<Failure>>,
    pub finished: watch::Sender<bool>,
}

struct PodWorker {
    ctx: Arc<Ctx>,
    pod: watch::Receiver<Pod>,
    ns: String,
    name: String,
    statuses: super::writer::StatusWriter,
    /// When the kubelet first saw the pod; `None` once its start was reported (or when
    /// it ran before this agent started).
    seen: Option<Instant>,
}

impl PodWorker {
    fn current(&self) -> Pod {
        self.pod.borrow().clone()
    }

    /// Reports `status`: the pod's status writer writes it, and writes it again until
    /// it lands when the API server is away.
    async fn post(&mut self, status: PodStatus) {
        if status.phase.as_deref() == Some(Phase::Running.as_str())
            && let Some(seen) = self.seen.take()
        {
            self.ctx.metrics.pod_started(seen.elapsed());
        }
        self.statuses.post(serde_json::json!(status));
    }

    /// The status to post; a `failure` fails the pod with its reason and message.
    /// Until every container has stopped (`settled`), a pod is not reported finished:
    /// sidecars still run when the app containers are done.
    fn status(
        &self,
        records: &Records,
        sandbox: Option<&crate::runtime::Sandbox>,
        failure: Option<&Failure>,
        settled: bool,
    ) -> PodStatus {
        let pod = self.current();
        let phase = match (failure, records.phase(restart_policy(&pod))) {
            (Some(_), _) => Phase::Failed,
            (None, phase) if phase.is_terminal() && !settled => Phase::Running,
            // As the kubelet (since 1.27): a deleted pod whose containers have stopped
            // ends in a terminal phase, whatever its restart policy.
            (None, _) if settled && deleting(&pod) => records.clone().finalized().deleted_phase(),
            (None, phase) => phase,
        };
        let existing = pod.status.clone().unwrap_or_default();
        let ip = self.ctx.config.node_ip.to_string();
        // The sandbox's addresses; the node's for a pod on the node's network; none
        // for a pod without a network of its own (a node without a pod network: it must
        // not pass for the node, whose ports a Service would then reach), nor before the
        // sandbox (kept from an earlier status across an agent restart).
        let pod_ips: Vec<PodIP> = match sandbox {
            Some(s) if !s.ips.is_empty() => {
                s.ips.iter().map(|a| PodIP { ip: a.to_string() }).collect()
            }
            Some(_) if host_network(&pod) => vec![PodIP { ip: ip.clone() }],
            Some(_) => Vec::new(),
            None => existing.pod_ips.clone().unwrap_or_default(),
        };
        let mut conditions = status::conditions(
            existing.conditions.as_deref().unwrap_or_default(),
            records,
            phase,
            &now(),
        );
        if let Some(disruption) = failure.and_then(Failure::disruption) {
            match conditions.iter_mut().find(|c| c.type_ == disruption.type_) {
                Some(c) if c.status == disruption.status => {
                    c.reason = disruption.reason;
                    c.message = disruption.message;
                }
                Some(c) => *c = disruption,
                None => conditions.push(disruption),
            }
        }
        let finalized;
        let records = if phase.is_terminal() {
            finalized = records.clone().finalized();
            &finalized
        } else {
            records
        };
        let statuses =
            |list: &[ContainerRecord]| list.iter().map(ContainerRecord::status).collect();
        PodStatus {
            phase: Some(phase.to_string()),
            reason: failure.map(|f| f.reason().to_owned()),
            message: failure.map(|f| f.message().to_owned()),
            conditions: Some(conditions),
            host_ip: Some(ip.clone()),
            host_ips: Some(vec![HostIP { ip: ip.clone() }]),
            pod_ip: pod_ips.first().map(|p| p.ip.clone()),
            pod_ips: (!pod_ips.is_empty()).then_some(pod_ips),
            start_time: existing.start_time.or_else(|| Some(now())),
            init_container_statuses: (!records.init.is_empty()).then(|| statuses(&records.init)),
            container_statuses: Some(statuses(&records.app)),
            qos_class: Some(qos_class(&pod).to_owned()),
            ..PodStatus::default()
        }
    }

    async fn event(
        &self,
        type_: EventType,
        reason: &str,
        note: String,
        field_path: Option<String>,
    ) {
        let mut reference = self.current().object_ref(&());
        reference.field_path = field_path;
        self.ctx
            .recorder
            .record(&reference, type_, reason, &note)
            .await;
    }

    /// Deletes the pod object for good once its workloads are stopped, as the kubelet does
    /// (after its final status, within a bound).
    async fn finish_deletion(&mut self) {
        self.statuses
            .flush(std::time::Duration::from_secs(10))
            .await;
        let uid = self.current().uid();
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid,
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self.ctx.api.delete_pod(&self.ns, &self.name, params).await {
            Ok(()) => tracing::info!(pod = %self.name, "pod deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => tracing::warn!(pod = %self.name, error = %e, "cannot delete pod"),
        }
    }

    /// Finishes a pod that was deleted before this agent ran it, as the kubelet does
    /// when it finds one: the final status (each run that was going reported
    /// `ContainerStatusUnknown`, the phase terminal), the sandbox an earlier agent left
    /// removed, then the object deleted.
    async fn settle_deleted(&mut self, pod: &Pod) {
        let records = sequence::adopted(pod);
        let status = self.status(&records, None, None, true);
        self.post(status).await;
        let uid = pod.uid().unwrap_or_default();
        if self.ctx.runtime.list_pod_sandboxes().await.contains(&uid) {
            self.ctx.runtime.remove_pod_sandbox(&uid).await;
        }
        self.finish_deletion().await;
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

    /// The periodic sync of the pod's volumes: projected content rewritten from the
    /// current objects (a failure is a `FailedMount` event, the old content stays), and
    /// `emptyDir` size limits checked; returns the eviction message when one is exceeded,
    /// as the kubelet's eviction manager words it.
    async fn sync_volumes(&self, volumes: &crate::volumes::Volumes) -> Option<String> {
        let pod = self.current();
        let context = self.ctx.volume_context(self.ctx.config.sync_frequency);
        if let Err(e) = volumes.refresh(&context, &pod).await {
            self.event(EventType::Warning, "FailedMount", e.to_string(), None)
                .await;
        }
        let (volume, limit) = volumes.over_limit(&pod).await?;
        Some(format!(
            "Usage of EmptyDir volume {volume:?} exceeds the limit {limit:?}. "
        ))
    }

    /// Fails the pod (a deadline, an eviction): a Warning event, its containers killed;
    /// the failure is reported once they have stopped.
    async fn fail(&self, kill: &CancellationToken, failure: Failure) -> Option<Failure> {
        // The node's shutdown has no event of its own: each container's Killing says it.
        if !matches!(failure, Failure::NodeShutdown { .. }) {
            let message = failure.message().to_owned();
            self.event(EventType::Warning, failure.reason(), message, None)
                .await;
        }
        kill.cancel();
        Some(failure)
    }

    async fn reject(&mut self, Rejection { reason, message }: Rejection) {
        self.event(EventType::Warning, reason, message.clone(), None)
            .await;
        // As the kubelet's rejectPod: the event has the bare message, the status says
        // the pod was rejected and keeps its QoS class.
        let status = PodStatus {
            phase: Some(Phase::Failed.to_string()),
            reason: Some(reason.to_owned()),
            message: Some(format!("Pod was rejected: {message}")),
            qos_class: Some(qos_class(&self.current()).to_owned()),
            ..PodStatus::default()
        };
        self.post(status).await;
    }
}

/// How long the first status of a pod waits for its containers to start.
const FIRST_STATUS_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Waits up to [`FIRST_STATUS_WAIT`] until a container of the pod has started or failed
/// (at once if one has).
async fn wait_for_start(shared: &Shared, changes: &mut watch::Receiver<u64>) {
    let _ = tokio::time::timeout(FIRST_STATUS_WAIT, async {
        while !shared.snapshot().started_or_failed() {
            if changes.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
}

/// When `activeDeadlineSeconds` runs out, counted from the pod's start time.
fn deadline(pod: &Pod) -> Option<tokio::time::Instant> {
    let seconds = pod.spec.as_ref()?.active_deadline_seconds?;
    let started = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map_or_else(jiff::Timestamp::now, |t| t.0);
    let end = started
        .checked_add(jiff::SignedDuration::from_secs(seconds))
        .ok()?;
    let left = end.duration_since(jiff::Timestamp::now());
    let left = std::time::Duration::try_from(left).unwrap_or_default();
    Some(tokio::time::Instant::now() + left)
}

/// Drives one pod from admission to the removal of its object.
pub(crate) async fn run(
    ctx: Arc<Ctx>,
    pod: watch::Receiver<Pod>,
    stop: CancellationToken,
    outside: Outside,
    misfit: Option<Rejection>,
) {
    let Outside {
        failed: mut evicted,
        finished,
    } = outside;
    let seen = Instant::now();
    let first = pod.borrow().clone();
    let ns = first.namespace().unwrap_or_default();
    let statuses = super::writer::StatusWriter::start(
        ctx.api.clone(),
        ctx.statuses.clone(),
        ns.clone(),
        first.name_any(),
        first.uid(),
    );
    let mut w = PodWorker {
        name: first.name_any(),
        ns,
        ctx,
        pod,
        statuses,
        // A pod that ran before this agent started is not started again.
        seen: first
            .status
            .as_ref()
            .is_none_or(|s| s.phase.as_deref() != Some(Phase::Running.as_str()))
            .then_some(seen),
    };
    if status::is_terminal(&first) {
        // Finished before a restart of the node agent: only its deletion is left.
        finished.send_replace(true);
        if w.wait_for_deletion(&stop).await {
            w.finish_deletion().await;
        }
        return;
    }
    if deleting(&first) {
        // Deleted while the node agent was away (a node back from being unreachable
        // finds the pods the taint manager evicted), or before it started: nothing of
        // it runs here.
        w.settle_deleted(&first).await;
        finished.send_replace(true);
        return;
    }
    if let Some(rejection) = misfit.or_else(|| admission::check(&first)) {
        w.reject(rejection).await;
        finished.send_replace(true);
        if w.wait_for_deletion(&stop).await {
            w.finish_deletion().await;
        }
        return;
    }
    let (changed, mut changes) = watch::channel(0u64);
    let shared = Arc::new(Shared {
        records: Mutex::new(sequence::adopted(&first)),
        changed,
        volumes: std::sync::OnceLock::new(),
        sandbox: std::sync::OnceLock::new(),
        grace_cap: std::sync::OnceLock::new(),
    });
    let kill = stop.child_token();
    let mut driver = tokio::spawn(sequence::drive(
        w.ctx.clone(),
        Arc::new(first.clone()),
        shared.clone(),
        kill.clone(),
    ));
    // The first status waits briefly for the containers to start, so that a pod that
    // starts at once is reported Running in one write rather than Pending, then Running.
    wait_for_start(&shared, &mut changes).await;
    let initial = w.status(&shared.snapshot(), shared.sandbox.get(), None, false);
    w.post(initial).await;
    w.ctx
        .metrics
        .pod_worker(WorkerOperation::Create, seen.elapsed());
    let deadline_at = deadline(&w.current());
    let mut sync = tokio::time::interval(w.ctx.config.sync_frequency);
    sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sync.tick().await;
    let mut failure: Option<Failure> = None;
    let mut terminating = false;
    let mut driver_done = false;
    let mut evict_open = true;
    loop {
        // What woke the worker and when, for kubelet_pod_worker_duration_seconds.
        let round;
        tokio::select! {
            // Stop first: the kill it makes (`kill` is its child) also wakes the other
            // branches, and none of them may report a status after a stop.
            biased;
            () = stop.cancelled() => {
                // The pod object is gone or the node is shutting down: stop, report nothing.
                kill.cancel();
                let _ = driver.await;
                return;
            }
            r = changes.changed() => {
                round = (WorkerOperation::Update, Instant::now());
                if r.is_err() { return }
                // Still starting (sandbox, pulls, creation): as for the first status,
                // so that a busy node reports a start in one write rather than one per
                // step.
                wait_for_start(&shared, &mut changes).await;
            }
            r = w.pod.changed(), if !terminating => {
                round = (WorkerOperation::Update, Instant::now());
                if r.is_err() { return }
            }
            r = &mut driver, if !driver_done => {
                round = (WorkerOperation::Update, Instant::now());
                driver_done = true;
                if let Err(e) = r {
                    tracing::error!(pod = %w.name, error = %e, "container sequence failed");
                }
            }
            () = sleep_until(deadline_at), if failure.is_none() && !driver_done => {
                round = (WorkerOperation::Update, Instant::now());
                failure = w.fail(&kill, Failure::DeadlineExceeded).await;
            }
            r = evicted.changed(), if evict_open && failure.is_none() && !driver_done && !terminating => {
                round = (WorkerOperation::Update, Instant::now());
                evict_open = r.is_ok();
                let given = evicted.borrow_and_update().clone();
                if let (true, Some(given)) = (evict_open, given) {
                    if let Failure::NodeShutdown { grace } = given {
                        let _ = shared.grace_cap.set(grace);
                    }
                    failure = w.fail(&kill, given).await;
                }
            }
            _ = sync.tick(), if failure.is_none() && !driver_done && !terminating => {
                round = (WorkerOperation::Sync, Instant::now());
                if let Some(volumes) = shared.volumes.get()
                    && let Some(message) = w.sync_volumes(volumes).await
                {
                    failure = w.fail(&kill, Failure::Evicted(message)).await;
                }
            }
        }
        if !terminating && deleting(&w.pod.borrow()) {
            terminating = true;
            kill.cancel();
        }
        if failure.is_some() && !driver_done {
            // Failed by the deadline: reported once its containers are stopped.
            continue;
        }
        let status = w.status(
            &shared.snapshot(),
            shared.sandbox.get(),
            failure.as_ref(),
            driver_done,
        );
        w.post(status).await;
        w.ctx.metrics.pod_worker(round.0, round.1.elapsed());
        if driver_done {
            break;
        }
    }
    if matches!(failure, Some(Failure::Evicted(_))) {
        // As the kubelet: an evicted pod's volumes go at once (its logs stay for
        // `kubectl logs` until the pod is deleted), which is what frees the disk.
        let volumes = w
            .ctx
            .pod_dir(&w.current())
            .join(crate::volumes::VOLUMES_DIR);
        super::remove_pod_dir(&volumes).await;
    }
    if matches!(failure, Some(Failure::NodeShutdown { .. })) {
        // The agent stops soon after: the final status must have landed by then.
        w.statuses.flush(std::time::Duration::from_secs(10)).await;
    }
    finished.send_replace(true);
    if terminating || w.wait_for_deletion(&stop).await {
        w.finish_deletion().await;
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(requests: &str, limits: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "spec": { "containers": [{
                "name": "c",
                "resources": {
                    "requests": { "cpu": "1", "memory": requests },
                    "limits": { "cpu": "1000m", "memory": limits }
                }
            }] }
        }))
        .expect("pod")
    }

    #[test]
    fn qos_compares_quantities_by_value() {
        assert_eq!(qos_class(&pod("1Gi", "1024Mi")), "Guaranteed");
        assert_eq!(qos_class(&pod("1Gi", "1025Mi")), "Burstable");
        assert_eq!(qos_class(&Pod::default()), "BestEffort");
    }
}
