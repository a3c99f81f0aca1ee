//! Guest code cannot starve the caller: CPU-bound modules run on the engine's own
//! threads. A binary of its own, so that its hundreds of spinning modules do not share
//! the machine with the other runtime tests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasi_runtime::{ContainerSpec, Engine, EngineConfig, Exit};

fn spin(dir: &tempfile::TempDir, i: usize) -> ContainerSpec {
    let wasm =
        wat::parse_str(r#"(module (func (export "_start") (loop (br 0))))"#).expect("valid wat");
    ContainerSpec {
        request_timeout: None,
        reuse: wasi_runtime::ReuseSpec::default(),
        dns: None,
        pod_id: String::new(),
        module_key: "spin".to_owned(),
        wasm: Arc::from(wasm),
        args: vec!["spin".to_owned()],
        env: Vec::new(),
        log_path: dir.path().join(format!("spin-{i}.log")),
        memory_limit: None,
        preopens: Vec::new(),
        network: None,
        http_port: wasi_runtime::DEFAULT_HTTP_PORT,
        cpu: wasi_runtime::CpuShare::default(),
        allowed_outbound: None,
    }
}

#[tokio::test]
async fn busy_modules_on_every_core_do_not_starve_the_callers_runtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::new(&EngineConfig::default()).expect("engine");
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    // Enough spinning modules that, sharing the caller's runtime, a round of their
    // time slices (one epoch tick each) would take seconds (it did: gaps above 1 s with
    // half as many).
    let n = (2 * cores).max(512);
    let mut runs = Vec::new();
    for i in 0..n {
        runs.push(e.start(spin(&dir, i)).await.expect("start"));
    }
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    let mut worst = Duration::ZERO;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        tick.tick().await;
        worst = worst.max(last.elapsed());
        last = Instant::now();
    }
    for run in &runs {
        run.killer().kill();
    }
    for run in runs {
        assert_eq!(run.wait().await, Exit::Killed);
    }
    println!("worst gap between ticks: {worst:?}");
    assert!(worst < Duration::from_secs(1), "worst gap {worst:?}");
}
