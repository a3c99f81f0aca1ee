//! Where the `wasmtime serve` peers listen: in a pod of their own, a network namespace
//! attached to the krustlet node's bridge by the node's own CNI configuration and
//! plugins (`bridge` with `host-local`: a veth on the bridge, an address of the node's
//! pod CIDR), as a container runtime attaches a container's sandbox. The load then
//! reaches a peer over the same path as it reaches a krustlet pod: the bridge, its
//! netfilter hooks and a veth. (Until 2026-12 the peers listened on the host's
//! loopback, which spared them the bridge: about a sixth of the pod's CPU samples under
//! load were the bridge's.)

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use e2e::PodNet;
use network::cni::{Attachment, Cni, RuntimeSettings};

/// The sandbox ID the peers' attachment is known by (to `host-local`, as a pod's).
const PEER_ID: &str = "bench-http-peer";

/// The peers' network namespace, attached to the node's bridge; [`PeerNet::detach`]
/// undoes it (what a failed run leaves, [`PodNet`]'s cleanup removes).
pub struct PeerNet {
    cni: Cni,
    attachment: Attachment,
    /// The peers' address on the bridge.
    pub ip: IpAddr,
}

impl PeerNet {
    /// A namespace pinned under `net`'s directory, attached with `net`'s configuration
    /// and an address of `pod_cidr`.
    pub async fn attach(net: &PodNet, pod_cidr: &str) -> anyhow::Result<Self> {
        let path = net.dir.join("netns").join(PEER_ID);
        let _ = network::netns::remove(&path);
        // The namespace stays pinned when the thread that made it goes.
        drop(network::NetNs::create(&path).await?);
        let cni = Cni {
            conf_dir: net.dir.join("net.d"),
            bin_dirs: vec![net.cni_bin().into()],
            cache_dir: net.dir.join("peer-cni"),
            timeout: Duration::from_secs(30),
            // A container runtime execs the plugins.
            in_process: false,
        };
        let attachment = Attachment {
            container_id: PEER_ID.to_owned(),
            netns: path,
            args: Vec::new(),
        };
        let settings = RuntimeSettings {
            pod_cidrs: vec![pod_cidr.to_owned()],
            port_mappings: Vec::new(),
        };
        let attached = cni
            .add(&attachment, &settings)
            .await
            .context("attaching the peers' namespace to the bridge")?;
        let ip = *attached
            .ips
            .first()
            .context("the bridge plugin gave no address")?;
        Ok(Self {
            cni,
            attachment,
            ip,
        })
    }

    /// `program` run inside the namespace (`nsenter` execs it: the child's PID is the
    /// program's), pinned to `cpus` when given.
    pub fn command(&self, program: &Path, cpus: Option<&str>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.attachment.netns.display()));
        if let Some(cpus) = cpus {
            cmd.args(["taskset", "-c", cpus]);
        }
        cmd.arg(program);
        cmd
    }

    /// Detaches and unpins the namespace (its servers stopped first).
    pub async fn detach(self) -> anyhow::Result<()> {
        self.cni.del(&self.attachment).await?;
        network::netns::remove(&self.attachment.netns)?;
        Ok(())
    }
}
