//! The downward API: values of a pod's own fields (`fieldRef`) and of its containers'
//! resources (`resourceFieldRef`), for environment variables and downwardAPI volumes,
//! with the kubelet's formats.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{ObjectFieldSelector, Pod, ResourceFieldSelector};

/// What the node knows that the pod's fields refer to.
#[derive(Debug, Clone, Copy)]
pub struct NodeFacts {
    /// The node's address: `status.hostIP`, and `status.podIP` (pods share it).
    pub ip: IpAddr,
    /// The node's allocatable CPU cores, the value of an unset `limits.cpu`.
    pub cpus: u64,
    /// The node's allocatable memory in bytes, the value of an unset `limits.memory`.
    pub memory: u64,
}

/// `k="v"` lines sorted by key, as the kubelet writes the labels and annotations files.
fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The key inside `metadata.labels['key']`.
fn subscript<'a>(path: &'a str, map: &str) -> Option<&'a str> {
    path.strip_prefix(map)?
        .strip_prefix("['")?
        .strip_suffix("']")
}

/// The value of `selector` for `pod`; `for_volume` allows the whole-map forms
/// (`metadata.labels`), environment variables allow the pod's spec and status fields.
///
/// # Errors
/// The kubelet's message for a field it does not support there.
pub fn field(
    pod: &Pod,
    selector: &ObjectFieldSelector,
    facts: &NodeFacts,
    for_volume: bool,
) -> Result<String, String> {
    let path = selector.field_path.as_str();
    let meta = &pod.metadata;
    let spec = pod.spec.clone().unwrap_or_default();
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" if for_volume => format_map(meta.labels.as_ref()),
        "metadata.annotations" if for_volume => format_map(meta.annotations.as_ref()),
        "spec.nodeName" if !for_volume => spec.node_name.unwrap_or_default(),
        "spec.serviceAccountName" if !for_volume => spec.service_account_name.unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" | "status.podIP" | "status.podIPs" if !for_volume => {
            facts.ip.to_string()
        }
        _ => {
            if let Some(key) = subscript(path, "metadata.labels") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(key))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(key) = subscript(path, "metadata.annotations") {
                meta.annotations
                    .as_ref()
                    .and_then(|a| a.get(key))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(format!("unsupported fieldPath: {path}"));
            }
        }
    };
    Ok(value)
}

/// A quantity (`500m`, `1Gi`, `2`) as a number.
#[must_use]
pub fn quantity(q: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 15] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let q = q.trim();
    let (number, scale) = SUFFIXES
        .iter()
        .find_map(|(s, m)| q.strip_suffix(s).map(|n| (n, *m)))
        .unwrap_or((q, 1.0));
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// The value of `selector` for a container of `pod` (`container` names it when the
/// selector does not): its limit or request divided by `divisor`, rounded up, as the
/// kubelet computes it. An unset limit is the node's allocatable amount; an unset
/// request is the limit when set, else 0.
///
/// # Errors
/// The kubelet's message for an unknown resource or container.
pub fn resource(
    pod: &Pod,
    container: &str,
    selector: &ResourceFieldSelector,
    facts: &NodeFacts,
) -> Result<String, String> {
    let name = selector.container_name.as_deref().unwrap_or(container);
    let spec = pod.spec.clone().unwrap_or_default();
    let found = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .ok_or_else(|| format!("container {name} not found"))?;
    let resources = found.resources.clone().unwrap_or_default();
    let limits = resources.limits.unwrap_or_default();
    let requests = resources.requests.unwrap_or_default();
    let (kind, amount) = selector
        .resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported container resource : {}", selector.resource))?;
    #[allow(clippy::cast_precision_loss)]
    let node_amount = match amount {
        "cpu" => facts.cpus as f64,
        "memory" => facts.memory as f64,
        "ephemeral-storage" => 0.0,
        _ => {
            return Err(format!(
                "unsupported container resource : {}",
                selector.resource
            ));
        }
    };
    let value_of = |map: &BTreeMap<
        String,
        k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    >| { map.get(amount).and_then(|q| quantity(&q.0)) };
    let value = match kind {
        "limits" => value_of(&limits).unwrap_or(node_amount),
        "requests" => value_of(&requests)
            .or_else(|| value_of(&limits))
            .unwrap_or(0.0),
        _ => {
            return Err(format!(
                "unsupported container resource : {}",
                selector.resource
            ));
        }
    };
    let divisor = selector
        .divisor
        .as_ref()
        .and_then(|d| quantity(&d.0))
        .filter(|d| *d > 0.0)
        .unwrap_or(1.0);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rounded = {
        // The kubelet divides exactly; in floating point, first drop the noise below a
        // nano-unit (1500m / 1m must be 1500, not 1500.0000000000002 -> 1501).
        let quotient = ((value / divisor) * 1e9).round() / 1e9;
        quotient.ceil().max(0.0) as u64
    };
    Ok(rounded.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "p", "namespace": "ns", "uid": "u-1",
                "labels": { "b": "2", "a": "say \"hi\"" },
                "annotations": { "note": "x" }
            },
            "spec": {
                "nodeName": "n1", "serviceAccountName": "sa",
                "containers": [{
                    "name": "c",
                    "resources": { "limits": { "cpu": "1500m", "memory": "64Mi" } }
                }, { "name": "d" }]
            }
        }))
        .expect("pod")
    }

    fn facts() -> NodeFacts {
        NodeFacts {
            ip: IpAddr::from([10, 0, 0, 7]),
            cpus: 2,
            memory: 8 << 30,
        }
    }

    fn sel(path: &str) -> ObjectFieldSelector {
        ObjectFieldSelector {
            field_path: path.to_owned(),
            api_version: None,
        }
    }

    #[test]
    fn fields_as_the_kubelet_gives_them() {
        let (p, f) = (pod(), facts());
        let get = |path: &str, vol: bool| field(&p, &sel(path), &f, vol);
        assert_eq!(get("metadata.name", false).as_deref(), Ok("p"));
        assert_eq!(
            get("metadata.labels['a']", false).as_deref(),
            Ok("say \"hi\"")
        );
        assert_eq!(get("metadata.labels['zz']", false).as_deref(), Ok(""));
        assert_eq!(get("spec.serviceAccountName", false).as_deref(), Ok("sa"));
        assert_eq!(get("status.podIP", false).as_deref(), Ok("10.0.0.7"));
        assert_eq!(
            get("metadata.labels", true).as_deref(),
            Ok("a=\"say \\\"hi\\\"\"\nb=\"2\"")
        );
        assert!(get("metadata.labels", false).is_err());
        assert!(get("spec.nodeName", true).is_err());
        assert!(get("status.phase", false).is_err());
    }

    #[test]
    fn resources_divide_and_round_up_with_node_defaults() {
        let (p, f) = (pod(), facts());
        let get = |container: &str, name: &str, divisor: Option<&str>| {
            let s = ResourceFieldSelector {
                container_name: None,
                resource: name.to_owned(),
                divisor: divisor
                    .map(|d| k8s_openapi::apimachinery::pkg::api::resource::Quantity(d.to_owned())),
            };
            resource(&p, container, &s, &f)
        };
        assert_eq!(get("c", "limits.cpu", None).as_deref(), Ok("2"));
        assert_eq!(get("c", "limits.cpu", Some("1m")).as_deref(), Ok("1500"));
        // Just over a unit rounds up, as the kubelet's exact division does.
        assert_eq!(get("c", "limits.memory", Some("63Mi")).as_deref(), Ok("2"));
        assert_eq!(get("c", "limits.memory", Some("1Mi")).as_deref(), Ok("64"));
        assert_eq!(get("c", "requests.memory", None).as_deref(), Ok("67108864"));
        assert_eq!(get("d", "limits.cpu", None).as_deref(), Ok("2"));
        assert_eq!(get("d", "requests.cpu", None).as_deref(), Ok("0"));
        assert!(get("c", "limits.gpu", None).is_err());
    }
}
