//! Pod networking through the real CNI reference plugins (bridge, host-local, loopback,
//! portmap): each pod its own namespace and an address from the node's pod CIDR, which
//! the controller manager assigned; `wasi:http` components served at that address;
//! addresses given back on deletion and kept across an agent restart. Requests go only
//! to pod addresses on the test node's own bridge, a few at a time, each bounded.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use e2e::{
    Cluster, KrustletNode, PodNet, delete_and_wait, phase, pod_condition, wait_node, wait_pod,
};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::PostParams;

/// A networked node `name`, ready, with its pod CIDR assigned.
pub(crate) async fn networked_node(
    cluster: &Cluster,
    name: &str,
    port: u16,
) -> anyhow::Result<(PodNet, KrustletNode, String)> {
    let net = PodNet::for_node(name)?;
    let flags = net.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let node = cluster.ready_node(name, port, &flags).await?;
    let node_obj = wait_node(&cluster.nodes(), name, 60, "a pod CIDR", |n: &Node| {
        n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_some()
    })
    .await?;
    let cidr = node_obj.spec.and_then(|s| s.pod_cidr).unwrap_or_default();
    Ok((net, node, cidr))
}

/// Whether `ip` is in `cidr` (IPv4).
fn within(ip: IpAddr, cidr: &str) -> bool {
    let (base, bits) = cidr.split_once('/').expect("a CIDR");
    let (IpAddr::V4(ip), Ok(IpAddr::V4(base)), Ok(bits)) =
        (ip, base.parse::<IpAddr>(), bits.parse::<u32>())
    else {
        return false;
    };
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    u32::from(ip) & mask == u32::from(base) & mask
}

/// One HTTP/1.1 request over a fresh connection (closed after it), bounded in time;
/// the status code and the body.
pub(crate) fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.take(1 << 20).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP response: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Retries `http_get` (a server that has only just started) for up to `secs`.
pub(crate) async fn http_get_ready(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    secs: u64,
) -> anyhow::Result<(u16, String)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let path = path.to_owned();
        let got = tokio::task::spawn_blocking(move || {
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            http_get(addr, &path, &h)
        })
        .await?;
        match got {
            Ok(r) => return Ok(r),
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

pub(crate) fn http_pod(name: &str, node: &str, image: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "labels": { "app": name } },
        "spec": {
            "nodeSelector": { "kubernetes.io/arch": "wasm32-wasi", "kubernetes.io/hostname": node },
            "tolerations": [{ "key": "kubernetes.io/arch", "operator": "Equal", "value": "wasm32-wasi" }],
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "web",
                "image": image,
                "ports": [{ "containerPort": 8080, "name": "http" }],
                "env": [
                    { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                    { "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } }
                ]
            }]
        }
    }))
    .expect("valid pod manifest")
}

#[tokio::test]
async fn a_wasi_http_pod_serves_at_its_own_address_and_gives_it_back_when_deleted()
-> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    let (net, mut node, cidr) = networked_node(&cluster, "net-serve", 10401).await?;
    let image = cluster.push("http-hello.component", "v1").await?;
    let pods = cluster.pods();
    let _ = delete_and_wait(&pods, "web-a", 60).await;
    pods.create(
        &PostParams::default(),
        &http_pod("web-a", "net-serve", &image),
    )
    .await?;
    let pod = wait_pod(&pods, "web-a", 120, "Running and Ready", |p| {
        phase(p) == "Running" && pod_condition(p, "Ready").as_deref() == Some("True")
    })
    .await?;
    let status = pod.status.clone().unwrap_or_default();
    let ip: IpAddr = status.pod_ip.clone().unwrap_or_default().parse()?;
    assert!(
        within(ip, &cidr),
        "pod IP {ip} is not in the node's pod CIDR {cidr}"
    );
    assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    assert!(net.netns(&uid).exists(), "the pod's namespace is pinned");
    assert!(
        net.leased().contains(&ip.to_string()),
        "host-local holds {ip}: {:?}",
        net.leased()
    );

    // Served at the pod's address on its containerPort: method, path, headers and the
    // pod's name (from the downward API) come back.
    let addr = SocketAddr::new(ip, 8080);
    let (code, body) =
        http_get_ready(addr, "/hello?x=1", &[("X-Krustlet-Test", "yes")], 60).await?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("GET"), "{body}");
    assert!(body.contains("/hello?x=1"), "{body}");
    assert!(
        body.to_ascii_lowercase().contains("x-krustlet-test: yes"),
        "{body}"
    );
    assert!(body.contains("web-a"), "{body}");
    // Each request an access log line in the container's log (written within a few
    // milliseconds of the answer).
    let logs = e2e::until(30, "the access log line", || async {
        let logs = cluster.kubectl(&["logs", "web-a"]).await?;
        Ok(logs
            .contains("\"GET /hello?x=1 HTTP/1.1\" 200")
            .then_some(logs))
    })
    .await?;
    assert!(logs.contains("\"GET /hello?x=1 HTTP/1.1\" 200"), "{logs}");

    // There is no process to exec into: kubectl says so.
    let exec = cluster.kubectl(&["exec", "web-a", "--", "ls"]).await;
    let said = format!("{exec:?}");
    assert!(
        exec.is_err() && said.contains("exec is not supported on krustlet nodes"),
        "{said}"
    );

    // An agent restart: the pod keeps its address and serves again from it.
    node.restart(&net.flags().iter().map(String::as_str).collect::<Vec<_>>())?;
    let (code, _) = http_get_ready(addr, "/again", &[], 120).await?;
    assert_eq!(code, 200);
    let after = pods.get("web-a").await?;
    assert_eq!(after.status.and_then(|s| s.pod_ip), Some(ip.to_string()));

    // Deleted: CNI DEL gives the address back, the namespace goes, nothing answers.
    delete_and_wait(&pods, "web-a", 120).await?;
    let gone = tokio::time::timeout(Duration::from_secs(60), async {
        while net.netns(&uid).exists() || net.leased().contains(&ip.to_string()) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "namespace or lease left: {:?}", net.leased());
    let refused = tokio::task::spawn_blocking(move || http_get(addr, "/", &[])).await?;
    assert!(refused.is_err(), "{refused:?}");
    drop(node);
    drop(net);
    Ok(())
}

/// A pod of the readiness component (`/healthz` answers 200 only while `<dir>/ready`
/// exists), with `probes` on that path and `dir` mounted at `/data`.
fn ready_pod(
    name: &str,
    node: &str,
    image: &str,
    dir: &std::path::Path,
    probes: serde_json::Value,
) -> Pod {
    let mut pod = serde_json::to_value(http_pod(name, node, image)).expect("a pod as JSON");
    let container = &mut pod["spec"]["containers"][0];
    container["volumeMounts"] = serde_json::json!([{ "name": "data", "mountPath": "/data" }]);
    if let (Some(c), Some(p)) = (container.as_object_mut(), probes.as_object()) {
        c.extend(p.clone());
    }
    pod["spec"]["terminationGracePeriodSeconds"] = serde_json::json!(2);
    pod["spec"]["volumes"] = serde_json::json!([
        { "name": "data", "hostPath": { "path": dir, "type": "DirectoryOrCreate" } }
    ]);
    serde_json::from_value(pod).expect("valid pod manifest")
}

/// An empty directory `target/e2e/<name>` for a hostPath volume, by its canonical path
/// (the API server refuses a hostPath with `..` in it).
fn fresh_dir(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = e2e::root().join("target/e2e").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir.canonicalize()?)
}

/// The ready flags of the endpoints of Service `svc`'s EndpointSlices.
async fn endpoint_readiness(cluster: &Cluster, svc: &str) -> anyhow::Result<Vec<(String, bool)>> {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let slices: kube::Api<EndpointSlice> = kube::Api::namespaced(cluster.client.clone(), "default");
    let list = slices
        .list(
            &kube::api::ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")),
        )
        .await?;
    Ok(list
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .map(|e| {
            (
                e.addresses.first().cloned().unwrap_or_default(),
                e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false),
            )
        })
        .collect())
}

#[tokio::test]
async fn readiness_probes_move_the_pod_in_and_out_of_its_services_endpoints() -> anyhow::Result<()>
{
    let cluster = Cluster::connect().await?;
    let (net, node, _) = networked_node(&cluster, "net-ready", 10402).await?;
    let image = cluster.push("http-ready.component", "v1").await?;
    let dir = fresh_dir("net-ready.data")?;
    let pods = cluster.pods();
    let services: kube::Api<k8s_openapi::api::core::v1::Service> =
        kube::Api::namespaced(cluster.client.clone(), "default");
    let _ = delete_and_wait(&pods, "ready-a", 60).await;
    let _ = services.delete("ready-a", &Default::default()).await;
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": { "name": "ready-a" },
                "spec": { "selector": { "app": "ready-a" }, "ports": [{ "port": 80, "targetPort": 8080 }] }
            }))?,
        )
        .await?;
    let probes = serde_json::json!({
        "readinessProbe": { "httpGet": { "path": "/healthz", "port": "http" }, "periodSeconds": 1, "failureThreshold": 1 }
    });
    pods.create(
        &PostParams::default(),
        &ready_pod("ready-a", "net-ready", &image, &dir, probes),
    )
    .await?;
    // Running, serving, and not ready: the probe fails (503) until the file exists.
    let pod = wait_pod(&pods, "ready-a", 120, "Running", |p| phase(p) == "Running").await?;
    let ip = pod.status.and_then(|s| s.pod_ip).unwrap_or_default();
    let (code, _) = http_get_ready(SocketAddr::new(ip.parse()?, 8080), "/app", &[], 60).await?;
    assert_eq!(code, 200);
    let unready = wait_pod(
        &pods,
        "ready-a",
        60,
        "Ready False with a probe event",
        |p| pod_condition(p, "Ready").as_deref() == Some("False"),
    )
    .await?;
    assert_eq!(
        pod_condition(&unready, "ContainersReady").as_deref(),
        Some("False")
    );
    // Ready is False from the start (before any probe), so the failed probe's event
    // may come after it: waited for.
    let probe_failed = |e: &k8s_openapi::api::core::v1::Event| {
        e.reason.as_deref() == Some("Unhealthy")
            && e.message.as_deref()
                == Some("Readiness probe failed: HTTP probe failed with statuscode: 503")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let events = cluster.events("ready-a").await?;
        if events.iter().any(probe_failed) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no Unhealthy event in 60 s: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let wait_endpoint = |want: bool| {
        let (cluster, ip) = (&cluster, ip.clone());
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let eps = endpoint_readiness(cluster, "ready-a").await?;
                if eps.iter().any(|(a, r)| *a == ip && *r == want) {
                    return anyhow::Ok(());
                }
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "endpoint {ip} never ready={want}: {eps:?}"
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };
    wait_endpoint(false).await?;
    // The file appears: ready, and the endpoint with it.
    std::fs::write(dir.join("ready"), "")?;
    wait_pod(&pods, "ready-a", 60, "Ready", |p| {
        pod_condition(p, "Ready").as_deref() == Some("True")
    })
    .await?;
    wait_endpoint(true).await?;
    // And goes: out again.
    std::fs::remove_file(dir.join("ready"))?;
    wait_pod(&pods, "ready-a", 60, "not Ready", |p| {
        pod_condition(p, "Ready").as_deref() == Some("False")
    })
    .await?;
    wait_endpoint(false).await?;
    delete_and_wait(&pods, "ready-a", 60).await?;
    services.delete("ready-a", &Default::default()).await?;
    drop(node);
    drop(net);
    Ok(())
}

#[tokio::test]
async fn a_failing_liveness_probe_restarts_the_container_with_the_kubelets_events()
-> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    let (net, node, _) = networked_node(&cluster, "net-live", 10403).await?;
    let image = cluster.push("http-ready.component", "v1").await?;
    let dir = fresh_dir("net-live.data")?;
    let pods = cluster.pods();
    let _ = delete_and_wait(&pods, "live-a", 60).await;
    let probes = serde_json::json!({
        "livenessProbe": { "httpGet": { "path": "/healthz", "port": 8080 }, "periodSeconds": 1, "failureThreshold": 2 }
    });
    pods.create(
        &PostParams::default(),
        &ready_pod("live-a", "net-live", &image, &dir, probes),
    )
    .await?;
    let restarted = wait_pod(&pods, "live-a", 180, "a restart", |p| {
        e2e::container_status(p, "web").is_some_and(|s| s.restart_count >= 1)
    })
    .await?;
    let last = e2e::container_status(&restarted, "web")
        .and_then(|s| s.last_state)
        .and_then(|s| s.terminated);
    // The server had no request in flight: it stopped cleanly within the grace period.
    let last = last.expect("the first run's terminated state");
    assert_eq!(
        (last.exit_code, last.reason.as_deref()),
        (0, Some("Completed"))
    );
    let events = cluster.events("live-a").await?;
    let has = |reason: &str, message: &str| {
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some(reason) && e.message.as_deref() == Some(message))
    };
    assert!(
        has(
            "Unhealthy",
            "Liveness probe failed: HTTP probe failed with statuscode: 503"
        ),
        "{events:#?}"
    );
    assert!(
        has(
            "Killing",
            "Container web failed liveness probe, will be restarted"
        ),
        "{events:#?}"
    );
    delete_and_wait(&pods, "live-a", 60).await?;
    drop(node);
    drop(net);
    Ok(())
}

/// The value of line `key: value` in a hello component's answer.
pub(crate) fn line<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    body.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
}

pub(crate) fn forward_pod(
    name: &str,
    node: &str,
    image: &str,
    target: &str,
    allowed: Option<&str>,
) -> Pod {
    let mut pod = http_pod(name, node, image);
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers[0].env.get_or_insert_with(Vec::new).push(
            serde_json::from_value(serde_json::json!({ "name": "TARGET_URL", "value": target }))
                .expect("env var"),
        );
    }
    if let Some(a) = allowed {
        pod.metadata.annotations = Some(
            [(
                "wasm.krustlet.dev/allowed-outbound-hosts".to_owned(),
                a.to_owned(),
            )]
            .into(),
        );
    }
    pod
}

#[tokio::test]
async fn a_cluster_ip_service_balances_over_wasm_pods_which_reach_it_by_address_and_variables()
-> anyhow::Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Service;
    let cluster = Cluster::connect().await?;
    let (net, node, _) = networked_node(&cluster, "net-svc", 10404).await?;
    let hello = cluster.push("http-hello.component", "v1").await?;
    let forward = cluster.push("http-forward.component", "v1").await?;
    let pods = cluster.pods();
    let deployments: kube::Api<Deployment> =
        kube::Api::namespaced(cluster.client.clone(), "default");
    let services: kube::Api<Service> = kube::Api::namespaced(cluster.client.clone(), "default");
    for p in ["fwd-env", "fwd-ip", "fwd-denied", "fwd-api"] {
        let _ = delete_and_wait(&pods, p, 60).await;
    }
    let _ = deployments.delete("hello-svc", &Default::default()).await;
    let _ = services.delete("hello-svc", &Default::default()).await;
    let mut template = http_pod("hello-svc", "net-svc", &hello);
    template.metadata.labels = Some([("app".to_owned(), "hello-svc".to_owned())].into());
    if let Some(spec) = template.spec.as_mut() {
        spec.containers[0].readiness_probe = Some(serde_json::from_value(serde_json::json!({
            "httpGet": { "path": "/healthz", "port": 8080 }, "periodSeconds": 1
        }))?);
    }
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "hello-svc" },
        "spec": {
            "replicas": 3,
            "selector": { "matchLabels": { "app": "hello-svc" } },
            "template": { "metadata": template.metadata, "spec": template.spec }
        }
    }))?;
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    let svc = services
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": { "name": "hello-svc" },
                "spec": { "selector": { "app": "hello-svc" }, "ports": [{ "name": "http", "port": 80, "targetPort": 8080 }] }
            }))?,
        )
        .await?;
    let cluster_ip = svc.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
    // Three ready endpoints.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let eps = endpoint_readiness(&cluster, "hello-svc").await?;
        if eps.iter().filter(|(_, r)| *r).count() == 3 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "endpoints never 3 ready: {eps:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The ClusterIP answers from every pod (a fresh connection per request, 10 a second
    // at most, for up to 60 s: kube-proxy takes up new endpoints within its sync period).
    let vip = SocketAddr::new(cluster_ip.parse()?, 80);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..600 {
        let (code, body) = http_get_ready(vip, "/via-service", &[], 30).await?;
        assert_eq!(code, 200, "{body}");
        seen.insert(line(&body, "pod").unwrap_or_default().to_owned());
        if seen.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen.len(), 3, "answers came from {seen:?}");
    assert!(seen.iter().all(|p| p.starts_with("hello-svc-")), "{seen:?}");

    // A pod reaches the Service by its variables and by its address, and an allow-list
    // that names only the Service lets that through and refuses the rest.
    let by_env = forward_pod(
        "fwd-env",
        "net-svc",
        &forward,
        "http://$(HELLO_SVC_SERVICE_HOST):$(HELLO_SVC_SERVICE_PORT)/by-env",
        None,
    );
    let by_ip = forward_pod(
        "fwd-ip",
        "net-svc",
        &forward,
        &format!("http://{cluster_ip}:80/by-ip"),
        Some(&format!("http://{cluster_ip}:80")),
    );
    let some_pod = pods
        .list(&kube::api::ListParams::default().labels("app=hello-svc"))
        .await?
        .items
        .into_iter()
        .find_map(|p| p.status.and_then(|s| s.pod_ip))
        .unwrap_or_default();
    let denied = forward_pod(
        "fwd-denied",
        "net-svc",
        &forward,
        &format!("http://{some_pod}:8080/direct"),
        Some(&format!("http://{cluster_ip}:80")),
    );
    // The API server through the `kubernetes` Service, found by its variables. Plain
    // HTTP to its TLS port: the answer can only come from the API server itself.
    let to_api = forward_pod(
        "fwd-api",
        "net-svc",
        &forward,
        "http://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)/healthz",
        None,
    );
    for p in [&by_env, &by_ip, &denied, &to_api] {
        pods.create(&PostParams::default(), p).await?;
    }
    let ip_of = |name: &'static str| {
        let pods = pods.clone();
        async move {
            let p = wait_pod(&pods, name, 120, "Running", |p| phase(p) == "Running").await?;
            anyhow::Ok(SocketAddr::new(
                p.status
                    .and_then(|s| s.pod_ip)
                    .unwrap_or_default()
                    .parse()?,
                8080,
            ))
        }
    };
    let (code, body) = http_get_ready(ip_of("fwd-env").await?, "/", &[], 60).await?;
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("forwarded: 200\n"), "{body}");
    assert_eq!(line(&body, "path"), Some("/by-env"), "{body}");
    let env = cluster
        .kubectl(&[
            "get",
            "pod",
            "fwd-env",
            "-o",
            "jsonpath={.spec.containers[0].env}",
        ])
        .await?;
    assert!(
        env.contains("$(HELLO_SVC_SERVICE_HOST)"),
        "the manifest names the variables: {env}"
    );
    let (code, body) = http_get_ready(ip_of("fwd-ip").await?, "/", &[], 60).await?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(line(&body, "path"), Some("/by-ip"), "{body}");
    let (code, body) = http_get_ready(ip_of("fwd-denied").await?, "/", &[], 60).await?;
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("HTTP-request-denied"), "{body}");
    let logs = cluster.kubectl(&["logs", "fwd-denied"]).await?;
    assert!(
        logs.contains(&format!(
            "refused by the pod's allowed outbound hosts: http://{some_pod}:8080"
        )),
        "{logs}"
    );
    // And a Warning event on the pod (recorded after the answer: waited for).
    let wanted = format!("connection to http://{some_pod}:8080 refused");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let events = cluster.events("fwd-denied").await?;
        let found = events.iter().any(|e| {
            e.reason.as_deref() == Some("OutboundConnectionRefused")
                && e.type_.as_deref() == Some("Warning")
                && e.message.as_deref().is_some_and(|m| m.contains(&wanted))
        });
        if found {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no OutboundConnectionRefused event: {:?}",
            events
                .iter()
                .map(|e| (e.reason.clone(), e.message.clone()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let (code, body) = http_get_ready(ip_of("fwd-api").await?, "/", &[], 60).await?;
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("forwarded: 400\n"), "{body}");
    assert!(
        body.contains("Client sent an HTTP request to an HTTPS server"),
        "{body}"
    );

    for p in ["fwd-env", "fwd-ip", "fwd-denied", "fwd-api"] {
        delete_and_wait(&pods, p, 60).await?;
    }
    deployments.delete("hello-svc", &Default::default()).await?;
    services.delete("hello-svc", &Default::default()).await?;
    let gone = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let left = pods
                .list(&kube::api::ListParams::default().labels("app=hello-svc"))
                .await?
                .items
                .len();
            if left == 0 {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the Deployment's pods were not removed");
    drop(node);
    drop(net);
    Ok(())
}

/// A pod of the `wasi:sockets` echo component, listening on 7000.
pub(crate) fn echo_pod(name: &str, node: &str, image: &str) -> Pod {
    let mut pod = http_pod(name, node, image);
    if let Some(c) = pod.spec.as_mut().map(|s| &mut s.containers[0]) {
        c.ports = Some(vec![
            serde_json::from_value(serde_json::json!({ "containerPort": 7000 })).expect("a port"),
        ]);
        c.env = Some(vec![
            serde_json::from_value(serde_json::json!({ "name": "ECHO_PORT", "value": "7000" }))
                .expect("an env var"),
        ]);
    }
    pod
}

#[tokio::test]
async fn a_wasi_sockets_echo_server_answers_at_its_pod_address() -> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    let (net, node, _) = networked_node(&cluster, "net-echo", 10405).await?;
    let image = cluster.push("http-echo.component", "v1").await?;
    let pods = cluster.pods();
    let _ = delete_and_wait(&pods, "echo-a", 60).await;
    pods.create(
        &PostParams::default(),
        &echo_pod("echo-a", "net-echo", &image),
    )
    .await?;
    let pod = wait_pod(&pods, "echo-a", 120, "Running", |p| phase(p) == "Running").await?;
    let ip: IpAddr = pod
        .status
        .and_then(|s| s.pod_ip)
        .unwrap_or_default()
        .parse()?;
    let addr = SocketAddr::new(ip, 7000);
    // The server may still be binding: a few tries, each bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let echoed = loop {
        let attempt = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"hello from the node\n")?;
            s.shutdown(std::net::Shutdown::Write)?;
            let mut back = String::new();
            s.take(4096).read_to_string(&mut back)?;
            Ok(back)
        })
        .await?;
        match attempt {
            Ok(back) => break back,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => return Err(e),
        }
    };
    assert_eq!(echoed, "hello from the node\n");
    // Not on the node's own loopback: the socket lives in the pod's namespace.
    assert!(
        TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], 7000)),
            Duration::from_secs(2)
        )
        .is_err()
    );
    delete_and_wait(&pods, "echo-a", 60).await?;
    drop(node);
    drop(net);
    Ok(())
}
