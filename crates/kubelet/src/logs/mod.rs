//! Reading container logs written in the CRI logging format, for `kubectl logs` and for
//! `FallbackToLogsOnError`: across rotated files, tails found by reading backwards in
//! bounded chunks, `follow` carried over rotations.

mod files;
mod index;
mod query;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use files::{FileId, OpenLog, Position};
pub use index::{ContainerLogs, LogIndex};
pub use query::{LogOptions, QueryError, Since};

/// How often a `follow` looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// Bytes read forward per step.
const CHUNK: usize = 64 * 1024;
/// Longest incomplete line kept while waiting for its newline (records are at most
/// 16 KiB plus their header; anything longer is not a record and is dropped).
const MAX_CARRY: usize = 4 * CHUNK;

/// One parsed record.
#[derive(Debug, PartialEq, Eq)]
struct Record<'a> {
    timestamp: &'a str,
    partial: bool,
    content: &'a [u8],
}

fn parse(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let timestamp = std::str::from_utf8(parts.next()?).ok()?;
    let _stream = parts.next()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or_default();
    Some(Record {
        timestamp,
        partial: tag == b"P",
        content,
    })
}

/// Renders records as the kubelet returns them, keeping line state between chunks.
#[derive(Debug)]
struct Renderer {
    timestamps: bool,
    since: Option<jiff::Timestamp>,
    line_start: bool,
}

impl Renderer {
    fn new(timestamps: bool, since: Option<jiff::Timestamp>) -> Self {
        Self {
            timestamps,
            since,
            line_start: true,
        }
    }

    /// Renders the complete records of `data` (a trailing incomplete line is left)
    /// into `out`; returns how many input bytes were used.
    fn render(&mut self, data: &[u8], out: &mut Vec<u8>) -> usize {
        let mut used = 0;
        while let Some(nl) = data[used..].iter().position(|&b| b == b'\n') {
            let line = &data[used..used + nl];
            used += nl + 1;
            let Some(r) = parse(line) else { continue };
            let too_old = self.since.is_some_and(|since| {
                r.timestamp
                    .parse::<jiff::Timestamp>()
                    .is_ok_and(|t| t < since)
            });
            if too_old {
                continue;
            }
            if self.timestamps && self.line_start {
                out.extend_from_slice(r.timestamp.as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(r.content);
            if !r.partial {
                out.push(b'\n');
            }
            self.line_start = !r.partial;
        }
        used
    }
}

/// Reads a log forward from a position, through rotated files into the current one,
/// and on into the files that replace it when it is rotated while being read.
#[derive(Debug)]
struct Reader {
    current: PathBuf,
    file: Option<OpenLog>,
    offset: u64,
    /// The open file was found rotated away: what is left in it is its last output.
    draining: bool,
    /// Files after the open one, from the first listing (before any follow).
    queued: std::collections::VecDeque<OpenLog>,
}

/// What a read step gave.
#[derive(Debug)]
enum Step {
    /// Bytes; `fresh` when they start a new file (drop any incomplete line).
    Data { bytes: Vec<u8>, fresh: bool },
    /// The end of the current file, for now.
    End,
}

impl Reader {
    /// Starts at `start` in `files` (as [`files::open_all`] gave them).
    fn new(current: PathBuf, files: Vec<OpenLog>, start: Position) -> Self {
        let mut queued: std::collections::VecDeque<OpenLog> = files.into_iter().collect();
        queued.drain(..start.file.min(queued.len()));
        let file = queued.pop_front();
        Self {
            current,
            file,
            offset: start.offset,
            draining: false,
            queued,
        }
    }

    fn step(&mut self) -> std::io::Result<Step> {
        let mut fresh = false;
        loop {
            let Some(open) = &self.file else {
                return Ok(Step::End);
            };
            let bytes = files::read_at(&open.file, self.offset, CHUNK)?;
            if !bytes.is_empty() {
                self.offset += bytes.len() as u64;
                return Ok(Step::Data { bytes, fresh });
            }
            if let Some(next) = self.queued.pop_front() {
                self.file = Some(next);
                self.offset = 0;
                fresh = true;
                continue;
            }
            let id = open.id;
            let still_current = std::fs::File::open(&self.current)
                .and_then(|f| FileId::of(&f))
                .is_ok_and(|c| c == id);
            if still_current {
                return Ok(Step::End);
            }
            if !self.draining {
                // Rotated after our last read: read once more to its end.
                self.draining = true;
                continue;
            }
            self.draining = false;
            match self.successor(id) {
                Some(next) => {
                    self.file = Some(next);
                    self.offset = 0;
                    fresh = true;
                }
                None => return Ok(Step::End),
            }
        }
    }

    /// The file written after the one with identity `id`: the next in name order, or the
    /// oldest left when `id` was removed (only older files are removed).
    fn successor(&self, id: FileId) -> Option<OpenLog> {
        for _ in 0..10 {
            let listed = files::log_files(&self.current);
            let after = listed
                .iter()
                .position(|(_, f)| *f == id)
                .map_or(0, |i| i + 1);
            let (path, want) = listed.get(after)?;
            let Ok(file) = std::fs::File::open(path) else {
                continue;
            };
            match FileId::of(&file) {
                Ok(got) if got == *want => return Some(OpenLog { file, id: got }),
                _ => {}
            }
        }
        None
    }
}

fn join_error(e: &tokio::task::JoinError) -> std::io::Error {
    std::io::Error::other(format!("log reader stopped: {e}"))
}

/// Reads `reader`'s next step off the async threads.
async fn step(mut reader: Reader) -> std::io::Result<(Reader, Step)> {
    let (reader, step) = tokio::task::spawn_blocking(move || {
        let r = reader.step();
        (reader, r)
    })
    .await
    .map_err(|e| join_error(&e))?;
    Ok((reader, step?))
}

/// Streams the log at `path` (with its rotated files) into a channel of chunks. With
/// `follow`, keeps reading while `still_running()` says the container runs, then
/// drains what is left.
pub fn stream(
    path: PathBuf,
    opts: LogOptions,
    still_running: impl Fn() -> bool + Send + Sync + 'static,
) -> mpsc::Receiver<std::io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        if let Err(e) = pump(path, &opts, &still_running, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    rx
}

async fn pump(
    path: PathBuf,
    opts: &LogOptions,
    still_running: &(impl Fn() -> bool + Send + Sync),
    tx: &mpsc::Sender<std::io::Result<Bytes>>,
) -> std::io::Result<()> {
    let since = opts.since_timestamp(jiff::Timestamp::now());
    let mut budget = opts.limit_bytes.unwrap_or(u64::MAX);
    let tail = opts.tail_lines;
    let mut reader = tokio::task::spawn_blocking(move || -> std::io::Result<Reader> {
        let files = files::open_all(&path)?;
        let start = match tail {
            Some(n) => files::tail_start(&files, n, None)?.0,
            None => Position { file: 0, offset: 0 },
        };
        Ok(Reader::new(path, files, start))
    })
    .await
    .map_err(|e| join_error(&e))??;
    let mut renderer = Renderer::new(opts.timestamps, since);
    let mut carry = Vec::new();
    loop {
        let running = opts.follow && still_running();
        loop {
            let (r, got) = step(reader).await?;
            reader = r;
            let Step::Data { bytes, fresh } = got else {
                break;
            };
            if fresh {
                carry.clear();
            }
            carry.extend_from_slice(&bytes);
            let mut out = Vec::new();
            let used = renderer.render(&carry, &mut out);
            carry.drain(..used);
            if carry.len() > MAX_CARRY {
                carry.clear();
            }
            if !send(tx, &out, &mut budget).await {
                return Ok(());
            }
        }
        if !running || tx.is_closed() {
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

/// Sends within the byte budget; false when done (budget spent or client gone).
async fn send(tx: &mpsc::Sender<std::io::Result<Bytes>>, data: &[u8], budget: &mut u64) -> bool {
    if data.is_empty() {
        return *budget > 0 && !tx.is_closed();
    }
    let n = usize::try_from(*budget).map_or(data.len(), |b| data.len().min(b));
    *budget -= n as u64;
    tx.send(Ok(Bytes::copy_from_slice(&data[..n])))
        .await
        .is_ok()
        && *budget > 0
}

/// The last `lines` lines of the log at `path` (and its rotated files), at most the last
/// `max_bytes` bytes of them, as text: `FallbackToLogsOnError`'s message. Reads about
/// `max_bytes` plus a chunk, whatever the size of the log. Empty when there is no log.
#[must_use]
pub fn tail_text(path: &Path, lines: u64, max_bytes: usize) -> String {
    tail_text_counted(path, lines, max_bytes).map_or_else(|_| String::new(), |(text, _)| text)
}

/// [`tail_text`] and the bytes it read.
fn tail_text_counted(path: &Path, lines: u64, max_bytes: usize) -> std::io::Result<(String, u64)> {
    let files = files::open_all(path)?;
    let (start, mut read) = files::tail_start(&files, lines, Some(max_bytes as u64))?;
    let mut renderer = Renderer::new(false, None);
    let mut out = Vec::new();
    let mut carry = Vec::new();
    for (i, log) in files.iter().enumerate().skip(start.file) {
        let mut offset = if i == start.file { start.offset } else { 0 };
        carry.clear();
        loop {
            let bytes = files::read_at(&log.file, offset, CHUNK)?;
            if bytes.is_empty() {
                break;
            }
            offset += bytes.len() as u64;
            read += bytes.len() as u64;
            carry.extend_from_slice(&bytes);
            let used = renderer.render(&carry, &mut out);
            carry.drain(..used);
            if carry.len() > MAX_CARRY {
                carry.clear();
            }
            if out.len() > 2 * max_bytes {
                out.drain(..out.len() - max_bytes);
            }
        }
    }
    let mut from = out.len().saturating_sub(max_bytes);
    // Not in the middle of a character.
    while out.get(from).is_some_and(|b| b & 0xC0 == 0x80) {
        from += 1;
    }
    Ok((String::from_utf8_lossy(&out[from..]).into_owned(), read))
}

/// Removes the log files (and their rotated files) of the runs in `dir` before run
/// `keep_from`, as the kubelet's container garbage collection keeps only the last dead
/// container of each: with the current run and the previous one (`--previous`), a
/// crash-looping container holds at most twice its rotation bound. Returns how many
/// files were removed.
pub fn remove_old_runs(dir: &Path, keep_from: i32) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((run, rest)) = name.to_str().and_then(|n| n.split_once('.')) else {
            continue;
        };
        let is_log = rest == "log" || rest.starts_with("log.");
        let old = run.parse::<i32>().is_ok_and(|r| r < keep_from);
        let regular = entry.file_type().is_ok_and(|t| t.is_file());
        if is_log && old && regular && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests;
