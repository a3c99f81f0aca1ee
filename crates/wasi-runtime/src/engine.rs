//! The one shared wasmtime engine: configuration, epoch ticker, compiled-module cache.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::{Cache, CacheConfig, Config, Module};

use crate::{Error, Result};

/// How often the epoch advances. A running module yields to the scheduler at every tick
/// and a kill takes effect at the next one, so this bounds both fairness and kill latency.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Settings of the shared engine.
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    /// Directory for wasmtime's on-disk compile cache; `None` keeps compiled code in
    /// memory only.
    pub cache_dir: Option<PathBuf>,
}

/// A wasmtime engine shared by every container of the node.
///
/// Cloning is cheap; all clones share the engine, the epoch ticker and the module cache.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: wasmtime::Engine,
    pub(crate) linker: Arc<wasmtime::Linker<crate::run::State>>,
    modules: Arc<Mutex<HashMap<String, Module>>>,
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
    /// [`Error::Config`] when wasmtime rejects the configuration or the cache directory.
    pub fn new(config: &EngineConfig) -> Result<Self> {
        let mut wasm = Config::new();
        wasm.epoch_interruption(true);
        if let Some(dir) = &config.cache_dir {
            let mut cache = CacheConfig::new();
            cache.with_directory(dir);
            let cache = Cache::new(cache).map_err(|e| Error::Config(format!("{e:#}")))?;
            wasm.cache(Some(cache));
        }
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
        Ok(Self {
            inner,
            linker,
            modules: Arc::default(),
        })
    }

    /// The name and version of the engine, as the node reports its container runtime.
    #[must_use]
    pub fn version() -> String {
        format!("wasmtime://{}", env!("WASMTIME_VERSION"))
    }

    /// Compiles `wasm` (or takes it from the cache under `key`, normally the content digest)
    /// on a blocking thread.
    ///
    /// # Errors
    /// [`Error::Compile`] when the bytes are not a valid module.
    pub async fn module(&self, key: &str, wasm: Arc<[u8]>) -> Result<Module> {
        if let Some(module) = self.cached(key) {
            return Ok(module);
        }
        let engine = self.inner.clone();
        let module = tokio::task::spawn_blocking(move || Module::new(&engine, &wasm))
            .await
            .map_err(|e| Error::Compile(format!("compiler task failed: {e}")))?
            .map_err(|e| Error::Compile(format!("{e:#}")))?;
        self.lock().insert(key.to_owned(), module.clone());
        Ok(module)
    }

    fn cached(&self, key: &str) -> Option<Module> {
        self.lock().get(key).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Module>> {
        // A poisoned map still holds valid modules; keep using it.
        self.modules
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
