//! Importing images from an OCI image layout on disk (`index.json` + `blobs/`).

use std::path::{Path, PathBuf};

use oci_client::manifest::{OciImageIndex, OciManifest};
use tokio::io::AsyncReadExt;

use crate::digest::Digest;
use crate::registry::{BlobSink, TempFile, declared_size, parse, parse_manifest, wasm_platform};
use crate::store::{Image, Store, no_wasm_platform, wasm_layer};
use crate::{Error, Result, io};

/// Where blob `digest` lives in the layout at `dir`.
fn layout_blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs").join(digest.relative_path())
}

/// A small file (a manifest, `index.json`) read whole, refused beyond `limit` bytes.
async fn read_small(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(io(format!("reading {}", path.display())))?;
    let mut data = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut data)
        .await
        .map_err(io(format!("reading {}", path.display())))?;
    if data.len() as u64 > limit {
        return Err(Error::TooLarge {
            what: path.display().to_string(),
            limit,
        });
    }
    Ok(data)
}

/// A manifest blob of the layout at `dir`, verified against its digest.
async fn read_layout_manifest(
    dir: &Path,
    name: &str,
    digest: &str,
    limit: u64,
) -> Result<OciManifest> {
    let digest = Digest::parse(digest)?;
    let data = read_small(&layout_blob_path(dir, &digest), limit).await?;
    if Digest::of(digest.algorithm(), &data) != digest {
        return Err(Error::DigestMismatch {
            digest: digest.to_string(),
        });
    }
    parse_manifest(name, &data, limit)
}

impl Store {
    /// Imports every image of the OCI image layout at `dir` whose index entry names a
    /// full reference (annotation `org.opencontainers.image.ref.name` or
    /// `io.containerd.image.name`, e.g. `registry.example/app:v1`), so that it runs
    /// without a registry (`imagePullPolicy: Never` or `IfNotPresent`). Entries named by
    /// a bare tag are skipped with a warning. Content is verified against its digest and
    /// held to the store's size limits.
    ///
    /// # Errors
    /// [`Error::Io`] when `index.json` cannot be read, [`Error::Registry`] when it does
    /// not parse; a bad entry is an error too ([`Error::NotWasm`],
    /// [`Error::InvalidDigest`], [`Error::TooLarge`], [`Error::SizeMismatch`],
    /// [`Error::DigestMismatch`]).
    pub async fn import_layout(&self, dir: &Path) -> Result<Vec<Image>> {
        let limit = self.config().max_manifest_size;
        let index_path = dir.join("index.json");
        let index: OciImageIndex =
            serde_json::from_slice(&read_small(&index_path, limit).await?)
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
            let entry_digest = Digest::parse(&entry.digest)?;
            let mut manifest = read_layout_manifest(dir, name, &entry.digest, limit).await?;
            if let OciManifest::ImageIndex(inner) = &manifest {
                let wasm = wasm_platform(&inner.manifests)
                    .ok_or_else(|| no_wasm_platform(name, &inner.manifests))?;
                manifest = read_layout_manifest(dir, name, &wasm, limit).await?;
            }
            let OciManifest::Image(manifest) = manifest else {
                return Err(Error::Registry(format!("{name}: nested image indexes")));
            };
            let layer = wasm_layer(name, &manifest)?;
            let digest = Digest::parse(&layer.digest)?;
            let what = format!("layer {digest} of {name}");
            let size = declared_size(&what, layer.size, self.config().max_blob_size)?;
            self.copy_layout_blob(dir, &digest, size, &what).await?;
            let image = Image {
                reference: parsed.whole(),
                image_id: format!(
                    "{}/{}@{}",
                    parsed.resolve_registry(),
                    parsed.repository(),
                    entry_digest
                ),
                module_digest: digest,
                size,
                credentials: Vec::new(),
            };
            self.record(&parsed, &image).await?;
            imported.push(image);
        }
        Ok(imported)
    }

    /// Copies blob `digest` of the layout at `dir` into the store through a temporary
    /// file, accepting exactly `size` bytes that hash to `digest`.
    async fn copy_layout_blob(
        &self,
        dir: &Path,
        digest: &Digest,
        size: u64,
        what: &str,
    ) -> Result<()> {
        let source = layout_blob_path(dir, digest);
        let file = tokio::fs::File::open(&source)
            .await
            .map_err(io(format!("reading {}", source.display())))?;
        let (temp, out) = TempFile::create(&self.tmp_dir()).await?;
        let mut sink = BlobSink::new(out, digest, size);
        let copied = tokio::io::copy(&mut file.take(size.saturating_add(1)), &mut sink).await;
        if sink.overflowed() {
            return Err(Error::SizeMismatch {
                what: what.to_owned(),
                declared: size,
            });
        }
        copied.map_err(io(format!("copying {}", source.display())))?;
        sink.finish(what, digest, size).await?;
        temp.persist(&self.blob_path(digest)).await
    }
}
