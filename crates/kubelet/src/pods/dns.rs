//! A pod's DNS as the kubelet composes it (`pkg/kubelet/network/dns`): the resolver
//! configuration its names are looked up with (`dnsPolicy`, `dnsConfig`, the node's
//! `--cluster-dns`, `--cluster-domain` and `--resolv-conf`), the limits on nameservers
//! and search paths and the events when they are passed, and the hosts entries a
//! container's `/etc/hosts` would hold (`hostAliases`, the pod's own name).
//!
//! A wasm pod has no `/etc/resolv.conf` to read: its lookups are host calls, answered by
//! the runtime with this configuration, so the runtime is handed it as the CRI's
//! `DNSConfig` is.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Pod, PodDNSConfig};

/// Nameservers a pod's configuration keeps (glibc reads no more).
pub const MAX_NAMESERVERS: usize = 3;
/// Search paths a pod's configuration keeps.
pub const MAX_SEARCH_PATHS: usize = 32;
/// Characters of the search line, the paths joined by spaces.
pub const MAX_SEARCH_LINE_CHARS: usize = 2048;
/// The longest search path kept (a DNS subdomain).
const MAX_SEARCH_PATH_LEN: usize = 253;
/// The node's resolver file is read up to this size (the kubelet's bound).
const MAX_RESOLV_CONF: u64 = 10 << 20;
/// The longest hostname (a DNS label).
const MAX_HOSTNAME_LEN: usize = 63;
/// The options of a cluster-first pod.
const CLUSTER_OPTIONS: &[&str] = &["ndots:5"];

/// The node's DNS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The cluster's DNS servers (`--cluster-dns`, `clusterDNS`); none: cluster-first
    /// pods fall back to the node's resolver, with a `MissingClusterDNS` event.
    pub cluster_dns: Vec<IpAddr>,
    /// The cluster's domain (`--cluster-domain`, `clusterDomain`); empty: no cluster
    /// search paths.
    pub cluster_domain: String,
    /// The node's resolver file (`--resolv-conf`, `resolvConf`), read for the node's
    /// nameservers, search paths and options; `None` (set empty): none, and pods of the
    /// node's DNS ask the node itself (127.0.0.1).
    pub resolv_conf: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            cluster_dns: Vec::new(),
            cluster_domain: String::new(),
            resolv_conf: Some(PathBuf::from("/etc/resolv.conf")),
        }
    }
}

/// A resolver configuration as resolv.conf says it (the CRI's `DNSConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DnsConfig {
    /// Nameserver addresses, in order.
    pub servers: Vec<String>,
    /// Search paths, in order.
    pub searches: Vec<String>,
    /// Options (`ndots:5`, `edns0`), each once.
    pub options: Vec<String>,
}

impl DnsConfig {
    /// The configuration as a resolv.conf file, as container runtimes write it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for s in &self.servers {
            out.push_str(&format!("nameserver {s}\n"));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

/// An event the composition calls for (the kubelet's `DNSConfigForming` and
/// `MissingClusterDNS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The event's reason.
    pub reason: &'static str,
    /// The event's message.
    pub message: String,
    /// Recorded on the node as well as on the pod.
    pub also_on_node: Option<String>,
}

/// Reads the node's resolver file (bounded), as the kubelet reads it for each pod;
/// `None`: no file, an empty configuration.
pub fn host_config(path: Option<&Path>) -> std::io::Result<DnsConfig> {
    use std::io::Read as _;
    let Some(path) = path else {
        return Ok(DnsConfig::default());
    };
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_RESOLV_CONF + 1)
        .read_to_string(&mut text)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    if text.len() as u64 > MAX_RESOLV_CONF {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: longer than {MAX_RESOLV_CONF} bytes", path.display()),
        ));
    }
    parse_resolv_conf(&text).map_err(|why| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "Encountered error while parsing resolv conf file. Error: {why} ({})",
                path.display()
            ),
        )
    })
}

/// Parses a resolv.conf as the kubelet does: every `nameserver`, the last `search` (a
/// trailing dot dropped, `.` skipped), every `options` merged by name; comments and
/// other lines ignored. A `nameserver` line without an address is an error.
pub fn parse_resolv_conf(text: &str) -> Result<DnsConfig, String> {
    let mut config = DnsConfig::default();
    let mut empty_nameserver = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("nameserver") => match fields.next() {
                Some(server) => config.servers.push(server.to_string()),
                None => empty_nameserver = true,
            },
            Some("search") => {
                config.searches = fields
                    .filter(|s| *s != ".")
                    .map(|s| s.strip_suffix('.').unwrap_or(s).to_string())
                    .collect();
            }
            Some("options") => merge_options(&mut config.options, fields.map(str::to_string)),
            _ => {}
        }
    }
    if empty_nameserver {
        return Err("nameserver list is empty".into());
    }
    Ok(config)
}

/// Adds `new` options to `options`, one per name (`ndots:2` replaces `ndots:5` in place;
/// new names at the end). The kubelet merges through a map, in no fixed order; this
/// keeps the order of first appearance.
fn merge_options(options: &mut Vec<String>, new: impl IntoIterator<Item = String>) {
    let name = |o: &str| o.split(':').next().unwrap_or_default().to_string();
    for option in new {
        let n = name(&option);
        match options.iter_mut().find(|o| name(o) == n) {
            Some(existing) => *existing = option,
            None => options.push(option),
        }
    }
}

/// Removes repeated entries, keeping the first.
fn omit_duplicates(items: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    items
        .into_iter()
        .filter(|s| seen.insert(s.clone()))
        .collect()
}

/// Which resolver a pod gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Cluster,
    Host,
    None,
}

fn kind(pod: &Pod) -> Kind {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    match spec.and_then(|s| s.dns_policy.as_deref()) {
        Some("None") => Kind::None,
        Some("ClusterFirstWithHostNet") => Kind::Cluster,
        Some("Default") => Kind::Host,
        // ClusterFirst, unset, and anything the API server would have refused.
        _ if host_network => Kind::Host,
        _ => Kind::Cluster,
    }
}

/// The pod's resolver configuration and the events composing it calls for, as the
/// kubelet's `GetPodDNS`: `host` is the node's file as [`host_config`] read it;
/// `node_ips` the node's addresses (for a host-DNS pod on a node without a file).
pub fn pod_dns(
    settings: &Settings,
    host: DnsConfig,
    pod: &Pod,
    node_ips: &[IpAddr],
) -> (DnsConfig, Vec<Warning>) {
    let mut warnings = Vec::new();
    let mut config = host;
    let mut kind = kind(pod);
    if kind == Kind::Cluster && settings.cluster_dns.is_empty() {
        let node = "kubelet does not have ClusterDNS IP configured and cannot create Pod \
                    using \"ClusterFirst\" policy. Falling back to \"Default\" policy.";
        warnings.push(Warning {
            reason: "MissingClusterDNS",
            message: format!("pod: {:?}. {node}", pod_name(pod)),
            also_on_node: Some(node.to_string()),
        });
        kind = Kind::Host;
    }
    match kind {
        Kind::None => config = DnsConfig::default(),
        Kind::Cluster => {
            config.servers = settings.cluster_dns.iter().map(IpAddr::to_string).collect();
            config.searches = cluster_searches(settings, pod, config.searches);
            config.options = CLUSTER_OPTIONS.iter().map(|o| o.to_string()).collect();
        }
        Kind::Host if settings.resolv_conf.is_none() => {
            config.servers = node_ips
                .iter()
                .map(|ip| if ip.is_ipv6() { "::1" } else { "127.0.0.1" }.to_string())
                .collect();
            if config.servers.is_empty() {
                config.servers.push("127.0.0.1".into());
            }
            config.searches = vec![".".into()];
        }
        Kind::Host => {}
    }
    if let Some(own) = pod.spec.as_ref().and_then(|s| s.dns_config.as_ref()) {
        append(&mut config, own);
    }
    fit_limits(&mut config, &mut warnings);
    (config, warnings)
}

/// `<namespace>.svc.<domain> svc.<domain> <domain>`, then the node's own paths.
fn cluster_searches(settings: &Settings, pod: &Pod, host: Vec<String>) -> Vec<String> {
    let domain = &settings.cluster_domain;
    if domain.is_empty() {
        return host;
    }
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut searches = vec![
        format!("{namespace}.svc.{domain}"),
        format!("svc.{domain}"),
        domain.clone(),
    ];
    searches.extend(host);
    omit_duplicates(searches)
}

/// The pod's own `dnsConfig` after what the policy gave.
fn append(config: &mut DnsConfig, own: &PodDNSConfig) {
    let mut servers = std::mem::take(&mut config.servers);
    servers.extend(own.nameservers.iter().flatten().cloned());
    config.servers = omit_duplicates(servers);
    let mut searches = std::mem::take(&mut config.searches);
    searches.extend(own.searches.iter().flatten().cloned());
    config.searches = omit_duplicates(searches);
    let options = own.options.iter().flatten().map(|o| match &o.value {
        Some(v) if !v.is_empty() => format!("{}:{v}", o.name.as_deref().unwrap_or_default()),
        _ => o.name.clone().unwrap_or_default(),
    });
    merge_options(&mut config.options, options);
}

/// Cuts nameservers and search paths to the limits, each cut a `DNSConfigForming`
/// warning in the kubelet's words.
fn fit_limits(config: &mut DnsConfig, warnings: &mut Vec<Warning>) {
    if config.servers.len() > MAX_NAMESERVERS {
        config.servers.truncate(MAX_NAMESERVERS);
        warnings.push(Warning {
            reason: "DNSConfigForming",
            message: format!(
                "Nameserver limits were exceeded, some nameservers have been omitted, the \
                 applied nameserver line is: {}",
                config.servers.join(" ")
            ),
            also_on_node: None,
        });
    }
    let mut cut = false;
    if config.searches.len() > MAX_SEARCH_PATHS {
        config.searches.truncate(MAX_SEARCH_PATHS);
        cut = true;
    }
    let before = config.searches.len();
    config.searches.retain(|s| s.len() <= MAX_SEARCH_PATH_LEN);
    cut |= config.searches.len() != before;
    while config.searches.join(" ").len() > MAX_SEARCH_LINE_CHARS {
        config.searches.pop();
        cut = true;
    }
    if cut {
        warnings.push(Warning {
            reason: "DNSConfigForming",
            message: format!(
                "Search Line limits were exceeded, some search paths have been omitted, the \
                 applied search line is: {}",
                config.searches.join(" ")
            ),
            also_on_node: None,
        });
    }
}

/// The warning the node's resolver file calls for at start, as the kubelet's
/// `CheckLimitsForResolvConf` (an event of that reason on the node): the file cannot be
/// read, or its search line leaves pods no room. Reads the file (blocking).
pub fn startup_warning(settings: &Settings) -> Option<String> {
    let file = settings.resolv_conf.as_deref()?;
    match host_config(Some(file)) {
        Ok(host) => check_host_limits(settings, &host),
        Err(e) => Some(e.to_string()),
    }
}

/// What the kubelet checks of the node's resolver file at start: a warning
/// (`CheckLimitsForResolvConf`, on the node) when its search line leaves pods no room.
pub fn check_host_limits(settings: &Settings, host: &DnsConfig) -> Option<String> {
    let file = settings.resolv_conf.as_ref()?.display().to_string();
    let mut most = MAX_SEARCH_PATHS;
    if !settings.cluster_domain.is_empty() {
        most -= 3;
    }
    if host.searches.len() > most {
        return Some(format!(
            "Resolv.conf file '{file}' contains search line consisting of more than {most} \
             domains!"
        ));
    }
    if host.searches.iter().any(|s| s.len() > MAX_SEARCH_PATH_LEN) {
        return Some(format!(
            "Resolv.conf file {file:?} contains a search path which length is more than \
             allowed {MAX_SEARCH_PATH_LEN} chars!"
        ));
    }
    if host.searches.join(" ").len() > MAX_SEARCH_LINE_CHARS {
        return Some(format!(
            "Resolv.conf file '{file}' contains search line which length is more than \
             allowed {MAX_SEARCH_LINE_CHARS} chars!"
        ));
    }
    None
}

fn pod_name(pod: &Pod) -> String {
    format!(
        "{}_{}({})",
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default()
    )
}

/// The pod's hostname and its domain (`<subdomain>.<namespace>.svc.<cluster domain>`,
/// empty without `subdomain`), as the kubelet's `GeneratePodHostNameAndDomain`: the
/// hostname is `spec.hostname` or the pod's name, cut to 63 characters.
pub fn hostname_and_domain(pod: &Pod, cluster_domain: &str) -> Result<(String, String), String> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let spec = pod.spec.as_ref();
    let mut hostname = name.clone();
    if let Some(h) = spec
        .and_then(|s| s.hostname.as_deref())
        .filter(|h| !h.is_empty())
    {
        if !crate::volumes::field_path::dns_label(h) {
            return Err(format!("pod Hostname {h:?} is not a valid DNS label"));
        }
        hostname = h.to_string();
    }
    if hostname.len() > MAX_HOSTNAME_LEN {
        hostname.truncate(MAX_HOSTNAME_LEN);
        hostname = hostname.trim_end_matches(['-', '.']).to_string();
        if hostname.is_empty() {
            return Err(format!("hostname for pod {name:?} was invalid: {name:?}"));
        }
    }
    let mut domain = String::new();
    if let Some(sub) = spec
        .and_then(|s| s.subdomain.as_deref())
        .filter(|s| !s.is_empty())
    {
        if !crate::volumes::field_path::dns_label(sub) {
            return Err(format!("pod Subdomain {sub:?} is not a valid DNS label"));
        }
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        domain = format!("{sub}.{namespace}.svc.{cluster_domain}");
    }
    Ok((hostname, domain))
}

/// One hosts entry: an address and its names.
pub type HostsEntry = (String, Vec<String>);

/// The entries of a pod's hosts file, as the kubelet's managed `/etc/hosts`: the
/// loopback and IPv6 names, each pod address with `<hostname>.<domain>` (when there is
/// a domain) and the hostname, then the pod's `aliases` (its `hostAliases`).
pub fn managed_hosts(
    pod_ips: &[IpAddr],
    hostname: &str,
    domain: &str,
    aliases: &[HostsEntry],
) -> Vec<HostsEntry> {
    let entry = |ip: &str, names: &[&str]| -> HostsEntry {
        (
            ip.to_string(),
            names.iter().map(|n| n.to_string()).collect(),
        )
    };
    let mut hosts = vec![
        entry("127.0.0.1", &["localhost"]),
        entry("::1", &["localhost", "ip6-localhost", "ip6-loopback"]),
        entry("fe00::0", &["ip6-localnet"]),
        entry("fe00::0", &["ip6-mcastprefix"]),
        entry("fe00::1", &["ip6-allnodes"]),
        entry("fe00::2", &["ip6-allrouters"]),
    ];
    for ip in pod_ips {
        let ip = ip.to_string();
        if domain.is_empty() {
            hosts.push(entry(&ip, &[hostname]));
        } else {
            hosts.push(entry(&ip, &[&format!("{hostname}.{domain}"), hostname]));
        }
    }
    hosts.extend(aliases.iter().cloned());
    hosts
}

/// The pod's `hostAliases`, in order.
pub fn host_aliases(pod: &Pod) -> Vec<HostsEntry> {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_aliases.as_ref())
        .into_iter()
        .flatten()
        .map(|a| (a.ip.clone(), a.hostnames.clone().unwrap_or_default()))
        .collect()
}

#[cfg(test)]
#[path = "dns_tests.rs"]
mod tests;
