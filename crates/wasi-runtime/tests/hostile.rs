//! Modules that attack the node: start functions that never return, slow or huge
//! compilations, memories and tables beyond the limit, descriptor floods (CPU hogs are in
//! `starvation.rs`, a binary of their own, so that they do not slow these tests down).

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasi_runtime::{ContainerSpec, Engine, EngineConfig, Exit, Preopen, StoreCaps};

const WASI: &str = r#"
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $path_open
    (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
"#;

fn spec_of(dir: &tempfile::TempDir, key: &str, wasm: Vec<u8>, limit: Option<u64>) -> ContainerSpec {
    ContainerSpec {
        request_timeout: None,
        reuse: wasi_runtime::ReuseSpec::default(),
        dns: None,
        pod_id: String::new(),
        module_key: key.to_owned(),
        wasm: Arc::from(wasm),
        args: vec!["prog".to_owned()],
        env: Vec::new(),
        log_path: dir.path().join(format!("{key}.log")),
        memory_limit: limit,
        preopens: Vec::new(),
        network: None,
        http_port: wasi_runtime::DEFAULT_HTTP_PORT,
        cpu: wasi_runtime::CpuShare::default(),
        allowed_outbound: None,
    }
}

fn spec(dir: &tempfile::TempDir, key: &str, body: &str, limit: Option<u64>) -> ContainerSpec {
    let wasm = wat::parse_str(format!("(module {WASI} {body})")).expect("valid wat");
    spec_of(dir, key, wasm, limit)
}

fn engine() -> Engine {
    Engine::new(&EngineConfig::default()).expect("engine")
}

/// Kills `run` after it had time to get stuck; asserts it ends as killed, promptly.
async fn kill_and_expect_prompt_end(run: wasi_runtime::Running) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = Instant::now();
    run.killer().kill();
    let exit = tokio::time::timeout(Duration::from_secs(60), run.wait())
        .await
        .expect("killed in time");
    assert_eq!(exit, Exit::Killed);
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
}

#[tokio::test]
async fn a_module_looping_in_its_start_function_is_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = r#"(func $spin (loop (br 0))) (start $spin) (func (export "_start"))"#;
    let run = tokio::time::timeout(
        Duration::from_secs(60),
        engine().start(spec(&dir, "s", body, None)),
    )
    .await
    .expect("start returns while the start function still runs")
    .expect("start");
    kill_and_expect_prompt_end(run).await;
}

#[tokio::test]
async fn a_component_looping_in_a_core_start_function_is_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = wat::parse_str(
        r#"(component
            (core module $m
              (func $spin (loop (br 0)))
              (start $spin)
              (func (export "run") (result i32) i32.const 0))
            (core instance $i (instantiate $m))
            (func $run (result (result)) (canon lift (core func $i "run")))
            (instance $cli (export "run" (func $run)))
            (export "wasi:cli/run@0.2.0" (instance $cli)))"#,
    )
    .expect("valid component");
    let run = tokio::time::timeout(
        Duration::from_secs(60),
        engine().start(spec_of(&dir, "c", wasm, None)),
    )
    .await
    .expect("start returns while the start function still runs")
    .expect("start");
    kill_and_expect_prompt_end(run).await;
}

fn leb(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn section(id: u8, content: &[u8], out: &mut Vec<u8>) {
    out.push(id);
    leb(content.len() as u64, out);
    out.extend_from_slice(content);
}

/// A valid module that takes a while to compile: an empty `_start` and `functions`
/// functions of long straight-line arithmetic (encoded directly: parsing that much
/// text would take longer than compiling it).
fn slow_module(functions: u32, salt: u32) -> Vec<u8> {
    let mut body = vec![0x00, 0x20, 0x00]; // no locals; local.get 0
    for i in 0..2_000u64 {
        body.push(0x41); // i32.const
        leb(i + u64::from(salt), &mut body);
        body.push(0x6c); // i32.mul
        body.push(0x41);
        leb(i, &mut body);
        body.push(0x73); // i32.xor
    }
    body.push(0x0b);
    let mut wasm = b"\0asm\x01\0\0\0".to_vec();
    // Types: 0 = [] -> [], 1 = [i32] -> [i32].
    section(1, &[2, 0x60, 0, 0, 0x60, 1, 0x7f, 1, 0x7f], &mut wasm);
    let mut funcs = Vec::new();
    leb(u64::from(functions) + 1, &mut funcs);
    funcs.push(0);
    funcs.extend(std::iter::repeat_n(1, functions as usize));
    section(3, &funcs, &mut wasm);
    section(7, b"\x01\x06_start\x00\x00", &mut wasm);
    let mut code = Vec::new();
    leb(u64::from(functions) + 1, &mut code);
    code.extend_from_slice(&[2, 0, 0x0b]);
    for _ in 0..functions {
        leb(body.len() as u64, &mut code);
        code.extend_from_slice(&body);
    }
    section(10, &code, &mut wasm);
    wasm
}

#[tokio::test]
async fn a_kill_during_compilation_returns_at_once_and_the_build_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine();
    let s = spec_of(&dir, "slow", slow_module(128, 1), None);
    // The container is deleted while its module compiles: its start is dropped.
    let asked = Instant::now();
    let dropped = tokio::time::timeout(Duration::from_millis(50), e.start(s.clone())).await;
    assert!(dropped.is_err(), "the compile finished too fast to test");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    // The build went on without the caller; the next start uses it.
    let run = e.start(s).await.expect("start");
    assert_eq!(run.wait().await, Exit::Code(0));
    assert_eq!(e.stats().compiles, 1, "{:?}", e.stats());
}

#[tokio::test]
async fn a_compilation_past_its_timeout_fails_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::new(&EngineConfig {
        compile_timeout: Duration::from_millis(20),
        ..EngineConfig::default()
    })
    .expect("engine");
    let began = Instant::now();
    let err = e
        .start(spec_of(&dir, "slow", slow_module(8, 2), None))
        .await
        .expect_err("too slow");
    assert!(err.to_string().contains("longer than"), "{err}");
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "{:?}",
        began.elapsed()
    );
}

#[tokio::test]
async fn a_module_larger_than_the_cap_is_not_compiled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::new(&EngineConfig {
        max_module_bytes: 1024,
        ..EngineConfig::default()
    })
    .expect("engine");
    let err = e
        .start(spec_of(&dir, "big", slow_module(1, 3), None))
        .await
        .expect_err("too large");
    assert!(
        err.to_string().contains("more than the 1024 bytes"),
        "{err}"
    );
    assert_eq!(e.stats().compiles, 0);
}

#[tokio::test]
async fn a_build_nobody_waits_for_any_more_never_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::new(&EngineConfig {
        compile_concurrency: 1,
        ..EngineConfig::default()
    })
    .expect("engine");
    let first = spec_of(&dir, "first", slow_module(8, 4), None);
    let second = spec_of(&dir, "second", slow_module(8, 5), None);
    let waiting = tokio::spawn({
        let e = e.clone();
        async move { e.start(first).await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The second waits for the only compile slot, and is then given up.
    let given_up = tokio::time::timeout(Duration::from_millis(20), e.start(second)).await;
    assert!(given_up.is_err());
    waiting.await.expect("join").expect("first compiles");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(e.stats().compiles, 1, "{:?}", e.stats());
}

#[tokio::test]
async fn the_memory_limit_covers_all_memories_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Two more memories, each grown by 40 pages (2.5 MiB): each alone fits in 4 MiB.
    let body = r#"(memory $a 1) (memory $b 1)
        (func (export "_start")
          (if (i32.eq (memory.grow $a (i32.const 40)) (i32.const -1)) (then unreachable))
          (if (i32.eq (memory.grow $b (i32.const 40)) (i32.const -1)) (then unreachable)))"#;
    let e = engine();
    let run = e
        .start(spec(&dir, "mm", body, Some(4 << 20)))
        .await
        .expect("start");
    assert_eq!(run.wait().await, Exit::OutOfMemory);
    let run = e
        .start(spec(&dir, "mm", body, Some(6 << 20)))
        .await
        .expect("start");
    assert_eq!(run.wait().await, Exit::Code(0));
}

#[tokio::test]
async fn tables_count_against_the_memory_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine();
    // Growing a table by a million elements takes 8 MiB (64-bit pointers).
    let grow = r#"(table $t 1 funcref)
        (func (export "_start")
          (if (i32.eq (table.grow $t (ref.null func) (i32.const 1000000)) (i32.const -1))
            (then unreachable)))"#;
    let run = e
        .start(spec(&dir, "tg", grow, Some(4 << 20)))
        .await
        .expect("start");
    assert_eq!(run.wait().await, Exit::OutOfMemory);
    // A table that large from the start fails the instantiation the same way.
    let big = r#"(table 1000000 funcref) (func (export "_start"))"#;
    let run = e
        .start(spec(&dir, "tb", big, Some(4 << 20)))
        .await
        .expect("start");
    assert_eq!(run.wait().await, Exit::OutOfMemory);
    let run = e
        .start(spec(&dir, "tb", big, Some(64 << 20)))
        .await
        .expect("start");
    assert_eq!(run.wait().await, Exit::Code(0));
}

#[tokio::test]
async fn a_component_cannot_create_more_instances_than_the_cap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::new(&EngineConfig {
        store_caps: StoreCaps {
            instances: 2,
            ..StoreCaps::default()
        },
        ..EngineConfig::default()
    })
    .expect("engine");
    let wasm = wat::parse_str(
        r#"(component
            (core module $m (func (export "run") (result i32) i32.const 0))
            (core instance $a (instantiate $m))
            (core instance $b (instantiate $m))
            (core instance $i (instantiate $m))
            (func $run (result (result)) (canon lift (core func $i "run")))
            (instance $cli (export "run" (func $run)))
            (export "wasi:cli/run@0.2.0" (instance $cli)))"#,
    )
    .expect("valid component");
    let run = e
        .start(spec_of(&dir, "many", wasm, None))
        .await
        .expect("start");
    let exit = run.wait().await;
    assert!(
        matches!(&exit, Exit::Trap { message, .. } if message.contains("instance")),
        "{exit:?}"
    );
}

#[tokio::test]
async fn a_module_opening_files_without_end_hits_the_descriptor_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = tempfile::tempdir().expect("tempdir");
    std::fs::write(data.path().join("f"), b"x").expect("file");
    let e = Engine::new(&EngineConfig {
        max_open_handles: 64,
        ..EngineConfig::default()
    })
    .expect("engine");
    // Opens "f" in the preopen (fd 3) 5000 times without closing; exits with the errno
    // of the first failure, 0 if none failed.
    let body = r#"(data (i32.const 16) "f")
        (func (export "_start") (local $i i32) (local $r i32)
          (loop $again
            (local.set $r (call $path_open (i32.const 3) (i32.const 0) (i32.const 16)
              (i32.const 1) (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0)
              (i32.const 32)))
            (if (local.get $r) (then (call $proc_exit (local.get $r))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $again (i32.lt_u (local.get $i) (i32.const 5000)))))"#;
    let mut s = spec(&dir, "files", body, None);
    s.preopens.push(Preopen {
        host: data.path().to_owned(),
        guest: "/data".to_owned(),
        read_only: true,
    });
    let run = e.start(s).await.expect("start");
    let exit = run.wait().await;
    assert!(
        matches!(&exit, Exit::Trap { kind, .. } if kind == "TooManyOpenFiles"),
        "{exit:?}"
    );
    // Its descriptors went with its sandbox; the host still opens files.
    std::fs::File::open(data.path().join("f")).expect("the agent can open files");
}

/// One pod's slow builds cannot take every compile slot: with two slots, a pod's second
/// build waits for its first, and another pod's build, asked for after both, compiles
/// beside the first and is done before the pod's second.
#[tokio::test]
async fn one_pods_builds_leave_another_pod_a_compile_slot() {
    let e = Engine::new(&EngineConfig {
        compile_concurrency: 2,
        ..EngineConfig::default()
    })
    .expect("engine");
    let build = |key: &'static str, salt: u32, pod: &'static str| {
        let e = e.clone();
        let wasm: Arc<[u8]> = Arc::from(slow_module(16, salt));
        tokio::spawn(async move {
            let began = Instant::now();
            e.module_for(key, wasm, pod).await.expect("compiles");
            began.elapsed()
        })
    };
    let first = build("sha256:a1", 11, "greedy");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = build("sha256:a2", 12, "greedy");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let other = build("sha256:b", 13, "other");
    let (first, second, other) = (
        first.await.expect("join"),
        second.await.expect("join"),
        other.await.expect("join"),
    );
    println!("greedy {first:?} and {second:?}, other {other:?}");
    assert!(
        other < second,
        "the other pod's build waited behind the greedy pod's: {other:?} against {second:?}"
    );
}
