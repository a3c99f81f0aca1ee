//! A host: a network namespace of the local cluster's hosts' LAN standing for a machine
//! of its own (`hack/cluster host-up`, see hack/hosts.sh), where a test runs a krustlet
//! node ([`crate::KrustletNode::start_on`]). Its pods get the node's podCIDR on a bridge
//! of the host's; traffic to other hosts' pods leaves over the LAN and is routed by their
//! podCIDRs; the host's own kube-proxy translates ClusterIPs. Removed when dropped.

use anyhow::{Context, Result};

use crate::cluster::{cluster_lines, value};

/// A host made by `hack/cluster host-up`; `hack/cluster host-down` when dropped.
pub struct Host {
    /// The node name the host is made for.
    pub node: String,
    /// Its address on the LAN: the node's `--node-ip` and `--address`.
    pub ip: String,
    /// Its network namespace (`nsenter --net=...`).
    pub netns: String,
    flags: Vec<String>,
}

impl Host {
    /// Makes (or finds) the host of node `node`.
    ///
    /// # Errors
    /// When the cluster is not up or the namespace cannot be made.
    pub fn up(node: &str) -> Result<Self> {
        let lines = cluster_lines(&["host-up", node])?;
        Ok(Self {
            node: node.to_owned(),
            ip: value(&lines, "HOST_IP")?,
            netns: value(&lines, "NETNS")?,
            flags: vec![
                "--cni-conf-dir".into(),
                value(&lines, "CNI_CONF_DIR")?,
                "--cni-bin-dir".into(),
                value(&lines, "CNI_BIN_DIR")?,
                "--netns-dir".into(),
                value(&lines, "NETNS_DIR")?,
            ],
        })
    }

    /// The krustlet flags of the host's pod network.
    #[must_use]
    pub fn flags(&self) -> &[String] {
        &self.flags
    }

    /// Once the node registered: routes to its podCIDR from the machine and the other
    /// hosts, and the host's kube-proxy, synced. The podCIDR.
    ///
    /// # Errors
    /// When the node gets no podCIDR within two minutes or kube-proxy does not sync.
    pub fn wire(&self) -> Result<String> {
        value(&cluster_lines(&["host-wire", &self.node])?, "POD_CIDR")
    }

    /// Unplugs the host from the LAN: what it sends and what is sent to it is lost, as
    /// with a machine that died.
    ///
    /// # Errors
    /// When the link cannot be taken down.
    pub fn cut(&self) -> Result<()> {
        cluster_lines(&["host-cut", &self.node]).context("hack/cluster host-cut")?;
        Ok(())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = cluster_lines(&["host-down", &self.node]);
    }
}
