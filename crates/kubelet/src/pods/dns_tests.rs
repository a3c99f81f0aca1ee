use super::*;

fn pod(spec: serde_json::Value) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": "web-1", "namespace": "shop", "uid": "u-1" },
        "spec": spec,
    }))
    .expect("pod")
}

fn cluster() -> Settings {
    Settings {
        cluster_dns: vec!["10.0.0.10".parse().expect("ip")],
        cluster_domain: "cluster.local".into(),
        resolv_conf: Some("/etc/resolv.conf".into()),
    }
}

fn host() -> DnsConfig {
    parse_resolv_conf("nameserver 192.0.2.53\nsearch corp.example\noptions edns0\n").expect("conf")
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_cluster_first_pod_asks_the_cluster_with_its_namespace_searched_first() {
    let (dns, warnings) = pod_dns(&cluster(), host(), &pod(serde_json::json!({})), &[]);
    assert_eq!(dns.servers, strings(&["10.0.0.10"]));
    assert_eq!(
        dns.searches,
        strings(&[
            "shop.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
            "corp.example"
        ])
    );
    assert_eq!(dns.options, strings(&["ndots:5"]));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        dns.render(),
        "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\n\
         nameserver 10.0.0.10\noptions ndots:5\n"
    );
}

#[test]
fn host_network_pods_take_the_nodes_resolver_unless_they_ask_for_the_cluster() {
    let settings = cluster();
    let on_host = pod(serde_json::json!({ "hostNetwork": true }));
    assert_eq!(pod_dns(&settings, host(), &on_host, &[]).0, host());
    let with_host_net = pod(serde_json::json!({
        "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"
    }));
    assert_eq!(
        pod_dns(&settings, host(), &with_host_net, &[]).0.servers,
        strings(&["10.0.0.10"])
    );
    let default = pod(serde_json::json!({ "dnsPolicy": "Default" }));
    assert_eq!(pod_dns(&settings, host(), &default, &[]).0, host());
}

#[test]
fn policy_none_takes_only_the_pods_own_dns_config() {
    let p = pod(serde_json::json!({
        "dnsPolicy": "None",
        "dnsConfig": {
            "nameservers": ["192.0.2.1"],
            "searches": ["a.example"],
            "options": [{ "name": "ndots", "value": "2" }, { "name": "edns0" }]
        }
    }));
    let (dns, warnings) = pod_dns(&cluster(), host(), &p, &[]);
    assert_eq!(
        dns,
        DnsConfig {
            servers: strings(&["192.0.2.1"]),
            searches: strings(&["a.example"]),
            options: strings(&["ndots:2", "edns0"]),
        }
    );
    assert!(warnings.is_empty());
}

#[test]
fn a_pods_dns_config_is_appended_without_repeats_and_its_options_override() {
    let p = pod(serde_json::json!({
        "dnsConfig": {
            "nameservers": ["10.0.0.10", "192.0.2.1"],
            "searches": ["svc.cluster.local", "extra.example"],
            "options": [{ "name": "ndots", "value": "1" }, { "name": "timeout", "value": "2" }]
        }
    }));
    let (dns, _) = pod_dns(&cluster(), host(), &p, &[]);
    assert_eq!(dns.servers, strings(&["10.0.0.10", "192.0.2.1"]));
    assert_eq!(
        dns.searches.last().map(String::as_str),
        Some("extra.example")
    );
    assert_eq!(
        dns.searches
            .iter()
            .filter(|s| *s == "svc.cluster.local")
            .count(),
        1
    );
    assert_eq!(dns.options, strings(&["ndots:1", "timeout:2"]));
}

#[test]
fn without_cluster_dns_a_cluster_first_pod_falls_back_with_the_kubelets_events() {
    let settings = Settings {
        cluster_dns: vec![],
        ..cluster()
    };
    let (dns, warnings) = pod_dns(&settings, host(), &pod(serde_json::json!({})), &[]);
    assert_eq!(dns, host());
    let [w] = warnings.as_slice() else {
        panic!("{warnings:?}")
    };
    assert_eq!(w.reason, "MissingClusterDNS");
    assert_eq!(
        w.message,
        "pod: \"web-1_shop(u-1)\". kubelet does not have ClusterDNS IP configured and cannot \
         create Pod using \"ClusterFirst\" policy. Falling back to \"Default\" policy."
    );
    assert!(
        w.also_on_node
            .as_deref()
            .is_some_and(|m| m.starts_with("kubelet does not"))
    );
}

#[test]
fn without_a_resolver_file_host_dns_asks_the_node_itself() {
    let settings = Settings {
        resolv_conf: None,
        ..cluster()
    };
    let p = pod(serde_json::json!({ "dnsPolicy": "Default" }));
    let ips: Vec<IpAddr> = vec![
        "192.0.2.7".parse().expect("ip"),
        "2001:db8::7".parse().expect("ip"),
    ];
    let (dns, _) = pod_dns(&settings, DnsConfig::default(), &p, &ips);
    assert_eq!(dns.servers, strings(&["127.0.0.1", "::1"]));
    assert_eq!(dns.searches, strings(&["."]));
    let (dns, _) = pod_dns(&settings, DnsConfig::default(), &p, &[]);
    assert_eq!(dns.servers, strings(&["127.0.0.1"]));
}

#[test]
fn nameservers_past_three_are_cut_with_a_warning() {
    let p = pod(serde_json::json!({
        "dnsConfig": { "nameservers": ["192.0.2.1", "192.0.2.2", "192.0.2.3"] }
    }));
    let (dns, warnings) = pod_dns(&cluster(), host(), &p, &[]);
    assert_eq!(
        dns.servers,
        strings(&["10.0.0.10", "192.0.2.1", "192.0.2.2"])
    );
    assert_eq!(
        warnings
            .iter()
            .map(|w| (w.reason, w.message.as_str()))
            .collect::<Vec<_>>(),
        [(
            "DNSConfigForming",
            "Nameserver limits were exceeded, some nameservers have been omitted, the \
             applied nameserver line is: 10.0.0.10 192.0.2.1 192.0.2.2"
        )]
    );
}

#[test]
fn search_paths_past_the_limits_are_cut_with_a_warning() {
    // 40 paths: 32 kept.
    let many: Vec<String> = (0..40).map(|i| format!("d{i}.example")).collect();
    let p = pod(serde_json::json!({ "dnsPolicy": "None", "dnsConfig": { "searches": many } }));
    let (dns, warnings) = pod_dns(&cluster(), host(), &p, &[]);
    assert_eq!(dns.searches.len(), MAX_SEARCH_PATHS);
    assert_eq!(dns.searches[31], "d31.example");
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].message.ends_with(&dns.searches.join(" ")));
    // A path over 253 characters is dropped, the others kept.
    let long = format!("{}.example", "a".repeat(250));
    let p = pod(serde_json::json!({
        "dnsPolicy": "None", "dnsConfig": { "searches": ["x.example", long, "y.example"] }
    }));
    let (dns, warnings) = pod_dns(&cluster(), host(), &p, &[]);
    assert_eq!(dns.searches, strings(&["x.example", "y.example"]));
    assert_eq!(warnings.len(), 1);
    // 20 paths of 200 characters: the line is cut from the end to 2048 characters.
    let wide: Vec<String> = (0..20)
        .map(|i| format!("{i:02}{}", "b".repeat(198)))
        .collect();
    let p = pod(serde_json::json!({ "dnsPolicy": "None", "dnsConfig": { "searches": wide } }));
    let (dns, warnings) = pod_dns(&cluster(), host(), &p, &[]);
    assert!(dns.searches.join(" ").len() <= MAX_SEARCH_LINE_CHARS);
    assert_eq!(dns.searches.len(), 10, "10 x 200 + 9 spaces fit, 11 do not");
    assert_eq!(warnings.len(), 1);
}

#[test]
fn a_resolver_file_is_read_as_the_kubelet_reads_it() {
    let conf = parse_resolv_conf(
        "# a comment\nnameserver 192.0.2.1\n  nameserver 192.0.2.2  \nsearch old.example\n\
         domain ignored.example\nsearch a.example. . b.example\noptions ndots:2 edns0\n\
         options ndots:3\nsortlist 10.0.0.0\n",
    )
    .expect("conf");
    assert_eq!(conf.servers, strings(&["192.0.2.1", "192.0.2.2"]));
    assert_eq!(conf.searches, strings(&["a.example", "b.example"]));
    assert_eq!(conf.options, strings(&["ndots:3", "edns0"]));
    assert_eq!(
        parse_resolv_conf("nameserver\n"),
        Err("nameserver list is empty".to_string())
    );
    assert_eq!(parse_resolv_conf(""), Ok(DnsConfig::default()));
}

#[test]
fn the_nodes_resolver_file_is_read_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("resolv.conf");
    std::fs::write(&path, "nameserver 192.0.2.1\n").expect("write");
    assert_eq!(
        host_config(Some(&path)).expect("read").servers,
        strings(&["192.0.2.1"])
    );
    assert_eq!(host_config(None).expect("none"), DnsConfig::default());
    let missing = host_config(Some(&dir.path().join("absent"))).expect_err("absent");
    assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    let f = std::fs::File::create(&path).expect("create");
    f.set_len(MAX_RESOLV_CONF + 1).expect("grow");
    let err = host_config(Some(&path)).expect_err("too long");
    assert!(err.to_string().contains("longer than"), "{err}");
}

#[test]
fn a_crowded_node_search_line_is_warned_of_at_start() {
    let settings = cluster();
    let mut host = DnsConfig::default();
    assert_eq!(check_host_limits(&settings, &host), None);
    host.searches = (0..30).map(|i| format!("d{i}.example")).collect();
    assert_eq!(
        check_host_limits(&settings, &host).as_deref(),
        Some(
            "Resolv.conf file '/etc/resolv.conf' contains search line consisting of more than 29 domains!"
        )
    );
    let no_file = Settings {
        resolv_conf: None,
        ..settings
    };
    assert_eq!(check_host_limits(&no_file, &host), None);
}

#[test]
fn hostname_and_domain_follow_the_pods_spec() {
    let plain = pod(serde_json::json!({}));
    assert_eq!(
        hostname_and_domain(&plain, "cluster.local"),
        Ok(("web-1".to_string(), String::new()))
    );
    let named = pod(serde_json::json!({ "hostname": "db-0", "subdomain": "dbs" }));
    assert_eq!(
        hostname_and_domain(&named, "cluster.local"),
        Ok(("db-0".to_string(), "dbs.shop.svc.cluster.local".to_string()))
    );
    let mut long = pod(serde_json::json!({}));
    long.metadata.name = Some(format!("{}-{}", "a".repeat(62), "b".repeat(10)));
    assert_eq!(
        hostname_and_domain(&long, "cluster.local").map(|(h, _)| h),
        Ok("a".repeat(62)),
        "cut to 63 characters, the trailing '-' dropped"
    );
    let bad = pod(serde_json::json!({ "hostname": "Not_A_Label" }));
    assert!(hostname_and_domain(&bad, "cluster.local").is_err());
}

#[test]
fn the_hosts_entries_are_a_containers_managed_hosts_file() {
    // As the kubelet writes the file: tab-separated.
    let render = |entries: &[HostsEntry]| -> String {
        entries
            .iter()
            .map(|(ip, names)| format!("{ip}\t{}\n", names.join("\t")))
            .collect()
    };
    let p = pod(serde_json::json!({
        "hostname": "db-0", "subdomain": "dbs",
        "hostAliases": [
            { "ip": "192.0.2.9", "hostnames": ["legacy", "legacy.example"] },
            { "ip": "2001:db8::9", "hostnames": ["v6"] }
        ]
    }));
    let (hostname, domain) = hostname_and_domain(&p, "cluster.local").expect("names");
    let ips: Vec<IpAddr> = vec!["10.244.1.5".parse().expect("ip")];
    let hosts = managed_hosts(&ips, &hostname, &domain, &host_aliases(&p));
    assert_eq!(
        render(&hosts),
        "127.0.0.1\tlocalhost\n\
         ::1\tlocalhost\tip6-localhost\tip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n\
         10.244.1.5\tdb-0.dbs.shop.svc.cluster.local\tdb-0\n\
         192.0.2.9\tlegacy\tlegacy.example\n\
         2001:db8::9\tv6\n"
    );
    let plain = pod(serde_json::json!({}));
    let hosts = managed_hosts(&ips, "web-1", "", &host_aliases(&plain));
    assert_eq!(
        hosts.last(),
        Some(&("10.244.1.5".to_string(), strings(&["web-1"])))
    );
}

#[test]
fn the_nodes_resolver_file_is_checked_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("resolv.conf");
    let settings = Settings {
        resolv_conf: Some(path.clone()),
        ..cluster()
    };
    let missing = startup_warning(&settings).expect("a warning");
    assert!(missing.contains("No such file"), "{missing}");
    std::fs::write(&path, "nameserver 192.0.2.1\nsearch a.example\n").expect("write");
    assert_eq!(startup_warning(&settings), None);
    std::fs::write(&path, "nameserver\n").expect("write");
    let bad = startup_warning(&settings).expect("a warning");
    assert!(bad.contains("nameserver list is empty"), "{bad}");
    let none = Settings {
        resolv_conf: None,
        ..cluster()
    };
    assert_eq!(startup_warning(&none), None);
}
