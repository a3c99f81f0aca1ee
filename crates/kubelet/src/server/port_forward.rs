//! `/portForward/{namespace}/{pod}[/{uid}]`: what `kubectl port-forward` reaches through
//! the API server. The request is upgraded to SPDY/3.1 with the `portforward.k8s.io`
//! protocol; for each forwarded connection the client opens an error stream and a data
//! stream carrying the same `requestID` and `port` headers. Once both are there, the
//! runtime connects to that port on the pod's own loopback inside its sandbox
//! ([`Runtime::port_forward`](crate::runtime::Runtime::port_forward)) and the bytes are
//! copied both ways; a failure is written to the error stream in the kubelet's words.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use super::limits::Sessions;
use super::spdy::{self, Pending, Session, Stream};
use crate::runtime::Runtime;
use crate::sandboxes::{PodSandbox, SandboxIndex};

/// The one sub-protocol spoken.
pub(crate) const PROTOCOL: &str = "portforward.k8s.io";
const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
const ACCEPTED_HEADER: &str = "x-accepted-stream-protocol-versions";

/// The kubelet's `streamIdleTimeout` default: a connection with no frame either way for
/// this long is closed.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(4 * 3600);
/// The kubelet's `streamCreationTimeout` default: how long the second stream of a pair
/// may take to come.
pub(crate) const PAIR_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections forwarded at once over one upgraded connection.
const MAX_FORWARDS: usize = 64;
/// Requests waiting for the other stream of their pair.
const MAX_PENDING_PAIRS: usize = 64;
/// How long connecting to the pod's port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handler needs: the node's sandboxes and the runtime that reaches into them.
#[derive(Clone)]
pub(crate) struct Forwarder {
    pub sandboxes: SandboxIndex,
    pub runtime: Arc<dyn Runtime>,
    /// How long the second stream of a pair may take ([`PAIR_TIMEOUT`]).
    pub pair_timeout: Duration,
    /// The sessions open: each holds a place until it ends.
    pub sessions: Arc<Sessions>,
}

/// `/portForward/{namespace}/{pod}`.
pub(crate) async fn by_name(
    State(f): State<Forwarder>,
    Path((namespace, pod)): Path<(String, String)>,
    request: Request,
) -> Response {
    serve(f, &namespace, &pod, None, request)
}

/// `/portForward/{namespace}/{pod}/{uid}`.
pub(crate) async fn by_uid(
    State(f): State<Forwarder>,
    Path((namespace, pod, uid)): Path<(String, String, String)>,
    request: Request,
) -> Response {
    serve(f, &namespace, &pod, Some(&uid), request)
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut body = msg.into();
    body.push('\n');
    (status, body).into_response()
}

fn serve(
    f: Forwarder,
    namespace: &str,
    name: &str,
    uid: Option<&str>,
    mut request: Request,
) -> Response {
    let Some(sandbox) = f
        .sandboxes
        .get(namespace, name)
        .filter(|s| uid.is_none_or(|u| u == s.uid))
    else {
        return text(StatusCode::NOT_FOUND, "pod does not exist");
    };
    let headers = request.headers();
    if let Err(refusal) = negotiate(headers) {
        return refusal;
    }
    if !is_spdy_upgrade(headers) {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "unable to upgrade: missing upgrade headers in request: Connection {:?}, Upgrade {:?}",
                headers.get(header::CONNECTION),
                headers.get(header::UPGRADE)
            ),
        );
    }
    // The session holds its place from the upgrade until it ends, not only while the
    // request is served.
    let place = match f.sessions.open(&sandbox.uid) {
        Ok(place) => place,
        Err(refused) => {
            tracing::debug!(%namespace, pod = %name, "port-forward refused: {refused}");
            return text(StatusCode::TOO_MANY_REQUESTS, refused.to_string());
        }
    };
    let upgrade = hyper::upgrade::on(&mut request);
    let pod = format!("{namespace}/{name}");
    tokio::spawn(async move {
        let _place = place;
        match upgrade.await {
            Ok(io) => run(f, sandbox, pod, TokioIo::new(io)).await,
            Err(e) => tracing::debug!(error = %e, "port-forward upgrade failed"),
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static(spdy::UPGRADE));
    h.insert(PROTOCOL_HEADER, HeaderValue::from_static(PROTOCOL));
    response
}

/// The sub-protocol handshake (`X-Stream-Protocol-Version`), answered as the kubelet
/// answers it.
#[allow(clippy::result_large_err, reason = "the error is the response itself")]
fn negotiate(headers: &HeaderMap) -> Result<(), Response> {
    let values: Vec<&str> = headers
        .get_all(PROTOCOL_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if values.is_empty() {
        return Err(text(
            StatusCode::BAD_REQUEST,
            format!(
                "unable to upgrade: header X-Stream-Protocol-Version does not exist in request with {} headers",
                headers.len()
            ),
        ));
    }
    let offered: Vec<&str> = values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if offered.contains(&PROTOCOL) {
        return Ok(());
    }
    let mut refusal = text(
        StatusCode::FORBIDDEN,
        format!(
            "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts [{PROTOCOL:?}]"
        ),
    );
    refusal
        .headers_mut()
        .insert(ACCEPTED_HEADER, HeaderValue::from_static(PROTOCOL));
    Err(refusal)
}

fn is_spdy_upgrade(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains(&token.to_ascii_lowercase()))
        })
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, spdy::UPGRADE)
}

/// Which stream of a pair a stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Error,
    Data,
}

/// What a stream's headers say, checked as the kubelet checks them.
#[derive(Debug, PartialEq, Eq)]
struct StreamRequest {
    kind: Kind,
    port: u16,
    request_id: String,
}

fn parse(headers: &spdy::Headers, stream_id: u32) -> Result<StreamRequest, String> {
    let port = headers.get("port").ok_or("\"port\" header is required")?;
    let port = port
        .parse::<u16>()
        .map_err(|e| format!("unable to parse {port:?} as a port: {e}"))?;
    if port == 0 {
        return Err("port \"0\" must be > 0".to_owned());
    }
    let kind = match headers.get("streamtype") {
        Some("error") => Kind::Error,
        Some("data") => Kind::Data,
        Some(other) => return Err(format!("invalid stream type {other:?}")),
        None => return Err("\"streamType\" header is required".to_owned()),
    };
    // Clients before requestID paired an error stream with the data stream after it.
    let request_id = match headers.get("requestid") {
        Some(id) if !id.is_empty() && id.len() <= 64 => id.to_owned(),
        Some(_) => return Err("invalid requestID".to_owned()),
        None => match kind {
            Kind::Error => stream_id.to_string(),
            Kind::Data => stream_id.saturating_sub(2).to_string(),
        },
    };
    Ok(StreamRequest {
        kind,
        port,
        request_id,
    })
}

/// The two streams of one forwarded connection, as they come.
struct Pair {
    port: u16,
    data: Option<Stream>,
    error: Option<Stream>,
    deadline: tokio::time::Instant,
}

/// Serves one upgraded connection until the client closes it.
async fn run<IO>(f: Forwarder, sandbox: PodSandbox, pod: String, io: IO)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let mut session = match Session::new(io, IDLE_TIMEOUT) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start a SPDY session");
            return;
        }
    };
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut forwards = JoinSet::new();
    loop {
        let next_deadline = pairs.values().map(|p| p.deadline).min();
        tokio::select! {
            pending = session.accept() => {
                let Some(pending) = pending else { break };
                let Some((request, stream)) = take(&session, pending).await else { continue };
                add(&f, &sandbox, &pod, &mut pairs, &mut forwards, request, stream).await;
            }
            () = sleep_until(next_deadline) => {
                let now = tokio::time::Instant::now();
                let late: Vec<String> = pairs.iter().filter(|(_, p)| p.deadline <= now).map(|(k, _)| k.clone()).collect();
                for id in late {
                    if let Some(p) = pairs.remove(&id) {
                        fail(p.error.as_ref(), p.data.as_ref(), &format!("request {id}: timed out waiting for streams")).await;
                    }
                }
            }
            Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
        }
    }
    for (id, p) in pairs.drain() {
        fail(
            p.error.as_ref(),
            p.data.as_ref(),
            &format!("request {id}: the connection ended before both streams came"),
        )
        .await;
    }
    // The forwards end as their streams do: the connection is gone or the client closed
    // its halves.
    while forwards.join_next().await.is_some() {}
    session.close().await;
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Checks a new stream's headers: answered and returned when they are right, refused
/// (`RST_STREAM`) otherwise.
async fn take(session: &Session, pending: Pending) -> Option<(StreamRequest, Stream)> {
    match parse(pending.headers(), pending.id()) {
        Ok(request) => session.reply(pending).await.ok().map(|s| (request, s)),
        Err(e) => {
            tracing::debug!(error = %e, "port-forward stream refused");
            session.refuse(pending, spdy::status::CANCEL).await;
            None
        }
    }
}

async fn add(
    f: &Forwarder,
    sandbox: &PodSandbox,
    pod: &str,
    pairs: &mut HashMap<String, Pair>,
    forwards: &mut JoinSet<()>,
    request: StreamRequest,
    stream: Stream,
) {
    let id = request.request_id.clone();
    if !pairs.contains_key(&id) && pairs.len() >= MAX_PENDING_PAIRS {
        fail_one(request.kind, &stream, &format!("error processing stream for request {id}: too many requests waiting for their streams")).await;
        return;
    }
    let pair = pairs.entry(id.clone()).or_insert_with(|| Pair {
        port: request.port,
        data: None,
        error: None,
        deadline: tokio::time::Instant::now() + f.pair_timeout,
    });
    let slot = match request.kind {
        Kind::Error => &mut pair.error,
        Kind::Data => &mut pair.data,
    };
    if slot.is_some() {
        let what = if request.kind == Kind::Error {
            "error"
        } else {
            "data"
        };
        fail_one(
            request.kind,
            &stream,
            &format!("error processing stream for request {id}: {what} stream already assigned"),
        )
        .await;
        return;
    }
    *slot = Some(stream);
    if pair.data.is_none() || pair.error.is_none() {
        return;
    }
    let Some(Pair {
        port,
        data: Some(data),
        error: Some(error),
        ..
    }) = pairs.remove(&id)
    else {
        return;
    };
    if forwards.len() >= MAX_FORWARDS {
        fail(Some(&error), Some(&data), &format!("error forwarding port {port} to pod {pod}, uid {}: too many connections forwarded at once", sandbox.uid)).await;
        return;
    }
    forwards.spawn(forward(
        f.runtime.clone(),
        sandbox.clone(),
        pod.to_owned(),
        port,
        data,
        error,
    ));
}

/// Writes `msg` to the error stream, if there is one, and ends both streams.
async fn fail(error: Option<&Stream>, data: Option<&Stream>, msg: &str) {
    tracing::debug!("port-forward: {msg}");
    if let Some(e) = error {
        let _ = e.out.send(Bytes::from(msg.to_owned())).await;
        e.out.finish().await;
    }
    if let Some(d) = data {
        d.out.finish().await;
    }
}

/// [`fail`] for a stream without its pair.
async fn fail_one(kind: Kind, stream: &Stream, msg: &str) {
    match kind {
        Kind::Error => fail(Some(stream), None, msg).await,
        Kind::Data => fail(None, Some(stream), msg).await,
    }
}

/// One forwarded connection: the pod's port to the data stream and back.
async fn forward(
    runtime: Arc<dyn Runtime>,
    sandbox: PodSandbox,
    pod: String,
    port: u16,
    data: Stream,
    error: Stream,
) {
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, runtime.port_forward(&sandbox.id, port))
        .await
        .unwrap_or_else(|_| Err(format!("connecting timed out after {CONNECT_TIMEOUT:?}")));
    let conn = match connected {
        Ok(conn) => conn,
        Err(e) => {
            let msg = format!(
                "error forwarding port {port} to pod {pod}, uid {}: {e}",
                sandbox.uid
            );
            fail(Some(&error), Some(&data), &msg).await;
            return;
        }
    };
    let _ = conn.set_nodelay(true);
    let (mut from_pod, mut to_pod) = conn.into_split();
    let Stream {
        mut incoming,
        out,
        reset,
        ..
    } = data;
    let upstream = async {
        while let Some(chunk) = incoming.recv().await {
            if to_pod.write_all(&chunk).await.is_err() {
                return;
            }
        }
        // The client finished its half: so does the connection to the pod.
        let _ = to_pod.shutdown().await;
    };
    let downstream = async {
        let mut buf = vec![0u8; spdy::DATA_CHUNK];
        loop {
            match from_pod.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        break;
                    }
                }
            }
        }
        out.finish().await;
    };
    tokio::select! {
        () = reset.cancelled() => {}
        () = error.reset.cancelled() => {}
        ((), ()) = async { tokio::join!(upstream, downstream) } => {}
    }
    error.out.finish().await;
}

#[cfg(test)]
mod tests;
