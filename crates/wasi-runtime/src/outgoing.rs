//! Outgoing `wasi:http` requests of a pod: sent from inside the pod's network namespace
//! (the connection's socket is made on the namespace's thread), and only to the hosts
//! the pod may reach. A pod without a network namespace sends nothing. The name in a
//! request of a pod with DNS of its own is resolved by that DNS, for `http` and `https`
//! alike ([`crate::send`]).

use std::sync::Arc;

use network::NetNs;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// The send hook of every store of one container.
#[derive(Clone, Default)]
pub struct Outgoing {
    /// The pod's namespace; `None`: every request is refused.
    pub net: Option<Arc<NetNs>>,
    /// Where requests may go; `None`: anywhere the pod's network reaches.
    pub allow: Option<Arc<crate::AllowList>>,
    /// The container's log, for refusals.
    pub log: Option<crate::logs::LogFile>,
    /// The pod's DNS: a request to a name goes to an address it gives, an `https` one
    /// verified by the name (`None`: the host's resolver, in the pod's namespace).
    pub dns: Option<Arc<crate::PodDns>>,
    /// Whom `https` servers' certificates must chain to, with the pod's DNS (`None`:
    /// webpki's roots, all that wasmtime-wasi-http's sender trusts without it).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// A request on its way: its answer, or the error the guest sees.
type Sending = Box<dyn Future<Output = Result<crate::send::Sent, Error>> + Send>;

impl WasiHttpHooks for Outgoing {
    fn send_request(
        &mut self,
        request: hyper::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_error: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Sending {
        let net = self.net.clone();
        let refused = self.allow.as_ref().and_then(|allow| {
            let uri = request.uri();
            let scheme = uri.scheme_str().unwrap_or("http");
            let host = uri.host().unwrap_or_default();
            let port = uri
                .port_u16()
                .unwrap_or(if scheme == "https" { 443 } else { 80 });
            (!allow.allows(scheme, host, port)).then(|| format!("{scheme}://{host}:{port}"))
        });
        if let (Some(what), Some(allow)) = (&refused, &self.allow) {
            allow.refuse(self.log.as_ref(), what);
        }
        let (dns, tls) = (self.dns.clone(), self.tls.clone());
        Box::new(async move {
            let Some(net) = net else {
                return Err(Error::HttpRequestDenied);
            };
            if refused.is_some() {
                return Err(Error::HttpRequestDenied);
            }
            // Connected (name lookup, socket, TLS) on the namespace's thread; the
            // response streams from wherever the guest reads it.
            net.spawn(async move {
                if let Some(dns) = &dns {
                    return crate::send::send(request, options, dns, tls).await;
                }
                wasmtime_wasi_http::default_send_request(request, options)
                    .await
                    .map(|(resp, io)| {
                        use http_body_util::BodyExt;
                        let resp: hyper::Response<WasiBody> = resp.map(BodyExt::boxed_unsync);
                        let io: Box<dyn Future<Output = Result<(), Error>> + Send> = Box::new(io);
                        (resp, io)
                    })
            })
            .await
            .map_err(|e| Error::InternalError(Some(e.to_string())))?
        })
    }
}
