//! What the runtime's tests with components and namespaces share.

use std::sync::Arc;

use network::NetNs;

/// target/wasm/NAME.component.wasm, built by hack/build-wasm.
pub fn wasm(name: &str) -> Arc<[u8]> {
    let path = format!(
        "{}/../../target/wasm/{name}.component.wasm",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes =
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path} (run hack/build-wasm): {e}"));
    Arc::from(bytes)
}

/// A network namespace of the test's own, pinned in `dir`, with its loopback up (the
/// test reaches servers inside it). Needs root.
pub async fn namespace(dir: &tempfile::TempDir) -> Arc<NetNs> {
    let path = dir.path().join("ns");
    let ns = NetNs::create(&path)
        .await
        .expect("a network namespace (root)");
    let up = std::process::Command::new("nsenter")
        .arg(format!("--net={}", path.display()))
        .args(["ip", "link", "set", "lo", "up"])
        .status()
        .expect("nsenter");
    assert!(up.success());
    Arc::new(ns)
}
