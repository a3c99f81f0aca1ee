//! The Prometheus text pages of the resource metrics: `/metrics/resource`, with the
//! names, labels and sample timestamps the kubelet serves and metrics-server reads, and
//! `/metrics/cadvisor`, with cAdvisor's names for CPU usage and throttling.

use std::fmt::Write as _;

use super::{NodeSample, Sample};
use crate::metrics::text::escape_label as escape;

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Seconds with nanosecond precision (metrics-server reads `value * 1e9` as an integer).
fn seconds(d: std::time::Duration) -> String {
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// `/metrics/resource`: the node, each pod (the sum of its running containers) and each
/// container, every sample stamped with when it was read (milliseconds).
#[must_use]
pub fn render_resource(node: &NodeSample, containers: &[Sample]) -> String {
    let mut out = String::new();
    let labels = |s: &Sample| {
        format!(
            "container=\"{}\",namespace=\"{}\",pod=\"{}\"",
            escape(&s.running.container),
            escape(&s.running.namespace),
            escape(&s.running.pod)
        )
    };
    header(
        &mut out,
        "container_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative CPU time the container's wasm has run, in core-seconds",
    );
    for s in containers {
        let _ = writeln!(
            out,
            "container_cpu_usage_seconds_total{{{}}} {} {}",
            labels(s),
            seconds(s.usage.cpu),
            s.at.as_millisecond()
        );
    }
    header(
        &mut out,
        "container_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the container (linear memories, tables, compiled code), in bytes",
    );
    for s in containers {
        let _ = writeln!(
            out,
            "container_memory_working_set_bytes{{{}}} {} {}",
            labels(s),
            s.usage.memory_working_set,
            s.at.as_millisecond()
        );
    }
    header(
        &mut out,
        "container_start_time_seconds",
        "gauge",
        "[STABLE] Start time of the container since the unix epoch, in seconds",
    );
    for s in containers {
        let started = s.running.started;
        let _ = writeln!(
            out,
            "container_start_time_seconds{{{}}} {}.{:09} {}",
            labels(s),
            started.as_second(),
            started.subsec_nanosecond().max(0),
            s.at.as_millisecond()
        );
    }
    header(
        &mut out,
        "node_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative CPU time of the node (the krustlet process and every container in it), in core-seconds",
    );
    let _ = writeln!(
        out,
        "node_cpu_usage_seconds_total {} {}",
        seconds(node.cpu),
        node.at.as_millisecond()
    );
    header(
        &mut out,
        "node_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the node (the krustlet process's resident memory), in bytes",
    );
    let _ = writeln!(
        out,
        "node_memory_working_set_bytes {} {}",
        node.memory_working_set,
        node.at.as_millisecond()
    );
    let pods = pods(containers);
    header(
        &mut out,
        "pod_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative CPU time of the pod's running containers, in core-seconds",
    );
    for p in &pods {
        let _ = writeln!(
            out,
            "pod_cpu_usage_seconds_total{{namespace=\"{}\",pod=\"{}\"}} {} {}",
            escape(p.namespace),
            escape(p.pod),
            seconds(p.cpu),
            p.at.as_millisecond()
        );
    }
    header(
        &mut out,
        "pod_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the pod's running containers, in bytes",
    );
    for p in &pods {
        let _ = writeln!(
            out,
            "pod_memory_working_set_bytes{{namespace=\"{}\",pod=\"{}\"}} {} {}",
            escape(p.namespace),
            escape(p.pod),
            p.memory,
            p.at.as_millisecond()
        );
    }
    header(
        &mut out,
        "resource_scrape_error",
        "gauge",
        "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
    );
    out.push_str("resource_scrape_error 0\n");
    out
}

/// One pod's sums.
pub(crate) struct PodSum<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub uid: &'a str,
    pub cpu: std::time::Duration,
    pub memory: u64,
    pub at: jiff::Timestamp,
}

/// The pods of `containers` (ordered by namespace and pod), each with its sums.
pub(crate) fn pods(containers: &[Sample]) -> Vec<PodSum<'_>> {
    let mut pods: Vec<PodSum<'_>> = Vec::new();
    for s in containers {
        match pods.last_mut() {
            Some(p) if p.uid == s.running.uid => {
                p.cpu += s.usage.cpu;
                p.memory = p.memory.saturating_add(s.usage.memory_working_set);
            }
            _ => pods.push(PodSum {
                namespace: &s.running.namespace,
                pod: &s.running.pod,
                uid: &s.running.uid,
                cpu: s.usage.cpu,
                memory: s.usage.memory_working_set,
                at: s.at,
            }),
        }
    }
    pods
}

/// A metric family of `/metrics/cadvisor`: name, type, help, and each sample's value.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Sample) -> String,
);

/// `/metrics/cadvisor`: cAdvisor's names for each container's CPU usage and CPU
/// bandwidth (periods, throttled periods, throttled time), as Prometheus scrapes them
/// from a kubelet.
#[must_use]
pub fn render_cadvisor(containers: &[Sample]) -> String {
    let mut out = String::new();
    let labels = |s: &Sample| {
        format!(
            "container=\"{}\",image=\"{}\",namespace=\"{}\",pod=\"{}\"",
            escape(&s.running.container),
            escape(&s.running.image),
            escape(&s.running.namespace),
            escape(&s.running.pod)
        )
    };
    let families: [Family; 5] = [
        (
            "container_cpu_usage_seconds_total",
            "counter",
            "Cumulative cpu time consumed in seconds.",
            |s| seconds(s.usage.cpu),
        ),
        (
            "container_memory_working_set_bytes",
            "gauge",
            "Current working set in bytes.",
            |s| s.usage.memory_working_set.to_string(),
        ),
        (
            "container_cpu_cfs_periods_total",
            "counter",
            "Number of elapsed enforcement period intervals.",
            |s| s.usage.cpu_periods.to_string(),
        ),
        (
            "container_cpu_cfs_throttled_periods_total",
            "counter",
            "Number of throttled period intervals.",
            |s| s.usage.cpu_throttled_periods.to_string(),
        ),
        (
            "container_cpu_cfs_throttled_seconds_total",
            "counter",
            "Total time duration the container has been throttled.",
            |s| seconds(s.usage.cpu_throttled),
        ),
    ];
    for (name, kind, help, value) in families {
        header(&mut out, name, kind, help);
        for s in containers {
            let extra = if name == "container_cpu_usage_seconds_total" {
                ",cpu=\"total\""
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "{name}{{{}{extra}}} {} {}",
                labels(s),
                value(s),
                s.at.as_millisecond()
            );
        }
    }
    out
}
