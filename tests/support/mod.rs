//! Harness for the end-to-end tests: the real local cluster (started by `hack/test` or
//! `hack/cluster up`), krustlet nodes run as child processes, and helpers on pods.

pub mod hostile;
pub mod outage;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStatus, Node, Pod};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::await_condition;
use kube::{Api, Client};

/// The repository root.
#[must_use]
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `KEY=VALUE` lines printed by a `hack/cluster` command.
fn cluster_lines(args: &[&str]) -> Result<Vec<(String, String)>> {
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

fn value(lines: &[(String, String)], key: &str) -> Result<String> {
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

/// A krustlet node run as a child process; stopped (SIGTERM) when dropped.
pub struct KrustletNode {
    /// Node name.
    pub name: String,
    /// Kubelet API port.
    pub port: u16,
    child: Option<Child>,
    /// Data directory.
    pub data_dir: PathBuf,
}

impl KrustletNode {
    /// Starts `target/debug/krustlet` as node `name` with its own port and data dir.
    ///
    /// # Errors
    /// When credentials cannot be minted or the binary cannot start.
    pub fn start(name: &str, port: u16, flags: &[&str]) -> Result<Self> {
        let data_dir = root().join("target/e2e").join(name);
        for mount in mounts_under(&data_dir) {
            let _ = Command::new("umount").arg("-l").arg(&mount).status();
        }
        let _ = std::fs::remove_dir_all(&data_dir);
        let _ = std::fs::remove_file(data_dir.with_extension("log"));
        std::fs::create_dir_all(&data_dir)?;
        Self::spawn(name, port, flags, data_dir)
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
        let again = Self::spawn(&self.name, self.port, flags, self.data_dir.clone())?;
        *self = again;
        Ok(())
    }

    /// Starts node `name` (fresh data dir) reaching the API server through `server`
    /// (`host:port`, e.g. an [`outage::Proxy`]) instead of directly.
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
        Self::spawn_with(name, port, &all, data_dir, true)
    }

    fn spawn(name: &str, port: u16, flags: &[&str], data_dir: PathBuf) -> Result<Self> {
        Self::spawn_with(name, port, flags, data_dir, false)
    }

    fn spawn_with(
        name: &str,
        port: u16,
        flags: &[&str],
        data_dir: PathBuf,
        own_kubeconfig: bool,
    ) -> Result<Self> {
        let creds = cluster_lines(&["node-credentials", name])?;
        let registry = value(&cluster_lines(&["env"])?, "REGISTRY")?;
        // The benchmarks run the release build.
        let bin = std::env::var_os("KRUSTLET_BIN")
            .map_or_else(|| root().join("target/debug/krustlet"), PathBuf::from);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))?;
        let child = Command::new(&bin)
            .args([
                "--node-name",
                name,
                "--node-ip",
                "127.0.0.1",
                "--address",
                "127.0.0.1",
            ])
            .args(["--port", &port.to_string()])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(if own_kubeconfig {
                Vec::new()
            } else {
                vec!["--kubeconfig".to_owned(), value(&creds, "KUBECONFIG")?]
            })
            .args(["--cert-file", &value(&creds, "CERT_FILE")?])
            .args(["--private-key-file", &value(&creds, "KEY_FILE")?])
            .args(["--client-ca-file", &value(&creds, "CLIENT_CA_FILE")?])
            .args(["--insecure-registries", &registry])
            .args(flags)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} (cargo build -p krustlet)", bin.display()))?;
        Ok(Self {
            name: name.to_owned(),
            port,
            child: Some(child),
            data_dir,
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

/// A row of `kubectl get pods`: `NAME READY STATUS RESTARTS AGE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRow {
    /// `ready/total` containers.
    pub ready: String,
    /// The STATUS column: phase, or a reason such as `CrashLoopBackOff` or `Init:1/2`.
    pub status: String,
    /// The restart count, without the `(5s ago)` that may follow it.
    pub restarts: u32,
}

impl PodRow {
    fn parse(out: &str) -> Option<Self> {
        let mut lines = out.lines();
        let line = lines.next()?;
        if lines.next().is_some() {
            return None;
        }
        let cells: Vec<&str> = line.split_whitespace().collect();
        Some(Self {
            ready: (*cells.get(1)?).to_owned(),
            status: (*cells.get(2)?).to_owned(),
            restarts: cells.get(3)?.parse().ok()?,
        })
    }
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
    let fut = await_condition(nodes.clone(), name, move |n: Option<&Node>| {
        n.is_some_and(&cond)
    });
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(Ok(Some(n))) => Ok(n),
        Ok(Ok(None)) => bail!("node {name} vanished waiting for {what}"),
        Ok(Err(e)) => bail!("watching node {name}: {e}"),
        Err(_) => bail!("node {name}: timed out after {secs}s waiting for {what}"),
    }
}

/// Waits up to `secs` for `cond` to hold on pod `name`; the error shows the last status.
///
/// # Errors
/// On timeout.
pub async fn wait_pod(
    pods: &Api<Pod>,
    name: &str,
    secs: u64,
    what: &str,
    cond: impl Fn(&Pod) -> bool,
) -> Result<Pod> {
    let fut = await_condition(pods.clone(), name, move |p: Option<&Pod>| {
        p.is_some_and(&cond)
    });
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(Ok(Some(p))) => Ok(p),
        Ok(Ok(None)) => bail!("pod {name} vanished waiting for {what}"),
        Ok(Err(e)) => bail!("watching pod {name}: {e}"),
        Err(_) => {
            let status = pods
                .get(name)
                .await
                .map(|p| serde_json::to_string_pretty(&p.status))
                .ok();
            bail!("pod {name}: timed out after {secs}s waiting for {what}; status: {status:?}")
        }
    }
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

/// The pod's phase.
#[must_use]
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

/// A pod manifest for a wasm workload pinned (by node selector, not `nodeName`) to `node`,
/// tolerating the wasm taints.
#[must_use]
pub fn wasm_pod(name: &str, node: &str, image: &str, args: &[&str], restart_policy: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name },
        "spec": {
            "restartPolicy": restart_policy,
            "nodeSelector": { "kubernetes.io/arch": "wasm32-wasi", "kubernetes.io/hostname": node },
            "tolerations": [
                { "key": "kubernetes.io/arch", "operator": "Equal", "value": "wasm32-wasi" }
            ],
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "main",
                "image": image,
                "args": args,
                "env": [{ "name": "GREETING", "value": "hello-e2e" }]
            }]
        }
    }))
    .expect("valid pod manifest")
}

/// Waits up to `secs` for pod `name` not to exist; returns how long it took.
///
/// # Errors
/// On timeout.
pub async fn wait_gone(pods: &Api<Pod>, name: &str, secs: u64) -> Result<Duration> {
    let start = std::time::Instant::now();
    let fut = await_condition(pods.clone(), name, |p: Option<&Pod>| p.is_none());
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(Ok(_)) => Ok(start.elapsed()),
        Ok(Err(e)) => bail!("watching pod {name}: {e}"),
        Err(_) => bail!("pod {name} still exists after {secs}s"),
    }
}

/// Removes pod `name` if an earlier run left it, at once (grace period 0, so a pod of a
/// node that is no longer running goes too), and waits until it is gone.
///
/// # Errors
/// On timeout.
pub async fn ensure_absent(pods: &Api<Pod>, name: &str) -> Result<()> {
    let now = kube::api::DeleteParams {
        grace_period_seconds: Some(0),
        ..kube::api::DeleteParams::default()
    };
    let _ = pods.delete(name, &now).await;
    wait_gone(pods, name, 60).await.map(|_| ())
}

/// Creates `pod` after removing any pod of its name left by an earlier run.
///
/// # Errors
/// When the old pod does not go or the create request fails.
pub async fn create_fresh(pods: &Api<Pod>, pod: &Pod) -> Result<()> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    ensure_absent(pods, &name).await?;
    pods.create(&kube::api::PostParams::default(), pod).await?;
    Ok(())
}

/// Deletes pod `name` (with its grace period) and waits up to `secs` until it is gone.
///
/// # Errors
/// When the request fails or the pod stays.
pub async fn delete_and_wait(pods: &Api<Pod>, name: &str, secs: u64) -> Result<()> {
    pods.delete(name, &kube::api::DeleteParams::default())
        .await?;
    wait_gone(pods, name, secs).await.map(|_| ())
}

/// The toleration of the wasm node taints.
#[must_use]
pub fn wasm_toleration() -> serde_json::Value {
    serde_json::json!([
        { "key": "kubernetes.io/arch", "operator": "Equal", "value": "wasm32-wasi" }
    ])
}

/// A pod `name` whose `spec` is given (containers and the rest), pinned to `node` by node
/// selector and tolerating the wasm taints; `spec.nodeName` in `spec` bypasses the
/// scheduler.
#[must_use]
pub fn pod_with_spec(name: &str, node: &str, spec: serde_json::Value) -> Pod {
    let mut full = serde_json::json!({
        "nodeSelector": { "kubernetes.io/arch": "wasm32-wasi", "kubernetes.io/hostname": node },
        "tolerations": wasm_toleration(),
        "automountServiceAccountToken": false,
    });
    if let (Some(full), serde_json::Value::Object(extra)) = (full.as_object_mut(), spec) {
        full.extend(extra);
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name },
        "spec": full,
    }))
    .expect("valid pod manifest")
}

/// The status of container `name` (app or init).
#[must_use]
pub fn container_status(pod: &Pod, name: &str) -> Option<ContainerStatus> {
    let s = pod.status.as_ref()?;
    s.container_statuses
        .iter()
        .flatten()
        .chain(s.init_container_statuses.iter().flatten())
        .find(|c| c.name == name)
        .cloned()
}

/// The `terminated` state of container `name`, if it is terminated.
#[must_use]
pub fn terminated(pod: &Pod, name: &str) -> Option<ContainerStateTerminated> {
    container_status(pod, name)?.state?.terminated
}

/// The `waiting` reason of container `name`, if it is waiting.
#[must_use]
pub fn waiting_reason(pod: &Pod, name: &str) -> Option<String> {
    container_status(pod, name)?.state?.waiting?.reason
}

/// The `waiting` message of container `name`, if it is waiting with one.
#[must_use]
pub fn waiting_message(pod: &Pod, name: &str) -> Option<String> {
    container_status(pod, name)?.state?.waiting?.message
}

/// Pod condition `type_`'s status (`True`/`False`).
#[must_use]
pub fn pod_condition(pod: &Pod, type_: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

/// Polls `kubectl get pod` until its row satisfies `cond`, up to `secs`.
///
/// # Errors
/// On timeout; the error shows the last row.
pub async fn wait_row(
    cluster: &Cluster,
    name: &str,
    secs: u64,
    cond: impl Fn(&PodRow) -> bool,
) -> Result<PodRow> {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    let mut last = None;
    while std::time::Instant::now() < end {
        if let Ok(row) = cluster.pod_row(name).await {
            if cond(&row) {
                return Ok(row);
            }
            last = Some(row);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("kubectl get pod {name}: the row never matched in {secs}s; last {last:?}")
}

/// A registry client for `registry` (plain HTTP: every registry of the tests is local).
fn registry_client(registry: &str) -> oci_client::Client {
    oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::HttpsExcept(vec![registry.to_owned()]),
        ..Default::default()
    })
}

/// `target/wasm/<workload>.wasm`.
///
/// # Errors
/// When it is not built.
pub fn workload(name: &str) -> Result<Vec<u8>> {
    let path = root().join("target/wasm").join(format!("{name}.wasm"));
    std::fs::read(&path).with_context(|| format!("{} (run hack/build-wasm)", path.display()))
}

/// The digest and size of the manifest `reference` points at.
///
/// # Errors
/// When the registry refuses.
pub async fn manifest_digest(
    registry: &str,
    reference: &str,
    auth: &oci::RegistryAuth,
) -> Result<(String, usize)> {
    let parsed: oci_client::Reference = reference.parse()?;
    let (bytes, digest) = registry_client(registry)
        .pull_manifest_raw(
            &parsed,
            auth,
            &[
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.index.v1+json",
            ],
        )
        .await?;
    Ok((digest, bytes.len()))
}

/// Pushes `workload` to `registry/repo:tag` in `format`; returns the reference.
///
/// # Errors
/// When the workload is not built or the push fails.
pub async fn push_as(
    registry: &str,
    workload_name: &str,
    repo_tag: &str,
    format: &oci::PushFormat,
    auth: &oci::RegistryAuth,
) -> Result<String> {
    let reference = format!("{registry}/{repo_tag}");
    let _one_at_a_time = PUSHES.lock().await;
    oci::push_as(
        workload(workload_name)?,
        &reference,
        auth,
        &[registry.to_owned()],
        format,
    )
    .await?;
    Ok(reference)
}

/// Pushes from the tests go one at a time: the registry's filesystem storage loses
/// uploads when several clients push the same blob at once ("blob unknown to registry").
static PUSHES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Pushes a container image (a config and one `tar+gzip` layer of `content`) to
/// `registry/repo:tag`; returns the reference.
///
/// # Errors
/// When the push fails.
pub async fn push_container_image(
    registry: &str,
    repo_tag: &str,
    content: &[u8],
) -> Result<String> {
    let reference = format!("{registry}/{repo_tag}");
    let layer = oci_client::client::ImageLayer::new(
        content.to_vec(),
        "application/vnd.oci.image.layer.v1.tar+gzip".to_owned(),
        None,
    );
    let config = oci_client::client::Config::new(
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec(),
        "application/vnd.oci.image.config.v1+json".to_owned(),
        None,
    );
    let _one_at_a_time = PUSHES.lock().await;
    registry_client(registry)
        .push(
            &reference.parse()?,
            &[layer],
            config,
            &oci::RegistryAuth::Anonymous,
            None,
        )
        .await?;
    Ok(reference)
}

/// Pushes a multi-platform image index to `registry/repo:tag` whose entries are a
/// linux/amd64 container image and `workload` as wasip1/wasm; returns the reference and
/// the index digest.
///
/// # Errors
/// When a push fails.
pub async fn push_index(
    registry: &str,
    workload_name: &str,
    repo_tag: &str,
) -> Result<(String, String)> {
    let anonymous = oci::RegistryAuth::Anonymous;
    let repo = repo_tag.split(':').next().unwrap_or(repo_tag);
    let wasm = push_as(
        registry,
        workload_name,
        &format!("{repo}:part-wasm"),
        &oci::PushFormat::cncf(),
        &anonymous,
    )
    .await?;
    let linux = push_container_image(registry, &format!("{repo}:part-linux"), b"not wasm").await?;
    let (wasm_digest, wasm_size) = manifest_digest(registry, &wasm, &anonymous).await?;
    let (linux_digest, linux_size) = manifest_digest(registry, &linux, &anonymous).await?;
    let index: oci_client::manifest::OciImageIndex = serde_json::from_value(serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": linux_digest,
              "size": linux_size, "platform": { "os": "linux", "architecture": "amd64" } },
            { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": wasm_digest,
              "size": wasm_size, "platform": { "os": "wasip1", "architecture": "wasm" } }
        ]
    }))?;
    let reference = format!("{registry}/{repo_tag}");
    let one_at_a_time = PUSHES.lock().await;
    registry_client(registry)
        .push_manifest_list(&reference.parse()?, &anonymous, index)
        .await?;
    drop(one_at_a_time);
    let (digest, _) = manifest_digest(registry, &reference, &anonymous).await?;
    Ok((reference, digest))
}

/// A registry of a test's own: Debian's `docker-registry` as a child process on
/// `127.0.0.1:<port>`, optionally requiring a user and password (htpasswd, bcrypt);
/// stopped when dropped.
pub struct OwnRegistry {
    /// `127.0.0.1:<port>`.
    pub addr: String,
    dir: PathBuf,
    child: Option<Child>,
    auth: Option<(String, String)>,
}

impl OwnRegistry {
    /// Prepares registry `name` (state under `target/e2e/registry-<name>`, emptied) on
    /// `port`; it is not started yet.
    ///
    /// # Errors
    /// When the state directory or the password file cannot be written.
    pub fn new(name: &str, port: u16, auth: Option<(&str, &str)>) -> Result<Self> {
        let dir = root().join("target/e2e").join(format!("registry-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data"))?;
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n  secret: e2e-{name}\n",
            dir.join("data").display()
        );
        if let Some((user, password)) = auth {
            let hash = bcrypt::hash(password, 5)?;
            std::fs::write(dir.join("htpasswd"), format!("{user}:{hash}\n"))?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: e2e-{name}\n    path: {}\n",
                dir.join("htpasswd").display()
            ));
        }
        std::fs::write(dir.join("config.yml"), config)?;
        Ok(Self {
            addr,
            dir,
            child: None,
            auth: auth.map(|(u, p)| (u.to_owned(), p.to_owned())),
        })
    }

    /// Starts it and waits until it answers.
    ///
    /// # Errors
    /// When it does not start within 30 s.
    pub async fn start(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.dir.join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.join("config.yml"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry (hack/build-tools installs it)")?;
        self.child = Some(child);
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(&self.addr).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("registry on {} did not start", self.addr)
    }

    /// Stops it (its content stays on disk for the next [`OwnRegistry::start`]).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The credentials it requires, for pushing.
    #[must_use]
    pub fn auth(&self) -> oci::RegistryAuth {
        match &self.auth {
            Some((u, p)) => oci::RegistryAuth::Basic(u.clone(), p.clone()),
            None => oci::RegistryAuth::Anonymous,
        }
    }
}

impl Drop for OwnRegistry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl KrustletNode {
    /// The counters and gauges of this node's `/metrics`, read from its kubelet API with
    /// the API server's kubelet client certificate.
    ///
    /// # Errors
    /// When the request fails.
    pub async fn metrics(&self) -> Result<std::collections::HashMap<String, f64>> {
        let env = cluster_lines(&["env"])?;
        let out = tokio::process::Command::new("curl")
            .args(["-sf", "--insecure", "--cert"])
            .arg(value(&env, "KUBELET_CLIENT_CERT")?)
            .arg("--key")
            .arg(value(&env, "KUBELET_CLIENT_KEY")?)
            .arg(format!("https://127.0.0.1:{}/metrics", self.port))
            .output()
            .await
            .context("running curl")?;
        if !out.status.success() {
            bail!("GET /metrics of {} failed: {:?}", self.name, out.status);
        }
        Ok(String::from_utf8(out.stdout)?
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect())
    }
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
