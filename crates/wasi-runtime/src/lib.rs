//! Runs WASI preview 1 modules and WASI preview 2 command components in wasmtime, one
//! sandbox per container.
//!
//! The crate knows nothing of Kubernetes. A caller hands [`Engine::start`] a
//! [`ContainerSpec`] (module bytes, argv, environment, log file, memory limit) and gets
//! back a [`Running`] handle that can be awaited for the [`Exit`] or killed.
//!
//! Every sandbox is deny-by-default: no preopened directories, no inherited environment,
//! closed stdin, no network. Stdout and stderr go to the container's log file in the CRI
//! logging format that the kubelet reads (see [`logs`]).
//!
//! Guest code never runs on the caller's threads: compilation and every run live on a
//! tokio runtime the engine owns, preempted at each epoch tick by a plain thread, so
//! modules busy on every core cannot starve the node agent. Each container has one
//! memory budget for all its memories and tables, caps on instances, memories and
//! tables ([`StoreCaps`]), and a budget of open handles.

mod allow;
mod compile;
mod engine;
mod fair;
mod limits;
pub mod logs;
mod lookup;
mod meter;
mod outgoing;
#[cfg(test)]
mod outgoing_tests;
mod pool;
mod run;
mod send;
mod serve;

pub use allow::{AllowList, OnRefused, refused_total};
pub use engine::{Compiled, Engine, EngineConfig, EngineStats, is_component};
pub use limits::{LimitOf, MemoryLimitReached, StoreCaps, TABLE_ELEMENT_BYTES};
pub use logs::LogRotation;
pub use lookup::{
    LOOKUP_RESERVE_PER_POD, LookupBudget, MAX_LOOKUPS_PER_NODE, MAX_LOOKUPS_PER_POD, PodDns,
};
pub use meter::{CPU_PERIOD, CpuShare, Meter, Usage};
pub use pool::{DEFAULT_REQUEST_TIMEOUT, QUEUE_WAIT, Reuse, ReuseSpec, ServingPool};
pub use run::{ContainerSpec, DEFAULT_HTTP_PORT, Exit, Killer, Preopen, Running};
pub use serve::MAX_CONNECTIONS;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The wasm bytes are not a valid module for this engine.
    #[error("invalid wasm module: {0}")]
    Compile(String),
    /// The module could not be instantiated (missing imports, no `_start`, limits).
    #[error("cannot instantiate module: {0}")]
    Instantiate(String),
    /// A file the sandbox needs (log file, compile cache) could not be used.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The wasmtime engine could not be configured.
    #[error("cannot configure wasmtime: {0}")]
    Config(String),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
