//! The instance pool of served components: a second wasmtime engine with the pooling
//! allocator, whose slots every served pod of the node shares.
//!
//! A served component gets a fresh instance per request; the on-demand allocator pays
//! for each with `mmap`, `mprotect` and `munmap` of its memories, tables and stack. The
//! pool reserves those once, when the engine starts, and hands slots out and back. Batch
//! modules and command components stay on the on-demand engine: each would hold its
//! slots for as long as it runs, and a node runs 1000+ of them.
//!
//! The pool is one per node, not per pod. With the defaults (1000 instances) it reserves
//! about 4 TiB of address space (1000 linear memories of 4 GiB plus a 32 MiB guard,
//! 4000 tables of 20 000 elements, 1000 fiber stacks of 2 MiB): `PROT_NONE` and
//! `MAP_NORESERVE`, so no memory is committed until a request touches a page. When an
//! instance ends, the first 256 KiB its memories and tables touched stay resident
//! (zeroed) for the next one, the rest goes back to the kernel (`madvise`): the node
//! keeps at most 256 KiB per memory and per table of the slots in use or warm (wasmtime
//! keeps up to 100 unused slots warm), e.g. about 30 MiB with 16 requests at once and
//! some 0.9 GiB only if all 1000 instances were ever busy at once. A host with less
//! address space (a 39-bit one) cannot make the pool: served components then use the
//! on-demand engine, as before.

use wasmtime::{InstanceAllocationStrategy, PoolingAllocationConfig};

/// How many instances of served components may live at once on the node, how many
/// connections served pods may hold, and how both are shared among the pods.
///
/// Both are shared fairly ([`crate::fair`]): each served pod is guaranteed a reserve of
/// its own (the total divided by the served pods, at most [`Self::reserve`] instances
/// and [`Self::connection_reserve`] connections), the rest goes first come, first
/// served, up to a cap per pod. So pods holding slow requests cannot take what another
/// pod needs to answer its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServingPool {
    /// Component instances in the node's pool (default 1000). Each may hold up to 8
    /// core instances, 4 tables and 1 linear memory on average, as components built by
    /// the usual tools do; what does not fit is answered 503 until slots free up.
    /// 0: no pool, served components use the on-demand allocator (within the same
    /// number of instances at once).
    pub instances: u32,
    /// Instances one pod may hold at once (default 100): further requests wait for one
    /// of its instances to end (up to [`QUEUE_WAIT`]), then are answered 503.
    pub per_pod: usize,
    /// Instances each served pod is guaranteed, at most (default 8).
    pub reserve: usize,
    /// Connections all served pods of the node may hold at once (default 16384; each is
    /// an open descriptor of the agent's): further connections wait in their pod's
    /// listen backlog. Requests in flight are bounded by the same numbers (node, pod,
    /// reserve), so HTTP/2's streams (up to 100 per connection) hold no more than
    /// HTTP/1.1 connections could: a request beyond its pod's share is answered 503.
    pub connections: usize,
    /// Connections one pod may hold at once (default [`crate::MAX_CONNECTIONS`]).
    pub connections_per_pod: usize,
    /// Connections each served pod is guaranteed, at most (default 64).
    pub connection_reserve: usize,
    /// Longest one request may take, from its instance's start until its response
    /// body is sent (default [`DEFAULT_REQUEST_TIMEOUT`]); a pod may set its own
    /// ([`ContainerSpec::request_timeout`](crate::ContainerSpec::request_timeout)).
    pub request_timeout: std::time::Duration,
    /// How WASI 0.3 services' instances are reused, unless a pod says otherwise
    /// ([`ContainerSpec::reuse`](crate::ContainerSpec::reuse)).
    pub reuse: Reuse,
}

/// How the instances of a served WASI 0.3 (`wasi:http/handler@0.3`) component are
/// reused, as `wasmtime serve` does it: one instance answers up to `max_requests`
/// requests, up to `max_concurrent` of them at once, and is dropped once idle for
/// `idle_timeout`. WASI 0.2 components keep one instance per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reuse {
    /// Requests one instance answers in its life (default 128, `wasmtime serve`'s).
    pub max_requests: usize,
    /// Requests one instance answers at once (default 16).
    pub max_concurrent: usize,
    /// How long an instance with nothing to do is kept (default 1 s).
    pub idle_timeout: std::time::Duration,
}

impl Default for Reuse {
    fn default() -> Self {
        Self {
            max_requests: 128,
            max_concurrent: 16,
            idle_timeout: std::time::Duration::from_secs(1),
        }
    }
}

/// A pod's own [`Reuse`] settings; each one unset is the node's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReuseSpec {
    /// [`Reuse::max_requests`].
    pub max_requests: Option<usize>,
    /// [`Reuse::max_concurrent`].
    pub max_concurrent: Option<usize>,
    /// [`Reuse::idle_timeout`].
    pub idle_timeout: Option<std::time::Duration>,
}

impl ReuseSpec {
    /// These settings over the node's `defaults` (each at least 1).
    #[must_use]
    pub fn over(&self, defaults: Reuse) -> Reuse {
        Reuse {
            max_requests: self.max_requests.unwrap_or(defaults.max_requests).max(1),
            max_concurrent: self
                .max_concurrent
                .unwrap_or(defaults.max_concurrent)
                .max(1),
            idle_timeout: self.idle_timeout.unwrap_or(defaults.idle_timeout),
        }
    }
}

/// The longest a served request may take unless its pod says otherwise: a minute, as a
/// reverse proxy's usual read time-out.
pub const DEFAULT_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl Default for ServingPool {
    fn default() -> Self {
        Self {
            instances: 1000,
            per_pod: 100,
            reserve: 8,
            connections: 16384,
            connections_per_pod: crate::MAX_CONNECTIONS,
            connection_reserve: 64,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            reuse: Reuse::default(),
        }
    }
}

/// Longest a request waits for one of its pod's instances before it is answered 503.
pub const QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Core instances per component instance the pool holds (the hello component has 4).
const CORE_INSTANCES_PER_INSTANCE: u32 = 8;
/// Tables per component instance the pool holds (the hello component has 2).
const TABLES_PER_INSTANCE: u32 = 4;
/// What one core module of a served component may define: more than one memory or
/// table only costs a few bytes of its instance's context.
const MEMORIES_PER_MODULE: u32 = 4;
const TABLES_PER_MODULE: u32 = 8;
/// Bytes of each memory and table slot kept resident (zeroed in place) between
/// instances.
const KEEP_RESIDENT: usize = 256 << 10;

impl ServingPool {
    /// The node's instance slots, shared among the served pods.
    pub(crate) fn instance_slots(&self) -> crate::fair::FairPool {
        let total = match self.instances {
            0 => Self::default().instances,
            n => n,
        };
        crate::fair::FairPool::new(crate::fair::Shares {
            total: total as usize,
            reserve: self.reserve.max(1),
            per_pod: self.per_pod.max(1),
        })
    }

    /// The node's served connections, shared among the served pods.
    pub(crate) fn connection_slots(&self) -> crate::fair::FairPool {
        crate::fair::FairPool::new(crate::fair::Shares {
            total: self.connections.max(1),
            reserve: self.connection_reserve.max(1),
            per_pod: self.connections_per_pod.max(1),
        })
    }

    /// The allocation strategy of the serving engine; `None`: on-demand.
    pub(crate) fn strategy(&self) -> Option<InstanceAllocationStrategy> {
        if self.instances == 0 {
            return None;
        }
        let n = self.instances;
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(CORE_INSTANCES_PER_INSTANCE))
            .total_memories(n)
            .total_tables(n.saturating_mul(TABLES_PER_INSTANCE))
            .total_stacks(n)
            .max_memories_per_module(MEMORIES_PER_MODULE)
            .max_tables_per_module(TABLES_PER_MODULE);
        // A freed memory or table is zeroed with `memset` up to this size, and only
        // the rest given back with `madvise`: the next instance in the slot takes no
        // page faults for it. With the hello component this took requests per second
        // from about 7 000 (`madvise` alone) to 10 000 at 16 connections on 2 cores;
        // 64 KiB gave 8 500, 1 MiB no more than 256 KiB. PAGEMAP_SCAN (Linux 6.7+, else skipped)
        // zeroes only the pages the instance touched, so a slot keeps at most that
        // much of what its last instance used resident.
        pool.linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT)
            .pagemap_scan(wasmtime::Enabled::Auto);
        Some(InstanceAllocationStrategy::Pooling(pool))
    }
}
