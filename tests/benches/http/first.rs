//! Fresh pods' first requests: [`FRESH_PODS`] new pods of the same (cached) image, one at
//! a time, bound with `spec.nodeName`, from just before the create request to the first
//! 200 from the pod's IP; then the same pods on a kwok node of the same control plane
//! (the API round trips alone): create to the status kwok writes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use e2e::Cluster;
use e2e::bench::load::first_ok;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, PostParams};

use super::{KWOK_NODE, address_of, clear, pod, watch_addresses};

/// Fresh pods, one at a time.
const FRESH_PODS: usize = 10;

/// Fresh pods' first requests (ms, sorted) and kwok's create-to-Ready of the same pods.
pub(super) struct FirstRequests {
    pub(super) to_ip: Vec<f64>,
    pub(super) to_ok: Vec<f64>,
    pub(super) kwok_ready: Vec<f64>,
}

/// The first requests of fresh pods of `image`, one at a time; then the same pods on a
/// kwok node.
pub(super) async fn requests(
    cluster: &Cluster,
    pods: &Api<Pod>,
    image: &str,
) -> anyhow::Result<FirstRequests> {
    let fresh = watch_addresses(pods.clone(), "http-fresh");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut to_ip, mut to_ok) = (Vec::new(), Vec::new());
    for i in 0..FRESH_PODS {
        let name = format!("bench-http-fresh-{i}");
        let t0 = Instant::now();
        pods.create(&PostParams::default(), &pod(&name, image, "http-fresh"))
            .await?;
        let (seen_at, ip) = address_of(pods, &fresh, &name, 60).await?;
        let ok_at = first_ok(SocketAddr::new(ip, 8080), 60).await?;
        to_ip.push(seen_at.duration_since(t0).as_secs_f64() * 1000.0);
        to_ok.push(ok_at.duration_since(t0).as_secs_f64() * 1000.0);
        clear(pods, "http-fresh").await?;
        // The last one's teardown (its CNI DEL) is not part of the next one's start.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    to_ip.sort_by(f64::total_cmp);
    to_ok.sort_by(f64::total_cmp);

    // The same pods on a kwok node in the same run: create to the status kwok writes
    // (Ready, with an address), the API round trips alone.
    let kwok = e2e::kwok_node(cluster, KWOK_NODE, 10497, 10496).await?;
    let on_kwok = watch_addresses(pods.clone(), "http-kwok");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut kwok_ready = Vec::new();
    for i in 0..FRESH_PODS {
        let name = format!("bench-http-kwok-{i}");
        let mut p = pod(&name, image, "http-kwok");
        if let Some(spec) = p.spec.as_mut() {
            spec.node_name = Some(KWOK_NODE.to_owned());
        }
        let t0 = Instant::now();
        pods.create(&PostParams::default(), &p).await?;
        let (seen_at, _) = address_of(pods, &on_kwok, &name, 60).await?;
        kwok_ready.push(seen_at.duration_since(t0).as_secs_f64() * 1000.0);
        clear(pods, "http-kwok").await?;
    }
    drop(kwok);
    let _ = cluster
        .nodes()
        .delete(KWOK_NODE, &DeleteParams::default())
        .await;
    kwok_ready.sort_by(f64::total_cmp);
    Ok(FirstRequests {
        to_ip,
        to_ok,
        kwok_ready,
    })
}
