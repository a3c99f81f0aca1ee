//! The bounds of the kubelet API's connections (issue 22): no stranger can fill the
//! places that callers with credentials need, and nothing is held for ever.
//!
//! - TLS handshakes share a [`Pool`] of [`MAX_HANDSHAKES`]: a newcomer beyond closes the
//!   oldest handshake; each has [`HANDSHAKE_TIMEOUT`].
//! - A connection whose client certificate was verified at the handshake, or one of
//!   whose requests was authorized, holds one of [`MAX_AUTHENTICATED`] places of its
//!   own, until one of its requests is refused. The others (no certificate, a bearer token not yet checked, a certificate
//!   holder when those places are taken) share a [`Pool`] of [`MAX_ANONYMOUS`], where a
//!   newcomer beyond closes the oldest.
//! - Every connection is closed after [`FIRST_REQUEST_TIMEOUT`] without a first request
//!   and after [`IDLE_TIMEOUT`] with no request in flight (the kubelet's `IdleTimeout`);
//!   an HTTP/1 request head must come within [`HEAD_TIMEOUT`], and an HTTP/2 peer must
//!   answer pings ([`H2_PING_INTERVAL`], [`H2_PING_TIMEOUT`]).
//! - An upgraded port-forward session holds a [`SessionPermit`] for its whole life: at
//!   most [`MAX_SESSIONS`] on the node and [`MAX_SESSIONS_PER_POD`] per pod.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a client has to complete its TLS handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in progress at once; a newcomer beyond closes the oldest.
pub(crate) const MAX_HANDSHAKES: usize = 256;
/// Connections without credentials checked yet; a newcomer beyond closes the oldest.
pub(crate) const MAX_ANONYMOUS: usize = 256;
/// Connections with a verified client certificate or an authorized request.
pub(crate) const MAX_AUTHENTICATED: usize = 1024;
/// How long a connection may wait, after its handshake, before its first request.
pub(crate) const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an HTTP/1 request head may take to come (hyper's timer also runs while a
/// kept-alive connection waits for its next request).
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection without a request in flight for this long is closed (the kubelet's
/// `http.Server` `IdleTimeout`).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often an HTTP/2 peer is pinged.
pub(crate) const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
/// How long an HTTP/2 peer has to answer a ping before the connection is closed.
pub(crate) const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a connection closed for idleness has to say goodbye (HTTP/2 `GOAWAY`).
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Port-forward sessions on the node at once.
pub(crate) const MAX_SESSIONS: usize = 32;
/// Port-forward sessions to one pod at once.
pub(crate) const MAX_SESSIONS_PER_POD: usize = 8;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Places shared by newcomers: when all are taken, the oldest member is closed.
#[derive(Debug)]
pub(crate) struct Pool {
    capacity: usize,
    members: Mutex<Members>,
}

#[derive(Debug, Default)]
struct Members {
    next: u64,
    /// Each member's token by age (the oldest first).
    by_age: BTreeMap<u64, CancellationToken>,
}

impl Pool {
    /// A pool of `capacity` places (at least one).
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            members: Mutex::default(),
        })
    }

    /// Takes a place, closing the oldest member when all are taken.
    pub(crate) fn join(self: &Arc<Self>) -> Member {
        self.join_as(CancellationToken::new())
    }

    /// [`Pool::join`], with `closed` cancelled when a newcomer takes the place.
    fn join_as(self: &Arc<Self>, closed: CancellationToken) -> Member {
        let mut members = lock(&self.members);
        let seq = members.next;
        members.next += 1;
        while members.by_age.len() >= self.capacity {
            match members.by_age.pop_first() {
                Some((_, oldest)) => oldest.cancel(),
                None => break,
            }
        }
        members.by_age.insert(seq, closed.clone());
        Member {
            pool: self.clone(),
            seq,
            closed,
        }
    }

    /// Places taken.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.members).by_age.len()
    }
}

/// A place in a [`Pool`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Member {
    pool: Arc<Pool>,
    seq: u64,
    closed: CancellationToken,
}

impl Member {
    /// Fires when a newcomer took this place.
    pub(crate) fn closed(&self) -> CancellationToken {
        self.closed.clone()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        lock(&self.pool.members).by_age.remove(&self.seq);
    }
}

/// The API's connection places.
#[derive(Debug)]
pub(crate) struct Limits {
    /// Handshakes in progress.
    pub handshakes: Arc<Pool>,
    /// Connections without credentials checked.
    pub anonymous: Arc<Pool>,
    /// Connections with credentials.
    pub authenticated: Arc<Semaphore>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshakes: Pool::new(MAX_HANDSHAKES),
            anonymous: Pool::new(MAX_ANONYMOUS),
            authenticated: Arc::new(Semaphore::new(MAX_AUTHENTICATED)),
        }
    }
}

/// Where a connection is counted.
#[derive(Debug)]
enum Place {
    /// Held until the connection ends or is promoted.
    Anonymous { _member: Member },
    /// Held until the connection ends.
    Authenticated { _permit: OwnedSemaphorePermit },
}

/// What a connection's requests change: how many are in flight, and since when none.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Activity {
    /// Requests whose response is not yet sent.
    pub in_flight: usize,
    /// Requests seen so far.
    pub requests: u64,
    /// When the last request ended (or the connection was set up).
    pub since: Instant,
}

/// One served connection's place and activity, shared by its task and its requests.
#[derive(Debug)]
pub(crate) struct Connection {
    limits: Arc<Limits>,
    place: Mutex<Place>,
    closed: CancellationToken,
    activity: watch::Sender<Activity>,
}

impl Connection {
    /// Places a connection that finished its handshake: with a verified client
    /// certificate among the authenticated if there is room, else among the others.
    pub(crate) fn admit(limits: &Arc<Limits>, certified: bool) -> Arc<Self> {
        let permit = if certified {
            limits.authenticated.clone().try_acquire_owned().ok()
        } else {
            None
        };
        let closed = CancellationToken::new();
        let place = match permit {
            Some(p) => Place::Authenticated { _permit: p },
            None => Place::Anonymous {
                _member: limits.anonymous.join_as(closed.clone()),
            },
        };
        let (activity, _) = watch::channel(Activity {
            in_flight: 0,
            requests: 0,
            since: Instant::now(),
        });
        Arc::new(Self {
            limits: limits.clone(),
            place: Mutex::new(place),
            closed,
            activity,
        })
    }

    /// Fires when a newcomer took this connection's place.
    pub(crate) fn closed(&self) -> CancellationToken {
        self.closed.clone()
    }

    /// A request of this connection was authorized: it moves among the authenticated,
    /// if there is room, and can no longer be closed by newcomers.
    pub(crate) fn authorized(&self) {
        let mut place = lock(&self.place);
        if matches!(*place, Place::Anonymous { .. })
            && let Ok(permit) = self.limits.authenticated.clone().try_acquire_owned()
        {
            *place = Place::Authenticated { _permit: permit };
        }
    }

    /// A request of this connection was refused (401 or 403): a client certificate
    /// alone (another node's, say) keeps no protected place; the connection goes back
    /// among the others.
    pub(crate) fn refused(&self) {
        let mut place = lock(&self.place);
        if matches!(*place, Place::Authenticated { .. }) {
            *place = Place::Anonymous {
                _member: self.limits.anonymous.join_as(self.closed.clone()),
            };
        }
    }

    /// Whether the connection holds an authenticated place.
    #[cfg(test)]
    pub(crate) fn is_authenticated(&self) -> bool {
        matches!(*lock(&self.place), Place::Authenticated { .. })
    }

    /// Follows the connection's activity.
    pub(crate) fn watch(&self) -> watch::Receiver<Activity> {
        self.activity.subscribe()
    }

    /// A request starts; it ends when the returned guard is dropped (its response sent
    /// or abandoned).
    pub(crate) fn request(self: &Arc<Self>) -> InFlight {
        self.activity.send_modify(|a| {
            a.in_flight += 1;
            a.requests += 1;
        });
        InFlight(self.clone())
    }
}

/// A request in flight on a [`Connection`].
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Connection>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.activity.send_modify(|a| {
            a.in_flight = a.in_flight.saturating_sub(1);
            a.since = Instant::now();
        });
    }
}

/// A connection's time bounds (the constants above; tests shorten them).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// [`HANDSHAKE_TIMEOUT`].
    pub handshake: Duration,
    /// [`FIRST_REQUEST_TIMEOUT`].
    pub first_request: Duration,
    /// [`IDLE_TIMEOUT`].
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            handshake: HANDSHAKE_TIMEOUT,
            first_request: FIRST_REQUEST_TIMEOUT,
            idle: IDLE_TIMEOUT,
        }
    }
}

impl Timeouts {
    /// When a connection with `activity` is to be closed for idleness, if it has no
    /// request in flight.
    pub(crate) fn idle_deadline(&self, activity: &Activity) -> Option<Instant> {
        if activity.in_flight > 0 {
            return None;
        }
        let bound = if activity.requests == 0 {
            self.first_request
        } else {
            self.idle
        };
        Some(activity.since + bound)
    }
}

/// The port-forward sessions open, on the node and per pod.
#[derive(Debug)]
pub(crate) struct Sessions {
    node: Arc<Semaphore>,
    node_bound: usize,
    per_pod: usize,
    pods: Mutex<HashMap<String, usize>>,
}

/// Why a session was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum SessionRefused {
    /// The node's sessions are all open.
    #[error("too many port-forward sessions on this node (at most {0})")]
    Node(usize),
    /// The pod's sessions are all open.
    #[error("too many port-forward sessions to this pod (at most {0})")]
    Pod(usize),
}

impl Sessions {
    /// At most `node` sessions, `per_pod` to one pod.
    pub(crate) fn new(node: usize, per_pod: usize) -> Arc<Self> {
        Arc::new(Self {
            node: Arc::new(Semaphore::new(node)),
            node_bound: node,
            per_pod,
            pods: Mutex::default(),
        })
    }

    /// A place for a session to the pod `uid`, held until dropped.
    pub(crate) fn open(self: &Arc<Self>, uid: &str) -> Result<SessionPermit, SessionRefused> {
        let node = self
            .node
            .clone()
            .try_acquire_owned()
            .map_err(|_| SessionRefused::Node(self.node_bound))?;
        let mut pods = lock(&self.pods);
        let count = pods.entry(uid.to_owned()).or_default();
        if *count >= self.per_pod {
            return Err(SessionRefused::Pod(self.per_pod));
        }
        *count += 1;
        Ok(SessionPermit {
            _node: node,
            sessions: self.clone(),
            pod: uid.to_owned(),
        })
    }
}

/// A port-forward session's place.
#[derive(Debug)]
pub(crate) struct SessionPermit {
    _node: OwnedSemaphorePermit,
    sessions: Arc<Sessions>,
    pod: String,
}

impl Drop for SessionPermit {
    fn drop(&mut self) {
        let mut pods = lock(&self.sessions.pods);
        if let Some(count) = pods.get_mut(&self.pod) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                pods.remove(&self.pod);
            }
        }
    }
}

#[cfg(test)]
mod tests;
