//! The kubelet HTTPS API: `/healthz`, `/containerLogs/{namespace}/{pod}/{container}`
//! (what `kubectl logs` reaches through the API server) and `/metrics` (Prometheus text:
//! the runtime's counters and the node's pods).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::logs::{self, LogOptions, QueryError};
use crate::pods::Registry;
use crate::{Config, Error, Result};

/// A bound, not yet serving, kubelet API.
pub struct Listener {
    tcp: TcpListener,
    tls: TlsAcceptor,
    require_client_cert: bool,
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
    let tls = crate::tls::acceptor(config)?;
    let addr = std::net::SocketAddr::new(config.bind_address, config.port);
    let tcp = TcpListener::bind(addr).await.map_err(|source| Error::Io {
        what: format!("binding the kubelet API on {addr}"),
        source,
    })?;
    tracing::info!(%addr, "kubelet API listening");
    Ok(Listener {
        tcp,
        tls,
        require_client_cert: config.client_ca_file.is_some(),
    })
}

/// Whether the TLS peer presented a certificate the client CA vouches for.
#[derive(Debug, Clone, Copy)]
struct Authenticated(bool);

/// Renders the metrics page.
pub type Metrics = Arc<dyn Fn() -> String + Send + Sync>;

fn router(registry: Registry, metrics: Metrics) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .with_state(registry)
        .route(
            "/metrics",
            get(move |Extension(auth): Extension<Authenticated>| {
                let metrics = metrics.clone();
                async move {
                    if !auth.0 {
                        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
                    }
                    ([("content-type", "text/plain; version=0.0.4")], metrics()).into_response()
                }
            }),
        )
}

/// The Prometheus text page for `counters` and the pods of `registry`.
#[must_use]
pub fn render_metrics(counters: &[crate::runtime::Counter], registry: &Registry) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for c in counters {
        let _ = writeln!(out, "# HELP {} {}", c.name, c.help);
        let _ = writeln!(out, "# TYPE {} counter", c.name);
        let _ = writeln!(out, "{} {}", c.name, c.value);
    }
    let images = registry.image_entries().len();
    let _ = writeln!(out, "# HELP krustlet_images Images the node holds.");
    let _ = writeln!(out, "# TYPE krustlet_images gauge");
    let _ = writeln!(out, "krustlet_images {images}");
    out
}

/// Serves until `shutdown`.
pub async fn serve(
    listener: Listener,
    registry: Registry,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let app = router(registry, metrics);
    let require = listener.require_client_cert;
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.tcp.accept() => match r {
                Ok(s) => s,
                Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
            },
        };
        let tls = listener.tls.clone();
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let stream = match tls.accept(stream).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let authenticated = !require
                || stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .is_some_and(|c| !c.is_empty());
            let service =
                TowerToHyperService::new(app.layer(Extension(Authenticated(authenticated))));
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::select! {
                r = conn => if let Err(e) = r { tracing::debug!(%peer, error = %e, "connection ended"); },
                () = shutdown.cancelled() => {}
            }
        });
    }
}

async fn container_logs(
    State(registry): State<Registry>,
    Extension(auth): Extension<Authenticated>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    if !auth.0 {
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    }
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
    let Some(entry) = registry.container_logs(&namespace, &pod, &container) else {
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
    if !path.exists() {
        return (
            StatusCode::BAD_REQUEST,
            format!("container {container:?} in pod {pod:?} has no logs yet"),
        )
            .into_response();
    }
    let follow_current = !opts.previous;
    let registry = Arc::new(registry);
    let running = move || {
        follow_current
            && registry
                .container_logs(&namespace, &pod, &container)
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
