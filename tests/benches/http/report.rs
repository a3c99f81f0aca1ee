//! The bench's tables: the servers under each load with their ratios and targets (WASI
//! 0.2 and 0.3 against `wasmtime serve`), fresh pods' first requests, then HTTP/2
//! ([`super::h2`]) and memory ([`super::memory`]); and the JSON of it all.

use e2e::bench::load::{LOADS, cpu_list};

use super::first::FirstRequests;
use super::{Measured, Side, Target, WARMUP_SECONDS, median, median_run};

/// Issue 24's targets for the WASI 0.3 service against `wasmtime serve` at 16
/// connections: throughput at least this many times the peer's...
const P3_THROUGHPUT_AT_LEAST: f64 = 1.2;
/// ...and a p99 at most this many times the peer's.
const P3_P99_AT_MOST: f64 = 1.0;

/// Everything measured, for the report.
pub(super) struct Measures<'a> {
    pub(super) runs: &'a [Measured],
    pub(super) over_h2: &'a [Measured],
    pub(super) first: &'a FirstRequests,
    pub(super) memory: &'a super::memory::Memory,
    pub(super) cpus: &'a [usize],
    pub(super) targets: &'a [&'a Target; 5],
}

/// The figures of `m` as table cells: requests/s, p50, p99, p99.9, max, CPU per request.
pub(super) fn cells(m: &Measured) -> String {
    format!(
        "{:.0} | {:.3} | {:.3} | {:.2} | {:.1} | {:.0}",
        m.run.requests_per_second,
        m.run.p50_ms,
        m.run.p99_ms,
        m.run.p999_ms,
        m.run.max_ms,
        m.cpu_us_per_request
    )
}

/// `a` over `b` in throughput, p50, p99 and CPU per request, as table cells (under those
/// of [`cells`]) and as JSON labelled `of`.
pub(super) fn ratio_cells(of: &str, a: &Measured, b: &Measured) -> (String, serde_json::Value) {
    let (rps, p50, p99, cpu) = (
        a.run.requests_per_second / b.run.requests_per_second,
        a.run.p50_ms / b.run.p50_ms,
        a.run.p99_ms / b.run.p99_ms,
        a.cpu_us_per_request / b.cpu_us_per_request,
    );
    (
        format!("{rps:.2}x | {p50:.2}x | {p99:.2}x | | | {cpu:.2}x"),
        serde_json::json!({
            "of": of, "throughput_ratio": rps, "p50_ratio": p50, "p99_ratio": p99,
            "cpu_per_request_ratio": cpu
        }),
    )
}

/// The table row of `m`.
fn row(m: &Measured) -> String {
    format!(
        "| {} | {} | {} |",
        m.side.label(),
        m.run.load.connections,
        cells(m)
    )
}

/// `a` over `b`: its row and its JSON.
fn ratios(a: &Measured, b: &Measured) -> (String, serde_json::Value) {
    let label = format!("{} / {}", a.side.label(), b.side.label());
    let (cells, json) = ratio_cells(&label, a, b);
    (
        format!("| {label} | {} | {cells} |", a.run.load.connections),
        json,
    )
}

/// What the servers are, one line each.
fn sides(targets: &[&Target; 5]) -> Vec<String> {
    let [k, w, d, k3, w3] = targets;
    vec![
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
        format!(
            "krustlet pod, WASI 0.3 p3-hello at {}: the same agent and node; the component's \
             instances reused (up to 128 requests each, 16 at once, dropped after 1 s idle)",
            k3.addr
        ),
        format!(
            "wasmtime serve -Scli, WASI 0.3 p3-hello at {}: its defaults, which reuse instances \
             the same way (-Sp3 and -Wcomponent-model-async are on by default in 48.0.8)",
            w3.addr
        ),
    ]
}

/// Whether `ratio` met a target of `at_least` (or, when `!at_least`, of at most) `bound`.
fn said(ratio: f64, bound: f64, at_least: bool) -> &'static str {
    if (at_least && ratio >= bound) || (!at_least && ratio <= bound) {
        "met"
    } else {
        "missed"
    }
}

/// Prints the tables; the JSON to write.
pub(super) fn report(m: &Measures<'_>) -> anyhow::Result<serde_json::Value> {
    let (runs, cpus) = (m.runs, m.cpus);
    let when = jiff::Timestamp::now().to_string();
    let machine = e2e::bench::machine();
    let versions = std::env::var("HTTP_VERSIONS").unwrap_or_default();
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
    let sides = sides(m.targets);
    println!("\nwasi:http serving, {when}");
    println!("machine: {machine}\nversions: {versions}");
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
        let median = |side| median_run(runs, side, load);
        let medians = [
            median(Side::Krustlet)?,
            median(Side::Wasmtime)?,
            median(Side::WasmtimeOnDemand)?,
            median(Side::KrustletP3)?,
            median(Side::WasmtimeP3)?,
        ];
        let (peer_row, peer) = ratios(&medians[0], &medians[1]);
        let (on_demand_row, on_demand) = ratios(&medians[0], &medians[2]);
        let (p3_row, p3) = ratios(&medians[3], &medians[4]);
        for m in &medians[..3] {
            println!("{}", row(m));
        }
        println!("{peer_row}\n{on_demand_row}");
        for m in &medians[3..] {
            println!("{}", row(m));
        }
        println!("{p3_row}");
        compared.push(serde_json::json!({
            "load": load, "medians": medians, "krustlet_over_wasmtime": peer,
            "krustlet_over_wasmtime_on_demand": on_demand,
            "p3_krustlet_over_wasmtime": p3
        }));
    }
    let ratio = |i: usize, of: &str, what: &str| compared[i][of][what].as_f64().unwrap_or(f64::NAN);
    let (rps, p99) = (
        ratio(0, "krustlet_over_wasmtime", "throughput_ratio"),
        ratio(0, "krustlet_over_wasmtime", "p99_ratio"),
    );
    println!(
        "\ntargets against wasmtime serve at {} connections: throughput at least 0.9x: {}; \
         p99 within 1.2x: {}",
        LOADS[0].connections,
        said(rps, 0.9, true),
        said(p99, 1.2, false)
    );
    let (p3_rps, p3_p99) = (
        ratio(0, "p3_krustlet_over_wasmtime", "throughput_ratio"),
        ratio(0, "p3_krustlet_over_wasmtime", "p99_ratio"),
    );
    println!(
        "issue 24's targets for WASI 0.3 (p3-hello) against wasmtime serve at {} connections: \
         throughput at least {P3_THROUGHPUT_AT_LEAST}x: {} ({p3_rps:.2}x); p99 at most \
         {P3_P99_AT_MOST}x: {} ({p3_p99:.2}x); at {} connection: {:.2}x and {:.2}x",
        LOADS[0].connections,
        said(p3_rps, P3_THROUGHPUT_AT_LEAST, true),
        said(p3_p99, P3_P99_AT_MOST, false),
        LOADS[1].connections,
        ratio(1, "p3_krustlet_over_wasmtime", "throughput_ratio"),
        ratio(1, "p3_krustlet_over_wasmtime", "p99_ratio"),
    );
    let first = first_requests(m.first);
    let over_h2 = super::h2::report(m.over_h2)?;
    let memory = m.memory.report();
    let errors: u64 = runs.iter().chain(m.over_h2).map(|m| m.run.errors).sum();
    if errors > 0 {
        println!("warning: {errors} requests failed or were not answered 200 over all runs");
    }
    Ok(serde_json::json!({
        "when": when, "machine": machine, "versions": versions,
        "cpus": cpus.len(), "pinning": pinning, "sides": sides,
        "client": "oha 1.16.0, keep-alive, no latency correction",
        "warmup_seconds": WARMUP_SECONDS,
        "order": "per load: krustlet, wasmtime, on-demand, krustlet p3, wasmtime p3, then the same reversed, then forward again; the median run of each counts",
        "compared": compared, "runs": runs,
        "targets": {
            "throughput_at_least": 0.9, "p99_at_most": 1.2,
            "throughput_met": rps >= 0.9, "p99_met": p99 <= 1.2,
            "p3_throughput_at_least": P3_THROUGHPUT_AT_LEAST, "p3_p99_at_most": P3_P99_AT_MOST,
            "p3_throughput_met": p3_rps >= P3_THROUGHPUT_AT_LEAST,
            "p3_p99_met": p3_p99 <= P3_P99_AT_MOST
        },
        "first_request": first, "http2": over_h2, "memory": memory
    }))
}

/// Prints the first requests' lines; their JSON.
fn first_requests(first: &FirstRequests) -> serde_json::Value {
    let (to_ip, to_ok, kwok) = (&first.to_ip, &first.to_ok, &first.kwok_ready);
    println!(
        "first request of a fresh pod (create to the first 200 at its pod IP), median of {}: \
         {:.0} ms (min {:.0}, max {:.0}); of it, create to the pod IP seen: {:.0} ms",
        to_ok.len(),
        median(to_ok),
        to_ok[0],
        to_ok[to_ok.len() - 1],
        median(to_ip)
    );
    println!(
        "the same pods on kwok (create to Ready), median of {}: {:.0} ms (min {:.0}, max {:.0}); \
         krustlet's first 200 over kwok's Ready: {:.2}x",
        kwok.len(),
        median(kwok),
        kwok.first().copied().unwrap_or(f64::NAN),
        kwok.last().copied().unwrap_or(f64::NAN),
        median(to_ok) / median(kwok)
    );
    serde_json::json!({
        "pods": to_ok.len(), "median_ms": median(to_ok), "create_to_200_ms": to_ok,
        "create_to_ip_ms": to_ip, "median_create_to_ip_ms": median(to_ip),
        "kwok_create_to_ready_ms": kwok, "kwok_median_ms": median(kwok),
        "ratio_vs_kwok": median(to_ok) / median(kwok)
    })
}
