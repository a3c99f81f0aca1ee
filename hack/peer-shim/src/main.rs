//! The wasm peer of `hack/bench peers`.
//!
//! runwasi's shim library does everything a containerd shim does (the task API, the pause
//! sandbox, one container process per pod made by youki's libcontainer, stdio to the CRI
//! log FIFOs); this file only says how a WASI preview 1 module runs inside that process:
//! in wasmtime, with the container's args and environment, its root directory preopened as
//! `/`, and its stdio inherited. That is what runwasi's own wasmtime shim does for a module
//! given as a file in the image (a wasm-in-scratch image, which is what the bench uses), so
//! the per-pod costs measured are the library's, not this file's.

use anyhow::Result;
use containerd_shim_wasm::sandbox::Sandbox;
use containerd_shim_wasm::sandbox::context::RuntimeContext;
use containerd_shim_wasm::shim::{Cli, Config, Shim, Version};
use wasmtime::error::Context as _;
use wasmtime::{Engine, Linker, Module, Store};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

struct PeerShim;

impl Shim for PeerShim {
    type Sandbox = PeerSandbox;

    fn name() -> &'static str {
        "peerwasm"
    }

    fn version() -> Version {
        Version {
            version: concat!(
                env!("CARGO_PKG_VERSION"),
                " (containerd-shim-wasm 1.0.1, wasmtime 48.0.8)"
            ),
            revision: "<none>",
        }
    }
}

/// One per container process; the engine is made when the container starts, as runwasi's
/// wasmtime shim makes its own.
struct PeerSandbox {
    engine: Engine,
}

impl Default for PeerSandbox {
    fn default() -> Self {
        let engine = Engine::new(&wasmtime::Config::new())
            .expect("a wasmtime engine with the default settings");
        Self { engine }
    }
}

impl Sandbox for PeerSandbox {
    async fn run_wasi(&self, ctx: &impl RuntimeContext) -> Result<i32> {
        let entrypoint = ctx.entrypoint();
        let bytes = entrypoint.source.as_bytes()?;
        let module = Module::new(&self.engine, &bytes).context("compiling the module")?;

        let envs: Vec<(&str, &str)> = ctx
            .envs()
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let wasi = WasiCtxBuilder::new()
            .args(ctx.args())
            .envs(&envs)
            .inherit_stdio()
            .preopened_dir("/", "/", FsPerms::ReadWrite)?
            .build_p1();

        let mut linker: Linker<WasiP1Ctx> = Linker::new(&self.engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |cx| cx)?;
        let mut store = Store::new(&self.engine, wasi);
        let instance = linker.instantiate_async(&mut store, &module).await?;
        let start = instance
            .get_typed_func::<(), ()>(&mut store, &entrypoint.func)
            .with_context(|| format!("the module exports no `{}`", entrypoint.func))?;
        match start.call_async(&mut store, ()).await {
            Ok(()) => Ok(0),
            Err(err) => match err.downcast_ref::<I32Exit>() {
                Some(exit) => Ok(exit.0),
                None => Err(err.into()),
            },
        }
    }
}

fn main() {
    PeerShim::run(Config::default());
}
