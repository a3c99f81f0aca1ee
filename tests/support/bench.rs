//! What the benchmarks (`tests/benches/`) share: a watch that records when each bench pod
//! got where it was going, bench pod manifests, clearing them away, percentiles, a
//! process's memory and CPU time from `/proc`, the machine's description, and HTTP load
//! ([`load`]).

pub mod load;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams, LogParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};

/// The label every bench pod carries, and its selector.
pub const BENCH_LABEL: &str = "bench=pods";

/// When each bench pod was first seen ready (or succeeded).
#[derive(Clone, Default)]
pub struct Seen(Arc<Mutex<HashMap<String, Instant>>>);

impl Seen {
    /// When pod `name` was first seen done.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<Instant> {
        self.0.lock().ok()?.get(name).copied()
    }

    /// Waits until pod `name` is seen done, for at most `secs`.
    ///
    /// # Errors
    /// When it is not done in time.
    pub async fn wait(&self, name: &str, secs: u64) -> Result<Instant> {
        let give_up = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(at) = self.get(name) {
                return Ok(at);
            }
            anyhow::ensure!(Instant::now() < give_up, "{name} not done in {secs} s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Whether pod `p` is done: `Succeeded` when `completion`, otherwise `Ready`.
#[must_use]
pub fn done(p: &Pod, completion: bool) -> bool {
    let status = p.status.as_ref();
    if completion {
        return status.and_then(|s| s.phase.as_deref()) == Some("Succeeded");
    }
    status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Watches the bench pods and records when each is first seen done.
#[must_use]
pub fn watch(pods: Api<Pod>, completion: bool) -> Seen {
    let seen = Seen::default();
    let s = seen.clone();
    tokio::spawn(async move {
        let mut stream = watcher(pods, watcher::Config::default().labels(BENCH_LABEL))
            .applied_objects()
            .boxed();
        while let Some(Ok(p)) = stream.next().await {
            if done(&p, completion)
                && let Ok(mut map) = s.0.lock()
            {
                map.entry(p.metadata.name.clone().unwrap_or_default())
                    .or_insert_with(Instant::now);
            }
        }
    });
    seen
}

/// A bench pod: bound to its node by `spec.nodeName` (no scheduler), no service account
/// token, no grace period.
#[derive(Clone, Debug)]
pub struct BenchPod {
    /// `spec.nodeName`.
    pub node: String,
    /// The container's image.
    pub image: String,
    /// The container's arguments (none: the image's own).
    pub args: Vec<String>,
    /// Run to completion (`restartPolicy: Never`) rather than keep running.
    pub completion: bool,
    /// `spec.runtimeClassName`.
    pub runtime_class: Option<String>,
    /// `imagePullPolicy: Never` (an image imported into the node beforehand).
    pub never_pull: bool,
}

impl BenchPod {
    /// A pod of `image` on `node`, kept running with the image's own arguments, pulled as
    /// the node sees fit.
    #[must_use]
    pub fn new(node: &str, image: &str) -> Self {
        Self {
            node: node.to_owned(),
            image: image.to_owned(),
            args: Vec::new(),
            completion: false,
            runtime_class: None,
            never_pull: false,
        }
    }

    /// The `tool` workload idling (`sleep 1000000`), kept running.
    #[must_use]
    pub fn idle(self) -> Self {
        Self {
            args: vec!["sleep".to_owned(), "1000000".to_owned()],
            completion: false,
            ..self
        }
    }

    /// The `tool` workload printing `done` and exiting, run to completion.
    #[must_use]
    pub fn completing(self) -> Self {
        Self {
            args: vec!["print".to_owned(), "done".to_owned()],
            completion: true,
            ..self
        }
    }

    /// Pod `name` of this kind.
    ///
    /// # Panics
    /// Never: the manifest is well formed.
    #[must_use]
    pub fn pod(&self, name: &str) -> Pod {
        let mut container = serde_json::json!({ "name": "main", "image": self.image });
        if !self.args.is_empty() {
            container["args"] = serde_json::json!(self.args);
        }
        if self.never_pull {
            container["imagePullPolicy"] = serde_json::json!("Never");
        }
        let mut spec = serde_json::json!({
            "nodeName": self.node,
            "restartPolicy": if self.completion { "Never" } else { "Always" },
            "tolerations": crate::wasm_toleration(),
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "enableServiceLinks": false,
            "containers": [container]
        });
        if let Some(class) = &self.runtime_class {
            spec["runtimeClassName"] = serde_json::json!(class);
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "labels": { "bench": "pods" } },
            "spec": spec
        }))
        .expect("pod")
    }
}

/// Deletes every bench pod at once and waits, for at most `secs`, until none is left.
///
/// # Errors
/// When the API server refuses, or the pods are still there after `secs`.
pub async fn clear(pods: &Api<Pod>, secs: u64) -> Result<()> {
    clear_labelled(pods, BENCH_LABEL, secs).await
}

/// Deletes every pod matching the label selector `selector` at once, without grace, and
/// waits, for at most `secs`, until none is left.
///
/// # Errors
/// When the API server refuses, or the pods are still there after `secs`.
pub async fn clear_labelled(pods: &Api<Pod>, selector: &str, secs: u64) -> Result<()> {
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    let selected = ListParams::default().labels(selector);
    pods.delete_collection(&now, &selected).await?;
    let give_up = Instant::now() + Duration::from_secs(secs);
    while !pods.list(&selected).await?.items.is_empty() {
        anyhow::ensure!(
            Instant::now() < give_up,
            "pods {selector} not gone in {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Start latency of `count` pods made from `template` (image `images[i % len]` for the
/// i-th), one at a time or all at once (`burst`): from just before each create request
/// to the watch event showing it done. Every pod is given `secs` to get there after the
/// one before it. Clears the bench pods before and after; returns the latencies in
/// milliseconds, sorted.
///
/// # Errors
/// When a request fails or a pod is not done in time.
pub async fn start_latency(
    pods: &Api<Pod>,
    template: &BenchPod,
    images: &[String],
    count: usize,
    burst: bool,
    secs: u64,
) -> Result<Vec<f64>> {
    let clear_secs = 60 + secs;
    clear(pods, clear_secs).await?;
    let seen = watch(pods.clone(), template.completion);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let names: Vec<String> = (0..count).map(|i| format!("bench-{i}")).collect();
    let pod = |i: usize| {
        let mut t = template.clone();
        t.image.clone_from(&images[i % images.len()]);
        t.pod(&names[i])
    };
    let mut started = HashMap::new();
    if burst {
        let creations = (0..count).map(|i| {
            let (p, pods) = (pod(i), pods.clone());
            async move {
                let t0 = Instant::now();
                pods.create(&PostParams::default(), &p).await.map(|_| t0)
            }
        });
        for (name, t0) in names.iter().zip(futures::future::join_all(creations).await) {
            started.insert(name.clone(), t0?);
        }
        for name in &names {
            seen.wait(name, secs).await?;
        }
    } else {
        for (i, name) in names.iter().enumerate() {
            let p = pod(i);
            let t0 = Instant::now();
            pods.create(&PostParams::default(), &p).await?;
            started.insert(name.clone(), t0);
            seen.wait(name, secs).await?;
        }
    }
    let mut ms: Vec<f64> = names
        .iter()
        .filter_map(|n| Some(seen.get(n)?.duration_since(started[n]).as_secs_f64() * 1000.0))
        .collect();
    ms.sort_by(f64::total_cmp);
    clear(pods, clear_secs).await?;
    Ok(ms)
}

/// Creates `n` pods from `template` (`bench-0`...), 25 requests at a time, and waits, for
/// at most `secs`, until all are `Ready`; returns the seconds from the first request.
///
/// # Errors
/// When a request fails or not all are Ready in time.
pub async fn all_ready(pods: &Api<Pod>, template: &BenchPod, n: usize, secs: u64) -> Result<f64> {
    let seen = watch(pods.clone(), false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let began = Instant::now();
    let names: Vec<String> = (0..n).map(|i| format!("bench-{i}")).collect();
    for chunk in names.chunks(25) {
        let creations = chunk.iter().map(|name| {
            let (p, pods) = (template.pod(name), pods.clone());
            async move { pods.create(&PostParams::default(), &p).await }
        });
        for created in futures::future::join_all(creations).await {
            created?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    while let Some(missing) = names.iter().find(|name| seen.get(name).is_none()) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "not all {n} pods Ready in {secs} s ({missing} and maybe others not)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(began.elapsed().as_secs_f64())
}

/// Churn: `workers` loops, each creating a pod from `template` (which must run to
/// completion), waiting until it has `Succeeded`, deleting it and waiting until it is gone
/// (each step given `secs`), until `until`. Returns how many pods went through.
///
/// # Errors
/// When a request fails or a pod misses a step's bound.
pub async fn churn(
    pods: &Api<Pod>,
    template: &BenchPod,
    until: Instant,
    workers: usize,
    secs: u64,
) -> Result<u64> {
    let seen = watch(pods.clone(), true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let worker = |w: usize| {
        let (pods, seen, template) = (pods.clone(), seen.clone(), template.clone());
        async move {
            let mut done = 0u64;
            while Instant::now() < until {
                let name = format!("bench-{w}-{done}");
                pods.create(&PostParams::default(), &template.pod(&name))
                    .await?;
                seen.wait(&name, secs).await?;
                pods.delete(&name, &DeleteParams::default()).await?;
                let give_up = Instant::now() + Duration::from_secs(secs);
                while pods.get_opt(&name).await?.is_some() {
                    anyhow::ensure!(Instant::now() < give_up, "{name} never went away");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                done += 1;
            }
            anyhow::Ok(done)
        }
    };
    let mut total = 0;
    for done in futures::future::join_all((0..workers).map(worker)).await {
        total += done?;
    }
    Ok(total)
}

/// Runs pod `name` made from `template` (which must run to completion) until it has
/// `Succeeded`, for at most `secs`, and returns its log; the pod is deleted afterwards.
///
/// # Errors
/// When the pod fails, does not finish in time, or a request fails.
pub async fn run_to_completion(
    pods: &Api<Pod>,
    template: &BenchPod,
    name: &str,
    secs: u64,
) -> Result<String> {
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    if pods.get_opt(name).await?.is_some() {
        pods.delete(name, &now).await?;
        while pods.get_opt(name).await?.is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    pods.create(&PostParams::default(), &template.pod(name))
        .await?;
    let give_up = Instant::now() + Duration::from_secs(secs);
    loop {
        let p = pods.get(name).await?;
        match p.status.and_then(|s| s.phase).as_deref() {
            Some("Succeeded") => break,
            Some("Failed") => anyhow::bail!("{name} failed"),
            _ if Instant::now() > give_up => anyhow::bail!("{name} did not finish in {secs} s"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let log = pods.logs(name, &LogParams::default()).await?;
    pods.delete(name, &now).await?;
    Ok(log)
}

/// The hash and the `seconds=` figure that the `hash` workload printed.
///
/// # Errors
/// When `output` holds no `hash=... seconds=...` line.
pub fn hash_seconds(output: &str) -> Result<(String, f64)> {
    let line = output
        .lines()
        .find(|l| l.starts_with("hash="))
        .with_context(|| format!("no hash line in {output:?}"))?;
    let field = |key: &str| {
        line.split(' ')
            .find_map(|f| f.strip_prefix(key))
            .with_context(|| format!("no {key} in {line:?}"))
    };
    Ok((field("hash=")?.to_owned(), field("seconds=")?.parse()?))
}

/// The `p` quantile (0 to 1) of `sorted`, by the nearest rank.
#[must_use]
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The median of `values` (sorted here).
#[must_use]
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(values, 0.5)
}

/// `VmRSS` of process `pid`, in KiB.
#[must_use]
pub fn rss_kib(pid: u32) -> Option<u64> {
    crate::proc_status(pid, "VmRSS")
}

/// Proportional set size of process `pid`, in KiB: its private memory plus its share of
/// pages mapped by several processes (a binary's text shared by many shims counts once
/// over all of them).
#[must_use]
pub fn pss_kib(pid: u32) -> Option<u64> {
    crate::proc_field(&format!("/proc/{pid}/smaps_rollup"), "Pss")
}

/// User plus system CPU time of process `pid`, in clock ticks (1/100 s).
#[must_use]
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// The machine's busy CPU time (every state but idle and iowait, all CPUs), in clock
/// ticks (1/100 s).
#[must_use]
pub fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let total: u64 = ticks.iter().sum();
    Some(total - ticks.get(3)? - ticks.get(4)?)
}

/// Waits, for at most `bound`, until the whole machine uses under `cores` of CPU over a
/// 2-second window: the work one measure leaves behind (a kubelet node's teardown, the
/// kernel removing cgroups, namespaces and mounts) must not fall into the next.
pub async fn quiet(cores: f64, bound: Duration) {
    let give_up = Instant::now() + bound;
    let window = Duration::from_secs(2);
    while Instant::now() < give_up {
        let Some(before) = machine_busy_ticks() else {
            return;
        };
        tokio::time::sleep(window).await;
        let Some(after) = machine_busy_ticks() else {
            return;
        };
        if (after.saturating_sub(before)) as f64 / 100.0 / window.as_secs_f64() < cores {
            return;
        }
    }
}

/// The machine: its processor, CPUs and kernel.
#[must_use]
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map_or("an unknown processor", |(_, m)| m.trim());
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, {cpus} CPUs, Linux {}", kernel.trim())
}

/// The parent of process `pid`.
#[must_use]
pub fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Every process whose command line contains `needle`, and all their descendants.
#[must_use]
pub fn processes_under(needle: &str) -> Vec<u32> {
    let mut all: Vec<(u32, u32, bool)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        all.push((pid, parent(pid).unwrap_or(0), text.contains(needle)));
    }
    let mut chosen: Vec<u32> = all.iter().filter(|p| p.2).map(|p| p.0).collect();
    // Descendants: repeat until no process joins (the tree is shallow).
    loop {
        let more: Vec<u32> = all
            .iter()
            .filter(|(pid, ppid, _)| chosen.contains(ppid) && !chosen.contains(pid))
            .map(|p| p.0)
            .collect();
        if more.is_empty() {
            return chosen;
        }
        chosen.extend(more);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert!(percentile(&[], 0.5).is_nan());
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
    }

    #[test]
    fn the_hash_line_gives_its_hash_and_seconds() {
        let (hash, secs) =
            hash_seconds("x\nhash=00ff rounds=10 seconds=1.250\n").expect("a hash line");
        assert_eq!((hash.as_str(), secs), ("00ff", 1.25));
        assert!(hash_seconds("hash=00ff rounds=10").is_err());
        assert!(hash_seconds("nothing").is_err());
    }

    #[test]
    fn this_process_is_found_with_its_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let me = std::process::id();
        let needle = std::fs::read(format!("/proc/{me}/cmdline")).expect("cmdline");
        let needle = String::from_utf8_lossy(&needle).replace('\0', " ");
        let found = processes_under(needle.trim_end());
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&me), "{found:?}");
        assert!(found.contains(&child.id()), "{found:?}");
        assert!(pss_kib(me).is_some_and(|k| k > 0));
    }
}
