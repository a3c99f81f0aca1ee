//! The wasm runtime behind the node agent: OCI store + wasmtime engine, adapted to
//! [`kubelet::Runtime`].

use std::path::PathBuf;

use kubelet::keyring::Credential;
use kubelet::runtime::{
    BoxFuture, ContainerExit, ContainerHandle, ContainerRun, Counter, Image, ImageError,
    ImageFsUsage, PullPolicy, StoredImage,
};
use wasi_runtime::{ContainerSpec, Engine, Exit, Preopen};

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
    async fn pull(
        &self,
        reference: &str,
        policy: PullPolicy,
        credentials: &[Credential],
    ) -> Result<Image, ImageError> {
        if policy != PullPolicy::Always {
            let cached = self.store.cached(reference).await.map_err(image_error)?;
            // A private image on the node is this pod's only with a credential that
            // pulled it; otherwise it is pulled again, so the registry decides.
            let allowed = |img: &oci::Image| {
                img.credentials.is_empty()
                    || credentials.iter().any(|c| {
                        img.credentials
                            .contains(&oci::credential_id(&basic_auth(c)))
                    })
            };
            if let Some(img) = cached.filter(allowed) {
                return Ok(image(reference, img, false));
            }
            if policy == PullPolicy::Never {
                return Err(ImageError::NeverPull(format!(
                    "Container image \"{reference}\" is not present with pull policy of Never"
                )));
            }
        }
        if credentials.is_empty() {
            let (img, downloaded) = self
                .store
                .pull(reference, &oci::RegistryAuth::Anonymous)
                .await
                .map_err(image_error)?;
            return Ok(image(reference, img, downloaded));
        }
        // Each matching credential in turn, as the kubelet does; all errors if none works.
        let mut errors = Vec::new();
        for c in credentials {
            match self.store.pull(reference, &basic_auth(c)).await {
                Ok((img, downloaded)) => return Ok(image(reference, img, downloaded)),
                Err(e @ oci::Error::InvalidReference { .. }) => return Err(image_error(e)),
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(ImageError::Pull(if errors.len() == 1 {
            errors.remove(0)
        } else {
            format!("[{}]", errors.join(", "))
        }))
    }

    async fn start(&self, run: ContainerRun) -> Result<ContainerHandle, String> {
        let wasm = self
            .store
            .module(&run.image.handle)
            .await
            .map_err(|e| e.to_string())?;
        // Descriptors the mounts' paths name: open until the sandbox has its own.
        let _keep_open: Vec<_> = run.mounts.iter().map(|m| m.keep_open.clone()).collect();
        let spec = ContainerSpec {
            module_key: run.image.handle.clone(),
            wasm,
            args: run.args,
            env: run.env,
            log_path: run.log_path,
            memory_limit: run.memory_limit,
            preopens: run
                .mounts
                .into_iter()
                .map(|m| Preopen {
                    host: m.host_path,
                    guest: m.container_path,
                    read_only: m.read_only,
                })
                .collect(),
        };
        let running = self.engine.start(spec).await.map_err(|e| e.to_string())?;
        let killer = running.killer();
        Ok(ContainerHandle::new(move || killer.kill(), async move {
            exit(running.wait().await)
        }))
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

    fn pull_image<'a>(
        &'a self,
        reference: &'a str,
        policy: PullPolicy,
        credentials: &'a [Credential],
    ) -> BoxFuture<'a, Result<Image, ImageError>> {
        Box::pin(self.pull(reference, policy, credentials))
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
