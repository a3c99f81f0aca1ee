//! Writing a `.wasm` file into an OCI image layout directory (`oci-layout`,
//! `index.json`, `blobs/`), as a CNCF Wasm OCI artifact named by its full reference: the
//! way to carry images to a node without a registry (`--image-layout-dir`).

use std::path::Path;

use crate::digest::{Algorithm, Digest};
use crate::{Result, WASM_CONFIG_TYPE, io};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// Adds `wasm` to the layout at `dir` (created if missing) under `reference` (a full
/// reference such as `example.com/app:v1`), replacing an entry of that name; returns
/// the manifest's digest.
///
/// # Errors
/// [`crate::Error::InvalidReference`] for a reference without a registry and
/// repository, [`crate::Error::Io`] when the layout cannot be written or its
/// `index.json` read, [`crate::Error::Registry`] when that does not parse.
pub fn write_layout(wasm: &[u8], reference: &str, dir: &Path) -> Result<String> {
    crate::registry::parse(reference)?;
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(io(format!("creating {}", blobs.display())))?;
    let put = |data: &[u8]| -> Result<(String, usize)> {
        let digest = Digest::of(Algorithm::Sha256, data);
        let path = dir.join("blobs").join(digest.relative_path());
        std::fs::write(&path, data).map_err(io(format!("writing {}", path.display())))?;
        Ok((digest.to_string(), data.len()))
    };
    let (layer, layer_size) = put(wasm)?;
    let config = serde_json::json!({
        "architecture": "wasm",
        "os": "wasip1",
        "layerDigests": [layer],
    });
    let (config, config_size) = put(config.to_string().as_bytes())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": { "mediaType": WASM_CONFIG_TYPE, "digest": config, "size": config_size },
        "layers": [{ "mediaType": "application/wasm", "digest": layer, "size": layer_size }],
    });
    let (manifest, manifest_size) = put(manifest.to_string().as_bytes())?;
    let oci_layout = dir.join("oci-layout");
    std::fs::write(&oci_layout, br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(io(format!("writing {}", oci_layout.display())))?;
    let index_path = dir.join("index.json");
    let mut index = match std::fs::read(&index_path) {
        Ok(data) => serde_json::from_slice::<serde_json::Value>(&data)
            .map_err(|e| crate::Error::Registry(format!("{}: {e}", index_path.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            serde_json::json!({ "schemaVersion": 2, "manifests": [] })
        }
        Err(e) => return Err(io(format!("reading {}", index_path.display()))(e)),
    };
    let mut entries: Vec<serde_json::Value> = index["manifests"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m["annotations"][REF_NAME].as_str() != Some(reference))
        .collect();
    entries.push(serde_json::json!({
        "mediaType": MANIFEST_TYPE,
        "digest": manifest,
        "size": manifest_size,
        "annotations": { REF_NAME: reference },
    }));
    index["manifests"] = entries.into();
    std::fs::write(&index_path, index.to_string())
        .map_err(io(format!("writing {}", index_path.display())))?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_written_layout_imports_and_a_rewrite_replaces_the_entry() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let base = tempfile::tempdir().expect("tempdir");
        let layout = base.path().join("layout");
        let store = crate::Store::open(&base.path().join("store"), &[]).expect("store");
        write_layout(b"\0asm\x01\0\0\0", "example.com/a:v1", &layout).expect("written");
        write_layout(b"\0asm\x01\0\0\0", "example.com/b:v1", &layout).expect("written");
        let second =
            write_layout(b"\0asm\x01\0\0\0\0", "example.com/a:v1", &layout).expect("rewritten");
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index"))
                .expect("json");
        assert_eq!(index["manifests"].as_array().map(Vec::len), Some(2));
        let mut imported = store.import_layout(&layout).await.expect("imports");
        imported.sort_by(|a, b| a.reference.cmp(&b.reference));
        assert_eq!(imported.len(), 2);
        assert_eq!(imported[0].reference, "example.com/a:v1");
        assert!(
            imported[0].image_id.ends_with(&second),
            "{}",
            imported[0].image_id
        );
        assert_eq!(imported[0].size, 9);
        assert!(write_layout(b"", "no registry", &layout).is_err());
    }
}
