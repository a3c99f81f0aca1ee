//! The one shared wasmtime engine: configuration, epoch ticker, compiled-module cache.
//!
//! A module is compiled once per content digest: callers asking for the same digest at
//! the same time share one compilation, held in memory while the engine lives. The native
//! code also goes to wasmtime's on-disk cache under `cache_dir`, keyed by the module's
//! content hash and every engine setting that changes the code, so a restart of the node
//! agent loads it instead of compiling again, and a new wasmtime never loads code made
//! by another.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;
use wasmtime::component::Component;
use wasmtime::{Cache, CacheConfig, Config, Module};

use crate::{Error, Result};

/// How often the epoch advances. A running module yields to the scheduler at every tick
/// and a kill takes effect at the next one, so this bounds both fairness and kill latency.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Settings of the shared engine.
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    /// Directory for compiled native code; `None` keeps compiled code in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Rotation of every container's log file.
    pub log_rotation: crate::logs::LogRotation,
}

/// How often modules were compiled or loaded, since the engine started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Compilations from wasm to native code.
    pub compiles: u64,
    /// Native code loaded from the on-disk cache instead.
    pub cache_loads: u64,
    /// Modules and components started.
    pub starts: u64,
    /// Time those starts took, summed: from the call to [`Engine::start`] until the entry
    /// point is about to run (compiled code from memory or disk, or a compilation; the log
    /// file; the WASI context; instantiation).
    pub start_time: Duration,
}

/// The compiled form of one wasm binary: a core module (WASI preview 1) or a component
/// (WASI preview 2, `wasi:cli/command`).
#[derive(Clone)]
pub enum Compiled {
    /// A core module.
    Module(Module),
    /// A component.
    Component(Component),
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Module(_) => "Compiled::Module",
            Self::Component(_) => "Compiled::Component",
        })
    }
}

/// Whether `wasm` is a component rather than a core module: its header's version field
/// is `0x0d` with layer `1` (a core module has version `1`, layer `0`).
#[must_use]
pub fn is_component(wasm: &[u8]) -> bool {
    wasm.len() >= 8 && wasm[..4] == *b"\0asm" && wasm[4..8] == [0x0d, 0x00, 0x01, 0x00]
}

type Slot = Arc<OnceCell<Compiled>>;

/// A wasmtime engine shared by every container of the node.
///
/// Cloning is cheap; all clones share the engine, the epoch ticker and the module cache.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: wasmtime::Engine,
    pub(crate) linker: Arc<wasmtime::Linker<crate::run::State>>,
    pub(crate) component_linker: Arc<wasmtime::component::Linker<crate::run::ComponentState>>,
    modules: Arc<Mutex<HashMap<String, Slot>>>,
    /// wasmtime's on-disk cache, whose hits and misses are counted.
    disk_cache: Option<Cache>,
    /// Modules built (compiled, or loaded from the disk cache).
    builds: Arc<AtomicU64>,
    /// Starts, and the nanoseconds they took in all.
    pub(crate) starts: Arc<AtomicU64>,
    pub(crate) start_nanos: Arc<AtomicU64>,
    /// Rotation of container log files.
    pub(crate) log_rotation: crate::logs::LogRotation,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// Builds the engine and starts its epoch ticker thread.
    ///
    /// # Errors
    /// [`Error::Config`] when wasmtime rejects the configuration or the log rotation is
    /// invalid (fewer than 2 files, size 0), [`Error::Io`] when the
    /// cache directory cannot be created.
    pub fn new(config: &EngineConfig) -> Result<Self> {
        if config.log_rotation.max_files < 2 || config.log_rotation.max_size == 0 {
            return Err(Error::Config(format!(
                "container log rotation needs a max size above 0 and at least 2 files, not {:?}",
                config.log_rotation
            )));
        }
        let mut wasm = Config::new();
        wasm.epoch_interruption(true);
        let disk_cache = match &config.cache_dir {
            Some(dir) => {
                let mut cache = CacheConfig::new();
                cache.with_directory(dir);
                let cache = Cache::new(cache).map_err(|e| Error::Config(format!("{e:#}")))?;
                wasm.cache(Some(cache.clone()));
                Some(cache)
            }
            None => None,
        };
        let inner = wasmtime::Engine::new(&wasm).map_err(|e| Error::Config(format!("{e:#}")))?;
        let weak = inner.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| Error::Config(format!("cannot start epoch thread: {e}")))?;
        let linker = Arc::new(crate::run::linker(&inner)?);
        let component_linker = Arc::new(crate::run::component_linker(&inner)?);
        Ok(Self {
            inner,
            linker,
            component_linker,
            modules: Arc::default(),
            disk_cache,
            builds: Arc::default(),
            starts: Arc::default(),
            log_rotation: config.log_rotation,
            start_nanos: Arc::default(),
        })
    }

    /// The name and version of the engine, as the node reports its container runtime.
    #[must_use]
    pub fn version() -> String {
        format!("wasmtime://{}", env!("WASMTIME_VERSION"))
    }

    /// Compilations and cache loads so far.
    #[must_use]
    pub fn stats(&self) -> EngineStats {
        let builds = self.builds.load(Ordering::Relaxed);
        let (compiles, cache_loads) = match &self.disk_cache {
            Some(cache) => (cache.cache_misses() as u64, cache.cache_hits() as u64),
            None => (builds, 0),
        };
        EngineStats {
            compiles,
            cache_loads,
            starts: self.starts.load(Ordering::Relaxed),
            start_time: Duration::from_nanos(self.start_nanos.load(Ordering::Relaxed)),
        }
    }

    /// The module for `key` (its content digest, `sha256:<hex>`): from memory, else built
    /// from `wasm` on a blocking thread (from the disk cache when it holds the native code).
    /// Concurrent calls for one key share one build.
    ///
    /// # Errors
    /// [`Error::Compile`] when the bytes are not a valid module.
    pub async fn module(&self, key: &str, wasm: Arc<[u8]>) -> Result<Compiled> {
        let slot = self.lock().entry(key.to_owned()).or_default().clone();
        let result = slot
            .get_or_try_init(|| self.load_or_compile(wasm))
            .await
            .cloned();
        if result.is_err() {
            // Do not keep a failed slot: a later call may bring valid bytes.
            self.lock().remove(key);
        }
        result
    }

    /// Forgets the compiled module for `key` (its image was removed). Its native code
    /// stays in the disk cache, which wasmtime trims by size and age.
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }

    async fn load_or_compile(&self, wasm: Arc<[u8]>) -> Result<Compiled> {
        let engine = self.inner.clone();
        self.builds.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            if is_component(&wasm) {
                Component::new(&engine, &wasm[..]).map(Compiled::Component)
            } else {
                Module::new(&engine, &wasm[..]).map(Compiled::Module)
            }
        })
        .await
        .map_err(|e| Error::Compile(format!("compiler task failed: {e}")))?
        .map_err(|e| Error::Compile(format!("{e:#}")))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        // A poisoned map still holds valid entries; keep using it.
        self.modules
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
