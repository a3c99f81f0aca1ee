//! The one shared wasmtime engine: configuration, epoch ticker, compiled-module cache.
//!
//! A module is compiled once per content digest: callers asking for the same digest at
//! the same time share one compilation, held in memory while the engine lives. The native
//! code also goes to wasmtime's on-disk cache under `cache_dir`, keyed by the module's
//! content hash and every engine setting that changes the code, so a restart of the node
//! agent loads it instead of compiling again, and a new wasmtime never loads code made
//! by another.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wasmtime::component::Component;
use wasmtime::{Cache, CacheConfig, Config, Module};

use crate::compile::{Bounds, Compiler};
use crate::limits::StoreCaps;
use crate::pool::ServingPool;
use crate::{Error, Result};

/// How often the epoch advances. A running module yields to the scheduler at every tick
/// and a kill takes effect at the next one, so this bounds both fairness and kill latency.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Settings of the shared engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Directory for compiled native code; `None` keeps compiled code in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Rotation of every container's log file.
    pub log_rotation: crate::logs::LogRotation,
    /// Longest one compilation may take before the start fails (default 60 s).
    pub compile_timeout: Duration,
    /// Largest module (or component) accepted for compilation, in bytes (default 128 MiB).
    pub max_module_bytes: usize,
    /// Compilations at once (default: one per core); more wait their turn.
    pub compile_concurrency: usize,
    /// Threads running guest code, apart from the caller's runtime (default: one per
    /// core).
    pub guest_threads: usize,
    /// Handles (open files, directories, streams, sockets) one container may hold at once
    /// (default 1024).
    pub max_open_handles: usize,
    /// Instances, memories and tables one container may create.
    pub store_caps: StoreCaps,
    /// Bytes the linear memories and tables of all containers together may take (the
    /// node's allocatable memory, as the kubelet bounds the cgroup of all pods); a growth
    /// past it ends the growing container out of memory. `None`: unbounded.
    pub node_memory_limit: Option<u64>,
    /// The pool of per-request instances of served components.
    pub serving_pool: ServingPool,
    /// Count each container's CPU time (default). Off, nothing is counted and CPU
    /// limits do not hold: only for measuring what accounting costs.
    pub cpu_accounting: bool,
    /// The roots that the certificates of servers a component of a pod with DNS of its
    /// own calls over `https` must chain to. `None` (default): webpki's roots
    /// (Mozilla's), which are also all that wasmtime-wasi-http's own sender, used for
    /// pods without DNS of their own, trusts.
    pub outgoing_tls_roots: Option<rustls::RootCertStore>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Self {
            cache_dir: None,
            log_rotation: crate::logs::LogRotation::default(),
            compile_timeout: Duration::from_secs(60),
            max_module_bytes: 128 << 20,
            compile_concurrency: cores,
            guest_threads: cores,
            max_open_handles: 1024,
            store_caps: StoreCaps::default(),
            node_memory_limit: None,
            serving_pool: ServingPool::default(),
            cpu_accounting: true,
            outgoing_tls_roots: None,
        }
    }
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

/// The compiled form of one wasm binary: a core module (WASI preview 1), a component
/// (WASI preview 2, `wasi:cli/command`), or a component to serve (`wasi:http/proxy`).
#[derive(Clone)]
pub enum Compiled {
    /// A core module.
    Module(Module),
    /// A component that runs (a command).
    Component(Component),
    /// A component exporting `wasi:http/incoming-handler`, compiled for the serving
    /// engine (pooled instances; the shared engine when the pool could not be made).
    Proxy(Component),
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Module(_) => "Compiled::Module",
            Self::Component(_) => "Compiled::Component",
            Self::Proxy(_) => "Compiled::Proxy",
        })
    }
}

impl Compiled {
    /// Bytes of native code and data it was compiled to, in memory while it is held.
    #[must_use]
    pub fn code_bytes(&self) -> u64 {
        let range = match self {
            Self::Module(m) => m.image_range(),
            Self::Component(c) | Self::Proxy(c) => c.image_range(),
        };
        (range.end as usize).saturating_sub(range.start as usize) as u64
    }
}

/// Whether `wasm` is a component rather than a core module: its header's version field
/// is `0x0d` with layer `1` (a core module has version `1`, layer `0`).
#[must_use]
pub fn is_component(wasm: &[u8]) -> bool {
    wasm.len() >= 8 && wasm[..4] == *b"\0asm" && wasm[4..8] == [0x0d, 0x00, 0x01, 0x00]
}

/// The tokio runtime that runs guest code, shut down without waiting when the last
/// clone of the engine goes (even from inside another runtime).
pub(crate) struct GuestRuntime {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl GuestRuntime {
    fn new(threads: usize) -> Result<Self> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("wasm-guest")
            .enable_all()
            .build()
            .map(|rt| Self {
                handle: rt.handle().clone(),
                runtime: Some(rt),
            })
            .map_err(|e| Error::Config(format!("cannot start the guest runtime: {e}")))
    }

    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl std::fmt::Debug for GuestRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestRuntime").finish_non_exhaustive()
    }
}

impl Drop for GuestRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A wasmtime engine shared by every container of the node.
///
/// Cloning is cheap; all clones share the engine, the epoch ticker and the module cache.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: wasmtime::Engine,
    pub(crate) linker: Arc<wasmtime::Linker<crate::run::State>>,
    pub(crate) component_linker: Arc<wasmtime::component::Linker<crate::run::ComponentState>>,
    /// The engine of served components: the pooling allocator (see [`crate::pool`]),
    /// or a clone of `inner` when the pool could not be made.
    pub(crate) serving: wasmtime::Engine,
    /// Links `wasi:http/proxy` components (WASI and `wasi:http`), for `serving`.
    pub(crate) http_linker: Arc<wasmtime::component::Linker<crate::serve::HttpState>>,
    /// Links served components compiled for `inner` (WASI 0.3 ones, and those the
    /// pool cannot hold), WASI 0.3 included.
    pub(crate) shared_http_linker: Arc<wasmtime::component::Linker<crate::serve::HttpState>>,
    /// How served components' instances are shared out and reused.
    pub(crate) serving_pool: ServingPool,
    /// The node's instances of served components, shared among the served pods.
    pub(crate) instance_slots: crate::fair::FairPool,
    /// The node's served connections, shared among the served pods.
    pub(crate) connection_slots: crate::fair::FairPool,
    /// The node's served requests in flight, shared as the connections are.
    pub(crate) request_slots: crate::fair::FairPool,
    /// The node's name lookups in flight, shared among the pods' resolvers.
    lookup_budget: crate::LookupBudget,
    /// Longest a served request may take, unless its pod says otherwise.
    pub(crate) request_timeout: Duration,
    compiler: Arc<Compiler>,
    /// Where guest code runs; the last clone shuts it down.
    pub(crate) guest: Arc<GuestRuntime>,
    /// Per-container caps.
    pub(crate) max_open_handles: usize,
    pub(crate) store_caps: StoreCaps,
    /// The memory of all containers together, within the node's limit.
    pub(crate) node_memory: crate::limits::Budget,
    /// wasmtime's on-disk cache, whose hits and misses are counted.
    disk_cache: Option<Cache>,
    /// Starts, and the nanoseconds they took in all.
    pub(crate) starts: Arc<AtomicU64>,
    pub(crate) start_nanos: Arc<AtomicU64>,
    /// Rotation of container log files.
    pub(crate) log_rotation: crate::logs::LogRotation,
    /// Whether containers' CPU time is counted.
    pub(crate) cpu_accounting: bool,
    /// How components' outgoing `https` requests verify their servers.
    pub(crate) outgoing_tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// Builds the engine, starts its epoch ticker thread and the runtime for guest code.
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
        let serving = match config.serving_pool.strategy() {
            Some(pooling) => {
                wasm.allocation_strategy(pooling);
                // Served components are WASI 0.2 proxies, one store per request: no
                // store of theirs needs the component-model-async machinery that WASI 0.3
                // commands run on, and a request's store is cheaper without it.
                wasm.concurrency_support(false);
                wasmtime::Engine::new(&wasm).unwrap_or_else(|e| {
                    tracing::warn!(
                        error = %format!("{e:#}"),
                        "cannot make the instance pool of served components; they use the \
                         on-demand allocator"
                    );
                    inner.clone()
                })
            }
            None => inner.clone(),
        };
        let (weak, weak_serving) = (inner.weak(), serving.weak());
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    if let Some(serving) = weak_serving.upgrade()
                        && !wasmtime::Engine::same(&serving, &engine)
                    {
                        serving.increment_epoch();
                    }
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| Error::Config(format!("cannot start epoch thread: {e}")))?;
        let outgoing_tls = crate::send::tls_config(config.outgoing_tls_roots.as_ref())
            .map_err(|e| Error::Config(format!("outgoing TLS: {e}")))?;
        let linker = Arc::new(crate::run::linker(&inner)?);
        let component_linker = Arc::new(crate::run::component_linker(&inner)?);
        let pooled = !wasmtime::Engine::same(&serving, &inner);
        let shared_http_linker = Arc::new(crate::serve::linker(&inner, true)?);
        let http_linker = if pooled {
            Arc::new(crate::serve::linker(&serving, false)?)
        } else {
            shared_http_linker.clone()
        };
        let guest = Arc::new(GuestRuntime::new(config.guest_threads)?);
        let compiler = Arc::new(Compiler::new(
            inner.clone(),
            serving.clone(),
            guest.handle().clone(),
            Bounds {
                timeout: config.compile_timeout,
                max_bytes: config.max_module_bytes,
                concurrency: config.compile_concurrency,
            },
        ));
        Ok(Self {
            inner,
            linker,
            component_linker,
            serving,
            http_linker,
            shared_http_linker,
            serving_pool: config.serving_pool,
            instance_slots: config.serving_pool.instance_slots(),
            connection_slots: config.serving_pool.connection_slots(),
            request_slots: config.serving_pool.connection_slots(),
            lookup_budget: crate::LookupBudget::default(),
            request_timeout: config.serving_pool.request_timeout,
            compiler,
            guest,
            max_open_handles: config.max_open_handles,
            store_caps: config.store_caps,
            node_memory: crate::limits::Budget::new(Arc::default(), config.node_memory_limit),
            disk_cache,
            starts: Arc::default(),
            log_rotation: config.log_rotation,
            cpu_accounting: config.cpu_accounting,
            outgoing_tls,
            start_nanos: Arc::default(),
        })
    }

    /// The name and version of the engine, as the node reports its container runtime.
    #[must_use]
    pub fn version() -> String {
        format!("wasmtime://{}", env!("WASMTIME_VERSION"))
    }

    /// The node's name lookups in flight, for the pods' [`crate::PodDns`]es.
    #[must_use]
    pub fn lookup_budget(&self) -> &crate::LookupBudget {
        &self.lookup_budget
    }

    /// Compilations and cache loads so far.
    #[must_use]
    pub fn stats(&self) -> EngineStats {
        let builds = self.compiler.builds.load(Ordering::Relaxed);
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
    /// from `wasm` on a blocking thread of the guest runtime (from the disk cache when it
    /// holds the native code). Concurrent calls for one key share one build; dropping the
    /// future returns at once and leaves the build to finish for later calls.
    ///
    /// # Errors
    /// [`Error::Compile`] when the bytes are not a valid module, are larger than
    /// [`EngineConfig::max_module_bytes`] or take longer than
    /// [`EngineConfig::compile_timeout`] to compile.
    pub async fn module(&self, key: &str, wasm: Arc<[u8]>) -> Result<Compiled> {
        self.compiler.get(key, wasm, "").await
    }

    /// [`Engine::module`] for a container of `pod`: a build it starts takes one of the
    /// node's compile slots in that pod's share ([`EngineConfig::compile_concurrency`]
    /// slots, at most half of them, rounded up, per pod), and waits for that slot at
    /// most [`EngineConfig::compile_timeout`].
    ///
    /// # Errors
    /// As [`Engine::module`], and [`Error::Compile`] when no slot came free in time.
    pub async fn module_for(&self, key: &str, wasm: Arc<[u8]>, pod: &str) -> Result<Compiled> {
        self.compiler.get(key, wasm, pod).await
    }

    /// Bytes the linear memories and tables of all containers hold now.
    #[must_use]
    pub fn memory_in_use(&self) -> u64 {
        self.node_memory.used()
    }

    /// Forgets the compiled module for `key` (its image was removed). Its native code
    /// stays in the disk cache, which wasmtime trims by size and age.
    pub fn forget(&self, key: &str) {
        self.compiler.forget(key);
    }
}
