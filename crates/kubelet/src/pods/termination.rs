//! `terminationMessagePath` and `terminationMessagePolicy`: the message a container leaves
//! for `status...terminated.message`.
//!
//! The module sees a fresh, writable directory at the parent of its
//! `terminationMessagePath` (default `/dev/termination-log`) holding nothing else; after
//! the run, what it wrote there becomes the message.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Container;

use crate::runtime::Mount;

/// The kubelet's limit on a termination message.
pub const MAX_MESSAGE: usize = 4096;
/// `FallbackToLogsOnError` takes at most this many trailing log lines (the kubelet's
/// `MaxContainerTerminationMessageLogLines`)...
pub const FALLBACK_LINES: u64 = 80;
/// ...and at most this many bytes of them, the last ones
/// (`MaxContainerTerminationMessageLogLength`), read from the end of the log.
pub const FALLBACK_BYTES: usize = 2048;

/// Where one run's termination message is written on the host.
#[derive(Debug, Clone)]
pub struct TerminationFile {
    host_file: PathBuf,
}

/// Prepares `run_dir` (created off the async threads) and the mount for a container's
/// termination message file.
///
/// # Errors
/// When the directory cannot be created or opened.
pub async fn prepare(
    spec: &Container,
    run_dir: &Path,
) -> std::io::Result<(Mount, TerminationFile)> {
    let path = spec
        .termination_message_path
        .as_deref()
        .unwrap_or("/dev/termination-log");
    let (parent, name) = match path.rsplit_once('/') {
        Some(("", name)) => ("/", name),
        Some((parent, name)) => (parent, name),
        None => ("/", path),
    };
    let (dir, guest) = (run_dir.to_owned(), parent.to_owned());
    let mount = crate::blocking::run(move || {
        std::fs::create_dir_all(&dir)?;
        Mount::open(&dir, guest, false)
    })
    .await??;
    Ok((
        mount,
        TerminationFile {
            host_file: run_dir.join(name),
        },
    ))
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// What the module wrote to its termination file, at most [`MAX_MESSAGE`] bytes. The
/// file lives in a directory the module can write, so it may have been replaced by a
/// symlink to any file of the node: a symlink, or anything but a regular file, is read
/// as empty.
fn read_written(path: &Path) -> Vec<u8> {
    use rustix::fs::{FileType, Mode, OFlags};
    use std::io::Read as _;
    let Ok(fd) = rustix::fs::openat(
        rustix::fs::CWD,
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return Vec::new();
    };
    let regular = rustix::fs::fstat(&fd)
        .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::RegularFile);
    if !regular {
        return Vec::new();
    }
    let mut out = Vec::new();
    let limit = u64::try_from(MAX_MESSAGE).unwrap_or(u64::MAX);
    let _ = std::fs::File::from(fd).take(limit).read_to_end(&mut out);
    out
}

/// The message for a run that ended with `exit_code`: the file's content; else, for
/// `FallbackToLogsOnError` and a failure, the tail of the log; else `runtime_message`
/// (a trap's description).
pub async fn message(
    spec: &Container,
    file: &TerminationFile,
    log: &Path,
    exit_code: i32,
    runtime_message: Option<String>,
) -> Option<String> {
    let path = file.host_file.clone();
    let written = tokio::task::spawn_blocking(move || read_written(&path))
        .await
        .unwrap_or_default();
    if !written.is_empty() {
        return Some(truncate(
            String::from_utf8_lossy(&written).into_owned(),
            MAX_MESSAGE,
        ));
    }
    let fallback = spec.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
    if fallback && exit_code != 0 {
        let log = log.to_owned();
        let tail = tokio::task::spawn_blocking(move || {
            crate::logs::tail_text(&log, FALLBACK_LINES, FALLBACK_BYTES)
        })
        .await
        .unwrap_or_default();
        if !tail.is_empty() {
            return Some(tail);
        }
    }
    runtime_message.map(|m| truncate(m, MAX_MESSAGE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(json: serde_json::Value) -> Container {
        serde_json::from_value(json).expect("container")
    }

    #[tokio::test]
    async fn file_then_logs_then_runtime() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("0.log");
        std::fs::write(&log, "2026-01-01T00:00:00Z stderr F boom\n").expect("log");
        let spec = container(
            serde_json::json!({"name": "a", "terminationMessagePolicy": "FallbackToLogsOnError"}),
        );
        let (mount, file) = prepare(&spec, &dir.path().join("t"))
            .await
            .expect("prepare");
        assert_eq!(mount.container_path, "/dev");
        assert_eq!(
            message(&spec, &file, &log, 1, None).await.as_deref(),
            Some("boom\n")
        );
        assert_eq!(
            message(&spec, &file, &log, 0, Some("x".into()))
                .await
                .as_deref(),
            Some("x")
        );
        std::fs::write(dir.path().join("t/termination-log"), "bye").expect("write");
        assert_eq!(
            message(&spec, &file, &log, 1, None).await.as_deref(),
            Some("bye")
        );
        // A module that replaces its termination file with a link to a node file gets
        // nothing of that file into its status.
        let secret = dir.path().join("node-secret");
        std::fs::write(&secret, "do not show").expect("write");
        std::fs::remove_file(dir.path().join("t/termination-log")).expect("remove");
        std::os::unix::fs::symlink(&secret, dir.path().join("t/termination-log")).expect("symlink");
        assert_eq!(message(&spec, &file, &log, 0, None).await, None);
        // A log of megabytes: the message is the end of its last 80 lines, at most 2 KiB.
        let mut big = String::new();
        for n in 0..40_000 {
            big.push_str(&format!(
                "2026-01-01T00:00:00Z stderr F line {n:05} of a long log\n"
            ));
        }
        std::fs::write(&log, &big).expect("log");
        let msg = message(&spec, &file, &log, 1, None).await.expect("message");
        assert!(msg.len() <= FALLBACK_BYTES, "{}", msg.len());
        assert!(msg.ends_with("line 39999 of a long log\n"), "{msg}");
        assert!(!msg.contains("line 39919 "), "more than 80 lines: {msg}");
        std::fs::write(
            &log,
            "2026-01-01T00:00:00Z stderr F a\n2026-01-01T00:00:00Z stderr F b\n",
        )
        .expect("log");
        assert_eq!(
            message(&spec, &file, &log, 1, None).await.as_deref(),
            Some("a\nb\n")
        );
        let custom = container(serde_json::json!({"name": "a", "terminationMessagePath": "/msg"}));
        let (mount, _) = prepare(&custom, &dir.path().join("u"))
            .await
            .expect("prepare");
        assert_eq!(mount.container_path, "/");
    }
}
