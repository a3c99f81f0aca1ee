//! Krustlet against the peers an operator would pick instead (issue 14), on one control
//! plane, in one run: the upstream kubelet with containerd and runc running the same C
//! programs built natively (plain containers), the same kubelet running the same wasm with
//! runwasi's shim library (`containerd-shim-wasm`, hack/peer-shim) and, when it was given,
//! runwasi's own wasmtime shim, and kwok (only the API round trips). Run with
//! `hack/bench peers`, which builds and starts the peer node (`hack/peer-node`), imports its
//! images and sets the `PEER_*` variables read here.
//!
//! Every pod of a real node gets a network namespace and a veth on a bridge from the CNI
//! bridge plugin: krustlet's through `--cni-conf-dir`, the kubelet's through containerd.
//!
//! Rows, each for every node that can run it:
//! - pod start latency, from just before the create request to the watch event showing
//!   the pod `Ready` (the `tool` program idling in `sleep`) or `Succeeded` (`tool print
//!   done`), images cached, `PEERS_PODS` (100) one at a time and all at once;
//! - N idle pods (`PEERS_DENSITY_SIZES`, 100 and 500): time until all are Ready and the
//!   memory the node needs for them over its memory with no pods, per pod. Memory is the
//!   proportional set size (PSS) of every process of the node: krustlet's one process;
//!   for the kubelet node the kubelet, containerd, and every shim our containerd started
//!   with all their descendants (pause and container processes). Kernel memory (page
//!   tables, namespaces, cgroups) is not in it, on either side;
//! - churn: 10 workers create a run-to-completion pod, wait for `Succeeded`, delete it and
//!   wait until it is gone, for `PEERS_CHURN_SECONDS` (120) per node: pods per second;
//! - compute: the `hash` loop (its own timing of the loop, so start and compilation are
//!   out), median of 3 runs per node.
//!
//! Writes `bench-results/peers.{json,csv,svg}`.

use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::bench::{
    self, BenchPod, cpu_ticks, hash_seconds, median, percentile, processes_under, pss_kib,
};
use e2e::{Cluster, KrustletNode};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

const KRUSTLET_NODE: &str = "bench-krustlet";
const KWOK_NODE: &str = "bench-kwok";
const HASH_ROUNDS: &str = "4000";
const HASH_RUNS: usize = 3;

/// How the memory of a node's processes is found.
enum Memory {
    /// One process.
    Process(u32),
    /// The kubelet, containerd, and every process under the shims that carry containerd's
    /// socket address in their arguments.
    Kubelet {
        kubelet: u32,
        containerd: u32,
        address: String,
    },
    /// Nothing to measure (kwok writes statuses only).
    None,
}

impl Memory {
    /// The processes counted.
    fn pids(&self) -> Vec<u32> {
        match self {
            Self::Process(pid) => vec![*pid],
            Self::Kubelet {
                kubelet,
                containerd,
                address,
            } => {
                let mut pids = vec![*kubelet, *containerd];
                pids.extend(processes_under(&format!("-address {address}")));
                pids
            }
            Self::None => Vec::new(),
        }
    }

    /// Their total PSS in KiB, and how many there are.
    fn pss_kib(&self) -> (u64, usize) {
        let pids = self.pids();
        (pids.iter().filter_map(|&p| pss_kib(p)).sum(), pids.len())
    }

    /// Waits, for at most `secs`, until the node runs no pod process any more (the kubelet
    /// and containerd tear containers down after the pods are gone from the API, and that
    /// work must not fall into the next measure).
    async fn settle(&self, secs: u64) {
        if let Self::Kubelet { address, .. } = self {
            let needle = format!("-address {address}");
            let give_up = Instant::now() + Duration::from_secs(secs);
            let left = loop {
                let left = processes_under(&needle).len();
                if left == 0 || Instant::now() >= give_up {
                    break left;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            };
            if left > 0 {
                // runwasi's node after its 500 pods broke: the shims went on multiplying.
                println!(
                    "warning: the kubelet node still runs {left} pod processes after {secs} s; \
                     what follows is measured beside them"
                );
            }
        }
    }

    /// Their total CPU time in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        self.pids().iter().filter_map(|&p| cpu_ticks(p)).sum()
    }
}

/// A node under test and the pods it runs.
struct Target {
    label: &'static str,
    /// The idle and run-to-completion `tool` pods and the `hash` pod differ only in image
    /// and arguments.
    template: BenchPod,
    tool: String,
    hash: Option<String>,
    memory: Memory,
    /// Churn and density are measured (not for kwok).
    real: bool,
}

impl Target {
    fn tool(&self) -> BenchPod {
        BenchPod {
            image: self.tool.clone(),
            ..self.template.clone()
        }
    }

    fn idle(&self) -> BenchPod {
        self.tool().idle()
    }

    fn completing(&self) -> BenchPod {
        self.tool().completing()
    }
}

fn env(key: &str) -> anyhow::Result<String> {
    std::env::var(key).with_context(|| format!("{key} is not set: run this with hack/bench peers"))
}

fn env_num(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One line of the results: a measure, and each node's figure (None: not measured).
struct Line {
    measure: String,
    unit: &'static str,
    figures: Vec<Option<f64>>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    let pods = cluster.pods();
    let peer_node = env("PEER_NODE")?;
    let peer_memory = || -> anyhow::Result<Memory> {
        Ok(Memory::Kubelet {
            kubelet: env("PEER_KUBELET_PID")?.parse()?,
            containerd: env("PEER_CONTAINERD_PID")?.parse()?,
            address: env("PEER_CONTAINERD_ADDRESS")?,
        })
    };
    // Krustlet's pods get what the kubelet's get: a network namespace each, wired by the
    // same CNI bridge plugin (a bridge of the bench's own, addresses from a /20).
    let net = e2e::PodNet::for_node_in(KRUSTLET_NODE, "10.244.240.0/20")?;
    let mut flags = vec!["--max-pods".to_owned(), "1100".to_owned()];
    flags.extend(net.flags());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let node: KrustletNode = cluster.ready_node(KRUSTLET_NODE, 10401, &flags).await?;
    let kwok = e2e::kwok_node(&cluster, KWOK_NODE, 10499, 10498).await?;
    let krustlet_pid = node.pid().context("krustlet is not running")?;
    let template = |node: &str| BenchPod::new(node, "");
    let tool = cluster.push("tool", "bench").await?;
    let hash = cluster.push("hash", "bench").await?;
    let mut targets = vec![
        Target {
            label: "krustlet",
            template: template(KRUSTLET_NODE),
            tool: tool.clone(),
            hash: Some(hash),
            memory: Memory::Process(krustlet_pid),
            real: true,
        },
        Target {
            label: "kubelet + runc (native)",
            template: BenchPod {
                never_pull: true,
                ..template(&peer_node)
            },
            tool: env("PEER_NATIVE_TOOL")?,
            hash: Some(env("PEER_NATIVE_HASH")?),
            memory: peer_memory()?,
            real: true,
        },
    ];
    // The wasm peers run the same images: runwasi's own wasmtime shim when `PEER_WASM_SHIM`
    // named it (RuntimeClass `wasmtime`), and hack/peer-shim, runwasi's shim library with
    // krustlet's wasmtime release, always (RuntimeClass `peerwasm`).
    let mut wasm_peers = Vec::new();
    if std::env::var_os("PEER_RUNWASI").is_some() {
        wasm_peers.push(("kubelet + runwasi", "wasmtime"));
    } else {
        println!("runwasi's own shim was not given (PEER_WASM_SHIM): its rows are left out");
    }
    wasm_peers.push(("kubelet + containerd-shim-wasm", "peerwasm"));
    for (label, class) in wasm_peers {
        targets.push(Target {
            label,
            template: BenchPod {
                never_pull: true,
                runtime_class: Some(class.to_owned()),
                ..template(&peer_node)
            },
            tool: env("PEER_WASM_TOOL")?,
            hash: Some(env("PEER_WASM_HASH")?),
            memory: peer_memory()?,
            real: true,
        });
    }
    targets.push(Target {
        label: "kwok",
        template: template(KWOK_NODE),
        tool,
        hash: None,
        memory: Memory::None,
        real: false,
    });

    let count = usize::try_from(env_num("PEERS_PODS", 100))?;
    let mut lines: Vec<Line> = Vec::new();
    let mut samples = serde_json::Map::new();
    // Warm every node: its image cached (and for krustlet, compiled) before timing.
    for t in targets.iter().filter(|t| t.real) {
        bench::start_latency(
            &pods,
            &t.completing(),
            std::slice::from_ref(&t.tool),
            2,
            false,
            300,
        )
        .await
        .with_context(|| format!("warming {}", t.label))?;
    }
    settle(&targets).await;

    // Start latency.
    for (what, completion) in [("Ready", false), ("Succeeded", true)] {
        for (how, burst) in [
            ("one at a time", false),
            (&*format!("{count} at once"), true),
        ] {
            let mut latencies: Vec<Option<Vec<f64>>> = Vec::new();
            for t in &targets {
                let pod = if completion { t.completing() } else { t.idle() };
                if completion && !t.real {
                    // kwok completes only pods that a Job owns.
                    latencies.push(None);
                    continue;
                }
                let ms = bench::start_latency(
                    &pods,
                    &pod,
                    std::slice::from_ref(&pod.image),
                    count,
                    burst,
                    300,
                )
                .await
                .with_context(|| format!("{}: start latency, {what}, {how}", t.label))?;
                settle(&targets).await;
                println!(
                    "{}: {what}, {how}: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms",
                    t.label,
                    percentile(&ms, 0.5),
                    percentile(&ms, 0.9),
                    percentile(&ms, 0.99)
                );
                samples.insert(format!("{}: {what}, {how}", t.label), serde_json::json!(ms));
                latencies.push(Some(ms));
            }
            for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
                lines.push(Line {
                    measure: format!("pod start to {what}, {how}, {name}"),
                    unit: "ms",
                    figures: latencies
                        .iter()
                        .map(|ms| ms.as_deref().map(|ms| percentile(ms, p)))
                        .collect(),
                });
            }
        }
    }

    report(&targets, &lines, &samples, false)?;

    // Density.
    let sizes: Vec<usize> = std::env::var("PEERS_DENSITY_SIZES")
        .unwrap_or_else(|_| "100,500".to_owned())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    for n in sizes {
        let mut results: Vec<Option<Density>> = Vec::new();
        for t in &targets {
            if !t.real {
                results.push(None);
                continue;
            }
            results.push(match density(&pods, t, n).await {
                Ok(d) => {
                    println!(
                        "{}: {n} idle pods: all Ready in {:.1} s, {:.0} KiB per pod, {:.1} % CPU idle",
                        t.label, d.to_ready, d.kib_per_pod, d.idle_cpu
                    );
                    Some(d)
                }
                Err(e) => {
                    println!("{}: {n} idle pods: broke: {e:#}", t.label);
                    None
                }
            });
            bench::clear(&pods, 600).await?;
            settle(&targets).await;
        }
        for (measure, unit, figure) in Density::MEASURES {
            lines.push(Line {
                measure: format!("{n} idle pods: {measure}"),
                unit,
                figures: results.iter().map(|d| d.as_ref().map(figure)).collect(),
            });
        }
        report(&targets, &lines, &samples, false)?;
    }

    // Churn.
    let seconds = env_num("PEERS_CHURN_SECONDS", 120);
    let mut churned = Vec::new();
    for t in &targets {
        if !t.real {
            churned.push(None);
            continue;
        }
        let rate = churn(&pods, t, seconds)
            .await
            .with_context(|| format!("{}: churn", t.label))?;
        println!("{}: churn: {rate:.1} pods/s", t.label);
        settle(&targets).await;
        churned.push(Some(rate));
    }
    lines.push(Line {
        measure: format!("churn, 10 at a time for {seconds} s"),
        unit: "pods/s",
        figures: churned,
    });
    report(&targets, &lines, &samples, false)?;

    // Compute.
    let mut compute = Vec::new();
    let mut expected: Option<String> = None;
    for t in &targets {
        let Some(image) = &t.hash else {
            compute.push(None);
            continue;
        };
        let pod = BenchPod {
            image: image.clone(),
            args: vec![HASH_ROUNDS.to_owned()],
            completion: true,
            ..t.template.clone()
        };
        let mut runs = Vec::new();
        for i in 0..HASH_RUNS {
            let log =
                bench::run_to_completion(&pods, &pod, &format!("bench-hash-{i}"), 600).await?;
            let (digest, secs) = hash_seconds(&log)?;
            match &expected {
                None => expected = Some(digest),
                Some(d) => {
                    anyhow::ensure!(*d == digest, "{} computed {digest}, others {d}", t.label)
                }
            }
            runs.push(secs);
        }
        let m = median(&mut runs);
        println!("{}: hash loop ({HASH_ROUNDS} rounds): {m:.3} s", t.label);
        compute.push(Some(m));
    }
    lines.push(Line {
        measure: format!("compute: hash loop, {HASH_ROUNDS} rounds, median of {HASH_RUNS}"),
        unit: "s",
        figures: compute,
    });
    bench::clear(&pods, 600).await?;
    drop(kwok);

    report(&targets, &lines, &samples, true)
}

/// Lets every node finish tearing down the pods of the last measure, then waits until the
/// machine is quiet (under half a core busy, for at most 2 minutes) and 5 s more. A first
/// run without the quiet wait had krustlet's 500 idle pods measured while the kubelet node
/// and the kernel were still removing runwasi's 100 (load average 90).
async fn settle(targets: &[Target]) {
    for t in targets {
        t.memory.settle(600).await;
    }
    bench::quiet(0.5, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
}

/// What `n` idle pods cost a node.
struct Density {
    /// Seconds until all are Ready.
    to_ready: f64,
    /// Memory per pod over the node with none (KiB, PSS).
    kib_per_pod: f64,
    /// The node's memory in all (MiB, PSS).
    total_mib: f64,
    /// The node's CPU use over 10 idle seconds (% of a core).
    idle_cpu: f64,
}

/// A density measure: its name, its unit, and where a [`Density`] holds it.
type DensityMeasure = (&'static str, &'static str, fn(&Density) -> f64);

impl Density {
    const MEASURES: [DensityMeasure; 4] = [
        ("time to all Ready", "s", |d| d.to_ready),
        ("memory per pod", "KiB", |d| d.kib_per_pod),
        ("the node's memory in all", "MiB", |d| d.total_mib),
        ("CPU while idle", "%", |d| d.idle_cpu),
    ];
}

/// `n` idle pods on target `t`.
async fn density(pods: &Api<Pod>, t: &Target, n: usize) -> anyhow::Result<Density> {
    bench::clear(pods, 600).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (baseline, _) = t.memory.pss_kib();
    // Generous: two seconds per pod past the first two minutes (runwasi's node missed a
    // second per pod at 500 on 2 cores).
    let to_ready = bench::all_ready(pods, &t.idle(), n, 120 + 2 * n as u64).await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cpu0 = t.memory.cpu_ticks();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle_cpu = t.memory.cpu_ticks().saturating_sub(cpu0) as f64 / 10.0;
    let (total, processes) = t.memory.pss_kib();
    println!(
        "  {}: {processes} processes, PSS {:.0} MiB with {n} pods, {:.0} MiB with none",
        t.label,
        total as f64 / 1024.0,
        baseline as f64 / 1024.0
    );
    Ok(Density {
        to_ready,
        kib_per_pod: total.saturating_sub(baseline) as f64 / n as f64,
        total_mib: total as f64 / 1024.0,
        idle_cpu,
    })
}

/// Pods per second that 10 workers create, run to `Succeeded` and delete on `t`.
async fn churn(pods: &Api<Pod>, t: &Target, seconds: u64) -> anyhow::Result<f64> {
    bench::clear(pods, 600).await?;
    let began = Instant::now();
    let until = began + Duration::from_secs(seconds);
    let total = bench::churn(pods, &t.completing(), until, 10, 300).await?;
    Ok(total as f64 / began.elapsed().as_secs_f64())
}

/// Writes `bench-results/peers.*` with the lines measured so far (after every section, so
/// that a run cut short still leaves its figures, marked `"complete": false`), and prints the
/// table when `complete`.
fn report(
    targets: &[Target],
    lines: &[Line],
    samples: &serde_json::Map<String, serde_json::Value>,
    complete: bool,
) -> anyhow::Result<()> {
    let labels: Vec<&str> = targets.iter().map(|t| t.label).collect();
    let fmt = |v: Option<f64>| match v {
        None => "-".to_owned(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    };
    // Ratios are krustlet's advantage over each real peer: the peer's figure over ours
    // (times, memory, CPU), or ours over the peer's (pods per second).
    let peers: Vec<usize> = (1..targets.len()).filter(|&i| targets[i].real).collect();
    let mut header = format!("| measure | {} |", labels.join(" | "));
    let mut rule = format!("| --- |{}", " --- |".repeat(labels.len()));
    for &i in &peers {
        header.push_str(&format!(" krustlet's lead over {} |", labels[i]));
        rule.push_str(" --- |");
    }
    let mut table = format!("{header}\n{rule}\n");
    let mut csv = format!("measure,unit,{}\n", labels.join(","));
    let mut json_lines = Vec::new();
    for line in lines {
        let mut row = format!("| {} ({}) |", line.measure, line.unit);
        for v in &line.figures {
            row.push_str(&format!(" {} |", fmt(*v)));
        }
        let mut leads = serde_json::Map::new();
        for &i in &peers {
            let lead = match (line.figures[0], line.figures[i]) {
                (Some(ours), Some(theirs)) if ours > 0.0 && theirs > 0.0 => {
                    Some(if line.unit == "pods/s" {
                        ours / theirs
                    } else {
                        theirs / ours
                    })
                }
                _ => None,
            };
            row.push_str(&format!(
                " {} |",
                lead.map_or("-".to_owned(), |l| format!("{l:.2}x"))
            ));
            leads.insert(labels[i].to_owned(), serde_json::json!(lead));
        }
        table.push_str(&row);
        table.push('\n');
        csv.push_str(&format!(
            "{},{},{}\n",
            line.measure,
            line.unit,
            line.figures
                .iter()
                .map(|v| v.map_or(String::new(), |v| format!("{v:.3}")))
                .collect::<Vec<_>>()
                .join(",")
        ));
        json_lines.push(serde_json::json!({
            "measure": line.measure, "unit": line.unit,
            "figures": labels.iter().zip(&line.figures).map(|(l, v)| ((*l).to_owned(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
            "krustlet_lead": leads,
        }));
    }
    let dir = e2e::root().join("bench-results");
    std::fs::create_dir_all(&dir)?;
    let versions = serde_json::json!({
        "kubernetes": std::env::var("PEER_VERSIONS").unwrap_or_default(),
        "date": jiff::Timestamp::now().to_string(),
    });
    std::fs::write(
        dir.join("peers.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "complete": complete, "nodes": labels, "versions": versions, "lines": json_lines,
            "start_latency_samples_ms": samples
        }))?,
    )?;
    std::fs::write(dir.join("peers.csv"), csv)?;
    std::fs::write(dir.join("peers.svg"), svg(&labels, lines))?;
    if complete {
        print!("{table}");
        println!("written: bench-results/peers.json, peers.csv, peers.svg");
    }
    Ok(())
}

/// One panel of bars per measure (each on its own linear scale), one bar per node.
fn svg(labels: &[&str], lines: &[Line]) -> String {
    let colours = ["#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363"];
    let (bar, gap, width) = (14.0, 6.0, 420.0);
    let panel = |n: usize| 24.0 + n as f64 * bar + gap;
    let height = 60.0 + lines.len() as f64 * panel(labels.len());
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"980\" height=\"{height:.0}\" font-family=\"sans-serif\" font-size=\"11\">\n<text x=\"10\" y=\"18\" font-size=\"14\">krustlet and its peers, one run on one control plane (each measure on its own scale)</text>\n"
    );
    for (i, label) in labels.iter().enumerate() {
        out.push_str(&format!(
            "<rect x=\"{:.0}\" y=\"28\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{:.0}\" y=\"37\">{label}</text>\n",
            10.0 + i as f64 * 200.0,
            colours[i % colours.len()],
            24.0 + i as f64 * 200.0
        ));
    }
    for (k, line) in lines.iter().enumerate() {
        let y0 = 50.0 + k as f64 * panel(labels.len());
        out.push_str(&format!(
            "<text x=\"10\" y=\"{:.0}\">{} ({})</text>\n",
            y0 + 14.0,
            line.measure,
            line.unit
        ));
        let max = line.figures.iter().flatten().copied().fold(0.0, f64::max);
        for (i, v) in line.figures.iter().enumerate() {
            let y = y0 + 20.0 + i as f64 * bar;
            let Some(v) = v else { continue };
            let w = if max > 0.0 { width * v / max } else { 0.0 };
            out.push_str(&format!(
                "<rect x=\"420\" y=\"{y:.0}\" width=\"{w:.1}\" height=\"{:.0}\" fill=\"{}\"/><text x=\"{:.0}\" y=\"{:.0}\">{v:.1}</text>\n",
                bar - 2.0,
                colours[i % colours.len()],
                424.0 + w,
                y + bar - 4.0
            ));
        }
    }
    out.push_str("</svg>\n");
    out
}
