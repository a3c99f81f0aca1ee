//! A bounded cache whose entries expire, for the kubelet API's token reviews and
//! authorization decisions (the kubelet's webhook caches).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// At most `capacity` entries; each lives for the time-to-live it was inserted with.
#[derive(Debug)]
pub(crate) struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (V, Instant)>> {
        // A panic while holding the lock leaves a map that is still consistent.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The live value of `key`.
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        let now = Instant::now();
        let mut entries = self.lock();
        match entries.get(key) {
            Some((value, expires)) if *expires > now => Some(value.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `value` for `ttl` (not at all when `ttl` is zero). When full, expired
    /// entries go first, then the one closest to expiry.
    pub(crate) fn insert(&self, key: K, value: V, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, (_, expires)| *expires > now);
            if entries.len() >= self.capacity {
                let soonest = entries
                    .iter()
                    .min_by_key(|(_, (_, expires))| *expires)
                    .map(|(k, _)| k.clone());
                if let Some(k) = soonest {
                    entries.remove(&k);
                }
            }
        }
        entries.insert(key, (value, now + ttl));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
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
