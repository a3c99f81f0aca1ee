//! Serves a `wasi:http/proxy` component as a pod's container would be, for load tests
//! without a cluster: a fresh network namespace pinned at `NETNS` with its loopback up,
//! the component on port 8080 inside it, until `SECONDS` have passed. Needs root.
//! `SERVE_POOL=N` sets the node's pool of served instances (0: none, on-demand).
//! `GUEST_THREADS=N` sets the threads that run guest code (default: one per core).
//!
//! ```text
//! cargo run --release -p wasi-runtime --example serve_hello -- COMPONENT NETNS SECONDS
//! nsenter --net=NETNS oha http://127.0.0.1:8080/
//! ```

use std::sync::Arc;
use std::time::Duration;

use wasi_runtime::{ContainerSpec, Engine, EngineConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: serve_hello COMPONENT NETNS SECONDS";
    let (Some(wasm), Some(netns), Some(seconds)) = (args.next(), args.next(), args.next()) else {
        return Err(usage.into());
    };
    let seconds: u64 = seconds.parse()?;
    let ns = Arc::new(network::NetNs::create(std::path::Path::new(&netns)).await?);
    let up = std::process::Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["ip", "link", "set", "lo", "up"])
        .status()?;
    if !up.success() {
        return Err("cannot bring the namespace's loopback up".into());
    }
    let logs = tempfile::tempdir()?;
    let mut config = EngineConfig::default();
    // SERVE_POOL=0: no pool, the on-demand allocator (for comparison).
    if let Ok(n) = std::env::var("SERVE_POOL") {
        config.serving_pool.instances = n.parse()?;
    }
    if let Ok(n) = std::env::var("GUEST_THREADS") {
        config.guest_threads = n.parse()?;
    }
    let engine = Engine::new(&config)?;
    let running = engine
        .start(ContainerSpec {
            request_timeout: None,
            reuse: wasi_runtime::ReuseSpec::default(),
            dns: None,
            pod_id: String::new(),
            module_key: "sha256:served".to_owned(),
            wasm: Arc::from(std::fs::read(&wasm)?),
            args: vec!["web".to_owned()],
            env: vec![("POD_NAME".to_owned(), "serve-hello".to_owned())],
            log_path: logs.path().join("web.log"),
            memory_limit: Some(128 << 20),
            preopens: Vec::new(),
            network: Some(ns.clone()),
            allowed_outbound: None,
            http_port: 8080,
            cpu: wasi_runtime::CpuShare::default(),
        })
        .await?;
    eprintln!("serving {wasm} on 127.0.0.1:8080 in {netns} for {seconds} s");
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    running.killer().kill();
    let exit = running.wait().await;
    eprintln!("stopped: {exit:?}");
    drop(ns);
    network::netns::remove(std::path::Path::new(&netns))?;
    Ok(())
}
