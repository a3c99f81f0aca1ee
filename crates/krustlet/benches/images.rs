//! Pull and compile times of wasm modules by size, for the node's image path.
//!
//! Run with `hack/bench images` (or `cargo bench -p krustlet --bench images`). It starts
//! a registry of its own (Debian's `docker-registry`, on 127.0.0.1:15090), generates
//! WASI command modules of about 1 MiB and 10 MiB of code (many functions of integer
//! arithmetic: compile time grows with code, not with data), pushes each, and measures
//! with the node agent's own crates:
//! - pull: `oci::Store::pull` into an empty store (manifest, download, digest check, write);
//! - compile: `wasi_runtime::Engine::module` with an empty compile cache;
//! - cached: the same on a new engine whose disk cache holds the native code (what a
//!   restarted node or a second pod costs);
//! - peer: the same blob fetched by `curl` from the same registry, so `pull / curl` is
//!   our overhead over the bare transfer.
//!
//! Each figure is the median of `RUNS` runs.

use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RUNS: usize = 3;
const REGISTRY: &str = "127.0.0.1:15090";

/// A WASI command module of about `target` bytes of code.
fn module(target: usize) -> Vec<u8> {
    // Measure what one function weighs, then write as many as fit.
    let per_function = (module_of(11).len() - module_of(1).len()) / 10;
    module_of(target.div_ceil(per_function))
}

/// A WASI command module of `functions` functions of arithmetic, all called by `_start`.
fn module_of(functions: usize) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut wat = String::from(
        "(module\n (import \"wasi_snapshot_preview1\" \"proc_exit\" (func $exit (param i32)))\n (memory (export \"memory\") 1)\n",
    );
    let n = functions;
    // Each function is a chain of arithmetic on its argument.
    for n in 0..functions {
        let _ = writeln!(
            wat,
            " (func $f{n} (param i32) (result i32) (local i32) local.get 0 local.set 1"
        );
        for k in 0..100 {
            let _ = writeln!(
                wat,
                "  local.get 1 i32.const {} i32.mul i32.const {k} i32.xor local.set 1",
                n + k + 1
            );
        }
        wat.push_str("  local.get 1)\n");
    }
    wat.push_str(" (func (export \"_start\") i32.const 0");
    for i in 0..n {
        let _ = write!(wat, " call $f{i}");
    }
    wat.push_str(" drop))\n");
    wat::parse_str(&wat).expect("generated module is valid")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The registry process and its storage, removed when dropped.
struct Registry(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn registry() -> Registry {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {REGISTRY}\n  secret: bench\n",
            dir.path().join("data").display()
        ),
    )
    .expect("config");
    let registry = Registry(
        Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .spawn()
            .expect("docker-registry (hack/build-tools installs it)"),
        dir,
    );
    for _ in 0..100 {
        if std::net::TcpStream::connect(REGISTRY).is_ok() {
            return registry;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("registry did not start");
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _registry = registry();
    let insecure = [REGISTRY.to_owned()];
    println!(
        "| module | size | pull (empty store) | curl GET of the blob | pull / curl | compile (empty cache) | load from compile cache | compile / load |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (label, target) in [("1 MiB", 1 << 20), ("10 MiB", 10 << 20)] {
        let wasm = module(target);
        let size = wasm.len();
        let reference = format!("{REGISTRY}/bench/module:{}", label.replace(' ', ""));
        oci::push(
            wasm.clone(),
            &reference,
            &oci::RegistryAuth::Anonymous,
            &insecure,
        )
        .await
        .expect("push");
        let (mut pulls, mut curls, mut compiles, mut loads) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let store_dir = tempfile::tempdir().expect("tempdir");
            let store = oci::Store::open(store_dir.path(), &insecure).expect("store");
            let began = Instant::now();
            let (image, downloaded) = store
                .pull(&reference, &oci::RegistryAuth::Anonymous)
                .await
                .expect("pull");
            pulls.push(began.elapsed());
            assert!(downloaded);
            let url = format!(
                "http://{REGISTRY}/v2/bench/module/blobs/{}",
                image.module_digest
            );
            let began = Instant::now();
            let ok = Command::new("curl")
                .args(["-sf", "-o", "/dev/null", &url])
                .status()
                .expect("curl");
            curls.push(began.elapsed());
            assert!(ok.success());
            let bytes: Arc<[u8]> = store
                .module(image.module_digest.as_str())
                .await
                .expect("module");
            let cache = tempfile::tempdir().expect("tempdir");
            let config = wasi_runtime::EngineConfig {
                cache_dir: Some(cache.path().to_owned()),
                ..wasi_runtime::EngineConfig::default()
            };
            let engine = wasi_runtime::Engine::new(&config).expect("engine");
            let began = Instant::now();
            engine
                .module(image.module_digest.as_str(), bytes.clone())
                .await
                .expect("compile");
            compiles.push(began.elapsed());
            assert_eq!(engine.stats().compiles, 1);
            let again = wasi_runtime::Engine::new(&config).expect("engine");
            let began = Instant::now();
            again
                .module(image.module_digest.as_str(), bytes)
                .await
                .expect("load");
            loads.push(began.elapsed());
            assert_eq!(again.stats().cache_loads, 1);
        }
        let (pull, curl) = (median(pulls), median(curls));
        let (compile, load) = (median(compiles), median(loads));
        println!(
            "| {label} | {:.2} MiB | {:.3} s | {:.3} s | {:.1}x | {:.3} s | {:.3} s | {:.0}x |",
            size as f64 / f64::from(1 << 20),
            pull.as_secs_f64(),
            curl.as_secs_f64(),
            pull.as_secs_f64() / curl.as_secs_f64(),
            compile.as_secs_f64(),
            load.as_secs_f64(),
            compile.as_secs_f64() / load.as_secs_f64(),
        );
    }
}
