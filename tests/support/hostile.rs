//! A hostile OCI registry for tests: a small HTTP/1.1 server on loopback that speaks
//! just enough of the distribution API (`/v2/` with a bearer challenge, a token server,
//! manifests, blobs) to serve one malformed answer per repository `hostile/<attack>` (see
//! [`Attack`]), plus one well-formed image (`hostile/good`) so a test can show the server
//! itself works. Endless answers stop themselves after [`ENDLESS_BOUND`] bytes or 60 s,
//! so a client that reads them whole survives to fail its test.
//!
//! Shared by the `oci` crate's unit tests (included with `#[path]`) and the end-to-end
//! tests; it uses only `tokio`, `sha2` and `serde_json`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[path = "hostile_bodies.rs"]
mod bodies;
pub use bodies::{ENDLESS_BOUND, INTERNAL_SECRET};
use bodies::{Sent, bounded_endless, challenge, redirect, token_scope_name};

use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// The module `hostile/good` serves: the smallest valid wasm module.
pub const GOOD_WASM: &[u8] = b"\0asm\x01\0\0\0";

/// Size a manifest of [`Attack::HugeManifest`] has: over the distribution spec's 4 MiB.
pub const HUGE_MANIFEST_SIZE: usize = 5 << 20;

/// What the registry answers for `hostile/<name>:<any tag>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// A well-formed wasm image (the control).
    Good,
    /// A layer digest `sha256:<relative path>` that climbs out of the store to a sentinel.
    TraversalDigest,
    /// A layer digest `sha256:<absolute path>` of the sentinel.
    AbsoluteDigest,
    /// An image index whose wasm entry has a climbing digest.
    TraversalIndex,
    /// A layer declaring 2^62 bytes (its blob, if ever asked for, is endless).
    HugeDeclaredSize,
    /// A layer declaring 100 bytes whose blob is 64 KiB (and hashes to its digest).
    LargerThanDeclared,
    /// A layer declaring 1000 bytes whose blob never ends.
    EndlessBlob,
    /// A manifest response that sends one byte and then nothing.
    SlowLorisManifest,
    /// A blob response that sends its headers and one byte and then nothing.
    SlowLorisBlob,
    /// A manifest that arrives one byte every 100 ms, forever: never silent for long.
    TrickleManifest,
    /// A well-formed manifest of [`HUGE_MANIFEST_SIZE`] bytes.
    HugeManifest,
    /// A manifest that never ends, sent as fast as the connection takes it (chunked, no
    /// length): read whole, it would fill the node's memory.
    EndlessManifest,
    /// A layer of 8 bytes whose bytes do not hash to its digest (but have its size).
    WrongDigest,
    /// A token server whose `200 OK` answer never ends (`{"token":"aaaa...`).
    EndlessToken,
    /// A blob request answered `500` with an error body that never ends.
    EndlessBlobError,
    /// A token request redirected to a loopback service that answers `401` with
    /// [`INTERNAL_SECRET`].
    RedirectToken,
    /// A manifest request redirected to a loopback service that answers `403` with
    /// [`INTERNAL_SECRET`].
    RedirectManifest,
    /// A blob request redirected to a loopback service that answers `500` with
    /// [`INTERNAL_SECRET`].
    RedirectBlob,
}

impl Attack {
    /// Every malformed answer (not [`Attack::Good`]).
    pub const HOSTILE: [Self; 17] = [
        Self::TraversalDigest,
        Self::AbsoluteDigest,
        Self::TraversalIndex,
        Self::HugeDeclaredSize,
        Self::LargerThanDeclared,
        Self::EndlessBlob,
        Self::SlowLorisManifest,
        Self::SlowLorisBlob,
        Self::TrickleManifest,
        Self::HugeManifest,
        Self::EndlessManifest,
        Self::WrongDigest,
        Self::EndlessToken,
        Self::EndlessBlobError,
        Self::RedirectToken,
        Self::RedirectManifest,
        Self::RedirectBlob,
    ];

    /// Its repository name under `hostile/`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Good => "good",
            Self::TraversalDigest => "traversal-digest",
            Self::AbsoluteDigest => "absolute-digest",
            Self::TraversalIndex => "traversal-index",
            Self::HugeDeclaredSize => "huge-declared-size",
            Self::LargerThanDeclared => "larger-than-declared",
            Self::EndlessBlob => "endless-blob",
            Self::SlowLorisManifest => "slow-loris-manifest",
            Self::SlowLorisBlob => "slow-loris-blob",
            Self::TrickleManifest => "trickle-manifest",
            Self::HugeManifest => "huge-manifest",
            Self::EndlessManifest => "endless-manifest",
            Self::WrongDigest => "wrong-digest",
            Self::EndlessToken => "endless-token",
            Self::EndlessBlobError => "endless-blob-error",
            Self::RedirectToken => "redirect-token",
            Self::RedirectManifest => "redirect-manifest",
            Self::RedirectBlob => "redirect-blob",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        std::iter::once(Self::Good)
            .chain(Self::HOSTILE)
            .find(|a| a.name() == name)
    }
}

/// The running registry; stopped (with every connection) when dropped.
#[derive(Debug)]
pub struct HostileRegistry {
    /// `127.0.0.1:<port>`, to list in `--insecure-registries`.
    pub addr: String,
    requests: Arc<Mutex<Vec<String>>>,
    internal_requests: Arc<Mutex<Vec<String>>>,
    sent: Sent,
    server: tokio::task::JoinHandle<()>,
    internal: tokio::task::JoinHandle<()>,
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.server.abort();
        self.internal.abort();
    }
}

/// What the attacks point at: the traversal targets, this registry's own address (the
/// token realm) and the internal service's (redirects).
#[derive(Debug, Clone)]
struct Targets {
    relative: String,
    absolute: String,
    addr: String,
    internal: String,
}

impl HostileRegistry {
    /// Starts the registry on `127.0.0.1:0`. The traversal attacks name `relative` (as
    /// `sha256:<relative>`, e.g. `../../../sentinel` to climb from `blobs/sha256/` three
    /// levels) and `absolute` (as `sha256:<absolute path>`).
    ///
    /// # Errors
    /// When it cannot listen.
    pub async fn start(relative: &str, absolute: &Path) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let sent = Sent::default();
        let internal_requests = Arc::new(Mutex::new(Vec::new()));
        let (internal_addr, internal) = bodies::internal_service(internal_requests.clone()).await?;
        let targets = Targets {
            relative: relative.to_owned(),
            absolute: absolute.display().to_string(),
            addr: addr.to_string(),
            internal: internal_addr,
        };
        let (log, counts) = (requests.clone(), sent.clone());
        let server = tokio::spawn(async move {
            // Dropped with this task: every connection ends with the server.
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                connections.spawn(serve(stream, targets.clone(), log.clone(), counts.clone()));
            }
        });
        Ok(Self {
            addr: addr.to_string(),
            requests,
            internal_requests,
            sent,
            server,
            internal,
        })
    }

    /// Every request the internal service (behind the redirects) saw, as `METHOD /path`,
    /// followed by ` with credentials` when it carried an `Authorization` header.
    #[must_use]
    pub fn internal_requests(&self) -> Vec<String> {
        self.internal_requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Bytes the endless answers of `attack` have sent so far.
    #[must_use]
    pub fn sent(&self, attack: Attack) -> u64 {
        self.sent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(attack.name())
            .copied()
            .unwrap_or(0)
    }

    /// The image reference of `attack`: `<addr>/hostile/<name>:v1`.
    #[must_use]
    pub fn image(&self, attack: Attack) -> String {
        format!("{}/hostile/{}:v1", self.addr, attack.name())
    }

    /// Every request so far, as `METHOD /path`.
    #[must_use]
    pub fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn sha256(data: &[u8]) -> String {
    let mut hex = String::with_capacity(71);
    hex.push_str("sha256:");
    for b in sha2::Sha256::digest(data) {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// A blob of `len` bytes of `byte`.
fn filler(len: usize, byte: u8) -> Vec<u8> {
    vec![byte; len]
}

/// An image manifest with one `application/wasm` layer.
fn image_manifest(layer_digest: &str, layer_size: i64, padding: usize) -> Vec<u8> {
    let mut manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.wasm.config.v0+json",
            "digest": sha256(b"{}"),
            "size": 2
        },
        "layers": [{ "mediaType": "application/wasm", "digest": layer_digest, "size": layer_size }]
    });
    if padding > 0 {
        manifest["annotations"] = serde_json::json!({ "padding": "x".repeat(padding) });
    }
    manifest.to_string().into_bytes()
}

fn index_manifest(entry_digest: &str) -> Vec<u8> {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": entry_digest,
            "size": 500,
            "platform": { "os": "wasip1", "architecture": "wasm" }
        }]
    })
    .to_string()
    .into_bytes()
}

/// The head of a request (up to the blank line), at most 64 KiB.
pub(crate) async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 || head.len() > 64 << 10 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(head).ok()
}

pub(crate) async fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body).await;
    let _ = stream.shutdown().await;
}

/// Keeps the connection open and silent until the client hangs up.
async fn silence(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
}

/// One byte of a chunked body every 100 ms, forever.
async fn trickle(stream: &mut TcpStream, content_type: &str) {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    while stream.write_all(b"1\r\n \r\n").await.is_ok() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCTETS: &str = "application/octet-stream";

async fn serve(mut stream: TcpStream, targets: Targets, log: Arc<Mutex<Vec<String>>>, sent: Sent) {
    let Some(head) = read_head(&mut stream).await else {
        return;
    };
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    log.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(format!("{method} {path}"));
    if path == "/v2/" || path == "/v2" {
        let head = format!(
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: {}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}",
            challenge(&targets.addr)
        );
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.shutdown().await;
        return;
    }
    if path.starts_with("/token") {
        let attack = token_scope_name(path).and_then(|name| Attack::from_name(&name));
        return match attack {
            Some(Attack::EndlessToken) => {
                let counts = (Attack::EndlessToken.name(), &sent);
                bounded_endless(
                    &mut stream,
                    "200 OK",
                    "application/json",
                    b"{\"token\":\"",
                    counts,
                )
                .await;
            }
            Some(Attack::RedirectToken) => {
                redirect(&mut stream, &format!("http://{}/401", targets.internal)).await;
            }
            _ => {
                respond(
                    &mut stream,
                    "200 OK",
                    "application/json",
                    br#"{"token":"hostile"}"#,
                )
                .await
            }
        };
    }
    let route = path
        .strip_prefix("/v2/hostile/")
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(name, rest)| Some((Attack::from_name(name)?, rest.split_once('/')?)));
    let Some((attack, (kind, _reference))) = route else {
        return respond(&mut stream, "404 Not Found", "application/json", b"{}").await;
    };
    let good = sha256(GOOD_WASM);
    let good_size = GOOD_WASM.len() as i64;
    let larger = filler(64 << 10, b'L');
    match (attack, kind) {
        (Attack::Good, "manifests") => {
            respond(
                &mut stream,
                "200 OK",
                MANIFEST,
                &image_manifest(&good, good_size, 0),
            )
            .await;
        }
        (Attack::SlowLorisBlob, "manifests") => {
            let body = image_manifest(&sha256(b"slow loris"), 10, 0);
            respond(&mut stream, "200 OK", MANIFEST, &body).await;
        }
        (Attack::WrongDigest, "manifests") => {
            let body = image_manifest(&sha256(b"expected"), 8, 0);
            respond(&mut stream, "200 OK", MANIFEST, &body).await;
        }
        (Attack::Good, "blobs") => respond(&mut stream, "200 OK", OCTETS, GOOD_WASM).await,
        (Attack::TraversalDigest | Attack::AbsoluteDigest, "manifests") => {
            let path = if attack == Attack::TraversalDigest {
                &targets.relative
            } else {
                &targets.absolute
            };
            let digest = format!("sha256:{path}");
            respond(
                &mut stream,
                "200 OK",
                MANIFEST,
                &image_manifest(&digest, 8, 0),
            )
            .await;
        }
        (Attack::TraversalIndex, "manifests") => {
            let digest = format!("sha256:{}", targets.relative);
            respond(&mut stream, "200 OK", INDEX, &index_manifest(&digest)).await;
        }
        (Attack::HugeDeclaredSize, "manifests") => {
            let body = image_manifest(&sha256(b"huge"), 1 << 62, 0);
            respond(&mut stream, "200 OK", MANIFEST, &body).await;
        }
        (Attack::LargerThanDeclared, "manifests") => {
            respond(
                &mut stream,
                "200 OK",
                MANIFEST,
                &image_manifest(&sha256(&larger), 100, 0),
            )
            .await;
        }
        (Attack::LargerThanDeclared, "blobs") => {
            respond(&mut stream, "200 OK", OCTETS, &larger).await;
        }
        (Attack::EndlessBlob, "manifests") => {
            respond(
                &mut stream,
                "200 OK",
                MANIFEST,
                &image_manifest(&sha256(b"endless"), 1000, 0),
            )
            .await;
        }
        (Attack::HugeDeclaredSize | Attack::EndlessBlob, "blobs") => {
            bounded_endless(&mut stream, "200 OK", OCTETS, b"", (attack.name(), &sent)).await;
        }
        (Attack::EndlessBlobError | Attack::RedirectBlob, "manifests") => {
            let body = image_manifest(&sha256(attack.name().as_bytes()), 8, 0);
            respond(&mut stream, "200 OK", MANIFEST, &body).await;
        }
        (Attack::EndlessBlobError, "blobs") => {
            let prefix = br#"{"errors":[{"code":"BLOB_UNKNOWN","message":""#;
            let status = "500 Internal Server Error";
            bounded_endless(
                &mut stream,
                status,
                "application/json",
                prefix,
                (attack.name(), &sent),
            )
            .await;
        }
        (Attack::RedirectBlob, "blobs") => {
            redirect(&mut stream, &format!("http://{}/500", targets.internal)).await;
        }
        (Attack::RedirectManifest, "manifests") => {
            redirect(&mut stream, &format!("http://{}/403", targets.internal)).await;
        }
        (Attack::SlowLorisManifest, "manifests") => {
            let _ = stream.write_all(b"H").await;
            silence(&mut stream).await;
        }
        (Attack::SlowLorisBlob, "blobs") => {
            let head =
                format!("HTTP/1.1 200 OK\r\nContent-Type: {OCTETS}\r\nContent-Length: 10\r\n\r\ns");
            let _ = stream.write_all(head.as_bytes()).await;
            silence(&mut stream).await;
        }
        (Attack::TrickleManifest, "manifests") => trickle(&mut stream, MANIFEST).await,
        (Attack::HugeManifest, "manifests") => {
            let body = image_manifest(&good, good_size, HUGE_MANIFEST_SIZE);
            respond(&mut stream, "200 OK", MANIFEST, &body).await;
        }
        (Attack::EndlessManifest, "manifests") => {
            bounded_endless(&mut stream, "200 OK", MANIFEST, b"", (attack.name(), &sent)).await;
        }
        (Attack::WrongDigest, "blobs") => {
            respond(&mut stream, "200 OK", OCTETS, b"unexpect").await;
        }
        _ => respond(&mut stream, "404 Not Found", "application/json", b"{}").await,
    }
}
