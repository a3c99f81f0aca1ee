//! wasi:http serving against `wasmtime serve`, run with `hack/bench http`, which builds
//! krustlet in release mode and the components (`target/wasm/http-hello.component.wasm`,
//! WASI 0.2; `p3-hello` and `p3-slow`, WASI 0.3), installs the `wasmtime` CLI of the
//! release krustlet links and the `oha` load generator from crates.io when missing, and
//! sets `KRUSTLET_BIN`, `WASMTIME_BIN`, `OHA_BIN` and `HTTP_VERSIONS`.
//!
//! **Throughput and latency.** The hello component served by a pod of a networked
//! krustlet node (its pod IP, port 8080, over the node's bridge) and by `wasmtime serve
//! -Scli` in a pod-like network namespace on the same bridge ([`peer`]: same path, same
//! hops), in one run, all loaded by `oha` with the same settings
//! (keep-alive connections, each sending its next request when the last answer is in).
//! A third server, `wasmtime serve -O pooling-allocator=n`, has the on-demand instance
//! allocator krustlet's engine used, which tells that cost apart from the rest. Beside
//! them, in the same rounds, the WASI 0.3 `p3-hello` component served by a second pod of
//! the node and by `wasmtime serve` (both reuse instances: up to 128 requests each, 16 at
//! once). A warm-up of each, then for each load (16 connections on 2 client threads for
//! 15 s; 1 connection on 1 thread for 10 s) three rounds of one run each, the middle
//! round in reverse order; of each server's three runs the median by requests per second
//! counts (all are in the JSON). The percentiles are those of the
//! requests made: oha corrects nothing by default, where wrk 4 adds samples for requests
//! a fixed-rate client would have sent during a stall, which turns a few 40 ms stalls
//! into the p99. Beside them, the CPU time each server process used over the run (from
//! `/proc`) per request. With more than 2 CPUs, both servers are pinned to the first two
//! and the client to the rest; with 2, everything (and the control plane) shares them.
//!
//! **HTTP/2** ([`h2`]): the `p3-hello` pod loaded over one HTTP/2 connection of 100
//! streams against 100 HTTP/1.1 connections (no peer: `wasmtime serve` speaks HTTP/1.1
//! only).
//!
//! **First request** ([`first`]): new pods of the same (cached) image, one at a time,
//! from the create request to the first 200 from the pod's IP, beside kwok's
//! create-to-Ready of the same pods.
//!
//! **Memory** ([`memory`]): the agent's RSS per idle served pod, WASI 0.3 against 0.2,
//! and per 1000 requests held open at once.
//!
//! `HTTP_PERF=1` adds a `perf` profile of each server but the on-demand one under the
//! 16-connection load (`target/bench-http-<side>.perf.{data,txt}`; the text lists the
//! symbols with 3 % or more of the samples, counting what they call). Prints tables
//! ([`report`]) and writes `bench-results/http.json`.

#[path = "http/first.rs"]
mod first;
#[path = "http/h2.rs"]
mod h2;
#[path = "http/memory.rs"]
mod memory;
#[path = "http/peer.rs"]
mod peer;
#[path = "http/report.rs"]
mod report;

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
use kube::api::PostParams;
use kube::runtime::{WatchStreamExt, watcher};
use peer::PeerNet;

const NODE: &str = "bench-http";
const NODE_PORT: u16 = 10410;
const KWOK_NODE: &str = "bench-http-kwok";
const COMPONENT: &str = "http-hello.component";
/// The WASI 0.3 service of the comparison (hand-written, no language runtime).
const P3_COMPONENT: &str = "p3-hello.component";
const WARMUP_SECONDS: u64 = 5;

#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum Side {
    Krustlet,
    /// `wasmtime serve` with its defaults: the peer of the comparison.
    Wasmtime,
    /// `wasmtime serve -O pooling-allocator=n`: the on-demand instance allocator krustlet's
    /// engine used, to tell that cost apart from the rest.
    WasmtimeOnDemand,
    /// The WASI 0.3 `p3-hello` served by a krustlet pod (reused instances).
    KrustletP3,
    /// `wasmtime serve` of `p3-hello` with its defaults (reused instances): its peer.
    WasmtimeP3,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Self::Krustlet => "krustlet pod",
            Self::Wasmtime => "wasmtime serve",
            Self::WasmtimeOnDemand => "wasmtime serve, on-demand allocator",
            Self::KrustletP3 => "krustlet pod, WASI 0.3 p3-hello",
            Self::WasmtimeP3 => "wasmtime serve, WASI 0.3 p3-hello",
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

/// `wasmtime serve` of `component` on `port` of the peers' namespace.
fn start_peer(
    bin: &Path,
    component: &Path,
    net: &PeerNet,
    port: u16,
    cpus: Option<&str>,
    side: Side,
) -> anyhow::Result<(Peer, Target)> {
    let name = format!("target/bench-http-{side:?}.log").to_lowercase();
    let log = std::fs::File::create(e2e::root().join(name))?;
    let mut cmd = net.command(bin, cpus);
    cmd.args(["serve", "-Scli", "--addr", &format!("0.0.0.0:{port}")])
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
        addr: SocketAddr::new(net.ip, port),
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

/// Creates the serving pod `name` of `image` (labelled `bench=http`) and waits for its
/// address.
async fn serving(
    pods: &Api<Pod>,
    seen: &Addresses,
    name: &str,
    image: &str,
    side: Side,
    pid: u32,
) -> anyhow::Result<Target> {
    pods.create(&PostParams::default(), &pod(name, image, "http"))
        .await?;
    let (_, ip) = address_of(pods, seen, name, 120).await?;
    Ok(Target {
        side,
        addr: SocketAddr::new(ip, 8080),
        pid,
    })
}

/// The measurements, with the node and its pod network up.
async fn measure(
    cluster: &Cluster,
    node: &KrustletNode,
    peer_net: &PeerNet,
    wasmtime: &Path,
    cpus: &[usize],
) -> anyhow::Result<serde_json::Value> {
    let began = Instant::now();
    let since = || began.elapsed().as_secs_f64();
    let pods = cluster.pods();
    let image = cluster.push(COMPONENT, "bench").await?;
    let p3_image = cluster.push(P3_COMPONENT, "bench").await?;
    let component = |name: &str| e2e::root().join(format!("target/wasm/{name}.wasm"));
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
    let hello = component(COMPONENT);
    let (peer, peer_target) = start_peer(
        wasmtime,
        &hello,
        peer_net,
        8080,
        server_cpus,
        Side::Wasmtime,
    )?;
    let (on_demand, on_demand_target) = start_peer(
        wasmtime,
        &hello,
        peer_net,
        8081,
        server_cpus,
        Side::WasmtimeOnDemand,
    )?;
    let (peer_p3, peer_p3_target) = start_peer(
        wasmtime,
        &component(P3_COMPONENT),
        peer_net,
        8082,
        server_cpus,
        Side::WasmtimeP3,
    )?;

    clear(&pods, "http").await?;
    clear(&pods, "http-fresh").await?;
    let seen = watch_addresses(pods.clone(), "http");
    let pod_target = serving(
        &pods,
        &seen,
        "bench-http-serve",
        &image,
        Side::Krustlet,
        krustlet_pid,
    )
    .await?;
    let pod_p3_target = serving(
        &pods,
        &seen,
        "bench-http-serve-p3",
        &p3_image,
        Side::KrustletP3,
        krustlet_pid,
    )
    .await?;
    let targets = [
        &pod_target,
        &peer_target,
        &on_demand_target,
        &pod_p3_target,
        &peer_p3_target,
    ];
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
    let backwards: Vec<&Target> = targets.iter().rev().copied().collect();
    let order = [&targets[..], &backwards, &targets[..]].concat();
    let mut runs = Vec::new();
    for load in LOADS {
        for t in &order {
            let m = run_load(t, load, client_cpus)?;
            m.run.progress(m.side.label());
            runs.push(m);
        }
    }
    if std::env::var("HTTP_PERF").is_ok_and(|v| v == "1") {
        for t in [&pod_target, &peer_target, &pod_p3_target, &peer_p3_target] {
            let top = profile(t, LOADS[0], client_cpus)?;
            println!(
                "perf, {}, c{}:\n{top}",
                t.side.label(),
                LOADS[0].connections
            );
        }
    }
    eprintln!("the rounds done at {:.0} s", since());
    let over_h2 = h2::measure(&pod_p3_target, client_cpus)?;
    eprintln!("HTTP/2 done at {:.0} s", since());
    clear(&pods, "http").await?;
    drop(peer);
    drop(on_demand);
    drop(peer_p3);

    let first = first::requests(cluster, &pods, &image).await?;
    eprintln!("first requests done at {:.0} s", since());
    let memory = memory::measure(
        cluster,
        krustlet_pid,
        &memory::Images {
            p2_hello: image,
            p3_hello: p3_image,
            p3_slow: cluster.push("p3-slow.component", "bench").await?,
        },
    )
    .await?;
    eprintln!("memory done at {:.0} s", since());
    report::report(&report::Measures {
        runs: &runs,
        over_h2: &over_h2,
        first: &first,
        memory: &memory,
        cpus,
        targets: &targets,
    })
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
    let pod_cidr = cluster
        .nodes()
        .get(NODE)
        .await?
        .spec
        .and_then(|s| s.pod_cidr)
        .context("the node has no pod CIDR")?;
    let peer_net = PeerNet::attach(&net, &pod_cidr).await?;
    let measured = measure(&cluster, &node, &peer_net, &wasmtime, &allowed_cpus()).await;
    if let Err(e) = peer_net.detach().await {
        eprintln!("detaching the peers' namespace: {e:#}");
    }
    let pods = cluster.pods();
    let _ = clear(&pods, "http").await;
    let _ = clear(&pods, "http-fresh").await;
    let _ = clear(&pods, memory::LABEL).await;
    drop(node);
    drop(net);
    let json = measured?;
    let dir = e2e::root().join("bench-results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("http.json"), serde_json::to_string_pretty(&json)?)?;
    println!("written: bench-results/http.json");
    Ok(())
}
