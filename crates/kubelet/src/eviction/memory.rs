//! Whom memory pressure evicts, as the kubelet ranks pods for it
//! (`rankMemoryPressure`): pods using more memory than they request first, then lower
//! priority first, then the most memory above the request first; and the kubelet's
//! message, which names each container using more than it requests.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;

use super::thresholds::{Binary, Crossed};
use crate::quantity::Quantity;

/// A pod's memory as the ranking sees it: each container's working set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMemory {
    /// Working set in bytes by container name (memory-backed volumes counted in).
    pub containers: Vec<(String, u64)>,
}

impl PodMemory {
    fn total(&self) -> u64 {
        self.containers
            .iter()
            .fold(0u64, |sum, (_, b)| sum.saturating_add(*b))
    }
}

/// The memory a container requests, in bytes (0 when unset or invalid).
fn request_of(container: &k8s_openapi::api::core::v1::Container) -> u64 {
    container
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("memory"))
        .and_then(|q| Quantity::from_api(q).and_then(Quantity::bytes).ok())
        .unwrap_or_default()
}

/// The pod's memory request, as the kubelet sums it: its containers' requests, or its
/// largest init container's when that is more.
fn pod_request(pod: &Pod) -> u64 {
    let Some(spec) = pod.spec.as_ref() else {
        return 0;
    };
    let app = spec
        .containers
        .iter()
        .fold(0u64, |sum, c| sum.saturating_add(request_of(c)));
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(request_of)
        .max()
        .unwrap_or_default();
    app.max(init)
}

fn priority(pod: &Pod) -> i32 {
    pod.spec
        .as_ref()
        .and_then(|s| s.priority)
        .unwrap_or_default()
}

/// The pods in the order memory pressure evicts them, first the first to go. Pods
/// without a measurement (no container running) use nothing.
#[must_use]
pub fn rank(mut pods: Vec<Pod>, usage: &HashMap<String, PodMemory>) -> Vec<Pod> {
    let used = |p: &Pod| {
        p.metadata
            .uid
            .as_ref()
            .and_then(|uid| usage.get(uid))
            .map_or(0, PodMemory::total)
    };
    pods.sort_by_cached_key(|p| {
        let (used, request) = (used(p), pod_request(p));
        let above = i128::from(used) - i128::from(request);
        // Exceeding first (false sorts before true), then lower priority, then more
        // above the request.
        (used <= request, priority(p), std::cmp::Reverse(above))
    });
    pods
}

/// The kubelet's eviction message for memory: the threshold crossed, then one sentence
/// per container that uses more than it requests.
#[must_use]
pub fn message(crossed: &Crossed, pod: &Pod, memory: &PodMemory) -> String {
    let mut message = crossed.message();
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    for (name, used) in &memory.containers {
        let request = containers
            .iter()
            .find(|c| &c.name == name)
            .map(request_of)
            .unwrap_or_default();
        if *used > request {
            message.push_str(&format!(
                "Container {name} was using {}, request is {}, has larger consumption of memory. ",
                Binary(*used),
                Binary(request)
            ));
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eviction::thresholds::{Amount, Observation, Signal, Threshold};

    fn pod(name: &str, priority: i32, request: Option<&str>) -> Pod {
        let resources = request.map_or(
            serde_json::json!({}),
            |r| serde_json::json!({ "requests": { "memory": r } }),
        );
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "uid": name },
            "spec": { "priority": priority, "containers": [{ "name": "main", "resources": resources }] }
        }))
        .expect("pod")
    }

    fn using(pairs: &[(&str, u64)]) -> HashMap<String, PodMemory> {
        pairs
            .iter()
            .map(|(uid, bytes)| {
                (
                    (*uid).to_owned(),
                    PodMemory {
                        containers: vec![("main".to_owned(), *bytes)],
                    },
                )
            })
            .collect()
    }

    fn names(pods: &[Pod]) -> Vec<&str> {
        pods.iter()
            .filter_map(|p| p.metadata.name.as_deref())
            .collect()
    }

    #[test]
    fn pods_above_their_requests_go_first_then_low_priority_then_the_most_above() {
        const MI: u64 = 1 << 20;
        let pods = vec![
            pod("within", 0, Some("100Mi")),
            pod("small-over", 0, None),
            pod("big-over", 0, Some("10Mi")),
            pod("important-over", 1000, None),
            pod("idle", 0, None),
        ];
        let usage = using(&[
            ("within", 90 * MI),
            ("small-over", 5 * MI),
            ("big-over", 200 * MI),
            ("important-over", 500 * MI),
        ]);
        let ranked = rank(pods, &usage);
        // Of the two within their requests, the idle one (0 above) comes before the one
        // 10Mi below its request, as the kubelet compares usage minus request.
        assert_eq!(
            names(&ranked),
            ["big-over", "small-over", "important-over", "idle", "within"]
        );
    }

    #[test]
    fn the_message_names_each_container_above_its_request() {
        let crossed = Crossed {
            threshold: Threshold {
                signal: Signal::MemoryAvailable,
                amount: Amount::Absolute(100 << 20),
            },
            observed: Observation {
                available: 50 << 20,
                capacity: 8 << 30,
            },
        };
        let p = pod("p", 0, Some("10Mi"));
        let used = PodMemory {
            containers: vec![("main".to_owned(), 300 << 20)],
        };
        assert_eq!(
            message(&crossed, &p, &used),
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: \
             50Mi. Container main was using 300Mi, request is 10Mi, has larger consumption \
             of memory. "
        );
        let within = PodMemory {
            containers: vec![("main".to_owned(), 1 << 20)],
        };
        assert_eq!(
            message(&crossed, &p, &within),
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi. "
        );
    }
}
