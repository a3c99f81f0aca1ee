//! krustlet nodes run as child processes (each with its own port, data dir and log), and
//! waits on `Node` objects.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Node;
use kube::Api;

use crate::cluster::{cluster_lines, value};
use crate::root;

/// Which credentials a test node starts with.
#[derive(Clone, Copy)]
enum Credentials {
    /// `hack/cluster node-credentials`: kubeconfig, serving certificate.
    Minted,
    /// The serving certificate; the kubeconfig is in the flags.
    OwnKubeconfig,
    /// None: the flags hold a bootstrap kubeconfig.
    Bootstrap,
    /// No kubeconfig at all (standalone mode); the serving certificate.
    Standalone,
}

/// Where a node runs: on the machine (127.0.0.1), or on a host ([`crate::Host`]).
#[derive(Clone)]
struct At {
    /// `nsenter --net=` this namespace (`None`: the machine's).
    netns: Option<String>,
    /// The node's address and its kubelet API's.
    ip: String,
}

impl Default for At {
    fn default() -> Self {
        Self {
            netns: None,
            ip: "127.0.0.1".into(),
        }
    }
}

/// A krustlet node run as a child process; stopped (SIGTERM) when dropped.
pub struct KrustletNode {
    /// Node name.
    pub name: String,
    /// Kubelet API port.
    pub port: u16,
    child: Option<Child>,
    /// Data directory.
    pub data_dir: PathBuf,
    at: At,
}

impl KrustletNode {
    /// Starts `target/debug/krustlet` as node `name` with its own port and data dir.
    ///
    /// # Errors
    /// When credentials cannot be minted or the binary cannot start.
    pub fn start(name: &str, port: u16, flags: &[&str]) -> Result<Self> {
        Self::spawn(name, port, flags, fresh_data_dir(name)?)
    }

    /// [`KrustletNode::start`] on `host`: in its network namespace, at its address, with
    /// its pod network (`flags` come after the host's).
    ///
    /// # Errors
    /// As [`KrustletNode::start`].
    pub fn start_on(host: &crate::Host, name: &str, port: u16, flags: &[&str]) -> Result<Self> {
        let data_dir = fresh_data_dir(name)?;
        let mut all: Vec<&str> = host.flags().iter().map(String::as_str).collect();
        all.extend_from_slice(flags);
        let at = At {
            netns: Some(host.netns.clone()),
            ip: host.ip.clone(),
        };
        Self::spawn_at(name, port, &all, data_dir, Credentials::Minted, at)
    }

    /// Starts `target/debug/krustlet` as node `name` on the data dir `data_dir` as it is
    /// (e.g. a small filesystem the test mounted there).
    ///
    /// # Errors
    /// As [`KrustletNode::start`].
    pub fn start_in(name: &str, port: u16, flags: &[&str], data_dir: PathBuf) -> Result<Self> {
        let _ = std::fs::remove_file(data_dir.with_extension("log"));
        Self::spawn(name, port, flags, data_dir)
    }

    /// Stops the process and starts it again with `flags`, keeping its data dir, as an
    /// operator restarting the node agent would.
    ///
    /// # Errors
    /// As [`KrustletNode::stop`] and [`KrustletNode::start`].
    pub fn restart(&mut self, flags: &[&str]) -> Result<()> {
        if self.child.is_some() {
            self.stop()?;
        }
        let again = Self::spawn_at(
            &self.name,
            self.port,
            flags,
            self.data_dir.clone(),
            Credentials::Minted,
            self.at.clone(),
        )?;
        *self = again;
        Ok(())
    }

    /// Starts node `name` (fresh data dir) reaching the API server through `server`
    /// (`host:port`, e.g. an [`crate::outage::Proxy`]) instead of directly.
    ///
    /// # Errors
    /// As [`KrustletNode::start`].
    pub fn start_via(name: &str, port: u16, flags: &[&str], server: &str) -> Result<Self> {
        let data_dir = root().join("target/e2e").join(name);
        let _ = std::fs::remove_dir_all(&data_dir);
        let _ = std::fs::remove_file(data_dir.with_extension("log"));
        std::fs::create_dir_all(&data_dir)?;
        let creds = cluster_lines(&["node-credentials", name])?;
        let kubeconfig = std::fs::read_to_string(value(&creds, "KUBECONFIG")?)?;
        let apiserver = value(&cluster_lines(&["env"])?, "APISERVER")
            .unwrap_or_else(|_| "127.0.0.1:16443".to_owned());
        let via = kubeconfig.replace(
            &format!("https://{apiserver}"),
            &format!("https://{server}"),
        );
        if via == kubeconfig {
            bail!("the node kubeconfig does not name https://{apiserver}");
        }
        let path = data_dir.with_extension("kubeconfig");
        std::fs::write(&path, via)?;
        let mut all = vec!["--kubeconfig", path.to_str().context("path")?];
        all.extend_from_slice(flags);
        Self::spawn_with(name, port, &all, data_dir, Credentials::OwnKubeconfig)
    }

    /// Starts node `name` (fresh data dir) with nothing but `bootstrap_kubeconfig` (a
    /// bootstrap token, see `hack/cluster bootstrap-token`): no client certificate (its
    /// `--kubeconfig`, `<data dir>/kubelet.kubeconfig`, is absent) and no serving
    /// certificate of its own.
    ///
    /// # Errors
    /// As [`KrustletNode::start`].
    pub fn start_bootstrap(
        name: &str,
        port: u16,
        bootstrap_kubeconfig: &str,
        flags: &[&str],
    ) -> Result<Self> {
        let data_dir = root().join("target/e2e").join(name);
        let _ = std::fs::remove_dir_all(&data_dir);
        let _ = std::fs::remove_file(data_dir.with_extension("log"));
        std::fs::create_dir_all(&data_dir)?;
        let kubeconfig = data_dir.join("kubelet.kubeconfig");
        let mut all = vec![
            "--kubeconfig",
            kubeconfig.to_str().context("path")?,
            "--bootstrap-kubeconfig",
            bootstrap_kubeconfig,
        ];
        all.extend_from_slice(flags);
        Self::spawn_with(name, port, &all, data_dir, Credentials::Bootstrap)
    }

    /// Starts node `name` (fresh data dir) in standalone mode: no kubeconfig, so no API
    /// server; its kubelet API takes the API server's kubelet client certificate and
    /// allows it everything (there is no one to ask).
    ///
    /// # Errors
    /// As [`KrustletNode::start`].
    pub fn start_standalone(name: &str, port: u16, flags: &[&str]) -> Result<Self> {
        let data_dir = root().join("target/e2e").join(name);
        let _ = std::fs::remove_dir_all(&data_dir);
        let _ = std::fs::remove_file(data_dir.with_extension("log"));
        std::fs::create_dir_all(&data_dir)?;
        let mut all = vec!["--authorization-mode", "AlwaysAllow"];
        all.extend_from_slice(flags);
        Self::spawn_with(name, port, &all, data_dir, Credentials::Standalone)
    }

    fn spawn(name: &str, port: u16, flags: &[&str], data_dir: PathBuf) -> Result<Self> {
        Self::spawn_with(name, port, flags, data_dir, Credentials::Minted)
    }

    fn spawn_with(
        name: &str,
        port: u16,
        flags: &[&str],
        data_dir: PathBuf,
        credentials: Credentials,
    ) -> Result<Self> {
        Self::spawn_at(name, port, flags, data_dir, credentials, At::default())
    }

    fn spawn_at(
        name: &str,
        port: u16,
        flags: &[&str],
        data_dir: PathBuf,
        credentials: Credentials,
        at: At,
    ) -> Result<Self> {
        let creds = if at.netns.is_some() {
            cluster_lines(&["node-credentials", name, &at.ip])?
        } else {
            cluster_lines(&["node-credentials", name])?
        };
        let env = cluster_lines(&["env"])?;
        let registry = value(&env, "REGISTRY")?;
        // The cluster's DNS, as a kubelet of the cluster is told it (a test's own
        // --cluster-dns wins over the environment).
        let dns: Vec<(&str, String)> = [
            ("KRUSTLET_CLUSTER_DNS", "CLUSTER_DNS"),
            ("KRUSTLET_CLUSTER_DOMAIN", "CLUSTER_DOMAIN"),
        ]
        .into_iter()
        .filter_map(|(var, key)| value(&env, key).ok().map(|v| (var, v)))
        .collect();
        // The benchmarks run the release build.
        let bin = std::env::var_os("KRUSTLET_BIN")
            .map_or_else(|| root().join("target/debug/krustlet"), PathBuf::from);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))?;
        // On a host: nsenter enters its network namespace only (the node shares the
        // machine's mounts) and executes krustlet in its own place (same PID).
        let mut command = match &at.netns {
            Some(netns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={netns}")).arg("--").arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let child = command
            .args(["--node-name", name, "--node-ip", &at.ip, "--address", &at.ip])
            .args(["--port", &port.to_string()])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(match credentials {
                Credentials::Minted => vec!["--kubeconfig".to_owned(), value(&creds, "KUBECONFIG")?],
                Credentials::OwnKubeconfig | Credentials::Bootstrap | Credentials::Standalone => {
                    Vec::new()
                }
            })
            .args(match credentials {
                Credentials::Minted | Credentials::OwnKubeconfig | Credentials::Standalone => vec![
                    "--cert-file".to_owned(),
                    value(&creds, "CERT_FILE")?,
                    "--private-key-file".to_owned(),
                    value(&creds, "KEY_FILE")?,
                ],
                Credentials::Bootstrap => Vec::new(),
            })
            .args(["--client-ca-file", &value(&creds, "CLIENT_CA_FILE")?])
            .args(["--insecure-registries", &registry])
            .args(flags)
            // Test nodes share the machine's disk with the build: the kubelet's defaults
            // (imagefs.available<15%, GC above 85% used) would evict or unpull for reasons
            // of the machine, not of the test. The tests of eviction and image GC pass
            // their own flags, which win over these.
            .env(
                "KRUSTLET_EVICTION_HARD",
                "memory.available<100Mi,nodefs.available<2%,nodefs.inodesFree<2%,imagefs.available<2%,imagefs.inodesFree<2%",
            )
            .env("KRUSTLET_IMAGE_GC_HIGH_THRESHOLD_PERCENT", "99")
            .envs(dns)
            .env("RUST_LOG", "info,kube_client=warn,kube_runtime=warn")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} (cargo build -p krustlet)", bin.display()))?;
        Ok(Self {
            name: name.to_owned(),
            port,
            child: Some(child),
            data_dir,
            at,
        })
    }

    /// The process ID, while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM and waits for the process to exit.
    ///
    /// # Errors
    /// When the process cannot be signalled.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill failed");
        }
        for _ in 0..100 {
            if let Some(s) = child.try_wait()? {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child.kill()?;
        Ok(child.wait()?)
    }

    /// Sends `signal` (`TERM`, `INT`, ...) to the process and waits up to `within` for it
    /// to exit; its exit status and how long it took.
    ///
    /// # Errors
    /// When the process cannot be signalled or does not exit in time (it is killed).
    pub fn signal_and_wait(
        &mut self,
        signal: &str,
        within: Duration,
    ) -> Result<(std::process::ExitStatus, Duration)> {
        let mut child = self.child.take().context("already stopped")?;
        let sent = std::time::Instant::now();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -{signal} failed");
        }
        while sent.elapsed() < within {
            if let Some(s) = child.try_wait()? {
                return Ok((s, sent.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill()?;
        let _ = child.wait();
        bail!(
            "{} did not exit within {within:?} of SIG{signal}",
            self.name
        )
    }

    /// What the process logged so far.
    ///
    /// # Errors
    /// When the log cannot be read.
    pub fn log(&self) -> Result<String> {
        Ok(std::fs::read_to_string(
            self.data_dir.with_extension("log"),
        )?)
    }

    /// Kills the process with SIGKILL, as a machine dies: no goodbye (no final status,
    /// no lease released, nothing cleaned up), and reaps it. [`KrustletNode::restart`]
    /// starts it again on the same data dir.
    ///
    /// # Errors
    /// When the process cannot be signalled.
    pub fn kill(&mut self) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        // std's Child::kill is SIGKILL on Unix.
        child.kill()?;
        Ok(child.wait()?)
    }

    /// GET `path` of this node's kubelet API with the API server's kubelet client
    /// certificate; the body.
    ///
    /// # Errors
    /// When the request fails.
    pub async fn api_get(&self, path: &str) -> Result<String> {
        let env = cluster_lines(&["env"])?;
        let out = tokio::process::Command::new("curl")
            .args(["-sf", "--max-time", "60", "--insecure", "--cert"])
            .arg(value(&env, "KUBELET_CLIENT_CERT")?)
            .arg("--key")
            .arg(value(&env, "KUBELET_CLIENT_KEY")?)
            .arg(format!("https://{}:{}{path}", self.at.ip, self.port))
            .output()
            .await
            .context("running curl")?;
        if !out.status.success() {
            bail!("GET {path} of {} failed: {:?}", self.name, out.status);
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// The counters and gauges of this node's `/metrics`, read from its kubelet API with
    /// the API server's kubelet client certificate.
    ///
    /// # Errors
    /// When the request fails.
    pub async fn metrics(&self) -> Result<std::collections::HashMap<String, f64>> {
        Ok(self
            .api_get("/metrics")
            .await?
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect())
    }

    /// This node's `/metrics` read by a Prometheus text-format parser (which fails on
    /// a page that is not one), and the page itself.
    ///
    /// # Errors
    /// When the request fails or the page does not parse.
    pub async fn scrape(&self) -> Result<(prometheus_parse::Scrape, String)> {
        let page = self.api_get("/metrics").await?;
        let scrape = prometheus_parse::Scrape::parse(page.lines().map(|l| Ok(l.to_owned())))
            .context("parsing /metrics")?;
        Ok((scrape, page))
    }
}

impl Drop for KrustletNode {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
        // The node keeps the memory-backed volumes (tmpfs) of pods still bound when it
        // stops, as a restarted agent needs them; a test leaves none behind.
        for mount in mounts_under(&self.data_dir) {
            let _ = Command::new("umount").arg("-l").arg(&mount).status();
        }
    }
}

/// Node `name`'s data dir, emptied (what an earlier run mounted there unmounted) with
/// its log.
fn fresh_data_dir(name: &str) -> Result<PathBuf> {
    let data_dir = root().join("target/e2e").join(name);
    for mount in mounts_under(&data_dir) {
        let _ = Command::new("umount").arg("-l").arg(&mount).status();
    }
    let _ = std::fs::remove_dir_all(&data_dir);
    let _ = std::fs::remove_file(data_dir.with_extension("log"));
    std::fs::create_dir_all(&data_dir)?;
    Ok(data_dir)
}

/// Mount points at or below `dir` (from `/proc/self/mountinfo`), deepest first.
#[must_use]
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(dir) = dir.canonicalize() else {
        return Vec::new();
    };
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(&dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// Waits up to `secs` for `cond` to hold on node `name`.
///
/// # Errors
/// On timeout.
pub async fn wait_node(
    nodes: &Api<Node>,
    name: &str,
    secs: u64,
    what: &str,
    cond: impl Fn(&Node) -> bool,
) -> Result<Node> {
    crate::pods::wait_object(nodes, "node", name, secs, what, cond).await
}

/// The number after `field:` in `/proc/<pid>/status` (`VmRSS` in KiB, `Threads`).
#[must_use]
pub fn proc_status(pid: u32, field: &str) -> Option<u64> {
    proc_field(&format!("/proc/{pid}/status"), field)
}

/// The number after `field:` in a `/proc` file of `Field: value [unit]` lines
/// (`/proc/<pid>/status`, `/proc/meminfo`).
#[must_use]
pub fn proc_field(path: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Node condition `type_`'s status.
#[must_use]
pub fn node_condition(node: &Node, type_: &str) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}
