//! Events as the kubelet records them: `core/v1` events from `source.component: kubelet`,
//! where a repeat of the same event (same object, type, reason and message) raises the
//! `count` and `lastTimestamp` of the first one instead of creating another, so a crash
//! loop shows one `BackOff` event with a growing count, as `kubectl describe` shows it for
//! any kubelet.
//!
//! kube-rs's `Recorder` keys repeats without the message, which would fold
//! `Failed to pull image ...` and `Error: ErrImagePull` into one event; hence this small
//! recorder of our own.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use crate::api::ClusterApi;

use crate::ratelimit::{KeyedBuckets, TokenBucket};

/// `Normal` or `Warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something went wrong.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// What makes two events the same event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    uid: String,
    field_path: String,
    type_: EventType,
    reason: String,
    message: String,
}

#[derive(Debug, Clone)]
struct Seen {
    name: String,
    count: i32,
    last: jiff::Timestamp,
}

/// Repeats older than this start a new event, as the kubelet's correlator forgets them.
const REMEMBER: jiff::SignedDuration = jiff::SignedDuration::from_mins(10);
/// Most events remembered for aggregation.
const MAX_REMEMBERED: usize = 4096;

/// Records events for objects on behalf of one node.
pub struct Recorder {
    api: Arc<dyn ClusterApi>,
    node_name: String,
    seen: Mutex<HashMap<Key, Seen>>,
    limits: Mutex<Limits>,
    dropped: AtomicU64,
    /// Events waiting to be created again (the API server was away).
    retrying: Arc<AtomicUsize>,
}

/// Tries of an event the API server could not be reached for.
pub const RETRY_TRIES: u32 = 12;
/// Wait between two of them.
pub const RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// Events waiting to be retried at most, node-wide (client-go's broadcaster queue holds
/// 1000).
pub const MAX_RETRYING: usize = 1000;

/// The kubelet's event rate limits: one bucket for the node (`eventRecordQPS`,
/// `eventBurst`) and client-go's spam filter, one bucket per object (25 events, then one
/// every 5 minutes), which keeps one crash-looping or flooding pod from using the node's
/// whole budget.
struct Limits {
    node: Option<TokenBucket>,
    per_object: KeyedBuckets<String>,
}

/// client-go's `EventSourceObjectSpamFilter`: burst and refill period per object.
const SPAM_BURST: u32 = 25;
const SPAM_REFILL: std::time::Duration = std::time::Duration::from_secs(300);
/// Objects whose spam buckets are kept (client-go's LRU holds 4096).
const SPAM_OBJECTS: usize = 4096;

impl Limits {
    fn new(qps: u32, burst: u32) -> Self {
        let now = std::time::Instant::now();
        Self {
            node: (qps > 0).then(|| TokenBucket::new(f64::from(qps), burst.max(1), now)),
            per_object: KeyedBuckets::new(SPAM_REFILL, SPAM_BURST, SPAM_OBJECTS),
        }
    }

    /// Whether an event about `object` may be sent now.
    fn allow(&mut self, object: &ObjectReference) -> bool {
        let now = std::time::Instant::now();
        let key = format!(
            "{}/{}/{}/{}",
            object.kind.as_deref().unwrap_or_default(),
            object.namespace.as_deref().unwrap_or_default(),
            object.name.as_deref().unwrap_or_default(),
            object.uid.as_deref().unwrap_or_default(),
        );
        self.per_object.try_take(&key, now) && self.node.as_mut().is_none_or(|b| b.try_take(now))
    }
}

impl Recorder {
    /// A recorder for node `node_name`.
    #[must_use]
    pub fn new(api: Arc<dyn ClusterApi>, node_name: &str) -> Self {
        Self {
            api,
            node_name: node_name.to_owned(),
            seen: Mutex::new(HashMap::new()),
            limits: Mutex::new(Limits::new(50, 100)),
            dropped: AtomicU64::new(0),
            retrying: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The node-wide limits: `qps` events a second (0: none) with bursts of `burst`.
    #[must_use]
    pub fn with_limits(self, qps: u32, burst: u32) -> Self {
        Self {
            limits: Mutex::new(Limits::new(qps, burst)),
            ..self
        }
    }

    /// Events dropped by the rate limits so far.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Seen>> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records an event about `object`, or counts a repeat of one recorded lately.
    ///
    /// # Errors
    /// When the API server refuses the event.
    pub async fn publish(
        &self,
        object: &ObjectReference,
        type_: EventType,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        let allowed = self
            .limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .allow(object);
        if !allowed {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(reason, "event dropped by the rate limits");
            return Ok(());
        }
        let namespace = object
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let key = Key {
            uid: object.uid.clone().unwrap_or_default(),
            field_path: object.field_path.clone().unwrap_or_default(),
            type_,
            reason: reason.to_owned(),
            message: message.to_owned(),
        };
        let now = jiff::Timestamp::now();
        let repeat = self
            .seen()
            .get(&key)
            .filter(|s| now.duration_since(s.last) < REMEMBER)
            .cloned();
        if let Some(seen) = repeat {
            let count = seen.count + 1;
            let patch = serde_json::json!({ "count": count, "lastTimestamp": Time(now) });
            match self.api.patch_event(&namespace, &seen.name, patch).await {
                Ok(()) => {
                    self.remember(
                        key,
                        Seen {
                            count,
                            last: now,
                            ..seen
                        },
                    );
                    return Ok(());
                }
                // Expired or deleted: record it anew.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let event = self.event(object, &namespace, type_, reason, message, now);
        let name = event.metadata.name.clone().unwrap_or_default();
        self.api.create_event(&namespace, event).await?;
        self.remember(
            key,
            Seen {
                name,
                count: 1,
                last: now,
            },
        );
        Ok(())
    }

    /// [`Recorder::publish`] for callers that carry on when the API server refuses the
    /// event: the refusal is logged.
    ///
    /// When the API server cannot be reached, the event is created again in the
    /// background, [`RETRY_TRIES`] times [`RETRY_EVERY`] apart (client-go's broadcaster
    /// tries 12 times, 10 s apart), with at most [`MAX_RETRYING`] events waiting node-wide:
    /// events of an API server outage shorter than two minutes are not lost.
    pub async fn record(
        &self,
        object: &ObjectReference,
        type_: EventType,
        reason: &str,
        message: &str,
    ) {
        let Err(e) = self.publish(object, type_, reason, message).await else {
            return;
        };
        if matches!(e, kube::Error::Api(_)) {
            tracing::warn!(error = %e, reason, "cannot record event");
            return;
        }
        if self.retrying.fetch_add(1, Ordering::Relaxed) >= MAX_RETRYING {
            self.retrying.fetch_sub(1, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, reason, "cannot record event; too many waiting to be retried");
            return;
        }
        tracing::debug!(error = %e, reason, "cannot record event; retrying");
        let namespace = object
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let event = self.event(
            object,
            &namespace,
            type_,
            reason,
            message,
            jiff::Timestamp::now(),
        );
        let api = self.api.clone();
        let retrying = self.retrying.clone();
        tokio::spawn(async move {
            for _ in 0..RETRY_TRIES {
                tokio::time::sleep(RETRY_EVERY).await;
                match api.create_event(&namespace, event.clone()).await {
                    // Created, or refused for good (e.g. created by a try whose answer
                    // was lost): done.
                    Ok(()) | Err(kube::Error::Api(_)) => break,
                    Err(_) => {}
                }
            }
            retrying.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// A new `core/v1` event about `object` from this node's kubelet.
    fn event(
        &self,
        object: &ObjectReference,
        namespace: &str,
        type_: EventType,
        reason: &str,
        message: &str,
        now: jiff::Timestamp,
    ) -> Event {
        let name = format!(
            "{}.{:x}",
            object.name.as_deref().unwrap_or("event"),
            now.as_nanosecond()
        );
        Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            involved_object: object.clone(),
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            type_: Some(type_.as_str().to_owned()),
            source: Some(EventSource {
                component: Some("kubelet".to_owned()),
                host: Some(self.node_name.clone()),
            }),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            reporting_component: Some("kubelet".to_owned()),
            reporting_instance: Some(self.node_name.clone()),
            ..Event::default()
        }
    }

    fn remember(&self, key: Key, seen: Seen) {
        let mut map = self.seen();
        if map.len() >= MAX_REMEMBERED && !map.contains_key(&key) {
            let now = jiff::Timestamp::now();
            map.retain(|_, s| now.duration_since(s.last) < REMEMBER);
            if map.len() >= MAX_REMEMBERED
                && let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, s)| s.last)
                    .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(key, seen);
    }
}
