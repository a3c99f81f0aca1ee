//! A pod network of a test node's own: a bridge, a CNI configuration list and a
//! directory of pinned namespaces, all removed when dropped. One bridge carries one
//! node's pod CIDR (the bridge plugin gives a bridge one gateway address), so every
//! networked test node gets its own, named after it.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use crate::cluster::cluster_env;
use crate::root;

/// A test node's pod network; [`PodNet::flags`] are the krustlet flags that use it.
pub struct PodNet {
    /// The bridge's name (at most 15 characters).
    pub bridge: String,
    /// `--cni-conf-dir`, `--netns-dir` and host-local's data live under it.
    pub dir: PathBuf,
    cni_bin: String,
}

impl PodNet {
    /// Writes the configuration of node `node`'s network (bridge `kr-<hash>`, routes
    /// only to the cluster and Service CIDRs, no masquerade, host ports by portmap).
    ///
    /// # Errors
    /// When the cluster (its CNI plugins) is not set up or the files cannot be written.
    pub fn for_node(node: &str) -> Result<Self> {
        Self::make(node, None)
    }

    /// [`PodNet::for_node`] with the pods' addresses from `subnet` instead of the node's
    /// pod CIDR (a `/24`, 254 pods), for the density benchmark's thousands of pods.
    ///
    /// # Errors
    /// As [`PodNet::for_node`].
    pub fn for_node_in(node: &str, subnet: &str) -> Result<Self> {
        Self::make(node, Some(subnet))
    }

    fn make(node: &str, subnet: Option<&str>) -> Result<Self> {
        let env = cluster_env()?;
        let cni_bin = env
            .get("CNI_BIN_DIR")
            .cloned()
            .context("hack/cluster env names no CNI_BIN_DIR (run hack/build-tools)")?;
        let cluster_cidr = env
            .get("CLUSTER_CIDR")
            .cloned()
            .unwrap_or_else(|| "10.244.0.0/16".into());
        let service_cidr = env
            .get("SERVICE_CIDR")
            .cloned()
            .unwrap_or_else(|| "10.0.0.0/24".into());
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        node.hash(&mut h);
        let bridge = format!("kr-{:08x}", h.finish() as u32);
        let dir = root().join("target/e2e").join(format!("{node}.net"));
        let old = Self {
            bridge: bridge.clone(),
            dir: dir.clone(),
            cni_bin: cni_bin.clone(),
        };
        old.clean();
        std::mem::forget(old);
        std::fs::create_dir_all(dir.join("net.d"))?;
        std::fs::create_dir_all(dir.join("netns"))?;
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "krustlet",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": bridge,
                    "isGateway": true,
                    "isDefaultGateway": false,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "capabilities": { "ipRanges": subnet.is_none() },
                    "ipam": {
                        "type": "host-local",
                        "dataDir": dir.join("ipam"),
                        "ranges": subnet.map(|s| vec![vec![serde_json::json!({ "subnet": s })]]),
                        "routes": [{ "dst": cluster_cidr }, { "dst": service_cidr }],
                    },
                },
                {
                    "type": "portmap",
                    "capabilities": { "portMappings": true },
                    "backend": "iptables",
                    "snat": true,
                },
            ],
        });
        std::fs::write(
            dir.join("net.d/10-krustlet.conflist"),
            serde_json::to_vec_pretty(&conflist)?,
        )?;
        Ok(Self {
            bridge,
            dir,
            cni_bin,
        })
    }

    /// The krustlet flags of this network.
    #[must_use]
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--cni-conf-dir".into(),
            self.dir.join("net.d").display().to_string(),
            "--cni-bin-dir".into(),
            self.cni_bin.clone(),
            "--netns-dir".into(),
            self.dir.join("netns").display().to_string(),
        ]
    }

    /// Where the CNI plugins are (`--cni-bin-dir`).
    #[must_use]
    pub fn cni_bin(&self) -> &str {
        &self.cni_bin
    }

    /// The pinned namespace of the pod of `uid`.
    #[must_use]
    pub fn netns(&self, uid: &str) -> PathBuf {
        self.dir.join("netns").join(format!("krustlet-{uid}"))
    }

    /// The addresses host-local holds for pods now.
    #[must_use]
    pub fn leased(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.join("ipam/krustlet"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Unpins what the node left (after it stopped) and removes the bridge: the kernel
    /// then removes the namespaces and their veths.
    fn clean(&self) {
        if let Ok(dir) = std::fs::read_dir(self.dir.join("netns")) {
            for e in dir.filter_map(|e| e.ok()) {
                let _ = Command::new("umount").arg("-l").arg(e.path()).status();
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = Command::new("ip")
            .args(["link", "delete", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for PodNet {
    fn drop(&mut self) {
        self.clean();
    }
}
