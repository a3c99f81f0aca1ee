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

    /// Records that `container`'s run logging in `logs.dir` stopped, unless a newer pod
    /// of the same name has taken the entry meanwhile (its directory differs).
    pub(crate) fn finish(&self, namespace: &str, name: &str, container: &str, logs: ContainerLogs) {
        let mut map = self.lock();
        let pod = map
            .entry((namespace.to_owned(), name.to_owned()))
            .or_default();
        if pod
            .get(container)
            .is_none_or(|current| current.dir == logs.dir)
        {
            pod.insert(container.to_owned(), logs);
        }
    }

    /// Forgets pod `namespace/name` whose directory is `pod_dir` (it is gone). A newer
    /// pod of the same name (a changed static pod, a StatefulSet's next pod) logs under
    /// its own directory and is kept.
    pub(crate) fn forget(&self, namespace: &str, name: &str, pod_dir: &std::path::Path) {
        let mut map = self.lock();
        let key = (namespace.to_owned(), name.to_owned());
        if map
            .get(&key)
            .is_some_and(|c| c.values().all(|l| l.dir.starts_with(pod_dir)))
        {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logs(dir: &str) -> ContainerLogs {
        ContainerLogs {
            dir: PathBuf::from(dir),
            restart_count: 0,
            running: true,
        }
    }

    #[test]
    fn a_gone_pod_does_not_take_the_logs_of_its_successor_of_the_same_name() {
        let index = LogIndex::default();
        index.set("ns", "p", "c", logs("/d/pods/ns_p_old/c"));
        // The successor (another UID) starts before the old pod's clean-up runs.
        index.set("ns", "p", "c", logs("/d/pods/ns_p_new/c"));
        // The old run's last record does not take the successor's entry.
        index.finish("ns", "p", "c", logs("/d/pods/ns_p_old/c"));
        assert_eq!(
            index.get("ns", "p", "c").map(|l| l.dir),
            Some(PathBuf::from("/d/pods/ns_p_new/c"))
        );
        index.forget("ns", "p", std::path::Path::new("/d/pods/ns_p_old"));
        assert!(
            index.get("ns", "p", "c").is_some(),
            "the successor's logs stay"
        );
        index.forget("ns", "p", std::path::Path::new("/d/pods/ns_p_new"));
        assert!(index.get("ns", "p", "c").is_none());
    }
}
