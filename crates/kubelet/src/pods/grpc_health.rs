//! The gRPC health checking protocol (`grpc.health.v1.Health/Check`) for `grpc` probes:
//! one unary call over HTTP/2 without TLS, as the kubelet makes it, encoded by hand (a
//! request with one string field, a response with one enum field).

use std::net::{IpAddr, SocketAddr};

use bytes::{Buf, Bytes};
use http_body_util::BodyExt;

/// Largest response accepted, in bytes.
const MAX_RESPONSE: usize = 4096;

/// The status names of `HealthCheckResponse.ServingStatus`.
fn status_name(n: u64) -> &'static str {
    match n {
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "UNKNOWN",
    }
}

/// `HealthCheckRequest { service }` in a gRPC message frame.
fn request(service: &str) -> Bytes {
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a);
        varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&msg);
    Bytes::from(frame)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.first()?;
        buf.advance(1);
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The `status` of a `HealthCheckResponse` frame (0, UNKNOWN, when absent).
fn parse_response(frame: &[u8]) -> Option<u64> {
    let (head, rest) = frame.split_at_checked(5)?;
    if head[0] != 0 {
        return None; // compressed: never asked for
    }
    let len = usize::try_from(u32::from_be_bytes([head[1], head[2], head[3], head[4]])).ok()?;
    let mut msg = rest.get(..len)?;
    let mut status = 0;
    while !msg.is_empty() {
        let key = read_varint(&mut msg)?;
        match key & 7 {
            0 => {
                let v = read_varint(&mut msg)?;
                if key >> 3 == 1 {
                    status = v;
                }
            }
            2 => {
                let l = usize::try_from(read_varint(&mut msg)?).ok()?;
                msg = msg.get(l..)?;
            }
            _ => return None,
        }
    }
    Some(status)
}

/// One health check of `service` at `ip:port`.
///
/// # Errors
/// The kubelet's message: a connection that fails, an RPC error, or a status other than
/// `SERVING`.
pub async fn check(ip: IpAddr, port: u16, service: &str) -> Result<(), String> {
    let addr = SocketAddr::new(ip, port);
    let fail = |e: String| format!("failed to connect service \"{addr}\": {e}");
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake::<_, _, http_body_util::Full<Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
    let driver = tokio::spawn(conn);
    let req = hyper::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", "kube-probe/1.36")
        .body(http_body_util::Full::new(request(service)))
        .map_err(|e| e.to_string())?;
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("health rpc failed: {e}"))?;
        let mut body = resp.into_body();
        let mut data = Vec::new();
        let mut grpc_status = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("health rpc failed: {e}"))?;
            if let Some(d) = frame.data_ref() {
                if data.len() + d.len() > MAX_RESPONSE {
                    return Err("health rpc failed: response too large".to_owned());
                }
                data.extend_from_slice(d);
            } else if let Some(t) = frame.trailers_ref() {
                grpc_status = t
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
            }
        }
        match grpc_status.as_deref() {
            Some("0") | None if !data.is_empty() => {}
            Some(code) => return Err(format!("health rpc failed: rpc error: code = {code}")),
            None => return Err("health rpc failed: empty response".to_owned()),
        }
        let status = parse_response(&data).ok_or("health rpc failed: malformed response")?;
        if status == 1 {
            Ok(())
        } else {
            Err(format!(
                "service unhealthy (responded with \"{}\")",
                status_name(status)
            ))
        }
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_encode_and_decode() {
        assert_eq!(&request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(&request("db")[..], &[0, 0, 0, 0, 4, 0x0a, 2, b'd', b'b']);
        assert_eq!(parse_response(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        assert_eq!(parse_response(&[0, 0, 0, 0, 0]), Some(0));
        // An unknown length-delimited field is skipped.
        assert_eq!(
            parse_response(&[0, 0, 0, 0, 5, 0x12, 1, b'x', 0x08, 2]),
            Some(2)
        );
        for bad in [&[0u8, 0, 0][..], &[1, 0, 0, 0, 0], &[0, 0, 0, 0, 9, 0x08]] {
            assert_eq!(parse_response(bad), None, "{bad:?}");
        }
        let mut buf: &[u8] = &[
            0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
        ];
        assert_eq!(
            read_varint(&mut buf),
            None,
            "an over-long varint is refused"
        );
    }
}
