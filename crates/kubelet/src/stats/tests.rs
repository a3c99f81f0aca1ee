//! The index, the rates and both renderings.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::resource::{render_cadvisor, render_resource};
use super::*;

/// A container whose CPU nanoseconds and memory bytes the test sets.
fn running(
    ns: &str,
    pod: &str,
    uid: &str,
    container: &str,
    cpu: Arc<AtomicU64>,
    mem: u64,
) -> Running {
    Running {
        namespace: ns.to_owned(),
        pod: pod.to_owned(),
        uid: uid.to_owned(),
        container: container.to_owned(),
        image: "registry/app:1".to_owned(),
        started: jiff::Timestamp::from_second(1_700_000_000).expect("time"),
        pod_dir: std::path::PathBuf::from("/nonexistent"),
        usage: Arc::new(move || ContainerUsage {
            cpu: Duration::from_nanos(cpu.load(Ordering::Relaxed)),
            memory_working_set: mem,
            cpu_periods: 7,
            cpu_throttled_periods: 3,
            cpu_throttled: Duration::from_millis(250),
        }),
    }
}

#[test]
fn registrations_last_as_long_as_the_run() {
    let index = StatsIndex::default();
    let a = index.register("c1", running("ns", "p", "u1", "a", Arc::default(), 10));
    let b = index.register("c2", running("ns", "p", "u1", "b", Arc::default(), 10));
    assert_eq!(index.samples().len(), 2);
    drop(a);
    let left = index.samples();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].running.container, "b");
    drop(b);
    assert!(index.samples().is_empty());
}

#[test]
fn zeros_become_the_smallest_values_metrics_server_keeps() {
    let index = StatsIndex::default();
    let _r = index.register("c", running("ns", "p", "u", "idle", Arc::default(), 0));
    let s = &index.samples()[0];
    assert_eq!(s.usage.cpu, Duration::from_nanos(1));
    assert_eq!(s.usage.memory_working_set, 1);
    let page = render_resource(&index.node(), &index.samples());
    assert!(
        page.contains("container_cpu_usage_seconds_total{container=\"idle\",namespace=\"ns\",pod=\"p\"} 0.000000001 "),
        "{page}"
    );
}

#[test]
fn a_rate_needs_a_window_of_a_second() {
    let mut rate = Rate::default();
    let t0 = Instant::now();
    assert_eq!(rate.read(t0, Duration::from_millis(100)), None);
    // Too soon: no rate yet, and the window still starts at t0.
    assert_eq!(
        rate.read(t0 + Duration::from_millis(500), Duration::from_millis(150)),
        None
    );
    // 250 ms of CPU over 2 s: an eighth of a core.
    assert_eq!(
        rate.read(t0 + Duration::from_secs(2), Duration::from_millis(350)),
        Some(125_000_000)
    );
    // Kept until the next window closes.
    assert_eq!(
        rate.read(t0 + Duration::from_millis(2100), Duration::from_millis(900)),
        Some(125_000_000)
    );
}

#[test]
fn the_resource_page_sums_pods_and_escapes_labels() {
    let index = StatsIndex::default();
    let cpu = Arc::new(AtomicU64::new(1_500_000_000));
    let _a = index.register("a", running("ns", "web", "u1", "app", cpu.clone(), 1000));
    let _b = index.register(
        "b",
        running(
            "ns",
            "web",
            "u1",
            "side",
            Arc::new(AtomicU64::new(500_000_000)),
            24,
        ),
    );
    let _c = index.register(
        "c",
        running(
            "other",
            "we\"ird",
            "u2",
            "x",
            Arc::new(AtomicU64::new(1)),
            5,
        ),
    );
    let samples = index.samples();
    let page = render_resource(&index.node(), &samples);
    let ms = samples[0].at.as_millisecond();
    for line in [
        format!(
            "container_cpu_usage_seconds_total{{container=\"app\",namespace=\"ns\",pod=\"web\"}} 1.500000000 {ms}"
        ),
        format!(
            "container_memory_working_set_bytes{{container=\"side\",namespace=\"ns\",pod=\"web\"}} 24 {ms}"
        ),
        format!(
            "container_start_time_seconds{{container=\"app\",namespace=\"ns\",pod=\"web\"}} 1700000000.000000000 {ms}"
        ),
        format!("pod_cpu_usage_seconds_total{{namespace=\"ns\",pod=\"web\"}} 2.000000000 {ms}"),
        format!("pod_memory_working_set_bytes{{namespace=\"ns\",pod=\"web\"}} 1024 {ms}"),
        format!("pod_memory_working_set_bytes{{namespace=\"other\",pod=\"we\\\"ird\"}} 5 {ms}"),
        "resource_scrape_error 0".to_owned(),
    ] {
        assert!(
            page.lines().any(|l| l == line),
            "no line {line:?} in\n{page}"
        );
    }
    assert!(page.contains("\nnode_cpu_usage_seconds_total "), "{page}");
    assert!(page.contains("\nnode_memory_working_set_bytes "), "{page}");
    // One HELP and one TYPE per family.
    for family in [
        "container_cpu_usage_seconds_total",
        "pod_memory_working_set_bytes",
    ] {
        assert_eq!(
            page.matches(&format!("# TYPE {family} ")).count(),
            1,
            "{page}"
        );
    }
    let cadvisor = render_cadvisor(&samples);
    assert!(
        cadvisor.contains("container_cpu_cfs_throttled_periods_total{container=\"app\",image=\"registry/app:1\",namespace=\"ns\",pod=\"web\"} 3 "),
        "{cadvisor}"
    );
    assert!(cadvisor.contains("container_cpu_cfs_throttled_seconds_total{container=\"app\",image=\"registry/app:1\",namespace=\"ns\",pod=\"web\"} 0.250000000 "), "{cadvisor}");
    assert!(
        cadvisor.contains(",cpu=\"total\"} 1.500000000 "),
        "{cadvisor}"
    );
}

#[test]
fn the_node_is_the_agent_process() {
    let node = StatsIndex::default().node();
    // This test process has run and holds memory.
    assert!(node.cpu > Duration::from_nanos(1));
    assert!(node.memory_working_set > 1 << 20);
}

#[test]
fn the_summary_has_pods_volumes_and_logs_from_the_pod_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pod_dir = dir.path().join("ns_web_u1");
    std::fs::create_dir_all(pod_dir.join("app")).expect("mkdir");
    std::fs::write(pod_dir.join("app/0.log"), vec![b'x'; 300]).expect("log");
    let vol = pod_dir.join(crate::volumes::VOLUMES_DIR).join("scratch");
    std::fs::create_dir_all(&vol).expect("mkdir");
    std::fs::write(vol.join("data"), vec![b'y'; 4000]).expect("data");
    let index = StatsIndex::default();
    let mut r = running(
        "ns",
        "web",
        "u1",
        "app",
        Arc::new(AtomicU64::new(2_000_000_000)),
        4096,
    );
    r.pod_dir = pod_dir;
    let _r = index.register("a", r);
    let samples = index.samples();
    let summary = summary::build(&summary::Inputs {
        node_name: "node-a",
        started: jiff::Timestamp::from_second(1_700_000_000).expect("time"),
        node: index.node(),
        containers: &samples,
        data_dir: dir.path(),
        image_fs: crate::runtime::ImageFsUsage {
            capacity: 1000,
            used: 400,
        },
    });
    let json = serde_json::to_value(&summary).expect("json");
    assert_eq!(json["node"]["nodeName"], "node-a");
    assert_eq!(json["node"]["runtime"]["imageFs"]["availableBytes"], 600);
    assert!(
        json["node"]["fs"]["capacityBytes"]
            .as_u64()
            .is_some_and(|c| c > 0)
    );
    let pod = &json["pods"][0];
    assert_eq!(pod["podRef"]["uid"], "u1");
    assert_eq!(pod["cpu"]["usageCoreNanoSeconds"], 2_000_000_000u64);
    assert_eq!(pod["memory"]["workingSetBytes"], 4096);
    assert_eq!(pod["containers"][0]["logs"]["usedBytes"], 300);
    assert_eq!(pod["volume"][0]["name"], "scratch");
    assert_eq!(pod["volume"][0]["usedBytes"], 4000);
    assert_eq!(pod["ephemeral-storage"]["usedBytes"], 4300);
    // No rate before a second read a second later: left out, not 0.
    assert!(pod["cpu"].get("usageNanoCores").is_none(), "{pod}");
}
