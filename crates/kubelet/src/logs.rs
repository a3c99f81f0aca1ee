//! Reading container logs written in the CRI logging format, for `kubectl logs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

/// How often a `follow` looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// The `kubectl logs` options the kubelet API accepts.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogOptions {
    /// Keep streaming while the container runs.
    #[serde(default)]
    pub follow: bool,
    /// Only the last N lines.
    pub tail_lines: Option<i64>,
    /// Prefix each line with its RFC 3339 timestamp.
    #[serde(default)]
    pub timestamps: bool,
    /// The previous run's log instead of the current one.
    #[serde(default)]
    pub previous: bool,
    /// Stop after this many bytes.
    pub limit_bytes: Option<i64>,
    /// Only lines newer than this many seconds.
    pub since_seconds: Option<i64>,
}

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

/// Renders complete records of `data` (ignoring a trailing incomplete line) as the
/// kubelet returns them; returns the rendered bytes and how many input bytes were used.
fn render(data: &[u8], opts: &LogOptions, since: Option<jiff::Timestamp>) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut used = 0;
    let mut line_start = true;
    while let Some(nl) = data[used..].iter().position(|&b| b == b'\n') {
        let line = &data[used..used + nl];
        used += nl + 1;
        let Some(r) = parse(line) else { continue };
        let too_old = since.is_some_and(|since| {
            r.timestamp
                .parse::<jiff::Timestamp>()
                .is_ok_and(|t| t < since)
        });
        if too_old {
            continue;
        }
        if opts.timestamps && line_start {
            out.extend_from_slice(r.timestamp.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(r.content);
        if !r.partial {
            out.push(b'\n');
        }
        line_start = !r.partial;
    }
    (out, used)
}

/// Keeps the last `n` lines of rendered output.
fn tail(rendered: &[u8], n: i64) -> &[u8] {
    let n = usize::try_from(n.max(0)).unwrap_or(usize::MAX);
    if n == 0 {
        return &[];
    }
    let body = rendered.strip_suffix(b"\n").unwrap_or(rendered);
    let mut count = 0;
    for (i, &b) in body.iter().enumerate().rev() {
        if b == b'\n' {
            count += 1;
            if count == n {
                return &rendered[i + 1..];
            }
        }
    }
    rendered
}

/// The last `lines` lines of a CRI log's content, as text.
#[must_use]
pub fn tail_text(data: &[u8], lines: i64) -> String {
    let (rendered, _) = render(data, &LogOptions::default(), None);
    String::from_utf8_lossy(tail(&rendered, lines)).into_owned()
}

/// Streams the log at `path` into a channel of chunks. With `follow`, keeps reading
/// while `still_running()` says the container runs, then drains what is left.
pub fn stream(
    path: PathBuf,
    opts: LogOptions,
    still_running: impl Fn() -> bool + Send + Sync + 'static,
) -> mpsc::Receiver<std::io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        if let Err(e) = pump(&path, &opts, &still_running, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    rx
}

async fn pump(
    path: &Path,
    opts: &LogOptions,
    still_running: &(impl Fn() -> bool + Send + Sync),
    tx: &mpsc::Sender<std::io::Result<Bytes>>,
) -> std::io::Result<()> {
    let since = opts.since_seconds.and_then(|s| {
        jiff::Timestamp::now()
            .checked_sub(jiff::SignedDuration::from_secs(s))
            .ok()
    });
    let mut budget = opts
        .limit_bytes
        .and_then(|b| usize::try_from(b).ok())
        .unwrap_or(usize::MAX);
    let mut file = tokio::fs::File::open(path).await?;
    let mut data = Vec::new();
    file.read_to_end(&mut data).await?;
    let (rendered, used) = render(&data, opts, since);
    let mut offset = used as u64;
    let first = match opts.tail_lines {
        Some(n) => tail(&rendered, n),
        None => &rendered,
    };
    if !send(tx, first, &mut budget).await {
        return Ok(());
    }
    if !opts.follow {
        return Ok(());
    }
    loop {
        let running = still_running();
        file.seek(std::io::SeekFrom::Start(offset)).await?;
        let mut more = Vec::new();
        file.read_to_end(&mut more).await?;
        let (rendered, used) = render(&more, opts, since);
        offset += used as u64;
        if !send(tx, &rendered, &mut budget).await || !running {
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

/// Sends within the byte budget; false when done (budget spent or client gone).
async fn send(tx: &mpsc::Sender<std::io::Result<Bytes>>, data: &[u8], budget: &mut usize) -> bool {
    if data.is_empty() {
        return *budget > 0 && !tx.is_closed();
    }
    let n = data.len().min(*budget);
    *budget -= n;
    tx.send(Ok(Bytes::copy_from_slice(&data[..n])))
        .await
        .is_ok()
        && *budget > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &[u8] = b"2026-01-01T00:00:00.000000001Z stdout F one\n\
2026-01-01T00:00:01.000000000Z stderr P tw\n\
2026-01-01T00:00:01.500000000Z stderr F o\n\
2026-01-01T00:00:02.000000000Z stdout F three\n\
2026-01-01T00:00:03.000000000Z stdout F incomp";

    #[test]
    fn renders_records_and_joins_partials() {
        let (out, used) = render(LOG, &LogOptions::default(), None);
        assert_eq!(out, b"one\ntwo\nthree\n");
        assert_eq!(
            used,
            LOG.iter().rposition(|&b| b == b'\n').expect("newline") + 1
        );
    }

    #[test]
    fn timestamps_and_since() {
        let opts = LogOptions {
            timestamps: true,
            ..LogOptions::default()
        };
        let since = "2026-01-01T00:00:01Z".parse().ok();
        let (out, _) = render(LOG, &opts, since);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "2026-01-01T00:00:01.000000000Z two\n2026-01-01T00:00:02.000000000Z three\n"
        );
    }

    #[test]
    fn tails_lines() {
        assert_eq!(tail(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc\n", 5), b"a\nb\nc\n");
        assert_eq!(tail(b"a\nb\nc\n", 0), b"");
    }

    #[tokio::test]
    async fn follow_ends_when_the_container_stops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let incomplete = "2026-01-01T00:00:03.000000000Z stdout F incomp".len();
        std::fs::write(&path, &LOG[..LOG.len() - incomplete]).expect("write");
        let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = running.clone();
        let opts = LogOptions {
            follow: true,
            tail_lines: Some(1),
            ..LogOptions::default()
        };
        let mut rx = stream(path.clone(), opts, move || {
            flag.load(std::sync::atomic::Ordering::SeqCst)
        });
        let first = rx.recv().await.expect("chunk").expect("ok");
        assert_eq!(&first[..], b"three\n");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| {
                std::io::Write::write_all(&mut f, b"2026-01-01T00:00:04Z stdout F four\n")
            })
            .expect("append");
        running.store(false, std::sync::atomic::Ordering::SeqCst);
        let mut rest = Vec::new();
        while let Some(chunk) = rx.recv().await {
            rest.extend_from_slice(&chunk.expect("ok"));
        }
        assert_eq!(rest, b"four\n");
    }
}
