//! Who may call the kubelet API (issue 9, finding 4), against the real API server's
//! TokenReview, SubjectAccessReview, Node authorizer and RBAC: anonymous callers get 401,
//! another node's certificate and a service account without RBAC get 403 with the
//! kubelet's body, a ClusterRole on `nodes/proxy` and `nodes/metrics` opens exactly those,
//! and the API server's own client certificate (`kubectl logs`) keeps working.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use e2e::{Cluster, KrustletNode, ensure_absent, node_credentials, phase, wait_pod, wasm_pod};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Api;
use kube::api::{DeleteParams, LogParams, PostParams};

/// How a test calls the kubelet API.
enum Caller<'a> {
    Anonymous,
    Certificate { cert: &'a str, key: &'a str },
    Token(&'a str),
}

/// `method path` on the node's kubelet API (straight to it, not through the API
/// server): the status and body.
async fn call(
    node: &KrustletNode,
    caller: &Caller<'_>,
    method: &str,
    path: &str,
) -> Result<(u16, String)> {
    let mut curl = tokio::process::Command::new("curl");
    curl.args(["-s", "--insecure", "--max-time", "20", "-X", method])
        .args(["-w", "\n%{http_code}"]);
    match caller {
        Caller::Anonymous => {}
        Caller::Certificate { cert, key } => {
            curl.args(["--cert", cert, "--key", key]);
        }
        Caller::Token(token) => {
            curl.args(["-H", &format!("Authorization: Bearer {token}")]);
        }
    }
    let out = curl
        .arg(format!("https://127.0.0.1:{}{path}", node.port))
        .output()
        .await
        .context("running curl")?;
    let text = String::from_utf8(out.stdout)?;
    let (body, status) = text
        .rsplit_once('\n')
        .with_context(|| format!("curl printed {text:?}"))?;
    Ok((status.trim().parse()?, body.to_owned()))
}

/// Calls until the answer's status is `want` (RBAC changes reach the API server's
/// authorizer and expire from the node's decision cache within seconds).
async fn eventually(
    node: &KrustletNode,
    caller: &Caller<'_>,
    path: &str,
    want: u16,
) -> Result<String> {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = call(node, caller, "GET", path).await?;
        if status == want {
            return Ok(body);
        }
        if Instant::now() > end {
            bail!("GET {path}: still {status} {body:?} after 60 s, wanted {want}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn forbidden(user: &str, verb: &str, subresources: &str) -> String {
    format!("Forbidden (user={user}, verb={verb}, resource=nodes, subresource(s)=[{subresources}])")
}

const READER: &str = "e2e-auth-reader";
const POD: &str = "e2e-auth-logs";

/// The reader's ClusterRole and binding, removed first if an earlier run left them.
async fn grant(cluster: &Cluster, node: &str) -> Result<()> {
    let roles: Api<ClusterRole> = Api::all(cluster.client.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(cluster.client.clone());
    revoke(cluster).await;
    let role: ClusterRole = serde_json::from_value(serde_json::json!({
        "metadata": { "name": READER },
        "rules": [{
            "apiGroups": [""],
            "resources": ["nodes/proxy", "nodes/metrics"],
            "resourceNames": [node],
            "verbs": ["get"]
        }]
    }))?;
    roles.create(&PostParams::default(), &role).await?;
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": { "name": READER },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": READER },
        "subjects": [{ "kind": "ServiceAccount", "name": READER, "namespace": "default" }]
    }))?;
    bindings.create(&PostParams::default(), &binding).await?;
    Ok(())
}

async fn revoke(cluster: &Cluster) {
    let roles: Api<ClusterRole> = Api::all(cluster.client.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(cluster.client.clone());
    let _ = bindings.delete(READER, &DeleteParams::default()).await;
    let _ = roles.delete(READER, &DeleteParams::default()).await;
}

#[tokio::test]
async fn the_kubelet_api_admits_only_callers_rbac_allows() -> Result<()> {
    let cluster = Cluster::connect().await?;
    revoke(&cluster).await;
    // Denials are cached for 1 s instead of 30 s, so that the grant below shows quickly.
    let node = cluster
        .ready_node(
            "e2e-auth",
            10371,
            &["--authorization-webhook-cache-unauthorized-ttl", "1s"],
        )
        .await?;
    let image = cluster.push("hello", "v1").await?;
    let pods = cluster.pods();
    ensure_absent(&pods, POD).await?;
    pods.create(
        &PostParams::default(),
        &wasm_pod(POD, &node.name, &image, &[], "Never"),
    )
    .await?;
    wait_pod(&pods, POD, 60, "Succeeded", |p| phase(p) == "Succeeded").await?;
    let logs_path = format!("/containerLogs/default/{POD}/main");

    // The API server's own client certificate: `kubectl logs` and /metrics still work.
    let logs = pods.logs(POD, &LogParams::default()).await?;
    assert!(
        logs.starts_with("Hello from a wasm pod on krustlet!\n"),
        "{logs}"
    );
    assert!(node.metrics().await?.contains_key("krustlet_images"));

    // Anonymous: 401 everywhere, unknown paths included.
    for path in [logs_path.as_str(), "/metrics", "/healthz", "/nothing-here"] {
        assert_eq!(
            call(&node, &Caller::Anonymous, "GET", path).await?,
            (401, "Unauthorized".to_owned()),
            "{path}"
        );
    }

    // Another node's client certificate (valid, from the cluster CA): 403.
    let other = node_credentials("e2e-auth-other")?;
    let other = Caller::Certificate {
        cert: &other["CLIENT_CERT_FILE"],
        key: &other["CLIENT_KEY_FILE"],
    };
    assert_eq!(
        call(&node, &other, "GET", &logs_path).await?,
        (403, forbidden("system:node:e2e-auth-other", "get", "proxy"))
    );

    // A service account's token, without RBAC: 403; a token no one issued: 401.
    let accounts: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), "default");
    let account: ServiceAccount =
        serde_json::from_value(serde_json::json!({ "metadata": { "name": READER } }))?;
    match accounts.create(&PostParams::default(), &account).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let token = cluster
        .kubectl(&["create", "token", READER, "--duration", "10m"])
        .await?;
    let reader = Caller::Token(token.trim());
    let user = format!("system:serviceaccount:default:{READER}");
    assert_eq!(
        call(&node, &reader, "GET", &logs_path).await?,
        (403, forbidden(&user, "get", "proxy"))
    );
    assert_eq!(
        call(&node, &reader, "GET", "/metrics").await?,
        (403, forbidden(&user, "get", "metrics"))
    );
    assert_eq!(
        call(&node, &reader, "GET", "/healthz").await?,
        (403, forbidden(&user, "get", "healthz proxy"))
    );
    assert_eq!(
        call(&node, &Caller::Token("not-a-token"), "GET", &logs_path).await?,
        (401, "Unauthorized".to_owned())
    );

    // A ClusterRole with get on nodes/proxy and nodes/metrics of this node: those open,
    // other verbs stay closed.
    grant(&cluster, &node.name).await?;
    let body = eventually(&node, &reader, &logs_path, 200).await?;
    assert_eq!(body, logs);
    let metrics = eventually(&node, &reader, "/metrics", 200).await?;
    assert!(metrics.contains("krustlet_images"), "{metrics}");
    // /healthz is nodes/healthz or, failing that, nodes/proxy.
    assert_eq!(
        call(&node, &reader, "GET", "/healthz").await?,
        (200, "ok".to_owned())
    );
    assert_eq!(
        call(&node, &reader, "POST", &logs_path).await?,
        (403, forbidden(&user, "create", "proxy"))
    );
    // The grant is the service account's alone.
    assert_eq!(
        call(&node, &other, "GET", &logs_path).await?.0,
        403,
        "another node's certificate is still refused"
    );

    revoke(&cluster).await;
    let _ = accounts.delete(READER, &DeleteParams::default()).await;
    pods.delete(POD, &DeleteParams::default()).await?;
    Ok(())
}

#[tokio::test]
async fn with_anonymous_auth_anonymous_callers_are_authorized_as_system_anonymous() -> Result<()> {
    let cluster = Cluster::connect().await?;
    let node = cluster
        .ready_node("e2e-auth-anon", 10372, &["--anonymous-auth=true"])
        .await?;
    assert_eq!(
        call(&node, &Caller::Anonymous, "GET", "/healthz").await?,
        (403, forbidden("system:anonymous", "get", "healthz proxy"))
    );
    assert_eq!(
        call(&node, &Caller::Anonymous, "GET", "/metrics").await?,
        (403, forbidden("system:anonymous", "get", "metrics"))
    );
    // A bad token is never taken for anonymous.
    assert_eq!(
        call(&node, &Caller::Token("not-a-token"), "GET", "/healthz").await?,
        (401, "Unauthorized".to_owned())
    );
    Ok(())
}
