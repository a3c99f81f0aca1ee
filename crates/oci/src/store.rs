//! The on-disk image store and the registry client behind it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{ImageIndexEntry, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::{Error, Result, WASM_CONFIG_TYPE, WASM_LAYER_TYPES, io};

/// A pulled image, as recorded in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The reference the image was pulled by, normalised (`registry/repo:tag`).
    pub reference: String,
    /// `registry/repo@sha256:<manifest digest>`, the kubelet's `imageID`.
    pub image_id: String,
    /// Digest of the wasm layer.
    pub module_digest: String,
    /// Size of the wasm layer in bytes.
    pub size: u64,
    /// [`credential_id`]s of the credentials the registry accepted for it; empty when it
    /// was pulled anonymously (a public image). The node agent lets a pod use a private
    /// image already on the node only with one of these, as the kubelet's
    /// `KubeletEnsureSecretPulledImages` does.
    #[serde(default)]
    pub credentials: Vec<String>,
}

/// A stable, non-reversible identity of a credential (a SHA-256 of it).
#[must_use]
pub fn credential_id(auth: &RegistryAuth) -> String {
    match auth {
        RegistryAuth::Anonymous => "anonymous".to_owned(),
        RegistryAuth::Basic(user, password) => {
            sha256(format!("basic\0{user}\0{password}").as_bytes())
        }
        RegistryAuth::Bearer(token) => sha256(format!("bearer\0{token}").as_bytes()),
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

/// Content-addressed store of wasm artifacts under one directory:
/// `blobs/sha256/<hex>` for content, `refs/<escaped reference>.json` for what each
/// reference resolved to last.
pub struct Store {
    root: PathBuf,
    insecure_registries: Vec<String>,
    /// One registry client per credential: a client remembers the first credential it
    /// was given for a registry, so sharing one across pods would let one pod's secret
    /// (or a wrong one) serve another's pull.
    clients: std::sync::Mutex<HashMap<String, Client>>,
    /// One lock per reference, so concurrent pulls of one image download it once.
    pulls: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    manifest_requests: AtomicU64,
    downloads: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

fn client(insecure_registries: &[String]) -> Client {
    Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(insecure_registries.to_vec()),
        platform_resolver: Some(Box::new(wasm_platform)),
        ..ClientConfig::default()
    })
}

/// Whether an image index entry is for wasm: OS `wasip1`, `wasip2` or `wasi`, or
/// architecture `wasm` (the platforms `docker buildx`, `oras` and `wkg` write).
fn is_wasm_platform(entry: &ImageIndexEntry) -> bool {
    entry.platform.as_ref().is_some_and(|p| {
        matches!(p.os.to_string().as_str(), "wasip1" | "wasip2" | "wasi")
            || matches!(p.architecture.to_string().as_str(), "wasm" | "wasm32")
    })
}

/// The wasm entry of an image index, as a platform resolver.
fn wasm_platform(entries: &[ImageIndexEntry]) -> Option<String> {
    entries
        .iter()
        .find(|e| is_wasm_platform(e))
        .map(|e| e.digest.clone())
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

/// The wasm layer of `manifest`, or why it has none.
fn wasm_layer<'m>(
    reference: &str,
    manifest: &'m OciImageManifest,
) -> Result<&'m oci_client::manifest::OciDescriptor> {
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

fn parse(reference: &str) -> Result<Reference> {
    reference.parse().map_err(|e| Error::InvalidReference {
        reference: reference.to_owned(),
        reason: format!("{e}"),
    })
}

fn registry_error(e: impl std::fmt::Display) -> Error {
    Error::Registry(e.to_string())
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Writes `data` to `path` through a temporary file and a rename, so a crash never leaves
/// a half-written file under the final name.
async fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(io(format!("creating {}", dir.display())))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    tokio::fs::write(&tmp, data)
        .await
        .map_err(io(format!("writing {}", tmp.display())))?;
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(io(format!("renaming to {}", path.display())))
}

impl Store {
    /// Opens (creating) the store at `root`. Registries in `insecure_registries`
    /// (`host:port`) are reached over plain HTTP; all others over HTTPS.
    ///
    /// # Errors
    /// [`Error::Io`] when the directory cannot be created.
    pub fn open(root: &Path, insecure_registries: &[String]) -> Result<Self> {
        std::fs::create_dir_all(root.join("blobs/sha256"))
            .map_err(io(format!("creating {}", root.display())))?;
        std::fs::create_dir_all(root.join("refs"))
            .map_err(io(format!("creating {}", root.display())))?;
        // Temporary files of writes a crash interrupted never became entries: drop them.
        for dir in ["blobs/sha256", "refs"] {
            if let Ok(entries) = std::fs::read_dir(root.join(dir)) {
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    if name.to_string_lossy().contains(".tmp") {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
        }
        Ok(Self {
            root: root.to_owned(),
            insecure_registries: insecure_registries.to_vec(),
            clients: std::sync::Mutex::default(),
            pulls: Mutex::default(),
            manifest_requests: AtomicU64::new(0),
            downloads: AtomicU64::new(0),
        })
    }

    /// Registry requests so far.
    #[must_use]
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            manifest_requests: self.manifest_requests.load(Ordering::Relaxed),
            downloads: self.downloads.load(Ordering::Relaxed),
        }
    }

    fn client(&self, auth: &RegistryAuth) -> Client {
        let key = credential_id(auth);
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key)
            .or_insert_with(|| client(&self.insecure_registries))
            .clone()
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.root.join("blobs/sha256").join(hex)
    }

    fn ref_path(&self, reference: &Reference) -> PathBuf {
        let name: String = reference
            .whole()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.root.join("refs").join(format!("{name}.json"))
    }

    /// What `reference` resolved to when last pulled, if its content is still present.
    ///
    /// # Errors
    /// [`Error::InvalidReference`] when the reference does not parse.
    pub async fn cached(&self, reference: &str) -> Result<Option<Image>> {
        let parsed = parse(reference)?;
        let Ok(json) = tokio::fs::read(self.ref_path(&parsed)).await else {
            return Ok(None);
        };
        let Ok(image) = serde_json::from_slice::<Image>(&json) else {
            return Ok(None);
        };
        let present = tokio::fs::try_exists(self.blob_path(&image.module_digest))
            .await
            .unwrap_or(false);
        Ok(present.then_some(image))
    }

    /// Resolves `reference` at the registry and downloads its wasm layer unless the store
    /// already holds that digest, and says whether it downloaded. Concurrent pulls of one reference share one download.
    ///
    /// # Errors
    /// [`Error::InvalidReference`], [`Error::Registry`] (unreachable, unauthorized, not
    /// found), [`Error::NotWasm`], [`Error::DigestMismatch`], [`Error::Io`].
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
        self.manifest_requests.fetch_add(1, Ordering::Relaxed);
        let client = self.client(auth);
        let (manifest, manifest_digest) = client
            .pull_manifest(&parsed, auth)
            .await
            .map_err(registry_error)?;
        let manifest = match manifest {
            OciManifest::Image(m) => m,
            OciManifest::ImageIndex(index) => {
                // A multi-platform image: take its wasm entry. The image ID stays the
                // index digest, which is what the tag points at.
                let entry = index
                    .manifests
                    .iter()
                    .find(|e| is_wasm_platform(e))
                    .ok_or_else(|| Error::NotWasm {
                        reference: reference.to_owned(),
                        found: format!(
                            "its index has no wasm platform, only {:?}",
                            platforms(&index.manifests)
                        ),
                    })?;
                let by_digest = parsed.clone_with_digest(entry.digest.clone());
                self.manifest_requests.fetch_add(1, Ordering::Relaxed);
                match client
                    .pull_manifest(&by_digest, auth)
                    .await
                    .map_err(registry_error)?
                {
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
        let path = self.blob_path(&layer.digest);
        let downloaded = !tokio::fs::try_exists(&path).await.unwrap_or(false);
        if downloaded {
            self.downloads.fetch_add(1, Ordering::Relaxed);
            let mut data = Vec::with_capacity(usize::try_from(layer.size).unwrap_or(0));
            client
                .pull_blob(&parsed, layer, &mut data)
                .await
                .map_err(registry_error)?;
            if sha256(&data) != layer.digest {
                return Err(Error::DigestMismatch {
                    digest: layer.digest.clone(),
                });
            }
            write_atomic(&path, &data).await?;
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
            module_digest: layer.digest.clone(),
            size: u64::try_from(layer.size).unwrap_or(0),
            credentials,
        };
        self.record(&parsed, &image).await?;
        Ok((image, downloaded))
    }

    /// Every image the store holds: the last record of each reference whose content is
    /// present.
    pub async fn images(&self) -> Vec<Image> {
        let mut out = Vec::new();
        let Ok(mut dir) = tokio::fs::read_dir(self.root.join("refs")).await else {
            return out;
        };
        while let Ok(Some(entry)) = dir.next_entry().await {
            if entry.path().extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Ok(json) = tokio::fs::read(entry.path()).await else {
                continue;
            };
            if let Ok(image) = serde_json::from_slice::<Image>(&json)
                && tokio::fs::try_exists(self.blob_path(&image.module_digest))
                    .await
                    .unwrap_or(false)
            {
                out.push(image);
            }
        }
        out
    }

    /// Bytes of content the store holds.
    pub async fn usage(&self) -> u64 {
        let mut total = 0;
        if let Ok(mut dir) = tokio::fs::read_dir(self.root.join("blobs/sha256")).await {
            while let Ok(Some(entry)) = dir.next_entry().await {
                if let Ok(meta) = entry.metadata().await {
                    total += meta.len();
                }
            }
        }
        total
    }

    /// Removes the content with `module_digest` and every reference to it; returns the
    /// bytes freed.
    ///
    /// # Errors
    /// [`Error::Io`] when a file cannot be removed.
    pub async fn remove(&self, module_digest: &str) -> Result<u64> {
        for image in self.images().await {
            if image.module_digest == module_digest {
                let path = self.ref_path(&parse(&image.reference)?);
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(format!("removing {}", path.display()))(e)),
                }
            }
        }
        let blob = self.blob_path(module_digest);
        let size = tokio::fs::metadata(&blob).await.map_or(0, |m| m.len());
        match tokio::fs::remove_file(&blob).await {
            Ok(()) => Ok(size),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io(format!("removing {}", blob.display()))(e)),
        }
    }

    /// Imports every image of the OCI image layout at `dir` whose index entry names a
    /// full reference (annotation `org.opencontainers.image.ref.name` or
    /// `io.containerd.image.name`, e.g. `registry.example/app:v1`), so that it runs
    /// without a registry (`imagePullPolicy: Never` or `IfNotPresent`). Entries named by
    /// a bare tag are skipped with a warning. Content is verified against its digest.
    ///
    /// # Errors
    /// [`Error::Io`] when `index.json` cannot be read, [`Error::Registry`] when it does
    /// not parse; a bad entry is an error too ([`Error::NotWasm`], [`Error::DigestMismatch`]).
    pub async fn import_layout(&self, dir: &Path) -> Result<Vec<Image>> {
        let read_blob = |digest: &str| read_layout_blob(dir, digest.to_owned());
        let index_path = dir.join("index.json");
        let index = tokio::fs::read(&index_path)
            .await
            .map_err(io(format!("reading {}", index_path.display())))?;
        let index: oci_client::manifest::OciImageIndex = serde_json::from_slice(&index)
            .map_err(|e| Error::Registry(format!("{}: {e}", index_path.display())))?;
        let mut imported = Vec::new();
        for entry in &index.manifests {
            let annotations = entry.annotations.clone().unwrap_or_default();
            let Some(name) = [
                "io.containerd.image.name",
                "org.opencontainers.image.ref.name",
            ]
            .iter()
            .find_map(|k| annotations.get(*k))
            .filter(|n| n.contains('/')) else {
                tracing::warn!(digest = %entry.digest, "layout entry without a full reference name; skipped");
                continue;
            };
            let parsed = parse(name)?;
            let mut manifest: OciManifest =
                serde_json::from_slice(&read_blob(&entry.digest).await?)
                    .map_err(|e| Error::Registry(format!("{name}: {e}")))?;
            if let OciManifest::ImageIndex(inner) = &manifest {
                let wasm = wasm_platform(&inner.manifests).ok_or_else(|| Error::NotWasm {
                    reference: name.clone(),
                    found: format!(
                        "its index has no wasm platform, only {:?}",
                        platforms(&inner.manifests)
                    ),
                })?;
                manifest = serde_json::from_slice(&read_blob(&wasm).await?)
                    .map_err(|e| Error::Registry(format!("{name}: {e}")))?;
            }
            let OciManifest::Image(manifest) = manifest else {
                return Err(Error::Registry(format!("{name}: nested image indexes")));
            };
            let layer = wasm_layer(name, &manifest)?;
            let data = read_blob(&layer.digest).await?;
            write_atomic(&self.blob_path(&layer.digest), &data).await?;
            let image = Image {
                reference: parsed.whole(),
                image_id: format!(
                    "{}/{}@{}",
                    parsed.resolve_registry(),
                    parsed.repository(),
                    entry.digest
                ),
                module_digest: layer.digest.clone(),
                size: data.len() as u64,
                credentials: Vec::new(),
            };
            self.record(&parsed, &image).await?;
            imported.push(image);
        }
        Ok(imported)
    }

    async fn record(&self, reference: &Reference, image: &Image) -> Result<()> {
        let json = serde_json::to_vec(image).map_err(|e| Error::Io {
            what: "encoding image record".into(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&self.ref_path(reference), &json).await
    }

    /// The module bytes with `digest` (an [`Image::module_digest`]), verified against their digest.
    ///
    /// # Errors
    /// [`Error::Io`] when the blob is missing, [`Error::DigestMismatch`] when it is corrupt.
    pub async fn module(&self, digest: &str) -> Result<Arc<[u8]>> {
        let path = self.blob_path(digest);
        let data = tokio::fs::read(&path)
            .await
            .map_err(io(format!("reading {}", path.display())))?;
        if sha256(&data) != digest {
            return Err(Error::DigestMismatch {
                digest: digest.to_owned(),
            });
        }
        Ok(data.into())
    }
}

/// A blob of an OCI image layout, verified against its digest.
async fn read_layout_blob(dir: &Path, digest: String) -> Result<Vec<u8>> {
    let path = dir
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap_or(&digest));
    let data = tokio::fs::read(&path)
        .await
        .map_err(io(format!("reading {}", path.display())))?;
    if sha256(&data) == digest {
        Ok(data)
    } else {
        Err(Error::DigestMismatch { digest })
    }
}

/// The media types a wasm file is published with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushFormat {
    /// Media type of the one layer.
    pub layer_media_type: String,
    /// Media type of the config blob.
    pub config_media_type: String,
}

impl PushFormat {
    /// The CNCF Wasm OCI artifact layout (config `application/vnd.wasm.config.v0+json`,
    /// layer `application/wasm`), as `wkg`, `oras` and this project push.
    #[must_use]
    pub fn cncf() -> Self {
        Self {
            layer_media_type: "application/wasm".to_owned(),
            config_media_type: WASM_CONFIG_TYPE.to_owned(),
        }
    }

    /// The older layout of `wasm-to-oci` and the original Krustlet (layer
    /// `application/vnd.wasm.content.layer.v1+wasm`).
    #[must_use]
    pub fn wasm_to_oci() -> Self {
        Self {
            layer_media_type: "application/vnd.wasm.content.layer.v1+wasm".to_owned(),
            config_media_type: "application/vnd.wasm.config.v1+json".to_owned(),
        }
    }
}

/// Publishes `wasm` as a CNCF Wasm OCI artifact (config
/// `application/vnd.wasm.config.v0+json`, one `application/wasm` layer) and returns the
/// manifest's URL.
///
/// # Errors
/// [`Error::InvalidReference`] or [`Error::Registry`].
pub async fn push(
    wasm: Vec<u8>,
    reference: &str,
    auth: &RegistryAuth,
    insecure_registries: &[String],
) -> Result<String> {
    push_as(
        wasm,
        reference,
        auth,
        insecure_registries,
        &PushFormat::cncf(),
    )
    .await
}

/// Publishes `wasm` in `format` and returns the manifest's URL.
///
/// # Errors
/// [`Error::InvalidReference`] or [`Error::Registry`].
pub async fn push_as(
    wasm: Vec<u8>,
    reference: &str,
    auth: &RegistryAuth,
    insecure_registries: &[String],
    format: &PushFormat,
) -> Result<String> {
    let parsed = parse(reference)?;
    let layer_digest = sha256(&wasm);
    let config = serde_json::json!({
        "created": chrono::Utc::now().to_rfc3339(),
        "architecture": "wasm",
        "os": "wasip1",
        "layerDigests": [layer_digest],
    });
    let config = Config::new(
        config.to_string().into_bytes(),
        format.config_media_type.clone(),
        None,
    );
    let layer = ImageLayer::new(wasm, format.layer_media_type.clone(), None);
    let response = client(insecure_registries)
        .push(&parsed, &[layer], config, auth, None)
        .await
        .map_err(registry_error)?;
    Ok(response.manifest_url)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty store (and the directory it lives in, removed on drop).
    fn store() -> (tempfile::TempDir, Store) {
        // The registry client needs a TLS provider even when it never connects.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let root = tempfile::tempdir().expect("tempdir");
        let store = Store::open(root.path(), &[]).expect("store");
        (root, store)
    }

    /// Writes `data` as a blob of the layout at `dir`; returns its descriptor fields.
    fn blob(dir: &Path, data: &[u8]) -> (String, usize) {
        let digest = sha256(data);
        let path = dir.join("blobs/sha256").join(&digest[7..]);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, data).expect("write");
        (digest, data.len())
    }

    fn manifest(dir: &Path, wasm: &[u8], layer_type: &str) -> (String, usize) {
        let (config, config_size) = blob(dir, b"{}");
        let (layer, layer_size) = blob(dir, wasm);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": { "mediaType": WASM_CONFIG_TYPE, "digest": config, "size": config_size },
            "layers": [{ "mediaType": layer_type, "digest": layer, "size": layer_size }]
        });
        blob(dir, manifest.to_string().as_bytes())
    }

    #[tokio::test]
    async fn an_image_layout_imports_and_the_store_lists_measures_and_removes() {
        let layout = tempfile::tempdir().expect("tempdir");
        let wasm = b"\0asm\x01\0\0\0".to_vec();
        let (app, app_size) = manifest(layout.path(), &wasm, "application/wasm");
        let (container, container_size) = manifest(
            layout.path(),
            b"not wasm",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        );
        // A multi-platform index whose wasm entry is `app`.
        let multi = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": container,
                  "size": container_size, "platform": { "os": "linux", "architecture": "amd64" } },
                { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": app,
                  "size": app_size, "platform": { "os": "wasip1", "architecture": "wasm" } }
            ]
        });
        let (multi, multi_size) = blob(layout.path(), multi.to_string().as_bytes());
        let entry = |digest: &str, size: usize, media: &str, name: &str| {
            serde_json::json!({ "mediaType": media, "digest": digest, "size": size,
                "annotations": { "org.opencontainers.image.ref.name": name } })
        };
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [
                entry(&app, app_size, "application/vnd.oci.image.manifest.v1+json", "example.com/app:v1"),
                entry(&multi, multi_size, "application/vnd.oci.image.index.v1+json", "example.com/multi:v1"),
                entry(&app, app_size, "application/vnd.oci.image.manifest.v1+json", "v1"),
            ]
        });
        std::fs::write(layout.path().join("index.json"), index.to_string()).expect("index");

        let store = store();
        let store = &store.1;
        let imported = store.import_layout(layout.path()).await.expect("import");
        let names: Vec<&str> = imported.iter().map(|i| i.reference.as_str()).collect();
        assert_eq!(names, ["example.com/app:v1", "example.com/multi:v1"]);
        assert_eq!(imported[0].image_id, format!("example.com/app@{app}"));
        assert_eq!(imported[1].image_id, format!("example.com/multi@{multi}"));
        assert_eq!(imported[1].module_digest, sha256(&wasm));
        let cached = store.cached("example.com/multi:v1").await.expect("cached");
        assert_eq!(cached.map(|i| i.module_digest), Some(sha256(&wasm)));
        assert_eq!(
            store.module(&sha256(&wasm)).await.expect("module").as_ref(),
            wasm.as_slice()
        );
        assert_eq!(store.images().await.len(), 2);
        assert_eq!(store.usage().await, wasm.len() as u64);

        assert_eq!(
            store.remove(&sha256(&wasm)).await.expect("remove"),
            wasm.len() as u64
        );
        assert!(store.images().await.is_empty());
        assert_eq!(store.usage().await, 0);
        assert!(
            store
                .cached("example.com/app:v1")
                .await
                .expect("cached")
                .is_none()
        );
    }

    #[test]
    fn a_write_a_crash_interrupted_is_dropped_when_the_store_opens() {
        let root = tempfile::tempdir().expect("tempdir");
        let _ = rustls::crypto::ring::default_provider().install_default();
        drop(Store::open(root.path(), &[]).expect("store"));
        let torn = root.path().join("blobs/sha256/abc.tmp42");
        std::fs::write(&torn, b"half").expect("write");
        let kept = root.path().join("blobs/sha256/def");
        std::fs::write(&kept, b"whole").expect("write");
        drop(Store::open(root.path(), &[]).expect("store"));
        assert!(!torn.exists());
        assert!(kept.exists());
    }

    #[tokio::test]
    async fn a_layout_entry_that_is_not_wasm_is_refused() {
        let layout = tempfile::tempdir().expect("tempdir");
        let (container, size) = manifest(
            layout.path(),
            b"layer",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        );
        let index = serde_json::json!({ "schemaVersion": 2, "manifests": [
            { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": container, "size": size,
              "annotations": { "org.opencontainers.image.ref.name": "example.com/nginx:1" } }
        ]});
        std::fs::write(layout.path().join("index.json"), index.to_string()).expect("index");
        let store = store();
        let store = &store.1;
        let err = store
            .import_layout(layout.path())
            .await
            .expect_err("not wasm");
        assert!(
            err.to_string().contains("is not a wasm artifact: its layers are [\"application/vnd.oci.image.layer.v1.tar+gzip\"]"),
            "{err}"
        );
    }
}
