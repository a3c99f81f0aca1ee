//! The downward API: values of a pod's own fields (`fieldRef`) and of its containers'
//! resources (`resourceFieldRef`), for environment variables and downwardAPI volumes,
//! with the kubelet's formats.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{ObjectFieldSelector, Pod, ResourceFieldSelector};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;

use super::field_path::{self, FieldPath};
use crate::quantity::Quantity;

/// What the node knows that the pod's fields refer to.
#[derive(Debug, Clone, Copy)]
pub struct NodeFacts {
    /// The node's address: `status.hostIP`.
    pub ip: IpAddr,
    /// The pod's address (`status.podIP`): its sandbox's, or the node's for a
    /// `hostNetwork` pod; `None` (an empty value, as the kubelet gives) for a pod without
    /// a network of its own on a node without a pod network.
    pub pod_ip: Option<IpAddr>,
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

/// The value of `selector` for `pod`; `for_volume` allows only the pod's metadata, as
/// the kubelet's downwardAPI volume does, environment variables also get the pod's spec
/// and status fields.
///
/// # Errors
/// The kubelet's message for a field it does not support there.
pub fn field(
    pod: &Pod,
    selector: &ObjectFieldSelector,
    facts: &NodeFacts,
    for_volume: bool,
) -> Result<String, String> {
    let path = field_path::parse(
        &selector.field_path,
        selector.api_version.as_deref(),
        for_volume,
    )?;
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let entry = |map: Option<&BTreeMap<String, String>>, key: &str| {
        map.and_then(|m| m.get(key)).cloned().unwrap_or_default()
    };
    Ok(match path {
        FieldPath::Name => meta.name.clone().unwrap_or_default(),
        FieldPath::Namespace => meta.namespace.clone().unwrap_or_default(),
        FieldPath::Uid => meta.uid.clone().unwrap_or_default(),
        FieldPath::Labels => format_map(meta.labels.as_ref()),
        FieldPath::Annotations => format_map(meta.annotations.as_ref()),
        FieldPath::Label(key) => entry(meta.labels.as_ref(), &key),
        FieldPath::Annotation(key) => entry(meta.annotations.as_ref(), &key),
        FieldPath::NodeName => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        FieldPath::ServiceAccountName => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        FieldPath::HostIp | FieldPath::HostIps => facts.ip.to_string(),
        FieldPath::PodIp | FieldPath::PodIps => {
            facts.pod_ip.map(|ip| ip.to_string()).unwrap_or_default()
        }
    })
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
    let unsupported = || format!("unsupported container resource : {}", selector.resource);
    let (kind, amount) = selector.resource.split_once('.').ok_or_else(unsupported)?;
    // CPU is counted in thousandths, everything else in whole units, as the kubelet's
    // `ExtractContainerResourceValue` does.
    let (node_amount, units): (i128, fn(Quantity) -> i128) = match amount {
        "cpu" => (i128::from(facts.cpus) * 1000, Quantity::milli_value),
        "memory" => (i128::from(facts.memory), Quantity::value),
        "ephemeral-storage" => (0, Quantity::value),
        _ => return Err(unsupported()),
    };
    let value_of = |map: &BTreeMap<String, ApiQuantity>| -> Result<Option<i128>, String> {
        map.get(amount)
            .map(|q| {
                Quantity::from_api(q)
                    .map(units)
                    .map_err(|e| format!("{kind}.{amount} {:?}: {e}", q.0))
            })
            .transpose()
    };
    let value = match kind {
        "limits" => value_of(&limits)?.unwrap_or(node_amount),
        "requests" => match value_of(&requests)? {
            Some(v) => v,
            None => value_of(&limits)?.unwrap_or(0),
        },
        _ => return Err(unsupported()),
    };
    // An unset or zero divisor is 1, as for the kubelet.
    let divisor = match &selector.divisor {
        Some(d) => {
            let d = Quantity::from_api(d).map_err(|e| format!("divisor {:?}: {e}", d.0))?;
            if d.is_zero() { 1 } else { units(d) }
        }
        None => units(Quantity::from_units(1)),
    };
    let rounded = crate::quantity::div_ceil(value, divisor)
        .ok_or_else(|| format!("divisor of {} must be positive", selector.resource))?;
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
            pod_ip: None,
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
        // No address of its own: empty, never the node's.
        assert_eq!(get("status.podIP", false).as_deref(), Ok(""));
        let networked = NodeFacts {
            pod_ip: Some(IpAddr::from([10, 244, 0, 5])),
            ..f
        };
        assert_eq!(
            field(&p, &sel("status.podIP"), &networked, false).as_deref(),
            Ok("10.244.0.5")
        );
        assert_eq!(
            get("metadata.labels", true).as_deref(),
            Ok("a=\"say \\\"hi\\\"\"\nb=\"2\"")
        );
        // The kubelet resolves the whole map for an environment variable too (the API
        // server's validation is what refuses it there).
        assert!(get("metadata.labels", false).is_ok());
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

    #[test]
    fn resources_are_exact_and_bad_quantities_are_errors() {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "spec": { "containers": [
                { "name": "m", "resources": { "limits": { "memory": "67108864500m", "cpu": "1e-3" } } },
                { "name": "bad", "resources": { "limits": { "memory": "lots" } } }
            ] }
        }))
        .expect("pod");
        let get = |container: &str, name: &str, divisor: Option<&str>| {
            let s = ResourceFieldSelector {
                container_name: None,
                resource: name.to_owned(),
                divisor: divisor.map(|d| ApiQuantity(d.to_owned())),
            };
            resource(&p, container, &s, &facts())
        };
        // Was the node's memory: the old parser did not know a milli memory limit.
        assert_eq!(get("m", "limits.memory", None).as_deref(), Ok("67108865"));
        assert_eq!(
            get("m", "limits.memory", Some("0")).as_deref(),
            Ok("67108865")
        );
        assert_eq!(get("m", "limits.cpu", Some("1m")).as_deref(), Ok("1"));
        assert_eq!(get("m", "limits.cpu", None).as_deref(), Ok("1"));
        let err = get("bad", "limits.memory", None).expect_err("unparseable");
        assert!(err.contains("\"lots\""), "{err}");
        assert!(get("m", "limits.memory", Some("-1")).is_err());
    }
}
