//! HTTP load for the serving benchmarks: `oha` runs of one load setting against a URL
//! (HTTP/1.1, or HTTP/2 with prior knowledge; its JSON report read back), the median run
//! by throughput, the CPUs a client and servers may be pinned to, pods that serve on
//! port 8080, and a probe that waits for a server's first 200.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;

/// One load setting: `connections` keep-alive connections on `threads` client threads for
/// `seconds`, each sending its next request when the last answer is in (over HTTP/2,
/// `http2_streams` such senders share each connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Load {
    /// oha's worker threads.
    pub threads: usize,
    /// Concurrent connections.
    pub connections: usize,
    /// How long the run lasts.
    pub seconds: u64,
    /// 0: HTTP/1.1; otherwise HTTP/2 with prior knowledge (`oha --http2`) and this many
    /// concurrent streams per connection (`oha -p`).
    pub http2_streams: usize,
}

impl Load {
    /// `connections` on `threads` for `seconds`, over HTTP/1.1.
    #[must_use]
    pub const fn new(threads: usize, connections: usize, seconds: u64) -> Self {
        Self {
            threads,
            connections,
            seconds,
            http2_streams: 0,
        }
    }

    /// The same load over HTTP/2, `streams` concurrent streams on each connection.
    #[must_use]
    pub const fn over_http2(self, streams: usize) -> Self {
        Self {
            http2_streams: streams,
            ..self
        }
    }

    /// The same load for `seconds` instead.
    #[must_use]
    pub const fn lasting(self, seconds: u64) -> Self {
        Self { seconds, ..self }
    }
}

/// The loads the serving benchmarks use: 16 connections on 2 threads for 15 s, then 1
/// connection for 10 s.
pub const LOADS: [Load; 2] = [Load::new(2, 16, 15), Load::new(1, 1, 10)];

/// What one `oha` run measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Run {
    /// The load it ran.
    pub load: Load,
    /// Requests answered, whatever the status.
    pub requests: u64,
    /// Requests answered per second of the run.
    pub requests_per_second: f64,
    /// Latency percentiles and the slowest request, in milliseconds.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// See `p50_ms`.
    pub p999_ms: f64,
    /// See `p50_ms`.
    pub max_ms: f64,
    /// Answers other than 200 and failed requests (those cut by the run's end aside).
    pub errors: u64,
}

impl Run {
    /// Says on stderr how the run of `label` went, as it ends.
    pub fn progress(&self, label: &str) {
        let h2 = match self.load.http2_streams {
            0 => String::new(),
            n => format!(" h2 p{n}"),
        };
        eprintln!(
            "{label} c{}{h2}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {} errors",
            self.load.connections, self.requests_per_second, self.p50_ms, self.p99_ms, self.errors
        );
    }
}

/// `program`, run on `cpus` when given (`taskset -c`).
#[must_use]
pub fn pinned(program: &Path, cpus: Option<&str>) -> Command {
    let Some(cpus) = cpus else {
        return Command::new(program);
    };
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", cpus]).arg(program);
    cmd
}

/// The CPUs this process may use (`Cpus_allowed_list` of `/proc/self/status`).
#[must_use]
pub fn allowed_cpus() -> Vec<usize> {
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

/// `cpus` as `taskset` takes them (`0,1,2`).
#[must_use]
pub fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The `oha` binary: `OHA_BIN`, else `oha` on the `PATH`.
#[must_use]
pub fn oha_bin() -> String {
    std::env::var("OHA_BIN").unwrap_or_else(|_| "oha".to_owned())
}

/// One `oha` run of `load` against `url`, made by `client` (the `oha` binary, perhaps
/// behind `taskset` or `nsenter`; see [`pinned`]).
///
/// # Errors
/// When `oha` fails or its report lacks a figure.
pub fn oha(mut client: Command, url: &str, load: Load) -> Result<Run> {
    client
        .args(["--no-tui", "--output-format", "json"])
        .args(["-c", &load.connections.to_string()])
        .args(["--worker-threads", &load.threads.to_string()])
        .args(["-z", &format!("{}s", load.seconds)]);
    if load.http2_streams > 0 {
        client
            .arg("--http2")
            .args(["-p", &load.http2_streams.to_string()]);
    }
    client.arg(url);
    let out = client.output().context("running oha")?;
    if !out.status.success() {
        bail!("oha failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("oha printed {}", String::from_utf8_lossy(&out.stdout)))?;
    read_report(&report, load)
}

/// The figures of oha's JSON `report` of a run of `load`.
fn read_report(report: &serde_json::Value, load: Load) -> Result<Run> {
    let ms = |path: &str| {
        report
            .pointer(path)
            .and_then(serde_json::Value::as_f64)
            .map(|s| s * 1000.0)
            .with_context(|| format!("no {path} in oha's report"))
    };
    // The counts of a distribution, but for the key `skip`.
    let counts = |path: &str, skip: &str| -> u64 {
        report
            .pointer(path)
            .and_then(serde_json::Value::as_object)
            .map_or(0, |m| {
                m.iter()
                    .filter(|(k, _)| *k != skip)
                    .filter_map(|(_, n)| n.as_u64())
                    .sum()
            })
    };
    let ok = report
        .pointer("/statusCodeDistribution/200")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    let requests = counts("/statusCodeDistribution", "");
    Ok(Run {
        load,
        requests,
        requests_per_second: report
            .pointer("/summary/requestsPerSec")
            .and_then(serde_json::Value::as_f64)
            .context("no requests per second in oha's report")?,
        p50_ms: ms("/latencyPercentiles/p50")?,
        p99_ms: ms("/latencyPercentiles/p99")?,
        p999_ms: ms("/latencyPercentiles/p99.9")?,
        max_ms: ms("/summary/slowest")?,
        errors: requests - ok + counts("/errorDistribution", "aborted due to deadline"),
    })
}

/// Of `runs`, the median by requests per second (`run` gives each one's figures); of an
/// even count, the upper of the two middle ones.
#[must_use]
pub fn median_by_throughput<T>(mut runs: Vec<&T>, run: impl Fn(&T) -> &Run) -> Option<&T> {
    runs.sort_by(|a, b| {
        run(a)
            .requests_per_second
            .total_cmp(&run(b).requests_per_second)
    });
    runs.get(runs.len() / 2).copied()
}

/// The status of one GET of `path` over a fresh connection (closed after it), each step
/// bounded by 500 ms.
///
/// # Errors
/// When the connection fails or what comes back is not HTTP.
pub fn get_status(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let bound = Duration::from_millis(500);
    let mut s = TcpStream::connect_timeout(&addr, bound)?;
    s.set_read_timeout(Some(bound))?;
    s.set_write_timeout(Some(bound))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.take(64 << 10).read_to_end(&mut raw)?;
    raw.get(9..12)
        .and_then(|code| std::str::from_utf8(code).ok()?.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))
}

/// Asks `addr` every 2 ms until it answers 200 (within `secs`); when it did.
///
/// # Errors
/// When it does not answer 200 in time.
pub async fn first_ok(addr: SocketAddr, secs: u64) -> Result<Instant> {
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Ok(200) = get_status(addr, "/first") {
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

/// A pod `name` bound to `node` (`spec.nodeName`) serving `image` on port 8080, labelled
/// `bench=<label>` and `app=<name>`, with `POD_NAME` and `env` in its environment; no
/// service account token, no grace period.
///
/// # Panics
/// Never: the manifest is well formed.
#[must_use]
pub fn serving_pod(name: &str, node: &str, image: &str, label: &str, env: &[(&str, &str)]) -> Pod {
    let mut vars = vec![serde_json::json!({ "name": "POD_NAME",
        "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } })];
    vars.extend(
        env.iter()
            .map(|(k, v)| serde_json::json!({ "name": k, "value": v })),
    );
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "labels": { "bench": label, "app": name } },
        "spec": {
            "nodeName": node,
            "tolerations": crate::wasm_toleration(),
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "web",
                "image": image,
                "ports": [{ "containerPort": 8080 }],
                "env": vars
            }]
        }
    }))
    .expect("a valid pod manifest")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rps: f64) -> Run {
        Run {
            load: LOADS[0],
            requests: 1,
            requests_per_second: rps,
            p50_ms: 0.0,
            p99_ms: 0.0,
            p999_ms: 0.0,
            max_ms: 0.0,
            errors: 0,
        }
    }

    #[test]
    fn an_oha_report_gives_its_figures_in_milliseconds_and_counts_errors() {
        let report = serde_json::json!({
            "summary": { "requestsPerSec": 1000.5, "slowest": 0.02 },
            "latencyPercentiles": { "p50": 0.001, "p99": 0.004, "p99.9": 0.01 },
            "statusCodeDistribution": { "200": 990, "502": 10 },
            "errorDistribution": { "aborted due to deadline": 16, "connection reset": 2 }
        });
        let got = read_report(&report, LOADS[0]).expect("a whole report");
        assert_eq!((got.requests, got.errors), (1000, 12));
        assert_eq!(got.requests_per_second, 1000.5);
        assert!((got.p99_ms - 4.0).abs() < 1e-9 && (got.max_ms - 20.0).abs() < 1e-9);
        assert!(read_report(&serde_json::json!({}), LOADS[0]).is_err());
    }

    #[test]
    fn an_http2_load_keeps_its_streams() {
        let h2 = Load::new(2, 1, 5).over_http2(100);
        assert_eq!((LOADS[0].http2_streams, h2.http2_streams), (0, 100));
        assert_eq!(h2.lasting(2).http2_streams, 100);
        assert_ne!(h2, Load::new(2, 1, 5));
    }

    #[test]
    fn the_median_run_is_the_middle_one_by_throughput() {
        let runs = [run(3.0), run(1.0), run(2.0)];
        let middle = median_by_throughput(runs.iter().collect(), |r| r);
        assert_eq!(middle.map(|r| r.requests_per_second), Some(2.0));
        assert!(median_by_throughput(Vec::<&Run>::new(), |r| r).is_none());
    }

    #[test]
    fn a_serving_pod_carries_its_labels_and_environment() {
        let pod = serving_pod(
            "front",
            "node-a",
            "img",
            "xn",
            &[("TARGET_URL", "http://x/")],
        );
        let labels = pod.metadata.labels.unwrap_or_default();
        assert_eq!(labels.get("app").map(String::as_str), Some("front"));
        assert_eq!(labels.get("bench").map(String::as_str), Some("xn"));
        let spec = pod.spec.unwrap_or_default();
        assert_eq!(spec.node_name.as_deref(), Some("node-a"));
        let env = spec.containers[0].env.clone().unwrap_or_default();
        assert_eq!(env.len(), 2);
        assert_eq!(env[1].value.as_deref(), Some("http://x/"));
    }
}
