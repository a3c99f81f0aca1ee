//! Wasm artifacts in OCI registries: pulling into a content-addressed store, pushing.
//!
//! The crate knows nothing of Kubernetes. [`Store::pull`] resolves a reference, checks that
//! the artifact holds a wasm layer, downloads it, verifies it against its digest and keeps
//! it under `blobs/<algorithm>/<hex>`; [`push`] publishes a `.wasm` file as a Wasm OCI
//! artifact. Everything a registry or a layout sends is untrusted: digests are parsed
//! ([`Digest`]) before they name a file, sizes and times are bounded ([`StoreConfig`]).

mod digest;
mod layout;
mod layout_write;
mod push;
mod records;
mod registry;
mod session;
mod store;

#[cfg(test)]
#[allow(dead_code, missing_docs)]
#[path = "../../../tests/support/hostile.rs"]
mod hostile;
#[cfg(test)]
mod hostile_bodies_tests;
#[cfg(test)]
mod hostile_tests;

pub use digest::{Algorithm, Digest, Hasher};
pub use layout_write::write_layout;
pub use oci_client::secrets::RegistryAuth;
pub use push::{PushFormat, push, push_as};
pub use store::{Image, Store, StoreConfig, StoreStats, credential_id};

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
    /// A digest (from a manifest, an index, a layout or a caller) is not
    /// `<algorithm>:<hex>` of a known algorithm; it never reaches the file system.
    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest {
        /// The digest as given (its first characters when long).
        digest: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Content (a manifest or a layer) is larger than the store accepts.
    #[error("{what} is larger than the limit of {limit} bytes")]
    TooLarge {
        /// What was refused, with its declared size when known.
        what: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// A registry sent a different number of bytes than the descriptor declared.
    #[error("{what} does not have its declared size of {declared} bytes")]
    SizeMismatch {
        /// What was refused.
        what: String,
        /// The size the descriptor declared.
        declared: u64,
    },
    /// A registry did not answer in time.
    #[error("{what} timed out after {}s", after.as_secs())]
    Timeout {
        /// What was being done.
        what: String,
        /// The bound that was reached.
        after: std::time::Duration,
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
