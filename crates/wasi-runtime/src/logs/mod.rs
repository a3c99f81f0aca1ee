//! Container log files in the CRI logging format, the format the kubelet reads, rotated
//! by size as the kubelet's container log manager rotates them.
//!
//! Each line of output becomes one record:
//! `<RFC 3339 timestamp with nanoseconds> <stdout|stderr> <F|P> <content>\n`, where `P`
//! marks a partial record (a line longer than [`MAX_RECORD`] bytes split in pieces) and
//! `F` the record that ends a line.
//!
//! When a record would take the file past [`LogRotation::max_size`], the file
//! (`<n>.log`) is renamed `<n>.log.<YYYYMMDD-hhmmss>` (the kubelet's names; more
//! rotations within the same second add `.000001`, `.000002`, ... so that names still
//! sort oldest first), a new `<n>.log` is started, and the oldest rotated files beyond
//! `max_files - 1` are removed. Rotated files stay uncompressed (the kubelet gzips the
//! older ones). No record is ever split between two files.
//!
//! A served pod's access log records ([`LogFile::record_soon`]) are held in memory for
//! up to [`HOLD`] (or [`HOLD_BYTES`]) and written together: one `write` per request was
//! a few per cent of a busy pod's CPU. Any other record writes what is held first, so
//! the file keeps the order in which records were made.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use chrono::{SecondsFormat, Utc};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use crate::{Error, Result};

/// Longest record written before a line is split into partial records (as the CRI does).
pub const MAX_RECORD: usize = 16 * 1024;

/// Longest an access log record is held before it is written.
pub const HOLD: std::time::Duration = std::time::Duration::from_millis(20);
/// Held records are written at once when they reach this size.
const HOLD_BYTES: usize = 32 * 1024;

/// When a container's log file is rotated and how many files are kept (the kubelet's
/// `containerLogMaxSize` and `containerLogMaxFiles`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRotation {
    /// Size in bytes past which the file is rotated.
    pub max_size: u64,
    /// Files kept per container run, the one being written included (at least 2).
    pub max_files: usize,
}

impl Default for LogRotation {
    /// The kubelet's defaults: 10 MiB and 5 files.
    fn default() -> Self {
        Self {
            max_size: 10 * 1024 * 1024,
            max_files: 5,
        }
    }
}

/// Which output stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// The file being written and its rotation state.
#[derive(Debug)]
struct Writer {
    path: PathBuf,
    file: File,
    /// Bytes in `file`.
    size: u64,
    rotation: LogRotation,
    /// The last rotation's time stamp: a clock stepping back never makes a newer file
    /// sort before an older one.
    last_stamp: String,
    /// Rotations before this one with the same time stamp (named `.000001`, ...).
    same_stamp: u32,
    /// Whether the last write failed (warned once, not per record).
    failing: bool,
    /// Records held to be written together (see [`LogFile::record_soon`]).
    held: Vec<u8>,
    /// A write of what is held is due (a task waits [`HOLD`] for it).
    held_due: bool,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl Writer {
    /// Writes `line`, after what is held, in one write.
    fn write(&mut self, line: &[u8]) {
        if self.held.is_empty() {
            self.write_out(line);
        } else {
            let mut held = std::mem::take(&mut self.held);
            held.extend_from_slice(line);
            self.write_out(&held);
        }
    }

    /// Holds `line`; true when a write of what is held is to be made due.
    fn hold(&mut self, line: &[u8]) -> bool {
        self.held.extend_from_slice(line);
        if self.held.len() >= HOLD_BYTES {
            self.write_held();
            return false;
        }
        !std::mem::replace(&mut self.held_due, true)
    }

    fn write_held(&mut self) {
        self.held_due = false;
        if !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            self.write_out(&held);
        }
    }

    fn write_out(&mut self, line: &[u8]) {
        let len = line.len() as u64;
        if self.size > 0 && self.size.saturating_add(len) > self.rotation.max_size {
            self.rotate();
        }
        match self.file.write_all(line) {
            Ok(()) => {
                self.size += len;
                if self.failing {
                    tracing::info!(path = %self.path.display(), "container log writable again");
                    self.failing = false;
                }
            }
            Err(e) => {
                if !self.failing {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot write container log");
                    self.failing = true;
                }
            }
        }
    }

    /// Renames the current file aside, starts a new one and removes the oldest rotated
    /// files beyond the limit. On failure the current file is kept (and written on).
    fn rotate(&mut self) {
        let now = Utc::now().format("%Y%m%d-%H%M%S").to_string();
        if now > self.last_stamp {
            self.last_stamp = now;
            self.same_stamp = 0;
        } else {
            self.same_stamp += 1;
        }
        let base = self.path.as_os_str().to_string_lossy().into_owned();
        let mut rotated;
        loop {
            rotated = PathBuf::from(match self.same_stamp {
                0 => format!("{base}.{}", self.last_stamp),
                n => format!("{base}.{}.{n:06}", self.last_stamp),
            });
            if !rotated.exists() || self.same_stamp >= 999_999 {
                break;
            }
            self.same_stamp += 1;
        }
        if let Err(e) = std::fs::rename(&self.path, &rotated) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot rotate container log");
            self.size = 0;
            return;
        }
        match open_append(&self.path) {
            Ok(file) => {
                self.file = file;
                self.size = 0;
            }
            Err(e) => {
                // Keep writing where we were rather than losing output; the next
                // record tries again.
                tracing::warn!(path = %self.path.display(), error = %e, "cannot reopen container log");
                if std::fs::rename(&rotated, &self.path).is_err() {
                    self.size = 0;
                }
            }
        }
        self.prune();
    }

    fn prune(&self) {
        let keep = self.rotation.max_files.saturating_sub(1);
        let mut rotated = rotated_files(&self.path);
        if rotated.len() > keep {
            let excess = rotated.len() - keep;
            for old in rotated.drain(..excess) {
                if let Err(e) = std::fs::remove_file(&old) {
                    tracing::warn!(path = %old.display(), error = %e, "cannot remove rotated container log");
                }
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.write_held();
    }
}

/// The rotated files of the log at `path` (`<name>.<stamp>...`), oldest first.
#[must_use]
pub fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix) && !n.ends_with(".gz") && !n.ends_with(".tmp"))
        .collect();
    names.sort();
    names.into_iter().map(|n| dir.join(n)).collect()
}

/// One container's log file, shared by its stdout and stderr.
#[derive(Debug, Clone)]
pub struct LogFile(Arc<Mutex<Writer>>);

impl LogFile {
    /// Opens (creating, appending) the log file at `path`, rotated by `rotation`.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be opened.
    pub fn open(path: &Path, rotation: LogRotation) -> Result<Self> {
        let io = |source| Error::Io {
            what: format!("opening log file {}", path.display()),
            source,
        };
        let file = open_append(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        Ok(Self(Arc::new(Mutex::new(Writer {
            path: path.to_owned(),
            file,
            size,
            rotation,
            last_stamp: String::new(),
            same_stamp: 0,
            failing: false,
            held: Vec::new(),
            held_due: false,
        }))))
    }

    /// Appends one record. Errors are logged, never returned: a full disk must not kill
    /// the module (the kubelet behaves the same way).
    pub fn record(&self, stream: Stream, partial: bool, content: &[u8]) {
        let line = Self::format(stream, partial, content);
        self.lock().write(&line);
    }

    /// Appends one whole-line record within [`HOLD`]: held with the records made
    /// meanwhile and written together with them (on a tokio runtime; without one, at
    /// once). Its time stamp is the time of this call.
    pub fn record_soon(&self, stream: Stream, content: &[u8]) {
        let line = Self::format(stream, false, content);
        let mut writer = self.lock();
        if !writer.hold(&line) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            writer.write_held();
            return;
        };
        // Weak: a file dropped meanwhile wrote what it held as it went.
        let file = Arc::downgrade(&self.0);
        runtime.spawn(async move {
            tokio::time::sleep(HOLD).await;
            if let Some(file) = file.upgrade() {
                LogFile(file).lock().write_held();
            }
        });
    }

    fn format(stream: Stream, partial: bool, content: &[u8]) -> Vec<u8> {
        let mut line = Vec::with_capacity(content.len() + 48);
        let now = Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true);
        line.extend_from_slice(now.as_bytes());
        line.push(b' ');
        line.extend_from_slice(stream.as_str().as_bytes());
        line.extend_from_slice(if partial { b" P " } else { b" F " });
        line.extend_from_slice(content);
        line.push(b'\n');
        line
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        // A panic while writing leaves nothing half-done that matters.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A WASI output stream that writes records of `stream` to this file.
    #[must_use]
    pub fn stream(&self, stream: Stream) -> LogStream {
        LogStream {
            file: self.clone(),
            stream,
        }
    }
}

/// The WASI side of a [`LogFile`]: give it to the sandbox as stdout or stderr.
#[derive(Debug, Clone)]
pub struct LogStream {
    file: LogFile,
    stream: Stream,
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            file: self.file.clone(),
            stream: self.stream,
            pending: Vec::new(),
        })
    }
}

/// Splits written bytes into lines and writes each as a record.
struct LineWriter {
    file: LogFile,
    stream: Stream,
    pending: Vec<u8>,
}

impl LineWriter {
    /// Takes `buf` in pieces of at most [`MAX_RECORD`] bytes, so that however much a
    /// module writes at once, at most two records' worth is ever held here.
    fn push(&mut self, buf: &[u8]) {
        for piece in buf.chunks(MAX_RECORD) {
            self.pending.extend_from_slice(piece);
            self.write_records();
        }
    }

    fn write_records(&mut self) {
        let mut start = 0;
        loop {
            let rest = &self.pending[start..];
            let window = &rest[..rest.len().min(MAX_RECORD + 1)];
            match window.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    self.file.record(self.stream, false, &rest[..nl]);
                    start += nl + 1;
                }
                None if rest.len() > MAX_RECORD => {
                    self.file.record(self.stream, true, &rest[..MAX_RECORD]);
                    start += MAX_RECORD;
                }
                None => break,
            }
        }
        self.pending.drain(..start);
    }

    fn finish(&mut self) {
        if !self.pending.is_empty() {
            self.file.record(self.stream, false, &self.pending);
            self.pending.clear();
        }
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.finish();
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests;
