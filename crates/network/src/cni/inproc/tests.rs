//! Which configuration lists the in-process path takes, and what it reads of them. The
//! attachment itself (netlink, beside the plugins) is compared with the plugins' in the
//! end-to-end tests (`tests/e2e/cni_paths.rs`), which need root and the real plugins.

use std::path::Path;

use super::*;

fn list(bridge: Value, more: &[Value]) -> NetworkList {
    let mut plugins = vec![bridge];
    plugins.extend_from_slice(more);
    let raw = json!({ "cniVersion": "1.0.0", "name": "krustlet", "plugins": plugins });
    NetworkList::parse(&serde_json::to_vec(&raw).expect("test"), Path::new("t")).expect("test")
}

fn standard() -> Value {
    json!({
        "type": "bridge", "bridge": "kr0", "isGateway": true, "isDefaultGateway": false,
        "ipMasq": false, "hairpinMode": true, "capabilities": { "ipRanges": true },
        "ipam": { "type": "host-local", "dataDir": "/tmp/ipam",
                  "routes": [{ "dst": "10.244.0.0/16" }, { "dst": "10.0.0.0/24" }] },
    })
}

fn portmap() -> Value {
    json!({ "type": "portmap", "capabilities": { "portMappings": true }, "snat": true })
}

fn node(cidr: &str) -> RuntimeSettings {
    RuntimeSettings {
        pod_cidrs: vec![cidr.to_owned()],
        port_mappings: Vec::new(),
    }
}

#[test]
fn the_standard_list_is_planned_from_the_node_cidr() {
    let plan = Plan::of(&list(standard(), &[portmap()]), &node("10.244.3.0/24")).expect("test");
    assert_eq!(plan.bridge, "kr0");
    assert!(plan.hairpin);
    assert_eq!(plan.subnet, Subnet::parse("10.244.3.0/24").expect("test"));
    assert_eq!(plan.routes.len(), 2);
    assert_eq!(plan.leases, PathBuf::from("/tmp/ipam"));
    assert_eq!(plan.mtu, None);
}

#[test]
fn configured_ranges_serve_without_the_capability() {
    let mut b = standard();
    b["capabilities"] = json!({ "ipRanges": false });
    b["ipam"]["ranges"] = json!([[{ "subnet": "10.244.240.0/20" }]]);
    let plan = Plan::of(&list(b, &[]), &node("10.244.3.0/24")).expect("test");
    assert_eq!(plan.subnet, Subnet::parse("10.244.240.0/20").expect("test"));
    let mut old = standard();
    old["capabilities"] = json!({});
    old["ipam"]["subnet"] = json!("10.1.0.0/16");
    let plan = Plan::of(&list(old, &[]), &RuntimeSettings::default()).expect("test");
    assert_eq!(plan.subnet, Subnet::parse("10.1.0.0/16").expect("test"));
}

#[test]
fn anything_else_keeps_the_plugins() {
    let cidr = node("10.244.3.0/24");
    let changed = |key: &str, v: Value| {
        let mut b = standard();
        b[key] = v;
        Plan::of(&list(b, &[portmap()]), &cidr)
    };
    assert!(changed("ipMasq", json!(true)).is_none());
    assert!(changed("isDefaultGateway", json!(true)).is_none());
    assert!(changed("isGateway", json!(false)).is_none());
    assert!(changed("vlan", json!(7)).is_none());
    assert!(changed("type", json!("macvlan")).is_none());
    let mut dhcp = standard();
    dhcp["ipam"]["type"] = json!("dhcp");
    assert!(Plan::of(&list(dhcp, &[]), &cidr).is_none());
    let mut gw = standard();
    gw["ipam"]["routes"] = json!([{ "dst": "0.0.0.0/0", "gw": "10.244.3.9" }]);
    assert!(Plan::of(&list(gw, &[]), &cidr).is_none());
    // A plugin after portmap, or another chained plugin.
    let tuning = json!({ "type": "tuning" });
    assert!(Plan::of(&list(standard(), &[tuning]), &cidr).is_none());
    // Dual-stack and IPv6 node CIDRs.
    assert!(Plan::of(&list(standard(), &[]), &node("fd00::/64")).is_none());
    let dual = RuntimeSettings {
        pod_cidrs: vec!["10.244.3.0/24".into(), "fd00::/64".into()],
        port_mappings: Vec::new(),
    };
    assert!(Plan::of(&list(standard(), &[]), &dual).is_none());
    // A pod with host ports: portmap must run.
    let ports = RuntimeSettings {
        pod_cidrs: vec!["10.244.3.0/24".into()],
        port_mappings: vec![crate::cni::PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: None,
        }],
    };
    assert!(Plan::of(&list(standard(), &[portmap()]), &ports).is_none());
    // No pod CIDR and no configured range: nothing to lease from.
    assert!(Plan::of(&list(standard(), &[]), &RuntimeSettings::default()).is_none());
}
