//! wasi:http serving against `wasmtime serve`, run with `hack/bench http`, which builds
//! krustlet in release mode and `target/wasm/http-hello.component.wasm`, installs the
//! `wasmtime` CLI of the release krustlet links and Debian's `wrk` when missing, and sets
//! `KRUSTLET_BIN` and `WASMTIME_BIN`.
//!
//! **Throughput and latency.** The hello component served by a pod of a networked
//! krustlet node (its pod IP, port 8080, over the node's bridge) and by `wasmtime serve
//! -Scli` on a free loopback port, in one run, both loaded by `wrk` with the same
//! settings: a warm-up of each, then for each load (2 threads and 16 connections for
//! 15 s; 1 connection for 10 s) four measured runs in the order krustlet, wasmtime,
//! wasmtime, krustlet. Of each side's two runs the one with more requests per second
//! counts (both are in the JSON). Requests per second, p50 and p99 are wrk's; the CPU
//! time each server process used over the run (from `/proc`) per request is beside them.
//! With more than 2 CPUs, both servers are pinned to the first two and wrk to the rest;
//! with 2, everything (and the control plane) shares them.
//!
//! **First request.** `FRESH_PODS` new pods of the same (cached) image, one at a time,
//! bound with `spec.nodeName`: from just before the create request to the first 200
//! from the pod's IP, which the client learns from a watch on the pod's status and then
//! asks every 2 ms.
//!
//! `HTTP_PERF=1` adds a flat `perf` profile of each server under the 16-connection load
//! (`target/bench-http-<side>.perf.txt`). Prints a table and writes
//! `bench-results/http.json`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::{Cluster, KrustletNode, PodNet, wait_node, wasm_toleration};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};

const NODE: &str = "bench-http";
const NODE_PORT: u16 = 10410;
const COMPONENT: &str = "http-hello.component";
const FRESH_PODS: usize = 10;
const WARMUP_SECONDS: u64 = 5;

/// One wrk setting, the same for both sides.
#[derive(Clone, Copy, serde::Serialize)]
struct Load {
    threads: usize,
    connections: usize,
    seconds: u64,
}

/// 16 connections on 2 threads for 15 s; 1 connection for 10 s.
const LOADS: [Load; 2] = [Load::new(2, 16, 15), Load::new(1, 1, 10)];

impl Load {
    const fn new(threads: usize, connections: usize, seconds: u64) -> Self {
        Self {
            threads,
            connections,
            seconds,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum Side {
    Krustlet,
    Wasmtime,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Self::Krustlet => "krustlet pod",
            Self::Wasmtime => "wasmtime serve",
        }
    }
}

/// A server under test: where it listens and its process.
struct Target {
    side: Side,
    addr: SocketAddr,
    pid: u32,
}

/// What one wrk run measured.
#[derive(Clone, serde::Serialize)]
struct Measured {
    side: Side,
    load: Load,
    requests: u64,
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Socket errors and non-2xx answers, as wrk counts them.
    errors: u64,
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

/// The CPUs this process may use (`Cpus_allowed_list` of `/proc/self/status`).
fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or("0")
        .trim();
    list.split(',')
        .filter_map(|range| match range.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?..=b.parse().ok()?).collect::<Vec<usize>>()),
            None => Some(vec![range.parse().ok()?]),
        })
        .flatten()
        .collect()
}

fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `program`, run on `cpus` when given (`taskset -c`).
fn pinned(program: &Path, cpus: Option<&str>) -> Command {
    let Some(cpus) = cpus else {
        return Command::new(program);
    };
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", cpus]).arg(program);
    cmd
}

/// User plus system CPU time of process `pid`, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    field(11).unwrap_or_default() + field(12).unwrap_or_default()
}

/// A wrk duration (`287.00us`, `2.16ms`, `1.02s`, `1.00m`) in milliseconds.
fn wrk_ms(text: &str) -> Option<f64> {
    let at = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(at);
    let n: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

/// Requests, requests per second, p50 and p99 (ms) and errors from wrk's `--latency`
/// output.
fn parse_wrk(out: &str) -> anyhow::Result<(u64, f64, f64, f64, u64)> {
    let (mut requests, mut rps, mut p50, mut p99, mut errors) = (None, None, None, None, 0);
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => p50 = wrk_ms(v),
            ["99%", v] => p99 = wrk_ms(v),
            ["Requests/sec:", v] => rps = v.parse().ok(),
            [n, "requests", "in", ..] => requests = n.parse().ok(),
            ["Non-2xx", "or", "3xx", "responses:", n] => errors += n.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    match (requests, rps, p50, p99) {
        (Some(n), Some(r), Some(a), Some(b)) => Ok((n, r, a, b, errors)),
        _ => bail!("cannot read wrk's output:\n{out}"),
    }
}

/// One wrk run of `load` against `target`, pinned to `cpus` when given.
fn wrk(target: &Target, load: Load, cpus: Option<&str>) -> anyhow::Result<Measured> {
    let bin = std::env::var("WRK_BIN").unwrap_or_else(|_| "wrk".to_owned());
    let mut cmd = pinned(Path::new(&bin), cpus);
    cmd.arg(format!("-t{}", load.threads))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.seconds))
        .arg("--latency")
        .arg(format!("http://{}/bench", target.addr));
    let cpu0 = cpu_ticks(target.pid);
    let out = cmd.output().with_context(|| format!("running {bin}"))?;
    let cpu = cpu_ticks(target.pid) - cpu0;
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let (requests, rps, p50, p99, errors) = parse_wrk(&String::from_utf8_lossy(&out.stdout))?;
    Ok(Measured {
        side: target.side,
        load,
        requests,
        requests_per_second: rps,
        p50_ms: p50,
        p99_ms: p99,
        errors,
        cpu_us_per_request: cpu as f64 * 10_000.0 / requests.max(1) as f64,
    })
}

/// The status of one GET over a fresh connection (closed after it), each step bounded.
fn get_status(addr: SocketAddr) -> std::io::Result<u16> {
    let bound = Duration::from_millis(500);
    let mut s = TcpStream::connect_timeout(&addr, bound)?;
    s.set_read_timeout(Some(bound))?;
    s.set_write_timeout(Some(bound))?;
    write!(
        s,
        "GET /first HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.take(64 << 10).read_to_end(&mut raw)?;
    raw.get(9..12)
        .and_then(|code| std::str::from_utf8(code).ok()?.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))
}

/// Asks `addr` every 2 ms until it answers 200 (within `secs`); when it did.
async fn first_ok(addr: SocketAddr, secs: u64) -> anyhow::Result<Instant> {
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Ok(200) = get_status(addr) {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                bail!("{addr} did not answer 200 within {secs} s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })
    .await?
}

fn pod(name: &str, image: &str, label: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "labels": { "bench": label } },
        "spec": {
            "nodeName": NODE,
            "tolerations": wasm_toleration(),
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "web",
                "image": image,
                "ports": [{ "containerPort": 8080 }],
                "env": [{ "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }]
            }]
        }
    }))
    .expect("a valid pod manifest")
}

/// Deletes every pod labelled `bench=<label>` at once and waits until they are gone.
async fn clear(pods: &Api<Pod>, label: &str) -> anyhow::Result<()> {
    let selector = format!("bench={label}");
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    pods.delete_collection(&now, &ListParams::default().labels(&selector))
        .await?;
    for _ in 0..600 {
        if pods
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
            .is_empty()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("pods {selector} not gone")
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

/// With `HTTP_PERF=1`: a flat `perf` profile of `target` under `load` for 10 s, written
/// to `target/bench-http-<side>.perf.txt`; its top lines.
fn profile(target: &Target, load: Load, wrk_cpus: Option<&str>) -> anyhow::Result<String> {
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
    wrk(
        target,
        Load {
            seconds: 10,
            ..load
        },
        wrk_cpus,
    )?;
    record.wait()?;
    let report = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "-g",
            "none",
            "--percent-limit",
            "1",
        ])
        .args(["--sort", "dso,sym", "-i"])
        .arg(&data)
        .output()?;
    let text: String = String::from_utf8_lossy(&report.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .take(30)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dir.join(format!("bench-http-{side}.perf.txt")), &text)?;
    Ok(text)
}

fn start_peer(bin: &Path, component: &Path, port: u16, cpus: Option<&str>) -> anyhow::Result<Peer> {
    let log = std::fs::File::create(e2e::root().join("target/bench-http-wasmtime.log"))?;
    let child = pinned(bin, cpus)
        .args(["serve", "-Scli", "--addr", &format!("127.0.0.1:{port}")])
        .args(["--env", "POD_NAME=peer"])
        .arg(component)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(Peer(child))
}

/// The better (more requests per second) of `side`'s runs under `load`.
fn best(runs: &[Measured], side: Side, load: Load) -> anyhow::Result<Measured> {
    runs.iter()
        .filter(|m| m.side == side && m.load.connections == load.connections)
        .max_by(|a, b| a.requests_per_second.total_cmp(&b.requests_per_second))
        .cloned()
        .context("no run")
}

/// The middle of `sorted` (of an even count, the mean of the two middle values).
fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    (sorted[(n - 1) / 2] + sorted[n / 2]) / 2.0
}

/// The measurements, with the node, its pod network and the peer already up.
async fn measure(
    cluster: &Cluster,
    node: &KrustletNode,
    wasmtime: &Path,
    cpus: &[usize],
) -> anyhow::Result<serde_json::Value> {
    let pods = cluster.pods();
    let image = cluster.push(COMPONENT, "bench").await?;
    let component = e2e::root().join(format!("target/wasm/{COMPONENT}.wasm"));
    let (server_cpus, wrk_cpus) = if cpus.len() > 2 {
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
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let peer = start_peer(wasmtime, &component, port, server_cpus.as_deref())?;
    let peer_target = Target {
        side: Side::Wasmtime,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        pid: peer.0.id(),
    };

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
    first_ok(pod_target.addr, 60).await?;
    first_ok(peer_target.addr, 60).await?;

    let wrk_cpus = wrk_cpus.as_deref();
    let warmup = Load {
        seconds: WARMUP_SECONDS,
        ..LOADS[0]
    };
    for t in [&pod_target, &peer_target] {
        wrk(t, warmup, wrk_cpus)?;
    }
    let mut runs = Vec::new();
    for load in LOADS {
        for t in [&pod_target, &peer_target, &peer_target, &pod_target] {
            let m = wrk(t, load, wrk_cpus)?;
            eprintln!(
                "{:?} c{}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {} errors",
                m.side, load.connections, m.requests_per_second, m.p50_ms, m.p99_ms, m.errors
            );
            runs.push(m);
        }
    }
    if std::env::var("HTTP_PERF").is_ok_and(|v| v == "1") {
        for t in [&pod_target, &peer_target] {
            println!(
                "perf, {:?}, c{}:\n{}",
                t.side,
                LOADS[0].connections,
                profile(t, LOADS[0], wrk_cpus)?
            );
        }
    }
    clear(&pods, "http").await?;
    drop(peer);

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

    report(&runs, &to_ip, &to_ok, cpus, &pod_target, &peer_target)
}

/// Prints the table; the JSON to write.
fn report(
    runs: &[Measured],
    to_ip: &[f64],
    to_ok: &[f64],
    cpus: &[usize],
    pod: &Target,
    peer: &Target,
) -> anyhow::Result<serde_json::Value> {
    let pinning = if cpus.len() > 2 {
        format!(
            "both servers pinned to CPUs {}, wrk to {}",
            cpu_list(&cpus[..2]),
            cpu_list(&cpus[2..])
        )
    } else {
        format!(
            "{} CPUs in all: both servers, wrk and the control plane share them",
            cpus.len()
        )
    };
    let krustlet = format!(
        "krustlet pod at {} (one agent process, release build; the server on its guest runtime of \
         one worker thread per CPU at its start, a fresh instance per request, an access log line per request)",
        pod.addr
    );
    let wasmtime = format!(
        "wasmtime serve -Scli at {} (its defaults: a tokio runtime of one worker per CPU, a fresh \
         instance per request, the pooling allocator where the address space allows it)",
        peer.addr
    );
    println!("krustlet: {krustlet}\nwasmtime: {wasmtime}\n{pinning}");
    println!(
        "wrk {WARMUP_SECONDS} s warm-up of each, then krustlet, wasmtime, wasmtime, krustlet per load; the better run of each side counts\n"
    );
    println!("| server | connections | requests/s | p50 ms | p99 ms | server CPU µs per request |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let mut compared = Vec::new();
    for load in LOADS {
        let (k, w) = (
            best(runs, Side::Krustlet, load)?,
            best(runs, Side::Wasmtime, load)?,
        );
        for m in [&k, &w] {
            println!(
                "| {} | {} | {:.0} | {:.3} | {:.3} | {:.0} |",
                m.side.label(),
                load.connections,
                m.requests_per_second,
                m.p50_ms,
                m.p99_ms,
                m.cpu_us_per_request
            );
        }
        let ratio = |a: f64, b: f64| a / b;
        let (rps, p50, p99, cpu) = (
            ratio(k.requests_per_second, w.requests_per_second),
            ratio(k.p50_ms, w.p50_ms),
            ratio(k.p99_ms, w.p99_ms),
            ratio(k.cpu_us_per_request, w.cpu_us_per_request),
        );
        println!(
            "| krustlet / wasmtime | {} | {rps:.2}x | {p50:.2}x | {p99:.2}x | {cpu:.2}x |",
            load.connections
        );
        compared.push(serde_json::json!({
            "load": load, "krustlet": k, "wasmtime": w,
            "throughput_ratio": rps, "p50_ratio": p50, "p99_ratio": p99, "cpu_per_request_ratio": cpu
        }));
    }
    let main = &compared[0];
    let throughput_met = main["throughput_ratio"].as_f64().unwrap_or(0.0) >= 0.9;
    let p99_met = main["p99_ratio"].as_f64().unwrap_or(f64::MAX) <= 1.2;
    let said = |met: bool| if met { "met" } else { "missed" };
    println!(
        "\ntargets at {} connections: throughput at least 0.9x: {}; p99 within 1.2x: {}",
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
    let errors: u64 = runs.iter().map(|m| m.errors).sum();
    if errors > 0 {
        println!(
            "warning: wrk counted {errors} errors (socket errors or non-2xx answers) over all runs"
        );
    }
    Ok(serde_json::json!({
        "when": jiff::Timestamp::now().to_string(),
        "cpus": cpus.len(), "pinning": pinning, "krustlet": krustlet, "wasmtime": wasmtime,
        "warmup_seconds": WARMUP_SECONDS, "order": "krustlet, wasmtime, wasmtime, krustlet; the better run counts",
        "compared": compared, "runs": runs,
        "targets": { "throughput_at_least": 0.9, "p99_at_most": 1.2, "throughput_met": throughput_met, "p99_met": p99_met },
        "first_request": {
            "pods": to_ok.len(), "median_ms": median(to_ok), "create_to_200_ms": to_ok,
            "create_to_ip_ms": to_ip, "median_create_to_ip_ms": median(to_ip)
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
