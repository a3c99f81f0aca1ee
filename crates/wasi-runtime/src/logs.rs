//! Container log files in the CRI logging format, the format the kubelet reads.
//!
//! Each line of output becomes one record:
//! `<RFC 3339 timestamp with nanoseconds> <stdout|stderr> <F|P> <content>\n`, where `P`
//! marks a partial record (a line longer than [`MAX_RECORD`] bytes split in pieces) and
//! `F` the record that ends a line.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use chrono::{SecondsFormat, Utc};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use crate::{Error, Result};

/// Longest record written before a line is split into partial records (as the CRI does).
pub const MAX_RECORD: usize = 16 * 1024;

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

/// One container's log file, shared by its stdout and stderr.
#[derive(Debug, Clone)]
pub struct LogFile(Arc<Mutex<File>>);

impl LogFile {
    /// Opens (creating, appending) the log file at `path`.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be opened.
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| Error::Io {
                what: format!("opening log file {}", path.display()),
                source,
            })?;
        Ok(Self(Arc::new(Mutex::new(file))))
    }

    /// Appends one record. Errors are logged, never returned: a full disk must not kill
    /// the module (the kubelet behaves the same way).
    pub fn record(&self, stream: Stream, partial: bool, content: &[u8]) {
        let mut line = Vec::with_capacity(content.len() + 48);
        let now = Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true);
        line.extend_from_slice(now.as_bytes());
        line.push(b' ');
        line.extend_from_slice(stream.as_str().as_bytes());
        line.extend_from_slice(if partial { b" P " } else { b" F " });
        line.extend_from_slice(content);
        line.push(b'\n');
        let mut file = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = file.write_all(&line) {
            tracing::warn!(error = %e, "cannot write container log");
        }
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
    fn push(&mut self, buf: &[u8]) {
        self.pending.extend_from_slice(buf);
        let mut start = 0;
        loop {
            let rest = &self.pending[start..];
            match rest.iter().position(|&b| b == b'\n') {
                Some(nl) if nl <= MAX_RECORD => {
                    self.file.record(self.stream, false, &rest[..nl]);
                    start += nl + 1;
                }
                _ if rest.len() > MAX_RECORD => {
                    self.file.record(self.stream, true, &rest[..MAX_RECORD]);
                    start += MAX_RECORD;
                }
                _ => break,
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
mod tests {
    use super::*;

    fn records(path: &Path) -> Vec<(String, String, String)> {
        std::fs::read_to_string(path)
            .expect("log readable")
            .lines()
            .map(|l| {
                let mut parts = l.splitn(4, ' ');
                let ts = parts.next().expect("timestamp");
                assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
                let s = parts.next().expect("stream").to_owned();
                let tag = parts.next().expect("tag").to_owned();
                (s, tag, parts.next().unwrap_or("").to_owned())
            })
            .collect()
    }

    #[test]
    fn splits_lines_and_keeps_partial_until_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let log = LogFile::open(&path).expect("open");
        let mut w = LineWriter {
            file: log.clone(),
            stream: Stream::Stdout,
            pending: Vec::new(),
        };
        w.push(b"hello\nwor");
        w.push(b"ld\n\ntail");
        log.record(Stream::Stderr, false, b"err");
        drop(w);
        assert_eq!(
            records(&path),
            vec![
                ("stdout".into(), "F".into(), "hello".into()),
                ("stdout".into(), "F".into(), "world".into()),
                ("stdout".into(), "F".into(), String::new()),
                ("stderr".into(), "F".into(), "err".into()),
                ("stdout".into(), "F".into(), "tail".into()),
            ]
        );
    }

    #[test]
    fn long_lines_become_partial_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let log = LogFile::open(&path).expect("open");
        let mut w = log.stream(Stream::Stderr);
        let mut line = vec![b'x'; MAX_RECORD + 10];
        line.push(b'\n');
        let mut writer = Pin::from(w.async_stream());
        let waker = futures_noop();
        let mut cx = Context::from_waker(&waker);
        let n = writer.as_mut().poll_write(&mut cx, &line);
        assert!(matches!(n, Poll::Ready(Ok(len)) if len == line.len()));
        drop(writer);
        w = log.stream(Stream::Stdout);
        drop(w);
        let got = records(&path);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].1.as_str(), got[0].2.len()), ("P", MAX_RECORD));
        assert_eq!((got[1].1.as_str(), got[1].2.len()), ("F", 10));
    }

    fn futures_noop() -> std::task::Waker {
        std::task::Waker::noop().clone()
    }
}
