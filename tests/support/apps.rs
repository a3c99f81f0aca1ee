//! Kubernetes apps for the tests: a namespace of a test's own, a Deployment of wasm pods
//! pinned to a node, a ClusterIP Service, and waits on a rollout, its pods and the
//! Service's endpoints.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};

use crate::{Cluster, pod_condition, until, wait_absent, wait_object, wasm_pod_spec};

/// Creates the namespace `<prefix>-<stamp>` of a test's own, after removing those an
/// earlier run left (a test that died before removing its own: their pods would run on
/// the test's node, which has the same name; call it once that node runs, to see them
/// off).
///
/// # Errors
/// When the API server refuses or a namespace left stays for 4 minutes.
pub async fn fresh_namespace(cluster: &Cluster, prefix: &str) -> Result<String> {
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    for old in namespaces.list(&ListParams::default()).await?.items {
        let name = old.metadata.name.unwrap_or_default();
        if name
            .strip_prefix(prefix)
            .and_then(|s| s.strip_prefix('-'))
            .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()))
        {
            remove_namespace(cluster, &name).await?;
        }
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis()
        % 1_000_000_000;
    let ns = format!("{prefix}-{stamp}");
    let obj: Namespace = serde_json::from_value(serde_json::json!({ "metadata": { "name": ns } }))?;
    namespaces.create(&PostParams::default(), &obj).await?;
    Ok(ns)
}

/// Deletes namespace `ns` and waits until it is gone, its pods with it (the node that
/// runs them must still be up to see them off).
///
/// # Errors
/// When the API server refuses or the namespace stays for 4 minutes.
pub async fn remove_namespace(cluster: &Cluster, ns: &str) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    match namespaces.delete(ns, &DeleteParams::default()).await {
        Ok(_) => {}
        // Already being removed (and gone since).
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    wait_absent(&namespaces, ns, 240).await
}

/// A Deployment `name` of `replicas` pods labelled `app: <name>`, pinned to `node`,
/// whose pod spec is `spec` (its containers and the rest) and whose pod annotations are
/// `annotations`. A rolling update starts up to two new pods at once (`maxSurge` 2) and
/// takes an old one away only once a new one is available (`maxUnavailable` 0).
///
/// # Errors
/// When the manifest does not parse.
pub fn deployment(
    name: &str,
    node: &str,
    replicas: i32,
    annotations: serde_json::Value,
    spec: serde_json::Value,
) -> Result<Deployment> {
    let full = wasm_pod_spec(node, spec);
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxSurge": 2, "maxUnavailable": 0 } },
            "template": {
                "metadata": { "labels": { "app": name }, "annotations": annotations },
                "spec": full,
            }
        }
    }))?)
}

/// Creates the ClusterIP Service `name` in `ns` selecting `app: <name>`, with `ports`;
/// its ClusterIP.
///
/// # Errors
/// When the API server refuses.
pub async fn service(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    ports: serde_json::Value,
) -> Result<std::net::IpAddr> {
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), ns);
    let svc = services
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": { "name": name },
                "spec": { "type": "ClusterIP", "selector": { "app": name }, "ports": ports }
            }))?,
        )
        .await?;
    let ip = svc.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
    ip.parse()
        .with_context(|| format!("Service {name}'s ClusterIP {ip:?}"))
}

/// Waits up to `secs` until Deployment `name` has rolled out its latest template to
/// `replicas` ready pods and no others.
///
/// # Errors
/// On timeout.
pub async fn rolled_out(
    deployments: &Api<Deployment>,
    name: &str,
    replicas: i32,
    secs: u64,
) -> Result<Deployment> {
    wait_object(deployments, "deployment", name, secs, "rolled out", |d| {
        let Some(s) = d.status.as_ref() else {
            return false;
        };
        s.observed_generation >= d.metadata.generation
            && [
                s.replicas,
                s.updated_replicas,
                s.ready_replicas,
                s.available_replicas,
            ] == [Some(replicas); 4]
    })
    .await
}

/// Waits up to `secs` until the pods of `app: <app>` not being deleted are `count`, all
/// Ready; their names and pod IPs. (A Deployment may say it rolled out on the strength of
/// an instant in which the kubelet reported a container ready before its first probe.)
///
/// # Errors
/// On timeout, with what the pods were.
pub async fn ready_pods(
    pods: &Api<Pod>,
    app: &str,
    count: usize,
    secs: u64,
) -> Result<BTreeMap<String, String>> {
    let what = format!("{count} Ready pods of app={app}");
    until(secs, &what, || async {
        let mut found = BTreeMap::new();
        for p in pods
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await?
            .items
        {
            if p.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let name = p.metadata.name.clone().unwrap_or_default();
            ensure!(
                pod_condition(&p, "Ready").as_deref() == Some("True"),
                "{name} is not Ready: {:?}",
                p.status.and_then(|s| s.conditions)
            );
            found.insert(name, p.status.and_then(|s| s.pod_ip).unwrap_or_default());
        }
        ensure!(found.len() == count, "pods {found:?}");
        Ok(Some(found))
    })
    .await
}

/// Waits up to `secs` until the ready endpoints of Service `svc` in `ns` are exactly
/// `ips`.
///
/// # Errors
/// On timeout, with the last endpoints.
pub async fn endpoints_become(
    cluster: &Cluster,
    ns: &str,
    svc: &str,
    ips: &BTreeSet<String>,
    secs: u64,
) -> Result<()> {
    let slices: Api<EndpointSlice> = Api::namespaced(cluster.client.clone(), ns);
    let selector = format!("kubernetes.io/service-name={svc}");
    until(
        secs,
        &format!("Service {svc}'s ready endpoints {ips:?}"),
        || {
            let (slices, selector) = (slices.clone(), selector.clone());
            async move {
                let ready: BTreeSet<String> = slices
                    .list(&ListParams::default().labels(&selector))
                    .await?
                    .items
                    .iter()
                    .flat_map(|s| s.endpoints.iter().flatten())
                    .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                    .flat_map(|e| e.addresses.iter().cloned())
                    .collect();
                ensure!(&ready == ips, "ready endpoints {ready:?}");
                Ok(Some(()))
            }
        },
    )
    .await
}
