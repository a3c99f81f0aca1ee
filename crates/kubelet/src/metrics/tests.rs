//! The kubelet's families as a Prometheus parser reads them, the page's structure
//! (one HELP and TYPE per family, cumulative buckets), the runtime decorator and the
//! pod worker's observations.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use prometheus_parse::{Scrape, Value};
use serde_json::json;

use super::*;
use crate::pods::testing::{Harness, Pull, Script, Shared, pod};
use crate::runtime::Runtime;

fn parse(page: &str) -> Scrape {
    Scrape::parse(page.lines().map(|l| Ok(l.to_owned()))).expect("the page parses")
}

/// The page's families by name: (TYPE, HELP lines, TYPE lines), each family's lines
/// together; fails on a sample outside its family.
fn structure(page: &str) -> BTreeMap<String, (String, usize, usize)> {
    let mut families: BTreeMap<String, (String, usize, usize)> = BTreeMap::new();
    let mut current = String::new();
    let mut closed = Vec::new();
    for line in page.lines() {
        let mut words = line.split(' ');
        match (words.next(), words.next(), words.next()) {
            (Some("#"), Some("HELP"), Some(name)) => {
                if current != name {
                    closed.push(std::mem::replace(&mut current, name.to_owned()));
                }
                assert!(!closed.contains(&current), "{name} split: {page}");
                families.entry(name.to_owned()).or_default().1 += 1;
            }
            (Some("#"), Some("TYPE"), Some(name)) => {
                assert_eq!(name, current, "TYPE after its HELP");
                let e = families.entry(name.to_owned()).or_default();
                e.0 = words.next().unwrap_or_default().to_owned();
                e.2 += 1;
            }
            (Some(sample), _, _) => {
                let name = sample.split('{').next().unwrap_or_default();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| *b == current))
                    .unwrap_or(name);
                assert_eq!(base, current, "{line} outside its family");
            }
            _ => {}
        }
    }
    families
}

fn recorded() -> KubeletMetrics {
    let m = KubeletMetrics::default();
    m.pod_started(Duration::from_millis(700));
    m.pod_started(Duration::from_secs(7200));
    m.pod_worker(WorkerOperation::Create, Duration::from_millis(30));
    m.pod_worker(WorkerOperation::Sync, Duration::from_millis(2));
    m.runtime_operation("pull_image", Duration::from_millis(40), true);
    m.runtime_operation("pull_image", Duration::from_millis(60), false);
    m.runtime_operation("version", Duration::from_micros(1), false);
    m
}

fn page(m: &KubeletMetrics) -> String {
    let counters = [crate::runtime::Counter {
        name: "krustlet_image_downloads_total",
        help: "Images downloaded.",
        value: 2.0,
    }];
    let mut page = crate::server::render_metrics(&counters, &crate::images::ImageIndex::default());
    text::write(&mut page, &m.families("node-a", 3, 4));
    page
}

#[test]
fn the_page_parses_with_every_family_once_and_its_type() {
    let page = page(&recorded());
    let families = structure(&page);
    for (name, kind) in [
        ("krustlet_image_downloads_total", "counter"),
        ("krustlet_images", "gauge"),
        ("kubelet_node_name", "gauge"),
        ("kubelet_running_pods", "gauge"),
        ("kubelet_running_containers", "gauge"),
        ("kubelet_pod_start_duration_seconds", "histogram"),
        ("kubelet_pod_worker_duration_seconds", "histogram"),
        ("kubelet_runtime_operations_total", "counter"),
        ("kubelet_runtime_operations_errors_total", "counter"),
        ("kubelet_runtime_operations_duration_seconds", "histogram"),
    ] {
        assert_eq!(families.get(name), Some(&(kind.to_owned(), 1, 1)), "{name}");
    }
    let scrape = parse(&page);
    let one = |name: &str, label: Option<(&str, &str)>| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("{name} {label:?} in {page}"))
            .value
            .clone()
    };
    assert_eq!(
        one("kubelet_node_name", Some(("node", "node-a"))),
        Value::Gauge(1.0)
    );
    assert_eq!(one("kubelet_running_pods", None), Value::Gauge(3.0));
    assert_eq!(
        one(
            "kubelet_running_containers",
            Some(("container_state", "running"))
        ),
        Value::Gauge(4.0)
    );
    let pulls = Some(("operation_type", "pull_image"));
    assert_eq!(
        one("kubelet_runtime_operations_total", pulls),
        Value::Counter(2.0)
    );
    assert_eq!(
        one("kubelet_runtime_operations_errors_total", pulls),
        Value::Counter(1.0)
    );
    assert!(
        !page.contains("kubelet_runtime_operations_errors_total{operation_type=\"version\"}"),
        "no errors, no sample"
    );
    assert!(scrape.docs["kubelet_pod_start_duration_seconds"].contains("seeing a pod"));
}

/// Each histogram's buckets are the kubelet's, cumulative, end in `+Inf` = `_count`.
#[test]
fn histograms_are_cumulative_with_the_kubelets_buckets() {
    let page = page(&recorded());
    let mut buckets: HashMap<String, Vec<(String, f64)>> = HashMap::new();
    let mut counts: HashMap<String, f64> = HashMap::new();
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').expect("name value");
        let value: f64 = value.parse().expect("a number");
        if let Some((name, labels)) = series.split_once("_bucket{") {
            let (rest, le) = labels.rsplit_once("le=\"").expect("le last");
            let key = format!("{name}{{{rest}");
            buckets
                .entry(key)
                .or_default()
                .push((le.trim_end_matches("\"}").to_owned(), value));
        } else if let Some((name, labels)) = series.split_once("_count") {
            let labels = labels.trim_start_matches('{').trim_end_matches('}');
            let key = if labels.is_empty() {
                format!("{name}{{")
            } else {
                format!("{name}{{{labels},")
            };
            counts.insert(key, value);
        }
    }
    for (series, b) in &buckets {
        let values: Vec<f64> = b.iter().map(|(_, v)| *v).collect();
        assert!(
            values.windows(2).all(|w| w[0] <= w[1]),
            "{series} cumulative"
        );
        assert_eq!(
            b.last().map(|(le, _)| le.as_str()),
            Some("+Inf"),
            "{series}"
        );
        assert_eq!(
            Some(values[values.len() - 1]),
            counts.get(series).copied(),
            "{series}"
        );
    }
    let les =
        |name: &str| -> Vec<String> { buckets[name].iter().map(|(le, _)| le.clone()).collect() };
    let start = les("kubelet_pod_start_duration_seconds{");
    assert_eq!(start.len(), POD_START_BUCKETS.len() + 1);
    assert_eq!((start[0].as_str(), start[24].as_str()), ("0.5", "3600"));
    let ops = les("kubelet_runtime_operations_duration_seconds{operation_type=\"pull_image\",");
    assert_eq!(ops.len(), 15);
    assert_eq!(ops[0], "0.005");
    // 0.005 * 2.5^13
    assert!(ops[13].starts_with("745.05"), "{ops:?}");
    // 0.7 s in the 1 s bucket; 7200 s only in +Inf.
    let start_counts = &buckets["kubelet_pod_start_duration_seconds{"];
    assert_eq!(start_counts[0].1, 0.0);
    assert_eq!(start_counts[1].1, 1.0);
    assert_eq!(start_counts[24].1, 1.0);
    assert_eq!(start_counts[25].1, 2.0);
}

#[test]
fn label_values_are_escaped() {
    let mut out = String::new();
    text::write(
        &mut out,
        &[Family::gauge("g", "h").with(Sample::new(1.0).label("l", "a\\b\"c\nd"))],
    );
    assert!(out.contains("g{l=\"a\\\\b\\\"c\\nd\"} 1\n"), "{out}");
}

#[tokio::test]
async fn the_decorator_counts_times_and_fails_each_call() {
    let fake = Arc::new(crate::pods::testing::FakeRuntime::default());
    fake.pulls("r/bad:1", &[Pull::Fails]);
    let metrics = KubeletMetrics::default();
    let rt = Instrumented::new(Arc::new(Shared(fake)), metrics.clone());
    assert!(rt.pull_image("r/bad:1", None).await.is_err());
    assert!(rt.pull_image("r/good:1", None).await.is_ok());
    let _ = rt.version();
    let _ = rt.counters();
    let page = {
        let mut p = String::new();
        text::write(&mut p, &metrics.families("n", 0, 0));
        p
    };
    assert!(page.contains("kubelet_runtime_operations_total{operation_type=\"pull_image\"} 2\n"));
    assert!(
        page.contains("kubelet_runtime_operations_errors_total{operation_type=\"pull_image\"} 1\n")
    );
    assert!(page.contains("kubelet_runtime_operations_total{operation_type=\"version\"} 1\n"));
    assert!(
        !page.contains("operation_type=\"counters\""),
        "reading counters is not an operation"
    );
}

#[tokio::test(start_paused = true)]
async fn a_pod_that_runs_is_observed_once_with_its_worker_rounds() {
    let h = Harness::new();
    h.runtime.script("c", &[Script::Hang]);
    let _w = h.start(
        pod(json!({ "containers": [{ "name": "c", "image": "r/img:1" }] })),
        None,
    );
    let ran = h.api.until(Duration::from_secs(60), "Running", |w| {
        w.statuses.iter().any(|(_, s)| s["phase"] == "Running")
    });
    ran.await;
    tokio::time::sleep(Duration::from_secs(200)).await;
    let mut page = String::new();
    text::write(&mut page, &h.ctx.metrics.families("node-a", 1, 1));
    assert!(
        page.contains("kubelet_pod_start_duration_seconds_count 1\n"),
        "{page}"
    );
    assert!(
        page.contains("kubelet_pod_worker_duration_seconds_count{operation_type=\"create\"} 1\n")
    );
    // --sync-frequency is a minute in the harness: three syncs in 200 s.
    assert!(
        page.contains("kubelet_pod_worker_duration_seconds_count{operation_type=\"sync\"} 3\n"),
        "{page}"
    );
}
