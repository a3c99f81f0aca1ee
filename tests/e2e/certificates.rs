//! TLS bootstrap and certificate rotation against the real controller manager: a node
//! that starts with nothing but a bootstrap token gets its client certificate through an
//! auto-approved CSR and its serving certificate through one the test approves; with the
//! local signer's short lifetime (`hack/cluster`'s `CLUSTER_SIGNING_DURATION`, 4 min) both
//! are renewed while a pod runs, and nothing is interrupted.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use e2e::{
    Cluster, KrustletNode, bootstrap_token, create_fresh, delete_and_wait, node_condition, phase,
    wait_node, wait_pod, wasm_pod,
};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;

const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";

fn signer(csr: &CertificateSigningRequest) -> &str {
    &csr.spec.signer_name
}

fn requestor(csr: &CertificateSigningRequest) -> &str {
    csr.spec.username.as_deref().unwrap_or_default()
}

fn name(csr: &CertificateSigningRequest) -> String {
    csr.metadata.name.clone().unwrap_or_default()
}

fn condition<'a>(csr: &'a CertificateSigningRequest, type_: &str) -> Option<&'a str> {
    csr.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| c.reason.as_deref().unwrap_or_default())
}

fn issued(csr: &CertificateSigningRequest) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty())
}

/// The cluster's CSRs as one test sees them: only those created since it started (the
/// node's name may have made some in an earlier run).
struct Csrs<'a> {
    cluster: &'a Cluster,
    since: i64,
}

impl<'a> Csrs<'a> {
    fn from_now(cluster: &'a Cluster) -> Self {
        // Creation timestamps are whole seconds.
        let since = jiff::Timestamp::now().as_second() - 1;
        Self { cluster, since }
    }

    /// The CSRs `who` made with `signer_name`, oldest first.
    async fn list(&self, signer_name: &str, who: &str) -> Result<Vec<CertificateSigningRequest>> {
        let api: Api<CertificateSigningRequest> = Api::all(self.cluster.client.clone());
        let mut list: Vec<_> = api
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|c| signer(c) == signer_name && requestor(c) == who)
            .filter(|c| {
                c.metadata
                    .creation_timestamp
                    .as_ref()
                    .is_some_and(|t| t.0.as_second() >= self.since)
            })
            .collect();
        list.sort_by_key(|c| c.metadata.creation_timestamp.clone().map(|t| t.0));
        Ok(list)
    }

    /// Waits up to `secs` for a CSR of `who` with `signer_name` that satisfies `cond`.
    async fn wait(
        &self,
        signer_name: &str,
        who: &str,
        secs: u64,
        cond: impl Fn(&CertificateSigningRequest) -> bool,
    ) -> Result<CertificateSigningRequest> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(found) = self
                .list(signer_name, who)
                .await?
                .into_iter()
                .find(|c| cond(c))
            {
                return Ok(found);
            }
            if Instant::now() > deadline {
                bail!("no {signer_name} CSR by {who} as expected within {secs}s");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Approves every pending serving CSR of node `node` (as an operator would); returns
    /// the names approved.
    async fn approve_serving(&self, node: &str) -> Result<Vec<String>> {
        let mut approved = Vec::new();
        for csr in self
            .list(SERVING_SIGNER, &format!("system:node:{node}"))
            .await?
        {
            if condition(&csr, "Approved").is_none() && condition(&csr, "Denied").is_none() {
                self.cluster
                    .kubectl(&["certificate", "approve", &name(&csr)])
                    .await?;
                approved.push(name(&csr));
            }
        }
        Ok(approved)
    }
}

/// `kubectl logs` of `pod` (through the API server, which verifies the kubelet's serving
/// certificate against the cluster CA) until it shows `expected`, up to `secs`.
async fn logs_show(cluster: &Cluster, pod: &str, expected: &str, secs: u64) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let last = cluster.kubectl(&["logs", pod, "--tail", "5"]).await;
        match &last {
            Ok(out) if out.contains(expected) => return Ok(out.clone()),
            _ if Instant::now() > deadline => {
                bail!("kubectl logs {pod} did not show {expected:?} within {secs}s: {last:?}")
            }
            _ => tokio::time::sleep(Duration::from_secs(2)).await,
        }
    }
}

/// The file `kubelet-<kind>-current.pem` links to, and that file's mode.
fn current(pki: &Path, kind: &str) -> Result<(String, u32)> {
    let link = pki.join(format!("kubelet-{kind}-current.pem"));
    let target = std::fs::read_link(&link).with_context(|| format!("{}", link.display()))?;
    let mode = std::fs::metadata(pki.join(&target))?.permissions().mode() & 0o777;
    Ok((target.display().to_string(), mode))
}

/// `notAfter` of the certificate in `pem`, as seconds since the epoch (by openssl).
fn not_after(pem: &Path) -> Result<i64> {
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-enddate", "-dateopt", "iso_8601", "-in"])
        .arg(pem)
        .output()
        .context("running openssl")?;
    let text = String::from_utf8(out.stdout)?;
    let date = text
        .trim()
        .strip_prefix("notAfter=")
        .with_context(|| format!("openssl printed {text:?}"))?;
    let stamp: jiff::Timestamp = date.replace(' ', "T").parse()?;
    Ok(stamp.as_second())
}

/// The last `tick N` of the loop workload's output.
fn last_tick(logs: &str) -> Result<u64> {
    logs.lines()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .max()
        .context("no ticks in the logs")
}

async fn running_pod(cluster: &Cluster, pod: &str, node: &str) -> Result<Pod> {
    let image = cluster.push("loop", "v1").await?;
    let pods = cluster.pods();
    create_fresh(&pods, &wasm_pod(pod, node, &image, &[], "Always")).await?;
    wait_pod(&pods, pod, 180, "Running", |p| phase(p) == "Running").await
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map_or(-1, |c| c.restart_count)
}

#[tokio::test]
async fn a_node_with_only_a_bootstrap_token_gets_its_certificates_by_csr() -> Result<()> {
    const NODE: &str = "e2e-tls-bootstrap";
    const POD: &str = "tls-bootstrap-logs";
    let cluster = Cluster::connect().await?;
    cluster.forget_node(NODE).await?;
    let csrs = Csrs::from_now(&cluster);
    let token = bootstrap_token("30m")?;
    let id = token["TOKEN"]
        .split('.')
        .next()
        .context("token id")?
        .to_owned();
    let node = KrustletNode::start_bootstrap(
        NODE,
        10481,
        &token["BOOTSTRAP_KUBECONFIG"],
        &["--rotate-server-certificates"],
    )?;

    // The client certificate: requested with the token, approved by the controller
    // manager's csrapproving controller, issued by its signer.
    let client = csrs
        .wait(
            CLIENT_SIGNER,
            &format!("system:bootstrap:{id}"),
            180,
            issued,
        )
        .await?;
    assert_eq!(condition(&client, "Approved"), Some("AutoApproved"));
    assert_eq!(
        client.spec.usages.as_deref(),
        Some(&["digital signature".to_owned(), "client auth".to_owned()][..])
    );
    wait_node(&cluster.nodes(), NODE, 180, "Ready", |n| {
        node_condition(n, "Ready").as_deref() == Some("True")
    })
    .await?;
    let pki = node.data_dir.join("pki");
    let (pem, mode) = current(&pki, "client")?;
    assert!(pem.starts_with("kubelet-client-20"), "{pem}");
    assert_eq!(mode, 0o600);
    let kubeconfig = node.data_dir.join("kubelet.kubeconfig");
    let written = std::fs::read_to_string(&kubeconfig)?;
    assert!(written.contains("kubelet-client-current.pem"), "{written}");
    assert!(!written.contains(&token["TOKEN"]), "the token is not kept");
    assert_eq!(
        std::fs::metadata(&kubeconfig)?.permissions().mode() & 0o777,
        0o600
    );

    // The serving certificate: requested by the node itself, never auto-approved.
    let serving = csrs
        .wait(SERVING_SIGNER, &format!("system:node:{NODE}"), 120, |_| {
            true
        })
        .await?;
    assert_eq!(
        serving.spec.usages.as_deref(),
        Some(&["digital signature".to_owned(), "server auth".to_owned()][..])
    );
    running_pod(&cluster, POD, NODE).await?;
    // Until it is approved the kubelet API has no certificate to serve: the API server
    // cannot reach it.
    let before = cluster.kubectl(&["logs", POD, "--tail", "1"]).await;
    let still_pending = csrs
        .list(SERVING_SIGNER, &format!("system:node:{NODE}"))
        .await?
        .iter()
        .all(|c| condition(c, "Approved").is_none());
    if still_pending {
        ensure!(before.is_err(), "logs served before approval: {before:?}");
    }
    let approved = csrs.approve_serving(NODE).await?;
    ensure!(!approved.is_empty() || !still_pending, "nothing to approve");
    // Served as soon as issued, verified by the API server against the cluster CA.
    logs_show(&cluster, POD, "tick", 120).await?;
    let (pem, mode) = current(&pki, "server")?;
    assert!(pem.starts_with("kubelet-server-20"), "{pem}");
    assert_eq!(mode, 0o600);

    delete_and_wait(&cluster.pods(), POD, 60).await?;
    drop(node);
    cluster.forget_node(NODE).await?;
    Ok(())
}

#[tokio::test]
async fn both_certificates_rotate_while_a_pod_runs_and_nothing_is_interrupted() -> Result<()> {
    const NODE: &str = "e2e-tls-rotation";
    const POD: &str = "tls-rotation-loop";
    let cluster = Cluster::connect().await?;
    cluster.forget_node(NODE).await?;
    let csrs = Csrs::from_now(&cluster);
    let token = bootstrap_token("30m")?;
    let node = KrustletNode::start_bootstrap(
        NODE,
        10482,
        &token["BOOTSTRAP_KUBECONFIG"],
        &["--rotate-certificates", "--rotate-server-certificates"],
    )?;
    let me = format!("system:node:{NODE}");
    wait_node(&cluster.nodes(), NODE, 180, "Ready", |n| {
        node_condition(n, "Ready").as_deref() == Some("True")
    })
    .await?;
    csrs.wait(SERVING_SIGNER, &me, 120, |_| true).await?;
    let mut serving_approved: BTreeSet<String> =
        csrs.approve_serving(NODE).await?.into_iter().collect();
    let pki = node.data_dir.join("pki");
    let pod = running_pod(&cluster, POD, NODE).await?;
    let first_tick = last_tick(&logs_show(&cluster, POD, "tick", 120).await?)?;
    let uid = pod.metadata.uid.clone();
    let first_client = current(&pki, "client")?.0;
    let first_serving = current(&pki, "server")?.0;
    let first_client_expiry = not_after(&pki.join(&first_client))?;

    // Renewals: a client CSR made with the node's own certificate (auto-approved as
    // selfnodeclient), a second serving CSR (approved here). With 4 min certificates
    // both come within 4 min of issue; 10 min is the bound.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut not_ready = BTreeSet::new();
    loop {
        for approved in csrs.approve_serving(NODE).await? {
            serving_approved.insert(approved);
        }
        let node_now = cluster.nodes().get(NODE).await?;
        let ready = node_condition(&node_now, "Ready").unwrap_or_default();
        if ready != "True" {
            not_ready.insert(ready);
        }
        let client_renewed = csrs.list(CLIENT_SIGNER, &me).await?.iter().any(issued);
        let serving_renewed = csrs
            .list(SERVING_SIGNER, &me)
            .await?
            .iter()
            .filter(|c| issued(c))
            .count()
            >= 2;
        let swapped = current(&pki, "client")?.0 != first_client
            && current(&pki, "server")?.0 != first_serving;
        if client_renewed && serving_renewed && swapped {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no rotation within 600s: client renewed {client_renewed}, serving renewed \
             {serving_renewed}, files swapped {swapped}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let renewal = csrs.list(CLIENT_SIGNER, &me).await?;
    assert_eq!(
        condition(renewal.first().context("renewal")?, "Approved"),
        Some("AutoApproved")
    );

    // The first client certificate expires: the node goes on with the new one (its
    // lease is renewed, it stays Ready), without a restart.
    let wait = first_client_expiry + 30 - jiff::Timestamp::now().as_second();
    tokio::time::sleep(Duration::from_secs(u64::try_from(wait).unwrap_or(0))).await;
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "kube-node-lease");
    let renewed = leases
        .get(NODE)
        .await?
        .spec
        .and_then(|s| s.renew_time)
        .context("lease renew time")?;
    let age = jiff::Timestamp::now().as_second() - renewed.0.as_second();
    ensure!(age < 30, "the lease was last renewed {age}s ago");
    let node_now = cluster.nodes().get(NODE).await?;
    if node_condition(&node_now, "Ready").as_deref() != Some("True") {
        not_ready.insert(node_condition(&node_now, "Ready").unwrap_or_default());
    }
    ensure!(
        not_ready.is_empty(),
        "the node was not Ready: {not_ready:?}"
    );
    ensure!(node.pid().is_some(), "the agent was not restarted");

    // The pod ran on, and its logs come through the renewed serving certificate.
    let pod_now = cluster.pods().get(POD).await?;
    assert_eq!(pod_now.metadata.uid, uid);
    assert_eq!(phase(&pod_now), "Running");
    assert_eq!(restarts(&pod_now), 0);
    let last = last_tick(&logs_show(&cluster, POD, "tick", 120).await?)?;
    // Minutes went by: the count went on from where it was, never from 0 again.
    ensure!(
        last > first_tick + 60,
        "the pod's output: tick {first_tick} before, {last} after"
    );
    for approved in csrs.approve_serving(NODE).await? {
        serving_approved.insert(approved);
    }
    ensure!(serving_approved.len() >= 2, "{serving_approved:?}");

    delete_and_wait(&cluster.pods(), POD, 60).await?;
    drop(node);
    cluster.forget_node(NODE).await?;
    Ok(())
}
