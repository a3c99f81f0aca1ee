//! The static names of a pod, consulted before DNS as a container's `/etc/hosts` is.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::MAX_ADDRESSES;

/// A pod's hosts entries, in the order a hosts file lists them.
///
/// [`Hosts::new`] is empty; [`Hosts::kubernetes`] starts with the lines the kubelet
/// writes at the top of every container's `/etc/hosts`. The caller adds the pod's own
/// address and names, then its `hostAliases`, with [`Hosts::add`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hosts {
    entries: Vec<(IpAddr, Vec<String>)>,
}

impl Hosts {
    /// No entries.
    pub fn new() -> Self {
        Hosts::default()
    }

    /// The kubelet's fixed lines: `localhost` on 127.0.0.1 and ::1, and the IPv6 names
    /// `ip6-localhost`, `ip6-loopback`, `ip6-localnet`, `ip6-mcastprefix`,
    /// `ip6-allnodes`, `ip6-allrouters`.
    pub fn kubernetes() -> Self {
        let mut hosts = Hosts::new();
        let fe00 = |last| IpAddr::V6(Ipv6Addr::new(0xfe00, 0, 0, 0, 0, 0, 0, last));
        hosts.add(Ipv4Addr::LOCALHOST.into(), ["localhost"]);
        hosts.add(
            Ipv6Addr::LOCALHOST.into(),
            ["localhost", "ip6-localhost", "ip6-loopback"],
        );
        hosts.add(fe00(0), ["ip6-localnet", "ip6-mcastprefix"]);
        hosts.add(fe00(1), ["ip6-allnodes"]);
        hosts.add(fe00(2), ["ip6-allrouters"]);
        hosts
    }

    /// Adds a line: `ip` and its names, after the lines already there.
    pub fn add<I, S>(&mut self, ip: IpAddr, names: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let names = names.into_iter().map(Into::into).collect();
        self.entries.push((ip, names));
    }

    /// The addresses of every line naming `name` (case-insensitive, a trailing dot
    /// ignored), in order, without repeats, at most 32. Empty when no line names it.
    pub fn lookup(&self, name: &str) -> Vec<IpAddr> {
        let name = name.strip_suffix('.').unwrap_or(name);
        let mut found = Vec::new();
        for (ip, names) in &self.entries {
            let named = names
                .iter()
                .any(|n| n.strip_suffix('.').unwrap_or(n).eq_ignore_ascii_case(name));
            if named && !found.contains(ip) && found.len() < MAX_ADDRESSES {
                found.push(*ip);
            }
        }
        found
    }

    /// Writes the entries as hosts file text, one line each.
    pub fn render(&self) -> String {
        let mut text = String::new();
        for (ip, names) in &self.entries {
            let _ = writeln!(text, "{ip}\t{}", names.join("\t"));
        }
        text
    }
}
