//! The status writer of one pod: what the worker last asked to report, written to the
//! API server, and written again with back-off until it lands, so that a status reached
//! while the API server is away (a container that finished, a restart) is reported once
//! it is back instead of being lost. A newer status replaces a pending one.

use std::time::Duration;

use std::sync::Arc;

use tokio::sync::watch;

use crate::api::ClusterApi;

/// First wait after a failed write; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(500);
/// Longest wait between two tries.
const RETRY_MAX: Duration = Duration::from_secs(10);

/// The worker's side: ask for a status to be reported, wait until it is.
#[derive(Debug)]
pub(crate) struct StatusWriter {
    /// Where the last status asked for is kept for the kubelet API's `/pods`.
    book: StatusBook,
    uid: String,
    wanted: watch::Sender<Option<serde_json::Value>>,
    written: watch::Receiver<Option<serde_json::Value>>,
}

impl StatusWriter {
    /// Starts the writer of pod `ns/name` (of UID `uid`, a precondition of every write,
    /// so that a late write never lands on another pod of the same name).
    pub(crate) fn start(
        api: Arc<dyn ClusterApi>,
        book: StatusBook,
        ns: String,
        name: String,
        uid: Option<String>,
    ) -> Self {
        let (wanted, wanted_rx) = watch::channel(None);
        let (written_tx, written) = watch::channel(None);
        let key = uid.clone().unwrap_or_default();
        tokio::spawn(write(api, ns, name, uid, wanted_rx, written_tx));
        Self {
            book,
            uid: key,
            wanted,
            written,
        }
    }

    /// Asks for `status` (a `PodStatus` as JSON) to be reported; returns at once.
    pub(crate) fn post(&self, status: serde_json::Value) {
        self.book.put(&self.uid, &status);
        self.wanted.send_if_modified(|v| {
            let new = v.as_ref() != Some(&status);
            if new {
                *v = Some(status);
            }
            new
        });
    }

    /// Waits up to `bound` until the last status asked for is written.
    pub(crate) async fn flush(&mut self, bound: Duration) {
        let wanted = self.wanted.borrow().clone();
        let _ = tokio::time::timeout(bound, self.written.wait_for(|w| *w == wanted)).await;
    }
}

/// The last status each pod's worker reported, by pod UID: what the kubelet API's
/// `/pods` shows (in standalone mode, the only place a status goes).
#[derive(Debug, Clone, Default)]
pub struct StatusBook(Arc<std::sync::Mutex<std::collections::HashMap<String, serde_json::Value>>>);

impl StatusBook {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, serde_json::Value>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn put(&self, uid: &str, status: &serde_json::Value) {
        self.lock().insert(uid.to_owned(), status.clone());
    }

    /// The last status of pod `uid`.
    pub(crate) fn get(&self, uid: &str) -> Option<serde_json::Value> {
        self.lock().get(uid).cloned()
    }

    /// Forgets pod `uid` (gone from the node).
    pub(crate) fn forget(&self, uid: &str) {
        self.lock().remove(uid);
    }
}

async fn write(
    api: Arc<dyn ClusterApi>,
    ns: String,
    name: String,
    uid: Option<String>,
    mut wanted: watch::Receiver<Option<serde_json::Value>>,
    written: watch::Sender<Option<serde_json::Value>>,
) {
    let mut backoff = RETRY_FIRST;
    let mut open = true;
    loop {
        let value = wanted.borrow_and_update().clone();
        if let Some(status) = value
            .clone()
            .filter(|v| *written.borrow() != Some(v.clone()))
        {
            let patch = match &uid {
                Some(uid) => serde_json::json!({ "metadata": { "uid": uid }, "status": status }),
                None => serde_json::json!({ "status": status }),
            };
            match api.patch_pod_status(&ns, &name, patch).await {
                Ok(()) => {
                    written.send_replace(value);
                    backoff = RETRY_FIRST;
                }
                // Gone, or another pod of the same name: nothing left to report.
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return,
                Err(e) => {
                    tracing::warn!(pod = %name, error = %e, "cannot update pod status; retrying");
                    if open {
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            r = wanted.changed() => open = r.is_ok(),
                        }
                    } else {
                        tokio::time::sleep(backoff).await;
                    }
                    backoff = (backoff * 2).min(RETRY_MAX);
                    continue;
                }
            }
        }
        if !open || wanted.changed().await.is_err() {
            return;
        }
    }
}
