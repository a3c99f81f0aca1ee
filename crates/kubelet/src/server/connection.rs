//! The kubelet API's connections, from accept to close, within the bounds of
//! [`super::limits`]: the accept loop never waits for a place (a full pool closes its
//! oldest member instead), and each connection is closed when it idles.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::limits::{self, Connection, Limits, Member, Timeouts};
use super::{Listener, Peer};
use crate::auth::User;

/// Accepts connections until `shutdown`, each served by `app` in its own task.
pub(super) async fn accept_loop(listener: Listener, app: Router, shutdown: CancellationToken) {
    let Listener {
        tcp,
        tls,
        limits,
        timeouts,
        ..
    } = listener;
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            r = tcp.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors, most likely: do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // The place is taken here, in accept order: the oldest handshake makes room.
        let handshake = limits.handshakes.join();
        tokio::spawn(serve(
            Accepted {
                stream,
                peer,
                handshake,
            },
            Shared {
                tls: tls.clone(),
                limits: limits.clone(),
                timeouts,
                app: app.clone(),
                shutdown: shutdown.clone(),
            },
        ));
    }
}

/// A connection just accepted, with its handshake place.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    handshake: Member,
}

/// What every connection is served with.
struct Shared {
    tls: TlsAcceptor,
    limits: Arc<Limits>,
    timeouts: Timeouts,
    app: Router,
    shutdown: CancellationToken,
}

/// Serves one connection: the handshake, then requests until the peer closes it, it
/// idles, a newcomer takes its place or the API shuts down.
async fn serve(accepted: Accepted, shared: Shared) {
    let Accepted {
        stream,
        peer,
        handshake,
    } = accepted;
    let Shared {
        tls,
        limits,
        timeouts,
        app,
        shutdown,
    } = shared;
    let displaced = handshake.closed();
    let handshaken = tokio::select! {
        () = displaced.cancelled() => {
            tracing::debug!(%peer, "TLS handshake closed to make room for a newer one");
            return;
        }
        r = tokio::time::timeout(timeouts.handshake, tls.accept(stream)) => r,
    };
    let stream = match handshaken {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    drop(handshake);
    let user = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| User::from_certificate(leaf))
        .map(Arc::new);
    let conn = Connection::admit(&limits, user.is_some());
    let displaced = conn.closed();
    let mut activity = conn.watch();
    let tracked = conn.clone();
    let service = TowerToHyperService::new(
        app.layer(axum::Extension(Peer(user)))
            .layer(axum::Extension(conn.clone()))
            .layer(axum::middleware::from_fn(
                move |request: Request, next: Next| track(tracked.clone(), request, next),
            )),
    );
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits::HEAD_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits::H2_PING_INTERVAL)
        .keep_alive_timeout(limits::H2_PING_TIMEOUT);
    let serving = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(serving);
    loop {
        let deadline = timeouts.idle_deadline(&activity.borrow_and_update());
        tokio::select! {
            r = serving.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
                return;
            }
            () = shutdown.cancelled() => return,
            () = displaced.cancelled() => {
                tracing::debug!(
                    %peer,
                    "connection without credentials closed to make room for a newer one"
                );
                return;
            }
            changed = activity.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = sleep_until(deadline) => {
                let still = timeouts.idle_deadline(&activity.borrow());
                if still.is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!(%peer, "idle connection closed");
                    serving.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(limits::CLOSE_GRACE, serving.as_mut()).await;
                    return;
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Counts `request` in flight on `conn` until its response is sent (or abandoned).
async fn track(conn: Arc<Connection>, request: Request, next: Next) -> Response {
    let in_flight = conn.request();
    let response = next.run(request).await;
    response.map(|body| {
        Body::new(body.map_frame(move |frame| {
            let _held = &in_flight;
            frame
        }))
    })
}
