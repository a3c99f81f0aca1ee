//! What `hack/cluster up` leaves on the machine is no door for a tenant: the cluster's
//! credentials are readable by root only, and a packet to 127.0.0.0/8 that comes in on
//! an interface with `route_localnet=1` (portmap sets it on a pod bridge for host ports)
//! is dropped, as the kubelet's `KUBE-FIREWALL` rule drops it (CVE-2020-8558). The
//! attack runs from a namespace and veth pair of the test's own, removed afterwards.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// The chain of `hack/cluster` that holds the drop rule, and the rule as `iptables -S`
/// prints it (the kubelet's, with its comment).
const CHAIN: &str = "KRUSTLET-LOCALNET";
const RULE: &str = "-A KRUSTLET-LOCALNET ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment \"block incoming localnet connections\" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP";

/// The attacker's namespace and the host side of its veth pair, and their /30.
const NETNS: &str = "kr-e2e-localnet";
const HOST_IF: &str = "kr-lnet0";
const HOST_ADDR: &str = "10.250.77.1";
const PEER_ADDR: &str = "10.250.77.2";

fn run(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The namespace and veth pair of the attack, removed when dropped.
struct Attacker;

impl Attacker {
    fn make() -> anyhow::Result<Self> {
        Self::remove();
        run("ip", &["netns", "add", NETNS])?;
        let attacker = Self;
        let ns = ["-n", NETNS];
        run(
            "ip",
            &[
                "link", "add", HOST_IF, "type", "veth", "peer", "name", "eth0", "netns", NETNS,
            ],
        )?;
        run(
            "ip",
            &["addr", "add", &format!("{HOST_ADDR}/30"), "dev", HOST_IF],
        )?;
        run("ip", &["link", "set", HOST_IF, "up"])?;
        run(
            "ip",
            &[
                &ns[..],
                &["addr", "add", &format!("{PEER_ADDR}/30"), "dev", "eth0"],
            ]
            .concat(),
        )?;
        run("ip", &[&ns[..], &["link", "set", "eth0", "up"]].concat())?;
        // What portmap does to a pod bridge for a host port on 127.0.0.1...
        run(
            "sysctl",
            &["-qw", &format!("net.ipv4.conf.{HOST_IF}.route_localnet=1")],
        )?;
        // ...and what a peer on that bridge needs to send to 127.0.0.1 through it (its
        // loopback stays down, so 127.0.0.1 is not its own).
        run(
            "ip",
            &[
                "netns",
                "exec",
                NETNS,
                "sysctl",
                "-qw",
                "net.ipv4.conf.eth0.route_localnet=1",
            ],
        )?;
        run(
            "ip",
            &[
                &ns[..],
                &[
                    "route",
                    "add",
                    "127.0.0.1/32",
                    "via",
                    HOST_ADDR,
                    "dev",
                    "eth0",
                ],
            ]
            .concat(),
        )?;
        Ok(attacker)
    }

    /// Whether a TCP connection from the namespace to `addr:port` is made within 10 s.
    fn connects(&self, addr: &str, port: u16) -> anyhow::Result<bool> {
        let status = Command::new("ip")
            .args(["netns", "exec", NETNS, "timeout", "10", "bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/{addr}/{port}"))
            .status()
            .context("running ip netns exec")?;
        Ok(status.success())
    }

    fn remove() {
        let _ = Command::new("ip").args(["netns", "delete", NETNS]).output();
        let _ = Command::new("ip")
            .args(["link", "delete", HOST_IF])
            .output();
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        Self::remove();
    }
}

#[tokio::test]
async fn a_packet_to_localhost_from_a_route_localnet_interface_is_dropped() -> anyhow::Result<()> {
    let _cluster = e2e::Cluster::connect().await?;
    let attacker = Attacker::make()?;
    // The path works: a service on the host side's own address is reached...
    let control = TcpListener::bind((HOST_ADDR, 0))?;
    assert!(attacker.connects(HOST_ADDR, control.local_addr()?.port())?);
    // ...but not one bound to 127.0.0.1, however the packet is routed.
    let local = TcpListener::bind(("127.0.0.1", 0))?;
    local.set_nonblocking(true)?;
    let reached = attacker.connects("127.0.0.1", local.local_addr()?.port())?;
    let accepted = local.accept().map(|(_, from)| from);
    assert!(
        !reached && accepted.is_err(),
        "a peer on a route_localnet interface reached 127.0.0.1: {accepted:?}"
    );
    // By the rule of `hack/cluster up`, in a chain of its own (kube-proxy rewrites
    // KUBE-FIREWALL), jumped to first from INPUT and OUTPUT as the kubelet does.
    let rules = run("iptables", &["-w", "-t", "filter", "-S"])?;
    let rules: Vec<&str> = rules.lines().collect();
    assert!(rules.contains(&RULE), "no localnet drop rule in {rules:#?}");
    for hook in ["INPUT", "OUTPUT"] {
        let jump = format!("-A {hook} -j {CHAIN}");
        assert!(rules.contains(&jump.as_str()), "no {jump:?}");
    }
    Ok(())
}

#[tokio::test]
async fn the_clusters_kubeconfigs_and_keys_are_readable_by_their_owner_only() -> anyhow::Result<()>
{
    let env = e2e::cluster_env()?;
    let admin = env.get("KUBECONFIG").context("no KUBECONFIG")?;
    let run_dir = Path::new(admin).parent().context("the run directory")?;
    // A kubeconfig and keys minted now, and every one `up` wrote.
    e2e::node_credentials("e2e-file-modes")?;
    let mut checked = Vec::new();
    let mut open = Vec::new();
    for dir in [run_dir.to_path_buf(), run_dir.join("pki")] {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path.to_string_lossy().into_owned();
            let secret = name.ends_with(".kubeconfig")
                || name.ends_with(".key")
                || name.ends_with("registry.yml");
            if !secret {
                continue;
            }
            let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                open.push(format!("{name} {mode:o}"));
            }
            checked.push(name);
        }
    }
    println!("{} credential files checked", checked.len());
    assert!(
        checked
            .iter()
            .any(|n| n.ends_with("node-e2e-file-modes.kubeconfig")),
        "{checked:?}"
    );
    assert!(open.is_empty(), "readable by others: {open:#?}");
    Ok(())
}
