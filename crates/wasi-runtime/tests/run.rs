//! The runtime on small hand-written modules: exit codes, traps, kills, memory limits,
//! argv/env and the log file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasi_runtime::{ContainerSpec, Engine, EngineConfig, Exit};

const WASI: &str = r#"
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
"#;

fn spec(
    dir: &tempfile::TempDir,
    key: &str,
    wat_body: &str,
    memory_limit: Option<u64>,
) -> ContainerSpec {
    let wasm = wat::parse_str(format!("(module {WASI} {wat_body})")).expect("valid wat");
    ContainerSpec {
        request_timeout: None,
        reuse: wasi_runtime::ReuseSpec::default(),
        dns: None,
        pod_id: String::new(),
        module_key: key.to_owned(),
        wasm: Arc::from(wasm),
        args: vec!["prog".to_owned()],
        env: vec![("A".to_owned(), "1".to_owned())],
        log_path: dir.path().join(format!("{key}.log")),
        memory_limit,
        preopens: Vec::new(),
        network: None,
        http_port: wasi_runtime::DEFAULT_HTTP_PORT,
        cpu: wasi_runtime::CpuShare::default(),
        allowed_outbound: None,
    }
}

fn engine() -> Engine {
    Engine::new(&EngineConfig::default()).expect("engine")
}

#[tokio::test]
async fn exit_codes_come_from_proc_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine();
    let ok = e
        .start(spec(&dir, "ok", r#"(func (export "_start"))"#, None))
        .await
        .expect("start");
    assert_eq!(ok.wait().await, Exit::Code(0));
    let seven = e
        .start(spec(
            &dir,
            "seven",
            r#"(func (export "_start") (call $proc_exit (i32.const 7)))"#,
            None,
        ))
        .await
        .expect("start");
    let exit = seven.wait().await;
    assert_eq!((exit.clone(), exit.code()), (Exit::Code(7), 7));
}

#[tokio::test]
async fn a_trap_is_reported_with_its_cause() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = engine()
        .start(spec(
            &dir,
            "trap",
            r#"(func (export "_start") unreachable)"#,
            None,
        ))
        .await
        .expect("start");
    let exit = run.wait().await;
    assert_eq!(exit.code(), 134);
    assert!(
        matches!(&exit, Exit::Trap { kind, message }
            if kind == "UnreachableCodeReached" && message.contains("unreachable")),
        "{exit:?}"
    );
}

#[tokio::test]
async fn a_spinning_module_is_killed_without_cooperating() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = engine()
        .start(spec(
            &dir,
            "spin",
            r#"(func (export "_start") (loop (br 0)))"#,
            None,
        ))
        .await
        .expect("start");
    let killer = run.killer();
    let waiter = tokio::spawn(run.wait());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked = Instant::now();
    killer.kill();
    let exit = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("killed in time")
        .expect("join");
    assert_eq!((exit.clone(), exit.code()), (Exit::Killed, 137));
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "kill took {:?}",
        asked.elapsed()
    );
}

#[tokio::test]
async fn memory_beyond_the_limit_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Grows by 16 pages (1 MiB); traps when the grow fails.
    let body = r#"(func (export "_start")
        (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1)) (then unreachable)))"#;
    let e = engine();
    let limited = e
        .start(spec(&dir, "grow", body, Some(512 * 1024)))
        .await
        .expect("start");
    assert_eq!(limited.wait().await, Exit::OutOfMemory);
    let unlimited = e
        .start(spec(&dir, "grow", body, None))
        .await
        .expect("start");
    assert_eq!(unlimited.wait().await, Exit::Code(0));
}

#[tokio::test]
async fn a_refused_growth_ends_the_run_even_if_the_module_would_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    // As wasi-libc's malloc: a failed grow is only a NULL, and the program exits 0.
    let body = r#"(func (export "_start") (drop (memory.grow (i32.const 16))))"#;
    let run = engine()
        .start(spec(&dir, "grow-on", body, Some(512 * 1024)))
        .await
        .expect("start");
    let exit = run.wait().await;
    assert_eq!((exit.clone(), exit.code()), (Exit::OutOfMemory, 137));
}

#[tokio::test]
async fn stdout_goes_to_the_log_file_in_cri_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    // iovec at 0: (ptr 16, len 6); "hello\n" at 16; nwritten at 32.
    let body = r#"(data (i32.const 0) "\10\00\00\00\06\00\00\00")
        (data (i32.const 16) "hello\n")
        (func (export "_start") (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 32))))"#;
    let s = spec(&dir, "hello", body, None);
    let log = s.log_path.clone();
    let run = engine().start(s).await.expect("start");
    assert_eq!(run.wait().await, Exit::Code(0));
    let text = std::fs::read_to_string(log).expect("log");
    let mut parts = text.trim_end().splitn(4, ' ');
    assert!(parts.next().is_some_and(|ts| ts.ends_with('Z')));
    assert_eq!(parts.collect::<Vec<_>>(), ["stdout", "F", "hello"]);
}

#[tokio::test]
async fn a_module_without_start_is_refused_at_creation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = engine()
        .start(spec(&dir, "nostart", "", None))
        .await
        .expect_err("no _start");
    assert!(err.to_string().contains("_start"), "{err}");
}

#[tokio::test]
async fn one_module_is_compiled_once_and_loaded_from_disk_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = EngineConfig {
        cache_dir: Some(dir.path().join("compiled")),
        ..EngineConfig::default()
    };
    let wasm: Arc<[u8]> = Arc::from(
        wat::parse_str(format!(r#"(module {WASI} (func (export "_start")))"#)).expect("wat"),
    );
    let first = Engine::new(&config).expect("engine");
    // Ten containers of one image starting together: one compilation.
    let starts = (0..10).map(|_| first.module("sha256:same", wasm.clone()));
    for module in futures::future::join_all(starts).await {
        module.expect("module");
    }
    assert_eq!(first.stats().compiles, 1, "{:?}", first.stats());
    // A new engine (the node agent restarted) finds the native code on disk.
    let second = Engine::new(&config).expect("engine");
    second.module("sha256:same", wasm).await.expect("module");
    assert_eq!(
        (second.stats().compiles, second.stats().cache_loads),
        (0, 1)
    );
}

/// A component whose `wasi:cli/run` returns `ok` or `err`, with no imports.
fn component(ok: bool) -> Vec<u8> {
    let code = i32::from(!ok);
    wat::parse_str(format!(
        r#"(component
            (core module $m (func (export "run") (result i32) i32.const {code}))
            (core instance $i (instantiate $m))
            (func $run (result (result)) (canon lift (core func $i "run")))
            (instance $cli (export "run" (func $run)))
            (export "wasi:cli/run@0.2.0" (instance $cli)))"#
    ))
    .expect("valid component")
}

#[tokio::test]
async fn a_component_runs_as_a_wasi_command_and_its_result_is_the_exit_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine();
    for (ok, code) in [(true, 0), (false, 1)] {
        let wasm = component(ok);
        assert!(wasi_runtime::is_component(&wasm));
        let mut s = spec(&dir, "c", r#"(func (export "_start"))"#, None);
        s.module_key = format!("component-{ok}");
        s.wasm = Arc::from(wasm);
        let run = e.start(s).await.expect("start");
        assert_eq!(run.wait().await, Exit::Code(code));
    }
}

/// A WASI 0.3 command: `wasi:cli/run@0.3.0` lifted async with a callback, whose core
/// function `body` (it returns the callback code) calls `$ret` with 0 (`ok`) or 1
/// (`err`) through `task.return`, or never returns; its core module has a memory of its
/// own (one page).
fn component_p3(body: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(component
            (core module $m
                (import "" "task.return" (func $ret (param i32)))
                (memory 1)
                (func (export "run") (result i32) {body})
                (func (export "cb") (param i32 i32 i32) (result i32) i32.const 0))
            (core func $task_return (canon task.return (result (result))))
            (core instance $imports (export "task.return" (func $task_return)))
            (core instance $i (instantiate $m (with "" (instance $imports))))
            (type $run_type (func async (result (result))))
            (func $run (type $run_type)
                (canon lift (core func $i "run") async (callback (core func $i "cb"))))
            (instance $cli (export "run" (func $run)))
            (export "wasi:cli/run@0.3.0" (instance $cli)))"#
    ))
    .expect("valid component")
}

#[tokio::test]
async fn a_wasi_0_3_command_runs_and_its_result_is_the_exit_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine();
    for (ok, code) in [(true, 0), (false, 1)] {
        let wasm = component_p3(&format!(
            "(call $ret (i32.const {})) i32.const 0",
            i32::from(!ok)
        ));
        let mut s = spec(&dir, "p3", r#"(func (export "_start"))"#, None);
        s.module_key = format!("p3-component-{ok}");
        s.wasm = Arc::from(wasm);
        let run = e.start(s).await.expect("start");
        assert_eq!(run.wait().await, Exit::Code(code));
    }
}

#[tokio::test]
async fn a_wasi_0_3_command_growing_past_its_limit_ends_out_of_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Grows by 16 pages (1 MiB), ignores a refusal, and returns ok.
    let wasm =
        component_p3("(drop (memory.grow (i32.const 16))) (call $ret (i32.const 0)) i32.const 0");
    let e = engine();
    for (limit, exit) in [(Some(512 * 1024), Exit::OutOfMemory), (None, Exit::Code(0))] {
        let mut s = spec(&dir, "p3-grow", r#"(func (export "_start"))"#, limit);
        s.wasm = Arc::from(wasm.clone());
        let run = e.start(s).await.expect("start");
        assert_eq!(run.wait().await, exit, "limit {limit:?}");
    }
}

#[tokio::test]
async fn a_spinning_wasi_0_3_command_is_killed_without_cooperating() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = spec(&dir, "spin-p3", r#"(func (export "_start"))"#, None);
    s.wasm = Arc::from(component_p3("(loop (br 0)) i32.const 0"));
    spin_then_kill(s, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_spinning_component_is_killed_without_cooperating() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = wat::parse_str(
        r#"(component
            (core module $m (func (export "run") (result i32) (loop (br 0)) i32.const 0))
            (core instance $i (instantiate $m))
            (func $run (result (result)) (canon lift (core func $i "run")))
            (instance $cli (export "run" (func $run)))
            (export "wasi:cli/run@0.2.0" (instance $cli)))"#,
    )
    .expect("valid component");
    let mut s = spec(&dir, "spin-c", r#"(func (export "_start"))"#, None);
    s.wasm = Arc::from(wasm);
    spin_then_kill(s, Duration::from_secs(1)).await;
}

/// Starts `spec` (a run that spins forever), kills it after 100 ms, and checks it ended
/// killed within `bound` of the kill (a spin that only a kill ends).
async fn spin_then_kill(spec: ContainerSpec, bound: Duration) {
    let run = engine().start(spec).await.expect("start");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let began = Instant::now();
    run.killer().kill();
    assert_eq!(run.wait().await, Exit::Killed);
    assert!(began.elapsed() < bound, "{:?}", began.elapsed());
}

#[tokio::test]
async fn a_module_flooding_stdout_keeps_the_log_within_its_rotation_bounds() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 60000 bytes of 99-byte lines at 1024, written 200 times: 12 MB of output.
    let body = r#"(data (i32.const 0) "\00\04\00\00\60\ea\00\00")
        (func (export "_start") (local $i i32) (local $n i32)
          (loop $fill
            (i32.store8 (i32.add (i32.const 1024) (local.get $i))
              (select (i32.const 10) (i32.const 97)
                (i32.eq (i32.rem_u (local.get $i) (i32.const 100)) (i32.const 99))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $fill (i32.lt_u (local.get $i) (i32.const 60000))))
          (loop $write
            (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))
            (local.set $n (i32.add (local.get $n) (i32.const 1)))
            (br_if $write (i32.lt_u (local.get $n) (i32.const 200)))))"#;
    let rotation = wasi_runtime::LogRotation {
        max_size: 256 * 1024,
        max_files: 3,
    };
    let e = Engine::new(&EngineConfig {
        log_rotation: rotation,
        ..EngineConfig::default()
    })
    .expect("engine");
    let run = e
        .start(spec(&dir, "flood", body, None))
        .await
        .expect("start");
    assert_eq!(run.wait().await, Exit::Code(0));
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|f| f.expect("entry"))
        .collect();
    let total: u64 = files
        .iter()
        .map(|f| f.metadata().expect("meta").len())
        .sum();
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(total <= 3 * rotation.max_size, "{total} bytes on disk");
    assert!(total >= 2 * rotation.max_size, "{total} bytes on disk");
}

#[test]
fn a_log_rotation_keeping_fewer_than_two_files_is_refused() {
    let config = EngineConfig {
        log_rotation: wasi_runtime::LogRotation {
            max_size: 1024,
            max_files: 1,
        },
        ..EngineConfig::default()
    };
    assert!(Engine::new(&config).is_err());
}

/// A workload of a real toolchain (target/wasm/tool.wasm: clang + wasi-libc, built by
/// hack/build-wasm, and the same made a preview 2 command component) that mallocs
/// 256 MiB in 1 MiB blocks under a 64 MiB limit ends out of memory, and the step after it
/// never runs.
#[tokio::test]
async fn a_c_program_mallocing_past_its_limit_ends_out_of_memory() {
    for name in ["tool", "tool.component"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = format!(
            "{}/../../target/wasm/{name}.wasm",
            env!("CARGO_MANIFEST_DIR")
        );
        let wasm =
            std::fs::read(&path).unwrap_or_else(|e| panic!("{path} (run hack/build-wasm): {e}"));
        let mut s = spec(&dir, name, r#"(func (export "_start"))"#, Some(64 << 20));
        s.module_key = format!("sha256:{name}");
        s.wasm = Arc::from(wasm);
        s.args = ["tool", "alloc", "256", "print", "survived"]
            .map(str::to_owned)
            .to_vec();
        let log_path = s.log_path.clone();
        let run = engine().start(s).await.expect("start");
        let exit = run.wait().await;
        let log = std::fs::read_to_string(log_path).expect("log");
        assert_eq!(exit, Exit::OutOfMemory, "{name}: {log}");
        assert!(log.contains("alloc: 48 MiB"), "{name}: {log}");
        assert!(
            !log.contains("alloc: 64 MiB") && !log.contains("survived"),
            "{name}: {log}"
        );
    }
}

/// A WASI 0.3 command built by a real toolchain (componentize-py: CPython inside,
/// target/wasm/p3-py-command.component.wasm from hack/build-wasm), which writes through
/// a 0.3 stdout stream: its lines reach the log in the CRI format with its arguments
/// and environment; `fail` is exit 1; a `bytearray` past the limit is out of memory.
#[tokio::test]
async fn a_python_wasi_0_3_command_logs_exits_and_is_bounded() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../target/wasm/p3-py-command.component.wasm"
    );
    let wasm: Arc<[u8]> = Arc::from(
        std::fs::read(path).unwrap_or_else(|e| panic!("{path} (run hack/build-wasm): {e}")),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine();
    let cases: [(&[&str], Option<u64>, Exit); 3] = [
        (&["a", "b"], None, Exit::Code(0)),
        (&["fail"], None, Exit::Code(1)),
        (&["alloc", "200000000"], Some(64 << 20), Exit::OutOfMemory),
    ];
    for (i, (args, limit, exit)) in cases.into_iter().enumerate() {
        let mut s = spec(
            &dir,
            &format!("py-{i}"),
            r#"(func (export "_start"))"#,
            limit,
        );
        s.module_key = "py-command".to_owned();
        s.wasm = wasm.clone();
        s.args = std::iter::once("cmd")
            .chain(args.iter().copied())
            .map(str::to_owned)
            .collect();
        s.env = vec![("POD_NAME".to_owned(), "py-pod".to_owned())];
        let log_path = s.log_path.clone();
        let run = e.start(s).await.expect("start");
        let got = tokio::time::timeout(Duration::from_secs(120), run.wait())
            .await
            .expect("the run ends");
        let log = std::fs::read_to_string(&log_path).expect("log");
        assert_eq!(got, exit, "{args:?}: {log}");
        assert!(log.contains(" stdout F hello from python p3"), "{log}");
        assert!(log.contains(" stdout F pod: py-pod"), "{log}");
        if i == 0 {
            assert!(log.contains("args: "), "{log}");
            assert!(log.contains("a b"), "{log}");
        }
    }
}
