//! DNS lookup latency from a pod (issue 23, item 4): krustlet's pod resolver against a
//! container's glibc resolver on the upstream kubelet's node (the peer node of
//! `hack/bench peers`, started with `--cluster-dns`), both asking hack/cluster's CoreDNS
//! through the kube-dns Service, measured side by side in one run. Run with
//! `hack/bench dns`, which builds and starts the peer node, imports the native program as
//! an image and sets the `PEER_*` and `DNS_*` variables read here.
//!
//! One C program (`workloads/http/lookups.c`) times each lookup itself, around the
//! lookup alone: in the krustlet pod the wasm component (`wasi:sockets` ip-name-lookup,
//! `wasi:clocks` monotonic-clock), in the peer's container the same source built natively
//! (`getaddrinfo` with AF_UNSPEC, `clock_gettime`, the resolv.conf the kubelet wrote:
//! `nameserver 10.0.0.10`, the cluster's search list, `ndots:5`). Neither side keeps a
//! cache of its own; "cached" is CoreDNS's cache.
//!
//! The lookups, each `DNS_LOOKUPS` (1000) per pod after 20 not counted, in `DNS_ROUNDS` (4)
//! rounds per side, the sides taking turns to go first:
//! - cached, the FQDN `kubernetes.default.svc.cluster.local.`: one A and one AAAA query,
//!   both answered from CoreDNS's cache;
//! - cached, the short name `kubernetes.default`, as applications usually write a Service
//!   of another namespace: with `ndots:5` the search list is walked, so
//!   `kubernetes.default.default.svc.cluster.local` (NXDOMAIN) is asked before
//!   `kubernetes.default.svc.cluster.local`: four queries, all from the cache;
//! - uncached, a pod address record `10-R-H-L.default.pod.cluster.local.` that nobody asked
//!   for before (CoreDNS `pods insecure` answers any), a new one every lookup: one A and one
//!   AAAA query that CoreDNS answers from its Kubernetes plugin. `R` is taken from the
//!   clock, so a run started within 30 s (CoreDNS's cache time) of another asks other names.
//!
//! Writes `bench-results/dns.json` and prints a table.

use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::Cluster;
use e2e::bench::{BenchPod, percentile};
use k8s_openapi::api::core::v1::{EnvVar, Pod, Service};
use kube::Api;
use kube::api::{DeleteParams, LogParams, PostParams};

const KRUSTLET_NODE: &str = "bench-dns";
const KRUSTLET_PORT: u16 = 10420;
/// Lookups made before the timed ones (CoreDNS's cache filled, both programs warm).
const WARMUP: u64 = 20;

/// What one measure looks up.
struct Case {
    label: &'static str,
    /// `LOOKUP_NAME` (with `{n}` for the lookup's number).
    name: String,
    /// Each pod's lookups are numbered from here on (distinct names when `{n}` is in it).
    numbered: bool,
}

/// One side's latencies of one case, in milliseconds, sorted.
struct Side {
    ms: Vec<f64>,
}

impl Side {
    fn summary(&self) -> serde_json::Value {
        let mean = self.ms.iter().sum::<f64>() / self.ms.len().max(1) as f64;
        serde_json::json!({
            "lookups": self.ms.len(),
            "p50_ms": percentile(&self.ms, 0.5),
            "p90_ms": percentile(&self.ms, 0.9),
            "p99_ms": percentile(&self.ms, 0.99),
            "max_ms": self.ms.last().copied(),
            "mean_ms": mean,
        })
    }
}

fn env(key: &str) -> anyhow::Result<String> {
    std::env::var(key).with_context(|| format!("{key} is not set: run this with hack/bench dns"))
}

fn env_num(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    let pods = cluster.pods();
    let peer_node = env("PEER_NODE")?;
    let peer_image = env("PEER_LOOKUPS")?;
    let count = env_num("DNS_LOOKUPS", 1000).clamp(10, 20_000);
    let rounds = env_num("DNS_ROUNDS", 4).clamp(1, 10);

    let services: Api<Service> = Api::namespaced(cluster.client.clone(), "default");
    let api_ip = services
        .get("kubernetes")
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the kubernetes Service has no cluster IP")?;

    // Krustlet's pods on a bridge of their own, with routes to the cluster and Service
    // ranges; the node is told the cluster's DNS as any node of the cluster.
    let net = e2e::PodNet::for_node(KRUSTLET_NODE)?;
    let flags = net.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let node = cluster
        .ready_node(KRUSTLET_NODE, KRUSTLET_PORT, &flags)
        .await?;
    let krustlet_image = cluster.push("http-lookups.component", "bench").await?;
    let sides = [
        ("krustlet", BenchPod::new(KRUSTLET_NODE, &krustlet_image)),
        (
            "kubelet + runc",
            BenchPod {
                never_pull: true,
                ..BenchPod::new(&peer_node, &peer_image)
            },
        ),
    ];

    let second_octet = jiff::Timestamp::now().as_second().rem_euclid(250) + 1;
    let cases = [
        Case {
            label: "cached, FQDN kubernetes.default.svc.cluster.local.",
            name: "kubernetes.default.svc.cluster.local.".to_owned(),
            numbered: false,
        },
        Case {
            label: "cached, short name kubernetes.default (search list, ndots:5)",
            name: "kubernetes.default".to_owned(),
            numbered: false,
        },
        Case {
            label: "uncached, a new pod A record each lookup (FQDN)",
            name: format!("10-{second_octet}-{{n}}.default.pod.cluster.local."),
            numbered: true,
        },
    ];

    let mut next_number = 0;
    let mut results = Vec::new();
    for case in &cases {
        let mut ms: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            // The sides take turns to go first.
            let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let (label, template) = &sides[i];
                let first = if case.numbered { next_number } else { 0 };
                if case.numbered {
                    next_number += WARMUP + count;
                    anyhow::ensure!(next_number < 65_536, "too many lookups for distinct names");
                }
                let vars = [
                    ("LOOKUP_NAME", case.name.clone()),
                    ("LOOKUP_FIRST", first.to_string()),
                    ("LOOKUP_WARMUP", WARMUP.to_string()),
                    ("LOOKUP_COUNT", count.to_string()),
                ];
                e2e::bench::quiet(0.5, Duration::from_secs(30)).await;
                let log = run_pod(&pods, &lookup_pod(template, "bench-dns", &vars), 300)
                    .await
                    .with_context(|| format!("{label}: {}", case.label))?;
                let (answer, mut samples) =
                    parse(&log).with_context(|| format!("{label}: {}: {log}", case.label))?;
                check_answer(case, first, &answer, &api_ip)
                    .with_context(|| format!("{label}: {}", case.label))?;
                ms[i].append(&mut samples);
            }
        }
        let sides: Vec<Side> = ms
            .into_iter()
            .map(|mut ms| {
                ms.sort_by(f64::total_cmp);
                Side { ms }
            })
            .collect();
        println!(
            "{}: krustlet p50 {:.3} ms p99 {:.3} ms; kubelet + runc p50 {:.3} ms p99 {:.3} ms",
            case.label,
            percentile(&sides[0].ms, 0.5),
            percentile(&sides[0].ms, 0.99),
            percentile(&sides[1].ms, 0.5),
            percentile(&sides[1].ms, 0.99),
        );
        results.push((case, sides));
    }
    drop(node);
    drop(net);
    report(&results, count, rounds)
}

/// The lookup pod: `template` with `vars` in its container's environment, run to
/// completion.
fn lookup_pod(template: &BenchPod, name: &str, vars: &[(&str, String)]) -> Pod {
    let mut pod = BenchPod {
        completion: true,
        ..template.clone()
    }
    .pod(name);
    if let Some(container) = pod.spec.as_mut().and_then(|s| s.containers.first_mut()) {
        container.env = Some(
            vars.iter()
                .map(|(k, v)| EnvVar {
                    name: (*k).to_owned(),
                    value: Some(v.clone()),
                    ..EnvVar::default()
                })
                .collect(),
        );
    }
    pod
}

/// Creates `pod`, waits (at most `secs`) until it ends and deletes it; its log. A pod
/// that failed is an error carrying its log.
async fn run_pod(pods: &Api<Pod>, pod: &Pod, secs: u64) -> anyhow::Result<String> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    if pods.get_opt(&name).await?.is_some() {
        pods.delete(&name, &now).await?;
        while pods.get_opt(&name).await?.is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    pods.create(&PostParams::default(), pod).await?;
    let give_up = Instant::now() + Duration::from_secs(secs);
    let phase = loop {
        let p = pods.get(&name).await?;
        match p.status.and_then(|s| s.phase).as_deref() {
            Some(phase @ ("Succeeded" | "Failed")) => break phase.to_owned(),
            _ if Instant::now() > give_up => anyhow::bail!("{name} did not end in {secs} s"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let log = pods.logs(&name, &LogParams::default()).await?;
    pods.delete(&name, &now).await?;
    anyhow::ensure!(phase == "Succeeded", "{name} failed: {log}");
    Ok(log)
}

/// The first lookup's name and address, and every lookup's time in milliseconds.
fn parse(log: &str) -> anyhow::Result<((String, String), Vec<f64>)> {
    let mut answer = None;
    let mut ms = Vec::new();
    let mut done = None;
    for line in log.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("first"), Some(name), Some(address)) => {
                answer = Some((name.to_owned(), address.to_owned()));
            }
            (Some("ns"), Some(ns), None) => ms.push(ns.parse::<f64>()? / 1e6),
            (Some("done"), Some(n), None) => done = Some(n.parse::<usize>()?),
            _ => {}
        }
    }
    anyhow::ensure!(done == Some(ms.len()), "the log is cut short");
    Ok((answer.context("no first answer")?, ms))
}

/// Whether the answer is the right one: the `kubernetes` Service's address, or the
/// address the pod record names.
fn check_answer(
    case: &Case,
    first: u64,
    (name, address): &(String, String),
    api_ip: &str,
) -> anyhow::Result<()> {
    let want = if case.numbered {
        let n = first + WARMUP;
        let expected = case
            .name
            .replace("{n}", &format!("{}-{}", (n / 256) % 256, n % 256));
        anyhow::ensure!(*name == expected, "looked up {name}, not {expected}");
        expected
            .split('.')
            .next()
            .unwrap_or_default()
            .replace('-', ".")
    } else {
        api_ip.to_owned()
    };
    anyhow::ensure!(*address == want, "{name} resolved to {address}, not {want}");
    Ok(())
}

/// Writes `bench-results/dns.json` and prints the table.
fn report(results: &[(&Case, Vec<Side>)], count: u64, rounds: u64) -> anyhow::Result<()> {
    let date = jiff::Timestamp::now().to_string();
    let machine = e2e::bench::machine();
    let versions = std::env::var("DNS_VERSIONS").unwrap_or_default();
    println!("\nDNS lookup latency from a pod, {date}");
    println!("machine: {machine}");
    println!("versions: {versions}");
    println!(
        "{count} lookups per pod after {WARMUP} not counted, {rounds} pods per side and lookup\n"
    );
    println!(
        "| lookup | krustlet p50 (ms) | krustlet p99 (ms) | kubelet + runc p50 (ms) | \
         kubelet + runc p99 (ms) | krustlet / peer, p50 | krustlet / peer, p99 |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let mut cases = Vec::new();
    for (case, sides) in results {
        let p = |s: &Side, q| percentile(&s.ms, q);
        let ratio = |q| p(&sides[0], q) / p(&sides[1], q);
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} |",
            case.label,
            p(&sides[0], 0.5),
            p(&sides[0], 0.99),
            p(&sides[1], 0.5),
            p(&sides[1], 0.99),
            ratio(0.5),
            ratio(0.99)
        );
        cases.push(serde_json::json!({
            "lookup": case.label,
            "name": case.name,
            "krustlet": sides[0].summary(),
            "kubelet + runc": sides[1].summary(),
            "krustlet_over_peer": { "p50": ratio(0.5), "p99": ratio(0.99) },
        }));
    }
    println!("(krustlet / peer under 1: krustlet's lookups are faster)");
    let dir = e2e::root().join("bench-results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("dns.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "date": date,
            "machine": machine,
            "versions": versions,
            "lookups_per_pod": count,
            "warmup_per_pod": WARMUP,
            "pods_per_side": rounds,
            "server": "hack/cluster's CoreDNS behind the kube-dns Service (kube-proxy, iptables)",
            "cases": cases,
        }))?,
    )?;
    println!("written: bench-results/dns.json");
    Ok(())
}
