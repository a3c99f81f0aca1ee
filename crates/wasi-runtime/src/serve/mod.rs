//! Serving a `wasi:http` component: a listener in the pod's network namespace,
//! HTTP/1.1 with keep-alive, and the component's instances as `wasmtime serve` makes
//! them: a fresh one for every request of a WASI 0.2 component ([`fresh`]), reused ones
//! answering many requests, several at once, for a WASI 0.3 one ([`reuse`]). Each
//! instance has its own store under epoch preemption and a time limit per request, all
//! of them together within the container's memory limit (an instance that would pass it
//! traps at that growth and its requests are answered 500; the container serves on, as a
//! container whose cgroup's OOM killer ended one of its worker processes). Instances and connections are slots of node-wide budgets shared fairly
//! among the served pods ([`crate::pool`], [`crate::fair`]): each pod has a reserve of
//! both, and at most [`ServingPool::per_pod`](crate::ServingPool::per_pod) instances; a
//! request that finds no instance within [`QUEUE_WAIT`] is answered 503, one that passes
//! its time limit 504 (only its own instance is cut). Request bodies stream into the
//! guest and response bodies out of it. Each request leaves an access log line in the
//! container's log, written within [`crate::logs::HOLD`] of the answer.
//!
//! Stopping: [`crate::Killer::stop`] closes the listener and lets in-flight requests
//! finish within the grace period; [`crate::Killer::kill`] (or the end of the grace)
//! cuts them.

mod fresh;
mod http;
mod reuse;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use tokio::sync::watch;
use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::limits::{Budget, Limits};
use crate::logs::{LogFile, Stream};
use crate::meter::Meter;
use crate::outgoing::Outgoing;
use crate::run::{ContainerSpec, Exit, Stop, preempt, wasi_builder};
use crate::{Engine, Error, Result};

/// Connections one pod serves at once by default; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 1024;

/// Per-store state of one request's instance.
pub(crate) struct HttpState {
    pub(crate) ctx: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) http: WasiHttpCtx,
    pub(crate) outgoing: Outgoing,
    pub(crate) limits: Limits,
}

impl WasiView for HttpState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HttpState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outgoing,
        }
    }
}

/// How a component's instances are made and given requests.
pub(crate) enum Instances {
    /// A fresh one per request (WASI 0.2).
    Fresh(wasmtime_wasi_http::p2::bindings::ProxyPre<HttpState>),
    /// Reused ones (WASI 0.3).
    Reused(Arc<reuse::Workers>),
}

/// What every request's instance is made from.
pub(crate) struct Server {
    pub(crate) engine: wasmtime::Engine,
    pub(crate) kind: Instances,
    /// This pod's share of the node's instances.
    pub(crate) instances: crate::fair::Tenant,
    /// This pod's share of the node's served connections.
    pub(crate) connections: crate::fair::Tenant,
    /// This pod's share of the node's requests in flight: as many as its connections
    /// could carry over HTTP/1.1, however many streams HTTP/2 multiplexes on them.
    pub(crate) requests: crate::fair::Tenant,
    /// Longest one request may take.
    pub(crate) request_timeout: Duration,
    /// A fresh WASI context (argv, env, preopens, the log) per instance.
    pub(crate) wasi: Box<dyn Fn() -> Result<WasiCtx, String> + Send + Sync>,
    pub(crate) outgoing: Outgoing,
    pub(crate) memory_limit: Option<u64>,
    /// The memory of all the node's containers, within the node's limit.
    pub(crate) node_memory: Budget,
    /// The container's accounting, which every request's instance counts into.
    pub(crate) meter: Meter,
    /// Epoch ticks an instance runs before it yields.
    pub(crate) slice: u64,
    pub(crate) store_caps: crate::limits::StoreCaps,
    pub(crate) max_open_handles: usize,
    pub(crate) log: LogFile,
    /// Set when in-flight requests are to be cut (a kill, or the end of the grace).
    pub(crate) cut: watch::Sender<bool>,
}

/// The linker of served components: all of WASI 0.2 (sockets stay denied: each
/// instance's context grants none) and `wasi:http` 0.2; with `p3` (an engine with
/// component-model async) all of WASI 0.3 and `wasi:http` 0.3 too, as `wasmtime serve
/// -Scli` links them (components built with a language runtime import the 0.2 command
/// world beside the 0.3 handler).
pub(crate) fn linker(
    engine: &wasmtime::Engine,
    p3: bool,
) -> Result<wasmtime::component::Linker<HttpState>> {
    let mut linker = wasmtime::component::Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .and_then(|()| wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker))
        .and_then(|()| {
            if p3 {
                wasmtime_wasi::p3::add_to_linker(&mut linker)?;
                wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
            }
            Ok(())
        })
        .map_err(|e| Error::Config(format!("{e:#}")))?;
    Ok(linker)
}

/// Which `wasi:http` handler a component serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Served {
    /// `wasi:http/incoming-handler@0.2`.
    P2,
    /// `wasi:http/handler@0.3`.
    P3,
}

/// Whether a component's binary exports a `wasi:http` handler, and which: it is served,
/// not run. Read from the binary before compiling, to compile it for the engine that
/// serves it; a binary that does not parse is left to the compiler to reject.
pub(crate) fn served(wasm: &[u8]) -> Option<Served> {
    use wasmparser::{Parser, Payload};
    // Nested modules and components have exports of their own: only the outermost
    // component's count.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload {
            Ok(Payload::ModuleSection { .. } | Payload::ComponentSection { .. }) => depth += 1,
            Ok(Payload::End(_)) if depth == 0 => break,
            Ok(Payload::End(_)) => depth -= 1,
            Ok(Payload::ComponentExportSection(exports)) if depth == 0 => {
                for export in exports {
                    match export {
                        Ok(e) if e.name.name.starts_with("wasi:http/incoming-handler@0.2") => {
                            return Some(Served::P2);
                        }
                        Ok(e) if e.name.name.starts_with("wasi:http/handler@0.3") => {
                            return Some(Served::P3);
                        }
                        Ok(_) => {}
                        Err(_) => return None,
                    }
                }
            }
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

/// Why a request got no answer from its instance.
enum Failure {
    /// No instance could be had: the pod's share of the pool stayed taken for
    /// [`QUEUE_WAIT`], or the node's pool is full. Answered 503.
    Busy(String),
    /// The instance failed: instantiation, a trap, an error answer. Answered 500.
    Failed(String),
    /// The request passed its time limit before its response began. Answered 504.
    TimedOut(Duration),
}

impl Engine {
    /// Serves `component` on the container's port in the pod's namespace, on the guest
    /// runtime (the listener is made inside the namespace, then driven from here).
    pub(crate) async fn serve(
        &self,
        spec: &ContainerSpec,
        component: &wasmtime::component::Component,
        stop: watch::Receiver<Stop>,
        count_start: impl FnOnce() + Send + 'static,
        meter: &Meter,
        log: LogFile,
    ) -> Result<tokio::task::JoinHandle<Exit>> {
        let Some(net) = spec.network.clone() else {
            return Err(Error::Instantiate(
                "a wasi:http component is served at its pod's IP, and this pod has no pod \
                 network (hostNetwork, or no CNI network on the node)"
                    .to_owned(),
            ));
        };
        // A WASI 0.3 component, or one the pool could not hold, was compiled for the
        // shared engine.
        let linker = if wasmtime::Engine::same(component.engine(), &self.serving) {
            &self.http_linker
        } else {
            &self.shared_http_linker
        };
        let pre = linker
            .instantiate_pre(component)
            .map_err(|e| Error::Instantiate(format!("{e:#}")))?;
        let kind = match wasmtime_wasi_http::p3::bindings::ServicePre::new(pre.clone()) {
            Ok(p3) => Instances::Reused(Arc::new(reuse::Workers::new(
                p3,
                spec.reuse.over(self.serving_pool.reuse),
                self.serving_pool.per_pod.max(1),
            ))),
            Err(_) => wasmtime_wasi_http::p2::bindings::ProxyPre::new(pre)
                .map(Instances::Fresh)
                .map_err(|e| Error::Instantiate(format!("{e:#}")))?,
        };
        // The preopens are checked once here; each request opens them again.
        drop(wasi_builder(spec, &log)?);
        let port = spec.http_port;
        let listener = net
            .tcp_listener((std::net::Ipv4Addr::UNSPECIFIED, port).into())
            .await
            .map_err(|source| Error::Io {
                what: format!("cannot listen on port {port} in the pod's network"),
                source,
            })?;
        let (for_ctx, log_for_ctx) = (spec.clone(), log.clone());
        let server = Arc::new(Server {
            engine: component.engine().clone(),
            kind,
            instances: self.instance_slots.tenant(),
            connections: self.connection_slots.tenant(),
            requests: self.request_slots.tenant(),
            request_timeout: spec.request_timeout.unwrap_or(self.request_timeout),
            wasi: Box::new(move || {
                wasi_builder(&for_ctx, &log_for_ctx)
                    .map(|mut b| b.build())
                    .map_err(|e| e.to_string())
            }),
            outgoing: Outgoing {
                net: Some(net),
                allow: spec.allowed_outbound.clone().map(Arc::new),
                log: Some(log.clone()),
                dns: spec.dns.clone(),
                tls: Some(self.outgoing_tls.clone()),
            },
            memory_limit: spec.memory_limit,
            node_memory: self.node_memory.clone(),
            meter: meter.clone(),
            slice: spec.cpu.slice_ticks(),
            store_caps: self.store_caps,
            max_open_handles: self.max_open_handles,
            log,
            cut: watch::channel(false).0,
        });
        count_start();
        // The accept loop and each connection's HTTP work count as the container's too.
        Ok(self
            .guest
            .handle()
            .spawn(meter.wrap(http::run(server, listener, stop))))
    }
}

impl Server {
    /// A store for one instance: a fresh WASI context, the container's memory budget,
    /// preemption at the container's slice.
    fn store(&self) -> Result<Store<HttpState>, String> {
        let mut table = ResourceTable::new();
        table.set_max_capacity(self.max_open_handles);
        let state = HttpState {
            ctx: (self.wasi)()?,
            table,
            http: WasiHttpCtx::new(),
            outgoing: self.outgoing.clone(),
            limits: Limits::new(
                Budget::new(self.meter.memory_gauge(), self.memory_limit),
                self.node_memory.clone(),
                self.store_caps,
            ),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        preempt(&mut store, self.slice);
        Ok(store)
    }

    /// `e`, said to come from the container's memory limit when the store was refused
    /// memory.
    fn memory_context(store: &Store<HttpState>, e: wasmtime::Error) -> wasmtime::Error {
        if store.data().limits.refused() {
            e.context(
                "the instance was refused memory: the container's limit bounds all its \
                 instances together",
            )
        } else {
            e
        }
    }

    /// One request: an instance, its response (or 500 when it traps or answers
    /// with an error), and an access log line.
    async fn handle(
        self: Arc<Self>,
        req: hyper::Request<Incoming>,
        peer: SocketAddr,
    ) -> hyper::Response<HyperOutgoingBody> {
        let began = Instant::now();
        let line = format!("{} {} {:?}", req.method(), req.uri(), req.version());
        // Refused at once rather than queued: a waiting request holds its headers.
        let slot = self.requests.try_acquire();
        let response = match (&self.kind, slot) {
            (_, None) => Err(Failure::Busy(
                "the pod's share of the node's requests in flight was taken (HTTP/2 \
                 streams count one each)"
                    .to_owned(),
            )),
            (Instances::Fresh(pre), Some(_slot)) => self.clone().fresh(pre, req).await,
            (Instances::Reused(workers), Some(_slot)) => self.clone().reused(workers, req).await,
        };
        let response = match response {
            Ok(r) => r,
            Err(Failure::Busy(message)) => {
                self.log.record(
                    Stream::Stderr,
                    false,
                    format!("request {line} refused: {message}").as_bytes(),
                );
                let mut r = error_response(503, "no instance free, try again\n");
                r.headers_mut().insert(
                    hyper::header::RETRY_AFTER,
                    hyper::header::HeaderValue::from_static("1"),
                );
                r
            }
            Err(Failure::Failed(message)) => {
                self.log.record(
                    Stream::Stderr,
                    false,
                    format!("request {line} failed: {message}").as_bytes(),
                );
                error_response(500, "internal server error\n")
            }
            Err(Failure::TimedOut(limit)) => {
                self.log.record(
                    Stream::Stderr,
                    false,
                    format!("request {line} cut: it took longer than its time limit of {limit:?}")
                        .as_bytes(),
                );
                error_response(504, "the request took longer than its time limit\n")
            }
        };
        self.log.record_soon(
            Stream::Stdout,
            format!(
                "{peer} \"{line}\" {} {}us",
                response.status().as_u16(),
                began.elapsed().as_micros()
            )
            .as_bytes(),
        );
        response
    }
}

/// Waits until the watched value satisfies `f` (or its sender is gone).
async fn until<T>(rx: &mut watch::Receiver<T>, f: impl FnMut(&T) -> bool) {
    let _ = rx.wait_for(f).await;
}

fn error_code(code: &ErrorCode) -> String {
    format!("the handler answered with an error: {code:?}")
}

fn error_response(status: u16, body: &'static str) -> hyper::Response<HyperOutgoingBody> {
    use http_body_util::BodyExt;
    let body = http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut r = hyper::Response::new(body);
    *r.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r
}

#[cfg(test)]
mod tests {
    use super::{Served, served};

    fn wat(text: &str) -> Vec<u8> {
        wat::parse_str(text).expect("valid wat")
    }

    #[test]
    fn only_the_outermost_components_exports_make_it_served() {
        let served_p2 = wat(r#"(component
            (import "f" (func $f))
            (export "wasi:http/incoming-handler@0.2.12" (func $f)))"#);
        assert_eq!(served(&served_p2), Some(Served::P2));
        let nested = wat(r#"(component
            (import "f" (func $f))
            (component $inner
                (import "g" (func $g))
                (export "wasi:http/incoming-handler@0.2.12" (func $g)))
            (instance (instantiate $inner (with "g" (func $f))))
            (export "run" (func $f)))"#);
        assert_eq!(served(&nested), None);
        let p3 = wat(r#"(component
            (import "f" (func $f))
            (export "wasi:http/handler@0.3.0" (func $f)))"#);
        assert_eq!(served(&p3), Some(Served::P3));
        let other_version = wat(r#"(component
            (import "f" (func $f))
            (export "wasi:http/incoming-handler@0.1.0" (func $f)))"#);
        assert_eq!(served(&other_version), None);
        assert_eq!(served(&wat("(module)")), None);
        assert_eq!(served(b"\0asm\x0d\0\x01\0garbage"), None);
    }
}
