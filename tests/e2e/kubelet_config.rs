//! A node run from the kubelet's own configuration file (`KubeletConfiguration`).

use e2e::{Cluster, node_condition, root};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

/// A file as `kubeadm init` writes it for a kubelet (zero values and all), with a few
/// settings a platform engineer adds. The test harness's flags (`--port`,
/// `--client-ca-file`, `--cert-file`, ...) override what the file says of those.
const KUBEADM_STYLE: &str = r#"
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
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
cpuManagerPolicy: static
cpuManagerReconcilePeriod: 0s
evictionPressureTransitionPeriod: 0s
fileCheckFrequency: 0s
healthzBindAddress: 127.0.0.1
healthzPort: 10248
httpCheckFrequency: 0s
imageMinimumGCAge: 0s
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
  verbosity: 0
memorySwap: {}
nodeStatusReportFrequency: 0s
nodeStatusUpdateFrequency: 0s
port: 10250
rotateCertificates: false
runtimeRequestTimeout: 0s
shutdownGracePeriod: 0s
shutdownGracePeriodCriticalPods: 0s
streamingConnectionIdleTimeout: 0s
syncFrequency: 0s
volumeStatsAggPeriod: 0s
maxPods: 17
nodeLeaseDurationSeconds: 25
registerWithTaints:
- key: e2e-ops/dedicated
  value: edge
  effect: NoSchedule
"#;

/// The fields of [`KUBEADM_STYLE`] a wasm node cannot honour and that ask for something.
/// (`clusterDNS` and `clusterDomain` are honoured since issue 23.)
const UNSUPPORTED: [&str; 4] = [
    "cgroupDriver",
    "cpuManagerPolicy",
    "healthzBindAddress",
    "healthzPort",
];

#[tokio::test]
async fn a_node_runs_from_a_kubelet_configuration_file_and_warns_once_of_each_field_it_cannot_honour()
-> anyhow::Result<()> {
    let name = "e2e-ops-kubelet-config";
    let port = 10492;
    let file = root()
        .join("target/e2e")
        .join(format!("{name}.config.yaml"));
    std::fs::create_dir_all(file.parent().expect("a parent"))?;
    std::fs::write(&file, KUBEADM_STYLE)?;
    let cluster = Cluster::connect().await?;
    let node = cluster
        .ready_node(name, port, &["--config", file.to_str().expect("utf-8")])
        .await?;
    let n = cluster.nodes().get(name).await?;
    // From the file: maxPods, the registered taint, the lease duration.
    let status = n.status.clone().unwrap_or_default();
    let pods = status.capacity.unwrap_or_default().get("pods").cloned();
    assert_eq!(pods.map(|q| q.0).as_deref(), Some("17"));
    let taints = n.spec.clone().and_then(|s| s.taints).unwrap_or_default();
    assert!(
        taints.iter().any(|t| t.key == "e2e-ops/dedicated"
            && t.value.as_deref() == Some("edge")
            && t.effect == "NoSchedule"),
        "{taints:?}"
    );
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "kube-node-lease");
    // The first renewal creates the lease.
    let lease = e2e::wait_object(&leases, "lease", name, 60, "created", |_| true).await?;
    assert_eq!(lease.spec.and_then(|s| s.lease_duration_seconds), Some(25));
    // The flag wins over the file's port, and the node serves on it.
    let endpoint = status
        .daemon_endpoints
        .and_then(|d| d.kubelet_endpoint)
        .map(|e| e.port);
    assert_eq!(endpoint, Some(i32::from(port)));
    assert_eq!(node.api_get("/healthz").await?.trim(), "ok");
    // Zero durations are the kubelet's defaults: the node keeps its lease and stays
    // Ready (a zero renewal or sync period would not).
    assert_eq!(node_condition(&n, "Ready").as_deref(), Some("True"));
    // One warning per unsupported field, naming it; none for the zero-valued ones.
    let log = node.log()?;
    for field in UNSUPPORTED {
        let warning = format!("KubeletConfiguration field {field} is ignored");
        assert_eq!(log.matches(&warning).count(), 1, "{field} in:\n{log}");
    }
    assert_eq!(
        log.matches("KubeletConfiguration field").count(),
        UNSUPPORTED.len(),
        "{log}"
    );
    for quiet in [
        "clusterDNS",
        "clusterDomain",
        "cpuManagerReconcilePeriod",
        "memorySwap",
        "logging",
        "containerRuntimeEndpoint",
    ] {
        assert!(
            !log.contains(&format!("field {quiet} ")),
            "{quiet} warned:\n{log}"
        );
    }
    drop(node);
    cluster.forget_node(name).await?;
    Ok(())
}
