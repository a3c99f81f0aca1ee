//! Where each container's logs are on this node: pod workers record every run, the
//! kubelet API (`/containerLogs`) looks them up.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Where one container's logs are and whether it is running now.
#[derive(Debug, Clone)]
pub struct ContainerLogs {
    /// Directory holding `<restart count>.log` files.
    pub dir: PathBuf,
    /// Restart count of the current (or last) run.
    pub restart_count: i32,
    /// Whether the current run is still going (a `follow` keeps reading while it is).
    pub running: bool,
}

impl ContainerLogs {
    /// The log file of the current run, or of the one before it (`previous`).
    #[must_use]
    pub fn path(&self, previous: bool) -> Option<PathBuf> {
        let n = if previous {
            self.restart_count - 1
        } else {
            self.restart_count
        };
        (n >= 0).then(|| self.dir.join(format!("{n}.log")))
    }
}

/// `(namespace, pod name)` → container name → its logs.
type Map = HashMap<(String, String), HashMap<String, ContainerLogs>>;

/// The logs of the containers this node runs; cheap to clone (one shared index).
#[derive(Debug, Clone, Default)]
pub struct LogIndex(Arc<Mutex<Map>>);

impl LogIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, Map> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The logs of `container` in pod `namespace/name`, if this node runs it.
    #[must_use]
    pub fn get(&self, namespace: &str, name: &str, container: &str) -> Option<ContainerLogs> {
        self.lock()
            .get(&(namespace.to_owned(), name.to_owned()))
            .and_then(|c| c.get(container).cloned())
    }

    /// Records where `container` of pod `namespace/name` logs now.
    pub(crate) fn set(&self, namespace: &str, name: &str, container: &str, logs: ContainerLogs) {
        self.lock()
            .entry((namespace.to_owned(), name.to_owned()))
            .or_default()
            .insert(container.to_owned(), logs);
    }

    /// Forgets pod `namespace/name` (it is gone).
    pub(crate) fn forget(&self, namespace: &str, name: &str) {
        self.lock().remove(&(namespace.to_owned(), name.to_owned()));
    }
}
