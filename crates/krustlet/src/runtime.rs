//! The wasm runtime behind the node agent: OCI store + wasmtime engine, adapted to
//! [`kubelet::Runtime`].

use kubelet::runtime::{
    ContainerExit, ContainerHandle, ContainerRun, Image, ImageError, PullPolicy,
};
use wasi_runtime::{ContainerSpec, Engine, Exit, Preopen};

/// Images from [`oci::Store`], run by [`wasi_runtime::Engine`].
#[derive(Debug)]
pub struct WasmRuntime {
    pub engine: Engine,
    pub store: oci::Store,
}

fn image(reference: &str, img: oci::Image, downloaded: bool) -> Image {
    Image {
        reference: reference.to_owned(),
        image_id: img.image_id,
        downloaded,
        size: img.size,
        handle: img.module_digest,
    }
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

impl kubelet::Runtime for WasmRuntime {
    fn version(&self) -> String {
        Engine::version()
    }

    async fn pull_image(&self, reference: &str, policy: PullPolicy) -> Result<Image, ImageError> {
        if policy != PullPolicy::Always {
            if let Some(img) = self.store.cached(reference).await.map_err(image_error)? {
                return Ok(image(reference, img, false));
            }
            if policy == PullPolicy::Never {
                return Err(ImageError::NeverPull(format!(
                    "Container image \"{reference}\" is not present with pull policy of Never"
                )));
            }
        }
        let (img, downloaded) = self
            .store
            .pull(reference, &oci::RegistryAuth::Anonymous)
            .await
            .map_err(image_error)?;
        Ok(image(reference, img, downloaded))
    }

    async fn start_container(&self, run: ContainerRun) -> Result<ContainerHandle, String> {
        let wasm = self
            .store
            .module(&run.image.handle)
            .await
            .map_err(|e| e.to_string())?;
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
}
