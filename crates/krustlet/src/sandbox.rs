//! Pod sandboxes with a pod network: a network namespace per pod, pinned at
//! `<netns-dir>/krustlet-<pod UID>`, wired by the CNI plugins of `--cni-conf-dir`. The
//! pod's thread inside the namespace makes its sockets (see [`network::netns`]).
//!
//! A sandbox outlives the agent: the pinned namespace and the CNI result cache stay, and
//! a restarted agent enters the namespace again, so the pod keeps its address. Sandboxes
//! of pods that are gone are removed at start (the kubelet asks, from
//! `list_pod_sandboxes`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubelet::runtime::{Sandbox, SandboxConfig};
use network::NetNs;
use network::cni::{Attachment, Cni, PortMapping, RuntimeSettings};
use tokio::sync::watch;

/// Prefix of the pinned namespaces' file names.
const PREFIX: &str = "krustlet-";

/// How long a new sandbox waits for the node's pod CIDR (assigned by the controller
/// manager shortly after the node registers) before it fails, to be tried again.
const CIDR_WAIT: Duration = Duration::from_secs(30);

/// The node's pod network.
#[derive(Debug)]
pub struct PodNetwork {
    /// The plugins and their configuration.
    pub cni: Cni,
    /// Where namespaces are pinned (`/run/netns`, where `ip netns` sees them).
    pub netns_dir: PathBuf,
    /// The node's pod CIDRs, from its `spec.podCIDRs`.
    cidrs: watch::Sender<Vec<String>>,
    /// The pods' namespaces, by pod UID.
    live: Mutex<HashMap<String, Arc<NetNs>>>,
}

impl PodNetwork {
    /// A pod network of `cni`, pinning namespaces under `netns_dir`.
    #[must_use]
    pub fn new(cni: Cni, netns_dir: PathBuf) -> Self {
        Self {
            cni,
            netns_dir,
            cidrs: watch::channel(Vec::new()).0,
            live: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<NetNs>>> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn path(&self, uid: &str) -> PathBuf {
        self.netns_dir.join(format!("{PREFIX}{uid}"))
    }

    fn attachment(&self, uid: &str, namespace: &str, name: &str) -> Attachment {
        Attachment {
            container_id: uid.to_owned(),
            netns: self.path(uid),
            args: vec![
                ("K8S_POD_NAMESPACE".into(), namespace.to_owned()),
                ("K8S_POD_NAME".into(), name.to_owned()),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), uid.to_owned()),
                ("K8S_POD_UID".into(), uid.to_owned()),
            ],
        }
    }

    /// The node's pod CIDRs changed.
    pub fn set_pod_cidrs(&self, cidrs: Vec<String>) {
        self.cidrs.send_if_modified(|c| {
            let changed = *c != cidrs;
            *c = cidrs;
            changed
        });
    }

    /// The namespace of the pod of `uid`, while its sandbox is up.
    #[must_use]
    pub fn netns(&self, uid: &str) -> Option<Arc<NetNs>> {
        self.lock().get(uid).cloned()
    }

    /// Sets up (or, after an agent restart, enters again) the pod's namespace and
    /// attaches it; its addresses.
    ///
    /// # Errors
    /// The network is not ready (no configuration, no pod CIDR yet), a plugin failed,
    /// or the namespace could not be made; nothing is left behind then.
    pub async fn up(&self, config: &SandboxConfig) -> Result<Sandbox, String> {
        let uid = &config.uid;
        if !network::cni::config::valid_name(uid) {
            return Err(format!("pod UID {uid:?} is not a plain name"));
        }
        let live = self.lock().contains_key(uid);
        if live && let Some(ips) = self.cached_ips(uid) {
            return Ok(Sandbox {
                id: uid.clone(),
                ips,
            });
        }
        let path = self.path(uid);
        // An agent restart: the pinned namespace and its cached result are still here.
        if network::netns::is_pinned(&path)
            && let Some(ips) = self.cached_ips(uid)
        {
            match NetNs::open(&path).await {
                Ok(ns) => {
                    self.lock().insert(uid.clone(), Arc::new(ns));
                    return Ok(Sandbox {
                        id: uid.clone(),
                        ips,
                    });
                }
                Err(e) => {
                    tracing::warn!(pod = %uid, error = %e, "cannot enter the pod's namespace again; making a new one")
                }
            }
        }
        // Half-made leftovers: detach and unpin before starting over.
        self.down(config.uid.as_str(), &config.namespace, &config.name)
            .await;
        let pod_cidrs = self.wait_for_cidrs().await?;
        let ns = NetNs::create(&path)
            .await
            .map_err(|e| format!("cannot create the pod's network namespace: {e}"))?;
        let att = self.attachment(uid, &config.namespace, &config.name);
        let settings = RuntimeSettings {
            pod_cidrs,
            port_mappings: config
                .port_mappings
                .iter()
                .map(|p| PortMapping {
                    host_port: p.host_port,
                    container_port: p.container_port,
                    protocol: p.protocol.clone(),
                    host_ip: p.host_ip.clone(),
                })
                .collect(),
        };
        match self.cni.add(&att, &settings).await {
            Ok(attached) => {
                self.lock().insert(uid.clone(), Arc::new(ns));
                Ok(Sandbox {
                    id: uid.clone(),
                    ips: attached.ips,
                })
            }
            Err(e) => {
                drop(ns);
                if let Err(e) = network::netns::remove(&path) {
                    tracing::warn!(pod = %uid, error = %e, "cannot unpin a failed pod namespace");
                }
                Err(format!("plugin {e}"))
            }
        }
    }

    fn cached_ips(&self, uid: &str) -> Option<Vec<IpAddr>> {
        match self.cni.cached(uid) {
            Ok(Some(a)) => Some(a.ips),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(pod = %uid, error = %e, "unreadable CNI result");
                None
            }
        }
    }

    async fn wait_for_cidrs(&self) -> Result<Vec<String>, String> {
        let mut rx = self.cidrs.subscribe();
        match tokio::time::timeout(CIDR_WAIT, rx.wait_for(|c| !c.is_empty())).await {
            Ok(Ok(c)) => Ok(c.clone()),
            _ => Err("network is not ready: the node has no pod CIDR (spec.podCIDR) yet".into()),
        }
    }

    /// Detaches the pod (CNI DEL), ends its thread and unpins its namespace; the
    /// kernel removes the veth with it. Failures are logged: the cache entry stays for
    /// the next start's clean-up.
    pub async fn down(&self, uid: &str, namespace: &str, name: &str) {
        if !network::cni::config::valid_name(uid) {
            return;
        }
        let ns = self.lock().remove(uid);
        let att = self.attachment(uid, namespace, name);
        let path = self.path(uid);
        if (network::netns::is_pinned(&path) || self.cached_ips(uid).is_some())
            && let Err(e) = self.cni.del(&att).await
        {
            tracing::warn!(pod = %uid, error = %e, "CNI DEL failed; the sandbox is removed at the next start");
            return;
        }
        drop(ns);
        if let Err(e) = network::netns::remove(&path) {
            tracing::warn!(pod = %uid, error = %e, "cannot unpin the pod's namespace");
        }
    }

    /// The pod UIDs with a sandbox of this node: the attachments in its CNI cache,
    /// including those of an earlier run of the agent. (Pinned namespaces are not
    /// listed: other nodes on the same machine pin theirs in the same directory.)
    #[must_use]
    pub fn list(&self) -> Vec<String> {
        let mut uids = self.cni.attached_ids();
        uids.extend(self.lock().keys().cloned());
        uids.sort();
        uids.dedup();
        uids
    }
}
