//! WASI 0.3 `wasi:http` services as Kubernetes serves them, on a networked node. A
//! Deployment behind a ClusterIP Service: two replicas, each a pod of two components
//! (`p3-py-service`, which names its pod, and `p3-slow`), pushed as the wasm package
//! tools push them, become Ready by their HTTP readiness probes and answer through the
//! Service, each of them; a rolling update lets the requests the old pods hold finish
//! (200) while the old pods terminate, and the Service then answers from the new pods
//! only. The Deployment works in a namespace of its own, removed at the end while its
//! node still runs. And a container probed for readiness is not ready before its first
//! probe. The gRPC service is in `wasi_p3_grpc`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use e2e::{
    Cluster, delete_and_wait, deployment, endpoints_become, fresh_namespace, ready_pods,
    remove_namespace, rolled_out, service, wait_absent,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::network::{http_get_ready, line, networked_node};

const NODE: &str = "p3-serve";

/// How long each request held across the rolling update sleeps: longer than the
/// rollout takes to reach both old pods (a few seconds when the machine is quiet).
const SLEEP_MS: u64 = 20_000;

/// Requests held across the rolling update (kube-proxy picks one of the two old pods
/// for each at random).
const HELD: usize = 8;

/// Asks the Service at `vip` for `/` (a fresh connection each time, 10 a second at
/// most, up to 600 times: kube-proxy takes up new endpoints within its sync period)
/// until each pod of `want` answered; every answer must be the Python service's, from
/// a pod of `want`.
async fn answered_by_each(vip: SocketAddr, want: &BTreeSet<String>) -> Result<()> {
    let mut seen = BTreeSet::new();
    for _ in 0..600 {
        let (code, body) = http_get_ready(vip, "/", &[], 30).await?;
        ensure!(code == 200, "{vip} answered {code}: {body}");
        // The body may come chunked: its lines are looked for.
        ensure!(body.contains("hello from python p3\n"), "{body:?}");
        let pod = line(&body, "pod").unwrap_or_default().to_owned();
        ensure!(want.contains(&pod), "{pod:?} answered, not one of {want:?}");
        seen.insert(pod);
        if &seen == want {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("only {seen:?} of {want:?} answered through {vip}")
}

/// One GET of `path` at `addr` over a connection of its own, which must be answered
/// within `secs`: the status code and the body.
async fn get(addr: SocketAddr, path: &str, secs: u64) -> Result<(u16, String)> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut raw = Vec::new();
        s.take(1 << 20).read_to_end(&mut raw).await?;
        anyhow::Ok(String::from_utf8_lossy(&raw).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(secs), exchange)
        .await
        .with_context(|| format!("GET {path} at {addr}: no answer within {secs} s"))?
        .with_context(|| format!("GET {path} at {addr}"))?;
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("GET {path} at {addr}: not an HTTP answer: {text:?}"))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let chunked = head
        .to_ascii_lowercase()
        .contains("\r\ntransfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
            .with_context(|| format!("GET {path} at {addr}: a bad chunked body {body:?}"))?
    } else {
        body.to_owned()
    };
    Ok((code, body))
}

/// The content of a chunked body (ignoring chunk extensions and trailers), if whole.
fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}

#[test]
fn chunked_bodies_are_read_whole() {
    assert_eq!(
        dechunk("6\r\nslept\n\r\n0\r\n\r\n").as_deref(),
        Some("slept\n")
    );
    assert_eq!(
        dechunk("2\r\nab\r\n1;x=y\r\nc\r\n0\r\n\r\n").as_deref(),
        Some("abc")
    );
    assert_eq!(dechunk("6\r\nslept\n\r\n"), None, "no last chunk");
    assert_eq!(dechunk("9\r\nslept\n\r\n0\r\n\r\n"), None, "cut short");
}

#[tokio::test]
async fn a_wasi_0_3_deployment_serves_through_its_service_from_each_replica_across_a_rolling_update()
-> Result<()> {
    let cluster = Cluster::connect().await?;
    let (net, node, _) = networked_node(&cluster, NODE, 10587).await?;
    // As the wasm package tools push them.
    let py = cluster.push_wkg("p3-py-service.component", "v1").await?;
    let slow = cluster.push_wkg("p3-slow.component", "v1").await?;
    let ns = fresh_namespace(&cluster, "e2e-p3-web").await?;
    let result = rolling_update(&cluster, &ns, &py, &slow).await;
    let removed = remove_namespace(&cluster, &ns).await;
    drop(node);
    drop(net);
    result?;
    removed
}

async fn rolling_update(cluster: &Cluster, ns: &str, py: &str, slow: &str) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), ns);
    let vip = service(
        cluster,
        ns,
        "web",
        serde_json::json!([
            { "name": "http", "port": 80, "targetPort": "http" },
            { "name": "slow", "port": 81, "targetPort": "slow" }
        ]),
    )
    .await?;
    let probe = |port: &str| serde_json::json!({ "httpGet": { "path": "/", "port": port }, "periodSeconds": 1 });
    let web = deployment(
        "web",
        NODE,
        2,
        serde_json::json!({ "wasm.krustlet.dev/request-timeout": "120s", "e2e/revision": "1" }),
        serde_json::json!({
            // Room for the held requests to finish after a pod is deleted.
            "terminationGracePeriodSeconds": 90,
            "containers": [
                {
                    "name": "py",
                    "image": py,
                    "ports": [{ "containerPort": 8080, "name": "http" }],
                    "env": [{ "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }],
                    "readinessProbe": probe("http")
                },
                {
                    "name": "slow",
                    "image": slow,
                    "ports": [{ "containerPort": 8081, "name": "slow" }],
                    "readinessProbe": probe("slow")
                }
            ]
        }),
    )?;
    let started = Instant::now();
    deployments.create(&PostParams::default(), &web).await?;
    // The first start pulls and compiles CPython (20 MB): bounded generously.
    rolled_out(&deployments, "web", 2, 300).await?;
    let old = ready_pods(&pods, "web", 2, 60).await?;
    println!("2 replicas ready in {:?}", started.elapsed());
    let old_names: BTreeSet<String> = old.keys().cloned().collect();
    endpoints_become(cluster, ns, "web", &old.values().cloned().collect(), 120).await?;
    answered_by_each(SocketAddr::new(vip, 80), &old_names).await?;

    // Requests held by the old pods, then a new template: both old pods terminate while
    // the requests are still sleeping, and every one of them is answered.
    let held: Vec<_> = (0..HELD)
        .map(|_| {
            let path = format!("/sleep/{SLEEP_MS}");
            tokio::spawn(
                async move { get(SocketAddr::new(vip, 81), &path, SLEEP_MS / 1000 + 90).await },
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    ensure!(
        held.iter().all(|h| !h.is_finished()),
        "a held request ended before the update"
    );
    let rollout = Instant::now();
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "spec": { "template": { "metadata": { "annotations": { "e2e/revision": "2" } } } }
            })),
        )
        .await?;
    for name in &old_names {
        let terminating =
            kube::runtime::wait::await_condition(pods.clone(), name, |p: Option<&Pod>| {
                p.is_none_or(|p| p.metadata.deletion_timestamp.is_some())
            });
        tokio::time::timeout(Duration::from_secs(SLEEP_MS / 1000), terminating)
            .await
            .with_context(|| {
                format!("{name} not deleted by the rollout within the requests' sleep")
            })??;
    }
    println!(
        "both old pods terminating {:?} after the update",
        rollout.elapsed()
    );
    // Otherwise the requests did not outlast the old pods' start of termination, and
    // this run shows nothing about draining.
    ensure!(
        held.iter().all(|h| !h.is_finished()),
        "a held request ended before both old pods were terminating"
    );
    for h in held {
        let (code, body) = h.await??;
        // Errors, not panics, in here: the namespace is removed whatever happens.
        ensure!(
            (code, body.as_str()) == (200, "slept\n"),
            "a request held across the update got {code}: {body:?}"
        );
    }
    println!(
        "{HELD} held requests answered {:?} after the update",
        rollout.elapsed()
    );

    // The new pods serve, each through the Service, and the old ones are gone.
    rolled_out(&deployments, "web", 2, 300).await?;
    let new = ready_pods(&pods, "web", 2, 60).await?;
    let new_names: BTreeSet<String> = new.keys().cloned().collect();
    ensure!(
        new_names.is_disjoint(&old_names),
        "new pods {new_names:?}, old {old_names:?}"
    );
    for name in &old_names {
        wait_absent(&pods, name, 120).await?;
    }
    println!("rolled out in {:?}", rollout.elapsed());
    endpoints_become(cluster, ns, "web", &new.values().cloned().collect(), 120).await?;
    answered_by_each(SocketAddr::new(vip, 80), &new_names).await
}

/// Container `name`'s (running, ready) in `pod`.
fn running_ready(pod: &Pod, name: &str) -> (bool, bool) {
    e2e::container_status(pod, name).map_or((false, false), |c| {
        let running = c.state.and_then(|s| s.running).is_some();
        (running, c.ready)
    })
}

#[tokio::test]
async fn a_wasi_0_3_service_is_not_ready_before_its_first_readiness_probe() -> Result<()> {
    use futures::StreamExt as _;
    use kube::runtime::watcher;
    // The probe's initial delay; ready earlier than half of it is ready unprobed (the
    // watch may see the start late by a little under load, never by seconds).
    const DELAY: u64 = 4;
    const EARLY: Duration = Duration::from_secs(DELAY / 2);
    let cluster = Cluster::connect().await?;
    let (net, node, _) = networked_node(&cluster, "p3-ready", 10589).await?;
    let image = cluster.push("p3-hello.component", "v1").await?;
    let pods = cluster.pods();
    let name = "p3-ready-a";
    let mut pod = crate::network::http_pod(name, "p3-ready", &image);
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers[0].readiness_probe = Some(serde_json::from_value(serde_json::json!({
            "httpGet": { "path": "/", "port": 8080 },
            "initialDelaySeconds": DELAY,
            "periodSeconds": 1
        }))?);
    }
    e2e::ensure_absent(&pods, name).await?;
    // Every update of the pod, from before it exists until its container is ready.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let watch = tokio::spawn(watcher(pods.clone(), config).for_each(move |e| {
        let _ = tx.send((Instant::now(), e));
        std::future::ready(())
    }));
    // (time since first seen running, (running, ready)) of each update.
    let (mut seen, mut created, mut started) = (Vec::new(), false, None);
    let watched = tokio::time::timeout(Duration::from_secs(180), async {
        while let Some((at, e)) = rx.recv().await {
            match e? {
                // Created once the watch has listed (a relist lists it again).
                watcher::Event::InitDone if !created => {
                    pods.create(&PostParams::default(), &pod).await?;
                    created = true;
                }
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                    let now = running_ready(&p, "web");
                    if now.0 {
                        started.get_or_insert(at);
                    }
                    let since = started.map(|s| at.duration_since(s));
                    seen.push((since, now));
                    // Ready once probed, DELAY seconds after the start.
                    if now == (true, true) && since >= Some(EARLY) {
                        return anyhow::Ok(());
                    }
                }
                _ => {}
            }
        }
        bail!("the watch ended")
    })
    .await;
    watch.abort();
    delete_and_wait(&pods, name, 60).await?;
    drop(node);
    drop(net);
    watched.with_context(|| format!("the container never became ready: {seen:?}"))??;
    // The first probe is sent DELAY seconds after the start: until then the container,
    // probed for readiness, is not ready (the kubelet's readiness starts as a failure).
    let early = seen
        .iter()
        .any(|(since, (_, ready))| *ready && *since < Some(EARLY));
    assert!(
        !early,
        "ready before its first probe; (time since first seen running, (running, ready)) of each update: {seen:?}"
    );
    Ok(())
}
