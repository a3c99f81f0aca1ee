//! Publishing a `.wasm` file as a Wasm OCI artifact.

use oci_client::client::{Config, ImageLayer};
use oci_client::secrets::RegistryAuth;

use crate::digest::{Algorithm, Digest};
use crate::registry::{Timeouts, client, parse, registry_error};
use crate::store::StoreConfig;
use crate::{Result, WASM_CONFIG_TYPE};

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
    let layer_digest = Digest::of(Algorithm::Sha256, &wasm).to_string();
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
    let defaults = StoreConfig::default();
    let timeouts = Timeouts {
        connect: defaults.connect_timeout,
        read: defaults.read_timeout,
    };
    let response = client(insecure_registries, timeouts)?
        .push(&parsed, &[layer], config, auth, None)
        .await
        .map_err(registry_error)?;
    Ok(response.manifest_url)
}
