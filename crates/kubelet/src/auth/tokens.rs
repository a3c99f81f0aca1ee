//! Bearer tokens to users by `TokenReview`, bounded against a flood of made-up tokens:
//! answers cached (valid and invalid apart, so invalid tokens never push out a valid
//! one), keyed by a salted SHA-256 of the token (the cache holds no token), one review
//! per token at a time, and at most [`IN_FLIGHT`] reviews in flight node-wide.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sha2::Digest as _;
use tokio::sync::{OnceCell, Semaphore};

use super::cache::TtlCache;
use super::{ReviewError, Reviewer, User};

/// Entries of the cache of valid tokens.
pub(crate) const VALID_ENTRIES: usize = 4096;
/// Entries of the cache of invalid tokens.
pub(crate) const INVALID_ENTRIES: usize = 4096;
/// Token reviews in flight at once, node-wide.
pub(crate) const IN_FLIGHT: usize = 16;
/// How long a request waits for one of the [`IN_FLIGHT`] turns before it is refused
/// (401, as a review that failed): the kubelet's own review timeout.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(10);

/// Why a token could not be reviewed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum TokenError {
    /// The review failed (shared by every request that waited on it).
    #[error("{0}")]
    Review(Arc<ReviewError>),
    /// Every turn was taken for longer than the request may wait.
    #[error("{IN_FLIGHT} token reviews in flight, none done within {MAX_WAIT:?}")]
    Busy,
}

/// What a review found.
type Answer = Result<Option<User>, TokenError>;

/// A token as the caches know it: a salted SHA-256, never the token itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TokenKey([u8; 32]);

/// The reviews of one token under way, shared by every request that carries it.
type Flights = Mutex<HashMap<TokenKey, Arc<OnceCell<Answer>>>>;

/// The kubelet API's token authenticator.
pub(crate) struct TokenReviews {
    reviewer: Arc<dyn Reviewer>,
    ttl: Duration,
    salt: [u8; 16],
    valid: TtlCache<TokenKey, User>,
    invalid: TtlCache<TokenKey, ()>,
    flights: Flights,
    turns: Semaphore,
}

impl TokenReviews {
    /// Reviews by `reviewer`, answers kept for `ttl`
    /// (`--authentication-token-webhook-cache-ttl`, valid and invalid alike, as the
    /// kubelet keeps them).
    pub(crate) fn new(reviewer: Arc<dyn Reviewer>, ttl: Duration) -> Self {
        // Random per process (std's hasher keys come from the OS's randomness).
        let state = std::hash::RandomState::new();
        let mut salt = [0; 16];
        salt[..8].copy_from_slice(&state.hash_one(0_u8).to_le_bytes());
        salt[8..].copy_from_slice(&state.hash_one(1_u8).to_le_bytes());
        Self {
            reviewer,
            ttl,
            salt,
            valid: TtlCache::new(VALID_ENTRIES),
            invalid: TtlCache::new(INVALID_ENTRIES),
            flights: Mutex::new(HashMap::new()),
            turns: Semaphore::new(IN_FLIGHT),
        }
    }

    /// The cache key of `token`.
    fn key(&self, token: &str) -> TokenKey {
        let mut hash = sha2::Sha256::new();
        hash.update(self.salt);
        hash.update(token.as_bytes());
        TokenKey(hash.finalize().into())
    }

    /// The cached answer for `key`: `Some(None)` for a token known to be invalid.
    fn cached(&self, key: &TokenKey) -> Option<Option<User>> {
        if let Some(user) = self.valid.get(key) {
            return Some(Some(user));
        }
        self.invalid.get(key).map(|()| None)
    }

    /// The user `token` belongs to, `None` when it is not valid.
    ///
    /// # Errors
    /// The review failed, or no turn came within [`MAX_WAIT`].
    pub(crate) async fn user(&self, token: &str) -> Answer {
        let key = self.key(token);
        if let Some(known) = self.cached(&key) {
            return Ok(known);
        }
        let flight = Flight::join(&self.flights, key);
        flight
            .answer
            .get_or_init(|| self.review(key, token))
            .await
            .clone()
    }

    /// One review, in a turn, its answer cached (a failure is not).
    async fn review(&self, key: TokenKey, token: &str) -> Answer {
        // A flight that ended just before this one began has cached its answer.
        if let Some(known) = self.cached(&key) {
            return Ok(known);
        }
        let _turn = match tokio::time::timeout(MAX_WAIT, self.turns.acquire()).await {
            Ok(Ok(turn)) => turn,
            // Never closed; waited too long.
            Ok(Err(_)) | Err(_) => return Err(TokenError::Busy),
        };
        match self.reviewer.review_token(token).await {
            Ok(Some(user)) => {
                self.valid.insert(key, user.clone(), self.ttl);
                Ok(Some(user))
            }
            Ok(None) => {
                self.invalid.insert(key, (), self.ttl);
                Ok(None)
            }
            Err(e) => Err(TokenError::Review(Arc::new(e))),
        }
    }

    /// How many answers are cached, valid and invalid.
    #[cfg(test)]
    pub(crate) fn cached_len(&self) -> (usize, usize) {
        (self.valid.len(), self.invalid.len())
    }
}

/// A request's share in the review of its token; the last one out (or the first once
/// the answer is in) takes the review off the map. A request that goes away (its
/// client left) hands the review to another waiter, or ends it when none is left.
struct Flight<'a> {
    flights: &'a Flights,
    key: TokenKey,
    answer: Arc<OnceCell<Answer>>,
}

/// The reviews under way, locked.
fn lock(flights: &Flights) -> MutexGuard<'_, HashMap<TokenKey, Arc<OnceCell<Answer>>>> {
    // The map stays consistent whatever panicked while it was held.
    flights.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<'a> Flight<'a> {
    /// A share in the review of `key` under way, or in a new one.
    fn join(flights: &'a Flights, key: TokenKey) -> Self {
        let answer = lock(flights).entry(key).or_default().clone();
        Self {
            flights,
            key,
            answer,
        }
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut flights = lock(self.flights);
        // Every share is taken and given back under the lock, so the count is exact
        // there: the map's and ours are the last two when nobody else waits.
        let answer = std::mem::take(&mut self.answer);
        let ours = flights
            .get(&self.key)
            .is_some_and(|a| Arc::ptr_eq(a, &answer));
        if ours && (answer.initialized() || Arc::strong_count(&answer) == 2) {
            flights.remove(&self.key);
        }
        drop(answer);
        drop(flights);
    }
}

#[cfg(test)]
impl TokenReviews {
    /// How many tokens have a review under way.
    pub(crate) fn flights_len(&self) -> usize {
        lock(&self.flights).len()
    }
}
