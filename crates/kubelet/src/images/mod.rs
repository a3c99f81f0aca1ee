//! Image garbage collection, as the kubelet's image GC: when the image filesystem is
//! fuller than the high threshold, remove images no pod of this node uses, least recently
//! used first, until it is below the low threshold. Images younger than the minimum age
//! are kept.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use tokio_util::sync::CancellationToken;

use crate::events::{EventType, Recorder};
mod index;

use crate::runtime::{ImageFsUsage, Runtime};
pub use index::{ImageEntry, ImageIndex, MAX_NAMES_PER_IMAGE, MAX_STATUS_IMAGES};

/// The image GC's settings (`imageGCHighThresholdPercent` and friends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcPolicy {
    /// Usage (percent of capacity) above which images are removed.
    pub high_percent: u8,
    /// Usage to bring it down to.
    pub low_percent: u8,
    /// Images unused for less than this are kept.
    pub minimum_age: Duration,
    /// How often usage is checked.
    pub period: Duration,
}

impl Default for GcPolicy {
    fn default() -> Self {
        Self {
            high_percent: 85,
            low_percent: 80,
            minimum_age: Duration::from_secs(120),
            period: Duration::from_secs(300),
        }
    }
}

/// An image the GC may remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The runtime's handle of its content.
    pub handle: String,
    /// Bytes it frees.
    pub size: u64,
    /// When a container last used it.
    pub last_used: Instant,
}

/// What one GC pass decides.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Bytes to free to get below the low threshold (0: nothing to do).
    pub to_free: u64,
    /// Handles to remove, least recently used first.
    pub remove: Vec<String>,
    /// Bytes those removals free.
    pub freed: u64,
}

/// Which images to remove, given the usage, the images not in use and the time now.
#[must_use]
pub fn plan(
    usage: ImageFsUsage,
    policy: &GcPolicy,
    mut candidates: Vec<Candidate>,
    now: Instant,
) -> Plan {
    let capacity = u128::from(usage.capacity.max(1));
    let used = u128::from(usage.used);
    if used * 100 < capacity * u128::from(policy.high_percent) {
        return Plan::default();
    }
    let goal = capacity * u128::from(policy.low_percent) / 100;
    let to_free = u64::try_from(used.saturating_sub(goal)).unwrap_or(u64::MAX);
    candidates.retain(|c| now.saturating_duration_since(c.last_used) >= policy.minimum_age);
    candidates.sort_by_key(|c| c.last_used);
    let mut out = Plan {
        to_free,
        ..Plan::default()
    };
    for c in candidates {
        if out.freed >= to_free {
            break;
        }
        out.freed += c.size;
        out.remove.push(c.handle);
    }
    out
}

/// One GC pass: removes what [`plan`] says and forgets it in `registry`. Returns the plan.
pub async fn collect(runtime: &dyn Runtime, images: &ImageIndex, policy: &GcPolicy) -> Plan {
    let usage = runtime.image_fs_usage().await;
    let in_use: HashSet<String> = images.in_use();
    // One candidate per content handle, last used when any of its names was.
    let mut candidates: Vec<Candidate> = Vec::new();
    for entry in images.entries() {
        if in_use.contains(&entry.handle) {
            continue;
        }
        match candidates.iter_mut().find(|c| c.handle == entry.handle) {
            Some(c) => c.last_used = c.last_used.max(entry.last_used),
            None => candidates.push(Candidate {
                handle: entry.handle,
                size: entry.size,
                last_used: entry.last_used,
            }),
        }
    }
    let plan = plan(usage, policy, candidates, Instant::now());
    for handle in &plan.remove {
        match runtime.remove_image(handle).await {
            Ok(bytes) => {
                images.remove(handle);
                tracing::info!(image = %handle, bytes, "image garbage-collected");
            }
            Err(e) => tracing::warn!(image = %handle, error = %e, "cannot remove image"),
        }
    }
    plan
}

/// Runs [`collect`] every `policy.period` until `shutdown`; records the kubelet's
/// `ImageGCFailed` event on the node when not enough could be freed.
pub async fn run(
    runtime: Arc<dyn Runtime>,
    images: ImageIndex,
    policy: GcPolicy,
    recorder: Arc<Recorder>,
    node: ObjectReference,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(policy.period) => {}
        }
        let plan = collect(runtime.as_ref(), &images, &policy).await;
        if plan.freed < plan.to_free {
            let note = format!(
                "Failed to garbage collect required amount of images. Attempted to free {} bytes, but only found {} bytes eligible to free.",
                plan.to_free, plan.freed
            );
            recorder
                .record(&node, EventType::Warning, "ImageGCFailed", &note)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(handle: &str, size: u64, used_secs_ago: u64, now: Instant) -> Candidate {
        Candidate {
            handle: handle.to_owned(),
            size,
            last_used: now - Duration::from_secs(used_secs_ago),
        }
    }

    #[test]
    fn below_the_high_threshold_nothing_goes() {
        let now = Instant::now();
        let usage = ImageFsUsage {
            capacity: 1000,
            used: 849,
        };
        let p = plan(
            usage,
            &GcPolicy::default(),
            vec![candidate("a", 500, 999, now)],
            now,
        );
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn least_recently_used_old_enough_images_go_until_below_the_low_threshold() {
        let now = Instant::now();
        let usage = ImageFsUsage {
            capacity: 1000,
            used: 900,
        };
        let images = vec![
            candidate("newest", 100, 130, now),
            candidate("oldest", 40, 900, now),
            candidate("too-young", 500, 10, now),
            candidate("middle", 40, 600, now),
        ];
        let p = plan(usage, &GcPolicy::default(), images, now);
        // 900 - 800 = 100 bytes to free: 40 + 40 is not enough, so "newest" goes too.
        assert_eq!(p.to_free, 100);
        assert_eq!(p.remove, ["oldest", "middle", "newest"]);
        assert_eq!(p.freed, 180);
    }

    #[test]
    fn when_too_little_is_eligible_the_plan_says_so() {
        let now = Instant::now();
        let usage = ImageFsUsage {
            capacity: 1000,
            used: 1000,
        };
        let p = plan(
            usage,
            &GcPolicy::default(),
            vec![candidate("a", 50, 999, now)],
            now,
        );
        assert_eq!((p.to_free, p.freed), (200, 50));
    }
}
