//! HTTP/2 against HTTP/1.1 on the krustlet pod serving the WASI 0.3 `p3-hello`: one
//! HTTP/2 connection (prior knowledge, as `oha --http2` speaks it to an `http://` URL) of
//! [`STREAMS`] concurrent streams against [`STREAMS`] HTTP/1.1 keep-alive connections,
//! so the same number of requests in flight. There is no peer: `wasmtime serve` speaks
//! HTTP/1.1 only. A short warm-up of each, then three rounds (the middle one reversed) of
//! [`SECONDS`] each; the median run of each counts.

use e2e::bench::load::Load;

use super::report::{cells, ratio_cells};
use super::{Measured, Side, Target, median_run, run_load};

/// Requests in flight: the streams of the one HTTP/2 connection, or HTTP/1.1
/// connections (krustlet allows 100 streams per connection).
pub(super) const STREAMS: usize = 100;
/// Seconds of each run.
const SECONDS: u64 = 5;
/// One HTTP/2 connection of [`STREAMS`] streams, on 2 client threads.
const OVER_H2: Load = Load::new(2, 1, SECONDS).over_http2(STREAMS);
/// [`STREAMS`] HTTP/1.1 connections, on 2 client threads.
const OVER_H1: Load = Load::new(2, STREAMS, SECONDS);

/// Loads `target` (the WASI 0.3 pod) over both protocols; every run.
pub(super) fn measure(target: &Target, client_cpus: Option<&str>) -> anyhow::Result<Vec<Measured>> {
    for load in [OVER_H2, OVER_H1] {
        run_load(target, load.lasting(2), client_cpus)?;
    }
    let mut runs = Vec::new();
    for load in [OVER_H2, OVER_H1, OVER_H1, OVER_H2, OVER_H2, OVER_H1] {
        let m = run_load(target, load, client_cpus)?;
        m.run.progress(target.side.label());
        runs.push(m);
    }
    Ok(runs)
}

/// Prints the table of `runs`; its JSON.
pub(super) fn report(runs: &[Measured]) -> anyhow::Result<serde_json::Value> {
    let h2 = median_run(runs, Side::KrustletP3, OVER_H2)?;
    let h1 = median_run(runs, Side::KrustletP3, OVER_H1)?;
    println!(
        "\nHTTP/2 against HTTP/1.1, {STREAMS} requests in flight, the krustlet pod serving WASI \
         0.3 p3-hello (no peer: wasmtime serve speaks HTTP/1.1 only); oha, a 2 s warm-up of \
         each, then three rounds of {SECONDS} s (the middle one reversed), the median run of \
         each counts\n"
    );
    println!(
        "| protocol | connections | streams per connection | requests/s | p50 ms | p99 ms | p99.9 ms | max ms | server CPU µs per request |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| HTTP/2, prior knowledge | 1 | {STREAMS} | {} |",
        cells(&h2)
    );
    println!("| HTTP/1.1 | {STREAMS} | 1 | {} |", cells(&h1));
    let (ratio, json) = ratio_cells("HTTP/2 / HTTP/1.1", &h2, &h1);
    println!("| HTTP/2 / HTTP/1.1 | | | {ratio} |");
    Ok(serde_json::json!({
        "streams": STREAMS, "seconds": SECONDS, "http2": h2, "http1": h1, "ratio": json,
        "runs": runs
    }))
}
