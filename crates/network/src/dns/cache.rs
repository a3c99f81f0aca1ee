//! A resolver's own small cache of lookup results, bounded in entries and in time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::LookupError;

/// Most entries a cache may be given.
pub const MAX_CACHE_ENTRIES: usize = 1024;
/// The longest an answer is kept, whatever its TTL.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(30);

/// What a lookup came to: addresses, or `NotFound`.
pub(crate) type Cached = Result<Vec<IpAddr>, LookupError>;

#[derive(Debug)]
struct Entry {
    result: Cached,
    expires: Instant,
}

/// Lookup results by name, each until its TTL (at most [`MAX_CACHE_TTL`]) runs out; when
/// full, the expired entries go, then the one expiring first.
#[derive(Debug)]
pub(crate) struct Cache {
    capacity: usize,
    entries: Mutex<HashMap<String, Entry>>,
}

impl Cache {
    /// A cache of at most `capacity` entries (at most [`MAX_CACHE_ENTRIES`]).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.min(MAX_CACHE_ENTRIES);
        Cache {
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The result kept for `key`, if it has not expired.
    pub fn get(&self, key: &str) -> Option<Cached> {
        let mut entries = self.entries.lock().ok()?;
        match entries.get(key) {
            Some(entry) if entry.expires > Instant::now() => Some(entry.result.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `result` for `key` for `ttl` seconds (bounded); a TTL of 0, or one with its
    /// high bit set (RFC 2181: read as 0), keeps nothing.
    pub fn put(&self, key: &str, result: Cached, ttl: u32) {
        if ttl == 0 || ttl > i32::MAX as u32 || self.capacity == 0 {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        let now = Instant::now();
        if entries.len() >= self.capacity && !entries.contains_key(key) {
            entries.retain(|_, entry| entry.expires > now);
        }
        if entries.len() >= self.capacity && !entries.contains_key(key) {
            let first = entries
                .iter()
                .min_by_key(|(_, e)| e.expires)
                .map(|(k, _)| k.clone());
            first.map(|k| entries.remove(&k));
        }
        let expires = now + Duration::from_secs(ttl.into()).min(MAX_CACHE_TTL);
        entries.insert(key.to_owned(), Entry { result, expires });
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ip(last: u8) -> Cached {
        Ok(vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))])
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_with_their_ttl_bounded_to_30_s() {
        let cache = Cache::new(4);
        cache.put("a", ip(1), 5);
        cache.put("b", ip(2), 3600);
        cache.put("zero", ip(3), 0);
        cache.put("negative", ip(3), u32::MAX);
        assert_eq!(
            (cache.get("a"), cache.get("zero"), cache.get("negative")),
            (Some(ip(1)), None, None)
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!((cache.get("a"), cache.get("b")), (None, Some(ip(2))));
        tokio::time::advance(Duration::from_secs(25)).await;
        assert_eq!(cache.get("b"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_cache_drops_the_expired_then_the_first_to_expire() {
        let cache = Cache::new(2);
        cache.put("short", ip(1), 1);
        cache.put("long", ip(2), 20);
        cache.put("new", ip(3), 10);
        assert_eq!(
            (cache.get("short"), cache.get("long"), cache.get("new")),
            (None, Some(ip(2)), Some(ip(3)))
        );
        tokio::time::advance(Duration::from_secs(15)).await;
        cache.put("newer", Err(LookupError::NotFound("newer".into())), 10);
        assert_eq!(cache.get("long"), Some(ip(2)));
        assert_eq!(
            cache.get("newer"),
            Some(Err(LookupError::NotFound("newer".into())))
        );
        assert_eq!(Cache::new(usize::MAX).capacity, MAX_CACHE_ENTRIES);
    }
}
