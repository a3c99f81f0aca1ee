//! A fleet, not a node: three krustlet nodes, each on a host of its own (hack/hosts.sh: a
//! network namespace on the local cluster's LAN, its own pod bridge and kube-proxy,
//! routes to the other hosts' podCIDRs). Front ends on one node call a back-end Service
//! whose two pods run on the other two nodes, by its short name, its FQDN and a headless
//! Service's pod records; both back ends answer. An unknown name fails cleanly and
//! `dnsPolicy: None` is honoured there too. Then one back-end host dies (its node is
//! SIGKILLed and the host unplugged from the LAN) under steady traffic: the front end
//! answers again once the endpoints move, and the error window is printed. Traffic goes
//! to pod addresses on our bridges and the LAN only, a request at most every 100 ms,
//! each bounded.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use e2e::fleet::{TOLERATION_SECONDS, group_flags, spread_deployment};
use e2e::{Cluster, ControllerTimings, delete_and_wait, endpoints_become, wait_pod};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};

use crate::network::{forward_pod, http_get, line};
use crate::pod_dns::{look_up_on, own_dns};

const FRONT: &str = "xn-front";
const BACKS: [&str; 2] = ["xn-back-1", "xn-back-2"];
/// The fleet's zone of its own (see `group_flags`).
const GROUP: &str = "cross-node";
const SERVICE: &str = "xn-backend";
const HEADLESS: &str = "xn-backend-pods";
/// The front ends' connect and first-byte timeout (`TIMEOUT_MS` of the forward
/// component): a request to a lost back end fails after it.
const FRONT_TIMEOUT_MS: u64 = 1000;

/// The back ends: `http-hello` pods spread over the back-end nodes as the fleet test
/// spreads its pods (one per hostname, tainted nodes left out, a lost node tolerated for
/// `TOLERATION_SECONDS`), serving on 8080 and ready when `/healthz` answers.
fn backend(image: &str) -> anyhow::Result<Deployment> {
    let mut deployment = serde_json::to_value(spread_deployment(SERVICE, GROUP, image, 2))?;
    let spec = &mut deployment["spec"]["template"]["spec"];
    spec["affinity"] = serde_json::json!({ "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": { "nodeSelectorTerms": [{
            "matchExpressions": [{
                "key": "kubernetes.io/hostname", "operator": "In", "values": BACKS
            }]
        }] }
    } });
    spec["containers"] = serde_json::json!([{
        "name": "web",
        "image": image,
        "ports": [{ "containerPort": 8080, "name": "http" }],
        "env": [{ "name": "POD_NAME",
            "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }],
        "readinessProbe": { "httpGet": { "path": "/healthz", "port": "http" },
            "periodSeconds": 2 }
    }]);
    Ok(serde_json::from_value(deployment)?)
}

/// The Service `name` of the back ends (headless: no ClusterIP, a record per pod),
/// made if an earlier run did not leave it (a Service made again gets another address,
/// which CoreDNS's cache may not know for up to 30 s).
async fn service(services: &Api<Service>, name: &str, headless: bool) -> anyhow::Result<Service> {
    if let Some(svc) = services.get_opt(name).await? {
        return Ok(svc);
    }
    let mut spec = serde_json::json!({
        "selector": { "app": SERVICE },
        "ports": [{ "port": 80, "targetPort": 8080 }]
    });
    if headless {
        spec["clusterIP"] = "None".into();
    }
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name }, "spec": spec
    }))?;
    Ok(services.create(&PostParams::default(), &svc).await?)
}

/// The `app=xn-backend` pods that are Ready: name, node, address.
async fn ready_backends(pods: &Api<Pod>) -> anyhow::Result<Vec<(String, String, String)>> {
    let list = pods
        .list(&ListParams::default().labels(&format!("app={SERVICE}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| e2e::pod_condition(p, "Ready").as_deref() == Some("True"))
        .filter_map(|p| {
            let status = p.status?;
            Some((p.metadata.name?, p.spec?.node_name?, status.pod_ip?))
        })
        .collect())
}

/// Waits up to `secs` for `n` Ready back ends on the nodes `on`.
async fn wait_backends(
    pods: &Api<Pod>,
    n: usize,
    on: &[&str],
    secs: u64,
) -> anyhow::Result<Vec<(String, String, String)>> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let ready = ready_backends(pods).await?;
        let nodes: BTreeSet<&str> = ready.iter().map(|(_, node, _)| node.as_str()).collect();
        if ready.len() == n && on.iter().all(|node| nodes.contains(node)) {
            return Ok(ready);
        }
        if Instant::now() > deadline {
            anyhow::bail!("no {n} ready back ends on {on:?} within {secs} s: {ready:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One request to a front end at `addr`, bounded (connect 10 s, read 30 s): which back
/// end answered through it, or what went wrong.
async fn ask(addr: SocketAddr) -> Result<String, String> {
    let got = tokio::task::spawn_blocking(move || http_get(addr, "/", &[]))
        .await
        .map_err(|e| e.to_string())?;
    match got {
        Ok((200, body)) if body.starts_with("forwarded: 200\n") => {
            line(&body, "pod").map(str::to_owned).ok_or(body)
        }
        Ok((status, body)) => Err(format!("{status}: {}", body.trim())),
        Err(e) => Err(e.to_string()),
    }
}

/// Asks the front end at `addr` until it answers through a back end (up to `secs`, a
/// request every 300 ms); the back end.
async fn first_answer(addr: SocketAddr, secs: u64) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match ask(addr).await {
            Ok(pod) => return Ok(pod),
            Err(e) if Instant::now() > deadline => anyhow::bail!("{addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// Asks the front end at `addr` every 200 ms until each of `pods` has answered, up to
/// `secs`: which ones did. (A count of requests instead is over before kube-proxy on
/// the front node has written a new endpoint, on a loaded machine.)
async fn answering(addr: SocketAddr, pods: &BTreeSet<String>, secs: u64) -> BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut answered = BTreeSet::new();
    while !pods.is_subset(&answered) && Instant::now() < deadline {
        if let Ok(pod) = ask(addr).await {
            answered.insert(pod);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    answered
}

/// The front end `name` on the front node, forwarding each request to `target`.
async fn front_end(
    pods: &Api<Pod>,
    name: &str,
    image: &str,
    target: &str,
) -> anyhow::Result<SocketAddr> {
    let _ = delete_and_wait(pods, name, 60).await;
    let mut pod = forward_pod(name, FRONT, image, target, None);
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers[0]
            .env
            .get_or_insert_with(Vec::new)
            .push(serde_json::from_value(
                serde_json::json!({ "name": "TIMEOUT_MS", "value": FRONT_TIMEOUT_MS.to_string() }),
            )?);
    }
    pods.create(&PostParams::default(), &pod).await?;
    let pod = wait_pod(pods, name, 120, "Running", |p| e2e::phase(p) == "Running").await?;
    let ip = pod.status.and_then(|s| s.pod_ip).unwrap_or_default();
    Ok(SocketAddr::new(ip.parse()?, 8080))
}

#[tokio::test]
async fn front_ends_reach_back_ends_on_other_hosts_by_name_and_ride_out_a_lost_host()
-> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    let timings = ControllerTimings::read()?;
    let flags = group_flags(GROUP);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    // Hosts are dropped after their nodes (declared first).
    let (_front_host, _front, _) = cluster.ready_node_on_host(FRONT, 10571, &flags).await?;
    let (_back1_host, _back1, _) = cluster.ready_node_on_host(BACKS[0], 10572, &flags).await?;
    let (back2_host, mut back2, _) = cluster.ready_node_on_host(BACKS[1], 10573, &flags).await?;

    let hello = cluster.push("http-hello.component", "v1").await?;
    let forward = cluster.push("http-forward.component", "v1").await?;
    let echo = cluster.push("http-echo.component", "v1").await?;
    let pods = cluster.pods();
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), "default");
    let cluster_ip = service(&services, SERVICE, false)
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .unwrap_or_default();
    service(&services, HEADLESS, true).await?;
    let _ = e2e::fleet::remove_deployment(&cluster, SERVICE, 120).await;
    deployments
        .create(&PostParams::default(), &backend(&hello)?)
        .await?;
    let backs = wait_backends(&pods, 2, &BACKS, 180).await?;
    let back_pods: BTreeSet<String> = backs.iter().map(|(name, _, _)| name.clone()).collect();

    // By the short name: answers come from both back ends (each request a connection
    // of its own, which kube-proxy on the front node sends to either).
    let short = front_end(&pods, "xn-short", &forward, &format!("http://{SERVICE}/")).await?;
    first_answer(short, 90).await?;
    let answered = answering(short, &back_pods, 120).await;
    assert_eq!(answered, back_pods, "the back ends answering by short name");

    // By the FQDN, and by the headless Service's records (the pods' own addresses).
    let fqdn = front_end(
        &pods,
        "xn-fqdn",
        &forward,
        &format!("http://{SERVICE}.default.svc.cluster.local/"),
    )
    .await?;
    let pod = first_answer(fqdn, 90).await?;
    assert!(back_pods.contains(&pod), "{pod} is not a back end");
    let headless = front_end(
        &pods,
        "xn-headless",
        &forward,
        &format!("http://{HEADLESS}:8080/"),
    )
    .await?;
    let pod = first_answer(headless, 90).await?;
    assert!(back_pods.contains(&pod), "{pod} is not a back end");

    // The headless name's records are the back ends' addresses, seen from the front
    // node (CoreDNS may take a moment to see new endpoints: a few tries, each a pod).
    let want: BTreeSet<String> = backs
        .iter()
        .map(|(_, _, ip)| format!("address {ip}"))
        .collect();
    let mut records = (String::new(), String::new());
    for _ in 0..15 {
        records = look_up_on(
            &cluster,
            FRONT,
            "xn-records",
            &echo,
            HEADLESS,
            serde_json::json!({}),
        )
        .await?;
        let got: BTreeSet<String> = records
            .1
            .lines()
            .filter(|l| l.starts_with("address "))
            .map(str::to_owned)
            .collect();
        if records.0 == "Succeeded" && got == want {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let got: BTreeSet<String> = records
        .1
        .lines()
        .filter(|l| l.starts_with("address "))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        (records.0.as_str(), &got),
        ("Succeeded", &want),
        "{}",
        records.1
    );

    // A name nobody has: a clean lookup error, not a hang; dnsPolicy None with the pod's
    // own configuration.
    let (phase, log) = look_up_on(
        &cluster,
        FRONT,
        "xn-none",
        &echo,
        "xn-no-such-service",
        serde_json::json!({}),
    )
    .await?;
    assert_eq!(phase, "Failed", "{log}");
    assert!(
        log.contains("lookup xn-no-such-service failed: error"),
        "{log}"
    );
    let (phase, log) = look_up_on(
        &cluster,
        FRONT,
        "xn-own",
        &echo,
        &format!("{SERVICE}.default"),
        own_dns(),
    )
    .await?;
    assert_eq!(phase, "Succeeded", "{log}");
    assert!(log.contains(&format!("address {cluster_ip}")), "{log}");

    // A back-end host dies under steady traffic: a request every 100 ms to the front
    // end (by short name), each failing after FRONT_TIMEOUT_MS at most when it meets the
    // lost back end, until 50 in a row succeed (bounded by the grace period, the
    // tolerations and two minutes).
    let dead = backs
        .iter()
        .find(|(_, node, _)| node == BACKS[1])
        .map(|(name, _, _)| name.clone())
        .expect("a back end on the second node");
    // Steady first: 10 answers in a row (a minute at most).
    let (mut steady, settle) = (0, Instant::now());
    while steady < 10 {
        match ask(short).await {
            Ok(_) => steady += 1,
            Err(e) if settle.elapsed() > Duration::from_secs(60) => {
                anyhow::bail!("the front end is not steady before the loss: {e}")
            }
            Err(_) => steady = 0,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let killed = Instant::now();
    back2.kill()?;
    back2_host.cut()?;
    let bound = timings.grace_period + Duration::from_secs(TOLERATION_SECONDS + 120);
    let (mut sent, mut failed, mut streak) = (0u32, 0u32, 0u32);
    let (mut first_error, mut last_error): (Option<Duration>, Option<Duration>) = (None, None);
    let mut errors = BTreeSet::new();
    while streak < 50 {
        assert!(
            killed.elapsed() < bound,
            "the front end did not recover within {bound:?}: {failed} of {sent} failed ({errors:?})"
        );
        sent += 1;
        match ask(short).await {
            Ok(pod) if pod != dead => streak += 1,
            Ok(pod) => panic!("{pod} answered from the lost host"),
            Err(e) => {
                let at = killed.elapsed();
                first_error.get_or_insert(at);
                last_error = Some(at);
                failed += 1;
                streak = 0;
                errors.insert(e.chars().take(80).collect::<String>());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let window = last_error
        .unwrap_or_default()
        .saturating_sub(first_error.unwrap_or_default());
    println!(
        "node loss under traffic: {failed} of {sent} requests failed, the first {:.1} s and the \
         last {:.1} s after the kill (error window {:.1} s; node-monitor-grace-period {:?}); \
         errors: {errors:?}",
        first_error.unwrap_or_default().as_secs_f64(),
        last_error.unwrap_or_default().as_secs_f64(),
        window.as_secs_f64(),
        timings.grace_period,
    );
    // The lost back end was in the Service when the host died: some requests met it.
    assert!(failed > 0, "no request met the lost back end ({sent} sent)");

    // The endpoints moved: the Deployment's replacement runs on the surviving back-end
    // node, and the front end reaches both back ends there.
    let moved = wait_backends(&pods, 2, &[BACKS[0]], 180).await?;
    let moved_pods: BTreeSet<String> = moved.iter().map(|(name, _, _)| name.clone()).collect();
    // Ready in the API is not routable yet: the Service's endpoints follow, then the
    // front node's kube-proxy writes them.
    let moved_ips: BTreeSet<String> = moved.iter().map(|(_, _, ip)| ip.clone()).collect();
    endpoints_become(&cluster, "default", SERVICE, &moved_ips, 120).await?;
    let answered = answering(short, &moved_pods, 120).await;
    assert_eq!(
        answered, moved_pods,
        "after the loss, the back ends answering (asked for 120 s)"
    );

    // Clean up: the lost node's Node first (the pod evicted from it stays Terminating
    // until then, and pod GC removes it with the Node), the front ends, the back ends.
    drop(back2);
    drop(back2_host);
    cluster
        .nodes()
        .delete(BACKS[1], &DeleteParams::default())
        .await?;
    for p in ["xn-short", "xn-fqdn", "xn-headless"] {
        delete_and_wait(&pods, p, 60).await?;
    }
    e2e::fleet::remove_deployment(&cluster, SERVICE, 120).await?;
    Ok(())
}
