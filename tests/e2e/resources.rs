//! Resource accounting on a live node: a CPU-burning pod limited to 200m stays within
//! 200m next to an unlimited one (it is throttled, the other is not), an idle pod is
//! reported with a small but non-zero usage, and `/stats/summary` agrees with
//! `/metrics/resource`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use e2e::{KrustletNode, create_fresh, delete_and_wait, setup, wait_pod, wasm_pod};

/// One sample of a Prometheus text page: name, labels, value.
type Series = (String, BTreeMap<String, String>, f64);

/// The samples of a page (a simple reader of the lines this node writes; the label
/// values it writes have no commas or escaped quotes).
fn samples(page: &str) -> Vec<Series> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, rest) = match l.split_once('{') {
                Some((name, rest)) => {
                    let (labels, rest) = rest.split_once('}')?;
                    (name, (Some(labels), rest))
                }
                None => {
                    let (name, rest) = l.split_once(' ')?;
                    (name, (None, rest))
                }
            };
            let (labels, rest) = rest;
            let labels = labels
                .map(|ls| {
                    ls.split(',')
                        .filter_map(|kv| {
                            let (k, v) = kv.split_once('=')?;
                            Some((k.to_owned(), v.trim_matches('"').to_owned()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let value = rest.split_whitespace().next()?.parse().ok()?;
            Some((name.to_owned(), labels, value))
        })
        .collect()
}

/// The value of `name` for container `main` of `pod`.
fn of(series: &[Series], name: &str, pod: &str) -> Option<f64> {
    series
        .iter()
        .find(|(n, l, _)| {
            n == name
                && l.get("pod").map(String::as_str) == Some(pod)
                && l.get("container").is_none_or(|c| c == "main")
        })
        .map(|(_, _, v)| *v)
}

fn limited(
    name: &str,
    node: &str,
    image: &str,
    cpu: Option<&str>,
) -> k8s_openapi::api::core::v1::Pod {
    let mut pod = wasm_pod(name, node, image, &["burn", "0"], "Never");
    if let Some(cpu) = cpu {
        let spec = pod.spec.as_mut().expect("spec");
        spec.containers[0].resources = Some(
            serde_json::from_value(serde_json::json!({ "limits": { "cpu": cpu } }))
                .expect("resources"),
        );
    }
    pod
}

#[tokio::test]
async fn cpu_is_accounted_and_limited_per_container_and_the_endpoints_agree() -> Result<()> {
    let node_name = "e2e-resources";
    let (cluster, node) = setup(node_name, 10471, &[]).await?;
    let image = cluster.push("tool", "resources").await?;
    let pods = cluster.pods();
    let manifests = [
        limited("res-limited", node_name, &image, Some("200m")),
        limited("res-free", node_name, &image, None),
        wasm_pod("res-idle", node_name, &image, &["sleep", "3600"], "Never"),
    ];
    for pod in &manifests {
        create_fresh(&pods, pod).await?;
    }
    for name in ["res-limited", "res-free", "res-idle"] {
        wait_pod(&pods, name, 120, "Running", |p| e2e::phase(p) == "Running").await?;
    }
    let result = measure(&node).await;
    for name in ["res-limited", "res-free", "res-idle"] {
        delete_and_wait(&pods, name, 60).await?;
    }
    let (limited, free, idle) = result?;
    println!(
        "measured over 10 s: 200m-limited {limited:.3}, unlimited {free:.3}, idle {idle:.4} cores"
    );
    // The limit holds however idle the machine is (a period's overrun is paid back).
    // How much either burning pod gets below that depends on how busy the two cores
    // are (the full suite burns CPU in several tests at once: 0.07 to 0.08 cores each,
    // seen); `hack/bench cpu` and wasi-runtime's tests/cpu.rs measure the accuracy.
    assert!(limited <= 0.25, "the 200m pod used {limited:.3} cores");
    assert!(limited >= 0.01, "the 200m pod got only {limited:.3} cores");
    assert!(free >= 0.01, "the unlimited pod got only {free:.3} cores");
    assert!(idle < 0.02, "the idle pod used {idle:.4} cores");
    Ok(())
}

/// Two scrapes of `/metrics/resource` 10 s apart: each pod's CPU rate (limited, free,
/// idle), with the checks of the pages, `/metrics/cadvisor` and `/stats/summary`.
async fn measure(node: &KrustletNode) -> Result<(f64, f64, f64)> {
    let first = samples(&node.api_get("/metrics/resource").await?);
    let began = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let page = node.api_get("/metrics/resource").await?;
    let window = began.elapsed().as_secs_f64();
    let summary: serde_json::Value = serde_json::from_str(&node.api_get("/stats/summary").await?)
        .context("the summary is JSON")?;
    let second = samples(&page);
    let rate = |pod: &str| -> Result<f64> {
        let a = of(&first, "container_cpu_usage_seconds_total", pod);
        let b = of(&second, "container_cpu_usage_seconds_total", pod);
        match (a, b) {
            (Some(a), Some(b)) => Ok((b - a) / window),
            _ => bail!("no CPU of {pod} in\n{page}"),
        }
    };
    // Every family metrics-server reads is there, for the node and each pod.
    for name in [
        "node_cpu_usage_seconds_total",
        "node_memory_working_set_bytes",
    ] {
        let v = second.iter().find(|(n, _, _)| n == name).map(|s| s.2);
        assert!(v.is_some_and(|v| v > 0.0), "{name} in\n{page}");
    }
    let mut memory = HashMap::new();
    for pod in ["res-limited", "res-free", "res-idle"] {
        for name in [
            "container_cpu_usage_seconds_total",
            "container_memory_working_set_bytes",
            "container_start_time_seconds",
            "pod_cpu_usage_seconds_total",
            "pod_memory_working_set_bytes",
        ] {
            let v = of(&second, name, pod);
            assert!(
                v.is_some_and(|v| v > 0.0),
                "{name} of {pod} is missing or 0 in\n{page}"
            );
        }
        memory.insert(pod, of(&second, "container_memory_working_set_bytes", pod));
    }
    // The summary has the same pods, their CPU between the two scrapes (it was read
    // after the second: at least the second's), the same working sets.
    for pod in ["res-limited", "res-free", "res-idle"] {
        let p = summary["pods"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["podRef"]["name"] == pod))
            .with_context(|| format!("{pod} not in the summary: {summary}"))?;
        let c = &p["containers"][0];
        assert_eq!(c["name"], "main");
        let cpu = c["cpu"]["usageCoreNanoSeconds"].as_f64().unwrap_or(0.0) / 1e9;
        let scraped = of(&second, "container_cpu_usage_seconds_total", pod).unwrap_or(f64::MAX);
        assert!(
            cpu >= scraped,
            "{pod}: summary CPU {cpu} before the scrape's {scraped}"
        );
        assert!(
            cpu <= scraped + 5.0,
            "{pod}: summary CPU {cpu} far past the scrape's {scraped}"
        );
        let bytes = c["memory"]["workingSetBytes"].as_f64();
        assert_eq!(bytes, memory[pod], "{pod}: working sets differ");
        assert!(
            p["ephemeral-storage"]["usedBytes"].as_u64().is_some(),
            "{p}"
        );
    }
    assert!(
        summary["node"]["cpu"]["usageCoreNanoSeconds"]
            .as_u64()
            .is_some_and(|n| n > 0)
    );
    // The limited container is under bandwidth control (periods counted), the unlimited
    // one is not. Whether it was held back depends on whether the busy machine let it
    // reach its quota at all: when it got most of it, it was.
    let cadvisor = samples(&node.api_get("/metrics/cadvisor").await?);
    let cfs = |name, pod| of(&cadvisor, name, pod);
    let periods = "container_cpu_cfs_periods_total";
    let throttled = "container_cpu_cfs_throttled_periods_total";
    assert!(
        cfs(periods, "res-limited").is_some_and(|n| n > 0.0),
        "{cadvisor:?}"
    );
    assert_eq!(cfs(periods, "res-free"), Some(0.0));
    assert_eq!(cfs(throttled, "res-free"), Some(0.0));
    let limited = rate("res-limited")?;
    if limited >= 0.15 {
        assert!(
            cfs(throttled, "res-limited").is_some_and(|n| n > 0.0),
            "{cadvisor:?}"
        );
    }
    Ok((limited, rate("res-free")?, rate("res-idle")?))
}
