//! [`MemoryApi`]: an in-memory [`ClusterApi`] that keeps what the worker wrote (status
//! patches, events, the deletion) and serves the objects a test put in it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, PersistentVolume, PersistentVolumeClaim, Secret,
};
use kube::api::DeleteParams;
use tokio::sync::watch;
use tokio::time::Instant;

use super::lock;
use crate::api::{BoxFuture, ClusterApi, not_found};

/// An event the worker recorded.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub type_: String,
    pub reason: String,
    pub message: String,
    /// `spec.containers{name}`, or empty for the pod itself.
    pub field_path: String,
    /// When (paused test time).
    pub at: Instant,
}

/// Everything written to the API, in order.
#[derive(Debug, Default)]
pub(crate) struct Written {
    /// Each status patch that landed, with the time it did.
    pub statuses: Vec<(Instant, serde_json::Value)>,
    /// The `metadata.uid` precondition of each status patch that landed.
    pub status_uids: Vec<Option<String>>,
    pub events: Vec<Recorded>,
    /// Pods deleted (with grace 0, as the kubelet finishes a deletion).
    pub deleted: Vec<String>,
    /// Event name → its first record in `events`.
    names: HashMap<String, usize>,
}

/// An in-memory [`ClusterApi`]: it keeps what is written, serves what a test stores.
#[derive(Default)]
pub(crate) struct MemoryApi {
    written: Mutex<Written>,
    changed: watch::Sender<u64>,
    config_maps: Mutex<HashMap<String, ConfigMap>>,
    secrets: Mutex<HashMap<String, Secret>>,
    /// While true, every call fails as an unreachable API server does.
    pub down: AtomicBool,
}

impl MemoryApi {
    fn unreachable() -> kube::Error {
        kube::Error::Service(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        )))
    }

    fn write(&self, f: impl FnOnce(&mut Written)) -> Result<(), kube::Error> {
        if self.down.load(Ordering::Relaxed) {
            return Err(Self::unreachable());
        }
        f(&mut lock(&self.written));
        self.changed.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Stores a ConfigMap (by its name) for the worker to read.
    pub fn put_config_map(&self, cm: ConfigMap) {
        let name = cm.metadata.name.clone().unwrap_or_default();
        lock(&self.config_maps).insert(name, cm);
    }

    /// Stores a Secret (by its name) for the worker to read.
    pub fn put_secret(&self, secret: Secret) {
        let name = secret.metadata.name.clone().unwrap_or_default();
        lock(&self.secrets).insert(name, secret);
    }

    /// Runs `f` on what was written so far.
    pub fn with<T>(&self, f: impl FnOnce(&Written) -> T) -> T {
        f(&lock(&self.written))
    }

    /// The statuses written, in order.
    pub fn statuses(&self) -> Vec<serde_json::Value> {
        self.with(|w| w.statuses.iter().map(|(_, s)| s.clone()).collect())
    }

    /// The last status written.
    pub fn last_status(&self) -> serde_json::Value {
        self.with(|w| w.statuses.last().map(|(_, s)| s.clone()))
            .unwrap_or_default()
    }

    /// The reasons of the events recorded, in order.
    pub fn reasons(&self) -> Vec<String> {
        self.with(|w| w.events.iter().map(|e| e.reason.clone()).collect())
    }

    /// The events with `reason`.
    pub fn events(&self, reason: &str) -> Vec<Recorded> {
        self.with(|w| {
            w.events
                .iter()
                .filter(|e| e.reason == reason)
                .cloned()
                .collect()
        })
    }

    /// Waits until `done` holds of what was written, for at most `bound` of test time
    /// (which passes in no real time while the runtime idles).
    pub async fn until(&self, bound: Duration, what: &str, done: impl Fn(&Written) -> bool) {
        let mut changes = self.changed.subscribe();
        let waited = tokio::time::timeout(bound, async {
            loop {
                if self.with(&done) {
                    return;
                }
                let _ = changes.changed().await;
            }
        })
        .await;
        if waited.is_err() {
            let (reasons, last) = (self.reasons(), self.last_status());
            panic!("not within {bound:?}: {what}; events {reasons:?}; last status {last:#}");
        }
    }
}

fn ok<'a, T: Send + 'a>(r: Result<T, kube::Error>) -> BoxFuture<'a, Result<T, kube::Error>> {
    Box::pin(std::future::ready(r))
}

impl ClusterApi for MemoryApi {
    fn patch_pod_status<'a>(
        &'a self,
        _ns: &'a str,
        _name: &'a str,
        patch: serde_json::Value,
    ) -> BoxFuture<'a, Result<(), kube::Error>> {
        let status = patch.get("status").cloned().unwrap_or_default();
        let uid = patch
            .pointer("/metadata/uid")
            .and_then(|u| u.as_str())
            .map(str::to_owned);
        ok(self.write(|w| {
            w.statuses.push((Instant::now(), status));
            w.status_uids.push(uid);
        }))
    }

    fn delete_pod<'a>(
        &'a self,
        _ns: &'a str,
        name: &'a str,
        _params: DeleteParams,
    ) -> BoxFuture<'a, Result<(), kube::Error>> {
        ok(self.write(|w| w.deleted.push(name.to_owned())))
    }

    fn create_event<'a>(
        &'a self,
        _ns: &'a str,
        event: Event,
    ) -> BoxFuture<'a, Result<(), kube::Error>> {
        let name = event.metadata.name.clone().unwrap_or_default();
        let recorded = Recorded {
            type_: event.type_.unwrap_or_default(),
            reason: event.reason.unwrap_or_default(),
            message: event.message.unwrap_or_default(),
            field_path: event.involved_object.field_path.unwrap_or_default(),
            at: Instant::now(),
        };
        ok(self.write(|w| {
            w.names.insert(name, w.events.len());
            w.events.push(recorded);
        }))
    }

    fn patch_event<'a>(
        &'a self,
        _ns: &'a str,
        name: &'a str,
        _patch: serde_json::Value,
    ) -> BoxFuture<'a, Result<(), kube::Error>> {
        // A repeat: kept as one more event with the first one's fields, so that tests
        // count repeats as the API server's count field does.
        ok(self.write(|w| {
            let first = w.names.get(name).and_then(|i| w.events.get(*i)).cloned();
            if let Some(first) = first {
                w.events.push(Recorded {
                    at: Instant::now(),
                    ..first
                });
            }
        }))
    }

    fn config_map<'a>(
        &'a self,
        _ns: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<ConfigMap>, kube::Error>> {
        ok(Ok(lock(&self.config_maps).get(name).cloned()))
    }

    fn secret<'a>(
        &'a self,
        _ns: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Secret>, kube::Error>> {
        ok(Ok(lock(&self.secrets).get(name).cloned()))
    }

    fn request_token<'a>(
        &'a self,
        _ns: &'a str,
        account: &'a str,
        _request: TokenRequest,
    ) -> BoxFuture<'a, Result<TokenRequest, kube::Error>> {
        ok(Err(not_found("serviceaccounts", account)))
    }

    fn claim<'a>(
        &'a self,
        _ns: &'a str,
        _name: &'a str,
    ) -> BoxFuture<'a, Result<Option<PersistentVolumeClaim>, kube::Error>> {
        ok(Ok(None))
    }

    fn volume<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<PersistentVolume, kube::Error>> {
        ok(Err(not_found("persistentvolumes", name)))
    }

    fn services<'a>(
        &'a self,
        _ns: &'a str,
    ) -> BoxFuture<'a, Result<Vec<k8s_openapi::api::core::v1::Service>, kube::Error>> {
        ok(Ok(Vec::new()))
    }
}
