//! The wasm runtime behind the node agent: OCI store + wasmtime engine, adapted to
//! [`kubelet::Runtime`].

use std::os::fd::AsRawFd;
use std::path::PathBuf;

use kubelet::keyring::Credential;
use kubelet::runtime::{
    BoxFuture, ContainerExit, ContainerHandle, ContainerRun, ContainerUsage, Counter, Image,
    ImageError, ImageFsUsage, ImageStatus, Sandbox, SandboxConfig, StoredImage,
};
use std::sync::Arc;

use wasi_runtime::{ContainerSpec, Engine, Exit, PodDns, Preopen};

/// How long connecting to a pod's port for `kubectl port-forward` may take.
const PORT_FORWARD_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Images from [`oci::Store`], run by [`wasi_runtime::Engine`].
#[derive(Debug)]
pub struct WasmRuntime {
    pub engine: Engine,
    pub store: oci::Store,
    /// Where images live, for the filesystem's usage.
    pub image_dir: PathBuf,
    /// Treat the image store as a filesystem of this size (`--image-fs-capacity-bytes`)
    /// instead of measuring the real one.
    pub image_fs_capacity: Option<u64>,
    /// The pod network (`--cni-conf-dir`); `None`: pods share the node's address and
    /// have no sockets.
    pub network: Option<crate::sandbox::PodNetwork>,
    /// Each networked pod's DNS, by sandbox ID: its containers' name lookups are
    /// answered with it.
    pub dns: std::sync::Mutex<std::collections::HashMap<String, Arc<PodDns>>>,
}

/// The pod's resolver: the configuration the kubelet composed (a `search .` is no
/// search path) and its hosts entries (those of a managed `/etc/hosts`, with the pod's
/// addresses).
fn pod_dns(
    config: &SandboxConfig,
    ips: &[std::net::IpAddr],
    budget: &wasi_runtime::LookupBudget,
) -> Result<PodDns, String> {
    let mut composed = config.dns.clone();
    composed.searches.retain(|s| s != ".");
    let conf = network::ResolvConf::parse(&composed.render())
        .map_err(|e| format!("the pod's DNS configuration: {e}"))?;
    let mut hosts = network::Hosts::new();
    let entries = kubelet::pods::dns::managed_hosts(
        ips,
        &config.hostname,
        &config.host_domain,
        &config.host_aliases,
    );
    for (ip, names) in entries {
        // hostAliases' addresses are checked by the API server; anything else is skipped.
        if let Ok(ip) = ip.parse() {
            hosts.add(ip, names);
        }
    }
    Ok(PodDns::new(network::Resolver::new(conf, hosts), budget))
}

impl WasmRuntime {
    fn dns_of(&self, sandbox_id: &str) -> Option<Arc<PodDns>> {
        self.dns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(sandbox_id)
            .cloned()
    }
}

fn image(reference: &str, img: oci::Image, downloaded: bool) -> Image {
    Image {
        reference: reference.to_owned(),
        image_id: img.image_id,
        downloaded,
        size: img.size,
        handle: img.module_digest.to_string(),
    }
}

/// A pull secret's credential as the registry client takes it.
fn basic_auth(c: &Credential) -> oci::RegistryAuth {
    oci::RegistryAuth::Basic(c.username.clone(), c.password.clone())
}

fn image_error(e: oci::Error) -> ImageError {
    match e {
        oci::Error::InvalidReference { .. } => ImageError::InvalidName(e.to_string()),
        e => ImageError::Pull(e.to_string()),
    }
}

fn exit(e: Exit) -> ContainerExit {
    let (reason, message) = match &e {
        Exit::Code(0) => ("Completed".to_owned(), None),
        Exit::Code(_) | Exit::Killed => ("Error".to_owned(), None),
        // The reason names the trap, as a signal name would for a native process.
        Exit::Trap { kind, message } => (format!("Trap{kind}"), Some(message.clone())),
        Exit::OutOfMemory => (
            "OOMKilled".to_owned(),
            Some("the module was refused memory beyond its limit".to_owned()),
        ),
    };
    ContainerExit {
        code: e.code(),
        reason,
        message,
    }
}

impl WasmRuntime {
    async fn status(&self, reference: &str) -> Result<Option<ImageStatus>, ImageError> {
        let cached = self.store.cached(reference).await.map_err(image_error)?;
        Ok(cached.map(|img| {
            // The store names credentials as the kubelet does (`Credential::id`).
            let pulled_with = img.credentials.clone();
            ImageStatus {
                image: image(reference, img, false),
                pulled_with,
            }
        }))
    }

    async fn pull(
        &self,
        reference: &str,
        credential: Option<&Credential>,
    ) -> Result<Image, ImageError> {
        let auth = credential.map_or(oci::RegistryAuth::Anonymous, basic_auth);
        let (img, downloaded) = self
            .store
            .pull(reference, &auth)
            .await
            .map_err(image_error)?;
        Ok(image(reference, img, downloaded))
    }

    async fn start(&self, run: ContainerRun) -> Result<ContainerHandle, String> {
        let wasm = self
            .store
            .module(&run.image.handle)
            .await
            .map_err(|e| e.to_string())?;
        // The mounts' descriptors, named by path for wasmtime, open while the container
        // runs.
        let keep_open: Vec<_> = run.mounts.iter().map(|m| m.dir.clone()).collect();
        let id = format!("wasmtime://{}-{}-{}", run.sandbox_id, run.name, run.attempt);
        let spec = ContainerSpec {
            pod_id: run.sandbox_id.clone(),
            module_key: run.image.handle.clone(),
            wasm,
            args: run.args,
            env: run.env,
            log_path: run.log_path,
            memory_limit: run.memory_limit,
            request_timeout: run.request_timeout,
            reuse: wasi_runtime::ReuseSpec {
                max_requests: run.reuse.max_requests,
                max_concurrent: run.reuse.max_concurrent,
                idle_timeout: run.reuse.idle_timeout,
            },
            cpu: wasi_runtime::CpuShare {
                limit_millis: run.cpu.limit_millis,
                request_millis: run.cpu.request_millis,
            },
            network: self.network.as_ref().and_then(|n| n.netns(&run.sandbox_id)),
            dns: self.dns_of(&run.sandbox_id),
            http_port: run
                .ports
                .first()
                .copied()
                .unwrap_or(wasi_runtime::DEFAULT_HTTP_PORT),
            allowed_outbound: run
                .allowed_outbound
                .as_deref()
                .map(wasi_runtime::AllowList::parse)
                .map(|list| {
                    list.map(|list| match run.outbound_refused.clone() {
                        Some(tx) => list.on_refused(std::sync::Arc::new(move |what: &str| {
                            // Best effort: a full queue drops the notice (the counter
                            // and the log line still have it).
                            let _ = tx.try_send(what.to_owned());
                        })),
                        None => list,
                    })
                })
                .transpose()
                .map_err(|e| {
                    format!(
                        "annotation {}: {e}",
                        kubelet::runtime::ALLOWED_OUTBOUND_HOSTS
                    )
                })?,
            preopens: run
                .mounts
                .into_iter()
                .map(|m| Preopen {
                    host: PathBuf::from(format!("/proc/self/fd/{}", m.dir.as_raw_fd())),
                    guest: m.container_path,
                    read_only: m.read_only,
                })
                .collect(),
        };
        let running = self.engine.start(spec).await.map_err(|e| e.to_string())?;
        let killer = running.killer();
        let meter = running.meter();
        let usage = std::sync::Arc::new(move || {
            let u = meter.usage();
            ContainerUsage {
                cpu: u.cpu,
                memory_working_set: u.memory_bytes,
                cpu_periods: u.periods,
                cpu_throttled_periods: u.throttled_periods,
                cpu_throttled: u.throttled,
            }
        });
        Ok(
            ContainerHandle::new(id, move |grace| killer.stop(grace), async move {
                let exit = exit(running.wait().await);
                // A served component opens its preopens again for every request.
                drop(keep_open);
                exit
            })
            .with_usage(usage),
        )
    }

    async fn stored_images(&self) -> Vec<StoredImage> {
        self.store
            .images()
            .await
            .into_iter()
            .map(|i| StoredImage {
                reference: i.reference,
                image_id: i.image_id,
                handle: i.module_digest.to_string(),
                size: i.size,
            })
            .collect()
    }

    async fn remove(&self, handle: &str) -> Result<u64, String> {
        self.engine.forget(handle);
        self.store.remove(handle).await.map_err(|e| e.to_string())
    }

    async fn fs_usage(&self) -> ImageFsUsage {
        if let Some(capacity) = self.image_fs_capacity {
            return ImageFsUsage {
                capacity,
                used: self.store.usage().await,
            };
        }
        match rustix::fs::statvfs(&self.image_dir) {
            Ok(fs) => ImageFsUsage {
                capacity: fs.f_blocks * fs.f_frsize,
                used: (fs.f_blocks - fs.f_bfree) * fs.f_frsize,
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot measure the image filesystem");
                ImageFsUsage {
                    capacity: 1,
                    used: 0,
                }
            }
        }
    }
}

impl kubelet::Runtime for WasmRuntime {
    fn version(&self) -> String {
        Engine::version()
    }

    fn image_status<'a>(
        &'a self,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<Option<ImageStatus>, ImageError>> {
        Box::pin(self.status(reference))
    }

    fn pull_image<'a>(
        &'a self,
        reference: &'a str,
        credential: Option<&'a Credential>,
    ) -> BoxFuture<'a, Result<Image, ImageError>> {
        Box::pin(self.pull(reference, credential))
    }

    // A wasm pod's sandbox holds nothing of its own yet: its ID is the pod's UID. It is
    // where a pod's network namespace will live (issue 11).
    fn run_pod_sandbox(&self, config: SandboxConfig) -> BoxFuture<'_, Result<Sandbox, String>> {
        Box::pin(async move {
            match &self.network {
                Some(net) if !config.host_network => {
                    let sandbox = net.up(&config).await?;
                    let dns = pod_dns(&config, &sandbox.ips, self.engine.lookup_budget())?;
                    self.dns
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(sandbox.id.clone(), Arc::new(dns));
                    Ok(sandbox)
                }
                _ => Ok(Sandbox {
                    id: config.uid,
                    ips: Vec::new(),
                }),
            }
        })
    }

    fn remove_pod_sandbox<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.dns
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(id);
            if let Some(net) = &self.network {
                net.down(id, "", "").await;
            }
        })
    }

    fn port_forward<'a>(
        &'a self,
        id: &'a str,
        port: u16,
    ) -> BoxFuture<'a, Result<tokio::net::TcpStream, String>> {
        Box::pin(async move {
            let ns = self
                .network
                .as_ref()
                .and_then(|net| net.netns(id))
                .ok_or_else(|| {
                    "the pod has no network of its own (hostNetwork, or a node without \
                     --cni-conf-dir): nothing in it can listen"
                        .to_owned()
                })?;
            let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
            ns.tcp_connect(addr, PORT_FORWARD_CONNECT_TIMEOUT)
                .await
                .map_err(|e| format!("failed to connect to localhost:{port} inside the pod's network namespace: {e}"))
        })
    }

    fn update_pod_cidrs(&self, cidrs: Vec<String>) {
        if let Some(net) = &self.network {
            net.set_pod_cidrs(cidrs);
        }
    }

    fn list_pod_sandboxes(&self) -> BoxFuture<'_, Vec<String>> {
        Box::pin(std::future::ready(
            self.network
                .as_ref()
                .map(crate::sandbox::PodNetwork::list)
                .unwrap_or_default(),
        ))
    }

    fn start_container(&self, run: ContainerRun) -> BoxFuture<'_, Result<ContainerHandle, String>> {
        Box::pin(self.start(run))
    }

    fn counters(&self) -> Vec<Counter> {
        let store = self.store.stats();
        let engine = self.engine.stats();
        vec![
            Counter {
                name: "krustlet_image_manifest_requests_total",
                help: "Manifests asked of registries.",
                value: store.manifest_requests as f64,
            },
            Counter {
                name: "krustlet_image_downloads_total",
                help: "Wasm layers downloaded from registries.",
                value: store.downloads as f64,
            },
            Counter {
                name: "krustlet_outbound_refused_total",
                help: "Outgoing connections and requests of pods refused by their allowed outbound hosts.",
                value: wasi_runtime::refused_total() as f64,
            },
            Counter {
                name: "krustlet_module_compiles_total",
                help: "Wasm modules compiled to native code.",
                value: engine.compiles as f64,
            },
            Counter {
                name: "krustlet_module_cache_loads_total",
                help: "Wasm modules loaded as native code from the compile cache.",
                value: engine.cache_loads as f64,
            },
            Counter {
                name: "krustlet_container_starts_total",
                help: "Wasm modules and components started.",
                value: engine.starts as f64,
            },
            Counter {
                name: "krustlet_container_start_seconds_total",
                help: "Seconds those starts took in all: compiled code, WASI context, instantiation.",
                value: engine.start_time.as_secs_f64(),
            },
        ]
    }

    fn images(&self) -> BoxFuture<'_, Vec<StoredImage>> {
        Box::pin(self.stored_images())
    }

    fn remove_image<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, Result<u64, String>> {
        Box::pin(self.remove(handle))
    }

    fn image_fs_usage(&self) -> BoxFuture<'_, ImageFsUsage> {
        Box::pin(self.fs_usage())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_names_a_credential_as_the_kubelet_does() {
        // The image manager (kubelet) compares the IDs the store recorded at a pull with
        // the pod's credentials' IDs: both sides must name a credential alike.
        for (username, password) in [("u", "p"), ("", ""), ("robot$ci", "tok:en\0x")] {
            let c = Credential {
                username: username.to_owned(),
                password: password.to_owned(),
            };
            assert_eq!(c.id(), oci::credential_id(&basic_auth(&c)));
        }
    }
}
