//! What one container may hold: one memory budget for all its linear memories and
//! tables together, across all its live stores (a served component's instances too),
//! within the node's budget for all containers together, and caps on how many instances,
//! memories and tables each store creates.
//!
//! A growth past the budget is not answered with a failed `memory.grow` (which a guest
//! built by the usual toolchains survives: wasi-libc's `malloc` returns NULL and the
//! program may go on and exit 0) but with a trap that ends the store at once, as the
//! kernel's OOM killer ends a container that passes its cgroup's limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::ResourceLimiter;

/// Bytes one table element counts for against the memory limit: a pointer, which is what
/// wasmtime stores per element (`ResourceLimiter::table_growing` documents it).
pub const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

/// Caps on what one container's store may create, whatever its memory limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreCaps {
    /// Core module instances (a component instantiates several).
    pub instances: usize,
    /// Linear memories, in all instances together.
    pub memories: usize,
    /// Tables, in all instances together.
    pub tables: usize,
}

impl Default for StoreCaps {
    /// 256 of each: far more than a component built by the usual tools holds (a
    /// handful), far fewer than the thousands a hostile one could ask for.
    fn default() -> Self {
        Self {
            instances: 256,
            memories: 256,
            tables: 256,
        }
    }
}

/// Whose budget a refused growth passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitOf {
    /// The container's `limits.memory`.
    Container,
    /// The node's memory for all pods together (its allocatable memory).
    Node,
}

impl std::fmt::Display for LimitOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Container => "the container's memory limit",
            Self::Node => "the node's memory for pods (its allocatable memory)",
        })
    }
}

/// The error a store's growth past its container's or the node's budget traps with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{of} of {budget} bytes was reached ({asked} more bytes asked for)")]
pub struct MemoryLimitReached {
    /// Whose budget it was.
    pub of: LimitOf,
    /// The budget in bytes.
    pub budget: u64,
    /// The growth that was refused, in bytes.
    pub asked: u64,
}

/// Bytes in use against a limit, shared by everything the limit covers (a container's
/// stores, or every container of the node); cloning is cheap.
#[derive(Debug, Clone, Default)]
pub(crate) struct Budget {
    used: Arc<AtomicU64>,
    limit: Option<u64>,
}

impl Budget {
    /// A budget of `limit` bytes (`None`: unlimited) counted in `used`.
    pub(crate) fn new(used: Arc<AtomicU64>, limit: Option<u64>) -> Self {
        Self { used, limit }
    }

    /// Takes `bytes` if they fit, in one atomic step (concurrent stores cannot pass the
    /// limit together).
    fn take(&self, bytes: u64) -> bool {
        match self.limit {
            None => {
                self.used.fetch_add(bytes, Ordering::Relaxed);
                true
            }
            Some(limit) => self
                .used
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                    used.checked_add(bytes).filter(|&after| after <= limit)
                })
                .is_ok(),
        }
    }

    fn give(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes in use now.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

/// The limiter of one store.
///
/// Linear memories and tables are never freed before their store is dropped, so the
/// bytes a store is granted only grow. Every growth of any memory or table is checked
/// against the container's budget, the sum over all its live stores, which makes the
/// limit one per container however many memories, tables, (component) instances or
/// stores it creates, and against the node's, the sum over every container; a store
/// gives its bytes back to both when it is dropped.
#[derive(Debug)]
pub(crate) struct Limits {
    /// The container's memory (all its live stores) and its limit.
    container: Budget,
    /// The memory of every container of the node and its limit.
    node: Budget,
    /// Bytes granted to this store so far.
    granted: usize,
    /// The last growth granted, taken back if wasmtime reports it failed.
    last_grant: usize,
    /// Some growth was refused because of a budget.
    refused: bool,
    caps: StoreCaps,
}

impl Limits {
    pub(crate) fn new(container: Budget, node: Budget, caps: StoreCaps) -> Self {
        Self {
            container,
            node,
            granted: 0,
            last_grant: 0,
            refused: false,
            caps,
        }
    }

    /// Whether a growth was refused because of a memory limit.
    pub(crate) fn refused(&self) -> bool {
        self.refused
    }

    /// Bytes granted to memories and tables together.
    #[cfg(test)]
    pub(crate) fn granted(&self) -> usize {
        self.granted
    }

    /// Grants `bytes` more to this store if both the container's and the node's budgets
    /// hold them; else the store is marked refused and the growth traps.
    fn grow(&mut self, bytes: usize) -> wasmtime::Result<bool> {
        let total = self.granted.saturating_add(bytes);
        let added_bytes = total - self.granted;
        let added = added_bytes as u64;
        let refused = if !self.container.take(added) {
            Some((LimitOf::Container, &self.container))
        } else if !self.node.take(added) {
            self.container.give(added);
            Some((LimitOf::Node, &self.node))
        } else {
            None
        };
        if let Some((of, budget)) = refused {
            let error = MemoryLimitReached {
                of,
                budget: budget.limit.unwrap_or(u64::MAX),
                asked: bytes as u64,
            };
            self.refused = true;
            self.last_grant = 0;
            return Err(wasmtime::Error::new(error));
        }
        self.granted = total;
        self.last_grant = added_bytes;
        Ok(true)
    }

    fn grow_failed(&mut self) {
        let last = self.last_grant as u64;
        self.container.give(last);
        self.node.give(last);
        self.granted = self.granted.saturating_sub(self.last_grant);
        self.last_grant = 0;
    }
}

impl Drop for Limits {
    fn drop(&mut self) {
        // The store and its memories go with it.
        self.container.give(self.granted as u64);
        self.node.give(self.granted as u64);
    }
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(desired.saturating_sub(current))
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.grow_failed();
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let elements = desired.saturating_sub(current);
        self.grow(elements.saturating_mul(TABLE_ELEMENT_BYTES))
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.grow_failed();
        Ok(())
    }

    fn instances(&self) -> usize {
        self.caps.instances
    }

    fn tables(&self) -> usize {
        self.caps.tables
    }

    fn memories(&self) -> usize {
        self.caps.memories
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store of a container limited to `limit` on an unlimited node.
    fn limited(limit: Option<u64>, gauge: Arc<AtomicU64>) -> Limits {
        Limits::new(
            Budget::new(gauge, limit),
            Budget::default(),
            StoreCaps::default(),
        )
    }

    #[test]
    fn growths_of_different_memories_and_tables_share_one_budget() {
        let mut l = limited(Some(100), Arc::default());
        assert!(l.memory_growing(0, 60, None).expect("ok"));
        // A second memory: alone it would fit, with the first it does not; the refusal
        // is a trap, not a failed growth the guest could go on from.
        let refused = l.memory_growing(0, 60, None).expect_err("refused");
        assert_eq!(
            refused.downcast_ref::<MemoryLimitReached>(),
            Some(&MemoryLimitReached {
                of: LimitOf::Container,
                budget: 100,
                asked: 60
            })
        );
        assert!(l.refused());
        // Tables count a pointer per element.
        let fits = (100 - 60) / TABLE_ELEMENT_BYTES;
        assert!(l.table_growing(0, fits, None).expect("ok"));
        assert!(l.table_growing(fits, fits + 1, None).is_err());
        assert_eq!(l.granted(), 60 + fits * TABLE_ELEMENT_BYTES);
    }

    #[test]
    fn the_containers_of_a_node_share_its_budget() {
        let node = Budget::new(Arc::default(), Some(100));
        let store = |limit| {
            Limits::new(
                Budget::new(Arc::default(), limit),
                node.clone(),
                StoreCaps::default(),
            )
        };
        let (mut a, mut b) = (store(Some(80)), store(None));
        assert!(a.memory_growing(0, 70, None).expect("fits"));
        // Within its own (absent) limit, past the node's: refused, and the container's
        // count is given back.
        let refused = b.memory_growing(0, 40, None).expect_err("refused");
        assert_eq!(
            refused
                .downcast_ref::<MemoryLimitReached>()
                .map(|e| (e.of, e.budget)),
            Some((LimitOf::Node, 100))
        );
        assert!(b.refused() && !a.refused());
        assert_eq!(b.container.used(), 0);
        assert_eq!(node.used(), 70);
        drop(a);
        assert_eq!(node.used(), 0);
        assert!(b.memory_growing(0, 90, None).expect("fits now"));
    }

    #[test]
    fn the_stores_of_one_container_share_its_budget() {
        // A served component's instances: each store alone is far below the budget.
        let gauge = Arc::new(AtomicU64::new(0));
        let mut stores: Vec<_> = (0..4).map(|_| limited(Some(100), gauge.clone())).collect();
        for store in &mut stores[..3] {
            assert!(store.memory_growing(0, 30, None).expect("fits"));
        }
        assert!(stores[3].memory_growing(0, 30, None).is_err());
        assert!(stores[3].refused());
        assert!(!stores[0].refused());
        assert_eq!(gauge.load(Ordering::Relaxed), 90);
        // One store gone, its bytes are the others' again.
        stores.remove(0);
        assert!(stores[2].memory_growing(0, 30, None).expect("fits now"));
        assert_eq!(gauge.load(Ordering::Relaxed), 90);
    }

    #[test]
    fn the_gauge_follows_the_stores_of_a_container() {
        let gauge = Arc::new(AtomicU64::new(0));
        let mut a = limited(None, gauge.clone());
        let mut b = limited(None, gauge.clone());
        assert!(a.memory_growing(0, 100, None).expect("ok"));
        assert!(b.memory_growing(0, 30, None).expect("ok"));
        b.memory_grow_failed(wasmtime::Error::msg("mmap failed"))
            .expect("ok");
        assert!(b.table_growing(0, 2, None).expect("ok"));
        let table = 2 * TABLE_ELEMENT_BYTES as u64;
        assert_eq!(gauge.load(Ordering::Relaxed), 100 + table);
        drop(a);
        assert_eq!(gauge.load(Ordering::Relaxed), table);
        drop(b);
        assert_eq!(gauge.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_failed_growth_is_given_back() {
        let mut l = limited(Some(100), Arc::default());
        assert!(l.memory_growing(0, 80, None).expect("ok"));
        l.memory_grow_failed(wasmtime::Error::msg("mmap failed"))
            .expect("ok");
        assert_eq!(l.granted(), 0);
        assert!(l.memory_growing(0, 100, None).expect("ok"));
        assert!(!l.refused());
    }

    #[test]
    fn no_budget_grants_everything_and_saturates() {
        let mut l = limited(None, Arc::default());
        assert!(l.memory_growing(0, usize::MAX, None).expect("ok"));
        assert!(l.table_growing(0, usize::MAX, None).expect("ok"));
        assert_eq!(l.granted(), usize::MAX);
        assert!(!l.refused());
    }
}
