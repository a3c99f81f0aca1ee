//! wasi:http serving against `wasmtime serve`, run with `hack/bench http`, which builds
//! krustlet in release mode and `target/wasm/http-hello.component.wasm`, installs the
//! `wasmtime` CLI of the release krustlet links and the `oha` load generator from
//! crates.io when missing, and sets `KRUSTLET_BIN`, `WASMTIME_BIN` and `OHA_BIN`.
//!
//! **Throughput and latency.** The hello component served by a pod of a networked
//! krustlet node (its pod IP, port 8080, over the node's bridge) and by `wasmtime serve
//! -Scli` on a free loopback port, in one run, all loaded by `oha` with the same settings
//! (keep-alive connections, each sending its next request when the last answer is in).
//! A third server, `wasmtime serve -O pooling-allocator=n`, has the on-demand instance
//! allocator krustlet's engine uses, which tells that cost apart from the rest. A warm-up
//! of each, then for each load (16 connections on 2 client threads for 15 s; 1 connection
//! on 1 thread for 10 s) three rounds of one run each, the middle round in reverse order;
//! of each server's three runs the median by requests per second counts (all are in the
//! JSON). The percentiles are those of the
//! requests made: oha corrects nothing by default, where wrk 4 adds samples for requests
//! a fixed-rate client would have sent during a stall, which turns a few 40 ms stalls
//! into the p99. Beside them, the CPU time each server process used over the run (from
//! `/proc`) per request. With more than 2 CPUs, both servers are pinned to the first two
//! and the client to the rest; with 2, everything (and the control plane) shares them.
//!
//! **First request.** `FRESH_PODS` new pods of the same (cached) image, one at a time,
//! bound with `spec.nodeName`: from just before the create request to the first 200
//! from the pod's IP, which the client learns from a watch on the pod's status and then
//! asks every 2 ms. Then the same pods, bound to a kwok node of the same control plane
//! (the API round trips alone): create to the status kwok writes.
//!
//! `HTTP_PERF=1` adds a `perf` profile of each server under the 16-connection load
//! (`target/bench-http-<side>.perf.{data,txt}`; the text lists the symbols with 3 % or
//! more of the samples, counting what they call). Prints a table and writes `bench-results/http.json`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::bench::load::{
    LOADS, Load, Run, allowed_cpus, cpu_list, first_ok, median_by_throughput, oha, oha_bin, pinned,
    serving_pod,
};
use e2e::bench::{clear_labelled, cpu_ticks};
use e2e::{Cluster, KrustletNode, PodNet, wait_node};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};

const NODE: &str = "bench-http";
const NODE_PORT: u16 = 10410;
const KWOK_NODE: &str = "bench-http-kwok";
const COMPONENT: &str = "http-hello.component";
const FRESH_PODS: usize = 10;
const WARMUP_SECONDS: u64 = 5;

#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum Side {
    Krustlet,
    /// `wasmtime serve` with its defaults: the peer of the comparison.
    Wasmtime,
    /// `wasmtime serve -O pooling-allocator=n`: the on-demand instance allocator krustlet's
    /// engine uses, to tell that cost apart from the rest.
    WasmtimeOnDemand,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Self::Krustlet => "krustlet pod",
            Self::Wasmtime => "wasmtime serve",
            Self::WasmtimeOnDemand => "wasmtime serve, on-demand allocator",
        }
    }
}

/// A server under test: where it listens and its process.
struct Target {
    side: Side,
    addr: SocketAddr,
    pid: u32,
}

/// What one run of the load measured, and the server's CPU time.
#[derive(Clone, serde::Serialize)]
struct Measured {
    side: Side,
    #[serde(flatten)]
    run: Run,
    /// User and system CPU time of the server process over the run, per request.
    cpu_us_per_request: f64,
}

/// `wasmtime serve`, killed (by its PID) when dropped.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One `oha` run of `load` against `target`, the client pinned to `cpus` when given.
fn run_load(target: &Target, load: Load, cpus: Option<&str>) -> anyhow::Result<Measured> {
    let client = pinned(Path::new(&oha_bin()), cpus);
    let cpu0 = cpu_ticks(target.pid).unwrap_or_default();
    let run = oha(client, &format!("http://{}/bench", target.addr), load)?;
    let cpu = cpu_ticks(target.pid).unwrap_or_default() - cpu0;
    Ok(Measured {
        side: target.side,
        cpu_us_per_request: cpu as f64 * 10_000.0 / run.requests.max(1) as f64,
        run,
    })
}

fn pod(name: &str, image: &str, label: &str) -> Pod {
    serving_pod(name, NODE, image, label, &[])
}

/// Deletes every pod labelled `bench=<label>` at once and waits until they are gone.
async fn clear(pods: &Api<Pod>, label: &str) -> anyhow::Result<()> {
    clear_labelled(pods, &format!("bench={label}"), 60).await
}

/// When each pod labelled `bench=<label>` was first seen with an IP, and the IP.
type Addresses = Arc<Mutex<HashMap<String, (Instant, IpAddr)>>>;

fn watch_addresses(pods: Api<Pod>, label: &str) -> Addresses {
    let seen = Addresses::default();
    let (into, config) = (
        seen.clone(),
        watcher::Config::default().labels(&format!("bench={label}")),
    );
    tokio::spawn(async move {
        let mut stream = watcher(pods, config).applied_objects().boxed();
        while let Some(Ok(p)) = stream.next().await {
            let ip = p
                .status
                .and_then(|s| s.pod_ip)
                .and_then(|ip| ip.parse().ok());
            if let (Some(ip), Some(name), Ok(mut map)) = (ip, p.metadata.name, into.lock()) {
                map.entry(name).or_insert_with(|| (Instant::now(), ip));
            }
        }
    });
    seen
}

async fn address_of(
    pods: &Api<Pod>,
    seen: &Addresses,
    name: &str,
    secs: u64,
) -> anyhow::Result<(Instant, IpAddr)> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(found) = seen.lock().ok().and_then(|m| m.get(name).copied()) {
            return Ok(found);
        }
        if Instant::now() > deadline {
            let status = pods.get(name).await?.status.unwrap_or_default();
            bail!(
                "pod {name} got no IP within {secs} s: {:?} {:?} {:?}",
                status.phase,
                status.reason,
                status.message
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// With `HTTP_PERF=1`: a `perf` profile of `target` under `load` for 10 s, written
/// to `target/bench-http-<side>.perf.txt`; its top lines.
fn profile(target: &Target, load: Load, client_cpus: Option<&str>) -> anyhow::Result<String> {
    let dir = e2e::root().join("target");
    let side = format!("{:?}", target.side).to_lowercase();
    let data = dir.join(format!("bench-http-{side}.perf.data"));
    let mut record = Command::new("perf")
        .args(["record", "-F", "999", "-g", "-o"])
        .arg(&data)
        .args(["-p", &target.pid.to_string(), "--", "sleep", "10"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("running perf")?;
    run_load(
        target,
        Load {
            seconds: 10,
            ..load
        },
        client_cpus,
    )?;
    record.wait()?;
    let report = Command::new("perf")
        .args(["report", "--stdio", "--children", "-g", "none"])
        .args(["--percent-limit", "3", "--sort", "sym", "-i"])
        .arg(&data)
        .output()?;
    let text: String = String::from_utf8_lossy(&report.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .take(60)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dir.join(format!("bench-http-{side}.perf.txt")), &text)?;
    Ok(text)
}

fn start_peer(
    bin: &Path,
    component: &Path,
    cpus: Option<&str>,
    side: Side,
) -> anyhow::Result<(Peer, Target)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let name = format!("target/bench-http-{side:?}.log").to_lowercase();
    let log = std::fs::File::create(e2e::root().join(name))?;
    let mut cmd = pinned(bin, cpus);
    cmd.args(["serve", "-Scli", "--addr", &format!("127.0.0.1:{port}")])
        .args(["--env", "POD_NAME=peer"]);
    if side == Side::WasmtimeOnDemand {
        cmd.args(["-O", "pooling-allocator=n"]);
    }
    let child = cmd
        .arg(component)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let target = Target {
        side,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        pid: child.id(),
    };
    Ok((Peer(child), target))
}

/// The median (by requests per second) of `side`'s runs under `load`.
fn median_run(runs: &[Measured], side: Side, load: Load) -> anyhow::Result<Measured> {
    let mine = runs
        .iter()
        .filter(|m| m.side == side && m.run.load == load)
        .collect();
    median_by_throughput(mine, |m| &m.run)
        .cloned()
        .context("no run")
}

/// The middle of `sorted` (of an even count, the mean of the two middle values).
fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    (sorted[(n - 1) / 2] + sorted[n / 2]) / 2.0
}

/// The measurements, with the node and its pod network up.
async fn measure(
    cluster: &Cluster,
    node: &KrustletNode,
    wasmtime: &Path,
    cpus: &[usize],
) -> anyhow::Result<serde_json::Value> {
    let pods = cluster.pods();
    let image = cluster.push(COMPONENT, "bench").await?;
    let component = e2e::root().join(format!("target/wasm/{COMPONENT}.wasm"));
    let (server_cpus, client_cpus) = if cpus.len() > 2 {
        (Some(cpu_list(&cpus[..2])), Some(cpu_list(&cpus[2..])))
    } else {
        (None, None)
    };
    let krustlet_pid = node.pid().context("krustlet is not running")?;
    if let Some(c) = &server_cpus {
        Command::new("taskset")
            .args(["-a", "-p", "-c", c, &krustlet_pid.to_string()])
            .stdout(Stdio::null())
            .status()?;
    }
    let server_cpus = server_cpus.as_deref();
    let (peer, peer_target) = start_peer(wasmtime, &component, server_cpus, Side::Wasmtime)?;
    let (on_demand, on_demand_target) =
        start_peer(wasmtime, &component, server_cpus, Side::WasmtimeOnDemand)?;

    clear(&pods, "http").await?;
    clear(&pods, "http-fresh").await?;
    let seen = watch_addresses(pods.clone(), "http");
    pods.create(
        &PostParams::default(),
        &pod("bench-http-serve", &image, "http"),
    )
    .await?;
    let (_, ip) = address_of(&pods, &seen, "bench-http-serve", 120).await?;
    let pod_target = Target {
        side: Side::Krustlet,
        addr: SocketAddr::new(ip, 8080),
        pid: krustlet_pid,
    };
    let targets = [&pod_target, &peer_target, &on_demand_target];
    for t in targets {
        first_ok(t.addr, 60).await?;
    }

    let client_cpus = client_cpus.as_deref();
    let warmup = Load {
        seconds: WARMUP_SECONDS,
        ..LOADS[0]
    };
    for t in targets {
        run_load(t, warmup, client_cpus)?;
    }
    // Three rounds, the order turned around in the middle one.
    let [k, w, d] = targets;
    let order = [k, w, d, d, w, k, k, w, d];
    let mut runs = Vec::new();
    for load in LOADS {
        for t in order {
            let m = run_load(t, load, client_cpus)?;
            m.run.progress(m.side.label());
            runs.push(m);
        }
    }
    if std::env::var("HTTP_PERF").is_ok_and(|v| v == "1") {
        for t in [k, w] {
            let top = profile(t, LOADS[0], client_cpus)?;
            println!(
                "perf, {}, c{}:\n{top}",
                t.side.label(),
                LOADS[0].connections
            );
        }
    }
    clear(&pods, "http").await?;
    drop(peer);
    drop(on_demand);

    // First requests of fresh pods, one at a time.
    let fresh = watch_addresses(pods.clone(), "http-fresh");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut to_ip, mut to_ok) = (Vec::new(), Vec::new());
    for i in 0..FRESH_PODS {
        let name = format!("bench-http-fresh-{i}");
        let t0 = Instant::now();
        pods.create(&PostParams::default(), &pod(&name, &image, "http-fresh"))
            .await?;
        let (seen_at, ip) = address_of(&pods, &fresh, &name, 60).await?;
        let ok_at = first_ok(SocketAddr::new(ip, 8080), 60).await?;
        to_ip.push(seen_at.duration_since(t0).as_secs_f64() * 1000.0);
        to_ok.push(ok_at.duration_since(t0).as_secs_f64() * 1000.0);
        clear(&pods, "http-fresh").await?;
        // The last one's teardown (its CNI DEL) is not part of the next one's start.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    to_ip.sort_by(f64::total_cmp);
    to_ok.sort_by(f64::total_cmp);

    // The same pods on a kwok node in the same run: create to the status kwok writes
    // (Ready, with an address), the API round trips alone.
    let kwok = e2e::kwok_node(cluster, KWOK_NODE, 10497, 10496).await?;
    let on_kwok = watch_addresses(pods.clone(), "http-kwok");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut kwok_ready = Vec::new();
    for i in 0..FRESH_PODS {
        let name = format!("bench-http-kwok-{i}");
        let mut p = pod(&name, &image, "http-kwok");
        if let Some(spec) = p.spec.as_mut() {
            spec.node_name = Some(KWOK_NODE.to_owned());
        }
        let t0 = Instant::now();
        pods.create(&PostParams::default(), &p).await?;
        let (seen_at, _) = address_of(&pods, &on_kwok, &name, 60).await?;
        kwok_ready.push(seen_at.duration_since(t0).as_secs_f64() * 1000.0);
        clear(&pods, "http-kwok").await?;
    }
    drop(kwok);
    let _ = cluster
        .nodes()
        .delete(KWOK_NODE, &DeleteParams::default())
        .await;
    kwok_ready.sort_by(f64::total_cmp);

    report(
        &runs,
        &FirstRequests {
            to_ip,
            to_ok,
            kwok_ready,
        },
        cpus,
        &targets,
    )
}

/// Fresh pods' first requests (ms, sorted) and kwok's create-to-Ready of the same pods.
struct FirstRequests {
    to_ip: Vec<f64>,
    to_ok: Vec<f64>,
    kwok_ready: Vec<f64>,
}

/// The table row of `m`.
fn row(m: &Measured) -> String {
    format!(
        "| {} | {} | {:.0} | {:.3} | {:.3} | {:.2} | {:.1} | {:.0} |",
        m.side.label(),
        m.run.load.connections,
        m.run.requests_per_second,
        m.run.p50_ms,
        m.run.p99_ms,
        m.run.p999_ms,
        m.run.max_ms,
        m.cpu_us_per_request
    )
}

/// `a` over `b` in throughput, p50, p99 and CPU per request; its row and its JSON.
fn ratios(a: &Measured, b: &Measured) -> (String, serde_json::Value) {
    let (rps, p50, p99, cpu) = (
        a.run.requests_per_second / b.run.requests_per_second,
        a.run.p50_ms / b.run.p50_ms,
        a.run.p99_ms / b.run.p99_ms,
        a.cpu_us_per_request / b.cpu_us_per_request,
    );
    let label = format!("{} / {}", a.side.label(), b.side.label());
    (
        format!(
            "| {label} | {} | {rps:.2}x | {p50:.2}x | {p99:.2}x | | | {cpu:.2}x |",
            a.run.load.connections
        ),
        serde_json::json!({
            "of": label, "throughput_ratio": rps, "p50_ratio": p50, "p99_ratio": p99,
            "cpu_per_request_ratio": cpu
        }),
    )
}

/// Prints the table; the JSON to write.
fn report(
    runs: &[Measured],
    first: &FirstRequests,
    cpus: &[usize],
    targets: &[&Target; 3],
) -> anyhow::Result<serde_json::Value> {
    let (to_ip, to_ok) = (&first.to_ip, &first.to_ok);
    let pinning = if cpus.len() > 2 {
        format!(
            "the servers pinned to CPUs {}, the client to {}",
            cpu_list(&cpus[..2]),
            cpu_list(&cpus[2..])
        )
    } else {
        format!(
            "{} CPUs in all: the servers, the client (oha) and the control plane share them",
            cpus.len()
        )
    };
    let [k, w, d] = targets;
    let sides = [
        format!(
            "krustlet pod at {}: one agent process (release build); the server on its guest \
             runtime (one worker thread per CPU at its start), a fresh instance per request \
             (the serving engine's pooling allocator, epoch preemption), an access log line per request",
            k.addr
        ),
        format!(
            "wasmtime serve -Scli at {}: its defaults (a tokio runtime of one worker per CPU, a \
             fresh instance per request, the pooling allocator where the address space allows it)",
            w.addr
        ),
        format!(
            "wasmtime serve -Scli -O pooling-allocator=n at {}: the same with the on-demand allocator",
            d.addr
        ),
    ];
    println!("{}\n{pinning}", sides.join("\n"));
    println!(
        "oha, keep-alive; a {WARMUP_SECONDS} s warm-up of each, then per load three rounds \
         (the middle one in reverse order); the median run of each counts\n"
    );
    println!(
        "| server | connections | requests/s | p50 ms | p99 ms | p99.9 ms | max ms | server CPU µs per request |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut compared = Vec::new();
    for load in LOADS {
        let medians = [
            median_run(runs, Side::Krustlet, load)?,
            median_run(runs, Side::Wasmtime, load)?,
            median_run(runs, Side::WasmtimeOnDemand, load)?,
        ];
        for m in &medians {
            println!("{}", row(m));
        }
        let (peer_row, peer) = ratios(&medians[0], &medians[1]);
        let (on_demand_row, on_demand) = ratios(&medians[0], &medians[2]);
        println!("{peer_row}\n{on_demand_row}");
        compared.push(serde_json::json!({
            "load": load, "medians": medians, "krustlet_over_wasmtime": peer,
            "krustlet_over_wasmtime_on_demand": on_demand
        }));
    }
    let main = &compared[0]["krustlet_over_wasmtime"];
    let throughput_met = main["throughput_ratio"].as_f64().unwrap_or(0.0) >= 0.9;
    let p99_met = main["p99_ratio"].as_f64().unwrap_or(f64::MAX) <= 1.2;
    let said = |met: bool| if met { "met" } else { "missed" };
    println!(
        "\ntargets against wasmtime serve at {} connections: throughput at least 0.9x: {}; \
         p99 within 1.2x: {}",
        LOADS[0].connections,
        said(throughput_met),
        said(p99_met)
    );
    println!(
        "first request of a fresh pod (create to the first 200 at its pod IP), median of {}: \
         {:.0} ms (min {:.0}, max {:.0}); of it, create to the pod IP seen: {:.0} ms",
        to_ok.len(),
        median(to_ok),
        to_ok[0],
        to_ok[to_ok.len() - 1],
        median(to_ip)
    );
    let kwok = &first.kwok_ready;
    println!(
        "the same pods on kwok (create to Ready), median of {}: {:.0} ms (min {:.0}, max {:.0}); \
         krustlet's first 200 over kwok's Ready: {:.2}x",
        kwok.len(),
        median(kwok),
        kwok.first().copied().unwrap_or(f64::NAN),
        kwok.last().copied().unwrap_or(f64::NAN),
        median(to_ok) / median(kwok)
    );
    let errors: u64 = runs.iter().map(|m| m.run.errors).sum();
    if errors > 0 {
        println!("warning: {errors} requests failed or were not answered 200 over all runs");
    }
    Ok(serde_json::json!({
        "when": jiff::Timestamp::now().to_string(),
        "cpus": cpus.len(), "pinning": pinning, "sides": sides,
        "client": "oha 1.16.0, keep-alive, no latency correction",
        "warmup_seconds": WARMUP_SECONDS,
        "order": "per load: krustlet, wasmtime, on-demand, on-demand, wasmtime, krustlet, krustlet, wasmtime, on-demand; the median run of each counts",
        "compared": compared, "runs": runs,
        "targets": { "throughput_at_least": 0.9, "p99_at_most": 1.2, "throughput_met": throughput_met, "p99_met": p99_met },
        "first_request": {
            "pods": to_ok.len(), "median_ms": median(to_ok), "create_to_200_ms": to_ok,
            "create_to_ip_ms": to_ip, "median_create_to_ip_ms": median(to_ip),
            "kwok_create_to_ready_ms": kwok, "kwok_median_ms": median(kwok),
            "ratio_vs_kwok": median(to_ok) / median(kwok)
        }
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let wasmtime =
        PathBuf::from(std::env::var("WASMTIME_BIN").unwrap_or_else(|_| "wasmtime".to_owned()));
    let cluster = Cluster::connect().await?;
    // Dropped in reverse: the node stops before its pod network goes.
    let net = PodNet::for_node(NODE)?;
    let flags = net.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    // A CI disk that is nearly full (below the default 15 % free for images) would put
    // the node under disk pressure and refuse the pods; this bench measures serving.
    let flags = [
        flags.as_slice(),
        &[
            "--eviction-hard",
            "memory.available<100Mi,nodefs.available<2%,imagefs.available<2%",
        ],
    ]
    .concat();
    let node = cluster.ready_node(NODE, NODE_PORT, &flags).await?;
    wait_node(&cluster.nodes(), NODE, 60, "a pod CIDR", |n: &Node| {
        n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_some()
    })
    .await?;
    let measured = measure(&cluster, &node, &wasmtime, &allowed_cpus()).await;
    let pods = cluster.pods();
    let _ = clear(&pods, "http").await;
    let _ = clear(&pods, "http-fresh").await;
    drop(node);
    drop(net);
    let json = measured?;
    let dir = e2e::root().join("bench-results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("http.json"), serde_json::to_string_pretty(&json)?)?;
    println!("written: bench-results/http.json");
    Ok(())
}
