//! The kubelet's `KubeletConfiguration` kind read into krustlet's settings.

use std::time::Duration;

use clap::{CommandFactory, FromArgMatches};

use super::fields::{FIXED, UNSUPPORTED};
use super::{FileConfig, upstream};
use crate::{Cli, NodeArgs};

fn parse(args: &[&str], yaml: &str) -> (NodeArgs, Vec<String>) {
    let matches = Cli::command()
        .try_get_matches_from(args)
        .expect("valid flags");
    let mut cli = Cli::from_arg_matches(&matches).expect("valid flags");
    let (file, warnings) = FileConfig::parse(yaml).expect("valid file");
    file.apply(&mut cli.node, &matches);
    (cli.node, warnings)
}

const HEADER: &str = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n";

/// The example of the Kubernetes documentation's "Set Kubelet Parameters Via A
/// Configuration File" task.
const DOCUMENTATION_EXAMPLE: &str = r#"
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: "192.168.0.8"
port: 20250
serializeImagePulls: false
evictionHard:
    memory.available:  "100Mi"
    nodefs.available:  "10%"
    nodefs.inodesFree: "5%"
    imagefs.available: "15%"
    imagefs.inodesFree: "5%"
"#;

#[test]
fn the_documentation_example_parses_with_no_warning() {
    let (args, warnings) = parse(&["krustlet"], DOCUMENTATION_EXAMPLE);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(args.address, Some(std::net::IpAddr::from([192, 168, 0, 8])));
    assert_eq!(args.port, 20250);
    assert_eq!(
        args.eviction_hard,
        "imagefs.available<15%,imagefs.inodesFree<5%,memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%"
    );
}

/// What `kubeadm init` writes to /var/lib/kubelet/config.yaml, zero values and all.
const KUBEADM: &str = r#"
apiVersion: kubelet.config.k8s.io/v1beta1
authentication:
  anonymous:
    enabled: false
  webhook:
    cacheTTL: 0s
    enabled: true
  x509:
    clientCAFile: /etc/kubernetes/pki/ca.crt
authorization:
  mode: Webhook
  webhook:
    cacheAuthorizedTTL: 0s
    cacheUnauthorizedTTL: 0s
cgroupDriver: systemd
clusterDNS:
- 10.96.0.10
clusterDomain: cluster.local
containerRuntimeEndpoint: ""
cpuManagerReconcilePeriod: 0s
evictionPressureTransitionPeriod: 0s
fileCheckFrequency: 0s
healthzBindAddress: 127.0.0.1
healthzPort: 10248
httpCheckFrequency: 0s
imageMaximumGCAge: 0s
imageMinimumGCAge: 0s
kind: KubeletConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
memorySwap: {}
nodeStatusReportFrequency: 0s
nodeStatusUpdateFrequency: 0s
rotateCertificates: true
runtimeRequestTimeout: 0s
shutdownGracePeriod: 0s
shutdownGracePeriodCriticalPods: 0s
staticPodPath: /etc/kubernetes/manifests
streamingConnectionIdleTimeout: 0s
syncFrequency: 0s
volumeStatsAggPeriod: 0s
"#;

#[test]
fn a_kubeadm_file_keeps_the_defaults_and_warns_once_per_field_it_asks_for() {
    let (args, warnings) = parse(&["krustlet"], KUBEADM);
    // Zero durations are the kubelet's defaults, not zero.
    assert_eq!(args.sync_frequency, Duration::from_secs(60));
    assert_eq!(args.file_check_frequency, Duration::from_secs(20));
    assert_eq!(args.image_minimum_gc_age_seconds, 120);
    assert_eq!(args.node_status_report_seconds, 60);
    assert_eq!(
        args.authentication_token_webhook_cache_ttl,
        Duration::from_secs(120)
    );
    assert!(args.rotate_certificates && !args.anonymous_auth);
    assert_eq!(
        args.pod_manifest_path.as_deref(),
        Some(std::path::Path::new("/etc/kubernetes/manifests"))
    );
    assert_eq!(
        args.client_ca_file.as_deref(),
        Some(std::path::Path::new("/etc/kubernetes/pki/ca.crt"))
    );
    assert_eq!(args.shutdown_grace_period, Duration::ZERO);
    assert_eq!(
        args.cluster_dns,
        ["10.96.0.10".parse::<std::net::IpAddr>().expect("ip")]
    );
    assert_eq!(args.cluster_domain, "cluster.local");
    let warned: Vec<&str> = warnings
        .iter()
        .map(|w| w.split_whitespace().nth(2).unwrap_or_default())
        .collect();
    assert_eq!(
        warned,
        ["cgroupDriver", "healthzBindAddress", "healthzPort"],
        "{warnings:#?}"
    );
}

#[test]
fn every_mapped_field_reaches_its_setting_and_flags_win() {
    let yaml = format!(
        "{HEADER}address: 127.0.0.2\nport: 11250\ntlsCertFile: /c.pem\ntlsPrivateKeyFile: /k.pem\n\
         rotateCertificates: true\nserverTLSBootstrap: true\nstaticPodPath: /m\nfileCheckFrequency: 5s\n\
         syncFrequency: 30s\nauthentication:\n  anonymous: {{enabled: true}}\n  webhook: {{enabled: true, cacheTTL: 1m}}\n\
         \x20 x509: {{clientCAFile: /ca.pem}}\nauthorization:\n  mode: AlwaysAllow\n  webhook: {{cacheAuthorizedTTL: 7s, cacheUnauthorizedTTL: 3s}}\n\
         maxPods: 33\nimageGCHighThresholdPercent: 90\nimageGCLowThresholdPercent: 0\nimageMinimumGCAge: 1m30s\n\
         containerLogMaxSize: 1Mi\ncontainerLogMaxFiles: 3\nevictionHard: {{memory.available: 1Gi}}\n\
         evictionPressureTransitionPeriod: 1m\nnodeLeaseDurationSeconds: 60\nnodeStatusReportFrequency: 2m\n\
         nodeStatusUpdateFrequency: 1500ms\nregisterWithTaints:\n- {{key: dedicated, value: edge, effect: NoSchedule}}\n\
         eventRecordQPS: 0\neventBurst: 7\nshutdownGracePeriod: 30s\nshutdownGracePeriodCriticalPods: 10s\n\
         insecureRegistries: [r:5000]\nnodeName: n1\n"
    );
    let (a, warnings) = parse(&["krustlet"], &yaml);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        (a.address, a.port),
        (Some(std::net::IpAddr::from([127, 0, 0, 2])), 11250)
    );
    assert_eq!(a.cert_file.as_deref(), Some(std::path::Path::new("/c.pem")));
    assert_eq!(
        a.private_key_file.as_deref(),
        Some(std::path::Path::new("/k.pem"))
    );
    assert!(a.rotate_certificates && a.rotate_server_certificates && a.anonymous_auth);
    assert_eq!(
        a.pod_manifest_path.as_deref(),
        Some(std::path::Path::new("/m"))
    );
    assert_eq!(a.file_check_frequency, Duration::from_secs(5));
    assert_eq!(a.sync_frequency, Duration::from_secs(30));
    assert_eq!(
        a.authentication_token_webhook_cache_ttl,
        Duration::from_secs(60)
    );
    assert_eq!(
        a.client_ca_file.as_deref(),
        Some(std::path::Path::new("/ca.pem"))
    );
    assert_eq!(
        a.authorization_mode,
        kubelet::auth::AuthorizationMode::AlwaysAllow
    );
    assert_eq!(
        a.authorization_webhook_cache_authorized_ttl,
        Duration::from_secs(7)
    );
    assert_eq!(
        a.authorization_webhook_cache_unauthorized_ttl,
        Duration::from_secs(3)
    );
    assert_eq!(a.max_pods, Some(33));
    assert_eq!(
        (
            a.image_gc_high_threshold_percent,
            a.image_gc_low_threshold_percent
        ),
        (90, 0)
    );
    assert_eq!(a.image_minimum_gc_age_seconds, 90);
    assert_eq!(
        (a.container_log_max_size, a.container_log_max_files),
        (1 << 20, 3)
    );
    assert_eq!(a.eviction_hard, "memory.available<1Gi");
    assert_eq!(
        a.eviction_pressure_transition_period,
        Duration::from_secs(60)
    );
    assert_eq!(a.node_lease_duration_seconds, 60);
    assert_eq!(a.node_status_report_seconds, 120);
    assert_eq!(a.node_lease_renew_seconds, 2, "1.5s rounds up");
    assert_eq!(a.register_with_taints.len(), 1);
    assert_eq!(
        a.register_with_taints[0].to_api().value.as_deref(),
        Some("edge")
    );
    assert_eq!((a.event_qps, a.event_burst), (0, 7));
    assert_eq!(a.shutdown_grace_period, Duration::from_secs(30));
    assert_eq!(
        a.shutdown_grace_period_critical_pods,
        Duration::from_secs(10)
    );
    assert_eq!(a.insecure_registries, ["r:5000"]);
    assert_eq!(a.node_name.as_deref(), Some("n1"));

    let (a, _) = parse(
        &[
            "krustlet",
            "--port",
            "12000",
            "--shutdown-grace-period",
            "5s",
            "--register-with-taints",
            "a=b:NoExecute,c:PreferNoSchedule",
            "--node-lease-duration-seconds",
            "20",
            "--anonymous-auth=false",
        ],
        &yaml,
    );
    assert_eq!(a.port, 12000);
    assert_eq!(a.shutdown_grace_period, Duration::from_secs(5));
    assert_eq!(
        a.shutdown_grace_period_critical_pods,
        Duration::from_secs(10)
    );
    assert_eq!(a.register_with_taints.len(), 2);
    assert_eq!(a.node_lease_duration_seconds, 20);
    assert!(!a.anonymous_auth);
}

#[test]
fn every_unsupported_field_warns_once_naming_itself() {
    for (field, why) in UNSUPPORTED {
        // A value that asks for something, nested when the field is a map.
        let yaml = format!("{HEADER}{field}: lots\n");
        let (_, warnings) = parse(&["krustlet"], &yaml);
        assert_eq!(warnings.len(), 1, "{field}: {warnings:?}");
        assert!(
            warnings[0].contains(&format!(" {field} ")) && warnings[0].contains(why),
            "{}",
            warnings[0]
        );
    }
    for (field, at, why) in FIXED {
        let (path, leaf) = field.rsplit_once('.').unwrap_or(("", field));
        let nest = |value: &str| {
            path.split('.')
                .filter(|p| !p.is_empty())
                .rev()
                .fold(format!("{leaf}: {value}"), |inner, p| {
                    format!("{p}: {{{inner}}}")
                })
        };
        let (_, quiet) = parse(&["krustlet"], &format!("{HEADER}{}\n", nest(at)));
        assert!(quiet.is_empty(), "{field}: {at} is honoured: {quiet:?}");
        let (_, loud) = parse(&["krustlet"], &format!("{HEADER}{}\n", nest("999")));
        assert_eq!(loud.len(), 1, "{field}: {loud:?}");
        assert!(
            loud[0].contains(field) && loud[0].contains(why),
            "{}",
            loud[0]
        );
    }
    // Unknown fields warn too (the kubelet's lenient v1beta1 decoding), nested ones by path.
    let (_, warnings) = parse(
        &["krustlet"],
        &format!("{HEADER}maxPodz: 3\nauthentication:\n  anonymous: {{enabld: true}}\n"),
    );
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains("maxPodz") && warnings[1].contains("authentication.anonymous.enabld")
    );
}

#[test]
fn bad_values_are_errors_naming_the_upstream_field() {
    for (yaml, field) in [
        ("port: http\n", "port"),
        ("port: 70000\n", "port"),
        ("shutdownGracePeriod: 30\n", "shutdownGracePeriod"),
        ("shutdownGracePeriod: 30 seconds\n", "shutdownGracePeriod"),
        ("imageMinimumGCAge: soon\n", "imageMinimumGCAge"),
        (
            "imageGCHighThresholdPercent: 150\n",
            "imageGCHighThresholdPercent",
        ),
        ("containerLogMaxFiles: 1\n", "containerLogMaxFiles"),
        (
            "registerWithTaints: [{key: a, effect: Sometimes}]\n",
            "registerWithTaints",
        ),
        ("authorization: {mode: Node}\n", "authorization.mode"),
        ("authentication: yes\n", "authentication"),
        ("nodeLeaseDurationSeconds: -1\n", "nodeLeaseDurationSeconds"),
    ] {
        let error = FileConfig::parse(&format!("{HEADER}{yaml}")).expect_err(yaml);
        assert!(
            format!("{error:#}").contains(&format!("field {field}:")),
            "{yaml}: {error:#}"
        );
    }
    for (yaml, what) in [
        (
            "apiVersion: kubelet.config.k8s.io/v1\nkind: KubeletConfiguration\n",
            "apiVersion",
        ),
        (
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeProxyConfiguration\n",
            "kind",
        ),
        ("kind: KubeletConfiguration\n", "apiVersion"),
    ] {
        let error = FileConfig::parse(yaml).expect_err(yaml);
        assert!(format!("{error:#}").contains(what), "{error:#}");
    }
}

#[test]
fn krustlets_own_form_is_read_with_a_warning_and_keeps_refusing_unknown_keys() {
    let (args, warnings) = parse(&["krustlet"], "nodeName: n\nshutdownGracePeriod: 20s\n");
    assert_eq!(args.node_name.as_deref(), Some("n"));
    assert_eq!(args.shutdown_grace_period, Duration::from_secs(20));
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].contains(upstream::API_VERSION),
        "{}",
        warnings[0]
    );
    assert!(FileConfig::parse("nodeNmae: typo\n").is_err());
    assert!(FileConfig::parse("containerLogMaxFiles: 1\n").is_err());
}

#[test]
fn every_setting_is_reachable_from_the_upstream_kind() {
    let camel = |snake: &str| {
        let mut out = String::new();
        let mut upper = false;
        for c in snake.chars() {
            if c == '_' {
                upper = true;
            } else if upper {
                out.push(c.to_ascii_uppercase());
                upper = false;
            } else {
                out.push(c);
            }
        }
        out
    };
    let reachable: Vec<&str> = upstream::mapped_targets()
        .chain(upstream::EXTENSIONS.iter().copied())
        .collect();
    for field in FileConfig::FIELDS {
        let key = camel(field);
        assert!(
            reachable.contains(&key.as_str()),
            "{key} cannot be set in a KubeletConfiguration"
        );
    }
}

/// `authentication.webhook.enabled: false` turns bearer-token authentication off, as in
/// the kubelet (no warning: it is honoured); unset it stays on; a flag still wins.
#[test]
fn the_token_webhook_can_be_turned_off_by_the_file() {
    let off = format!("{HEADER}authentication:\n  webhook:\n    enabled: false\n");
    let (args, warnings) = parse(&["krustlet"], &off);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(!args.authentication_token_webhook);
    let (args, _) = parse(&["krustlet"], HEADER);
    assert!(args.authentication_token_webhook);
    let (args, _) = parse(&["krustlet", "--authentication-token-webhook"], &off);
    assert!(args.authentication_token_webhook);
    let (args, _) = parse(
        &["krustlet", "--authentication-token-webhook=false"],
        HEADER,
    );
    assert!(!args.authentication_token_webhook);
}
