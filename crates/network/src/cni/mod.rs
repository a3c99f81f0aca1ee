//! The CNI plugins of the pod network, run as a container runtime runs them.
//!
//! For each pod sandbox: the `loopback` plugin on `lo`, then every plugin of the
//! network list in order on `eth0` (ADD, each given the previous one's result), with the
//! runtime settings a plugin declares as capabilities (`ipRanges`: the node's pod CIDR;
//! `portMappings`: the pod's host ports). The last result is cached under the cache
//! directory with the list it was made with, so that DEL (the plugins in reverse) gets
//! the same configuration and the result as `prevResult`, even after the configuration
//! changed or the agent restarted.
//!
//! Plugins are trusted binaries of the node's administrator, but what they print is
//! still bounded: at most [`MAX_OUTPUT_BYTES`] of output, [`Cni::timeout`] per call.

pub mod config;
mod exec;
pub mod inproc;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value, json};

pub use config::{NetworkList, Plugin};

/// Largest result or error a plugin may print, in bytes.
pub const MAX_OUTPUT_BYTES: u64 = 1 << 20;

/// The interface the pod network is attached as.
pub const POD_INTERFACE: &str = "eth0";

/// What went wrong with the pod network.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// No configuration yet: the network is not ready.
    #[error("cni config uninitialized: {0}")]
    NoConfig(String),
    /// A configuration file or the cache is malformed.
    #[error("invalid CNI configuration: {0}")]
    Config(String),
    /// The plugin's binary is in none of the binary directories.
    #[error("failed to find plugin {plugin:?} in path {path:?}")]
    NotFound {
        /// Its `type`.
        plugin: String,
        /// The binary directories searched.
        path: Vec<PathBuf>,
    },
    /// The plugin failed: its error's code and message, or how it ended.
    #[error("plugin type={plugin:?} name={network:?} failed ({command}): {message}")]
    Plugin {
        /// Its `type`.
        plugin: String,
        /// The network's name.
        network: String,
        /// ADD, DEL or CHECK.
        command: &'static str,
        /// What it said (`msg` and `details` of its error), or how it ended.
        message: String,
    },
    /// Reading or writing the result cache failed.
    #[error("CNI result cache: {0}")]
    Cache(String),
}

/// Results of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One pod's attachment to the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The sandbox's ID (`CNI_CONTAINERID`): letters, digits, `.`, `_`, `-`.
    pub container_id: String,
    /// The pinned namespace (`CNI_NETNS`).
    pub netns: PathBuf,
    /// `K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_UID`, ... (`CNI_ARGS`).
    pub args: Vec<(String, String)>,
}

/// A host port of the pod, for the `portMappings` capability.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortMapping {
    /// The port on the node.
    pub host_port: u16,
    /// The port in the pod.
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// The node address it is limited to, if any.
    pub host_ip: Option<String>,
}

/// Runtime settings offered to plugins that declare the matching capability. DEL gets
/// the ones ADD got (host-local needs its ranges to release, portmap its mappings to
/// remove its rules).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuntimeSettings {
    /// The node's pod CIDRs (`ipRanges`, one range set per CIDR).
    pub pod_cidrs: Vec<String>,
    /// The pod's host ports (`portMappings`).
    pub port_mappings: Vec<PortMapping>,
}

impl RuntimeSettings {
    fn capability(&self, name: &str) -> Option<Value> {
        match name {
            "ipRanges" if !self.pod_cidrs.is_empty() => Some(Value::Array(
                self.pod_cidrs
                    .iter()
                    .map(|c| json!([{ "subnet": c }]))
                    .collect(),
            )),
            "portMappings" if !self.port_mappings.is_empty() => Some(Value::Array(
                self.port_mappings
                    .iter()
                    .map(|p| {
                        let mut m = json!({
                            "hostPort": p.host_port,
                            "containerPort": p.container_port,
                            "protocol": p.protocol,
                        });
                        if let Some(ip) = &p.host_ip {
                            m["hostIP"] = json!(ip);
                        }
                        m
                    })
                    .collect(),
            )),
            _ => None,
        }
    }
}

/// What an ADD gave the pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Attached {
    /// The pod's addresses, in the order the plugin gave them.
    pub ips: Vec<IpAddr>,
    /// The whole result, as cached.
    pub result: Value,
    /// Whether the agent attached it itself ([`inproc`]) rather than the plugins.
    pub in_process: bool,
}

impl Attached {
    fn from_result(result: Value) -> Result<Self> {
        let ips = result
            .get("ips")
            .and_then(Value::as_array)
            .map(|ips| {
                ips.iter()
                    .filter_map(|ip| ip.get("address").and_then(Value::as_str))
                    .filter_map(|a| a.split('/').next()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            ips,
            result,
            in_process: false,
        })
    }
}

/// The pod network of a node: where its configuration, plugins and cache are.
#[derive(Debug, Clone)]
pub struct Cni {
    /// `--cni-conf-dir`.
    pub conf_dir: PathBuf,
    /// `--cni-bin-dir` (several, as `CNI_PATH`).
    pub bin_dirs: Vec<PathBuf>,
    /// Where results are cached (under the agent's data directory).
    pub cache_dir: PathBuf,
    /// Longest one plugin call may take before it is killed.
    pub timeout: Duration,
    /// Whether the standard bridge network is attached in-process ([`inproc`]) rather
    /// than by exec'ing its plugins.
    pub in_process: bool,
}

/// What the cache keeps of one attachment.
#[derive(serde::Serialize, serde::Deserialize)]
struct Cached {
    network: Value,
    result: Value,
    netns: PathBuf,
    args: Vec<(String, String)>,
    settings: RuntimeSettings,
}

impl Cni {
    /// The current network configuration.
    ///
    /// # Errors
    /// [`Error::NoConfig`] while there is none.
    pub fn network(&self) -> Result<NetworkList> {
        NetworkList::load(&self.conf_dir)
    }

    fn cache_path(&self, network: &str, container_id: &str) -> PathBuf {
        self.cache_dir
            .join("results")
            .join(format!("{network}-{container_id}-{POD_INTERFACE}"))
    }

    /// Attaches the pod: `loopback` on `lo`, then the list on `eth0`. A failure undoes
    /// what was done (DEL of the list) before it is returned.
    ///
    /// # Errors
    /// No configuration, a missing plugin, a plugin's error, the cache.
    pub async fn add(&self, att: &Attachment, settings: &RuntimeSettings) -> Result<Attached> {
        check_id(&att.container_id)?;
        let list = self.network()?;
        if let Some(plan) = self.plan(&list, settings)
            && let Some(result) = inproc::add(&plan, att).await?
        {
            let entry = cached(&list, att, settings, &result);
            if let Err(e) = self.write_cache(&list.name, &att.container_id, &entry) {
                let _ = inproc::del(&plan, att).await;
                return Err(e);
            }
            let mut attached = Attached::from_result(result)?;
            attached.in_process = true;
            return Ok(attached);
        }
        self.loopback(att, "ADD").await?;
        let mut prev: Option<Value> = None;
        for plugin in &list.plugins {
            let stdin = plugin_config(&list, plugin, settings, prev.as_ref());
            match exec::call(self, att, &list, plugin, "ADD", POD_INTERFACE, &stdin).await {
                Ok(result) => prev = Some(result),
                Err(e) => {
                    // Undo the plugins that ran (and the one that failed half-way).
                    let _ = self.del_list(att, &list, settings, prev.as_ref()).await;
                    return Err(e);
                }
            }
        }
        let result = prev.unwrap_or_else(|| json!({ "cniVersion": list.cni_version }));
        self.write_cache(
            &list.name,
            &att.container_id,
            &cached(&list, att, settings, &result),
        )?;
        Attached::from_result(result)
    }

    /// The in-process plan for `list` and `settings`, when that path is on and applies.
    fn plan(&self, list: &NetworkList, settings: &RuntimeSettings) -> Option<inproc::Plan> {
        self.in_process
            .then(|| inproc::Plan::of(list, settings))
            .flatten()
    }

    /// What the last ADD of `container_id` gave, from the cache (an agent restart).
    ///
    /// # Errors
    /// The cache is unreadable or malformed; `Ok(None)` when there is none.
    pub fn cached(&self, container_id: &str) -> Result<Option<Attached>> {
        check_id(container_id)?;
        let Ok(list) = self.cached_list(container_id) else {
            return Ok(None);
        };
        list.map(|(_, c)| Attached::from_result(c.result))
            .transpose()
    }

    /// Checks the attachment (CHECK of the list, with the cached result), for plugins
    /// that speak CNI 0.4.0 or later.
    ///
    /// # Errors
    /// A plugin reports the attachment broken, or there is no cached result.
    pub async fn check(&self, att: &Attachment, settings: &RuntimeSettings) -> Result<()> {
        check_id(&att.container_id)?;
        let Some((list, cached)) = self.cached_list(&att.container_id)? else {
            return Err(Error::Cache(format!("no result for {}", att.container_id)));
        };
        for plugin in &list.plugins {
            let stdin = plugin_config(&list, plugin, settings, Some(&cached.result));
            exec::call(self, att, &list, plugin, "CHECK", POD_INTERFACE, &stdin).await?;
        }
        Ok(())
    }

    /// Detaches the pod: DEL of the list it was added with (the cached one, else the
    /// current one), in reverse, then the cache entry. Safe to repeat.
    ///
    /// # Errors
    /// A plugin's error (the cache entry is kept then, for the next try).
    pub async fn del(&self, att: &Attachment) -> Result<()> {
        check_id(&att.container_id)?;
        let (list, cached) = match self.cached_list(&att.container_id)? {
            Some((list, c)) => (list, Some(c)),
            None => match self.network() {
                Ok(list) => (list, None),
                // No configuration and nothing cached: nothing was ever attached.
                Err(Error::NoConfig(_)) => return Ok(()),
                Err(e) => return Err(e),
            },
        };
        let settings = cached
            .as_ref()
            .map(|c| c.settings.clone())
            .unwrap_or_default();
        match self.plan(&list, &settings) {
            Some(plan) => inproc::del(&plan, att).await?,
            None => {
                self.del_list(att, &list, &settings, cached.as_ref().map(|c| &c.result))
                    .await?;
            }
        }
        match std::fs::remove_file(self.cache_path(&list.name, &att.container_id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Cache(e.to_string())),
            _ => Ok(()),
        }
    }

    /// The container IDs with a cached result: the pods this node attached and did not
    /// detach yet.
    #[must_use]
    pub fn attached_ids(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(self.cache_dir.join("results")) else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| {
                let rest = n.strip_suffix(&format!("-{POD_INTERFACE}"))?;
                // `<network>-<id>`: the network name may hold dashes, the ID (a pod UID)
                // has its own; the cache knows which is which.
                let cached = std::fs::read(self.cache_dir.join("results").join(&n)).ok()?;
                let c: Cached = serde_json::from_slice(&cached).ok()?;
                let network = c.network.get("name")?.as_str()?;
                rest.strip_prefix(&format!("{network}-")).map(str::to_owned)
            })
            .collect()
    }

    async fn del_list(
        &self,
        att: &Attachment,
        list: &NetworkList,
        settings: &RuntimeSettings,
        prev: Option<&Value>,
    ) -> Result<()> {
        let mut first_error = None;
        for plugin in list.plugins.iter().rev() {
            let stdin = plugin_config(list, plugin, settings, prev);
            if let Err(e) = exec::call(self, att, list, plugin, "DEL", POD_INTERFACE, &stdin).await
            {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn loopback(&self, att: &Attachment, command: &'static str) -> Result<()> {
        let list = NetworkList::parse(
            br#"{"cniVersion":"1.0.0","name":"cni-loopback","type":"loopback"}"#,
            Path::new("(built in)"),
        )?;
        let stdin = plugin_config(&list, &list.plugins[0], &RuntimeSettings::default(), None);
        exec::call(self, att, &list, &list.plugins[0], command, "lo", &stdin)
            .await
            .map(drop)
    }

    fn cached_list(&self, container_id: &str) -> Result<Option<(NetworkList, Cached)>> {
        // Under the current network's name, usually: one file, not the whole directory
        // (a node with a thousand pods would read a thousand files per pod).
        if let Ok(current) = self.network() {
            let path = self.cache_path(&current.name, container_id);
            if let Ok(bytes) = std::fs::read(&path) {
                let (list, cached) = parse_cached(&bytes, &path)?;
                if list.name == current.name {
                    return Ok(Some((list, cached)));
                }
            }
        }
        let dir = self.cache_dir.join("results");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(None);
        };
        let suffix = format!("-{container_id}-{POD_INTERFACE}");
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.ends_with(&suffix) {
                continue;
            }
            let bytes = std::fs::read(entry.path()).map_err(|e| Error::Cache(e.to_string()))?;
            let (list, cached) = parse_cached(&bytes, &entry.path())?;
            if name == format!("{}{suffix}", list.name) {
                return Ok(Some((list, cached)));
            }
        }
        Ok(None)
    }

    fn write_cache(&self, network: &str, container_id: &str, cached: &Cached) -> Result<()> {
        let path = self.cache_path(network, container_id);
        let err = |e: std::io::Error| Error::Cache(format!("{}: {e}", path.display()));
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let bytes = serde_json::to_vec(cached).map_err(|e| Error::Cache(e.to_string()))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }
}

/// What the cache keeps of the attachment of `att` that gave `result`.
fn cached(
    list: &NetworkList,
    att: &Attachment,
    settings: &RuntimeSettings,
    result: &Value,
) -> Cached {
    Cached {
        network: network_json(list),
        result: result.clone(),
        netns: att.netns.clone(),
        args: att.args.clone(),
        settings: settings.clone(),
    }
}

/// A cache entry and the list it holds.
fn parse_cached(bytes: &[u8], path: &Path) -> Result<(NetworkList, Cached)> {
    let cached: Cached = serde_json::from_slice(bytes)
        .map_err(|e| Error::Cache(format!("{}: {e}", path.display())))?;
    let raw = serde_json::to_vec(&cached.network).map_err(|e| Error::Cache(e.to_string()))?;
    let list = NetworkList::parse(&raw, path)?;
    Ok((list, cached))
}

fn check_id(id: &str) -> Result<()> {
    if config::valid_name(id) {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "container ID {id:?} is not a plain name"
        )))
    }
}

/// The list as JSON again, to cache it.
fn network_json(list: &NetworkList) -> Value {
    json!({
        "cniVersion": list.cni_version,
        "name": list.name,
        "plugins": list.plugins.iter().map(|p| Value::Object(p.conf.clone())).collect::<Vec<_>>(),
    })
}

/// What one plugin reads on stdin: its own object, with the list's `name` and
/// `cniVersion`, the `runtimeConfig` of its capabilities, and `prevResult`.
fn plugin_config(
    list: &NetworkList,
    plugin: &Plugin,
    settings: &RuntimeSettings,
    prev: Option<&Value>,
) -> Vec<u8> {
    let mut conf = plugin.conf.clone();
    conf.insert("name".into(), json!(list.name));
    conf.insert("cniVersion".into(), json!(list.cni_version));
    let runtime: Map<String, Value> = plugin
        .capabilities
        .iter()
        .filter_map(|c| settings.capability(c).map(|v| (c.clone(), v)))
        .collect();
    if !runtime.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(runtime));
    }
    if let Some(prev) = prev {
        conf.insert("prevResult".into(), prev.clone());
    }
    serde_json::to_vec(&Value::Object(conf)).unwrap_or_default()
}

#[cfg(test)]
mod tests;
