//! Pod start latency on a krustlet node against a kwok node on the same control plane
//! (issue 6, part 1). Run with `hack/bench pods`, which starts the local cluster, builds
//! krustlet in release mode and kwok from the Go module proxy, and sets `KRUSTLET_BIN`
//! and `KWOK_BIN`.
//!
//! Latency is from just before the create request to the watch event that shows the pod
//! `Ready` (for run-to-completion: `Succeeded`); pods are bound with `spec.nodeName`, so
//! the scheduler is out of it. Scenarios: 100 pods one at a time and 100 at once, each for
//! a cached image and for a first pull (every pod its own image: the module with a unique
//! custom section, so a real download and compile); the same for kwok, which only writes
//! the status. Prints a table and writes JSON, CSV and an SVG plot under `bench-results/`.
//!
//! With `PODS_NETWORK=1` it instead compares networked pods (cached image, Ready, one
//! at a time and 100 at once) on two nodes with bridge networks of their own, one
//! attaching pods in-process and one exec'ing the CNI plugins, beside a node without a
//! network and kwok; written to
//! `bench-results/pods-network.{json,csv,svg}`.
//!
//! With the argument `density` (`hack/bench density`) it instead keeps N idle pods (a
//! module blocked in `sleep`) on the krustlet node for N = 100, 500, 1000 (and the sizes in
//! `DENSITY_SIZES`, e.g. `100,500,1000,2000`): time until all are Ready, krustlet's
//! resident memory and its CPU use over 10 idle seconds, the node lease's age, and whether
//! the node stays Ready; written to `bench-results/density.{json,csv}`. With
//! `DENSITY_NETWORK=1` every pod also gets a network namespace and an address through
//! the CNI plugins (a bridge of the bench's own), the kernel's slab memory per pod is
//! printed beside the table, and the figures go to `bench-results/density-network.*`.
//!
//! With `churn` (`hack/bench churn`) it creates, runs to completion and deletes pods
//! continuously for `CHURN_SECONDS` (120), 10 at a time, and reports the pods per second
//! sustained and krustlet's resident memory before, at the end and after 30 quiet seconds
//! (does it return to its baseline?); written to `bench-results/churn.json`.

use std::time::{Duration, Instant};

use e2e::bench::{self, BenchPod, cpu_ticks, percentile, rss_kib, watch};
use e2e::{Cluster, KrustletNode, workload};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;

const PODS: usize = 100;
const KRUSTLET_NODE: &str = "bench-krustlet";
const KWOK_NODE: &str = "bench-kwok";
/// The networked node that execs the CNI plugins (`PODS_NETWORK=1`).
const EXEC_NODE: &str = "bench-krustlet-exec";
/// The node without a network beside them (`PODS_NETWORK=1`).
const BARE_NODE: &str = "bench-krustlet-bare";

/// A scenario's label, its latencies (ms, sorted) and its peer's (kwok's) latencies.
type Row = (String, Vec<f64>, Option<Vec<f64>>);

/// A bench pod of `image` on `node`: kept running, or the `tool` workload run to
/// completion.
fn template(node: &str, image: &str, completion: bool) -> BenchPod {
    let t = BenchPod::new(node, image);
    if completion { t.completing() } else { t }
}

fn pod(name: &str, node: &str, image: &str, completion: bool) -> Pod {
    template(node, image, completion).pod(name)
}

async fn clear(pods: &Api<Pod>) -> anyhow::Result<()> {
    bench::clear(pods, 60).await
}

/// Runs one scenario; returns the latencies in milliseconds.
async fn scenario(
    pods: &Api<Pod>,
    node: &str,
    images: &[String],
    burst: bool,
    completion: bool,
) -> anyhow::Result<Vec<f64>> {
    let template = template(node, "", completion);
    bench::start_latency(pods, &template, images, PODS, burst, 6).await
}

/// The module with a custom section holding `nonce`: same code, its own digest.
fn unique(wasm: &[u8], nonce: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
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
    let name = b"bench-nonce";
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(nonce.as_bytes());
    let mut out = wasm.to_vec();
    out.push(0);
    leb(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

async fn density(cluster: &Cluster, node: &KrustletNode) -> anyhow::Result<()> {
    let pid = node
        .pid()
        .ok_or_else(|| anyhow::anyhow!("krustlet is not running"))?;
    let pods = cluster.pods();
    let tool = cluster.push("tool", "bench").await?;
    let sizes: Vec<usize> = std::env::var("DENSITY_SIZES")
        .unwrap_or_else(|_| "100,500,1000".to_owned())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    clear(&pods).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let baseline = rss_kib(pid).unwrap_or_default();
    let slab0 = e2e::proc_field("/proc/meminfo", "Slab").unwrap_or_default();
    println!(
        "krustlet RSS with no pods: {:.1} MiB",
        baseline as f64 / 1024.0
    );
    println!(
        "| pods | time to all Ready | RSS | RSS per pod over baseline | CPU while idle | lease age | node Ready |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let mut csv = String::from(
        "pods,seconds_to_ready,rss_mib,kib_per_pod,idle_cpu_percent,lease_age_seconds,node_ready\n",
    );
    let mut json = Vec::new();
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(cluster.client.clone(), "kube-node-lease");
    for n in sizes {
        clear(&pods).await?;
        let idle = BenchPod::new(&node.name, &tool).idle();
        let to_ready = bench::all_ready(&pods, &idle, n, 60 + n as u64 / 2).await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let cpu0 = cpu_ticks(pid).unwrap_or_default();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let idle_cpu = (cpu_ticks(pid).unwrap_or_default() - cpu0) as f64 / 10.0;
        let rss = rss_kib(pid).unwrap_or_default();
        let per_pod = rss.saturating_sub(baseline) as f64 / n as f64;
        // The kernel's own memory (slab: namespaces, veths, sockets), machine-wide.
        let slab_per_pod = (e2e::proc_field("/proc/meminfo", "Slab").unwrap_or_default() as f64
            - slab0 as f64)
            / n as f64;
        println!("  kernel slab over the empty node: {slab_per_pod:.0} KiB per pod");
        let lease = leases.get(KRUSTLET_NODE).await?;
        let renewed = lease.spec.and_then(|s| s.renew_time).map(|t| t.0);
        let lease_age = renewed.map_or(f64::NAN, |t| {
            jiff::Timestamp::now().duration_since(t).as_secs_f64()
        });
        let n_obj = cluster.nodes().get(KRUSTLET_NODE).await?;
        let ready = e2e::node_condition(&n_obj, "Ready").unwrap_or_default();
        println!(
            "| {n} | {to_ready:.1} s | {:.0} MiB | {per_pod:.0} KiB | {idle_cpu:.1} % | {lease_age:.1} s | {ready} |",
            rss as f64 / 1024.0
        );
        csv.push_str(&format!(
            "{n},{to_ready:.2},{:.1},{per_pod:.1},{idle_cpu:.1},{lease_age:.1},{ready}\n",
            rss as f64 / 1024.0
        ));
        json.push(serde_json::json!({
            "pods": n, "seconds_to_ready": to_ready, "rss_kib": rss, "baseline_rss_kib": baseline,
            "kib_per_pod": per_pod, "kernel_slab_kib_per_pod": slab_per_pod, "idle_cpu_percent": idle_cpu, "lease_age_seconds": lease_age,
            "node_ready": ready
        }));
    }
    clear(&pods).await?;
    let dir = e2e::root().join("bench-results");
    std::fs::create_dir_all(&dir)?;
    // Networked pods' figures are kept beside the plain ones.
    let name = match std::env::var("DENSITY_NETWORK").as_deref() {
        Ok("1") => "density-network",
        _ => "density",
    };
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(&json)?,
    )?;
    std::fs::write(dir.join(format!("{name}.csv")), csv)?;
    println!("written: bench-results/{name}.json, {name}.csv");
    Ok(())
}

async fn churn(cluster: &Cluster, node: &KrustletNode) -> anyhow::Result<()> {
    let pid = node
        .pid()
        .ok_or_else(|| anyhow::anyhow!("krustlet is not running"))?;
    let pods = cluster.pods();
    let tool = cluster.push("tool", "bench").await?;
    let seconds: u64 = std::env::var("CHURN_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    clear(&pods).await?;
    let seen = watch(pods.clone(), true);
    // One round first, so the baseline includes the image and the compiled module.
    let warm = pod("bench-warm", &node.name, &tool, true);
    pods.create(&PostParams::default(), &warm).await?;
    while seen.get("bench-warm").is_none() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    clear(&pods).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let baseline = rss_kib(pid).unwrap_or_default();
    let end = Instant::now() + Duration::from_secs(seconds);
    let template = template(&node.name, &tool, true);
    let began = Instant::now();
    // RSS every 30 s while churning: a leak grows with every interval, a bounded cache
    // stops growing once full.
    let samples = tokio::spawn(async move {
        let mut out = Vec::new();
        while Instant::now() + Duration::from_secs(30) <= end {
            tokio::time::sleep(Duration::from_secs(30)).await;
            out.push(rss_kib(pid).unwrap_or_default());
        }
        out
    });
    let total = bench::churn(&pods, &template, end, 10, 60).await?;
    let samples = samples.await.unwrap_or_default();
    let elapsed = began.elapsed().as_secs_f64();
    let at_end = rss_kib(pid).unwrap_or_default();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let settled = rss_kib(pid).unwrap_or_default();
    let rate = total as f64 / elapsed;
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "| pods run and deleted | seconds | pods per second | RSS before | RSS at the end | RSS 30 s later |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "| {total} | {elapsed:.0} | {rate:.1} | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
        mib(baseline),
        mib(at_end),
        mib(settled)
    );
    let dir = e2e::root().join("bench-results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("churn.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "pods": total, "seconds": elapsed, "pods_per_second": rate,
            "rss_kib_before": baseline, "rss_kib_at_end": at_end, "rss_kib_30s_later": settled,
            "rss_kib_every_30s": samples
        }))?,
    )?;
    let trend: Vec<String> = samples.iter().map(|k| format!("{:.1}", mib(*k))).collect();
    println!("RSS every 30 s while churning (MiB): {}", trend.join(", "));
    println!("written: bench-results/churn.json");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    if std::env::args().any(|a| a == "churn") {
        let node = cluster
            .ready_node(KRUSTLET_NODE, 10401, &["--max-pods", "5000"])
            .await?;
        return churn(&cluster, &node).await;
    }
    if std::env::args().any(|a| a == "density") {
        // DENSITY_NETWORK=1: every pod in a network namespace of its own, wired by the
        // CNI plugins (a bridge of the bench's own, addresses from a /20).
        let net = match std::env::var("DENSITY_NETWORK").as_deref() {
            Ok("1") => Some(e2e::PodNet::for_node_in(KRUSTLET_NODE, "10.244.240.0/20")?),
            _ => None,
        };
        let mut flags = vec!["--max-pods".to_owned(), "20000".to_owned()];
        flags.extend(net.iter().flat_map(e2e::PodNet::flags));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let node = cluster.ready_node(KRUSTLET_NODE, 10401, &flags).await?;
        let result = density(&cluster, &node).await;
        drop(node);
        drop(net);
        return result;
    }
    if std::env::var("PODS_NETWORK").as_deref() == Ok("1") {
        return networked(&cluster).await;
    }
    let node: KrustletNode = cluster
        .ready_node(KRUSTLET_NODE, 10401, &["--max-pods", "1000"])
        .await?;
    let kwok = e2e::kwok_node(&cluster, KWOK_NODE, 10499, 10498).await?;
    let pods = cluster.pods();
    let looping = cluster.push("loop", "bench").await?;
    let tool = cluster.push("tool", "bench").await?;
    // Warm the krustlet node's cache for the cached scenarios.
    scenario(
        &pods,
        &node.name,
        std::slice::from_ref(&looping),
        false,
        false,
    )
    .await?;
    let run = std::process::id();
    let fresh = |base: &str, count: usize| -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let wasm = workload(base)?;
        Ok((0..count)
            .map(|i| {
                (
                    format!("{}/bench/{base}-{run}-{i}:v1", cluster.registry),
                    unique(&wasm, &format!("{run}-{i}")),
                )
            })
            .collect())
    };
    let mut first_pull = Vec::new();
    for (reference, wasm) in fresh("loop", 2 * PODS)? {
        oci::push(
            wasm,
            &reference,
            &oci::RegistryAuth::Anonymous,
            std::slice::from_ref(&cluster.registry),
        )
        .await?;
        first_pull.push(reference);
    }
    let (seq_fresh, burst_fresh) = first_pull.split_at(PODS);

    let mut rows: Vec<Row> = Vec::new();
    for (label, burst) in [("one at a time", false), ("100 at once", true)] {
        let kwok_ms = scenario(
            &pods,
            KWOK_NODE,
            std::slice::from_ref(&looping),
            burst,
            false,
        )
        .await?;
        let cached = scenario(
            &pods,
            &node.name,
            std::slice::from_ref(&looping),
            burst,
            false,
        )
        .await?;
        let images = if burst { burst_fresh } else { seq_fresh };
        let pulled = scenario(&pods, &node.name, images, burst, false).await?;
        let completed =
            scenario(&pods, &node.name, std::slice::from_ref(&tool), burst, true).await?;
        rows.push((format!("kwok, Ready, {label}"), kwok_ms.clone(), None));
        rows.push((
            format!("krustlet cached, Ready, {label}"),
            cached,
            Some(kwok_ms.clone()),
        ));
        rows.push((
            format!("krustlet first pull, Ready, {label}"),
            pulled,
            Some(kwok_ms.clone()),
        ));
        rows.push((
            format!("krustlet cached, Succeeded, {label}"),
            completed,
            Some(kwok_ms),
        ));
    }
    drop(kwok);
    report(&rows, "pods")
}

/// `PODS_NETWORK=1`: networked pods (cached image, Ready) on two krustlet nodes with a
/// bridge network each, one attaching pods in-process and one exec'ing the CNI plugins
/// (`--cni-in-process=false`), beside kwok; written to `bench-results/pods-network.*`.
async fn networked(cluster: &Cluster) -> anyhow::Result<()> {
    let fast_net = e2e::PodNet::for_node_in(KRUSTLET_NODE, "10.244.240.0/21")?;
    let exec_net = e2e::PodNet::for_node_in(EXEC_NODE, "10.244.248.0/21")?;
    let mut flags = fast_net.flags();
    flags.extend(["--max-pods".to_owned(), "1000".to_owned()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let fast = cluster.ready_node(KRUSTLET_NODE, 10401, &flags).await?;
    let mut flags = exec_net.flags();
    flags.extend(["--max-pods", "1000", "--cni-in-process=false"].map(str::to_owned));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let exec = cluster.ready_node(EXEC_NODE, 10402, &flags).await?;
    let bare = cluster
        .ready_node(BARE_NODE, 10403, &["--max-pods", "1000"])
        .await?;
    let kwok = e2e::kwok_node(cluster, KWOK_NODE, 10499, 10498).await?;
    let pods = cluster.pods();
    let looping = cluster.push("loop", "bench").await?;
    let image = std::slice::from_ref(&looping);
    // Warm the nodes' caches, and let the plugins make each bridge (their first ADD).
    for node in [&fast.name, &exec.name, &bare.name] {
        scenario(&pods, node, image, false, false).await?;
    }
    let mut rows: Vec<Row> = Vec::new();
    for (label, burst) in [("one at a time", false), ("100 at once", true)] {
        let kwok_ms = scenario(&pods, KWOK_NODE, image, burst, false).await?;
        let in_process = scenario(&pods, &fast.name, image, burst, false).await?;
        let plugins = scenario(&pods, &exec.name, image, burst, false).await?;
        let no_network = scenario(&pods, &bare.name, image, burst, false).await?;
        rows.push((format!("kwok, Ready, {label}"), kwok_ms.clone(), None));
        for (node, ms) in [
            ("krustlet without a network", no_network),
            ("krustlet networked, in-process", in_process),
            ("krustlet networked, CNI plugins", plugins),
        ] {
            rows.push((format!("{node}, Ready, {label}"), ms, Some(kwok_ms.clone())));
        }
    }
    drop(kwok);
    // Where a networked pod's time goes: the sandbox (namespace and attachment), on
    // average over every pod each node started.
    for node in [&fast, &exec, &bare] {
        let m = node.metrics().await?;
        let series = |suffix: &str| {
            m.iter()
                .find(|(k, _)| {
                    k.starts_with(&format!(
                        "kubelet_runtime_operations_duration_seconds_{suffix}"
                    )) && k.contains("operation_type=\"run_podsandbox\"")
                })
                .map_or(0.0, |(_, v)| *v)
        };
        let (sum, count) = (series("sum"), series("count"));
        println!(
            "{}: run_podsandbox {:.2} ms on average over {count} pods",
            node.name,
            1000.0 * sum / count.max(1.0)
        );
    }
    drop((fast, exec, bare));
    drop((fast_net, exec_net));
    report(&rows, "pods-network")
}

/// Prints the table of `rows` and writes `bench-results/<name>.{json,csv,svg}`.
fn report(rows: &[Row], name: &str) -> anyhow::Result<()> {
    println!("| scenario | p50 ms | p90 ms | p99 ms | p50 / kwok p50 |");
    println!("| --- | --- | --- | --- | --- |");
    let mut json = Vec::new();
    let mut csv = String::from("scenario,p50_ms,p90_ms,p99_ms,ratio_p50_vs_kwok\n");
    for (label, ms, peer) in rows {
        let (p50, p90, p99) = (
            percentile(ms, 0.5),
            percentile(ms, 0.9),
            percentile(ms, 0.99),
        );
        let ratio = peer.as_ref().map(|k| p50 / percentile(k, 0.5));
        let ratio_text = ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"));
        println!("| {label} | {p50:.0} | {p90:.0} | {p99:.0} | {ratio_text} |");
        csv.push_str(&format!(
            "{label},{p50:.1},{p90:.1},{p99:.1},{}\n",
            ratio.map_or(String::new(), |r| format!("{r:.3}"))
        ));
        json.push(serde_json::json!({ "scenario": label, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "ratio_p50_vs_kwok": ratio, "samples_ms": ms }));
    }
    let dir = e2e::root().join("bench-results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(&json)?,
    )?;
    std::fs::write(dir.join(format!("{name}.csv")), csv)?;
    std::fs::write(dir.join(format!("{name}.svg")), svg(rows))?;
    println!("written: bench-results/{name}.json, {name}.csv, {name}.svg");
    Ok(())
}

/// A bar chart of p50 and p90 per scenario, on a log scale (the figures span 10 ms to
/// seconds).
fn svg(rows: &[Row]) -> String {
    let max = rows
        .iter()
        .map(|(_, ms, _)| percentile(ms, 0.9))
        .fold(1.0, f64::max);
    let (width, bar) = (520.0, 22.0);
    let scale = |v: f64| width * (1.0 + v).ln() / (1.0 + max).ln();
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"960\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n<text x=\"10\" y=\"18\" font-size=\"14\">Pod start latency in ms, p50 (dark) and p90 (light), log scale</text>\n",
        40.0 + rows.len() as f64 * (bar + 8.0)
    );
    for (i, (label, ms, _)) in rows.iter().enumerate() {
        let y = 30.0 + i as f64 * (bar + 8.0);
        let (p50, p90) = (percentile(ms, 0.5), percentile(ms, 0.9));
        out.push_str(&format!(
            "<text x=\"10\" y=\"{:.0}\">{label}</text>\n<rect x=\"320\" y=\"{y:.0}\" width=\"{:.1}\" height=\"{bar}\" fill=\"#9ecae1\"/>\n<rect x=\"320\" y=\"{y:.0}\" width=\"{:.1}\" height=\"{bar}\" fill=\"#3182bd\"/>\n<text x=\"{:.0}\" y=\"{:.0}\">{p50:.0} / {p90:.0}</text>\n",
            y + 15.0,
            scale(p90),
            scale(p50),
            325.0 + scale(p90),
            y + 15.0
        ));
    }
    out.push_str("</svg>\n");
    out
}
