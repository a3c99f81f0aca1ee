//! One fresh instance per request, for WASI 0.2 components (`wasi:http/incoming-handler@0.2`),
//! as `wasmtime serve` does for them: each in its own store, holding one of the pod's
//! instance slots until it ends (a request that finds none within [`QUEUE_WAIT`] is
//! answered 503), cut alone at its time limit (504).

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use tokio::sync::oneshot;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::{Failure, HttpState, Server, error_code, until};
use crate::pool::QUEUE_WAIT;

impl Server {
    pub(super) async fn fresh(
        self: Arc<Self>,
        pre: &ProxyPre<HttpState>,
        req: hyper::Request<Incoming>,
    ) -> std::result::Result<hyper::Response<HyperOutgoingBody>, Failure> {
        // Held by the instance until it ends, not just until the response is sent.
        let Some(slot) = self.instances.acquire(Some(QUEUE_WAIT)).await else {
            return Err(Failure::Busy(format!(
                "no instance of the pod was free for {QUEUE_WAIT:?} (its share of the \
                 node's instances was in use)"
            )));
        };
        let mut store = self.store().map_err(Failure::Failed)?;
        let (tx, rx) = oneshot::channel();
        let req = req.map(|body| {
            use http_body_util::BodyExt;
            body.map_err(wasmtime_wasi_http::Error::from).boxed_unsync()
        });
        let data = store.data_mut();
        let req = data
            .http()
            .new_incoming_request(Scheme::Http, req)
            .map_err(|e| Failure::Failed(format!("{e:#}")))?;
        let out = data
            .http()
            .new_response_outparam(tx)
            .map_err(|e| Failure::Failed(format!("{e:#}")))?;
        let pre = pre.clone();
        let mut cut = self.cut.subscribe();
        let limit = self.request_timeout;
        let deadline = tokio::time::Instant::now() + limit;
        // The instance runs on as its own task while the response body streams out,
        // until it returns or the server cuts it.
        let meter = self.meter.clone();
        let task = tokio::spawn(async move {
            let _slot = slot;
            let guest = meter.wrap(async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
            });
            let result = tokio::select! {
                r = guest => r,
                () = until(&mut cut, |c| *c) => Err(wasmtime::format_err!("cut by the container's stop")),
                () = tokio::time::sleep_until(deadline) => Err(wasmtime::Error::new(PastTimeLimit(limit))),
            };
            result.map_err(|e| Server::memory_context(&store, e))
        });
        match rx.await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(code)) => Err(Failure::Failed(error_code(&code))),
            // The guest returned or trapped without answering.
            Err(_) => match task.await {
                Ok(Ok(())) => Err(Failure::Failed(
                    "the handler returned without a response".to_owned(),
                )),
                // The node's pool ran out of one kind of slot (other pods hold them).
                Ok(Err(e)) if e.is::<wasmtime::PoolConcurrencyLimitError>() => Err(Failure::Busy(
                    format!("the node's instance pool is full: {e:#}"),
                )),
                Ok(Err(e)) if e.is::<PastTimeLimit>() => Err(Failure::TimedOut(limit)),
                Ok(Err(e)) => Err(Failure::Failed(format!("{e:?}"))),
                Err(e) => Err(Failure::Failed(format!("the instance's task failed: {e}"))),
            },
        }
    }
}

/// A request's instance cut at its time limit.
#[derive(Debug, thiserror::Error)]
#[error("the request took longer than its time limit of {0:?}")]
struct PastTimeLimit(Duration);
