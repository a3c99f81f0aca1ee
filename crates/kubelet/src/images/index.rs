//! What images the node holds and which of them its pods use: the image GC's view and
//! `node.status.images`. Pod workers record each image they pull or find present; the
//! GC forgets what it removes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ContainerImage;

/// An image the node holds, as the node agent tracks it.
#[derive(Debug, Clone)]
pub struct ImageEntry {
    /// References and the image ID.
    pub names: Vec<String>,
    /// Size in bytes.
    pub size: u64,
    /// The runtime's handle of its content.
    pub handle: String,
    /// When a container last used it (or when it was found).
    pub last_used: std::time::Instant,
}

#[derive(Debug, Default)]
struct Inner {
    /// Image ID → what the node holds.
    images: BTreeMap<String, ImageEntry>,
    /// Pod UID → handles of the images its containers use.
    pod_images: HashMap<String, HashSet<String>>,
}

/// The node's images and their users; cheap to clone (one shared index).
#[derive(Debug, Clone, Default)]
pub struct ImageIndex(Arc<Mutex<Inner>>);

/// The kubelet's `nodeStatusMaxImages` default: images listed in `node.status.images`.
pub const MAX_STATUS_IMAGES: usize = 50;
/// The kubelet's `maxNamesPerImageInNodeStatus`: names listed for one image.
pub const MAX_NAMES_PER_IMAGE: usize = 5;

impl ImageIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that the node holds an image (pulled, or found on disk at start) and that
    /// it was used now.
    pub fn add(&self, reference: &str, image_id: &str, size: u64, handle: &str) {
        let mut inner = self.lock();
        let entry = inner
            .images
            .entry(image_id.to_owned())
            .or_insert_with(|| ImageEntry {
                names: Vec::new(),
                size,
                handle: handle.to_owned(),
                last_used: std::time::Instant::now(),
            });
        entry.size = size;
        entry.handle = handle.to_owned();
        entry.last_used = std::time::Instant::now();
        for name in [image_id, reference] {
            if !entry.names.iter().any(|n| n == name) {
                entry.names.push(name.to_owned());
            }
        }
    }

    /// Records that pod `uid` uses the image content `handle`, so the image GC keeps it.
    pub(crate) fn use_image(&self, uid: &str, handle: &str) {
        self.lock()
            .pod_images
            .entry(uid.to_owned())
            .or_default()
            .insert(handle.to_owned());
    }

    /// Forgets the images pod `uid` used (the pod is gone).
    pub(crate) fn forget_pod(&self, uid: &str) {
        self.lock().pod_images.remove(uid);
    }

    /// Handles of the images some pod of this node uses.
    #[must_use]
    pub fn in_use(&self) -> HashSet<String> {
        self.lock().pod_images.values().flatten().cloned().collect()
    }

    /// The images the node holds, with their use times.
    #[must_use]
    pub fn entries(&self) -> Vec<ImageEntry> {
        self.lock().images.values().cloned().collect()
    }

    /// Forgets every image with content `handle` (removed by the image GC).
    pub fn remove(&self, handle: &str) {
        self.lock().images.retain(|_, e| e.handle != handle);
    }

    /// Images this node holds, for `node.status.images`, largest first as the kubelet
    /// lists them, and bounded as the kubelet bounds them: the [`MAX_STATUS_IMAGES`]
    /// largest, each with at most [`MAX_NAMES_PER_IMAGE`] names, so that many images (or
    /// many tags of one) cannot make the node object grow without bound.
    #[must_use]
    pub fn status_images(&self) -> Vec<ContainerImage> {
        status_images(self.entries())
    }
}

fn status_images(mut entries: Vec<ImageEntry>) -> Vec<ContainerImage> {
    entries.sort_by_key(|e| std::cmp::Reverse(e.size));
    entries
        .into_iter()
        .take(MAX_STATUS_IMAGES)
        .map(|mut e| {
            e.names.truncate(MAX_NAMES_PER_IMAGE);
            ContainerImage {
                names: Some(e.names),
                size_bytes: i64::try_from(e.size).ok(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_status_lists_the_fifty_largest_images_with_five_names_each() {
        let now = std::time::Instant::now();
        let entries = (0..200u64)
            .map(|i| ImageEntry {
                names: (0..20).map(|n| format!("r/img{i}:t{n}")).collect(),
                size: i,
                handle: format!("h{i}"),
                last_used: now,
            })
            .collect();
        let listed = status_images(entries);
        assert_eq!(listed.len(), MAX_STATUS_IMAGES);
        let sizes: Vec<i64> = listed.iter().filter_map(|i| i.size_bytes).collect();
        let expected: Vec<i64> = (150..200).rev().collect();
        assert_eq!(sizes, expected);
        assert!(
            listed
                .iter()
                .all(|i| i.names.as_ref().map(Vec::len) == Some(MAX_NAMES_PER_IMAGE))
        );
    }
}
