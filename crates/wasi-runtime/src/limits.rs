//! What one container may hold: one memory budget for all its linear memories and
//! tables together, across all its live stores (a served component's instances too), and
//! caps on how many instances, memories and tables each store creates.
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

/// The error a store's growth past its container's budget traps with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the container's memory limit of {budget} bytes was reached ({asked} more bytes asked for)"
)]
pub struct MemoryLimitReached {
    /// The container's budget in bytes.
    pub budget: u64,
    /// The growth that was refused, in bytes.
    pub asked: u64,
}

/// The limiter of one store.
///
/// Linear memories and tables are never freed before their store is dropped, so the
/// bytes a store is granted only grow. Every growth of any memory or table is checked
/// against the container's gauge, the sum over all its live stores, which makes the
/// limit one per container however many memories, tables, (component) instances or
/// stores it creates; a store gives its bytes back when it is dropped.
#[derive(Debug)]
pub(crate) struct Limits {
    /// Bytes all memories and tables of the container may take together; `None`:
    /// unlimited.
    budget: Option<u64>,
    /// Bytes granted to this store so far.
    granted: usize,
    /// The last growth granted, taken back if wasmtime reports it failed.
    last_grant: usize,
    /// Some growth was refused because of the budget.
    refused: bool,
    caps: StoreCaps,
    /// The container's memory in use (all its live stores): the budget bounds it, this
    /// store's grants are added to it and taken back when the store goes.
    gauge: Arc<AtomicU64>,
}

impl Limits {
    pub(crate) fn new(budget: Option<u64>, caps: StoreCaps, gauge: Arc<AtomicU64>) -> Self {
        Self {
            budget,
            granted: 0,
            last_grant: 0,
            refused: false,
            caps,
            gauge,
        }
    }

    /// Whether a growth was refused because of the memory limit.
    pub(crate) fn refused(&self) -> bool {
        self.refused
    }

    /// Bytes granted to memories and tables together.
    #[cfg(test)]
    pub(crate) fn granted(&self) -> usize {
        self.granted
    }

    /// Grants `bytes` more to this store if the container's gauge stays within the
    /// budget; else the store is marked refused and the growth traps.
    fn grow(&mut self, bytes: usize) -> wasmtime::Result<bool> {
        let total = self.granted.saturating_add(bytes);
        let added_bytes = total - self.granted;
        let added = added_bytes as u64;
        let granted = match self.budget {
            None => {
                self.gauge.fetch_add(added, Ordering::Relaxed);
                true
            }
            // One atomic step, so that concurrent stores of one container (a served
            // component's instances) cannot pass the budget together.
            Some(budget) => self
                .gauge
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                    used.checked_add(added).filter(|&after| after <= budget)
                })
                .is_ok(),
        };
        if !granted {
            self.refused = true;
            self.last_grant = 0;
            return Err(wasmtime::Error::new(MemoryLimitReached {
                budget: self.budget.unwrap_or(u64::MAX),
                asked: bytes as u64,
            }));
        }
        self.granted = total;
        self.last_grant = added_bytes;
        Ok(true)
    }

    fn grow_failed(&mut self) {
        self.gauge
            .fetch_sub(self.last_grant as u64, Ordering::Relaxed);
        self.granted = self.granted.saturating_sub(self.last_grant);
        self.last_grant = 0;
    }
}

impl Drop for Limits {
    fn drop(&mut self) {
        // The store and its memories go with it.
        self.gauge.fetch_sub(self.granted as u64, Ordering::Relaxed);
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

    #[test]
    fn growths_of_different_memories_and_tables_share_one_budget() {
        let mut l = Limits::new(Some(100), StoreCaps::default(), Arc::default());
        assert!(l.memory_growing(0, 60, None).expect("ok"));
        // A second memory: alone it would fit, with the first it does not; the refusal
        // is a trap, not a failed growth the guest could go on from.
        let refused = l.memory_growing(0, 60, None).expect_err("refused");
        assert_eq!(
            refused.downcast_ref::<MemoryLimitReached>(),
            Some(&MemoryLimitReached {
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
    fn the_stores_of_one_container_share_its_budget() {
        // A served component's instances: each store alone is far below the budget.
        let gauge = Arc::new(AtomicU64::new(0));
        let mut stores: Vec<_> = (0..4)
            .map(|_| Limits::new(Some(100), StoreCaps::default(), gauge.clone()))
            .collect();
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
        let mut a = Limits::new(None, StoreCaps::default(), gauge.clone());
        let mut b = Limits::new(None, StoreCaps::default(), gauge.clone());
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
        let mut l = Limits::new(Some(100), StoreCaps::default(), Arc::default());
        assert!(l.memory_growing(0, 80, None).expect("ok"));
        l.memory_grow_failed(wasmtime::Error::msg("mmap failed"))
            .expect("ok");
        assert_eq!(l.granted(), 0);
        assert!(l.memory_growing(0, 100, None).expect("ok"));
        assert!(!l.refused());
    }

    #[test]
    fn no_budget_grants_everything_and_saturates() {
        let mut l = Limits::new(None, StoreCaps::default(), Arc::default());
        assert!(l.memory_growing(0, usize::MAX, None).expect("ok"));
        assert!(l.table_growing(0, usize::MAX, None).expect("ok"));
        assert_eq!(l.granted(), usize::MAX);
        assert!(!l.refused());
    }
}
