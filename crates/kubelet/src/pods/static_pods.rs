//! Static pods: the manifests of a directory (the kubelet's `staticPodPath`), read again
//! every `fileCheckFrequency`, each document a pod of this node. A pod from a file is
//! named `<name>-<node>`, lives in `default` unless it says otherwise, and gets its UID
//! from its file, its content and the node, so that a changed manifest is a new pod (the
//! old one is stopped) and an unchanged one keeps its UID across restarts of the agent;
//! a UID the manifest sets itself is kept, as the kubelet keeps it, if it can name a
//! directory (`uid.rs`).
//! Mirror pods, their copies in the API, are `mirror.rs`'s.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The annotation of a mirror pod: the hash (our UID) of the static pod it mirrors.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// The static pod's hash, on the pod and its mirror.
pub const HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
/// Where the pod came from: `file` for static pods.
pub const SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";
/// When the agent first read the pod.
const SEEN_ANNOTATION: &str = "kubernetes.io/config.seen";

/// A manifest file larger than this is refused (the directory is the operator's, but
/// the agent still never reads without a bound).
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Files of the directory read at most; the others are reported and left.
pub const MAX_FILES: usize = 1000;

/// Whether `pod` (from the API) is a mirror pod: it is never run, its static pod is.
pub fn is_mirror(pod: &Pod) -> bool {
    annotation(pod, MIRROR_ANNOTATION).is_some()
}

/// An annotation of `pod`.
pub fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// Every pod of the manifests in `dir` and what was wrong with the rest (one line per
/// refused file or document). Files are read in name order; hidden files (`.name`) and
/// directories are skipped, as the kubelet skips them; of two pods of the same name the
/// first is kept.
pub fn read_dir(dir: &Path, node: &str) -> (Vec<Pod>, Vec<String>) {
    let mut problems = Vec::new();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .collect(),
        Err(e) => {
            problems.push(format!("{}: {e}", dir.display()));
            return (Vec::new(), problems);
        }
    };
    files.sort();
    if files.len() > MAX_FILES {
        problems.push(format!(
            "{}: {} files, only the first {MAX_FILES} are read",
            dir.display(),
            files.len()
        ));
        files.truncate(MAX_FILES);
    }
    let mut pods: Vec<Pod> = Vec::new();
    let mut names = HashSet::new();
    for path in files {
        let text = match read_manifest(&path) {
            Ok(Some(text)) => text,
            Ok(None) => continue,
            Err(e) => {
                problems.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        match parse(&text, &path, node) {
            Ok(found) => {
                for pod in found {
                    let key = (pod.metadata.namespace.clone(), pod.metadata.name.clone());
                    if names.insert(key) {
                        pods.push(pod);
                    } else {
                        problems.push(format!(
                            "{}: a pod named {:?} came from an earlier manifest; ignored",
                            path.display(),
                            pod.metadata.name.as_deref().unwrap_or_default()
                        ));
                    }
                }
            }
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    (pods, problems)
}

/// A regular file's text (`None` for a directory, skipped as the kubelet skips it),
/// refused over [`MAX_MANIFEST_BYTES`] whatever it declares. Any other kind of file (a
/// FIFO, a socket, a device; a link is followed, as the kubelet follows it) is refused
/// without being opened, since opening a FIFO waits for a writer, forever; the file is
/// opened non-blocking and checked again once open, in case it was replaced in between.
fn read_manifest(path: &Path) -> Result<Option<String>, String> {
    use rustix::fs::{Mode, OFlags};
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.is_dir() {
        return Ok(None);
    }
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::empty())
        .map_err(|e| std::io::Error::from(e).to_string())?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(format!("larger than {MAX_MANIFEST_BYTES} bytes"));
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| "not UTF-8 text".to_owned())
}

/// Why a file that is not a regular one is skipped (the kubelet's "not a directory or
/// file"), naming its kind.
fn not_regular(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    let what = if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "of another kind"
    };
    format!("not a regular file ({what}); skipped")
}

/// The pods of one manifest: YAML or JSON, one or several documents (`---`), each a
/// `v1` `Pod`; empty documents are skipped. Any bad document refuses the whole file, so
/// that half of an edited file never runs.
///
/// # Errors
/// What is wrong, naming the document when the file has several.
pub fn parse(text: &str, path: &Path, node: &str) -> Result<Vec<Pod>, String> {
    let mut pods = Vec::new();
    for (index, document) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let value = serde_json::Value::deserialize(document)
            .map_err(|e| format!("document {}: {e}", index + 1))?;
        if value.is_null() {
            continue;
        }
        let pod =
            pod_of(value, path, index, node).map_err(|e| format!("document {}: {e}", index + 1))?;
        pods.push(pod);
    }
    Ok(pods)
}

fn pod_of(value: serde_json::Value, path: &Path, index: usize, node: &str) -> Result<Pod, String> {
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    let version = value
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or("");
    if kind != "Pod" || version != "v1" {
        return Err(format!(
            "expected apiVersion v1, kind Pod; found {version:?}, {kind:?}"
        ));
    }
    // The UID: the file, the document's place in it, its content and the node.
    let mut hasher = Sha256::new();
    hasher.update(format!(
        "host:{node}\nfile:{}\ndoc:{index}\n",
        path.display()
    ));
    hasher.update(serde_json::to_vec(&value).unwrap_or_default());
    let digest = hasher.finalize();
    let hash: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    let mut pod: Pod = serde_json::from_value(value).map_err(|e| e.to_string())?;
    validate(&pod)?;
    let name = format!(
        "{}-{}",
        pod.metadata.name.as_deref().unwrap_or_default(),
        node.to_lowercase()
    );
    if name.len() > 253 || !is_subdomain(&name) {
        return Err(format!("pod name {name:?} is not a valid DNS subdomain"));
    }
    let meta = &mut pod.metadata;
    meta.name = Some(name);
    meta.namespace = Some(meta.namespace.take().unwrap_or_else(|| "default".into()));
    // The manifest's own UID is kept, as the kubelet keeps it (`validate` took it); none,
    // or an empty one, is the hash.
    let own = meta.uid.take().filter(|uid| !uid.is_empty());
    meta.uid = Some(own.unwrap_or_else(|| hash.clone()));
    meta.resource_version = None;
    meta.generate_name = None;
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    annotations.remove(MIRROR_ANNOTATION);
    annotations.insert(HASH_ANNOTATION.into(), hash);
    annotations.insert(SOURCE_ANNOTATION.into(), "file".into());
    annotations.insert(SEEN_ANNOTATION.into(), jiff::Timestamp::now().to_string());
    pod.status = None;
    defaults(&mut pod, node);
    Ok(pod)
}

/// What the API server would refuse of a pod, and what the agent relies on.
fn validate(pod: &Pod) -> Result<(), String> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    if name.is_empty() {
        return Err("metadata.name is required".into());
    }
    // A UID names the pod's directory: one that could name another place is refused.
    if let Some(uid) = pod.metadata.uid.as_deref().filter(|uid| !uid.is_empty())
        && let Err(e) = super::uid::check(uid)
    {
        return Err(format!("metadata.uid {e}"));
    }
    if let Some(ns) = &pod.metadata.namespace
        && (ns.len() > 63 || !is_label(ns))
    {
        return Err(format!(
            "metadata.namespace {ns:?} is not a valid DNS label"
        ));
    }
    let spec = pod.spec.as_ref().ok_or("spec is required")?;
    if spec.containers.is_empty() {
        return Err("spec.containers must not be empty".into());
    }
    let mut names = HashSet::new();
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers);
    for c in all {
        if c.name.len() > 63 || !is_label(&c.name) {
            return Err(format!(
                "container name {:?} is not a valid DNS label",
                c.name
            ));
        }
        if !names.insert(c.name.as_str()) {
            return Err(format!("container name {:?} is used twice", c.name));
        }
        if c.image.as_deref().unwrap_or_default().trim().is_empty() {
            return Err(format!("container {:?} has no image", c.name));
        }
    }
    if let Some(node) = &spec.node_name
        && !node.is_empty()
    {
        return Err("spec.nodeName is set by the node; leave it out".into());
    }
    Ok(())
}

/// The defaults the API server gives a pod that the pod machinery reads.
fn defaults(pod: &mut Pod, node: &str) {
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    spec.node_name = Some(node.to_owned());
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.scheduler_name
        .get_or_insert_with(|| "default-scheduler".into());
    spec.enable_service_links.get_or_insert(true);
    let containers = spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut());
    for c in containers {
        let image = c.image.as_deref().unwrap_or_default();
        let latest = image
            .rsplit('/')
            .next()
            .is_none_or(|last| !last.contains(':') || last.ends_with(":latest"))
            && !image.contains('@');
        c.image_pull_policy
            .get_or_insert_with(|| if latest { "Always" } else { "IfNotPresent" }.into());
        c.termination_message_path
            .get_or_insert_with(|| "/dev/termination-log".into());
        c.termination_message_policy
            .get_or_insert_with(|| "File".into());
    }
}

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_subdomain(s: &str) -> bool {
    s.split('.').all(|part| part.len() <= 63 && is_label(part))
}

/// Reads `dir` now and then every `every` until `shutdown`, publishing the pods when
/// their set (by UID) changes; problems are logged when they change, not every round.
pub(crate) async fn watch(
    dir: PathBuf,
    every: Duration,
    node: String,
    pods: watch::Sender<Vec<Pod>>,
    shutdown: CancellationToken,
) {
    let mut reported: Vec<String> = Vec::new();
    loop {
        let (d, n) = (dir.clone(), node.clone());
        let read = tokio::task::spawn_blocking(move || read_dir(&d, &n)).await;
        if let Ok((found, problems)) = read {
            if problems != reported {
                for p in &problems {
                    tracing::warn!(problem = %p, "static pod manifest refused");
                }
                reported = problems;
            }
            pods.send_if_modified(|current| {
                let uids = |v: &[Pod]| -> Vec<Option<String>> {
                    v.iter().map(|p| p.metadata.uid.clone()).collect()
                };
                let changed = uids(current) != uids(&found);
                if changed {
                    *current = found;
                }
                changed
            });
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
#[path = "static_pods_tests.rs"]
mod tests;
