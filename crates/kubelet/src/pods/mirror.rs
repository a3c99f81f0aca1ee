//! Mirror pods: each static pod's copy in the API (`<name>-<node>`, the
//! `kubernetes.io/config.mirror` annotation holding the static pod's hash, owned by the
//! Node), through which `kubectl` sees it. [`run`] keeps one per static pod: created when
//! missing, replaced when its hash is stale or someone deleted it, removed when its
//! static pod is. [`MirrorApi`] sends the static pods' statuses to their mirrors.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, Node, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::static_pods::{MIRROR_ANNOTATION, annotation};
use crate::api::{BoxFuture, ClusterApi};

/// What the pod watch saw of mirror pods, passed on by the watch loop.
#[derive(Debug)]
pub(crate) enum Seen {
    /// A (re)list begins: what follows up to `Listed` is all there is.
    Relist,
    /// A mirror pod as the API has it now.
    Applied(Pod),
    /// A mirror pod deleted.
    Deleted(Pod),
    /// The (re)list is complete.
    Listed,
}

/// The static pods' last statuses and the UIDs of their mirrors, by static pod UID.
#[derive(Debug, Default)]
pub(crate) struct Mirrors(Mutex<HashMap<String, Entry>>);

#[derive(Debug, Default)]
struct Entry {
    /// The mirror's UID once it exists.
    mirror: Option<String>,
    /// The static pod's last status (the `status` of the worker's patch).
    status: Option<serde_json::Value>,
}

impl Mirrors {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Static pod `hash` has no mirror now: its statuses are held until the next one.
    fn detach(&self, hash: &str) {
        if let Some(e) = self.lock().get_mut(hash) {
            e.mirror = None;
        }
    }

    /// Static pod `hash`'s statuses go to mirror `uid` from now on, if its last status
    /// is still `written` (else the caller writes the newer one first).
    fn attach(&self, hash: &str, uid: &str, written: Option<&serde_json::Value>) -> bool {
        let mut map = self.lock();
        match map.get_mut(hash) {
            Some(e) if e.status.as_ref() == written => {
                e.mirror = Some(uid.to_owned());
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// Declares the static pods (by UID); the others' entries go.
    pub(crate) fn set_static(&self, uids: &[String]) {
        let mut map = self.lock();
        map.retain(|uid, _| uids.contains(uid));
        for uid in uids {
            map.entry(uid.clone()).or_default();
        }
    }
}

/// A [`ClusterApi`] whose status writes for static pods go to their mirror pods; a
/// static pod's status is kept until its mirror exists (and written to each new mirror).
/// A static pod is never deleted in the API by its worker: its file decides.
pub(crate) struct MirrorApi {
    pub inner: Arc<dyn ClusterApi>,
    pub mirrors: Arc<Mirrors>,
}

/// The `metadata.uid` of a status patch.
fn patch_uid(patch: &serde_json::Value) -> Option<&str> {
    patch.pointer("/metadata/uid").and_then(|u| u.as_str())
}

impl ClusterApi for MirrorApi {
    fn patch_pod_status<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
        mut patch: serde_json::Value,
    ) -> BoxFuture<'a, Result<(), kube::Error>> {
        Box::pin(async move {
            let target = patch_uid(&patch).and_then(|uid| {
                let mut map = self.mirrors.lock();
                let entry = map.get_mut(uid)?;
                entry.status = patch.get("status").cloned();
                Some(entry.mirror.clone())
            });
            match target {
                // Not a static pod.
                None => self.inner.patch_pod_status(ns, name, patch).await,
                // Kept for the mirror to come.
                Some(None) => Ok(()),
                Some(Some(mirror)) => {
                    patch["metadata"]["uid"] = mirror.into();
                    match self.inner.patch_pod_status(ns, name, patch).await {
                        // The mirror went (gone, or another UID under its name: 409, or
                        // 422 "uid: field is immutable"); its replacement gets the status.
                        Err(kube::Error::Api(e))
                            if e.code == 404 || e.code == 409 || e.code == 422 =>
                        {
                            Ok(())
                        }
                        other => other,
                    }
                }
            }
        })
    }

    fn delete_pod<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
        params: DeleteParams,
    ) -> BoxFuture<'a, Result<(), kube::Error>> {
        let is_static = params
            .preconditions
            .as_ref()
            .and_then(|p| p.uid.as_ref())
            .is_some_and(|uid| self.mirrors.lock().contains_key(uid));
        if is_static {
            return Box::pin(async { Ok(()) });
        }
        self.inner.delete_pod(ns, name, params)
    }

    fn create_event<'a>(&'a self, ns: &'a str, e: Event) -> BoxFuture<'a, Result<(), kube::Error>> {
        self.inner.create_event(ns, e)
    }

    fn patch_event<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
        patch: serde_json::Value,
    ) -> BoxFuture<'a, Result<(), kube::Error>> {
        self.inner.patch_event(ns, name, patch)
    }

    fn config_map<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<ConfigMap>, kube::Error>> {
        self.inner.config_map(ns, name)
    }

    fn secret<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Secret>, kube::Error>> {
        self.inner.secret(ns, name)
    }

    fn request_token<'a>(
        &'a self,
        ns: &'a str,
        account: &'a str,
        request: TokenRequest,
    ) -> BoxFuture<'a, Result<TokenRequest, kube::Error>> {
        self.inner.request_token(ns, account, request)
    }

    fn claim<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<PersistentVolumeClaim>, kube::Error>> {
        self.inner.claim(ns, name)
    }

    fn volume<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<PersistentVolume, kube::Error>> {
        self.inner.volume(name)
    }

    fn services<'a>(&'a self, ns: &'a str) -> BoxFuture<'a, Result<Vec<Service>, kube::Error>> {
        self.inner.services(ns)
    }
}

/// What [`run`] works with.
pub(crate) struct Parts {
    pub client: Client,
    pub node: String,
    pub mirrors: Arc<Mirrors>,
    /// The static pods, as the file source reads them.
    pub statics: watch::Receiver<Vec<Pod>>,
    /// Mirror pods seen by the pod watch.
    pub seen: mpsc::UnboundedReceiver<Seen>,
    /// How often everything is checked again (failed calls are retried then).
    pub every: Duration,
}

/// Keeps the mirror pods in line with the static pods until `shutdown`.
pub(crate) async fn run(parts: Parts, shutdown: CancellationToken) {
    let Parts {
        client,
        node,
        mirrors,
        mut statics,
        mut seen,
        every,
    } = parts;
    let mut owner: Option<OwnerReference> = None;
    // Mirror pods by namespace/name, as the watch shows them; `listing` during a relist.
    let mut known = Known::new();
    let mut listing: Option<Known> = None;
    loop {
        if owner.is_none() {
            owner = node_owner(&client, &node).await;
        }
        let desired = statics.borrow_and_update().clone();
        if let Some(owner) = &owner {
            reconcile(&client, owner, &mirrors, &desired, &mut known).await;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
            r = statics.changed() => if r.is_err() { return },
            event = seen.recv() => match event {
                None => return,
                Some(event) => take(event, &mut known, &mut listing),
            },
        }
        // Take in what else the watch sent before acting on it.
        while let Ok(event) = seen.try_recv() {
            take(event, &mut known, &mut listing);
        }
    }
}

type Known = BTreeMap<(String, String), Pod>;

/// Follows the watch: `known` the mirror pods, `listing` those of a relist under way.
fn take(event: Seen, known: &mut Known, listing: &mut Option<Known>) {
    let key = |p: &Pod| (p.namespace().unwrap_or_default(), p.name_any());
    match event {
        Seen::Relist => *listing = Some(BTreeMap::new()),
        Seen::Applied(pod) => {
            let into = listing.as_mut().unwrap_or(known);
            into.insert(key(&pod), pod);
        }
        Seen::Deleted(pod) => {
            known.remove(&key(&pod));
        }
        Seen::Listed => *known = listing.take().unwrap_or_default(),
    }
}

/// The Node as the owner of its mirror pods, as the kubelet makes them.
async fn node_owner(client: &Client, node: &str) -> Option<OwnerReference> {
    match Api::<Node>::all(client.clone()).get(node).await {
        Ok(n) => Some(OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: node.to_owned(),
            uid: n.uid().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: None,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the node for its mirror pods; retrying");
            None
        }
    }
}

/// One round: a mirror for every static pod, none for anything else.
async fn reconcile(
    client: &Client,
    owner: &OwnerReference,
    mirrors: &Mirrors,
    desired: &[Pod],
    known: &mut Known,
) {
    let mut wanted = std::collections::HashSet::new();
    for pod in desired {
        let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
        let hash = pod.uid().unwrap_or_default();
        wanted.insert((ns.clone(), name.clone()));
        match known.get(&(ns.clone(), name.clone())) {
            Some(m)
                if annotation(m, MIRROR_ANNOTATION) == Some(hash.as_str())
                    && m.metadata.deletion_timestamp.is_none() =>
            {
                adopt(client, mirrors, &hash, m).await;
            }
            // Stale, or deleted by someone: gone now, made again once the watch says so.
            Some(m) => {
                mirrors.detach(&hash);
                delete(client, m).await;
            }
            None => {
                mirrors.detach(&hash);
                // Known at once, so that the next round does not make it twice.
                if let Some(created) = create(client, owner, mirrors, pod).await {
                    known.insert((ns, name), created);
                }
            }
        }
    }
    for (key, m) in known.iter() {
        if !wanted.contains(key) {
            tracing::info!(pod = %key.1, "deleting a mirror pod whose static pod is gone");
            delete(client, m).await;
        }
    }
}

async fn create(
    client: &Client,
    owner: &OwnerReference,
    mirrors: &Mirrors,
    pod: &Pod,
) -> Option<Pod> {
    let hash = pod.uid().unwrap_or_default();
    let mut mirror = pod.clone();
    mirror.metadata.uid = None;
    mirror.metadata.resource_version = None;
    mirror.metadata.owner_references = Some(vec![owner.clone()]);
    mirror
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(MIRROR_ANNOTATION.into(), hash.clone());
    let ns = pod.namespace().unwrap_or_default();
    match Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &mirror)
        .await
    {
        Ok(created) => {
            tracing::info!(pod = %created.name_any(), "mirror pod created");
            adopt(client, mirrors, &hash, &created).await;
            Some(created)
        }
        Err(e) => {
            tracing::warn!(pod = %pod.name_any(), error = %e, "cannot create the mirror pod");
            None
        }
    }
}

/// Points static pod `hash`'s status writes at `mirror`, once it holds the last status.
async fn adopt(client: &Client, mirrors: &Mirrors, hash: &str, mirror: &Pod) {
    let Some(uid) = mirror.uid() else { return };
    let ns = mirror.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    loop {
        let status = {
            let map = mirrors.lock();
            match map.get(hash) {
                None => return,
                Some(e) if e.mirror.as_deref() == Some(uid.as_str()) => return,
                Some(e) => e.status.clone(),
            }
        };
        if let Some(status) = &status {
            let patch = serde_json::json!({ "metadata": { "uid": uid }, "status": status });
            if let Err(e) = api
                .patch_status(
                    &mirror.name_any(),
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await
            {
                tracing::warn!(pod = %mirror.name_any(), error = %e, "cannot write the mirror pod's status");
                return;
            }
        }
        // Written while no newer status came: from now on the worker writes there.
        if mirrors.attach(hash, &uid, status.as_ref()) {
            return;
        }
    }
}

async fn delete(client: &Client, mirror: &Pod) {
    let ns = mirror.namespace().unwrap_or_default();
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: mirror.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match Api::<Pod>::namespaced(client.clone(), &ns)
        .delete(&mirror.name_any(), &params)
        .await
    {
        Ok(_) => tracing::info!(pod = %mirror.name_any(), "mirror pod deleted"),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(e) => {
            tracing::warn!(pod = %mirror.name_any(), error = %e, "cannot delete the mirror pod")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::testing::MemoryApi;

    fn status(phase: &str) -> serde_json::Value {
        serde_json::json!({ "metadata": { "uid": "static-1" }, "status": { "phase": phase } })
    }

    #[tokio::test]
    async fn a_static_pod_s_status_waits_for_its_mirror_and_goes_there() {
        let memory = Arc::new(MemoryApi::default());
        let mirrors = Arc::new(Mirrors::default());
        let api = MirrorApi {
            inner: memory.clone(),
            mirrors: mirrors.clone(),
        };
        mirrors.set_static(&["static-1".to_owned()]);
        api.patch_pod_status("default", "p-node", status("Pending"))
            .await
            .expect("held");
        assert!(
            memory.statuses().is_empty(),
            "no mirror yet: nothing written"
        );
        // The mirror holds a status other than the last: not attached.
        let pending = serde_json::json!({ "phase": "Pending" });
        assert!(!mirrors.attach("static-1", "mirror-1", None));
        assert!(mirrors.attach("static-1", "mirror-1", Some(&pending)));
        api.patch_pod_status("default", "p-node", status("Running"))
            .await
            .expect("written");
        memory.with(|w| {
            assert_eq!(w.status_uids, [Some("mirror-1".to_owned())]);
            assert_eq!(w.statuses[0].1["phase"], "Running");
        });
        // Detached (the mirror was deleted): held again.
        mirrors.detach("static-1");
        api.patch_pod_status("default", "p-node", status("Failed"))
            .await
            .expect("held");
        assert_eq!(memory.statuses().len(), 1);
        // Other pods' statuses pass as they are; a static pod is never deleted in the API.
        let other = serde_json::json!({ "metadata": { "uid": "api-9" }, "status": {} });
        api.patch_pod_status("default", "q", other)
            .await
            .expect("written");
        memory.with(|w| assert_eq!(w.status_uids[1].as_deref(), Some("api-9")));
        let by_uid = |uid: &str| DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        api.delete_pod("default", "p-node", by_uid("static-1"))
            .await
            .expect("no-op");
        api.delete_pod("default", "q", by_uid("api-9"))
            .await
            .expect("deleted");
        memory.with(|w| assert_eq!(w.deleted, ["q"]));
        // A static pod no longer declared is an ordinary write (its UID precondition
        // then fails in the API).
        mirrors.set_static(&[]);
        api.patch_pod_status("default", "p-node", status("Failed"))
            .await
            .expect("passed on");
        memory.with(|w| assert_eq!(w.status_uids[2].as_deref(), Some("static-1")));
    }
}
