//! A plain HTTP/1.1 client for the served components' tests.

// Each test binary that includes this uses a part of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::time::Duration;

use network::NetNs;

/// One `GET path` to port 8080 inside the namespace, with `Connection: close`: status,
/// headers and body. Only the connect runs on the namespace's thread (which also sends
/// the pods' outgoing requests); the rest on a thread of its own, so that requests may
/// wait at the same time.
pub async fn send(net: &NetNs, path: &str) -> (u16, String, String) {
    let mut s = net
        .run(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                match std::net::TcpStream::connect(("127.0.0.1", 8080)) {
                    Ok(s) => break s,
                    Err(e) if std::time::Instant::now() < deadline => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => panic!("connect: {e}"),
                }
            }
        })
        .await
        .expect("the namespace thread");
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        s.set_read_timeout(Some(Duration::from_secs(90)))
            .expect("timeout");
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: pod\r\nX-Probe: 1\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).expect("write");
        let mut raw = Vec::new();
        // A connection cut mid-answer still shows what came.
        let _ = s.read_to_end(&mut raw);
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let status = raw
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let body = if header(head, "transfer-encoding") == Some("chunked") {
            dechunk(body)
        } else {
            body.to_owned()
        };
        (status, head.to_owned(), body)
    })
    .await
    .expect("the client thread")
}

/// The value of header `name` (lower case) in `head`.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A chunked body's data, up to the last chunk or what came before the connection
/// ended (trailers are left out).
fn dechunk(mut body: &str) -> String {
    let mut data = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
        else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        data.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").unwrap_or(&rest[size..]);
    }
    data
}

/// The container log `web.log` in `dir` once `ready` holds of it, up to 10 s: access
/// log records are written within a few milliseconds of the answer, not before it.
pub async fn log_when(dir: &tempfile::TempDir, ready: impl Fn(&str) -> bool) -> String {
    let path = dir.path().join("web.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        if ready(&log) || std::time::Instant::now() > deadline {
            return log;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
