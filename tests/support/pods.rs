//! Pod manifests pinned to a wasm node, waits on pods, reads of their status, and
//! `kubectl get pod` rows.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStatus, Pod};
use kube::Api;
use kube::runtime::wait::await_condition;

use crate::Cluster;

/// A row of `kubectl get pods`: `NAME READY STATUS RESTARTS AGE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRow {
    /// `ready/total` containers.
    pub ready: String,
    /// The STATUS column: phase, or a reason such as `CrashLoopBackOff` or `Init:1/2`.
    pub status: String,
    /// The restart count, without the `(5s ago)` that may follow it.
    pub restarts: u32,
}

impl PodRow {
    pub(crate) fn parse(out: &str) -> Option<Self> {
        let mut lines = out.lines();
        let line = lines.next()?;
        if lines.next().is_some() {
            return None;
        }
        let cells: Vec<&str> = line.split_whitespace().collect();
        Some(Self {
            ready: (*cells.get(1)?).to_owned(),
            status: (*cells.get(2)?).to_owned(),
            restarts: cells.get(3)?.parse().ok()?,
        })
    }
}

/// Waits up to `secs` for `cond` to hold on pod `name`; the error shows the last status.
///
/// # Errors
/// On timeout.
pub async fn wait_pod(
    pods: &Api<Pod>,
    name: &str,
    secs: u64,
    what: &str,
    cond: impl Fn(&Pod) -> bool,
) -> Result<Pod> {
    let waited = wait_object(pods, "pod", name, secs, what, cond).await;
    if waited.is_err() {
        let status = pods
            .get(name)
            .await
            .map(|p| serde_json::to_string_pretty(&p.status))
            .ok();
        return waited.with_context(|| format!("status: {status:?}"));
    }
    waited
}

/// Watches `kind` `name` until `cond` holds of it, for at most `secs`.
///
/// # Errors
/// On timeout, when it vanishes, or when the watch fails.
pub async fn wait_object<K>(
    api: &Api<K>,
    kind: &str,
    name: &str,
    secs: u64,
    what: &str,
    cond: impl Fn(&K) -> bool,
) -> Result<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let fut = await_condition(api.clone(), name, move |o: Option<&K>| o.is_some_and(&cond));
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(Ok(Some(o))) => Ok(o),
        Ok(Ok(None)) => bail!("{kind} {name} vanished waiting for {what}"),
        Ok(Err(e)) => bail!("watching {kind} {name}: {e}"),
        Err(_) => bail!("{kind} {name}: timed out after {secs}s waiting for {what}"),
    }
}

/// Waits up to `secs` until `kind` object `name` of `api` does not exist.
///
/// # Errors
/// On timeout or when the watch fails.
pub async fn wait_absent<K>(api: &Api<K>, name: &str, secs: u64) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let fut = await_condition(api.clone(), name, |o: Option<&K>| o.is_none());
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => bail!("watching {name}: {e}"),
        Err(_) => bail!("{name} still exists after {secs}s"),
    }
}

/// The pod's phase.
#[must_use]
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

/// A pod manifest for a wasm workload pinned (by node selector, not `nodeName`) to `node`,
/// tolerating the wasm taints.
#[must_use]
pub fn wasm_pod(name: &str, node: &str, image: &str, args: &[&str], restart_policy: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name },
        "spec": {
            "restartPolicy": restart_policy,
            "nodeSelector": { "kubernetes.io/arch": "wasm32-wasi", "kubernetes.io/hostname": node },
            "tolerations": [
                { "key": "kubernetes.io/arch", "operator": "Equal", "value": "wasm32-wasi" }
            ],
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "main",
                "image": image,
                "args": args,
                "env": [{ "name": "GREETING", "value": "hello-e2e" }]
            }]
        }
    }))
    .expect("valid pod manifest")
}

/// Waits up to `secs` for pod `name` not to exist; returns how long it took.
///
/// # Errors
/// On timeout.
pub async fn wait_gone(pods: &Api<Pod>, name: &str, secs: u64) -> Result<Duration> {
    let start = std::time::Instant::now();
    let fut = await_condition(pods.clone(), name, |p: Option<&Pod>| p.is_none());
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(Ok(_)) => Ok(start.elapsed()),
        Ok(Err(e)) => bail!("watching pod {name}: {e}"),
        Err(_) => bail!("pod {name} still exists after {secs}s"),
    }
}

/// Removes pod `name` if an earlier run left it, at once (grace period 0, so a pod of a
/// node that is no longer running goes too), and waits until it is gone.
///
/// # Errors
/// On timeout.
pub async fn ensure_absent(pods: &Api<Pod>, name: &str) -> Result<()> {
    let now = kube::api::DeleteParams {
        grace_period_seconds: Some(0),
        ..kube::api::DeleteParams::default()
    };
    let _ = pods.delete(name, &now).await;
    wait_gone(pods, name, 60).await.map(|_| ())
}

/// Creates `pod` after removing any pod of its name left by an earlier run.
///
/// # Errors
/// When the old pod does not go or the create request fails.
pub async fn create_fresh(pods: &Api<Pod>, pod: &Pod) -> Result<()> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    ensure_absent(pods, &name).await?;
    pods.create(&kube::api::PostParams::default(), pod).await?;
    Ok(())
}

/// Deletes pod `name` (with its grace period) and waits up to `secs` until it is gone.
///
/// # Errors
/// When the request fails or the pod stays.
pub async fn delete_and_wait(pods: &Api<Pod>, name: &str, secs: u64) -> Result<()> {
    pods.delete(name, &kube::api::DeleteParams::default())
        .await?;
    wait_gone(pods, name, secs).await.map(|_| ())
}

/// A pod spec pinned to `node` by node selector, tolerating the wasm taints, without a
/// service-account token, with `spec`'s fields (containers and the rest) over that.
#[must_use]
pub fn wasm_pod_spec(node: &str, spec: serde_json::Value) -> serde_json::Value {
    let mut full = serde_json::json!({
        "nodeSelector": { "kubernetes.io/arch": "wasm32-wasi", "kubernetes.io/hostname": node },
        "tolerations": wasm_toleration(),
        "automountServiceAccountToken": false,
    });
    if let (Some(full), serde_json::Value::Object(extra)) = (full.as_object_mut(), spec) {
        full.extend(extra);
    }
    full
}

/// The toleration of the wasm node taints.
#[must_use]
pub fn wasm_toleration() -> serde_json::Value {
    serde_json::json!([
        { "key": "kubernetes.io/arch", "operator": "Equal", "value": "wasm32-wasi" }
    ])
}

/// A pod `name` whose `spec` is given (containers and the rest), pinned to `node` by node
/// selector and tolerating the wasm taints; `spec.nodeName` in `spec` bypasses the
/// scheduler.
#[must_use]
pub fn pod_with_spec(name: &str, node: &str, spec: serde_json::Value) -> Pod {
    let full = wasm_pod_spec(node, spec);
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name },
        "spec": full,
    }))
    .expect("valid pod manifest")
}

/// The status of container `name` (app or init).
#[must_use]
pub fn container_status(pod: &Pod, name: &str) -> Option<ContainerStatus> {
    let s = pod.status.as_ref()?;
    s.container_statuses
        .iter()
        .flatten()
        .chain(s.init_container_statuses.iter().flatten())
        .find(|c| c.name == name)
        .cloned()
}

/// The `terminated` state of container `name`, if it is terminated.
#[must_use]
pub fn terminated(pod: &Pod, name: &str) -> Option<ContainerStateTerminated> {
    container_status(pod, name)?.state?.terminated
}

/// The `waiting` reason of container `name`, if it is waiting.
#[must_use]
pub fn waiting_reason(pod: &Pod, name: &str) -> Option<String> {
    container_status(pod, name)?.state?.waiting?.reason
}

/// The `waiting` message of container `name`, if it is waiting with one.
#[must_use]
pub fn waiting_message(pod: &Pod, name: &str) -> Option<String> {
    container_status(pod, name)?.state?.waiting?.message
}

/// Pod condition `type_`'s status (`True`/`False`).
#[must_use]
pub fn pod_condition(pod: &Pod, type_: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

/// Polls `kubectl get pod` until its row satisfies `cond`, up to `secs`.
///
/// # Errors
/// On timeout; the error shows the last row.
pub async fn wait_row(
    cluster: &Cluster,
    name: &str,
    secs: u64,
    cond: impl Fn(&PodRow) -> bool,
) -> Result<PodRow> {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    let mut last = None;
    while std::time::Instant::now() < end {
        if let Ok(row) = cluster.pod_row(name).await {
            if cond(&row) {
                return Ok(row);
            }
            last = Some(row);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("kubectl get pod {name}: the row never matched in {secs}s; last {last:?}")
}

/// Retries `read` every 2 s until it gives `Some`, for at most `secs`.
///
/// # Errors
/// On timeout, with the last error `read` gave.
pub async fn until<T, F, Fut>(secs: u64, what: &str, mut read: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = String::new();
    loop {
        match read().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            bail!("{what} not within {secs} s (last error: {last})");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
