//! The registry side of a pull: manifests read with a size cap and blobs streamed to a
//! temporary file while they are counted and hashed (both requested in a [`Session`]), and
//! the oci-client client with timeouts that pushes use.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, ImageIndexEntry,
    OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciManifest,
};
use oci_client::{Client, Reference};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::digest::{Digest, Hasher};
use crate::session::{Body, ERROR_BODY_LIMIT, Session, read_capped, redirected, refusal};
use crate::{Error, Result, io};

/// Media types a manifest request accepts.
const MANIFEST_TYPES: &[&str] = &[
    OCI_IMAGE_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// The time bounds of registry requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
}

/// A registry client that reaches `insecure_registries` over plain HTTP and gives up on
/// a connection after `timeouts.connect` and on a response that sends nothing for
/// `timeouts.read`.
pub(crate) fn client(insecure_registries: &[String], timeouts: Timeouts) -> Result<Client> {
    // `Client::new` would fall back to a client without timeouts on a bad config.
    Client::try_from(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(insecure_registries.to_vec()),
        platform_resolver: Some(Box::new(wasm_platform)),
        connect_timeout: Some(timeouts.connect),
        read_timeout: Some(timeouts.read),
        ..ClientConfig::default()
    })
    .map_err(registry_error)
}

/// Whether an image index entry is for wasm: OS `wasip1`, `wasip2` or `wasi`, or
/// architecture `wasm` (the platforms `docker buildx`, `oras` and `wkg` write).
pub(crate) fn is_wasm_platform(entry: &ImageIndexEntry) -> bool {
    entry.platform.as_ref().is_some_and(|p| {
        matches!(p.os.to_string().as_str(), "wasip1" | "wasip2" | "wasi")
            || matches!(p.architecture.to_string().as_str(), "wasm" | "wasm32")
    })
}

/// The wasm entry of an image index, as a platform resolver.
pub(crate) fn wasm_platform(entries: &[ImageIndexEntry]) -> Option<String> {
    entries
        .iter()
        .find(|e| is_wasm_platform(e))
        .map(|e| e.digest.clone())
}

pub(crate) fn parse(reference: &str) -> Result<Reference> {
    let parsed: Reference = reference.parse().map_err(|e| Error::InvalidReference {
        reference: reference.to_owned(),
        reason: format!("{e}"),
    })?;
    if let Some(digest) = parsed.digest() {
        Digest::parse(digest)?;
    }
    Ok(parsed)
}

/// The error and its causes, `: `-separated (the client's own message often hides the
/// cause, such as a timeout).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

pub(crate) fn registry_error(e: oci_client::errors::OciDistributionError) -> Error {
    Error::Registry(chain(&e))
}

/// A declared size (`i64` in descriptors) checked against `limit` before anything is
/// fetched.
pub(crate) fn declared_size(what: &str, size: i64, limit: u64) -> Result<u64> {
    let Ok(size) = u64::try_from(size) else {
        return Err(Error::Registry(format!(
            "{what} declares a negative size ({size})"
        )));
    };
    if size > limit {
        return Err(Error::TooLarge {
            what: format!("{what} (declared {size} bytes)"),
            limit,
        });
    }
    Ok(size)
}

/// Parses a manifest body of at most `limit` bytes.
pub(crate) fn parse_manifest(what: &str, body: &[u8], limit: u64) -> Result<OciManifest> {
    if body.len() as u64 > limit {
        return Err(Error::TooLarge {
            what: format!("the manifest of {what} ({} bytes)", body.len()),
            limit,
        });
    }
    let manifest: OciManifest = serde_json::from_slice(body)
        .map_err(|e| Error::Registry(format!("{what}: invalid manifest: {e}")))?;
    let version = match &manifest {
        OciManifest::Image(m) => m.schema_version,
        OciManifest::ImageIndex(i) => i.schema_version,
    };
    if version != 2 {
        return Err(Error::Registry(format!(
            "{what}: unsupported manifest schema version {version}"
        )));
    }
    Ok(manifest)
}

/// The manifest `reference` names and its digest, within `timeout` and `limit` bytes.
///
/// oci-client reads a manifest body whole before anything can check its size, so the
/// request is made here, in `session` (its credential or token), and the body read chunk
/// by chunk: past `limit` bytes the request is dropped. An error body is read up to
/// [`ERROR_BODY_LIMIT`].
pub(crate) async fn manifest(
    session: &Session<'_>,
    reference: &Reference,
    (limit, timeout): (u64, Duration),
) -> Result<(OciManifest, Digest)> {
    let whole = reference.whole();
    let (body, header) = tokio::time::timeout(timeout, fetch_manifest(session, reference, limit))
        .await
        .map_err(|_| Error::Timeout {
            what: format!("fetching the manifest of {whole}"),
            after: timeout,
        })??;
    let manifest = parse_manifest(&whole, &body, limit)?;
    // A digest the reference or the registry names must be the content's; the image ID
    // uses the reference's algorithm when it names one, else SHA-256.
    let mut digest = Digest::of(crate::digest::Algorithm::Sha256, &body);
    for (i, named) in [reference.digest(), header.as_deref()]
        .into_iter()
        .enumerate()
    {
        let Some(named) = named else { continue };
        let named = Digest::parse(named)?;
        if Digest::of(named.algorithm(), &body) != named {
            return Err(Error::DigestMismatch {
                digest: named.as_str().to_owned(),
            });
        }
        if i == 0 {
            digest = named;
        }
    }
    Ok((manifest, digest))
}

/// The manifest's body, at most `limit` bytes, and the `Docker-Content-Digest` header.
async fn fetch_manifest(
    session: &Session<'_>,
    reference: &Reference,
    limit: u64,
) -> Result<(Vec<u8>, Option<String>)> {
    let whole = reference.whole();
    let name = reference
        .digest()
        .or_else(|| reference.tag())
        .unwrap_or("latest");
    let url = session.url("manifests", name);
    let request = session
        .get(&url)
        .header(reqwest::header::ACCEPT, MANIFEST_TYPES.join(", "));
    let http_error = |e: reqwest::Error| Error::Registry(format!("{whole}: {}", chain(&e)));
    let mut response = request.send().await.map_err(http_error)?;
    let status = response.status();
    let header = response
        .headers()
        .get("Docker-Content-Digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let cap = if status.is_success() {
        usize::try_from(limit).unwrap_or(usize::MAX)
    } else {
        ERROR_BODY_LIMIT
    };
    let too_large = |n: &str| Error::TooLarge {
        what: format!("the manifest of {whole} ({n} bytes)"),
        limit,
    };
    if status.is_success()
        && let Some(length) = response.content_length()
        && length > limit
    {
        return Err(too_large(&length.to_string()));
    }
    let body = match read_capped(&mut response, cap).await.map_err(http_error)? {
        Body::Whole(body) => body,
        Body::Over(_) if status.is_success() => {
            return Err(too_large(&format!("more than {limit}")));
        }
        Body::Over(first) => first,
    };
    if !status.is_success() {
        let redirected = redirected(&response, &url);
        return Err(refusal(&whole, "the manifest", status, redirected, &body));
    }
    Ok((body, header))
}

/// An HTTP client for the store's own registry requests, with its timeouts.
pub(crate) fn http_client(timeouts: Timeouts) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(timeouts.connect)
        .read_timeout(timeouts.read)
        .build()
        .map_err(|e| Error::Registry(format!("building the HTTP client: {}", chain(&e))))
}

/// Distinguishes temporary files of concurrent writes within this process.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A file under the store's `tmp/`, removed when dropped unless [`TempFile::persist`]ed:
/// a failed, cancelled or timed-out write leaves nothing behind.
#[derive(Debug)]
pub(crate) struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    /// A fresh name in `dir` (created if missing), and the file created there.
    pub(crate) async fn create(dir: &Path) -> Result<(Self, tokio::fs::File)> {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(io(format!("creating {}", dir.display())))?;
        let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{}-{seq}.tmp", std::process::id()));
        // Opened here, not on tokio's blocking pool: a pull cancelled while a pooled
        // open was in flight would leave a file no guard owns. Creating an empty file in
        // a local directory does not block for long.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io(format!("creating {}", path.display())))?;
        Ok((Self { path, keep: false }, tokio::fs::File::from_std(file)))
    }

    /// Renames the file to `dest` (creating its directory) and keeps it.
    pub(crate) async fn persist(mut self, dest: &Path) -> Result<()> {
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(io(format!("creating {}", dir.display())))?;
        }
        tokio::fs::rename(&self.path, dest)
            .await
            .map_err(io(format!("renaming to {}", dest.display())))?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Where a blob's bytes go while they arrive: a file, counted and hashed; a write past
/// `limit` bytes fails, which aborts the download.
pub(crate) struct BlobSink {
    file: tokio::fs::File,
    hasher: Hasher,
    written: u64,
    limit: u64,
    overflowed: bool,
}

impl BlobSink {
    pub(crate) fn new(file: tokio::fs::File, digest: &Digest, limit: u64) -> Self {
        Self {
            file,
            hasher: Hasher::new(digest.algorithm()),
            written: 0,
            limit,
            overflowed: false,
        }
    }

    /// Flushes the file to disk and checks the content: exactly `declared` bytes
    /// hashing to `digest`.
    pub(crate) async fn finish(self, what: &str, digest: &Digest, declared: u64) -> Result<()> {
        if self.overflowed || self.written != declared {
            return Err(Error::SizeMismatch {
                what: what.to_owned(),
                declared,
            });
        }
        self.file
            .sync_all()
            .await
            .map_err(io(format!("writing {what}")))?;
        if self.hasher.finish() != *digest {
            return Err(Error::DigestMismatch {
                digest: digest.to_string(),
            });
        }
        Ok(())
    }

    pub(crate) fn overflowed(&self) -> bool {
        self.overflowed
    }
}

impl AsyncWrite for BlobSink {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.written.saturating_add(buf.len() as u64) > this.limit {
            this.overflowed = true;
            return Poll::Ready(Err(std::io::Error::other(
                "more bytes than the blob's declared size",
            )));
        }
        let result = Pin::new(&mut this.file).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &result {
            this.hasher.update(&buf[..*n]);
            this.written += *n as u64;
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_shutdown(cx)
    }
}

/// Downloads blob `digest` (declared `declared` bytes, already checked against the
/// store's limit) of the session's repository to `dest`, through a temporary file in
/// `tmp_dir`: never more than `declared` bytes are accepted, the file becomes `dest` only
/// when its size and digest are right, and an error answer is read up to
/// [`ERROR_BODY_LIMIT`] (oci-client would read it whole).
pub(crate) async fn download(
    session: &Session<'_>,
    digest: &Digest,
    declared: u64,
    tmp_dir: &Path,
    dest: &Path,
) -> Result<()> {
    let what = format!("layer {digest} of {}", session.whole());
    // By digest alone: a descriptor's `urls` would send the client to other hosts.
    let url = session.url("blobs", digest.as_str());
    let http_error = |e: reqwest::Error| Error::Registry(format!("{what}: {}", chain(&e)));
    let mut response = session.get(&url).send().await.map_err(http_error)?;
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        let redirected = redirected(&response, &url);
        let body = match read_capped(&mut response, ERROR_BODY_LIMIT)
            .await
            .map_err(http_error)?
        {
            Body::Whole(body) | Body::Over(body) => body,
        };
        let layer = format!("layer {digest}");
        return Err(refusal(session.whole(), &layer, status, redirected, &body));
    }
    if let Some(length) = response.content_length()
        && length != declared
    {
        return Err(Error::SizeMismatch { what, declared });
    }
    let (temp, file) = TempFile::create(tmp_dir).await?;
    let mut sink = BlobSink::new(file, digest, declared);
    while let Some(chunk) = response.chunk().await.map_err(http_error)? {
        if let Err(e) = sink.write_all(&chunk).await {
            if sink.overflowed() {
                return Err(Error::SizeMismatch { what, declared });
            }
            return Err(io(format!("writing {what}"))(e));
        }
    }
    sink.finish(&what, digest, declared).await?;
    temp.persist(dest).await
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::path::Path;
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    use super::TempFile;

    fn names(dir: &Path) -> Vec<std::ffi::OsString> {
        std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default()
    }

    /// Cancels `TempFile::create` after each of its pending polls: the file never exists
    /// without the guard that removes it (the open once ran on the blocking pool, and a
    /// pull dropped meanwhile left its file behind).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_temp_file_exists_only_while_its_guard_does() {
        let base = tempfile::tempdir().expect("tempdir");
        let dir = base.path().join("tmp");
        for pending_polls in 0..20 {
            let mut create = Box::pin(TempFile::create(&dir));
            let mut cx = Context::from_waker(Waker::noop());
            let mut polls = 0;
            let created = loop {
                match create.as_mut().poll(&mut cx) {
                    Poll::Ready(result) => break Some(result.expect("create")),
                    Poll::Pending if polls == pending_polls => break None,
                    Poll::Pending => {
                        polls += 1;
                        // Time for work handed to the blocking pool to be done.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        assert!(names(&dir).is_empty(), "a file before create returned");
                    }
                }
            };
            match created {
                Some((guard, _file)) => {
                    assert_eq!(names(&dir).len(), 1);
                    drop(guard);
                }
                None => drop(create),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert!(
                names(&dir).is_empty(),
                "left after {pending_polls} pending polls"
            );
        }
    }
}
