//! The raw runtime and compute benchmarks (issue 6, parts 3 and 6), run with
//! `hack/bench runtime`, which builds krustlet in release mode, installs the `wasmtime` CLI
//! of the same wasmtime release from crates.io into the cache, builds `workloads/hash.c`
//! natively, and sets `KRUSTLET_BIN`, `WASMTIME_BIN` and `HASH_NATIVE`.
//!
//! **Start.** `STARTS` pods of the cached `hello` module, one at a time, on a krustlet node;
//! the node's own metrics (`krustlet_container_start_seconds_total` over
//! `krustlet_container_starts_total`) give the mean time from the runtime's start call to
//! the module's entry point: compiled code from the in-memory cache, WASI context, log file,
//! instantiation. The peer: `wasmtime run` of the same module, precompiled with `wasmtime
//! compile` (its fastest start), `STARTS` times, wall time per process; that includes
//! process creation and running the module's few instructions, which is what starting a
//! module with the CLI costs.
//!
//! **Compute.** `workloads/hash.c` (a hashing loop that times itself with the monotonic
//! clock) run `RUNS` times each as a pod on the krustlet node, by the `wasmtime` CLI, and
//! natively; the medians of its own reported seconds, so compilation, start and the API
//! round trips are out of it and only the code's speed is compared.
//!
//! Prints a table and writes `bench-results/runtime.json`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use e2e::Cluster;
use e2e::bench::{self, BenchPod, hash_seconds, median};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

const NODE: &str = "bench-runtime";
const STARTS: usize = 50;
const RUNS: usize = 5;
const ROUNDS: &str = "8000";

/// Runs the `image` pod `name` with `args` to completion; returns its log.
async fn run_pod(
    pods: &Api<Pod>,
    name: &str,
    image: &str,
    args: &[&str],
) -> anyhow::Result<String> {
    let template = BenchPod {
        args: args.iter().map(|&a| a.to_owned()).collect(),
        completion: true,
        ..BenchPod::new(NODE, image)
    };
    bench::run_to_completion(pods, &template, name, 300).await
}

fn run(program: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "{} {args:?}: {:?}: {}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn env_path(key: &str) -> anyhow::Result<PathBuf> {
    Ok(PathBuf::from(std::env::var(key).with_context(|| {
        format!("{key} is not set: run this with hack/bench runtime")
    })?))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let wasmtime = env_path("WASMTIME_BIN")?;
    let native = env_path("HASH_NATIVE")?;
    let wasm_dir = e2e::root().join("target/wasm");
    let cluster = Cluster::connect().await?;
    let node = cluster.ready_node(NODE, 10402, &[]).await?;
    let pods = cluster.pods();
    let hello = cluster.push("hello", "bench").await?;
    let hash = cluster.push("hash", "bench").await?;

    // Start: our runtime's own accounting, over pods of a module it has compiled already.
    run_pod(&pods, "bench-warm", &hello, &[]).await?;
    let before = node.metrics().await?;
    for i in 0..STARTS {
        run_pod(&pods, &format!("bench-start-{i}"), &hello, &[]).await?;
    }
    let after = node.metrics().await?;
    let delta =
        |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    let starts = delta("krustlet_container_starts_total");
    anyhow::ensure!(
        starts as usize == STARTS,
        "counted {starts} starts, expected {STARTS}"
    );
    let ours_start_ms = delta("krustlet_container_start_seconds_total") / starts * 1000.0;

    // Start: the wasmtime CLI on the precompiled module.
    let scratch = tempfile::tempdir()?;
    let cwasm = scratch.path().join("hello.cwasm");
    let hello_wasm = wasm_dir.join("hello.wasm");
    run(
        &wasmtime,
        &[
            "compile",
            &hello_wasm.to_string_lossy(),
            "-o",
            &cwasm.to_string_lossy(),
        ],
    )?;
    let mut cli_ms = Vec::new();
    for _ in 0..STARTS {
        let t0 = Instant::now();
        run(
            &wasmtime,
            &["run", "--allow-precompiled", &cwasm.to_string_lossy()],
        )?;
        cli_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let cli_start_ms = median(&mut cli_ms);

    // Compute: the same hashing loop as a pod, under the CLI and natively.
    let hash_wasm = wasm_dir.join("hash.wasm");
    let mut expected = None;
    let mut check = |name: &str, out: &str| -> anyhow::Result<f64> {
        let (digest, seconds) = hash_seconds(out)?;
        match &expected {
            None => expected = Some(digest),
            Some(d) if *d != digest => bail!("{name} computed {digest}, others {d}"),
            Some(_) => {}
        }
        Ok(seconds)
    };
    let (mut ours, mut cli, mut nat) = (Vec::new(), Vec::new(), Vec::new());
    // Interleaved, so a change in the machine's load over time touches all three alike.
    for i in 0..RUNS {
        let log = run_pod(&pods, &format!("bench-hash-{i}"), &hash, &[ROUNDS]).await?;
        ours.push(check("the pod", &log)?);
        let out = run(&wasmtime, &["run", &hash_wasm.to_string_lossy(), ROUNDS])?;
        cli.push(check("wasmtime", &out)?);
        nat.push(check("native", &run(&native, &[ROUNDS])?)?);
    }
    let (ours, cli, nat) = (median(&mut ours), median(&mut cli), median(&mut nat));

    println!("| measure | krustlet | wasmtime CLI | native | krustlet / wasmtime |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| start a cached module (ms; ours: mean in-process, CLI: p50 per process) | {ours_start_ms:.2} | {cli_start_ms:.2} | | {:.2}x |",
        ours_start_ms / cli_start_ms
    );
    println!(
        "| hash loop, {ROUNDS} rounds over 1 MiB (s, median of {RUNS}) | {ours:.3} | {cli:.3} | {nat:.3} | {:.2}x |",
        ours / cli
    );
    println!(
        "native / wasmtime CLI: {:.2}x; krustlet / native: {:.2}x",
        nat / cli,
        ours / nat
    );
    let version = run(&wasmtime, &["--version"])?;
    let dir = e2e::root().join("bench-results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("runtime.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "wasmtime_cli": version.trim(),
            "starts": STARTS,
            "krustlet_start_ms_mean": ours_start_ms,
            "wasmtime_cli_start_ms_p50": cli_start_ms,
            "hash_rounds": ROUNDS, "runs": RUNS,
            "krustlet_hash_seconds_median": ours,
            "wasmtime_cli_hash_seconds_median": cli,
            "native_hash_seconds_median": nat,
        }))?,
    )?;
    println!("written: bench-results/runtime.json");
    Ok(())
}
