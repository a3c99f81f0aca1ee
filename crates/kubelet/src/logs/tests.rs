//! Tests of log reading: rendering, tails from the end, rotation, follow, the fallback.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

const LOG: &[u8] = b"2026-01-01T00:00:00.000000001Z stdout F one\n\
2026-01-01T00:00:01.000000000Z stderr P tw\n\
2026-01-01T00:00:01.500000000Z stderr F o\n\
2026-01-01T00:00:02.000000000Z stdout F three\n\
2026-01-01T00:00:03.000000000Z stdout F incomp";

fn render_all(data: &[u8], timestamps: bool, since: Option<jiff::Timestamp>) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let used = Renderer::new(timestamps, since).render(data, &mut out);
    (out, used)
}

fn record(n: usize) -> String {
    format!("2026-01-01T00:00:00.{n:09}Z stdout F line {n}\n")
}

fn append(path: &Path, text: &str) {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("append");
}

async fn collect(mut rx: mpsc::Receiver<std::io::Result<Bytes>>) -> String {
    let mut all = Vec::new();
    while let Some(chunk) = rx.recv().await {
        all.extend_from_slice(&chunk.expect("ok"));
    }
    String::from_utf8(all).expect("utf8")
}

fn lines(from: usize, to: usize) -> String {
    (from..to).map(|n| format!("line {n}\n")).collect()
}

#[test]
fn renders_records_and_joins_partials() {
    let (out, used) = render_all(LOG, false, None);
    assert_eq!(out, b"one\ntwo\nthree\n");
    assert_eq!(
        used,
        LOG.iter().rposition(|&b| b == b'\n').expect("newline") + 1
    );
}

#[test]
fn timestamps_and_since() {
    let since = "2026-01-01T00:00:01Z".parse().ok();
    let (out, _) = render_all(LOG, true, since);
    assert_eq!(
        String::from_utf8(out).expect("utf8"),
        "2026-01-01T00:00:01.000000000Z two\n2026-01-01T00:00:02.000000000Z three\n"
    );
}

#[test]
fn a_line_split_between_reads_gets_one_timestamp() {
    let mut r = Renderer::new(true, None);
    let mut out = Vec::new();
    r.render(b"2026-01-01T00:00:01Z stderr P tw\n", &mut out);
    r.render(b"2026-01-01T00:00:02Z stderr F o\n", &mut out);
    assert_eq!(out, b"2026-01-01T00:00:01Z two\n");
}

#[tokio::test]
async fn tail_of_a_large_log_reads_only_its_end_and_returns_exactly_the_last_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("0.log");
    let mut text = String::new();
    let mut n = 0;
    while text.len() < 8 * 1024 * 1024 {
        text.push_str(&record(n));
        n += 1;
    }
    std::fs::write(&path, &text).expect("write");
    let files = files::open_all(&path).expect("open");
    let (start, read) = files::tail_start(&files, 10, None).expect("tail");
    assert!(read <= 2 * 64 * 1024 + 256, "read {read} bytes");
    assert!(start.offset > 8 * 1024 * 1024 - 1024);
    let opts = LogOptions {
        tail_lines: Some(10),
        ..LogOptions::default()
    };
    let got = collect(stream(path.clone(), opts, || false)).await;
    assert_eq!(got, lines(n - 10, n));
    // And the fallback message: the last 2 KiB of the last 80 lines, read from the end.
    let (text, read) = tail_text_counted(&path, 80, 2048).expect("tail");
    assert!(read <= 3 * 64 * 1024, "read {read} bytes");
    assert!(text.len() <= 2048);
    assert!(text.ends_with(&lines(n - 3, n)), "{text}");
}

#[tokio::test]
async fn tails_cross_rotated_files_and_count_partial_runs_as_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("0.log");
    let old = dir.path().join("0.log.20260101-000000");
    let older = dir.path().join("0.log.20251231-235959");
    std::fs::write(&older, (0..3).map(record).collect::<String>()).expect("write");
    // A line whose partial records span the rotation.
    std::fs::write(
        &old,
        format!(
            "{}2026-01-01T00:00:00Z stdout P spl\n",
            (3..6).map(record).collect::<String>()
        ),
    )
    .expect("write");
    std::fs::write(
        &path,
        format!(
            "2026-01-01T00:00:01Z stdout F it\n{}",
            (6..8).map(record).collect::<String>()
        ),
    )
    .expect("write");
    // Neither compressed nor other runs' files are read.
    std::fs::write(dir.path().join("0.log.20250101-000000.gz"), "junk").expect("write");
    std::fs::write(dir.path().join("1.log"), record(99)).expect("write");
    let tail = |n| {
        let path = path.clone();
        async move {
            let opts = LogOptions {
                tail_lines: Some(n),
                ..LogOptions::default()
            };
            collect(stream(path, opts, || false)).await
        }
    };
    assert_eq!(tail(2).await, lines(6, 8));
    assert_eq!(tail(3).await, format!("split\n{}", lines(6, 8)));
    assert_eq!(
        tail(5).await,
        format!("{}split\n{}", lines(4, 6), lines(6, 8))
    );
    let all = format!("{}split\n{}", lines(0, 6), lines(6, 8));
    assert_eq!(tail(100).await, all);
    assert_eq!(tail(0).await, "");
    assert_eq!(
        collect(stream(path.clone(), LogOptions::default(), || false)).await,
        all
    );
    // A trailing partial run (no full record yet) is a line of its own.
    append(&path, "2026-01-01T00:00:02Z stdout P unfinished\n");
    assert_eq!(tail(1).await, "unfinished");
    assert_eq!(tail(2).await, "line 7\nunfinished");
}

#[tokio::test]
async fn limit_bytes_bounds_the_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("0.log");
    std::fs::write(&path, (0..1000).map(record).collect::<String>()).expect("write");
    let opts = LogOptions {
        limit_bytes: Some(10),
        ..LogOptions::default()
    };
    assert_eq!(collect(stream(path, opts, || false)).await, "line 0\nlin");
}

#[tokio::test]
async fn follow_ends_when_the_container_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("0.log");
    let incomplete = "2026-01-01T00:00:03.000000000Z stdout F incomp".len();
    std::fs::write(&path, &LOG[..LOG.len() - incomplete]).expect("write");
    let running = Arc::new(AtomicBool::new(true));
    let flag = running.clone();
    let opts = LogOptions {
        follow: true,
        tail_lines: Some(1),
        ..LogOptions::default()
    };
    let mut rx = stream(path.clone(), opts, move || flag.load(Ordering::SeqCst));
    let first = rx.recv().await.expect("chunk").expect("ok");
    assert_eq!(&first[..], b"three\n");
    append(&path, "2026-01-01T00:00:04Z stdout F four\n");
    running.store(false, Ordering::SeqCst);
    assert_eq!(collect(rx).await, "four\n");
}

#[tokio::test]
async fn follow_across_rotations_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("0.log");
    append(&path, &(0..50).map(record).collect::<String>());
    let running = Arc::new(AtomicBool::new(true));
    let flag = running.clone();
    let opts = LogOptions {
        follow: true,
        ..LogOptions::default()
    };
    let rx = stream(path.clone(), opts, move || flag.load(Ordering::SeqCst));
    let reader = tokio::spawn(collect(rx));
    // Whatever the interleaving with the reader: rotations between and inside bursts.
    let mut n = 50;
    for rotation in 0..6 {
        for _ in 0..3 {
            append(&path, &(n..n + 40).map(record).collect::<String>());
            n += 40;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let rotated = dir.path().join(format!("0.log.20260101-00000{rotation}"));
        std::fs::rename(&path, &rotated).expect("rotate");
        if rotation % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        append(&path, &record(n));
        n += 1;
    }
    running.store(false, Ordering::SeqCst);
    let got = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("ends")
        .expect("task");
    assert_eq!(got, lines(0, n));
}

#[tokio::test]
async fn follow_continues_when_an_old_rotated_file_is_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("0.log");
    append(&path, &(0..5).map(record).collect::<String>());
    let running = Arc::new(AtomicBool::new(true));
    let flag = running.clone();
    let opts = LogOptions {
        follow: true,
        ..LogOptions::default()
    };
    let mut rx = stream(path.clone(), opts, move || flag.load(Ordering::SeqCst));
    let first = rx.recv().await.expect("chunk").expect("ok");
    assert_eq!(&first[..], lines(0, 5).as_bytes());
    // Rotated twice and the file being read pruned before the reader looks again.
    let a = dir.path().join("0.log.20260101-000000");
    std::fs::rename(&path, &a).expect("rotate");
    append(&path, &record(5));
    std::fs::rename(&path, dir.path().join("0.log.20260101-000001")).expect("rotate");
    std::fs::remove_file(&a).expect("prune");
    append(&path, &record(6));
    running.store(false, Ordering::SeqCst);
    assert_eq!(collect(rx).await, lines(5, 7));
}

#[test]
fn only_the_current_and_previous_runs_keep_their_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in [
        "0.log",
        "0.log.20260101-000000",
        "1.log",
        "1.log.20260101-000000.000001",
        "2.log",
        "3.log",
        "1.termination",
        "x.log",
    ] {
        std::fs::write(dir.path().join(name), "x").expect("write");
    }
    assert_eq!(remove_old_runs(dir.path(), 2), 4);
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .collect();
    left.sort();
    assert_eq!(left, ["1.termination", "2.log", "3.log", "x.log"]);
}
