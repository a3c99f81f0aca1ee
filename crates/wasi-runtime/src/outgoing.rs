//! Outgoing `wasi:http` requests of a pod: sent from inside the pod's network namespace
//! (the connection's socket is made on the namespace's thread), and only to the hosts
//! the pod may reach. A pod without a network namespace sends nothing.

use std::sync::Arc;

use network::NetNs;
use wasmtime_wasi_http::{Error, RequestOptions, WasiHttpHooks};

/// The send hook of every store of one container.
#[derive(Clone, Default)]
pub struct Outgoing {
    /// The pod's namespace; `None`: every request is refused.
    pub net: Option<Arc<NetNs>>,
    /// Where requests may go; `None`: anywhere the pod's network reaches.
    pub allow: Option<Arc<crate::AllowList>>,
    /// The container's log, for refusals.
    pub log: Option<crate::logs::LogFile>,
    /// The pod's DNS: a plain `http` request to a name goes to the address it gives
    /// (`None`: the host's resolver, in the pod's namespace).
    pub dns: Option<Arc<crate::PodDns>>,
}

type WasiBody = wasmtime_wasi_http::WasiBody;
type Sent = Box<
    dyn Future<
            Output = Result<
                (
                    hyper::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for Outgoing {
    fn send_request(
        &mut self,
        request: hyper::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_error: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Sent {
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
        let dns = self.dns.clone();
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
                let request = match &dns {
                    Some(dns) => to_address(request, dns).await?,
                    None => request,
                };
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

/// A plain `http` request to a name, sent to the first address the pod's DNS gives for
/// it instead (its `Host` header keeps the name, as wasmtime-wasi-http set it from the
/// authority). An `https` request keeps its name: TLS verifies the server by it, and the
/// host's resolver finds it.
async fn to_address(
    mut request: hyper::Request<WasiBody>,
    dns: &crate::PodDns,
) -> Result<hyper::Request<WasiBody>, Error> {
    let uri = request.uri().clone();
    let Some(host) = uri.host() else {
        return Ok(request);
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if uri.scheme_str() != Some("http") || bare.parse::<std::net::IpAddr>().is_ok() {
        return Ok(request);
    }
    let ips = dns.lookup(bare).await.map_err(|code| {
        use wasmtime_wasi::p2::bindings::sockets::network::ErrorCode as Code;
        match code {
            Code::NameUnresolvable => Error::DnsError {
                rcode: Some("NXDOMAIN".to_owned()),
                info_code: None,
            },
            _ => Error::DnsTimeout,
        }
    })?;
    let ip = ips
        .iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| ips.first())
        .copied()
        .ok_or(Error::DestinationNotFound)?;
    let port = uri.port_u16().unwrap_or(80);
    let authority = match ip {
        std::net::IpAddr::V4(v4) => format!("{v4}:{port}"),
        std::net::IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    };
    let mut parts = uri.into_parts();
    parts.authority = Some(
        authority
            .parse()
            .map_err(|_| Error::HttpRequestUriInvalid)?,
    );
    *request.uri_mut() = hyper::Uri::from_parts(parts).map_err(|_| Error::HttpRequestUriInvalid)?;
    Ok(request)
}
