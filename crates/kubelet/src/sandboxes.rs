//! The sandboxes of the pods this node runs: pod workers record each one while it is up,
//! the kubelet API (`/portForward`) looks them up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A pod's sandbox as the runtime reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSandbox {
    /// The pod's UID.
    pub uid: String,
    /// The runtime's ID of the sandbox.
    pub id: String,
}

/// `(namespace, pod name)` → its sandbox.
type Map = HashMap<(String, String), PodSandbox>;

/// The sandboxes that are up; cheap to clone (one shared index).
#[derive(Debug, Clone, Default)]
pub struct SandboxIndex(Arc<Mutex<Map>>);

impl SandboxIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, Map> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The sandbox of pod `namespace/name`, if it is up on this node.
    #[must_use]
    pub fn get(&self, namespace: &str, name: &str) -> Option<PodSandbox> {
        self.lock()
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// How many pods have a sandbox up (for `kubelet_running_pods`).
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no pod has a sandbox up.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Records that pod `namespace/name` has `sandbox` up.
    pub(crate) fn set(&self, namespace: &str, name: &str, sandbox: PodSandbox) {
        self.lock()
            .insert((namespace.to_owned(), name.to_owned()), sandbox);
    }

    /// Forgets the sandbox of pod `namespace/name` with `uid` (another pod of the same
    /// name may have come since, and keeps its own).
    pub(crate) fn forget(&self, namespace: &str, name: &str, uid: &str) {
        let mut map = self.lock();
        let key = (namespace.to_owned(), name.to_owned());
        if map.get(&key).is_some_and(|s| s.uid == uid) {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_of_the_same_name_keeps_its_own_sandbox() {
        let index = SandboxIndex::default();
        let sandbox = |uid: &str| PodSandbox {
            uid: uid.to_owned(),
            id: format!("sb-{uid}"),
        };
        index.set("ns", "web", sandbox("old"));
        index.set("ns", "web", sandbox("new"));
        // The old pod's worker ends after the new one started.
        index.forget("ns", "web", "old");
        assert_eq!(index.get("ns", "web"), Some(sandbox("new")));
        index.forget("ns", "web", "new");
        assert_eq!(index.get("ns", "web"), None);
    }
}
