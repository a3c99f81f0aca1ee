//! A bounded cache whose entries expire, for the kubelet API's token reviews and
//! authorization decisions (the kubelet's webhook caches).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// At most `capacity` entries; each lives for the time-to-live it was inserted with.
/// A full cache drops the entry closest to expiry (the oldest, where all share one
/// time-to-live); every operation costs O(log n), whatever is in the cache.
#[derive(Debug)]
pub(crate) struct TtlCache<K, V> {
    inner: Mutex<Inner<K, V>>,
    capacity: usize,
}

#[derive(Debug)]
struct Inner<K, V> {
    /// Each key's value, its expiry, and its place in `by_expiry`.
    entries: HashMap<K, (V, Instant, u64)>,
    /// The keys by expiry (then by insertion, which makes each place unique).
    by_expiry: BTreeMap<(Instant, u64), K>,
    inserted: u64,
}

impl<K: Eq + Hash + Clone, V> Inner<K, V> {
    fn remove(&mut self, key: &K) -> Option<V> {
        let (value, expires, seq) = self.entries.remove(key)?;
        self.by_expiry.remove(&(expires, seq));
        Some(value)
    }

    /// Drops the entry closest to expiry when it has expired by `now`, or
    /// unconditionally with `now` `None`; false when nothing was dropped.
    fn pop_soonest(&mut self, now: Option<Instant>) -> bool {
        let Some(entry) = self.by_expiry.first_entry() else {
            return false;
        };
        if now.is_some_and(|now| entry.key().0 > now) {
            return false;
        }
        let key = entry.remove();
        self.entries.remove(&key);
        true
    }
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                by_expiry: BTreeMap::new(),
                inserted: 0,
            }),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, V>> {
        // A panic while holding the lock leaves maps that are still consistent: each
        // change of both is made with no call in between that could panic.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The live value of `key`.
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        let now = Instant::now();
        let mut inner = self.lock();
        match inner.entries.get(key) {
            Some((value, expires, _)) if *expires > now => Some(value.clone()),
            Some(_) => {
                inner.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `value` for `ttl` (not at all when `ttl` is zero). Expired entries go
    /// first; when the cache is still full, the one closest to expiry.
    pub(crate) fn insert(&self, key: K, value: V, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut inner = self.lock();
        inner.remove(&key);
        while inner.pop_soonest(Some(now)) {}
        if inner.entries.len() >= self.capacity {
            inner.pop_soonest(None);
        }
        let expires = now + ttl;
        let seq = inner.inserted;
        inner.inserted += 1;
        inner.by_expiry.insert((expires, seq), key.clone());
        inner.entries.insert(key, (value, expires, seq));
    }

    /// How many entries are kept (expired ones included until they are dropped).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let inner = self.lock();
        debug_assert_eq!(inner.entries.len(), inner.by_expiry.len());
        inner.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_their_ttl() {
        let cache = TtlCache::new(8);
        cache.insert("a", 1, Duration::from_secs(30));
        cache.insert("b", 2, Duration::from_secs(300));
        cache.insert("zero", 3, Duration::ZERO);
        assert_eq!(cache.get(&"zero"), None);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!((cache.get(&"a"), cache.get(&"b")), (Some(1), Some(2)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!((cache.get(&"a"), cache.get(&"b")), (None, Some(2)));
        tokio::time::advance(Duration::from_secs(300)).await;
        assert_eq!(cache.get(&"b"), None);
        assert_eq!(cache.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_cache_stays_bounded_and_drops_the_soonest_to_expire() {
        let cache = TtlCache::new(3);
        cache.insert(0, 0, Duration::from_secs(100));
        cache.insert(1, 1, Duration::from_secs(10));
        cache.insert(2, 2, Duration::from_secs(200));
        cache.insert(3, 3, Duration::from_secs(300));
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&1), None);
        assert_eq!(cache.get(&3), Some(3));
        cache.insert(4, 4, Duration::from_secs(5));
        assert_eq!(cache.get(&0), None);
        // Expired entries make room before live ones are dropped.
        tokio::time::advance(Duration::from_secs(6)).await;
        cache.insert(5, 5, Duration::from_secs(100));
        assert_eq!(cache.len(), 3);
        for k in [2, 3, 5] {
            assert_eq!(cache.get(&k), Some(k), "{k}");
        }
        for i in 0..10_000 {
            cache.insert(100 + i, i, Duration::from_secs(1000));
        }
        assert_eq!(cache.len(), 3);
    }
}
