//! A container run's log files (`<n>.log` and its rotated `<n>.log.<stamp>` files) and
//! finding where the last lines start by reading backwards in bounded chunks.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Bytes read per backward step.
const CHUNK: usize = 64 * 1024;
/// Bytes of a record's start needed to read its tag (timestamp, stream, `P`/`F`).
const HEADER: usize = 128;

/// What identifies a file across renames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// The identity of an open file.
    ///
    /// # Errors
    /// When the file cannot be examined.
    pub fn of(file: &File) -> std::io::Result<Self> {
        let m = file.metadata()?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    fn at(path: &Path) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// The files of the log at `current`, oldest first: rotated files (`<name>.<suffix>`,
/// sorted by name as the kubelet sorts them; compressed and temporary ones skipped), then
/// `current` itself when it exists; each with its identity.
#[must_use]
pub fn log_files(current: &Path) -> Vec<(PathBuf, FileId)> {
    let mut out = Vec::new();
    if let (Some(dir), Some(name)) = (current.parent(), current.file_name()) {
        let prefix = format!("{}.", name.to_string_lossy());
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&prefix) && !n.ends_with(".gz") && !n.ends_with(".tmp"))
                .collect();
            names.sort();
            out.extend(
                names
                    .into_iter()
                    .map(|n| dir.join(n))
                    .filter_map(|p| FileId::at(&p).map(|id| (p, id))),
            );
        }
    }
    if let Some(id) = FileId::at(current) {
        out.push((current.to_owned(), id));
    }
    out
}

/// One log file, open.
#[derive(Debug)]
pub struct OpenLog {
    /// The file.
    pub file: File,
    /// Its identity.
    pub id: FileId,
}

/// Opens every file of the log at `current`, oldest first. The list is read again
/// after opening, so that a rotation in between cannot make a file be skipped.
///
/// # Errors
/// When a file cannot be opened or examined.
pub fn open_all(current: &Path) -> std::io::Result<Vec<OpenLog>> {
    let mut attempts = 0;
    loop {
        let listed = log_files(current);
        let mut open = Vec::with_capacity(listed.len());
        for (path, _) in &listed {
            match File::open(path) {
                Ok(file) => {
                    let id = FileId::of(&file)?;
                    open.push(OpenLog { file, id });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let again: Vec<FileId> = log_files(current).into_iter().map(|(_, id)| id).collect();
        let opened: Vec<FileId> = open.iter().map(|o| o.id).collect();
        attempts += 1;
        if again == opened || attempts >= 5 {
            return Ok(open);
        }
    }
}

/// A position in a sequence of log files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Index in the list of files.
    pub file: usize,
    /// Byte offset in that file.
    pub offset: u64,
}

/// Up to `len` bytes of `file` at `offset` (fewer at its end).
///
/// # Errors
/// When the read fails.
pub fn read_at(file: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    let mut got = 0;
    while got < len {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// Reads at offsets, counting the bytes read.
struct Counted<'a> {
    file: &'a File,
    read: &'a mut u64,
}

impl Counted<'_> {
    fn read_at(&mut self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let buf = read_at(self.file, offset, len)?;
        *self.read += buf.len() as u64;
        Ok(buf)
    }
}

/// A record's tag and the bytes its content renders to, from its first bytes; `None`
/// for a line that is not a record.
fn classify(head: &[u8], record_len: u64) -> Option<(bool, u64)> {
    let mut spaces = head
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b' ')
        .map(|(i, _)| i);
    let (_, second, third) = (spaces.next()?, spaces.next()?, spaces.next());
    let tag = &head[second + 1..third.unwrap_or(head.len()).min(head.len())];
    let partial = tag.strip_suffix(b"\n").unwrap_or(tag) == b"P";
    let content_start = third.map_or(record_len, |t| t as u64 + 1);
    // record_len counts the newline; a full record's content renders with one.
    let content = record_len.saturating_sub(content_start + 1);
    Some((partial, content + u64::from(!partial)))
}

/// Where reading must start for the last `lines` lines of the logs `files` (oldest
/// first) and, when `max_bytes` is given, for at least the last `max_bytes` bytes of
/// rendered output (whichever is reached first, going backwards). A line is a run of
/// partial records and the full record ending it; bytes after the last newline are not
/// counted. Reads only what lies after the returned position (plus a chunk); returns
/// the position and the bytes read.
///
/// Since `limitBytes` counts from the start of the output, only the fallback message
/// (the last bytes) passes `max_bytes`.
///
/// # Errors
/// When a file cannot be read.
pub fn tail_start(
    files: &[OpenLog],
    lines: u64,
    max_bytes: Option<u64>,
) -> std::io::Result<(Position, u64)> {
    let mut read = 0;
    let Some(last) = files.len().checked_sub(1) else {
        return Ok((Position { file: 0, offset: 0 }, 0));
    };
    // How many full records to pass: one more when the newest record ends a line.
    let mut needed: Option<u64> = None;
    let mut found = 0u64;
    let mut output = 0u64;
    for index in (0..=last).rev() {
        let file = &files[index].file;
        let mut reader = Counted {
            file,
            read: &mut read,
        };
        let len = file.metadata()?.len();
        // `record_end`: the end of the record being looked at (after its newline).
        let mut record_end: Option<u64> = None;
        let mut chunk_end = len;
        loop {
            let chunk_start = chunk_end.saturating_sub(CHUNK as u64);
            let want = usize::try_from(len.min(chunk_end + HEADER as u64) - chunk_start)
                .unwrap_or(CHUNK + HEADER);
            let buf = reader.read_at(chunk_start, want)?;
            let scan = usize::try_from(chunk_end - chunk_start).unwrap_or(0);
            let mut newlines: Vec<usize> = buf[..scan.min(buf.len())]
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i)
                .collect();
            if chunk_start == 0 {
                // The file's first record starts at 0, as if after a newline at -1.
                newlines.insert(0, usize::MAX);
            }
            for &nl in newlines.iter().rev() {
                let start = if nl == usize::MAX {
                    0
                } else {
                    chunk_start + nl as u64 + 1
                };
                let Some(end) = record_end else {
                    // The newest newline: everything after it is not a record yet.
                    record_end = Some(start);
                    if index == last && lines == 0 {
                        return Ok((
                            Position {
                                file: index,
                                offset: start,
                            },
                            read,
                        ));
                    }
                    continue;
                };
                if start >= end {
                    continue;
                }
                let head_from = usize::try_from(start - chunk_start).unwrap_or(0);
                let record_len = usize::try_from(end - start).unwrap_or(HEADER);
                let head_end = (head_from + HEADER.min(record_len)).min(buf.len());
                let head = &buf[head_from.min(head_end)..head_end];
                if let Some((partial, rendered)) = classify(head, end - start) {
                    let needed = *needed.get_or_insert(lines.saturating_add(u64::from(!partial)));
                    if !partial {
                        found += 1;
                        if found == needed {
                            return Ok((
                                Position {
                                    file: index,
                                    offset: end,
                                },
                                read,
                            ));
                        }
                    }
                    output += rendered;
                    if max_bytes.is_some_and(|m| output >= m) {
                        return Ok((
                            Position {
                                file: index,
                                offset: start,
                            },
                            read,
                        ));
                    }
                }
                record_end = Some(start);
            }
            if chunk_start == 0 {
                break;
            }
            chunk_end = chunk_start;
        }
    }
    Ok((Position { file: 0, offset: 0 }, read))
}
