//! CPU accounting, limits and requests of running modules, and their working set.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasi_runtime::{ContainerSpec, CpuShare, Engine, EngineConfig, Exit, Running};

/// One test at a time: each measures shares of the machine's CPU, which the others'
/// spinning modules would take.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A module that spins forever, with a linear memory of `pages` 64 KiB pages.
fn spin(dir: &tempfile::TempDir, name: &str, pages: u32, cpu: CpuShare) -> ContainerSpec {
    let wat = format!(r#"(module (memory {pages}) (func (export "_start") (loop (br 0))))"#);
    ContainerSpec {
        request_timeout: None,
        reuse: wasi_runtime::ReuseSpec::default(),
        dns: None,
        pod_id: String::new(),
        module_key: format!("spin-{pages}"),
        wasm: Arc::from(wat::parse_str(wat).expect("valid wat")),
        args: vec![name.to_owned()],
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

fn limit(millis: u64) -> CpuShare {
    CpuShare {
        limit_millis: Some(millis),
        request_millis: None,
    }
}

fn request(millis: u64) -> CpuShare {
    CpuShare {
        limit_millis: None,
        request_millis: Some(millis),
    }
}

async fn stop(runs: Vec<Running>) {
    for run in &runs {
        run.killer().kill();
    }
    for run in runs {
        let exit = tokio::time::timeout(Duration::from_secs(30), run.wait())
            .await
            .expect("a kill ends the run, throttled or not");
        assert_eq!(exit, Exit::Killed);
    }
}

#[tokio::test]
async fn a_limited_module_gets_its_limit_and_an_unlimited_one_more() {
    let _alone = ALONE.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::new(&EngineConfig::default()).expect("engine");
    let limited = e
        .start(spin(&dir, "limited", 1, limit(200)))
        .await
        .expect("start");
    let free = e
        .start(spin(&dir, "free", 1, CpuShare::default()))
        .await
        .expect("start");
    let began = Instant::now();
    // At least 2 s, and on until the limit has held the module back in 5 periods for
    // 400 ms in all: a machine busy with other tests gives it less to hold back. Bounded.
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let l = limited.meter().usage();
        let held = l.throttled_periods >= 5 && l.throttled >= Duration::from_millis(400);
        let elapsed = began.elapsed();
        if (held && elapsed >= Duration::from_secs(2)) || elapsed >= Duration::from_secs(60) {
            break;
        }
    }
    let wall = began.elapsed();
    let (l, f) = (limited.meter().usage(), free.meter().usage());
    stop(vec![limited, free]).await;
    println!("limited {l:?}\nfree {f:?}\nin {wall:?}");
    // 200m over the wall time (as many periods as it had, plus one).
    let most = wall.mul_f64(0.2) + wasi_runtime::CPU_PERIOD;
    assert!(l.cpu <= most, "{:?} beyond 200m of {wall:?}", l.cpu);
    // Held back in most periods, for most of each.
    assert!(l.throttled_periods >= 5, "{l:?}");
    assert!(l.throttled >= Duration::from_millis(400), "{l:?}");
    assert!(l.periods >= l.throttled_periods, "{l:?}");
    // Not starved either (generous: the machine may be busy with other tests).
    assert!(l.cpu >= Duration::from_millis(40), "{l:?}");
    assert!(f.cpu > l.cpu, "unlimited {f:?} against limited {l:?}");
    assert_eq!((f.periods, f.throttled_periods), (0, 0));
}

#[tokio::test]
async fn contended_modules_share_a_thread_by_their_requests() {
    let _alone = ALONE.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::new(&EngineConfig {
        guest_threads: 1,
        ..EngineConfig::default()
    })
    .expect("engine");
    let small = e
        .start(spin(&dir, "small", 1, request(100)))
        .await
        .expect("start");
    let large = e
        .start(spin(&dir, "large", 1, request(500)))
        .await
        .expect("start");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (s, l) = (small.meter().usage(), large.meter().usage());
    stop(vec![small, large]).await;
    let ratio = l.cpu.as_secs_f64() / s.cpu.as_secs_f64().max(1e-9);
    println!("500m {:?}, 100m {:?}: {ratio:.2}", l.cpu, s.cpu);
    // Slices of 5 ticks against 1: about 5 to 1 (generous bound).
    assert!(ratio > 2.5, "500m got {ratio:.2} times what 100m got");
}

#[tokio::test]
async fn the_working_set_counts_linear_memory_and_code() {
    let _alone = ALONE.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::new(&EngineConfig::default()).expect("engine");
    let run = e
        .start(spin(&dir, "mem", 160, CpuShare::default()))
        .await
        .expect("start");
    let meter = run.meter();
    // Instantiation is on its way: wait for the memory to be there.
    let deadline = Instant::now() + Duration::from_secs(30);
    while meter.usage().memory_bytes < 160 * 65536 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let u = meter.usage();
    stop(vec![run]).await;
    assert!(
        u.memory_bytes > 160 * 65536,
        "{u:?}: 10 MiB of memory and some code"
    );
    assert!(u.memory_bytes < 161 * 65536 + (16 << 20), "{u:?}");
    // The store is gone: only the code is left counted.
    let after = meter.usage().memory_bytes;
    assert!(after < 65536 * 16, "{after} bytes left after the run");
    assert!(after > 0);
}
