//! Wasm artifacts in OCI registries: pulling into a content-addressed store, pushing.
//!
//! The crate knows nothing of Kubernetes. [`Store::pull`] resolves a reference, checks that
//! the artifact holds a wasm layer, downloads it, verifies it against its digest and keeps
//! it under `blobs/sha256/<hex>`; [`push`] publishes a `.wasm` file as a Wasm OCI artifact.

mod store;

pub use oci_client::secrets::RegistryAuth;
pub use store::{Image, PushFormat, Store, StoreStats, credential_id, push, push_as};

/// Layer media types that hold a wasm module or component.
pub const WASM_LAYER_TYPES: &[&str] = &[
    "application/wasm",
    "application/vnd.wasm.content.layer.v1+wasm",
    "application/vnd.module.wasm.content.layer.v1+wasm",
];

/// Config media type of the CNCF Wasm OCI artifact layout.
pub const WASM_CONFIG_TYPE: &str = "application/vnd.wasm.config.v0+json";

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image reference does not parse.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The registry refused or failed the request (not found, unauthorized, unreachable).
    #[error("{0}")]
    Registry(String),
    /// The artifact exists but holds no wasm (for example a container image).
    #[error("image {reference} is not a wasm artifact: {found}")]
    NotWasm {
        /// The reference as given.
        reference: String,
        /// What it holds instead (layer media types, index platforms).
        found: String,
    },
    /// Downloaded content does not match its digest.
    #[error("content of {digest} does not match its digest")]
    DigestMismatch {
        /// The expected digest.
        digest: String,
    },
    /// The store on disk could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
