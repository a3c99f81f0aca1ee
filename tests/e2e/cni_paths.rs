//! The in-process bridge network (`network::cni::inproc`) against the real bridge,
//! host-local and loopback plugins, on one bridge of the test's own: the first ADD
//! execs the plugins (they make the bridge); then one pod attached each way, and both
//! compared: the CNI result, the pod's links, IPv4 addresses, routes and `arp_notify`,
//! the bridge port; the in-process veth has no IPv6 link-local address on either end. Both pods reach each other; each is detached by the other path (a node
//! whose setting changed across a restart), and nothing is left; a pod with host ports
//! still gets the plugins. No cluster node is involved, only the CNI configuration and
//! plugins `hack/cluster` installs. Traffic: one connection each way between the two
//! pods' addresses on the test's bridge.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use e2e::PodNet;
use network::cni::{Attached, Attachment, Cni, PortMapping, RuntimeSettings};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NODE: &str = "e2e-cni-paths";
/// Not a node's: the controller manager hands out the cluster CIDR's /24s from the
/// bottom, and the tests run a few dozen nodes.
const CIDR: &str = "10.244.238.0/24";

fn cni(net: &PodNet, in_process: bool) -> Cni {
    Cni {
        conf_dir: net.dir.join("net.d"),
        bin_dirs: vec![net.cni_bin().into()],
        // One cache for both: a node whose setting changed across a restart.
        cache_dir: net.dir.join("cache"),
        timeout: Duration::from_secs(60),
        in_process,
    }
}

fn attachment(net: &PodNet, id: &str) -> Attachment {
    Attachment {
        container_id: id.to_owned(),
        netns: net.netns(id),
        args: vec![("K8S_POD_NAME".into(), id.to_owned())],
    }
}

async fn attach(cni: &Cni, net: &PodNet, id: &str, settings: &RuntimeSettings) -> Result<Attached> {
    // The namespace stays pinned when the thread that made it goes.
    drop(network::NetNs::create(&net.netns(id)).await?);
    Ok(cni.add(&attachment(net, id), settings).await?)
}

/// `ip -j <args>`, in the namespace at `ns` if given.
fn ip_json(ns: Option<&Path>, args: &[&str]) -> Result<Value> {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg("ip");
            c
        }
        None => Command::new("ip"),
    };
    let out = cmd.arg("-j").args(args).output()?;
    ensure!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The fields of a link both paths must agree on.
fn link_facts(link: &Value, fields: &[&str], info: &[&str]) -> Vec<(String, Value)> {
    let mut facts: Vec<(String, Value)> = fields
        .iter()
        .map(|f| ((*f).to_owned(), link[*f].clone()))
        .collect();
    for f in info {
        let (section, key) = f.split_once('.').unwrap_or(("linkinfo", f));
        let v = match section {
            "slave" => link["linkinfo"]["info_slave_data"][key].clone(),
            _ => link["linkinfo"][key].clone(),
        };
        facts.push(((*f).to_owned(), v));
    }
    facts
}

/// What the pod of `id` has: `eth0`'s facts, its IPv4 address (prefix, broadcast,
/// scope), its routes with its own address written as `POD`, `arp_notify`, `lo`'s state.
fn pod_side(net: &PodNet, id: &str, ip: &str) -> Result<Value> {
    let ns = net.netns(id);
    let eth0 = ip_json(Some(&ns), &["-d", "link", "show", "dev", "eth0"])?[0].clone();
    let fields = [
        "flags",
        "mtu",
        "qdisc",
        "operstate",
        "txqlen",
        "link_type",
        "num_tx_queues",
        "num_rx_queues",
    ];
    let link = link_facts(&eth0, &fields, &["info_kind"]);
    let addrs = ip_json(Some(&ns), &["-4", "addr", "show", "dev", "eth0"])?;
    let addrs: Vec<Value> = addrs[0]["addr_info"]
        .as_array()
        .context("addr_info")?
        .iter()
        .map(|a| {
            let mut a = a.clone();
            if a["local"] == ip {
                a["local"] = "POD".into();
            }
            a
        })
        .collect();
    let routes = ip_json(Some(&ns), &["-4", "route", "show"])?
        .to_string()
        .replace(ip, "POD");
    let lo = ip_json(Some(&ns), &["link", "show", "dev", "lo"])?[0]["flags"].clone();
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["sysctl", "-n", "net.ipv4.conf.eth0.arp_notify"])
        .output()?;
    Ok(serde_json::json!({
        "eth0": link,
        "addresses": addrs,
        "routes": serde_json::from_str::<Value>(&routes)?,
        "arp_notify": String::from_utf8_lossy(&out.stdout).trim(),
        "lo": lo,
    }))
}

/// The host end of the pod's veth (its name is the result's second interface).
fn host_side(result: &Value) -> Result<Value> {
    let veth = result["interfaces"][1]["name"]
        .as_str()
        .context("veth name")?;
    ensure!(
        veth.len() == 12 && veth.starts_with("veth"),
        "veth name {veth:?}"
    );
    let link = ip_json(None, &["-d", "link", "show", "dev", veth])?[0].clone();
    let fields = [
        "flags",
        "mtu",
        "master",
        "operstate",
        "promiscuity",
        "num_tx_queues",
    ];
    let slave = [
        "slave.state",
        "slave.hairpin",
        "slave.learning",
        "slave.flood",
        "info_slave_kind",
    ];
    Ok(serde_json::json!(link_facts(&link, &fields, &slave)))
}

/// The result with what differs by nature (addresses, MACs, the veth's name, the
/// namespace's path) taken out.
fn result_shape(result: &Value) -> Value {
    let mut r = result.clone();
    for i in r["interfaces"].as_array_mut().into_iter().flatten() {
        let has_mac = i.get("mac").is_some();
        i["mac"] = has_mac.into();
        if i.get("sandbox").is_some() {
            i["sandbox"] = "SANDBOX".into();
        }
    }
    r["interfaces"][1]["name"] = "VETH".into();
    r["ips"][0]["address"] = "ADDRESS".into();
    r
}

fn pod_ip(a: &Attached) -> Result<String> {
    Ok(a.ips.first().context("no address")?.to_string())
}

/// One connection from the pod of `from` to `to_ip`:`port`, accepted by the pod of `to`.
async fn reach(net: &PodNet, from: &str, to: &str, to_ip: &str) -> Result<()> {
    let server = network::NetNs::open(&net.netns(to)).await?;
    let client = network::NetNs::open(&net.netns(from)).await?;
    let listener = server
        .tcp_listener(format!("{to_ip}:7070").parse()?)
        .await?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let accept = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        s.write_all(b"hi").await?;
        anyhow::Ok(())
    });
    let addr = format!("{to_ip}:7070").parse()?;
    let mut conn = client
        .tcp_connect(addr, Duration::from_secs(30))
        .await
        .with_context(|| format!("{from} -> {to}: no connection"))?;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut got)).await??;
    ensure!(got == b"hi", "{from} -> {to}: got {got:?}");
    accept.await??;
    Ok(())
}

fn veths_on(bridge: &str) -> Result<Vec<String>> {
    Ok(ip_json(None, &["link", "show", "master", bridge])?
        .as_array()
        .context("links")?
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect())
}

#[tokio::test]
async fn in_process_attachment_matches_the_plugins_and_both_undo_each_other() -> Result<()> {
    let net = PodNet::for_node(NODE)?;
    let settings = RuntimeSettings {
        pod_cidrs: vec![CIDR.into()],
        port_mappings: Vec::new(),
    };
    let (exec, fast) = (cni(&net, false), cni(&net, true));
    // No bridge yet: the plugins make it, even with the in-process path on.
    let first = attach(&fast, &net, "first", &settings).await?;
    ensure!(!first.in_process, "the first ADD must exec the plugins");
    let a = attach(&exec, &net, "by-plugins", &settings).await?;
    let b = attach(&fast, &net, "in-process", &settings).await?;
    ensure!(
        !a.in_process && b.in_process,
        "paths: {} {}",
        a.in_process,
        b.in_process
    );
    let (ip_a, ip_b) = (pod_ip(&a)?, pod_ip(&b)?);
    ensure!(
        ip_a != ip_b && ip_b.starts_with("10.244.238."),
        "{ip_a} {ip_b}"
    );

    assert_eq!(
        result_shape(&a.result),
        result_shape(&b.result),
        "CNI results"
    );
    assert_eq!(
        a.result["interfaces"][0], b.result["interfaces"][0],
        "the bridge"
    );
    assert_eq!(
        b.result["interfaces"][2]["sandbox"],
        Value::from(net.netns("in-process").display().to_string())
    );
    assert_eq!(
        pod_side(&net, "by-plugins", &ip_a)?,
        pod_side(&net, "in-process", &ip_b)?,
        "inside the pods"
    );
    assert_eq!(
        host_side(&a.result)?,
        host_side(&b.result)?,
        "the bridge ports"
    );
    // The one difference: no IPv6 link-local address on either end of the in-process
    // veth (on an IPv4 network they only make multicast flooded to every port).
    let veth_b = b.result["interfaces"][1]["name"].as_str().context("veth")?;
    for (ns, dev) in [(Some(net.netns("in-process")), "eth0"), (None, veth_b)] {
        let v6 = ip_json(ns.as_deref(), &["-6", "addr", "show", "dev", dev])?;
        ensure!(
            v6.as_array().is_some_and(|a| a
                .iter()
                .all(|l| l["addr_info"].as_array().is_none_or(|i| i.is_empty()))),
            "{dev} has IPv6 addresses: {v6}"
        );
    }
    let v6_a = ip_json(
        Some(&net.netns("by-plugins")),
        &["-6", "addr", "show", "dev", "eth0"],
    )?;
    ensure!(
        v6_a.to_string().contains("fe80"),
        "the plugins' eth0 has no link-local: {v6_a}"
    );
    // The cached result is what an agent restart reads.
    let cached = fast.cached("in-process")?.context("no cached result")?;
    ensure!(cached.ips == b.ips, "cached {:?}", cached.ips);

    reach(&net, "in-process", "by-plugins", &ip_a).await?;
    reach(&net, "by-plugins", "in-process", &ip_b).await?;

    // Each detached by the other path.
    fast.del(&attachment(&net, "by-plugins")).await?;
    exec.del(&attachment(&net, "in-process")).await?;
    let leased = net.leased();
    ensure!(leased == vec![pod_ip(&first)?], "leases left: {leased:?}");
    let left = veths_on(&net.bridge)?;
    ensure!(left.len() == 1, "veths left on the bridge: {left:?}");
    for id in ["by-plugins", "in-process"] {
        let links = ip_json(Some(&net.netns(id)), &["link", "show"])?;
        ensure!(
            links.as_array().is_some_and(|l| l.len() == 1),
            "{id}: {links}"
        );
        ensure!(fast.cached(id)?.is_none(), "{id}: cache entry left");
        network::netns::remove(&net.netns(id))?;
    }

    // Host ports need portmap: the plugins run.
    let ports = RuntimeSettings {
        port_mappings: vec![PortMapping {
            host_port: 30777,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: Some("127.0.0.1".into()),
        }],
        ..settings.clone()
    };
    let c = attach(&fast, &net, "host-ports", &ports).await?;
    ensure!(!c.in_process, "a pod with host ports went in-process");
    fast.del(&attachment(&net, "host-ports")).await?;
    fast.del(&attachment(&net, "first")).await?;
    ensure!(net.leased().is_empty(), "leases left: {:?}", net.leased());
    Ok(())
}
