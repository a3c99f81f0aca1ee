//! Several krustlet nodes as a fleet: a Deployment spread over a group of them, a watch
//! of its pods, and a node's death (SIGKILL) measured step by step as the real
//! node-lifecycle and taint-eviction controllers and the ReplicaSet move its pods.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, PropagationPolicy};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::watch;

use crate::{Cluster, ControllerTimings, KrustletNode, node_condition, wait_node};

/// The label (`e2e-fleet=<group>`) a fleet's nodes carry and its pods select.
pub const GROUP_LABEL: &str = "e2e-fleet";

/// The `tolerationSeconds` of the spread pods for `node.kubernetes.io/unreachable` and
/// `not-ready` (`NoExecute`): how long they stay bound to a node that went away.
pub const TOLERATION_SECONDS: u64 = 5;

/// The `--node-labels` flags of a node of `group`: the group label, and a zone of the
/// group's own (`topology.kubernetes.io/zone=e2e-fleet-<group>`). The node-lifecycle
/// controller judges each zone apart: where more than two nodes and 55 % of a zone are
/// not ready (`--unhealthy-zone-threshold`) it deems the zone disrupted and, in a cluster
/// under 50 nodes, stops evicting there. On a shared control plane the nodes other tests
/// left stopped would hold the fleet's evictions back; in a zone of their own, one dead
/// node of three is an ordinary failure.
#[must_use]
pub fn group_flags(group: &str) -> Vec<String> {
    vec![
        "--node-labels".to_owned(),
        format!("{GROUP_LABEL}={group},topology.kubernetes.io/zone={GROUP_LABEL}-{group}"),
    ]
}

/// A Deployment `name` of `replicas` idle pods (the `tool` module blocked in `sleep`)
/// spread evenly over the nodes of `group` (`topologySpreadConstraints` on
/// `kubernetes.io/hostname`, nodes with taints the pods do not tolerate left out, as an
/// unreachable node is), tolerating the wasm taints, and an unreachable or not-ready
/// node for [`TOLERATION_SECONDS`].
#[must_use]
pub fn spread_deployment(name: &str, group: &str, image: &str, replicas: i32) -> Deployment {
    let gone = |key: &str| {
        serde_json::json!({ "key": key, "operator": "Exists", "effect": "NoExecute",
            "tolerationSeconds": TOLERATION_SECONDS })
    };
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": {
                    "nodeSelector": { "kubernetes.io/arch": "wasm32-wasi", GROUP_LABEL: group },
                    "tolerations": [
                        { "key": "kubernetes.io/arch", "operator": "Equal", "value": "wasm32-wasi" },
                        gone("node.kubernetes.io/unreachable"),
                        gone("node.kubernetes.io/not-ready"),
                    ],
                    "topologySpreadConstraints": [{
                        "maxSkew": 1,
                        "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "DoNotSchedule",
                        "nodeTaintsPolicy": "Honor",
                        "labelSelector": { "matchLabels": { "app": name } },
                    }],
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{ "name": "main", "image": image, "args": ["sleep", "1000000"] }]
                }
            }
        }
    }))
    .expect("valid deployment")
}

/// Deletes Deployment `name` and its pods (foreground) if it exists, and waits up to
/// `secs` until it is gone.
///
/// # Errors
/// When the request fails or it stays.
pub async fn remove_deployment(cluster: &Cluster, name: &str, secs: u64) -> Result<()> {
    let api: Api<Deployment> = Api::default_namespaced(cluster.client.clone());
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    crate::pods::wait_absent(&api, name, secs).await
}

/// What a [`PodWatch`] holds: the pods as they are now, and each deleted pod as it was
/// last (its final status), by name.
#[derive(Debug, Default, Clone)]
pub struct Pods {
    /// The pods that exist, by name.
    pub now: HashMap<String, Pod>,
    /// The pods deleted since the watch began, as the delete event showed them.
    pub deleted: HashMap<String, Pod>,
}

impl Pods {
    /// The pods on `node` not being deleted.
    #[must_use]
    pub fn active_on(&self, node: &str) -> Vec<&Pod> {
        self.now
            .values()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && node_of(p) == Some(node))
            .collect()
    }

    /// The pods not being deleted that are `Ready`, on any node but `not_on`.
    #[must_use]
    pub fn ready_elsewhere(&self, not_on: &str) -> usize {
        self.now
            .values()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && node_of(p) != Some(not_on))
            .filter(|p| crate::pod_condition(p, "Ready").as_deref() == Some("True"))
            .count()
    }
}

/// The node a pod is bound to.
#[must_use]
pub fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref()
}

/// A watch of the pods of one label selector, kept as [`Pods`]; stopped when dropped.
pub struct PodWatch {
    rx: watch::Receiver<Pods>,
    task: tokio::task::JoinHandle<()>,
}

impl PodWatch {
    /// Starts watching the pods of `api` matching `selector`; returns once the first
    /// list is in.
    ///
    /// # Errors
    /// When the first list does not come within a minute.
    pub async fn start(api: Api<Pod>, selector: &str) -> Result<Self> {
        let (tx, mut rx) = watch::channel(Pods::default());
        let (listed_tx, listed) = tokio::sync::oneshot::channel();
        let config = watcher::Config::default().labels(selector);
        let task = tokio::spawn(async move {
            let mut listed_tx = Some(listed_tx);
            let mut relist: HashMap<String, Pod> = HashMap::new();
            let mut events = watcher(api, config).boxed();
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Apply(p)) => tx.send_modify(|s| {
                        s.now.insert(p.name_any(), p);
                    }),
                    Ok(watcher::Event::Delete(p)) => tx.send_modify(|s| {
                        s.now.remove(&p.name_any());
                        s.deleted.insert(p.name_any(), p);
                    }),
                    Ok(watcher::Event::Init) => relist.clear(),
                    Ok(watcher::Event::InitApply(p)) => {
                        relist.insert(p.name_any(), p);
                    }
                    Ok(watcher::Event::InitDone) => {
                        let now = std::mem::take(&mut relist);
                        tx.send_modify(|s| s.now = now);
                        if let Some(done) = listed_tx.take() {
                            let _ = done.send(());
                        }
                    }
                    Err(e) => eprintln!("pod watch: {e}; retrying"),
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(60), listed)
            .await
            .context("the pod watch did not list within a minute")??;
        rx.mark_changed();
        Ok(Self { rx, task })
    }

    /// A receiver of every change of the watched pods.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<Pods> {
        self.rx.clone()
    }

    /// The pods now.
    #[must_use]
    pub fn get(&self) -> Pods {
        self.rx.borrow().clone()
    }

    /// Waits up to `secs` for `cond` to hold of the watched pods; when it first held
    /// (as seen by this watch).
    ///
    /// # Errors
    /// On timeout; the error names `what`.
    pub async fn until(
        &self,
        secs: u64,
        what: &str,
        cond: impl Fn(&Pods) -> bool,
    ) -> Result<Instant> {
        let mut rx = self.rx.clone();
        match tokio::time::timeout(Duration::from_secs(secs), rx.wait_for(|p| cond(p))).await {
            Ok(Ok(_)) => Ok(Instant::now()),
            Ok(Err(_)) => anyhow::bail!("the pod watch ended waiting for {what}"),
            Err(_) => anyhow::bail!("timed out after {secs}s waiting for {what}"),
        }
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A node's death measured: each step from the kill, and the API's timestamps that bound
/// the steps from below.
#[derive(Debug, Clone)]
pub struct Failover {
    /// The pods that ran on the node when it died.
    pub victims: Vec<String>,
    /// Kill → the node `Ready` `Unknown` (seen by a watch).
    pub to_unreachable: Duration,
    /// Kill → every victim being deleted (taint-based eviction).
    pub to_evicted: Duration,
    /// Kill → the first replacement created.
    pub to_first_replacement: Duration,
    /// Kill → every replica `Ready` again, none on the dead node.
    pub to_ready: Duration,
    /// When the node was killed (wall clock).
    pub killed_at: Timestamp,
    /// The node's last heartbeat: the later of its lease's `renewTime` and its `Ready`
    /// condition's `lastHeartbeatTime`, read after the kill.
    pub last_heartbeat: Timestamp,
    /// The `Ready` condition's `lastTransitionTime` to `Unknown`.
    pub unknown_since: Timestamp,
    /// The `timeAdded` of the `node.kubernetes.io/unreachable:NoExecute` taint.
    pub tainted_at: Timestamp,
    /// When each victim's deletion was asked (its `deletionTimestamp` less its grace
    /// period), by name.
    pub deleted_at: Vec<(String, Timestamp)>,
}

impl Failover {
    /// The earliest the replicas can be Ready again after the kill, from the
    /// controller's timings: the node cannot be marked unreachable before its last
    /// heartbeat plus the grace period, nor its pods evicted before their
    /// tolerationSeconds after that.
    #[must_use]
    pub fn lower_bound(&self, timings: &ControllerTimings) -> Duration {
        let earliest = self.last_heartbeat
            + SignedDuration::try_from(timings.grace_period).unwrap_or_default()
            + SignedDuration::from_secs(TOLERATION_SECONDS as i64);
        Duration::try_from(earliest.duration_since(self.killed_at)).unwrap_or_default()
    }
}

/// Kills `node` (SIGKILL) while `replicas` replicas of the watched Deployment run, and
/// measures the failover: node unreachable, its pods evicted, the replicas Ready again on
/// the other nodes. Bounded by `secs` for the whole.
///
/// # Errors
/// When a step does not happen in time.
pub async fn kill_and_measure(
    cluster: &Cluster,
    node: &mut KrustletNode,
    pods: &PodWatch,
    replicas: usize,
    secs: u64,
) -> Result<Failover> {
    let name = node.name.clone();
    let victims: Vec<String> = pods
        .get()
        .active_on(&name)
        .iter()
        .map(|p| p.name_any())
        .collect();
    anyhow::ensure!(!victims.is_empty(), "no pod runs on {name}");
    let initial: Vec<String> = pods.get().now.keys().cloned().collect();
    let began = Instant::now();
    let killed_at = Timestamp::now();
    node.kill()?;
    let nodes = cluster.nodes();
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "kube-node-lease");
    let renewed = leases
        .get(&name)
        .await?
        .spec
        .and_then(|s| s.renew_time)
        .map(|t| t.0);
    let heartbeat = ready_condition(&nodes.get(&name).await?)
        .and_then(|c| c.last_heartbeat_time)
        .map(|t| t.0);
    let last_heartbeat = renewed.max(heartbeat).context("the node never beat")?;

    let unknown = wait_node(&nodes, &name, secs, "Ready Unknown", |n| {
        node_condition(n, "Ready").as_deref() == Some("Unknown")
    })
    .await?;
    let to_unreachable = began.elapsed();
    let unknown_since = ready_condition(&unknown)
        .and_then(|c| c.last_transition_time)
        .map(|t| t.0)
        .context("no transition time")?;
    let left = |spent: Duration| secs.saturating_sub(spent.as_secs()).max(1);
    let tainted = wait_node(
        &nodes,
        &name,
        left(began.elapsed()),
        "the unreachable taint",
        |n| unreachable_taint(n).is_some(),
    )
    .await?;
    let tainted_at = unreachable_taint(&tainted)
        .and_then(|t| t.time_added.clone())
        .map(|t| t.0)
        .context("the taint has no timeAdded")?;

    let evicted = |p: &Pods| {
        victims.iter().all(|v| {
            p.now
                .get(v)
                .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
        })
    };
    let at = pods
        .until(
            left(began.elapsed()),
            "the dead node's pods evicted",
            evicted,
        )
        .await?;
    let to_evicted = at - began;
    let seen = pods.get();
    let deleted_at = victims
        .iter()
        .filter_map(|v| {
            let p = seen.now.get(v).or_else(|| seen.deleted.get(v))?;
            let when = p.metadata.deletion_timestamp.as_ref()?.0;
            let grace = p.metadata.deletion_grace_period_seconds.unwrap_or_default();
            Some((v.clone(), when - SignedDuration::from_secs(grace)))
        })
        .collect();
    let at = pods
        .until(left(began.elapsed()), "a replacement created", |p| {
            p.now.keys().any(|n| !initial.contains(n))
        })
        .await?;
    let to_first_replacement = at - began;
    let at = pods
        .until(
            left(began.elapsed()),
            &format!("{replicas} replicas Ready, none on {name}"),
            |p| p.ready_elsewhere(&name) == replicas,
        )
        .await?;
    Ok(Failover {
        victims,
        to_unreachable,
        to_evicted,
        to_first_replacement,
        to_ready: at - began,
        killed_at,
        last_heartbeat,
        unknown_since,
        tainted_at,
        deleted_at,
    })
}

fn ready_condition(node: &Node) -> Option<k8s_openapi::api::core::v1::NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .cloned()
}

/// The node's `node.kubernetes.io/unreachable:NoExecute` taint.
#[must_use]
pub fn unreachable_taint(node: &Node) -> Option<&k8s_openapi::api::core::v1::Taint> {
    node.spec
        .as_ref()?
        .taints
        .as_ref()?
        .iter()
        .find(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute")
}
