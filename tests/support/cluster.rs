//! The local cluster started by `hack/test` or `hack/cluster up`: what `hack/cluster`
//! prints (addresses, node credentials), an admin client and its `kubectl`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

use crate::{KrustletNode, PodRow, node_condition, push_as, wait_node};

/// The repository root.
#[must_use]
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `KEY=VALUE` lines printed by a `hack/cluster` command.
pub(crate) fn cluster_lines(args: &[&str]) -> Result<Vec<(String, String)>> {
    let out = Command::new(root().join("hack/cluster"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .context("running hack/cluster")?;
    if !out.status.success() {
        bail!("hack/cluster {args:?} failed; is the cluster up? (hack/test or hack/cluster up)");
    }
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect())
}

pub(crate) fn value(lines: &[(String, String)], key: &str) -> Result<String> {
    lines
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .with_context(|| format!("hack/cluster printed no {key}"))
}

/// A client with the given kubeconfig.
///
/// # Errors
/// When the kubeconfig cannot be read.
pub async fn client(kubeconfig: &str) -> Result<Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// The local cluster: an admin client and the registry address.
pub struct Cluster {
    /// Admin client.
    pub client: Client,
    /// `host:port` of the local registry.
    pub registry: String,
    kubectl: String,
    kubeconfig: String,
}

impl Cluster {
    /// Connects to the running local cluster.
    ///
    /// # Errors
    /// When the cluster is not up.
    pub async fn connect() -> Result<Self> {
        let lines = cluster_lines(&["env"])?;
        let kubeconfig = value(&lines, "KUBECONFIG")?;
        Ok(Self {
            client: client(&kubeconfig).await?,
            registry: value(&lines, "REGISTRY")?,
            kubectl: value(&lines, "KUBECTL")?,
            kubeconfig,
        })
    }

    /// The cluster's `kubectl` with the admin kubeconfig and `args`, not yet started (for
    /// commands that run on, such as `port-forward`); killed when dropped.
    #[must_use]
    pub fn kubectl_command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.kubectl);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .kill_on_drop(true);
        cmd
    }

    /// Runs the cluster's `kubectl` with the admin kubeconfig; its stdout on success.
    ///
    /// # Errors
    /// When kubectl fails; the error holds its stderr.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = tokio::process::Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .await
            .context("running kubectl")?;
        if !out.status.success() {
            bail!(
                "kubectl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Makes sure metrics-server runs and serves `metrics.k8s.io` (`hack/cluster
    /// metrics-server`: nothing to do when it does; a cluster started before `up` did so
    /// gets it now).
    ///
    /// # Errors
    /// When the script fails.
    pub async fn metrics_server(&self) -> Result<()> {
        let out = tokio::process::Command::new(root().join("hack/cluster"))
            .arg("metrics-server")
            .output()
            .await
            .context("running hack/cluster metrics-server")?;
        if !out.status.success() {
            bail!(
                "hack/cluster metrics-server: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// The row `kubectl get pod NAME` prints, in the `default` namespace.
    ///
    /// # Errors
    /// When kubectl fails or prints something else than one row.
    pub async fn pod_row(&self, name: &str) -> Result<PodRow> {
        let out = self.kubectl(&["get", "pod", name, "--no-headers"]).await?;
        PodRow::parse(&out).with_context(|| format!("kubectl get pod {name} printed {out:?}"))
    }

    /// The events about pod `name` in `default` (this pod, not an earlier one of that
    /// name: matched by UID), oldest first, as `kubectl get events` lists them.
    ///
    /// # Errors
    /// When the pod or the list cannot be read.
    pub async fn events(&self, name: &str) -> Result<Vec<k8s_openapi::api::core::v1::Event>> {
        let uid = self
            .pods()
            .get(name)
            .await?
            .metadata
            .uid
            .unwrap_or_default();
        let api: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.client.clone(), "default");
        let mut list = api
            .list(&kube::api::ListParams::default().fields(&format!("involvedObject.uid={uid}")))
            .await?
            .items;
        list.sort_by_key(|e| e.first_timestamp.clone().map(|t| t.0));
        Ok(list)
    }

    /// Pushes `target/wasm/<workload>.wasm` as `<registry>/e2e/<workload>:<tag>`.
    ///
    /// # Errors
    /// When the workload is not built or the push fails.
    pub async fn push(&self, workload: &str, tag: &str) -> Result<String> {
        push_as(
            &self.registry,
            workload,
            &format!("e2e/{workload}:{tag}"),
            &oci::PushFormat::cncf(),
            &oci::RegistryAuth::Anonymous,
        )
        .await
    }

    /// Pushes component `target/wasm/<workload>.wasm` as
    /// `<registry>/e2e/<workload>-wkg:<tag>` the way the wasm package tools push it
    /// ([`crate::push_wkg`]).
    ///
    /// # Errors
    /// When the workload is not built or not a component, or the push fails.
    pub async fn push_wkg(&self, workload: &str, tag: &str) -> Result<String> {
        crate::push_wkg(
            &self.registry,
            workload,
            &format!("e2e/{workload}-wkg:{tag}"),
        )
        .await
    }

    /// Starts a krustlet node `name` after removing any `Node` object left by an earlier
    /// run under that name, so that what the test sees is this process's doing.
    ///
    /// # Errors
    /// When the stale node cannot be removed or the process cannot start.
    pub async fn fresh_node(&self, name: &str, port: u16) -> Result<KrustletNode> {
        self.fresh_node_stopped(name).await?;
        KrustletNode::start(name, port, &[])
    }

    /// Removes the `Node` and `Lease` an earlier run may have left under `name`.
    async fn fresh_node_stopped(&self, name: &str) -> Result<()> {
        match self
            .nodes()
            .delete(name, &kube::api::DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.client.clone(), "kube-node-lease");
        let _ = leases
            .delete(name, &kube::api::DeleteParams::default())
            .await;
        Ok(())
    }

    /// Removes what an earlier run left of node `name` (its `Node` and `Lease`).
    ///
    /// # Errors
    /// When the API server refuses.
    pub async fn forget_node(&self, name: &str) -> Result<()> {
        self.fresh_node_stopped(name).await
    }

    /// [`Cluster::fresh_node`] with more krustlet flags, e.g. `--max-pods`.
    ///
    /// # Errors
    /// As [`Cluster::fresh_node`].
    pub async fn fresh_node_with(
        &self,
        name: &str,
        port: u16,
        flags: &[&str],
    ) -> Result<KrustletNode> {
        self.fresh_node_stopped(name).await?;
        KrustletNode::start(name, port, flags)
    }

    /// Starts node `name` and waits until it is `Ready`.
    ///
    /// # Errors
    /// When it does not become ready within a minute.
    pub async fn ready_node(&self, name: &str, port: u16, flags: &[&str]) -> Result<KrustletNode> {
        let node = self.fresh_node_with(name, port, flags).await?;
        wait_node(&self.nodes(), name, 60, "Ready", |n| {
            node_condition(n, "Ready").as_deref() == Some("True")
        })
        .await?;
        Ok(node)
    }

    /// Starts node `name` on a host of its own ([`crate::Host`]), waits until it is
    /// `Ready`, then routes to its podCIDR and runs the host's kube-proxy. The host (drop
    /// it after the node), the node and its podCIDR.
    ///
    /// # Errors
    /// When the host cannot be made or the node is not ready within a minute.
    pub async fn ready_node_on_host(
        &self,
        name: &str,
        port: u16,
        flags: &[&str],
    ) -> Result<(crate::Host, KrustletNode, String)> {
        self.fresh_node_stopped(name).await?;
        let host = crate::Host::up(name)?;
        let node = KrustletNode::start_on(&host, name, port, flags)?;
        wait_node(&self.nodes(), name, 60, "Ready", |n| {
            node_condition(n, "Ready").as_deref() == Some("True")
        })
        .await?;
        let cidr = host.wire()?;
        Ok((host, node, cidr))
    }

    /// The pods API of the `default` namespace.
    #[must_use]
    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    /// The nodes API.
    #[must_use]
    pub fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }
}

/// The node-lifecycle controller's timings, read from the running
/// kube-controller-manager's command line (its defaults where a flag is absent).
#[derive(Debug, Clone, Copy)]
pub struct ControllerTimings {
    /// `--node-monitor-grace-period`: how long a node may go without a heartbeat (lease
    /// renewal or status) before it is marked `Ready` `Unknown` and tainted unreachable.
    pub grace_period: std::time::Duration,
    /// `--node-monitor-period`: how often the controller checks.
    pub monitor_period: std::time::Duration,
}

impl ControllerTimings {
    /// The timings of the controller manager `hack/cluster up` started.
    ///
    /// # Errors
    /// When it does not run.
    pub fn read() -> Result<Self> {
        let kubeconfig = value(&cluster_lines(&["env"])?, "KUBECONFIG")?;
        let run_dir = Path::new(&kubeconfig).parent().context("run dir")?;
        let pid = std::fs::read_to_string(run_dir.join("pids/kube-controller-manager"))?;
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.trim()))
            .context("kube-controller-manager is not running")?;
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let flag = |name: &str| {
            let eq = format!("{name}=");
            args.iter().enumerate().find_map(|(i, a)| {
                if a == name {
                    args.get(i + 1).cloned()
                } else {
                    a.strip_prefix(&eq).map(str::to_owned)
                }
            })
        };
        let duration = |name: &str, default: u64| -> Result<std::time::Duration> {
            flag(name).map_or(Ok(std::time::Duration::from_secs(default)), |v| {
                go_duration(&v).with_context(|| format!("{name} {v}"))
            })
        };
        Ok(Self {
            // The upstream defaults (kube-controller-manager 1.36).
            grace_period: duration("--node-monitor-grace-period", 50)?,
            monitor_period: duration("--node-monitor-period", 5)?,
        })
    }
}

/// A Go duration of hours, minutes and whole seconds (`20s`, `1m30s`, `1h0m0s`).
fn go_duration(text: &str) -> Option<std::time::Duration> {
    let (mut total, mut number) = (0u64, String::new());
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number.parse().ok()?;
        number.clear();
        total += n * match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
    }
    number
        .is_empty()
        .then_some(std::time::Duration::from_secs(total))
}

/// The cluster and a ready krustlet node `name` of the test's own, started with `flags`.
///
/// # Errors
/// When the cluster is not up or the node does not become ready.
pub async fn setup(name: &str, port: u16, flags: &[&str]) -> Result<(Cluster, KrustletNode)> {
    let cluster = Cluster::connect().await?;
    let node = cluster.ready_node(name, port, flags).await?;
    Ok((cluster, node))
}

/// The `KEY=VALUE` lines of `hack/cluster env`.
///
/// # Errors
/// When the cluster is not up.
pub fn cluster_env() -> Result<std::collections::HashMap<String, String>> {
    Ok(cluster_lines(&["env"])?.into_iter().collect())
}

/// The `KEY=VALUE` lines of `hack/cluster node-credentials NAME`: credentials of node
/// `name` (its kubeconfig, serving and client certificates).
///
/// # Errors
/// When the cluster is not up.
pub fn node_credentials(name: &str) -> Result<std::collections::HashMap<String, String>> {
    Ok(cluster_lines(&["node-credentials", name])?
        .into_iter()
        .collect())
}

/// The `KEY=VALUE` lines of `hack/cluster bootstrap-token TTL`: a fresh bootstrap token
/// (`TOKEN`), a kubeconfig with it (`BOOTSTRAP_KUBECONFIG`) and the cluster CA
/// (`CLIENT_CA_FILE`).
///
/// # Errors
/// When the cluster is not up.
pub fn bootstrap_token(ttl: &str) -> Result<std::collections::HashMap<String, String>> {
    Ok(cluster_lines(&["bootstrap-token", ttl])?
        .into_iter()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::go_duration;
    use std::time::Duration;

    #[test]
    fn go_durations_of_whole_seconds_parse() {
        assert_eq!(go_duration("20s"), Some(Duration::from_secs(20)));
        assert_eq!(go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(go_duration("1h0m0s"), Some(Duration::from_secs(3600)));
        assert_eq!(go_duration("20"), None);
        assert_eq!(go_duration("500ms"), None);
    }
}
