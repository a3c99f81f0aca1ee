//! What one container may hold: one memory budget for all its linear memories and
//! tables together, and caps on how many instances, memories and tables it creates.

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

/// The limiter of one store.
///
/// Linear memories and tables are never freed before their store is dropped, so the
/// bytes granted only grow: every growth of any memory or table is checked against the
/// sum of all of them, which makes the limit one per container, however many memories,
/// tables or (component) instances it creates.
#[derive(Debug)]
pub(crate) struct Limits {
    /// Bytes all memories and tables may take together; `None`: unlimited.
    budget: Option<usize>,
    /// Bytes granted so far.
    granted: usize,
    /// The last growth granted, taken back if wasmtime reports it failed.
    last_grant: usize,
    /// Some growth was refused because of the budget.
    refused: bool,
    caps: StoreCaps,
    /// The container's memory in use (all its live stores), which this store's grants
    /// are added to and taken back from when it goes.
    gauge: Arc<AtomicU64>,
}

impl Limits {
    pub(crate) fn new(budget: Option<u64>, caps: StoreCaps, gauge: Arc<AtomicU64>) -> Self {
        Self {
            budget: budget.map(|b| usize::try_from(b).unwrap_or(usize::MAX)),
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

    fn grow(&mut self, bytes: usize) -> bool {
        let total = self.granted.saturating_add(bytes);
        if self.budget.is_some_and(|b| total > b) {
            self.refused = true;
            self.last_grant = 0;
            return false;
        }
        self.gauge
            .fetch_add((total - self.granted) as u64, Ordering::Relaxed);
        self.granted = total;
        self.last_grant = bytes;
        true
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
        Ok(self.grow(desired.saturating_sub(current)))
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
        Ok(self.grow(elements.saturating_mul(TABLE_ELEMENT_BYTES)))
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
        // A second memory: alone it would fit, with the first it does not.
        assert!(!l.memory_growing(0, 60, None).expect("ok"));
        assert!(l.refused());
        // Tables count a pointer per element.
        let fits = (100 - 60) / TABLE_ELEMENT_BYTES;
        assert!(l.table_growing(0, fits, None).expect("ok"));
        assert!(!l.table_growing(fits, fits + 1, None).expect("ok"));
        assert_eq!(l.granted(), 60 + fits * TABLE_ELEMENT_BYTES);
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
