//! Image records: `refs/<sha256 of the normalised reference>.json`, one per reference,
//! checked against the reference on every read; records of the earlier naming scheme are
//! migrated when the store opens.

use std::path::{Path, PathBuf};

use oci_client::Reference;

use crate::digest::{Algorithm, Digest};
use crate::registry::{TempFile, parse};
use crate::store::{Image, Store};
use crate::{Error, Result, io};

/// The name of a reference's record: the SHA-256 of the normalised reference, so two
/// distinct references never share one.
pub(crate) fn ref_key(reference: &Reference) -> String {
    Digest::of(Algorithm::Sha256, reference.whole().as_bytes())
        .hex()
        .to_owned()
}

pub(crate) fn is_ref_key(stem: &str) -> bool {
    stem.len() == 64
        && stem
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Store {
    /// Moves each record of the earlier naming scheme to the name of the reference it
    /// holds, unless that reference already has a record; drops unreadable ones.
    pub(crate) fn migrate_records(&self) {
        let Ok(entries) = std::fs::read_dir(self.root.join("refs")) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if is_ref_key(stem) || path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let image = std::fs::read(&path)
                .ok()
                .and_then(|json| serde_json::from_slice::<Image>(&json).ok());
            let target = image.as_ref().and_then(|image| {
                let parsed = parse(&image.reference).ok()?;
                (parsed.whole() == image.reference).then(|| self.ref_path(&parsed))
            });
            if let Some(target) = target
                && !target.exists()
            {
                tracing::info!(from = %path.display(), to = %target.display(), "image record migrated");
                if let Err(e) = std::fs::rename(&path, &target) {
                    tracing::warn!(path = %path.display(), "cannot migrate image record: {e}");
                }
            }
            let _ = std::fs::remove_file(&path);
        }
    }

    pub(crate) fn ref_path(&self, reference: &Reference) -> PathBuf {
        self.root
            .join("refs")
            .join(format!("{}.json", ref_key(reference)))
    }

    /// The record at `path`, if it parses.
    async fn read_record(path: &Path) -> Option<Image> {
        let json = tokio::fs::read(path).await.ok()?;
        serde_json::from_slice::<Image>(&json).ok()
    }

    /// `image` if it is `reference`'s record and its content is present.
    async fn usable(&self, image: Image, reference: &Reference) -> Option<Image> {
        if image.reference != reference.whole() {
            return None;
        }
        let present = tokio::fs::try_exists(self.blob_path(&image.module_digest))
            .await
            .unwrap_or(false);
        present.then_some(image)
    }

    /// What `reference` resolved to when last pulled, if its content is still present.
    ///
    /// # Errors
    /// [`Error::InvalidReference`] when the reference does not parse.
    pub async fn cached(&self, reference: &str) -> Result<Option<Image>> {
        let parsed = parse(reference)?;
        let Some(image) = Self::read_record(&self.ref_path(&parsed)).await else {
            return Ok(None);
        };
        Ok(self.usable(image, &parsed).await)
    }

    /// Every image the store holds: the last record of each reference whose content is
    /// present.
    pub async fn images(&self) -> Vec<Image> {
        let mut out = Vec::new();
        let Ok(mut dir) = tokio::fs::read_dir(self.root.join("refs")).await else {
            return out;
        };
        while let Ok(Some(entry)) = dir.next_entry().await {
            let path = entry.path();
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if !is_ref_key(stem) || path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Some(image) = Self::read_record(&path).await else {
                continue;
            };
            // Only a record under its own reference's name counts.
            let Ok(parsed) = parse(&image.reference) else {
                continue;
            };
            if ref_key(&parsed) == stem
                && let Some(image) = self.usable(image, &parsed).await
            {
                out.push(image);
            }
        }
        out
    }

    /// Writes `image` as the record of `reference` (through a temporary file and a
    /// rename, so a crash never leaves a torn record).
    pub(crate) async fn record(&self, reference: &Reference, image: &Image) -> Result<()> {
        let json = serde_json::to_vec(image).map_err(|e| Error::Io {
            what: "encoding image record".into(),
            source: std::io::Error::other(e),
        })?;
        let (temp, mut file) = TempFile::create(&self.tmp_dir()).await?;
        tokio::io::AsyncWriteExt::write_all(&mut file, &json)
            .await
            .map_err(io("writing an image record"))?;
        file.sync_all()
            .await
            .map_err(io("writing an image record"))?;
        temp.persist(&self.ref_path(reference)).await
    }
}
