//! [`FakeRuntime`]: a [`Runtime`] that runs scripted containers (exits, traps, hangs,
//! starts that fail or never end), images (pulls that fail, take time or never end) and
//! sandboxes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::lock;
use crate::api::BoxFuture;
use crate::keyring::Credential;
use crate::runtime::{
    ContainerExit, ContainerHandle, ContainerRun, Counter, Image, ImageError, ImageFsUsage,
    ImageStatus, Runtime, Sandbox, SandboxConfig, StoredImage,
};

/// What one run of a scripted container does.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Script {
    /// Runs for the duration, then exits with the code.
    Exit(Duration, i32),
    /// Runs for the duration, then traps (`unreachable`).
    Trap(Duration),
    /// Runs until killed.
    Hang,
    /// The start fails (`CreateContainerError`).
    StartFails,
    /// The start never ends (a module that compiles for ever) until killed.
    StartHangs,
}

/// What a pull of a scripted image does.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pull {
    /// Succeeds after the duration.
    Ok(Duration),
    /// Fails (a registry error).
    Fails,
    /// Never ends.
    Hangs,
}

/// Something the fake runtime did, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Did {
    /// A pull (not a presence check) of the reference.
    Pulled(String),
    /// A run of the container started.
    Started(String),
    /// A running container was killed.
    Killed(String),
    /// A run of the container ended by itself.
    Exited(String),
    /// A sandbox was set up for the pod of this UID.
    SandboxUp(String),
    /// The sandbox of the pod of this UID was removed.
    SandboxDown(String),
    /// The node's pod CIDRs were given.
    PodCidrs(Vec<String>),
}

/// A [`Runtime`] that runs scripts instead of modules.
#[derive(Default)]
pub(crate) struct FakeRuntime {
    /// Container name → the script of each run in turn; the last one repeats.
    scripts: Mutex<HashMap<String, VecDeque<Script>>>,
    /// Reference → the outcome of each pull in turn; the last one repeats. An image
    /// without a script pulls at once.
    pulls: Mutex<HashMap<String, VecDeque<Pull>>>,
    /// References held locally → the IDs of the credentials that pulled them.
    present: Mutex<HashMap<String, Vec<String>>>,
    /// Sandboxes that fail to be set up before one succeeds.
    pub sandbox_failures: std::sync::atomic::AtomicU32,
    /// The address each sandbox gets; `None`: the pod is on the node's network.
    pub pod_ip: Mutex<Option<std::net::IpAddr>>,
    /// The pod UIDs of sandboxes an earlier agent left up (listed until removed).
    pub left: Mutex<Vec<String>>,
    /// Each sandbox set up, as asked for.
    pub sandboxes: Mutex<Vec<SandboxConfig>>,
    did: Mutex<Vec<(Instant, Did)>>,
    /// Container name → the CPU resources of its last run.
    cpu: Mutex<HashMap<String, crate::runtime::CpuResources>>,
}

fn next<T: Copy>(queue: &mut VecDeque<T>) -> Option<T> {
    if queue.len() > 1 {
        queue.pop_front()
    } else {
        queue.front().copied()
    }
}

impl FakeRuntime {
    /// Container `name` runs these scripts, one per run; the last repeats.
    pub fn script(&self, name: &str, runs: &[Script]) {
        lock(&self.scripts).insert(name.to_owned(), runs.iter().copied().collect());
    }

    /// Pulls of `reference` go these ways in turn; the last repeats.
    pub fn pulls(&self, reference: &str, pulls: &[Pull]) {
        lock(&self.pulls).insert(reference.to_owned(), pulls.iter().copied().collect());
    }

    /// The CPU resources the last run of container `name` was started with.
    pub fn cpu_of(&self, name: &str) -> Option<crate::runtime::CpuResources> {
        lock(&self.cpu).get(name).copied()
    }

    /// What happened, with when.
    pub fn did(&self) -> Vec<(Instant, Did)> {
        lock(&self.did).clone()
    }

    /// When container `name` started, each run.
    pub fn starts(&self, name: &str) -> Vec<Instant> {
        let started = Did::Started(name.to_owned());
        self.did()
            .into_iter()
            .filter(|(_, d)| *d == started)
            .map(|(at, _)| at)
            .collect()
    }

    fn log(&self, did: Did) {
        lock(&self.did).push((Instant::now(), did));
    }

    fn image(reference: &str, downloaded: bool) -> Image {
        Image {
            reference: reference.to_owned(),
            image_id: format!("{reference}@sha256:{:064x}", reference.len()),
            downloaded,
            size: 1024,
            handle: format!("handle-{reference}"),
        }
    }

    /// Puts `reference` on the node as pulled with `credential` (`None`: public).
    pub fn hold(&self, reference: &str, credential: Option<&Credential>) {
        let ids = credential.map(Credential::id).into_iter().collect();
        lock(&self.present).insert(reference.to_owned(), ids);
    }

    fn status(&self, reference: &str) -> Result<Option<ImageStatus>, ImageError> {
        if reference.is_empty() || reference.contains(' ') {
            return Err(ImageError::InvalidName(format!(
                "invalid reference format: {reference:?}"
            )));
        }
        Ok(lock(&self.present).get(reference).map(|ids| ImageStatus {
            image: Self::image(reference, false),
            pulled_with: ids.clone(),
        }))
    }

    async fn pull(
        self: Arc<Self>,
        reference: String,
        credential: Option<Credential>,
    ) -> Result<Image, ImageError> {
        self.log(Did::Pulled(reference.clone()));
        let outcome = lock(&self.pulls)
            .get_mut(&reference)
            .and_then(next)
            .unwrap_or(Pull::Ok(Duration::ZERO));
        match outcome {
            Pull::Ok(took) => {
                tokio::time::sleep(took).await;
                self.hold(&reference, credential.as_ref());
                Ok(Self::image(&reference, true))
            }
            Pull::Fails => Err(ImageError::Pull(format!(
                "failed to resolve reference \"{reference}\": not found"
            ))),
            Pull::Hangs => std::future::pending().await,
        }
    }
}

/// [`Runtime`] for an `Arc` of the fake, so that a test keeps its own handle.
pub(crate) struct Shared(pub Arc<FakeRuntime>);

impl Runtime for Shared {
    fn version(&self) -> String {
        "fake://0.0.0".to_owned()
    }

    fn image_status<'a>(
        &'a self,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<Option<ImageStatus>, ImageError>> {
        Box::pin(std::future::ready(self.0.status(reference)))
    }

    fn pull_image<'a>(
        &'a self,
        reference: &'a str,
        credential: Option<&'a Credential>,
    ) -> BoxFuture<'a, Result<Image, ImageError>> {
        Box::pin(
            self.0
                .clone()
                .pull(reference.to_owned(), credential.cloned()),
        )
    }

    fn run_pod_sandbox(&self, config: SandboxConfig) -> BoxFuture<'_, Result<Sandbox, String>> {
        let failures = &self.0.sandbox_failures;
        let failed = failures
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if failed {
            return Box::pin(std::future::ready(Err("scripted failure".to_owned())));
        }
        self.0.log(Did::SandboxUp(config.uid.clone()));
        let uid = config.uid.clone();
        lock(&self.0.sandboxes).push(config);
        let ips = self
            .0
            .pod_ip
            .lock()
            .map(|ip| ip.iter().copied().collect())
            .unwrap_or_default();
        Box::pin(std::future::ready(Ok(Sandbox {
            id: format!("sandbox-{uid}"),
            ips,
        })))
    }

    fn update_pod_cidrs(&self, cidrs: Vec<String>) {
        self.0.log(Did::PodCidrs(cidrs));
    }

    fn list_pod_sandboxes(&self) -> BoxFuture<'_, Vec<String>> {
        Box::pin(std::future::ready(lock(&self.0.left).clone()))
    }

    fn remove_pod_sandbox<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ()> {
        let uid = id.strip_prefix("sandbox-").unwrap_or(id).to_owned();
        lock(&self.0.left).retain(|left| *left != uid);
        self.0.log(Did::SandboxDown(uid));
        Box::pin(std::future::ready(()))
    }

    // The fake's sandboxes share the host's network: a forward reaches the host's
    // loopback (the tests listen there on a port of their own).
    fn port_forward<'a>(
        &'a self,
        id: &'a str,
        port: u16,
    ) -> BoxFuture<'a, Result<tokio::net::TcpStream, String>> {
        Box::pin(async move {
            if !id.starts_with("sandbox-") {
                return Err(format!("no sandbox {id:?}"));
            }
            tokio::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port))
                .await
                .map_err(|e| format!("dial tcp4 127.0.0.1:{port}: {e}"))
        })
    }

    fn start_container(&self, run: ContainerRun) -> BoxFuture<'_, Result<ContainerHandle, String>> {
        let fake = self.0.clone();
        Box::pin(async move {
            let name = run.name.clone();
            let id = format!("fake://{}-{}-{}", run.sandbox_id, run.name, run.attempt);
            let script = lock(&fake.scripts)
                .get_mut(&name)
                .and_then(next)
                .unwrap_or(Script::Exit(Duration::ZERO, 0));
            match script {
                Script::StartFails => return Err("failed to instantiate: scripted".to_owned()),
                Script::StartHangs => std::future::pending::<()>().await,
                _ => {}
            }
            fake.log(Did::Started(name.clone()));
            lock(&fake.cpu).insert(name.clone(), run.cpu);
            let killed = CancellationToken::new();
            let kill = killed.clone();
            let exit = async move {
                let (after, exit) = match script {
                    Script::Exit(after, code) => (
                        Some(after),
                        ContainerExit {
                            code,
                            reason: if code == 0 { "Completed" } else { "Error" }.to_owned(),
                            message: None,
                        },
                    ),
                    Script::Trap(after) => (
                        Some(after),
                        ContainerExit {
                            code: 134,
                            reason: "TrapUnreachableCodeReached".to_owned(),
                            message: Some(
                                "wasm trap: wasm `unreachable` instruction executed".to_owned(),
                            ),
                        },
                    ),
                    _ => (
                        None,
                        ContainerExit {
                            code: 0,
                            reason: String::new(),
                            message: None,
                        },
                    ),
                };
                let ran = async {
                    match after {
                        Some(after) => tokio::time::sleep(after).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = ran => {
                        fake.log(Did::Exited(name));
                        exit
                    }
                    () = killed.cancelled() => {
                        fake.log(Did::Killed(name));
                        ContainerExit { code: 137, reason: "Error".to_owned(), message: None }
                    }
                }
            };
            // Every run has used a millisecond of CPU and a page of memory.
            let usage = Arc::new(|| crate::runtime::ContainerUsage {
                cpu: Duration::from_millis(1),
                memory_working_set: 65536,
                ..crate::runtime::ContainerUsage::default()
            });
            Ok(ContainerHandle::new(id, move |_grace| kill.cancel(), exit).with_usage(usage))
        })
    }

    fn counters(&self) -> Vec<Counter> {
        Vec::new()
    }

    fn images(&self) -> BoxFuture<'_, Vec<StoredImage>> {
        Box::pin(std::future::ready(Vec::new()))
    }

    fn remove_image<'a>(&'a self, _handle: &'a str) -> BoxFuture<'a, Result<u64, String>> {
        Box::pin(std::future::ready(Ok(0)))
    }

    fn image_fs_usage(&self) -> BoxFuture<'_, ImageFsUsage> {
        Box::pin(std::future::ready(ImageFsUsage {
            capacity: 1 << 40,
            used: 0,
        }))
    }
}
