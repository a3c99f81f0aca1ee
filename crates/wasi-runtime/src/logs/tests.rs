//! Tests of the log writer: records, partial lines, rotation under a flood.

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
    let log = LogFile::open(&path, LogRotation::default()).expect("open");
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
    let log = LogFile::open(&path, LogRotation::default()).expect("open");
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

fn writer(log: &LogFile) -> LineWriter {
    LineWriter {
        file: log.clone(),
        stream: Stream::Stdout,
        pending: Vec::new(),
    }
}

#[test]
fn a_flood_rotates_and_disk_use_stays_within_max_size_times_max_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("0.log");
    let rotation = LogRotation {
        max_size: 64 * 1024,
        max_files: 3,
    };
    let log = LogFile::open(&path, rotation).expect("open");
    let mut w = writer(&log);
    // 8 MiB and more: numbered lines, written in odd-sized pieces, with long lines.
    let mut text = Vec::new();
    let mut n = 0u64;
    while text.len() < 8 * 1024 * 1024 {
        let filler = if n.is_multiple_of(97) {
            MAX_RECORD + 5
        } else {
            40
        };
        text.extend_from_slice(format!("line {n:08} {}\n", "x".repeat(filler)).as_bytes());
        n += 1;
    }
    for piece in text.chunks(7919) {
        w.push(piece);
    }
    drop(w);
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .collect();
    names.sort_by_key(|n| (n == "0.log", n.clone()));
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(names[2], "0.log");
    for rotated in &names[..2] {
        let stamp = rotated.strip_prefix("0.log.").expect("kubelet name");
        assert!(
            chrono::NaiveDateTime::parse_from_str(&stamp[..15], "%Y%m%d-%H%M%S").is_ok(),
            "{rotated}"
        );
    }
    let mut total = 0;
    let mut numbers = Vec::new();
    for name in &names {
        let file = dir.path().join(name);
        let size = std::fs::metadata(&file).expect("meta").len();
        assert!(size <= rotation.max_size, "{name}: {size}");
        total += size;
        for (_, _, content) in records(&file) {
            // Each line's first record (full, or the first partial one) starts so.
            if content.starts_with("line ") {
                numbers.push(content[5..13].parse::<u64>().expect("number"));
            }
        }
    }
    assert!(total <= rotation.max_size * 3, "{total}");
    // What is kept is the end of the output, in order, with nothing missing.
    assert_eq!(numbers.last(), Some(&(n - 1)));
    assert!(numbers.windows(2).all(|p| p[1] == p[0] + 1), "{numbers:?}");
    assert!(numbers.len() > 100);
}

#[test]
fn a_huge_write_without_newline_is_never_held_in_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("0.log");
    let log = LogFile::open(&path, LogRotation::default()).expect("open");
    let mut w = writer(&log);
    w.push(&vec![b'y'; 4 * 1024 * 1024 + 3]);
    assert!(
        w.pending.capacity() <= 4 * MAX_RECORD,
        "{}",
        w.pending.capacity()
    );
    assert_eq!(w.pending.len(), 3);
    drop(w);
    let got = records(&path);
    assert_eq!(got.len(), 4 * 1024 * 1024 / MAX_RECORD + 1);
    assert!(got[..got.len() - 1].iter().all(|r| r.1 == "P"));
}

#[test]
fn reopening_counts_what_the_file_already_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("0.log");
    std::fs::write(&path, vec![b'z'; 990]).expect("write");
    let rotation = LogRotation {
        max_size: 1000,
        max_files: 2,
    };
    let log = LogFile::open(&path, rotation).expect("open");
    log.record(Stream::Stdout, false, b"pushes it over");
    assert_eq!(rotated_files(&path).len(), 1);
    assert_eq!(records(&path).len(), 1);
    for _ in 0..100 {
        log.record(Stream::Stdout, false, &[b'a'; 300]);
    }
    // Many rotations within one second: names stay distinct and sorted.
    assert_eq!(rotated_files(&path).len(), 1);
}

fn futures_noop() -> std::task::Waker {
    std::task::Waker::noop().clone()
}

#[tokio::test(start_paused = true)]
async fn held_access_records_are_written_soon_and_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("0.log");
    let log = LogFile::open(&path, LogRotation::default()).expect("open");
    let rec = |s: &str, text: &str| (s.to_owned(), "F".to_owned(), text.to_owned());
    log.record_soon(Stream::Stdout, b"first");
    assert_eq!(records(&path), vec![], "held");
    // Another record writes what is held first, in one write with it.
    log.record(Stream::Stderr, false, b"second");
    assert_eq!(
        records(&path),
        vec![rec("stdout", "first"), rec("stderr", "second")]
    );
    // Alone, it is written once its time is up.
    log.record_soon(Stream::Stdout, b"third");
    tokio::time::sleep(HOLD * 2).await;
    assert_eq!(records(&path).last(), Some(&rec("stdout", "third")));
    // A file closed meanwhile writes it as it goes.
    log.record_soon(Stream::Stdout, b"fourth");
    drop(log);
    assert_eq!(records(&path).last(), Some(&rec("stdout", "fourth")));
    assert_eq!(records(&path).len(), 4);
}

#[test]
fn held_records_past_the_hold_size_are_written_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("0.log");
    let log = LogFile::open(&path, LogRotation::default()).expect("open");
    // No runtime: written at once.
    log.record_soon(Stream::Stdout, b"no runtime");
    assert_eq!(records(&path).len(), 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let line = [b'x'; 1000];
        for _ in 0..(HOLD_BYTES / 1000 + 1) {
            log.record_soon(Stream::Stdout, &line);
        }
    });
    // Written when the held bytes passed the size, the last one still held.
    let n = records(&path).len();
    assert!(n > HOLD_BYTES / 1050, "{n} records written");
}
