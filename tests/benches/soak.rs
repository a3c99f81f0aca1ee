//! The soak (issue 9, served pods and port-forwards since issue 22): `hack/bench soak` runs
//! one networked krustlet node (release build, a pod network of its own: a bridge, the CNI
//! reference plugins, a namespace per pod) on the local control plane for `SOAK_SECONDS`
//! (1800) under a mix of work at once, and samples the agent's resident memory, open
//! descriptors and threads once a minute:
//!
//! - churn: 4 workers create a run-to-completion pod, wait for `Succeeded`, delete it;
//! - log floods: 2 workers run a pod that writes 40 MiB of log lines as fast as it can
//!   (past the 10 MiB rotation size, so every flood rotates), read its last lines through
//!   the kubelet API (`kubectl logs --tail`), delete it;
//! - crash loops: 2 workers run a `restartPolicy: Always` pod that exits 1 or traps,
//!   wait for its second restart (back-off 10 s, then 20 s), delete it;
//! - served pods: 2 workers create a pod of the `wasi:http` hello component, wait for
//!   Ready, send 19 requests to its pod IP (two of them allocating 8 MiB in the handler,
//!   one sleeping a second), delete it;
//! - port-forwards: 1 worker creates a served pod and opens `kubectl port-forward` to it
//!   twice (the API server relays each to the node's kubelet API), 4 requests through each,
//!   each session within 120 s, then deletes it.
//!
//! At the end it clears every pod, waits 30 s, samples again and counts what is left: the
//! data dir's pod directories and partial downloads, the node's pinned network namespaces
//! and the CNI addresses still leased (all should be nothing). "Flat" compares the last
//! five samples with the five after a five-minute warm-up (caches fill first): memory
//! within 10 % and descriptors within 16 is flat. Written to `bench-results/soak.json`
//! (with the run's length in seconds, which a shorter run than the default says).

#[path = "soak/serve.rs"]
mod serve;

use std::time::{Duration, Instant};

use e2e::{
    Cluster, KrustletNode, PodNet, delete_and_wait, proc_status, wait_node, wait_pod, wasm_pod,
};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, LogParams, PostParams};

const NODE: &str = "bench-soak";
/// The node's kubelet API port (no e2e test uses it).
const PORT: u16 = 10412;

/// One minute's figures: seconds since the start, RSS in KiB, open descriptors, threads.
#[derive(Clone, Copy, serde::Serialize)]
struct Sample {
    second: u64,
    rss_kib: u64,
    fds: usize,
    threads: u64,
}

fn sample(pid: u32, began: Instant) -> Sample {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    Sample {
        second: began.elapsed().as_secs(),
        rss_kib: proc_status(pid, "VmRSS").unwrap_or_default(),
        fds,
        threads: proc_status(pid, "Threads").unwrap_or_default(),
    }
}

fn labelled(mut pod: Pod) -> Pod {
    pod.metadata.labels = Some([("bench".to_owned(), "soak".to_owned())].into());
    if let Some(spec) = pod.spec.as_mut() {
        spec.termination_grace_period_seconds = Some(0);
    }
    pod
}

fn succeeded(p: &Pod) -> bool {
    e2e::phase(p) == "Succeeded"
}

fn restarted_twice(p: &Pod) -> bool {
    e2e::container_status(p, "main").is_some_and(|s| s.restart_count >= 2)
}

/// What a worker runs, round after round.
#[derive(Clone, Copy)]
enum Kind {
    Churn,
    Flood,
    Crash,
    Serve,
    Forward,
}

/// What one worker did: its rounds, the forward sessions it opened, the requests it sent.
#[derive(Default)]
struct Tally {
    rounds: u64,
    sessions: u64,
    requests: u64,
}

/// What every worker needs: the pods API, the node, the two images, the cluster (for
/// `kubectl port-forward`).
struct Mix<'a> {
    cluster: &'a Cluster,
    pods: Api<Pod>,
    node: String,
    tool: String,
    web: String,
}

/// One worker: runs its kind of pod over and over until `end`; what it did.
async fn worker(mix: &Mix<'_>, kind: Kind, id: usize, end: Instant) -> anyhow::Result<Tally> {
    let (pods, node, tool) = (&mix.pods, mix.node.as_str(), mix.tool.as_str());
    let mut tally = Tally::default();
    while Instant::now() < end {
        let rounds = tally.rounds;
        let name = format!("soak-{id}-{rounds}");
        match kind {
            Kind::Churn => {
                let pod = wasm_pod(&name, node, tool, &["print", "done"], "Never");
                pods.create(&PostParams::default(), &labelled(pod)).await?;
                wait_pod(pods, &name, 120, "Succeeded", succeeded).await?;
            }
            Kind::Flood => {
                let pod = wasm_pod(&name, node, tool, &["flood", "40"], "Never");
                pods.create(&PostParams::default(), &labelled(pod)).await?;
                wait_pod(pods, &name, 300, "Succeeded", succeeded).await?;
                let params = LogParams {
                    tail_lines: Some(3),
                    ..LogParams::default()
                };
                let tail = pods.logs(&name, &params).await?;
                anyhow::ensure!(
                    tail.lines().count() == 3 && tail.contains("0000419439"),
                    "{name}: the log's tail is not the flood's last lines: {tail:?}"
                );
            }
            Kind::Crash => {
                let args: &[&str] = if rounds.is_multiple_of(2) {
                    &["print", "crashing", "exit", "1"]
                } else {
                    &["print", "trapping", "trap"]
                };
                let pod = wasm_pod(&name, node, tool, args, "Always");
                pods.create(&PostParams::default(), &labelled(pod)).await?;
                wait_pod(pods, &name, 300, "a second restart", restarted_twice).await?;
            }
            Kind::Serve => {
                // The round deletes its pod itself.
                tally.requests += serve::serve_round(pods, node, &mix.web, &name).await?;
                tally.rounds += 1;
                continue;
            }
            Kind::Forward => {
                let (sessions, requests) =
                    serve::forward_round(mix.cluster, pods, node, &mix.web, &name).await?;
                tally.sessions += sessions;
                tally.requests += requests;
                tally.rounds += 1;
                continue;
            }
        }
        delete_and_wait(pods, &name, 120).await?;
        tally.rounds += 1;
    }
    Ok(tally)
}

/// Entries left under `dir` (0 when it does not exist).
fn left_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, Iterator::count)
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// The kinds of the workers, one entry each.
const KINDS: [Kind; 11] = [
    Kind::Churn,
    Kind::Churn,
    Kind::Churn,
    Kind::Churn,
    Kind::Flood,
    Kind::Flood,
    Kind::Crash,
    Kind::Crash,
    Kind::Serve,
    Kind::Serve,
    Kind::Forward,
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    // Dropped in reverse: the node stops before its pod network goes.
    let net = PodNet::for_node(NODE)?;
    let mut flags = vec!["--max-pods".to_owned(), "200".to_owned()];
    flags.extend(net.flags());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let node: KrustletNode = cluster.ready_node(NODE, PORT, &flags).await?;
    wait_node(&cluster.nodes(), NODE, 60, "a pod CIDR", |n: &Node| {
        n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_some()
    })
    .await?;
    let pid = node
        .pid()
        .ok_or_else(|| anyhow::anyhow!("krustlet is not running"))?;
    let pods = cluster.pods();
    let mix = Mix {
        cluster: &cluster,
        pods: pods.clone(),
        node: node.name.clone(),
        tool: cluster.push("tool", "soak").await?,
        web: cluster.push("http-hello.component", "soak").await?,
    };
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1800);
    let began = Instant::now();
    let end = began + Duration::from_secs(seconds);
    let first = sample(pid, began);
    let sampler = tokio::spawn(async move {
        let mut out = vec![first];
        while Instant::now() + Duration::from_secs(60) <= end {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let s = sample(pid, began);
            eprintln!(
                "soak: {:>5} s  RSS {:.1} MiB  fds {}  threads {}",
                s.second,
                s.rss_kib as f64 / 1024.0,
                s.fds,
                s.threads
            );
            out.push(s);
        }
        out
    });
    let workers = KINDS
        .iter()
        .enumerate()
        .map(|(id, kind)| worker(&mix, *kind, id, end));
    let results = futures::future::join_all(workers).await;
    let samples = sampler.await.unwrap_or_default();
    // Per kind: rounds, forward sessions, requests; and the workers that stopped on an error.
    let mut rounds = [0u64; 5];
    let (mut sessions, mut requests) = ([0u64; 5], [0u64; 5]);
    let mut errors = Vec::new();
    for (id, (kind, result)) in KINDS.iter().zip(results).enumerate() {
        match result {
            Ok(t) => {
                rounds[*kind as usize] += t.rounds;
                sessions[*kind as usize] += t.sessions;
                requests[*kind as usize] += t.requests;
            }
            Err(e) => errors.push(format!("worker {id}: {e:#}")),
        }
    }
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    pods.delete_collection(&now, &ListParams::default().labels("bench=soak"))
        .await?;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let after = sample(pid, began);
    let pod_dirs = left_in(&node.data_dir.join("pods"));
    let tmp_files = left_in(&node.data_dir.join("images").join("tmp"));
    let netns_left = left_in(&net.dir.join("netns"));
    let leases_left = net.leased();

    // Warm-up: the five samples from minute 5 (or the first five when the run is short).
    let warm: Vec<Sample> = samples.iter().skip(5).take(5).copied().collect();
    let warm = if warm.len() == 5 {
        warm
    } else {
        samples.iter().take(5).copied().collect()
    };
    let last: Vec<Sample> = samples.iter().rev().take(5).copied().collect();
    let rss_warm = median(warm.iter().map(|s| s.rss_kib).collect());
    let rss_last = median(last.iter().map(|s| s.rss_kib).collect());
    let fds_warm = median(warm.iter().map(|s| s.fds as u64).collect());
    let fds_last = median(last.iter().map(|s| s.fds as u64).collect());
    let growth = rss_last as f64 / rss_warm.max(1) as f64;
    let flat = growth <= 1.10 && fds_last <= fds_warm + 16;
    let mib = |k: u64| k as f64 / 1024.0;
    let (serve, forward) = (Kind::Serve as usize, Kind::Forward as usize);
    println!(
        "| seconds | churn pods | log floods (40 MiB) | crash loops | served pods (requests) | port-forwards (requests) | RSS after warm-up | RSS at the end | end / warm-up | fds after warm-up | fds at the end | threads at the end | flat |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| {seconds} | {} | {} | {} | {} ({}) | {} ({}) | {:.1} MiB | {:.1} MiB | {growth:.2} | {fds_warm} | {fds_last} | {} | {} |",
        rounds[Kind::Churn as usize],
        rounds[Kind::Flood as usize],
        rounds[Kind::Crash as usize],
        rounds[serve] + rounds[forward],
        requests[serve],
        sessions[forward],
        requests[forward],
        mib(rss_warm),
        mib(rss_last),
        samples.last().map_or(0, |s| s.threads),
        if flat { "yes" } else { "no" }
    );
    println!(
        "after clearing every pod and 30 s: RSS {:.1} MiB (at the start {:.1} MiB), fds {} (at the start {}), threads {} (at the start {}); pod dirs left {pod_dirs}, partial downloads left {tmp_files}, network namespaces left {netns_left}, CNI leases left {}",
        mib(after.rss_kib),
        mib(first.rss_kib),
        after.fds,
        first.fds,
        after.threads,
        first.threads,
        leases_left.len()
    );
    let trend: Vec<String> = samples
        .iter()
        .map(|s| format!("{:.0}/{}", mib(s.rss_kib), s.fds))
        .collect();
    println!("RSS MiB / fds each minute: {}", trend.join(", "));
    for e in &errors {
        eprintln!("soak: {e}");
    }
    let dir = e2e::root().join("bench-results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("soak.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "seconds": seconds,
            "cpus": std::thread::available_parallelism().map_or(0, usize::from),
            "churn_pods": rounds[Kind::Churn as usize],
            "log_floods": rounds[Kind::Flood as usize],
            "crash_loops": rounds[Kind::Crash as usize],
            "served_pods": rounds[serve],
            "served_requests": requests[serve],
            "forward_pods": rounds[forward],
            "port_forwards": sessions[forward],
            "forward_requests": requests[forward],
            "rss_kib_warm": rss_warm, "rss_kib_last": rss_last, "rss_growth": growth,
            "fds_warm": fds_warm, "fds_last": fds_last, "flat": flat,
            "first": first, "after_clear": after,
            "pod_dirs_left": pod_dirs, "tmp_files_left": tmp_files,
            "netns_left": netns_left, "cni_leases_left": leases_left,
            "errors": errors,
            "samples": samples,
        }))?,
    )?;
    println!("written: bench-results/soak.json");
    drop(node);
    drop(net);
    anyhow::ensure!(errors.is_empty(), "{} soak workers failed", errors.len());
    Ok(())
}
