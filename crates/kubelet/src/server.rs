//! The kubelet HTTPS API: `/healthz`, `/containerLogs/{namespace}/{pod}/{container}`
//! (what `kubectl logs` reaches through the API server), `/portForward/{namespace}/{pod}`
//! (`kubectl port-forward`, see [`port_forward`]), `/metrics` (Prometheus text:
//! the runtime's counters and the node's pods), the resource metrics
//! `/metrics/resource` and `/metrics/cadvisor`, and `/stats/summary` (see
//! [`crate::stats`]). Every request, unknown paths included,
//! passes [`crate::auth`] first. Connections are bounded in time and number so that no
//! stranger can lock callers with credentials out (see [`limits`]).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, User};
use crate::images::ImageIndex;
use crate::logs::LogIndex;
use crate::logs::{self, LogOptions, QueryError};
use crate::runtime::Runtime;
use crate::sandboxes::SandboxIndex;
use crate::{Config, Error, Result};

/// A bound, not yet serving, kubelet API.
pub struct Listener {
    tcp: TcpListener,
    tls: TlsAcceptor,
    serving: Arc<crate::certificates::Slot>,
    limits: Arc<limits::Limits>,
    timeouts: limits::Timeouts,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("addr", &self.tcp.local_addr().ok())
            .finish_non_exhaustive()
    }
}

/// Binds the API port and loads the TLS configuration.
///
/// # Errors
/// When the port is taken or the certificates cannot be loaded or generated.
pub async fn bind(config: &Config) -> Result<Listener> {
    // Reads (or generates and writes) the certificates: on a blocking thread.
    let tls_config = config.clone();
    let (tls, serving) = crate::blocking::run(move || crate::tls::acceptor(&tls_config))
        .await
        .map_err(|source| Error::Io {
            what: "loading the kubelet API's certificates".to_owned(),
            source,
        })??;
    let addr = std::net::SocketAddr::new(config.bind_address, config.port);
    let tcp = TcpListener::bind(addr).await.map_err(|source| Error::Io {
        what: format!("binding the kubelet API on {addr}"),
        source,
    })?;
    tracing::info!(%addr, "kubelet API listening");
    Ok(Listener {
        tcp,
        tls,
        serving,
        limits: Arc::default(),
        timeouts: limits::Timeouts::default(),
    })
}

impl Listener {
    /// The serving certificate, read at each handshake: what is put there reaches new
    /// connections (see [`crate::certificates::rotation`]).
    #[must_use]
    pub fn serving_certificate(&self) -> Arc<crate::certificates::Slot> {
        self.serving.clone()
    }
}

/// The user of the connection's client certificate (verified against the client CA
/// during the handshake), if it presented one.
#[derive(Debug, Clone)]
struct Peer(Option<Arc<User>>);

/// Renders the metrics page.
pub type Metrics = Arc<dyn Fn() -> String + Send + Sync>;

/// What the API serves from.
pub struct Parts {
    /// Where each container logs (`/containerLogs`).
    pub logs: LogIndex,
    /// The pods' sandboxes (`/portForward`).
    pub sandboxes: SandboxIndex,
    /// The runtime that reaches into them.
    pub runtime: Arc<dyn Runtime>,
    /// The `/metrics` page.
    pub metrics: Metrics,
    /// What `/metrics/resource`, `/metrics/cadvisor` and `/stats/summary` report.
    pub stats: crate::stats::Source,
    /// Who may do what.
    pub auth: Arc<Auth>,
    /// The node's pods and their last statuses (`/pods`).
    pub pods: (crate::pods::PodsHandle, crate::pods::StatusBook),
}

fn router(parts: Parts) -> Router {
    let Parts {
        logs,
        sandboxes,
        runtime,
        metrics,
        stats,
        auth,
        pods,
    } = parts;
    let resource = stats.index.clone();
    let cadvisor = stats.index.clone();
    let runtime_for_stats = runtime.clone();
    let forwarder = port_forward::Forwarder {
        sandboxes,
        runtime,
        pair_timeout: port_forward::PAIR_TIMEOUT,
        sessions: limits::Sessions::new(limits::MAX_SESSIONS, limits::MAX_SESSIONS_PER_POD),
    };
    Router::new()
        .route(
            "/portForward/{namespace}/{pod}",
            get(port_forward::by_name).post(port_forward::by_name),
        )
        .route(
            "/portForward/{namespace}/{pod}/{uid}",
            get(port_forward::by_uid).post(port_forward::by_uid),
        )
        .with_state(forwarder)
        .route("/healthz", get(|| async { "ok" }))
        .route("/pods", get(pod_list))
        .route("/pods/", get(pod_list))
        .with_state(pods)
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .with_state(logs)
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { ([("content-type", "text/plain; version=0.0.4")], metrics()) }
            }),
        )
        .route(
            "/metrics/resource",
            get(move || {
                let index = resource.clone();
                async move {
                    // Off the async threads: the samples read the pods' memory volumes.
                    let page = crate::blocking::run(move || {
                        crate::stats::resource::render_resource(&index.node(), &index.samples())
                    })
                    .await
                    .unwrap_or_default();
                    ([("content-type", "text/plain; version=0.0.4")], page)
                }
            }),
        )
        .route(
            "/metrics/cadvisor",
            get(move || {
                let index = cadvisor.clone();
                async move {
                    let page = crate::blocking::run(move || {
                        crate::stats::resource::render_cadvisor(&index.samples())
                    })
                    .await
                    .unwrap_or_default();
                    ([("content-type", "text/plain; version=0.0.4")], page)
                }
            }),
        )
        .route("/stats/summary", get(summary))
        .route("/stats/summary/", get(summary))
        .with_state((stats, runtime_for_stats))
        // No process runs in a wasm container: exec and attach get a clear answer
        // (kubectl shows it) instead of a 404.
        .route(
            "/exec/{namespace}/{pod}/{container}",
            axum::routing::any(no_process),
        )
        .route(
            "/exec/{namespace}/{pod}/{uid}/{container}",
            axum::routing::any(no_process),
        )
        .route(
            "/attach/{namespace}/{pod}/{container}",
            axum::routing::any(no_process),
        )
        .route(
            "/attach/{namespace}/{pod}/{uid}/{container}",
            axum::routing::any(no_process),
        )
        .layer(axum::middleware::from_fn_with_state(auth, guard))
}

/// `/pods`: the pods of this node (static ones under their own UIDs) with the status
/// each last reported, as a `v1` `PodList`, as the kubelet serves it.
async fn pod_list(
    State((pods, statuses)): State<(crate::pods::PodsHandle, crate::pods::StatusBook)>,
) -> Response {
    let mut items = Vec::new();
    for pod in pods.all_pods().await {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let mut value = serde_json::to_value(&pod).unwrap_or_default();
        if let Some(status) = statuses.get(&uid) {
            value["status"] = status;
        }
        items.push(value);
    }
    let list = serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": items,
    });
    ([("content-type", "application/json")], list.to_string()).into_response()
}

/// `/stats/summary`: the Summary API as JSON (its directory walks off the async threads).
async fn summary(
    State((stats, runtime)): State<(crate::stats::Source, Arc<dyn Runtime>)>,
) -> Response {
    let image_fs = runtime.image_fs_usage().await;
    let built = crate::blocking::run(move || {
        let (node, containers) = (stats.index.node(), stats.index.samples());
        let summary = crate::stats::summary::build(&crate::stats::summary::Inputs {
            node_name: &stats.node_name,
            started: stats.started,
            node,
            containers: &containers,
            data_dir: &stats.data_dir,
            image_fs,
        });
        serde_json::to_vec(&summary)
    })
    .await;
    match built {
        Ok(Ok(json)) => ([("content-type", "application/json")], json).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// The answer to `exec` and `attach`.
async fn no_process(uri: axum::http::Uri) -> Response {
    let what = if uri.path().starts_with("/attach/") {
        "attach"
    } else {
        "exec"
    };
    (
        axum::http::StatusCode::BAD_REQUEST,
        format!(
            "{what} is not supported on krustlet nodes: a wasm container has no process to \
             {what} to (read its output with kubectl logs)\n"
        ),
    )
        .into_response()
}

/// Authenticates and authorizes every request (the kubelet's auth filter): the handler
/// runs only for an allowed one.
async fn guard(State(auth): State<Arc<Auth>>, request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<Peer>().and_then(|p| p.0.clone());
    let verdict = auth
        .check(
            peer.as_deref(),
            request
                .headers()
                .get(AUTHORIZATION)
                .map(axum::http::HeaderValue::as_bytes),
            request.method().as_str(),
            request.uri().path(),
        )
        .await;
    match verdict {
        Ok(_) => {
            // The connection has shown credentials: newcomers can no longer close it.
            if let Some(conn) = request.extensions().get::<Arc<limits::Connection>>() {
                conn.authorized();
            }
            next.run(request).await
        }
        Err(rejection) => {
            if let Some(conn) = request.extensions().get::<Arc<limits::Connection>>() {
                conn.refused();
            }
            tracing::debug!(path = request.uri().path(), status = %rejection.status(), "kubelet API request refused");
            (rejection.status(), rejection.body()).into_response()
        }
    }
}

/// The Prometheus text page for `counters` and the node's `images`.
#[must_use]
pub fn render_metrics(counters: &[crate::runtime::Counter], images: &ImageIndex) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for c in counters {
        let _ = writeln!(out, "# HELP {} {}", c.name, c.help);
        let _ = writeln!(out, "# TYPE {} counter", c.name);
        let _ = writeln!(out, "{} {}", c.name, c.value);
    }
    let images = images.entries().len();
    let _ = writeln!(out, "# HELP krustlet_images Images the node holds.");
    let _ = writeln!(out, "# TYPE krustlet_images gauge");
    let _ = writeln!(out, "krustlet_images {images}");
    out
}

/// Serves until `shutdown`, every request through `auth`.
pub async fn serve(listener: Listener, parts: Parts, shutdown: CancellationToken) {
    connection::accept_loop(listener, router(parts), shutdown).await;
}

async fn container_logs(
    State(index): State<LogIndex>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    // The kubelet's answers, word for word: 400 for a value that does not decode, 422
    // for one out of range (a negative `limitBytes` or `tailLines`, ...).
    let opts = match LogOptions::from_query(query.as_deref().unwrap_or_default()) {
        Ok(opts) => opts,
        Err(e @ QueryError::Decode { .. }) => {
            tracing::debug!(error = %e, "container logs query refused");
            return (
                StatusCode::BAD_REQUEST,
                r#"{"message": "Unable to decode query."}"#,
            )
                .into_response();
        }
        Err(e @ QueryError::Invalid(_)) => {
            tracing::debug!(error = %e, "container logs query refused");
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                r#"{"message": "Invalid request."}"#,
            )
                .into_response();
        }
    };
    let Some(entry) = index.get(&namespace, &pod, &container) else {
        return (
            StatusCode::NOT_FOUND,
            format!("container {container:?} in pod {namespace}/{pod} is not known on this node"),
        )
            .into_response();
    };
    let Some(path) = entry.path(opts.previous) else {
        return (
            StatusCode::BAD_REQUEST,
            format!("previous terminated container {container:?} in pod {pod:?} not found"),
        )
            .into_response();
    };
    if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
        return (
            StatusCode::BAD_REQUEST,
            format!("container {container:?} in pod {pod:?} has no logs yet"),
        )
            .into_response();
    }
    let follow_current = !opts.previous;
    let running = move || {
        follow_current
            && index
                .get(&namespace, &pod, &container)
                .is_some_and(|c| c.running && c.restart_count == entry.restart_count)
    };
    let rx = logs::stream(path, opts, running);
    let body =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    Response::builder()
        .header("content-type", "text/plain")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests;

mod connection;
mod limits;
mod port_forward;
mod spdy;
