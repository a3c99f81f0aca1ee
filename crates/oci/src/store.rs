//! The on-disk image store and the registry client behind it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
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
}

/// Content-addressed store of wasm artifacts under one directory:
/// `blobs/sha256/<hex>` for content, `refs/<escaped reference>.json` for what each
/// reference resolved to last.
pub struct Store {
    root: PathBuf,
    client: Client,
    /// One lock per reference, so concurrent pulls of one image download it once.
    pulls: Mutex<HashMap<String, Arc<Mutex<()>>>>,
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
        ..ClientConfig::default()
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
        Ok(Self {
            root: root.to_owned(),
            client: client(insecure_registries),
            pulls: Mutex::default(),
        })
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
        let (manifest, manifest_digest) = self
            .client
            .pull_image_manifest(&parsed, auth)
            .await
            .map_err(registry_error)?;
        let layer = manifest
            .layers
            .iter()
            .find(|l| WASM_LAYER_TYPES.contains(&l.media_type.as_str()))
            .ok_or_else(|| Error::NotWasm {
                reference: reference.to_owned(),
                media_types: manifest
                    .layers
                    .iter()
                    .map(|l| l.media_type.clone())
                    .collect(),
            })?;
        let path = self.blob_path(&layer.digest);
        let downloaded = !tokio::fs::try_exists(&path).await.unwrap_or(false);
        if downloaded {
            let mut data = Vec::with_capacity(usize::try_from(layer.size).unwrap_or(0));
            self.client
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
        let image = Image {
            reference: parsed.whole(),
            image_id: format!(
                "{}/{}@{}",
                parsed.resolve_registry(),
                parsed.repository(),
                manifest_digest
            ),
            module_digest: layer.digest.clone(),
            size: u64::try_from(layer.size).unwrap_or(0),
        };
        let json = serde_json::to_vec(&image).map_err(|e| Error::Io {
            what: "encoding image record".into(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&self.ref_path(&parsed), &json).await?;
        Ok((image, downloaded))
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
        WASM_CONFIG_TYPE.to_owned(),
        None,
    );
    let layer = ImageLayer::new(wasm, "application/wasm".to_owned(), None);
    let response = client(insecure_registries)
        .push(&parsed, &[layer], config, auth, None)
        .await
        .map_err(registry_error)?;
    Ok(response.manifest_url)
}
