//! Token buckets for the event recorder's limits, with the time passed in so they are
//! tested without a clock.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A token bucket: `burst` tokens at most, refilled at `per_second`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    #[must_use]
    pub fn new(per_second: f64, burst: u32, now: Instant) -> Self {
        Self {
            per_second,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.last = self.last.max(now);
    }

    /// Takes one token if there is one at `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket has refilled completely by `now` (so forgetting it changes
    /// nothing).
    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// One token bucket per key (the kubelet's per-object event spam filter), holding at most
/// `capacity` keys: when full, buckets that have refilled are forgotten first, then the
/// one used longest ago.
#[derive(Debug)]
pub struct KeyedBuckets<K> {
    per_second: f64,
    burst: u32,
    capacity: usize,
    buckets: HashMap<K, TokenBucket>,
}

impl<K: Eq + Hash + Clone> KeyedBuckets<K> {
    /// Buckets of `burst` tokens refilled every `refill` (one token each time).
    #[must_use]
    pub fn new(refill: Duration, burst: u32, capacity: usize) -> Self {
        Self {
            per_second: 1.0 / refill.as_secs_f64().max(f64::MIN_POSITIVE),
            burst,
            capacity: capacity.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token of `key`'s bucket if there is one at `now`.
    pub fn try_take(&mut self, key: &K, now: Instant) -> bool {
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.capacity {
            self.buckets.retain(|_, b| !b.is_full(now));
            if self.buckets.len() >= self.capacity
                && let Some(oldest) = self
                    .buckets
                    .iter()
                    .min_by_key(|(_, b)| b.last)
                    .map(|(k, _)| k.clone())
            {
                self.buckets.remove(&oldest);
            }
        }
        self.buckets
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::new(self.per_second, self.burst, now))
            .try_take(now)
    }

    /// Keys held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no key is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(50.0, 100, t0);
        assert_eq!((0..1000).filter(|_| b.try_take(t0)).count(), 100);
        // One second later, 50 more.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..1000).filter(|_| b.try_take(t1)).count(), 50);
        // Never more than the burst, however long it waited.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..1000).filter(|_| b.try_take(t2)).count(), 100);
    }

    #[test]
    fn the_spam_filter_limits_each_object_alone_and_stays_bounded() {
        let t0 = Instant::now();
        let mut f = KeyedBuckets::new(Duration::from_secs(300), 25, 3);
        assert_eq!((0..100).filter(|_| f.try_take(&"a", t0)).count(), 25);
        // Another object is not held back by the first.
        assert_eq!((0..100).filter(|_| f.try_take(&"b", t0)).count(), 25);
        // One token every five minutes.
        let later = t0 + Duration::from_secs(300);
        assert_eq!((0..100).filter(|_| f.try_take(&"a", later)).count(), 1);
        for key in ["c", "d", "e", "f", "g"] {
            assert!(f.try_take(&key, later));
        }
        assert!(f.len() <= 3);
    }
}
