//! Starting one container: a fresh store and WASI context per run, killed by dropping it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use wasmtime::component::{ResourceTable, ResourceTableError};
use wasmtime::{Linker, Store, UpdateDeadline};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::engine::Compiled;
use crate::limits::{Budget, Limits};
use crate::meter::{CpuShare, Meter};

use crate::logs::{LogFile, Stream};
use crate::{Engine, Error, Result};

/// Everything one run of a container needs. Nothing else is granted to the module.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// The pod the container belongs to (its sandbox ID): the node's compile slots are
    /// shared fairly by pod.
    pub pod_id: String,
    /// Cache key of the module, normally its content digest.
    pub module_key: String,
    /// The module's bytes.
    pub wasm: Arc<[u8]>,
    /// `argv`, including `argv[0]`.
    pub args: Vec<String>,
    /// Environment variables, in order.
    pub env: Vec<(String, String)>,
    /// Where stdout and stderr records are appended.
    pub log_path: PathBuf,
    /// Upper bound of all the module's linear memories and tables together, in bytes
    /// (a table element counts [`TABLE_ELEMENT_BYTES`](crate::TABLE_ELEMENT_BYTES)).
    pub memory_limit: Option<u64>,
    /// Host directories the module may see, and nothing else of the file system.
    pub preopens: Vec<Preopen>,
    /// The pod's network namespace; `None`: no network at all (no sockets, no
    /// outgoing requests, and a `wasi:http` component cannot be served).
    pub network: Option<Arc<network::NetNs>>,
    /// Where the pod may connect to (`None`: anywhere its network reaches).
    pub allowed_outbound: Option<crate::AllowList>,
    /// Where a `wasi:http/proxy` component is served, in the pod's namespace (the
    /// container's first TCP `containerPort`, else [`DEFAULT_HTTP_PORT`]).
    pub http_port: u16,
    /// Its CPU limit and request.
    pub cpu: CpuShare,
    /// Longest one request to a served component may take (`None`: the node's
    /// [`ServingPool::request_timeout`](crate::ServingPool::request_timeout)).
    pub request_timeout: Option<std::time::Duration>,
    /// How a served WASI 0.3 component's instances are reused (each setting unset: the
    /// node's [`ServingPool::reuse`](crate::ServingPool::reuse)); WASI 0.2 components
    /// get one instance per request whatever it says.
    pub reuse: crate::ReuseSpec,
    /// The pod's DNS, shared by its containers: a component's name lookups, and the
    /// names of its outgoing `wasi:http` requests (`http` and `https`), are answered with
    /// it (`None` with a network: the host's resolver, inside the pod's namespace).
    pub dns: Option<Arc<crate::PodDns>>,
}

/// The port a `wasi:http` component is served on when its container declares none.
pub const DEFAULT_HTTP_PORT: u16 = 8080;

/// A host directory made visible to the module at `guest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the module sees it (absolute, e.g. `/data`).
    pub guest: String,
    /// Writes fail inside the module.
    pub read_only: bool,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// `_start` returned (code 0) or the module called `proc_exit(code)`.
    Code(i32),
    /// The module trapped.
    Trap {
        /// The trap's name, e.g. `UnreachableCodeReached`, `MemoryOutOfBounds`,
        /// `StackOverflow` (`Host` for an error raised by a host call).
        kind: String,
        /// Its description, with the wasm backtrace when there is one.
        message: String,
    },
    /// The module asked for memory beyond its limit (the growth trapped at once).
    OutOfMemory,
    /// The run was stopped by [`Killer::kill`].
    Killed,
}

impl Exit {
    /// The exit code a container runtime would report: a trap counts as an abort
    /// (128 + SIGABRT, as the wasmtime CLI reports it), a kill or an out-of-memory
    /// failure as a SIGKILL (137).
    #[must_use]
    pub fn code(&self) -> i32 {
        match self {
            Self::Code(c) => *c,
            Self::Trap { .. } => 134,
            Self::OutOfMemory | Self::Killed => 137,
        }
    }
}

/// What a run was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Nothing yet.
    Run,
    /// Stop, giving work in flight until then (a served component's requests); a
    /// module that serves nothing stops at once.
    Drain(std::time::Instant),
    /// Stop now.
    Kill,
}

/// Stops a run from anywhere; cloning is cheap.
#[derive(Debug, Clone)]
pub struct Killer(Arc<watch::Sender<Stop>>);

impl Killer {
    /// Stops the module at its next epoch tick or pending host call, whether or not it
    /// cooperates, also while it is still being instantiated (a start function that
    /// never returns). Idempotent.
    pub fn kill(&self) {
        self.0.send_replace(Stop::Kill);
    }

    /// Stops with a grace period: a served component stops accepting and its requests
    /// in flight get until `grace` has passed, then are cut; anything else stops at
    /// once, as with [`Killer::kill`] (WASI has no signal to ask a module to exit).
    pub fn stop(&self, grace: std::time::Duration) {
        let deadline = std::time::Instant::now() + grace;
        self.0.send_if_modified(|s| match s {
            Stop::Run => {
                *s = Stop::Drain(deadline);
                true
            }
            Stop::Drain(_) | Stop::Kill => false,
        });
    }
}

/// A started container.
#[derive(Debug)]
pub struct Running {
    killer: Killer,
    meter: Meter,
    task: JoinHandle<Exit>,
    /// The runtime the run lives on, kept while the run is awaited even if the engine
    /// goes first.
    _guest: Arc<crate::engine::GuestRuntime>,
}

impl Running {
    /// A handle to stop this run.
    #[must_use]
    pub fn killer(&self) -> Killer {
        self.killer.clone()
    }

    /// What the run has used so far; it counts on while the run lives.
    #[must_use]
    pub fn meter(&self) -> Meter {
        self.meter.clone()
    }

    /// Waits for the run to end.
    pub async fn wait(self) -> Exit {
        match self.task.await {
            Ok(exit) => exit,
            // The engine was dropped (the node agent is stopping).
            Err(e) if e.is_cancelled() => Exit::Killed,
            Err(e) => Exit::Trap {
                kind: "Host".to_owned(),
                message: format!("runtime task failed: {e}"),
            },
        }
    }
}

/// Per-store state of a core module: the WASI preview 1 context and the limiter.
pub(crate) struct State {
    wasi: WasiP1Ctx,
    limits: Limits,
}

/// Per-store state of a component: the WASI context, its resources and the limiter.
pub(crate) struct ComponentState {
    ctx: WasiCtx,
    table: ResourceTable,
    limits: Limits,
    lookups: crate::lookup::Lookups,
    /// The container's allow-list and log, when it has a list: a lookup is checked
    /// against it, and grants the addresses it found.
    outbound: Option<(crate::AllowList, LogFile)>,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// A command component's entry point: `wasi:cli/run` of WASI 0.3 (an async export,
/// run inside the store's event loop) or of 0.2.
enum Command {
    P2(CommandPre<ComponentState>),
    P3(wasmtime_wasi::p3::bindings::CommandPre<ComponentState>),
}

impl Command {
    /// The 0.3 entry point when the component exports it, else the 0.2 one.
    fn new(pre: wasmtime::component::InstancePre<ComponentState>) -> wasmtime::Result<Self> {
        match wasmtime_wasi::p3::bindings::CommandPre::new(pre.clone()) {
            Ok(p3) => Ok(Self::P3(p3)),
            Err(_) => CommandPre::new(pre).map(Self::P2),
        }
    }
}

pub(crate) fn linker(engine: &wasmtime::Engine) -> Result<Linker<State>> {
    let mut linker = Linker::new(engine);
    p1::add_to_linker_async(&mut linker, |s: &mut State| &mut s.wasi)
        .map_err(|e| Error::Config(format!("{e:#}")))?;
    Ok(linker)
}

pub(crate) fn component_linker(
    engine: &wasmtime::Engine,
) -> Result<wasmtime::component::Linker<ComponentState>> {
    let mut linker = wasmtime::component::Linker::new(engine);
    // `wasi:cli/exit.exit` says only success or failure (exit code 1); a component that
    // calls `exit-with-code` (WASI 0.2.12) reports its own code.
    // WASI 0.2 and 0.3 side by side: a 0.3 component's language runtime often imports
    // 0.2 interfaces too.
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .and_then(|()| wasmtime_wasi::p3::add_to_linker(&mut linker))
        .and_then(|()| {
            crate::lookup::shadow(&mut linker, |s: &mut ComponentState| {
                crate::lookup::LookupView {
                    table: &mut s.table,
                    lookups: &s.lookups,
                    outbound: s.outbound.as_ref(),
                }
            })
        })
        .map_err(|e| Error::Config(format!("{e:#}")))?;
    Ok(linker)
}

/// Every store interrupts its module after `ticks` epoch ticks (its slice, see
/// [`CpuShare::slice_ticks`]) and yields to the scheduler: through tokio's own
/// `yield_now`, which puts the task at the back of the run queue. (A plain self-wake,
/// as `UpdateDeadline::Yield` does, lands in the worker's LIFO slot and runs again
/// before the others: busy modules then shared a thread far from their slices.)
pub(crate) fn preempt<T>(store: &mut Store<T>, ticks: u64) {
    store.set_epoch_deadline(ticks);
    store.epoch_deadline_callback(move |_| {
        Ok(UpdateDeadline::YieldCustom(
            ticks,
            Box::pin(tokio::task::yield_now()),
        ))
    });
}

/// How a run ended, from what the entry point returned (`None`: killed first). A run
/// that was refused memory beyond its limit ended out of memory, whatever the entry point
/// returned: the refusal traps, as a cgroup's OOM kill ends a container.
fn outcome(result: Option<wasmtime::Result<i32>>, memory_refused: bool) -> Exit {
    match result {
        None => Exit::Killed,
        Some(_) if memory_refused => Exit::OutOfMemory,
        Some(Ok(code)) => Exit::Code(code),
        Some(Err(e)) => {
            if let Some(exit) = e.downcast_ref::<I32Exit>() {
                Exit::Code(exit.0)
            } else if let Some(ResourceTableError::Full) = e.downcast_ref::<ResourceTableError>() {
                Exit::Trap {
                    kind: "TooManyOpenFiles".to_owned(),
                    message: "the module holds as many open handles (files, directories, \
                              streams) as a container may"
                        .to_owned(),
                }
            } else {
                trap(&e)
            }
        }
    }
}

impl Engine {
    /// Compiles (or reuses) the binary, checks its imports and entry point, and starts it
    /// in a fresh sandbox on the guest runtime: instantiation (which runs a core module's
    /// start function, or a component's), then a core module's `_start` export or a
    /// component's `wasi:cli/run` (a WASI preview 2 command). Instantiation and the entry
    /// point both run under epoch interruption and race [`Killer::kill`].
    ///
    /// Dropping the future (a kill while the module compiles) returns at once; the
    /// compilation finishes in the background for a later start.
    ///
    /// # Errors
    /// [`Error::Compile`] for invalid, too large or too slow to compile wasm,
    /// [`Error::Io`] when the log file cannot be opened, [`Error::Instantiate`] when the
    /// binary needs imports WASI does not provide or has no entry point. A failure while
    /// instantiating (a trap in a start function, memory beyond the limit) is the run's
    /// [`Exit`].
    pub async fn start(&self, spec: ContainerSpec) -> Result<Running> {
        let began = std::time::Instant::now();
        let compiled = self
            .module_for(&spec.module_key, spec.wasm.clone(), &spec.pod_id)
            .await?;
        // One writer per container: its rotation moves the file for every record of the
        // run (output, refused connections, served requests' access lines) at once.
        let log = LogFile::open(&spec.log_path, self.log_rotation)?;
        let mut builder = wasi_builder(&spec, &log)?;
        let meter = Meter::with_clock(spec.cpu, compiled.code_bytes(), self.cpu_accounting);
        let slice = spec.cpu.slice_ticks();
        let limits = Limits::new(
            Budget::new(meter.memory_gauge(), spec.memory_limit),
            self.node_memory.clone(),
            self.store_caps,
        );
        let (tx, mut killed) = watch::channel(Stop::Run);
        let (starts, start_nanos) = (self.starts.clone(), self.start_nanos.clone());
        let count_start = move || {
            let took = u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX);
            starts.fetch_add(1, Ordering::Relaxed);
            start_nanos.fetch_add(took, Ordering::Relaxed);
        };
        let task = match compiled {
            Compiled::Module(module) => {
                check_start(&module)?;
                let pre = self
                    .linker
                    .instantiate_pre(&module)
                    .map_err(|e| Error::Instantiate(format!("{e:#}")))?;
                let mut wasi = builder.build_p1();
                wasi.ctx().table.set_max_capacity(self.max_open_handles);
                let mut store = Store::new(&self.inner, State { wasi, limits });
                store.limiter(|s| &mut s.limits);
                preempt(&mut store, slice);
                let metered = meter.clone();
                self.guest.handle().spawn(async move {
                    let result = {
                        let run = metered.wrap(async {
                            let instance = pre.instantiate_async(&mut store).await?;
                            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                            count_start();
                            start.call_async(&mut store, ()).await.map(|()| 0)
                        });
                        tokio::select! {
                            r = run => Some(r),
                            _ = killed.wait_for(|k| *k != Stop::Run) => None,
                        }
                    };
                    outcome(result, store.data().limits.refused())
                })
            }
            Compiled::Proxy(component) => {
                self.serve(&spec, &component, killed, count_start, &meter, log)
                    .await?
            }
            Compiled::Component(component) => {
                let pre = self
                    .component_linker
                    .instantiate_pre(&component)
                    .and_then(Command::new)
                    .map_err(|e| Error::Instantiate(format!("{e:#}")))?;
                let mut table = ResourceTable::new();
                table.set_max_capacity(self.max_open_handles);
                // With a pod network, the component gets sockets (`wasi:sockets`, name
                // lookups) and runs on the thread inside the pod's namespace, where every
                // socket it makes belongs.
                let mut outbound = None;
                let runtime = match &spec.network {
                    Some(net) => {
                        builder
                            .inherit_network()
                            .allow_tcp(true)
                            .allow_udp(true)
                            .allow_ip_name_lookup(true);
                        if let Some(allow) = spec.allowed_outbound.clone() {
                            // Its lookups grant the addresses this check lets through.
                            outbound = Some((allow.clone(), log.clone()));
                            builder.socket_addr_check(move |addr, use_| {
                                use wasmtime_wasi::sockets::SocketAddrUse;
                                let ok =
                                    matches!(use_, SocketAddrUse::TcpBind | SocketAddrUse::UdpBind)
                                        || allow.allows_addr(addr);
                                if !ok {
                                    allow.refuse(Some(&log), &addr.to_string());
                                }
                                Box::pin(std::future::ready(ok))
                            });
                        }
                        net.handle().clone()
                    }
                    None => self.guest.handle().clone(),
                };
                let lookups = match (&spec.network, &spec.dns) {
                    (None, _) => crate::lookup::Lookups::Denied,
                    (Some(_), Some(dns)) => crate::lookup::Lookups::Pod(dns.clone()),
                    (Some(_), None) => crate::lookup::Lookups::Host,
                };
                let state = ComponentState {
                    ctx: builder.build(),
                    table,
                    limits,
                    lookups,
                    outbound,
                };
                let mut store = Store::new(&self.inner, state);
                store.limiter(|s| &mut s.limits);
                preempt(&mut store, slice);
                let metered = meter.clone();
                runtime.spawn(async move {
                    let result = {
                        let run = metered.wrap(async {
                            // `wasi:cli/run` returns `result`: an error is exit code 1.
                            let ok = match pre {
                                Command::P2(pre) => {
                                    let command = pre.instantiate_async(&mut store).await?;
                                    count_start();
                                    command.wasi_cli_run().call_run(&mut store).await?
                                }
                                Command::P3(pre) => {
                                    let command = pre.instantiate_async(&mut store).await?;
                                    count_start();
                                    store
                                        .run_concurrent(async move |store| {
                                            command.wasi_cli_run().call_run(store).await
                                        })
                                        .await??
                                }
                            };
                            Ok(i32::from(ok.is_err()))
                        });
                        tokio::select! {
                            r = run => Some(r),
                            _ = killed.wait_for(|k| *k != Stop::Run) => None,
                        }
                    };
                    outcome(result, store.data().limits.refused())
                })
            }
        };
        Ok(Running {
            killer: Killer(Arc::new(tx)),
            meter,
            task,
            _guest: self.guest.clone(),
        })
    }
}

/// The WASI context of `spec` writing to `log`: argv, environment, its preopens.
pub(crate) fn wasi_builder(spec: &ContainerSpec, log: &LogFile) -> Result<WasiCtxBuilder> {
    let mut builder = WasiCtxBuilder::new();
    builder
        .args(&spec.args)
        .envs(&spec.env)
        .stdout(log.stream(Stream::Stdout))
        .stderr(log.stream(Stream::Stderr));
    for p in &spec.preopens {
        let perms = if p.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        builder
            .preopened_dir(&p.host, &p.guest, perms)
            .map_err(|e| {
                Error::Instantiate(format!(
                    "cannot preopen {} as {}: {e:#}",
                    p.host.display(),
                    p.guest
                ))
            })?;
    }
    Ok(builder)
}

/// A core module's entry point: an exported `_start` taking and returning nothing.
fn check_start(module: &wasmtime::Module) -> Result<()> {
    match module.get_export("_start") {
        Some(wasmtime::ExternType::Func(f)) if f.params().len() == 0 && f.results().len() == 0 => {
            Ok(())
        }
        Some(_) => Err(Error::Instantiate(
            "the export `_start` is not a function without parameters and results".to_owned(),
        )),
        None => Err(Error::Instantiate(
            "the module exports no `_start` function".to_owned(),
        )),
    }
}

fn trap(e: &wasmtime::Error) -> Exit {
    let kind = e
        .downcast_ref::<wasmtime::Trap>()
        .map_or_else(|| "Host".to_owned(), |t| format!("{t:?}"));
    Exit::Trap {
        kind,
        message: format!("{e:?}"),
    }
}
