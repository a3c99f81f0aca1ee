//! The listener and its connections: HTTP/1.1, and HTTP/2 with prior knowledge on the
//! same port, each connection one of the pod's connection slots, drained on a stop and
//! cut on a kill.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{Server, until};
use crate::meter::Meter;
use crate::run::{Exit, Stop};

/// Longest a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts on `listener` until stopped, then drains; the run's exit.
pub(crate) async fn run(
    server: Arc<Server>,
    listener: std::net::TcpListener,
    mut stop: watch::Receiver<Stop>,
) -> Exit {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            return Exit::Trap {
                kind: "Host".to_owned(),
                message: format!("cannot serve: {e}"),
            };
        }
    };
    let mut connections = JoinSet::new();
    // Each connection's graceful-shutdown signal.
    let (drain_tx, drain_rx) = watch::channel(false);
    loop {
        let slot = tokio::select! {
            biased;
            () = until(&mut stop, |s| *s != Stop::Run) => break,
            slot = server.connections.acquire(None) => slot,
        };
        let Some(slot) = slot else { break };
        let (stream, peer) = tokio::select! {
            biased;
            () = until(&mut stop, |s| *s != Stop::Run) => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of descriptors, a reset before accept: try the next one.
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        // Responses go out as soon as written: without it, a small write after another
        // waits for the client's delayed ACK (Nagle), a 40 ms stall.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let server = server.clone();
        let mut drain = drain_rx.clone();
        let meter = server.meter.clone();
        connections.spawn(meter.clone().wrap(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, std::convert::Infallible>(server.handle(req, peer).await) }
            });
            let builder = http_builder(&meter);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = until(&mut drain, |d| *d) => {
                    // Finish the request in flight, then close.
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        }));
        // Reap finished connections as we go.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = drain_tx.send(true);
    let killed_now = *stop.borrow() == Stop::Kill;
    let deadline = match *stop.borrow() {
        Stop::Drain(deadline) => Some(deadline),
        _ => None,
    };
    let drained = async { while connections.join_next().await.is_some() {} };
    let killed = async {
        if let Some(d) = deadline {
            tokio::select! {
                () = tokio::time::sleep_until(d.into()) => {}
                () = until(&mut stop, |s| *s == Stop::Kill) => {}
            }
        }
    };
    let exit = tokio::select! {
        biased;
        () = std::future::ready(()), if killed_now => {
            connections.abort_all();
            Exit::Killed
        }
        () = drained => Exit::Code(0),
        () = killed => {
            connections.abort_all();
            Exit::Killed
        }
    };
    // Whatever instance still runs (a response body still being written) stops now.
    server.cut.send_replace(true);
    exit
}

/// How a served connection speaks: HTTP/1.1, or HTTP/2 when the client opens with its
/// preface (prior knowledge, as gRPC clients do), on the same port. The tasks HTTP/2
/// spawns for its streams count as the container's, as the connection's own work does.
fn http_builder(meter: &Meter) -> hyper_util::server::conn::auto::Builder<Metered> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(Metered(meter.clone()));
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        // A client that opens and resets streams at once (the "rapid reset" attack)
        // is cut off after this many not yet accepted.
        .max_pending_accept_reset_streams(Some(MAX_STREAMS as usize / 5))
        .max_header_list_size(HEADER_LIST_BYTES)
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(H2_PING_TIMEOUT);
    builder
}

/// Requests one HTTP/2 connection carries at once.
const MAX_STREAMS: u32 = 100;
/// Largest header block a served request may have, as HTTP/1.1's default read buffer
/// bounds it there.
const HEADER_LIST_BYTES: u32 = 64 << 10;
/// An idle HTTP/2 connection is pinged this often, and closed when a ping goes
/// unanswered this long.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Spawns HTTP/2's stream tasks as the container's metered tasks.
#[derive(Clone)]
struct Metered(Meter);

impl<F> hyper::rt::Executor<F> for Metered
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(self.0.wrap(fut));
    }
}
