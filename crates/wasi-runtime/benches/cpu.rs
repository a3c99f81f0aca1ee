//! `hack/bench cpu`: what CPU accounting costs, and how closely CPU limits and requests
//! hold, on the engine itself (no cluster).
//!
//! 1. Accounting cost: the `hash` workload (a compute loop) run with accounting and
//!    without, alternately, five times each: the ratio of the medians of the time the
//!    module measures itself. And the price of one reading of the thread CPU clock
//!    (each poll of guest code takes two).
//! 2. Limit accuracy: for 100m, 250m, 500m and 1000m, two spinning modules with that
//!    limit side by side for `CPU_BENCH_SECONDS` (5): the share each got over the
//!    limit.
//! 3. Competing: a 200m module next to an unlimited one; and two unlimited modules
//!    requesting 100m and 1000m on one guest thread (their CPU ratio; slices 1:10).
//!
//! Writes `bench-results/cpu.json`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasi_runtime::{ContainerSpec, CpuShare, Engine, EngineConfig, Exit, Running};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn spec(
    dir: &tempfile::TempDir,
    name: &str,
    wasm: Arc<[u8]>,
    args: &[&str],
    cpu: CpuShare,
) -> ContainerSpec {
    ContainerSpec {
        request_timeout: None,
        reuse: wasi_runtime::ReuseSpec::default(),
        dns: None,
        pod_id: String::new(),
        module_key: format!("{:x}", wasm.len()),
        wasm,
        args: std::iter::once(name)
            .chain(args.iter().copied())
            .map(str::to_owned)
            .collect(),
        env: Vec::new(),
        log_path: dir.path().join(format!("{name}.log")),
        memory_limit: None,
        preopens: Vec::new(),
        network: None,
        http_port: wasi_runtime::DEFAULT_HTTP_PORT,
        cpu,
        allowed_outbound: None,
    }
}

fn spinner() -> Arc<[u8]> {
    Arc::from(wat::parse_str(r#"(module (func (export "_start") (loop (br 0))))"#).expect("wat"))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// One run of `hash` on `engine`: the seconds it measured itself.
async fn hash_once(engine: &Engine, wasm: &Arc<[u8]>, dir: &tempfile::TempDir, i: usize) -> f64 {
    let name = format!("hash-{i}");
    let run = engine
        .start(spec(
            dir,
            &name,
            wasm.clone(),
            &["2000"],
            CpuShare::default(),
        ))
        .await
        .expect("start");
    assert_eq!(run.wait().await, Exit::Code(0));
    let log = std::fs::read_to_string(dir.path().join(format!("{name}.log"))).expect("log");
    log.split("seconds=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("the hash module prints seconds=")
}

async fn stop(runs: Vec<Running>) {
    for r in &runs {
        r.killer().kill();
    }
    for r in runs {
        let _ = r.wait().await;
    }
}

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::var("CPU_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut json = String::from("{\n");

    // 1. Accounting cost.
    let hash: Arc<[u8]> = Arc::from(
        std::fs::read(root().join("target/wasm/hash.wasm"))
            .expect("target/wasm/hash.wasm (hack/build-wasm)"),
    );
    let on = Engine::new(&EngineConfig::default()).expect("engine");
    let off = Engine::new(&EngineConfig {
        cpu_accounting: false,
        ..EngineConfig::default()
    })
    .expect("engine");
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for i in 0..5 {
        with.push(hash_once(&on, &hash, &dir, 2 * i).await);
        without.push(hash_once(&off, &hash, &dir, 2 * i + 1).await);
    }
    let (with, without) = (median(with), median(without));
    let reads = 1_000_000u32;
    let began = Instant::now();
    for _ in 0..reads {
        std::hint::black_box(rustix::time::clock_gettime(
            rustix::time::ClockId::ThreadCPUTime,
        ));
    }
    let per_read = began.elapsed().as_secs_f64() * 1e9 / f64::from(reads);
    println!(
        "accounting: hash (compute loop) {with:.3} s with, {without:.3} s without: {:.3}x",
        with / without
    );
    println!(
        "accounting: one thread CPU clock reading {per_read:.0} ns (two per poll; a busy module polls every 10 ms)"
    );
    let _ = writeln!(
        json,
        "  \"accounting\": {{\"hash_seconds_with\": {with:.4}, \"hash_seconds_without\": {without:.4}, \"ratio\": {:.4}, \"clock_read_ns\": {per_read:.1}}},",
        with / without
    );

    // 2. Limit accuracy, two modules at each limit.
    let spin = spinner();
    let window = Duration::from_secs(seconds);
    let _ = writeln!(json, "  \"limits\": [");
    println!("limit   share of module 1 / limit   module 2 / limit");
    for (k, millis) in [100u64, 250, 500, 1000].into_iter().enumerate() {
        let cpu = CpuShare {
            limit_millis: Some(millis),
            request_millis: Some(millis),
        };
        let mut runs = Vec::new();
        for m in 0..2 {
            runs.push(
                on.start(spec(
                    &dir,
                    &format!("lim-{millis}-{m}"),
                    spin.clone(),
                    &[],
                    cpu,
                ))
                .await
                .expect("start"),
            );
        }
        let began = Instant::now();
        let before: Vec<Duration> = runs.iter().map(|r| r.meter().usage().cpu).collect();
        tokio::time::sleep(window).await;
        let wall = began.elapsed().as_secs_f64();
        let ratios: Vec<f64> = runs
            .iter()
            .zip(&before)
            .map(|(r, b)| {
                (r.meter().usage().cpu - *b).as_secs_f64() / wall / (millis as f64 / 1000.0)
            })
            .collect();
        stop(runs).await;
        println!("{millis:>5}m  {:>26.3}   {:>16.3}", ratios[0], ratios[1]);
        let _ = writeln!(
            json,
            "    {{\"limit_millis\": {millis}, \"share_over_limit\": [{:.4}, {:.4}]}}{}",
            ratios[0],
            ratios[1],
            if k < 3 { "," } else { "" }
        );
    }
    let _ = writeln!(json, "  ],");

    // 3. Competing: a limited module next to an unlimited one.
    let limited = CpuShare {
        limit_millis: Some(200),
        request_millis: Some(200),
    };
    let runs = vec![
        on.start(spec(&dir, "next-limited", spin.clone(), &[], limited))
            .await
            .expect("start"),
        on.start(spec(
            &dir,
            "next-free",
            spin.clone(),
            &[],
            CpuShare::default(),
        ))
        .await
        .expect("start"),
    ];
    let began = Instant::now();
    tokio::time::sleep(window).await;
    let wall = began.elapsed().as_secs_f64();
    let used: Vec<f64> = runs
        .iter()
        .map(|r| r.meter().usage().cpu.as_secs_f64() / wall)
        .collect();
    stop(runs).await;
    println!(
        "200m next to unlimited: {:.3} cores ({:.3} of the limit); unlimited {:.3} cores",
        used[0],
        used[0] / 0.2,
        used[1]
    );
    // Requests on one contended thread.
    let one = Engine::new(&EngineConfig {
        guest_threads: 1,
        ..EngineConfig::default()
    })
    .expect("engine");
    let request = |m| CpuShare {
        limit_millis: None,
        request_millis: Some(m),
    };
    let runs = vec![
        one.start(spec(&dir, "req-100", spin.clone(), &[], request(100)))
            .await
            .expect("start"),
        one.start(spec(&dir, "req-1000", spin.clone(), &[], request(1000)))
            .await
            .expect("start"),
    ];
    tokio::time::sleep(window).await;
    let (small, large) = (runs[0].meter().usage().cpu, runs[1].meter().usage().cpu);
    stop(runs).await;
    let ratio = large.as_secs_f64() / small.as_secs_f64().max(1e-9);
    println!("requests 1000m against 100m on one thread: {ratio:.2} times the CPU (slices 10:1)");
    let _ = writeln!(
        json,
        "  \"limited_next_to_unlimited\": {{\"limited_cores\": {:.4}, \"unlimited_cores\": {:.4}}},\n  \"requests_1000m_over_100m\": {ratio:.3}\n}}",
        used[0], used[1]
    );
    let out = root().join("bench-results");
    std::fs::create_dir_all(&out).expect("bench-results");
    std::fs::write(out.join("cpu.json"), json).expect("write cpu.json");
    println!("wrote bench-results/cpu.json");
}
