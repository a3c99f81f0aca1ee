//! Engine settings for the tests that serve components built with a language runtime.

/// The default engine settings with compiled code kept on disk under target/, so that
/// the tests that each make an engine for a 20 MB component (a CPython inside) compile
/// it once between them.
pub fn engine_config() -> wasi_runtime::EngineConfig {
    wasi_runtime::EngineConfig {
        cache_dir: Some(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-compiled"),
        ),
        ..wasi_runtime::EngineConfig::default()
    }
}
