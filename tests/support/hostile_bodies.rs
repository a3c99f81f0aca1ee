//! The hostile registry's attacks on what a client reads for its caller: the bearer
//! challenge and token server, endless answers that stop themselves after a bound, and
//! a loopback "internal service" that redirects lead to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Most bytes an endless answer sends before it stops itself, so that a client that reads
/// it whole (the bug these attacks show) grows by this much and survives.
pub const ENDLESS_BOUND: u64 = 256 << 20;

/// Longest an endless answer runs before it stops itself.
const ENDLESS_TIME_BOUND: Duration = Duration::from_secs(60);

/// What the internal service puts in every answer: it must never reach a message.
pub const INTERNAL_SECRET: &str = "INTERNAL-SECRET of a loopback service";

/// Bytes of endless answers sent so far, by attack name.
pub(super) type Sent = Arc<Mutex<HashMap<&'static str, u64>>>;

/// The `WWW-Authenticate` challenge `/v2/` answers with: tokens from `/token` here.
pub(super) fn challenge(addr: &str) -> String {
    format!("Bearer realm=\"http://{addr}/token\",service=\"hostile\"")
}

/// The repository name in a token request's `scope=repository:hostile/<name>:pull`.
pub(super) fn token_scope_name(path: &str) -> Option<String> {
    let query = path.split_once('?')?.1;
    let scope = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("scope="))?;
    let scope = percent_decode(scope);
    let name = scope.strip_prefix("repository:hostile/")?;
    Some(name.split(':').next()?.to_owned())
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = || u8::from_str_radix(text.get(i + 1..i + 3)?, 16).ok();
        match (bytes[i], hex()) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Answers `status` with a chunked body: `prefix`, then zeros-as-`a`s without end, until
/// the client hangs up or [`ENDLESS_BOUND`] bytes or [`ENDLESS_TIME_BOUND`] have gone;
/// counts what it sent under `name` in `sent`.
pub(super) async fn bounded_endless(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    prefix: &[u8],
    (name, sent): (&'static str, &Sent),
) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let started = Instant::now();
    let filler = vec![b'a'; 64 << 10];
    let mut total: u64 = 0;
    let mut first = (!prefix.is_empty()).then_some(prefix);
    while total < ENDLESS_BOUND && started.elapsed() < ENDLESS_TIME_BOUND {
        let chunk = first.take().unwrap_or(&filler);
        let size = format!("{:x}\r\n", chunk.len());
        if stream.write_all(size.as_bytes()).await.is_err()
            || stream.write_all(chunk).await.is_err()
            || stream.write_all(b"\r\n").await.is_err()
        {
            return;
        }
        total += chunk.len() as u64;
        *sent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(name)
            .or_default() += chunk.len() as u64;
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let _ = stream.shutdown().await;
}

/// A `307 Temporary Redirect` to `location`.
pub(super) async fn redirect(stream: &mut TcpStream, location: &str) {
    let head = format!(
        "HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A loopback service a registry's redirect may point at: every request is answered
/// with the status its path names (`/401`, `/403`, `/500`; else 404) and a body holding
/// [`INTERNAL_SECRET`], and logged in `log` as `METHOD /path`, followed by ` with
/// credentials` when it carried an `Authorization` header. Stops with the returned task.
pub(super) async fn internal_service(
    log: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            while connections.try_join_next().is_some() {}
            let log = log.clone();
            connections.spawn(async move {
                let Some(head) = super::read_head(&mut stream).await else {
                    return;
                };
                let mut words = head.split_whitespace();
                let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                let credentials = head
                    .lines()
                    .any(|l| l.to_ascii_lowercase().starts_with("authorization:"));
                log.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(format!(
                        "{method} {path}{}",
                        if credentials { " with credentials" } else { "" }
                    ));
                let status = match path {
                    "/401" => "401 Unauthorized",
                    "/403" => "403 Forbidden",
                    "/500" => "500 Internal Server Error",
                    _ => "404 Not Found",
                };
                let body = format!(
                    "{{\"errors\":[{{\"code\":\"DENIED\",\"message\":\"{INTERNAL_SECRET}\"}}]}}"
                );
                super::respond(&mut stream, status, "application/json", body.as_bytes()).await;
            });
        }
    });
    Ok((addr, task))
}
