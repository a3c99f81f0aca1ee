//! The on-disk image store: content by digest, one record per reference.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use oci_client::Reference;
use oci_client::manifest::{ImageIndexEntry, OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::digest::{Algorithm, Digest};
use crate::registry::{self, Timeouts, declared_size, is_wasm_platform, parse};
use crate::session::Session;
use crate::{Error, Result, WASM_LAYER_TYPES, io};

/// A pulled image, as recorded in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The reference the image was pulled by, normalised (`registry/repo:tag`).
    pub reference: String,
    /// `registry/repo@sha256:<manifest digest>`, the kubelet's `imageID`.
    pub image_id: String,
    /// Digest of the wasm layer.
    pub module_digest: Digest,
    /// Size of the wasm layer in bytes.
    pub size: u64,
    /// [`credential_id`]s of the credentials the registry accepted for it; empty when it
    /// was pulled anonymously (a public image). The node agent lets a pod use a private
    /// image already on the node only with one of these, as the kubelet's
    /// `KubeletEnsureSecretPulledImages` does.
    #[serde(default)]
    pub credentials: Vec<String>,
}

fn sha256_hex(data: &[u8]) -> String {
    Digest::of(Algorithm::Sha256, data).hex().to_owned()
}

/// A stable, non-reversible identity of a credential (a SHA-256 of it).
#[must_use]
pub fn credential_id(auth: &RegistryAuth) -> String {
    match auth {
        RegistryAuth::Anonymous => "anonymous".to_owned(),
        RegistryAuth::Basic(user, password) => format!(
            "sha256:{}",
            sha256_hex(format!("basic\0{user}\0{password}").as_bytes())
        ),
        RegistryAuth::Bearer(token) => {
            format!(
                "sha256:{}",
                sha256_hex(format!("bearer\0{token}").as_bytes())
            )
        }
    }
}

/// What the store has done since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Manifests asked of a registry.
    pub manifest_requests: u64,
    /// Wasm layers downloaded from a registry.
    pub downloads: u64,
}

/// The settings of a [`Store`]: which registries are plain HTTP, and the bounds on what a
/// registry may send and how long it may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Registries (`host:port`) reached over plain HTTP; all others over HTTPS.
    pub insecure_registries: Vec<String>,
    /// Largest wasm layer accepted, in bytes (default 256 MiB). A layer declaring more
    /// is refused before any byte is fetched.
    pub max_blob_size: u64,
    /// Largest manifest or index accepted, in bytes (default 4 MiB, the OCI
    /// distribution spec's limit).
    pub max_manifest_size: u64,
    /// Bound on opening a connection to a registry (default 30 s).
    pub connect_timeout: Duration,
    /// Bound on a response that sends nothing (default 30 s).
    pub read_timeout: Duration,
    /// Bound on each manifest request, whatever the registry sends (default 60 s).
    pub manifest_timeout: Duration,
    /// Bound on a whole pull, manifests and layer (default 10 minutes).
    pub pull_timeout: Duration,
}

impl StoreConfig {
    /// Default [`StoreConfig::max_blob_size`]: 256 MiB.
    pub const DEFAULT_MAX_BLOB_SIZE: u64 = 256 << 20;
    /// Default [`StoreConfig::max_manifest_size`]: 4 MiB.
    pub const DEFAULT_MAX_MANIFEST_SIZE: u64 = 4 << 20;

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            connect: self.connect_timeout,
            read: self.read_timeout,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            insecure_registries: Vec::new(),
            max_blob_size: Self::DEFAULT_MAX_BLOB_SIZE,
            max_manifest_size: Self::DEFAULT_MAX_MANIFEST_SIZE,
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(30),
            manifest_timeout: Duration::from_secs(60),
            pull_timeout: Duration::from_secs(600),
        }
    }
}

/// Content-addressed store of wasm artifacts under one directory:
/// `blobs/<algorithm>/<hex>` for content, `refs/<sha256 of the reference>.json` for what
/// each reference resolved to last, `tmp/` for downloads in progress.
pub struct Store {
    pub(crate) root: PathBuf,
    config: StoreConfig,
    /// The store's own requests (pings, tokens, manifests: bodies read under a cap); a
    /// credential or token goes with each request, never with the client.
    http: reqwest::Client,
    /// One lock per reference, so concurrent pulls of one image download it once.
    pulls: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    manifest_requests: AtomicU64,
    downloads: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.root)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn platforms(entries: &[ImageIndexEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| {
            e.platform.as_ref().map_or_else(
                || "unknown".to_owned(),
                |p| format!("{}/{}", p.os, p.architecture),
            )
        })
        .collect()
}

pub(crate) fn no_wasm_platform(reference: &str, entries: &[ImageIndexEntry]) -> Error {
    Error::NotWasm {
        reference: reference.to_owned(),
        found: format!(
            "its index has no wasm platform, only {:?}",
            platforms(entries)
        ),
    }
}

/// The wasm layer of `manifest`, or why it has none.
pub(crate) fn wasm_layer<'m>(
    reference: &str,
    manifest: &'m OciImageManifest,
) -> Result<&'m OciDescriptor> {
    manifest
        .layers
        .iter()
        .find(|l| WASM_LAYER_TYPES.contains(&l.media_type.as_str()))
        .ok_or_else(|| Error::NotWasm {
            reference: reference.to_owned(),
            found: format!(
                "its layers are {:?}",
                manifest
                    .layers
                    .iter()
                    .map(|l| l.media_type.as_str())
                    .collect::<Vec<_>>()
            ),
        })
}

impl Store {
    /// Opens (creating) the store at `root` with default limits. Registries in
    /// `insecure_registries` (`host:port`) are reached over plain HTTP; all others over
    /// HTTPS.
    ///
    /// # Errors
    /// [`Error::Io`] when the directory cannot be created.
    pub fn open(root: &Path, insecure_registries: &[String]) -> Result<Self> {
        Self::open_with(
            root,
            StoreConfig {
                insecure_registries: insecure_registries.to_vec(),
                ..StoreConfig::default()
            },
        )
    }

    /// Opens (creating) the store at `root` with `config`. Interrupted downloads are
    /// dropped; records of the earlier naming scheme (the reference with `/`, `:`, `@`
    /// and `_` all written `_`) are migrated to their reference's own name.
    ///
    /// # Errors
    /// [`Error::Io`] when the directory cannot be created.
    pub fn open_with(root: &Path, config: StoreConfig) -> Result<Self> {
        for dir in ["blobs/sha256", "refs", "tmp"] {
            std::fs::create_dir_all(root.join(dir))
                .map_err(io(format!("creating {}", root.join(dir).display())))?;
        }
        // Temporary files of writes a crash interrupted never became entries: drop them
        // (`tmp/`, and the `.tmp` names of earlier versions).
        for dir in ["tmp", "blobs/sha256", "refs"] {
            if let Ok(entries) = std::fs::read_dir(root.join(dir)) {
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    if dir == "tmp" || name.to_string_lossy().contains(".tmp") {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
        }
        let http = registry::http_client(config.timeouts())?;
        let store = Self {
            root: root.to_owned(),
            http,
            config,
            pulls: Mutex::default(),
            manifest_requests: AtomicU64::new(0),
            downloads: AtomicU64::new(0),
        };
        store.migrate_records();
        Ok(store)
    }

    /// The store's settings.
    #[must_use]
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Registry requests so far.
    #[must_use]
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            manifest_requests: self.manifest_requests.load(Ordering::Relaxed),
            downloads: self.downloads.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join(digest.relative_path())
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Resolves `reference` at the registry and downloads its wasm layer unless the store
    /// already holds that digest, and says whether it downloaded. Concurrent pulls of one
    /// reference share one download. The whole pull is bounded by
    /// [`StoreConfig::pull_timeout`].
    ///
    /// # Errors
    /// [`Error::InvalidReference`], [`Error::Registry`] (unreachable, unauthorized, not
    /// found), [`Error::NotWasm`], [`Error::InvalidDigest`], [`Error::TooLarge`],
    /// [`Error::SizeMismatch`], [`Error::DigestMismatch`], [`Error::Timeout`],
    /// [`Error::Io`].
    pub async fn pull(&self, reference: &str, auth: &RegistryAuth) -> Result<(Image, bool)> {
        let parsed = parse(reference)?;
        let lock = self
            .pulls
            .lock()
            .await
            .entry(parsed.whole())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        let bound = self.config.pull_timeout;
        tokio::time::timeout(bound, self.pull_locked(reference, &parsed, auth))
            .await
            .map_err(|_| Error::Timeout {
                what: format!("pulling {reference}"),
                after: bound,
            })?
    }

    async fn manifest(
        &self,
        session: &Session<'_>,
        reference: &Reference,
    ) -> Result<(OciManifest, Digest)> {
        self.manifest_requests.fetch_add(1, Ordering::Relaxed);
        registry::manifest(
            session,
            reference,
            (self.config.max_manifest_size, self.config.manifest_timeout),
        )
        .await
    }

    /// The pull's session with the registry of `reference`: its token, when it asks for
    /// one, within [`StoreConfig::manifest_timeout`].
    async fn session(&self, reference: &Reference, auth: &RegistryAuth) -> Result<Session<'_>> {
        let bound = self.config.manifest_timeout;
        tokio::time::timeout(
            bound,
            Session::open(
                &self.http,
                &self.config.insecure_registries,
                reference,
                auth,
            ),
        )
        .await
        .map_err(|_| Error::Timeout {
            what: format!("authorizing the pull of {}", reference.whole()),
            after: bound,
        })?
    }

    async fn pull_locked(
        &self,
        reference: &str,
        parsed: &Reference,
        auth: &RegistryAuth,
    ) -> Result<(Image, bool)> {
        let session = self.session(parsed, auth).await?;
        let (manifest, manifest_digest) = self.manifest(&session, parsed).await?;
        let manifest = match manifest {
            OciManifest::Image(m) => m,
            OciManifest::ImageIndex(index) => {
                // A multi-platform image: take its wasm entry. The image ID stays the
                // index digest, which is what the tag points at.
                let entry = index
                    .manifests
                    .iter()
                    .find(|e| is_wasm_platform(e))
                    .ok_or_else(|| no_wasm_platform(reference, &index.manifests))?;
                let digest = Digest::parse(&entry.digest)?;
                declared_size(
                    &format!("the wasm manifest {digest} of {reference}"),
                    entry.size,
                    self.config.max_manifest_size,
                )?;
                let by_digest = parsed.clone_with_digest(digest.to_string());
                match self.manifest(&session, &by_digest).await? {
                    (OciManifest::Image(m), _) => m,
                    (OciManifest::ImageIndex(_), _) => {
                        return Err(Error::Registry(format!(
                            "{reference}: the wasm entry of the index is itself an index"
                        )));
                    }
                }
            }
        };
        let layer = wasm_layer(reference, &manifest)?;
        let module_digest = Digest::parse(&layer.digest)?;
        let size = declared_size(
            &format!("layer {module_digest} of {reference}"),
            layer.size,
            self.config.max_blob_size,
        )?;
        let path = self.blob_path(&module_digest);
        let downloaded = !tokio::fs::try_exists(&path).await.unwrap_or(false);
        if downloaded {
            self.downloads.fetch_add(1, Ordering::Relaxed);
            registry::download(&session, &module_digest, size, &self.tmp_dir(), &path).await?;
        }
        let image_id = format!(
            "{}/{}@{}",
            parsed.resolve_registry(),
            parsed.repository(),
            manifest_digest
        );
        // Who may use it: anyone after an anonymous pull; else every credential that
        // pulled this very image.
        let credentials = match auth {
            RegistryAuth::Anonymous => Vec::new(),
            auth => {
                let mut known = self
                    .cached(reference)
                    .await?
                    .filter(|i| i.image_id == image_id && !i.credentials.is_empty())
                    .map(|i| i.credentials)
                    .unwrap_or_default();
                let id = credential_id(auth);
                if !known.contains(&id) {
                    known.push(id);
                }
                known
            }
        };
        let image = Image {
            reference: parsed.whole(),
            image_id,
            module_digest,
            size,
            credentials,
        };
        self.record(parsed, &image).await?;
        Ok((image, downloaded))
    }

    /// Bytes of content the store holds.
    pub async fn usage(&self) -> u64 {
        let mut total = 0;
        for algorithm in Algorithm::ALL {
            let dir = self.root.join("blobs").join(algorithm.name());
            if let Ok(mut dir) = tokio::fs::read_dir(dir).await {
                while let Ok(Some(entry)) = dir.next_entry().await {
                    if let Ok(meta) = entry.metadata().await {
                        total += meta.len();
                    }
                }
            }
        }
        total
    }

    /// Removes the content with `module_digest` and every reference to it; returns the
    /// bytes freed.
    ///
    /// # Errors
    /// [`Error::InvalidDigest`] when `module_digest` is not a digest (nothing is
    /// removed), [`Error::Io`] when a file cannot be removed.
    pub async fn remove(&self, module_digest: &str) -> Result<u64> {
        let digest = Digest::parse(module_digest)?;
        for image in self.images().await {
            if image.module_digest == digest {
                let path = self.ref_path(&parse(&image.reference)?);
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(format!("removing {}", path.display()))(e)),
                }
            }
        }
        let blob = self.blob_path(&digest);
        let size = tokio::fs::metadata(&blob).await.map_or(0, |m| m.len());
        match tokio::fs::remove_file(&blob).await {
            Ok(()) => Ok(size),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io(format!("removing {}", blob.display()))(e)),
        }
    }

    /// The module bytes with `digest` (an [`Image::module_digest`]), verified against their digest.
    ///
    /// # Errors
    /// [`Error::InvalidDigest`] when `digest` is not a digest, [`Error::Io`] when the
    /// blob is missing, [`Error::DigestMismatch`] when it is corrupt.
    pub async fn module(&self, digest: &str) -> Result<Arc<[u8]>> {
        let digest = Digest::parse(digest)?;
        let path = self.blob_path(&digest);
        let data = tokio::fs::read(&path)
            .await
            .map_err(io(format!("reading {}", path.display())))?;
        if Digest::of(digest.algorithm(), &data) != digest {
            return Err(Error::DigestMismatch {
                digest: digest.to_string(),
            });
        }
        Ok(data.into())
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
