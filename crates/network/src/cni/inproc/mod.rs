//! The node's own bridge network without the plugins' processes.
//!
//! When the configuration list is the standard one (`bridge` with `host-local` addresses,
//! optionally followed by `portmap`) and the pod has no host ports, ADD and DEL are done
//! here, over netlink, with the result a CNI ADD of those plugins gives:
//! - a veth pair: `eth0` in the pod's namespace, `veth<8 hex digits>` on the bridge (up,
//!   hairpin mode if asked, the configured MTU or the kernel's default);
//! - in the pod: `lo` and `eth0` up, `arp_notify` on, the leased address with its
//!   broadcast address, and each configured route via the bridge's gateway address;
//! - the lease in host-local's own files ([`leases`]), under its lock, so that the
//!   plugins (still exec'd for a pod with host ports, or by another node on the same
//!   data directory) and the agent share one pool.
//!
//! The bridge itself, its gateway address and IPv4 forwarding are the plugin's first
//! ADD's work: while any of them is missing, [`add`] answers `None` and the plugins run
//! (and set them up). Anything else in the list (another plugin or IPAM, IPv6, masquerade,
//! a default route, VLANs, several ranges, explicit gateways) keeps the plugins too.

pub mod leases;
mod netlink;

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkInfo, LinkMessage,
};
use serde_json::{Value, json};

use super::{Attachment, Error, NetworkList, POD_INTERFACE, Result, RuntimeSettings};
use leases::{Leases, Subnet};
use netlink::Rtnl;

/// host-local's data directory when the configuration names none.
const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// The bridge plugin's `bridge` when the configuration names none.
const DEFAULT_BRIDGE: &str = "cni0";

/// What an in-process attachment does, read from a configuration list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    network: String,
    cni_version: String,
    bridge: String,
    hairpin: bool,
    mtu: Option<u32>,
    leases: PathBuf,
    subnet: Subnet,
    routes: Vec<Subnet>,
}

/// Keys of the bridge plugin's object that the in-process path knows (other keys keep
/// the plugins).
const BRIDGE_KEYS: &[&str] = &[
    "type",
    "bridge",
    "isGateway",
    "isDefaultGateway",
    "ipMasq",
    "hairpinMode",
    "capabilities",
    "ipam",
    "mtu",
];

/// Keys of host-local's object that the in-process path knows.
const IPAM_KEYS: &[&str] = &["type", "dataDir", "routes", "ranges", "subnet"];

impl Plan {
    /// The plan for `list` and a pod of `settings`; `None` when the plugins must run.
    #[must_use]
    pub fn of(list: &NetworkList, settings: &RuntimeSettings) -> Option<Self> {
        let (bridge, rest) = list.plugins.split_first()?;
        let portmap_only = rest.iter().all(|p| p.kind == "portmap");
        if bridge.kind != "bridge"
            || rest.len() > 1
            || !portmap_only
            || !settings.port_mappings.is_empty()
            || !list.cni_version.starts_with("1.")
        {
            return None;
        }
        let conf = &bridge.conf;
        if conf.keys().any(|k| !BRIDGE_KEYS.contains(&k.as_str()))
            || conf.get("isGateway") != Some(&Value::Bool(true))
            || !false_or_absent(conf.get("isDefaultGateway"))
            || !false_or_absent(conf.get("ipMasq"))
        {
            return None;
        }
        let ipam = conf.get("ipam")?.as_object()?;
        if ipam.get("type")?.as_str()? != "host-local"
            || ipam.keys().any(|k| !IPAM_KEYS.contains(&k.as_str()))
        {
            return None;
        }
        let subnet = if bridge.capabilities.contains("ipRanges") && !settings.pod_cidrs.is_empty() {
            match settings.pod_cidrs.as_slice() {
                [one] => Subnet::parse(one)?,
                _ => return None,
            }
        } else {
            configured_subnet(ipam)?
        };
        let routes = match ipam.get("routes") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(routes)) => routes
                .iter()
                .map(|r| {
                    let r = r.as_object()?;
                    if r.keys().any(|k| k != "dst") {
                        return None;
                    }
                    Subnet::parse(r.get("dst")?.as_str()?)
                })
                .collect::<Option<Vec<_>>>()?,
            Some(_) => return None,
        };
        let data_dir = match ipam.get("dataDir") {
            None | Some(Value::Null) => PathBuf::from(DEFAULT_DATA_DIR),
            Some(v) => PathBuf::from(v.as_str()?),
        };
        let mtu = match conf.get("mtu") {
            None | Some(Value::Null) => None,
            Some(v) => Some(u32::try_from(v.as_u64()?).ok()?).filter(|m| *m > 0),
        };
        Some(Self {
            network: list.name.clone(),
            cni_version: list.cni_version.clone(),
            bridge: match conf.get("bridge") {
                None => DEFAULT_BRIDGE.to_owned(),
                Some(v) => v.as_str()?.to_owned(),
            },
            hairpin: match conf.get("hairpinMode") {
                None => false,
                Some(v) => v.as_bool()?,
            },
            mtu,
            leases: data_dir,
            subnet,
            routes,
        })
    }

    fn leases(&self) -> Leases {
        Leases::new(&self.leases, &self.network)
    }
}

fn false_or_absent(v: Option<&Value>) -> bool {
    matches!(v, None | Some(Value::Bool(false)))
}

/// The one subnet of host-local's `ranges` (one set of one range with nothing but a
/// `subnet`) or of its older `subnet` key.
fn configured_subnet(ipam: &serde_json::Map<String, Value>) -> Option<Subnet> {
    match (ipam.get("ranges"), ipam.get("subnet")) {
        (Some(Value::Array(sets)), None) => match sets.as_slice() {
            [Value::Array(set)] => match set.as_slice() {
                [Value::Object(range)] if range.keys().all(|k| k == "subnet") => {
                    Subnet::parse(range.get("subnet")?.as_str()?)
                }
                _ => None,
            },
            _ => None,
        },
        (None | Some(Value::Null), Some(Value::String(s))) => Subnet::parse(s),
        _ => None,
    }
}

/// Attaches the pod as the plugins would and returns the result an ADD of them gives;
/// `Ok(None)` when the bridge is not set up yet (the plugins must run once). A failure
/// undoes what was done.
///
/// # Errors
/// The netlink requests or the lease files failed.
pub async fn add(plan: &Plan, att: &Attachment) -> Result<Option<Value>> {
    off_thread("ADD", plan, att, add_blocking).await
}

/// Detaches the pod as a DEL of the plugins would: its lease freed, its `eth0` (and with
/// it the veth's other end) deleted if the namespace is still there. Safe to repeat.
///
/// # Errors
/// The lease files or the netlink requests failed.
pub async fn del(plan: &Plan, att: &Attachment) -> Result<()> {
    off_thread("DEL", plan, att, del_blocking).await
}

/// Runs `work` for `plan` and `att` on the blocking pool (netlink requests and lease
/// files block).
async fn off_thread<T: Send + 'static>(
    command: &'static str,
    plan: &Plan,
    att: &Attachment,
    work: fn(&Plan, &Attachment) -> Result<T>,
) -> Result<T> {
    let (plan, att) = (plan.clone(), att.clone());
    let network = plan.network.clone();
    tokio::task::spawn_blocking(move || work(&plan, &att))
        .await
        .map_err(|e| fail(&network, command, e.to_string()))?
}

fn del_blocking(plan: &Plan, att: &Attachment) -> Result<()> {
    let failed = |m: String| fail(&plan.network, "DEL", m);
    plan.leases()
        .release(&att.container_id, POD_INTERFACE)
        .map_err(|e| failed(format!("releasing the address: {e}")))?;
    let Ok(ns) = crate::netns::open_pinned(&att.netns) else {
        return Ok(());
    };
    in_namespace(ns, |rtnl| match rtnl.link(POD_INTERFACE)? {
        Some(link) => rtnl.delete_link(link.index),
        None => Ok(()),
    })
    .map_err(|e| failed(format!("deleting {POD_INTERFACE}: {e}")))
}

fn fail(network: &str, command: &'static str, message: String) -> Error {
    Error::Plugin {
        plugin: "bridge (in process)".to_owned(),
        network: network.to_owned(),
        command,
        message,
    }
}

/// The bridge's index and MAC address, if it is up with the gateway address and the
/// node forwards IPv4 (the plugin's first ADD sets all of it).
fn ready_bridge(rtnl: &mut Rtnl, plan: &Plan) -> io::Result<Option<(u32, Option<String>)>> {
    let Some(bridge) = rtnl.link(&plan.bridge)? else {
        return Ok(None);
    };
    let gateway = (plan.subnet.gateway(), plan.subnet.prefix);
    let forwarding =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|s| s.trim() == "1");
    let has_gateway = rtnl.ipv4_addresses(bridge.index)?.contains(&gateway);
    Ok((bridge.up && has_gateway && forwarding).then_some((bridge.index, bridge.mac)))
}

fn add_blocking(plan: &Plan, att: &Attachment) -> Result<Option<Value>> {
    let failed = |m: String| fail(&plan.network, "ADD", m);
    let mut host = Rtnl::open().map_err(|e| failed(format!("netlink: {e}")))?;
    let Some((bridge_index, bridge_mac)) =
        ready_bridge(&mut host, plan).map_err(|e| failed(format!("the bridge: {e}")))?
    else {
        return Ok(None);
    };
    let ns = crate::netns::open_pinned(&att.netns)
        .map_err(|e| failed(format!("the pod's namespace: {e}")))?;
    let leases = plan.leases();
    let ip = leases
        .reserve(&att.container_id, POD_INTERFACE, plan.subnet)
        .map_err(|e| failed(format!("host-local: {e}")))?;
    let wired = wire(&mut host, plan, bridge_index, &ns, ip);
    match wired {
        Ok((veth, veth_mac, eth0_mac)) => Ok(Some(result(
            plan, att, ip, bridge_mac, &veth, veth_mac, eth0_mac,
        ))),
        Err(e) => {
            let _ = leases.release(&att.container_id, POD_INTERFACE);
            Err(failed(e.to_string()))
        }
    }
}

/// The veth pair and the pod's side of it; the veth's name and both MAC addresses.
/// Whatever was made is removed again on failure.
fn wire(
    host: &mut Rtnl,
    plan: &Plan,
    bridge: u32,
    ns: &OwnedFd,
    ip: Ipv4Addr,
) -> io::Result<(String, Option<String>, Option<String>)> {
    let veth = create_veth(host, plan, bridge, ns)?;
    let link = host
        .link(&veth)?
        .ok_or_else(|| io::Error::other(format!("{veth} vanished")))?;
    let configured = (|| {
        host.no_link_local(link.index)?;
        host.set_up(link.index)?;
        if plan.hairpin {
            set_hairpin(host, link.index)?;
        }
        let ns = ns.try_clone()?;
        let plan = plan.clone();
        in_namespace(ns, move |pod| configure_pod(pod, &plan, ip))
    })();
    match configured {
        Ok(eth0_mac) => Ok((veth, link.mac, eth0_mac)),
        Err(e) => {
            let _ = host.delete_link(link.index);
            Err(e)
        }
    }
}

/// `veth<random>` on the bridge (down), with its peer `eth0` made in the pod's namespace.
fn create_veth(host: &mut Rtnl, plan: &Plan, bridge: u32, ns: &OwnedFd) -> io::Result<String> {
    let mut tries = 0;
    loop {
        let mut random = [0u8; 4];
        rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())?;
        let name = format!("veth{:08x}", u32::from_be_bytes(random));
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(POD_INTERFACE.to_owned()));
        peer.attributes
            .push(LinkAttribute::NetNsFd(ns.as_fd().as_raw_fd()));
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.clone()));
        m.attributes.push(LinkAttribute::Controller(bridge));
        if let Some(mtu) = plan.mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
            peer.attributes.push(LinkAttribute::Mtu(mtu));
        }
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        let flags = netlink_packet_core::NLM_F_CREATE | netlink_packet_core::NLM_F_EXCL;
        match host.request(RouteNetlinkMessage::NewLink(m), flags) {
            Ok(()) => return Ok(name),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 3 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

fn set_hairpin(host: &mut Rtnl, index: u32) -> io::Result<()> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::PortKind(InfoPortKind::Bridge),
        LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
            true,
        )])),
    ]));
    host.request(RouteNetlinkMessage::NewLink(m), 0)
}

/// Inside the pod: `lo` and `eth0` up, the address and the routes; `eth0`'s MAC address.
fn configure_pod(pod: &mut Rtnl, plan: &Plan, ip: Ipv4Addr) -> io::Result<Option<String>> {
    let lo = pod
        .link("lo")?
        .ok_or_else(|| io::Error::other("the namespace has no lo"))?;
    pod.set_up(lo.index)?;
    let eth0 = pod
        .link(POD_INTERFACE)?
        .ok_or_else(|| io::Error::other("eth0 did not appear in the pod's namespace"))?;
    // As the plugin does: announce the address when the link comes up.
    std::fs::write(
        format!("/proc/sys/net/ipv4/conf/{POD_INTERFACE}/arp_notify"),
        "1",
    )?;
    pod.no_link_local(eth0.index)?;
    pod.set_up(eth0.index)?;
    pod.add_ipv4(eth0.index, ip, plan.subnet.prefix)?;
    for route in &plan.routes {
        pod.add_ipv4_route(
            eth0.index,
            route.network,
            route.prefix,
            plan.subnet.gateway(),
        )?;
    }
    Ok(eth0.mac)
}

/// Runs `f` with a netlink socket of the namespace `ns`, on a thread of its own that
/// enters it (and ends with `f`, so no thread of the agent is left in another
/// namespace). `/proc/sys/net` opened there is the namespace's too.
fn in_namespace<R: Send + 'static>(
    ns: OwnedFd,
    f: impl FnOnce(&mut Rtnl) -> io::Result<R> + Send + 'static,
) -> io::Result<R> {
    std::thread::Builder::new()
        .name("cni-netns".into())
        .spawn(move || {
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            f(&mut Rtnl::open()?)
        })?
        .join()
        .map_err(|_| io::Error::other("the namespace's thread panicked"))?
}

/// The result an ADD of the bridge plugin gives (CNI 1.x).
fn result(
    plan: &Plan,
    att: &Attachment,
    ip: Ipv4Addr,
    bridge_mac: Option<String>,
    veth: &str,
    veth_mac: Option<String>,
    eth0_mac: Option<String>,
) -> Value {
    let iface = |name: &str, mac: Option<String>| {
        let mut v = json!({ "name": name });
        if let Some(mac) = mac {
            v["mac"] = json!(mac);
        }
        v
    };
    let mut pod = iface(POD_INTERFACE, eth0_mac);
    pod["sandbox"] = json!(att.netns);
    let mut result = json!({
        "cniVersion": plan.cni_version,
        "interfaces": [iface(&plan.bridge, bridge_mac), iface(veth, veth_mac), pod],
        "ips": [{
            "address": format!("{ip}/{}", plan.subnet.prefix),
            "gateway": plan.subnet.gateway().to_string(),
            "interface": 2,
        }],
    });
    if !plan.routes.is_empty() {
        result["routes"] = plan
            .routes
            .iter()
            .map(|r| json!({ "dst": format!("{}/{}", r.network, r.prefix) }))
            .collect();
    }
    result
}

#[cfg(test)]
mod tests;
