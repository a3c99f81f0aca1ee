//! Tests of the kubelet API's gate through the real router (bodies, unknown paths, no way
//! around it by path tricks); the connection limits in [`connections`].

use std::sync::Arc;

use axum::body::Body;
use hyper::service::Service as _;
use hyper_util::service::TowerToHyperService;
use proptest::prelude::*;

use super::*;
use crate::auth::fake::FakeReviewer;
use crate::auth::{AuthConfig, Subresource};

const METRICS: &str = "METRICS-MARKER";

/// The API's parts around `auth`, with a fake runtime and no pods.
fn parts(auth: Arc<Auth>, metrics: Metrics) -> Parts {
    Parts {
        logs: LogIndex::default(),
        sandboxes: SandboxIndex::default(),
        runtime: Arc::new(crate::pods::testing::Shared(Arc::default())),
        metrics,
        stats: crate::stats::Source {
            index: crate::stats::StatsIndex::default(),
            node_name: "node-a".to_owned(),
            data_dir: std::env::temp_dir(),
            started: jiff::Timestamp::now(),
        },
        auth,
        pods: (
            crate::pods::PodsHandle::new().0,
            crate::pods::StatusBook::default(),
        ),
    }
}

fn app(fake: Arc<FakeReviewer>, config: AuthConfig, peer: Option<User>) -> Router {
    let auth = Arc::new(Auth::new(config, "node-a", fake));
    let metrics: Metrics = Arc::new(|| METRICS.to_owned());
    router(parts(auth, metrics)).layer(axum::Extension(Peer(peer.map(Arc::new))))
}

async fn call(app: Router, method: &str, uri: &str, token: Option<&str>) -> (StatusCode, String) {
    let mut request = axum::http::Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    let request = request.body(Body::empty()).expect("request");
    let response = TowerToHyperService::new(app)
        .call(request)
        .await
        .expect("infallible");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn reviewer(allowed: &'static [Subresource]) -> Arc<FakeReviewer> {
    Arc::new(FakeReviewer::new(&[("token", "sa", &[])], move |a| {
        allowed.contains(&a.subresource)
    }))
}

#[tokio::test]
async fn anonymous_requests_get_401_everywhere_unknown_paths_included() {
    for path in [
        "/healthz",
        "/metrics",
        "/containerLogs/a/b/c",
        "/portForward/a/b",
        "/portForward/a/b/uid",
        "/nope",
        "/",
    ] {
        let app = app(reviewer(&[]), AuthConfig::default(), None);
        assert_eq!(
            call(app, "GET", path, None).await,
            (StatusCode::UNAUTHORIZED, "Unauthorized".to_owned()),
            "{path}"
        );
    }
}

#[tokio::test]
async fn forbidden_requests_get_403_with_the_kubelets_body() {
    let app = app(reviewer(&[]), AuthConfig::default(), None);
    assert_eq!(
        call(
            app.clone(),
            "GET",
            "/containerLogs/ns/p/c?follow=true",
            Some("token")
        )
        .await,
        (
            StatusCode::FORBIDDEN,
            "Forbidden (user=sa, verb=get, resource=nodes, subresource(s)=[proxy])".to_owned()
        )
    );
    // Port forwarding is the proxy subresource, verb create for the API server's POST.
    assert_eq!(
        call(app.clone(), "POST", "/portForward/ns/p", Some("token")).await,
        (
            StatusCode::FORBIDDEN,
            "Forbidden (user=sa, verb=create, resource=nodes, subresource(s)=[proxy])".to_owned()
        )
    );
    assert_eq!(
        call(app.clone(), "GET", "/healthz", Some("token")).await,
        (
            StatusCode::FORBIDDEN,
            "Forbidden (user=sa, verb=get, resource=nodes, subresource(s)=[healthz proxy])"
                .to_owned()
        )
    );
    assert_eq!(
        call(app, "GET", "/metrics", Some("other")).await,
        (StatusCode::UNAUTHORIZED, "Unauthorized".to_owned())
    );
}

#[tokio::test]
async fn allowed_requests_reach_their_handler() {
    let sa = app(
        reviewer(&[Subresource::Metrics, Subresource::Healthz]),
        AuthConfig::default(),
        None,
    );
    assert_eq!(
        call(sa.clone(), "GET", "/metrics", Some("token")).await,
        (StatusCode::OK, METRICS.to_owned())
    );
    assert_eq!(
        call(sa.clone(), "GET", "/healthz", Some("token")).await,
        (StatusCode::OK, "ok".to_owned())
    );
    // The resource metrics are nodes/metrics, the summary nodes/stats.
    let (status, page) = call(sa.clone(), "GET", "/metrics/resource", Some("token")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("\nnode_cpu_usage_seconds_total "), "{page}");
    let (status, page) = call(sa.clone(), "GET", "/metrics/cadvisor", Some("token")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        call(sa.clone(), "GET", "/stats/summary", Some("token"))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let stats = app(reviewer(&[Subresource::Stats]), AuthConfig::default(), None);
    let (status, json) = call(stats, "GET", "/stats/summary", Some("token")).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let summary: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(summary["node"]["nodeName"], "node-a");
    assert_eq!(summary["pods"], serde_json::json!([]));
    assert_eq!(
        call(sa, "GET", "/containerLogs/a/b/c", Some("token"))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    // The API server's certificate, with nodes/proxy.
    let apiserver = User {
        name: "kube-apiserver-kubelet-client".to_owned(),
        ..User::default()
    };
    let apiserver_app = app(
        reviewer(&[Subresource::Proxy]),
        AuthConfig::default(),
        Some(apiserver),
    );
    let (status, body) = call(apiserver_app, "GET", "/containerLogs/ns/pod/c", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("is not known on this node"), "{body}");
}

/// Which handler produced a response, if any did.
fn handler_of(status: StatusCode, body: &str) -> Option<&'static str> {
    if body.contains("is not known on this node") {
        Some("containerLogs")
    } else if body == METRICS {
        Some("metrics")
    } else if status == StatusCode::OK && body == "ok" {
        Some("healthz")
    } else {
        None
    }
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("containerLogs".to_owned()),
        Just("metrics".to_owned()),
        Just("healthz".to_owned()),
        Just("..".to_owned()),
        Just(".".to_owned()),
        Just(String::new()),
        Just("%2e%2e".to_owned()),
        Just("%2F".to_owned()),
        Just("%63ontainerLogs".to_owned()),
        Just("ns".to_owned()),
        "[a-z0-9%.]{1,6}",
    ]
}

const ALL: [Subresource; 9] = [
    Subresource::Stats,
    Subresource::Metrics,
    Subresource::Log,
    Subresource::Checkpoint,
    Subresource::Pods,
    Subresource::Healthz,
    Subresource::Configz,
    Subresource::Statusz,
    Subresource::Proxy,
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Whatever the path (dot segments, encodings, empty segments), a handler only runs
    /// when a subresource that guards it is allowed.
    #[test]
    fn no_path_reaches_a_handler_its_subresource_does_not_allow(
        before in proptest::collection::vec(segment(), 0..3),
        target in prop_oneof![
            Just(vec!["containerLogs", "ns", "pod", "c"]),
            Just(vec!["metrics"]),
            Just(vec!["healthz"]),
        ],
        after in proptest::collection::vec(segment(), 0..2),
        allowed in proptest::sample::subsequence(ALL.to_vec(), 0..ALL.len()),
        method in prop_oneof![4 => Just("GET"), 1 => Just("HEAD"), 1 => Just("POST")],
    ) {
        // Each handler's own path, behind and before arbitrary segments.
        let segments: Vec<&str> = before
            .iter()
            .map(String::as_str)
            .chain(target)
            .chain(after.iter().map(String::as_str))
            .collect();
        let uri = format!("/{}", segments.join("/"));
        prop_assume!(uri.parse::<axum::http::Uri>().is_ok());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let allowed_here = allowed.clone();
        let fake = Arc::new(FakeReviewer::new(&[("token", "sa", &[])], move |a| {
            // HEAD has the empty verb: nothing but `*` would allow it, so nothing here.
            !a.verb.is_empty() && allowed_here.contains(&a.subresource)
        }));
        let (status, body) = runtime.block_on(call(app(fake, AuthConfig::default(), None), method, &uri, Some("token")));
        let guards: &[Subresource] = match handler_of(status, &body) {
            Some("containerLogs") => &[Subresource::Proxy],
            Some("metrics") => &[Subresource::Metrics],
            Some("healthz") => &[Subresource::Healthz, Subresource::Proxy],
            _ => return Ok(()),
        };
        prop_assert!(method != "HEAD", "{} {} ran a handler", method, uri);
        prop_assert!(
            guards.iter().any(|g| allowed.contains(g)),
            "{} {} ran a handler guarded by {:?} with only {:?} allowed", method, uri, guards, allowed
        );
    }
}

mod connections;
