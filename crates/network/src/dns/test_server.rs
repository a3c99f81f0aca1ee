//! A tiny DNS server for the resolver's tests: on a loopback address and port, over UDP
//! and TCP, it records each question and answers as its handler says. Its replies are
//! built here byte by byte, apart from the codec under test.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

pub(super) const A: u16 = 1;
pub(super) const CNAME: u16 = 5;
pub(super) const AAAA: u16 = 28;

/// A question the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Query {
    pub id: u16,
    pub name: String,
    pub qtype: u16,
    pub tcp: bool,
    /// The bytes of the question section (name, type, class), echoed in replies.
    pub question: Vec<u8>,
}

/// An answer record.
#[derive(Debug, Clone)]
pub(super) enum Rec {
    A(&'static str, Ipv4Addr),
    Aaaa(&'static str, Ipv6Addr),
    Cname(&'static str, &'static str),
}

/// What the handler tells the server to send back: each packet in turn, as a datagram,
/// or over TCP as it is (a handler frames it with [`over`]).
pub(super) type Handler = dyn Fn(&Query) -> Vec<Vec<u8>> + Send + Sync;

/// A running server; dropping it stops it.
pub(super) struct TestServer {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Query>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

impl TestServer {
    /// The questions seen so far, in order of arrival.
    pub fn seen(&self) -> Vec<Query> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The names of the A questions seen, in order.
    pub fn names(&self, qtype: u16) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter(|q| q.qtype == qtype)
            .map(|q| q.name)
            .collect()
    }
}

/// Starts one server per handler, on 127.0.0.1, 127.0.0.2, … and one port for all.
pub(super) async fn start(handlers: Vec<Arc<Handler>>) -> Vec<TestServer> {
    for _ in 0..20 {
        if let Ok(servers) = try_start(&handlers).await {
            return servers;
        }
    }
    panic!("no free loopback port for the test DNS servers");
}

async fn try_start(handlers: &[Arc<Handler>]) -> io::Result<Vec<TestServer>> {
    let mut port = 0;
    let mut servers = Vec::new();
    for (i, handler) in handlers.iter().enumerate() {
        let ip = Ipv4Addr::new(127, 0, 0, 1 + i as u8);
        let udp = UdpSocket::bind((ip, port)).await?;
        port = udp.local_addr()?.port();
        let tcp = TcpListener::bind((ip, port)).await?;
        servers.push(serve(udp, tcp, handler.clone())?);
    }
    Ok(servers)
}

fn serve(udp: UdpSocket, tcp: TcpListener, handler: Arc<Handler>) -> io::Result<TestServer> {
    let addr = udp.local_addr()?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let udp_task = tokio::spawn(serve_udp(udp, handler.clone(), seen.clone()));
    let tcp_task = tokio::spawn(serve_tcp(tcp, handler, seen.clone()));
    Ok(TestServer {
        addr,
        seen,
        tasks: vec![udp_task, tcp_task],
    })
}

fn record(seen: &Mutex<Vec<Query>>, query: &Query) {
    if let Ok(mut seen) = seen.lock() {
        seen.push(query.clone());
    }
}

async fn serve_udp(socket: UdpSocket, handler: Arc<Handler>, seen: Arc<Mutex<Vec<Query>>>) {
    let mut buffer = vec![0u8; 65536];
    while let Ok((len, peer)) = socket.recv_from(&mut buffer).await {
        let Some(query) = parse_query(&buffer[..len], false) else {
            continue;
        };
        record(&seen, &query);
        for packet in handler(&query) {
            let _ = socket.send_to(&packet, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, handler: Arc<Handler>, seen: Arc<Mutex<Vec<Query>>>) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let Ok(len) = stream.read_u16().await else {
            continue;
        };
        let mut message = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut message).await.is_err() {
            continue;
        }
        let Some(query) = parse_query(&message, true) else {
            continue;
        };
        record(&seen, &query);
        for packet in handler(&query) {
            let _ = stream.write_all(&packet).await;
        }
    }
}

/// Reads a query: header, then one uncompressed name, type and class.
fn parse_query(packet: &[u8], tcp: bool) -> Option<Query> {
    let id = u16::from_be_bytes([*packet.first()?, *packet.get(1)?]);
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*packet.get(pos)?);
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8(packet.get(pos + 1..pos + 1 + len)?.to_vec()).ok()?);
        pos += 1 + len;
    }
    let qtype = u16::from_be_bytes([*packet.get(pos + 1)?, *packet.get(pos + 2)?]);
    let question = packet.get(12..pos + 5)?.to_vec();
    Some(Query {
        id,
        name: labels.join("."),
        qtype,
        tcp,
        question,
    })
}

/// A reply to `query` with `rcode`, the TC bit when `truncated`, and `records` of TTL
/// 60; an owner equal to the question's name is written as a pointer to it.
pub(super) fn reply(query: &Query, rcode: u8, truncated: bool, records: &[Rec]) -> Vec<u8> {
    reply_ttl(query, rcode, truncated, records, 60)
}

/// [`reply`] with records of TTL `ttl`.
pub(super) fn reply_ttl(
    query: &Query,
    rcode: u8,
    truncated: bool,
    records: &[Rec],
    ttl: u32,
) -> Vec<u8> {
    let flags: u16 = 0x8180 | u16::from(rcode) | if truncated { 0x0200 } else { 0 };
    let mut out = Vec::new();
    for field in [query.id, flags, 1, records.len() as u16, 0, 0] {
        out.extend_from_slice(&field.to_be_bytes());
    }
    out.extend_from_slice(&query.question);
    for rec in records {
        push_record(&mut out, query, rec, ttl);
    }
    out
}

/// `packet` with the SOA of `cluster.local` (TTL `ttl`, negative TTL `minimum`) added to
/// its authority section.
pub(super) fn with_soa(mut packet: Vec<u8>, ttl: u32, minimum: u32) -> Vec<u8> {
    let count = u16::from_be_bytes([packet[8], packet[9]]) + 1;
    packet[8..10].copy_from_slice(&count.to_be_bytes());
    let mut data = [
        name_bytes("ns.dns.cluster.local"),
        name_bytes("hostmaster.cluster.local"),
    ]
    .concat();
    for field in [1, 7200, 1800, 86400, minimum] {
        data.extend_from_slice(&u32::to_be_bytes(field));
    }
    packet.extend_from_slice(&name_bytes("cluster.local"));
    packet.extend_from_slice(&[0, 6, 0, 1]);
    packet.extend_from_slice(&ttl.to_be_bytes());
    packet.extend_from_slice(&(data.len() as u16).to_be_bytes());
    packet.extend_from_slice(&data);
    packet
}

fn push_record(out: &mut Vec<u8>, query: &Query, rec: &Rec, ttl: u32) {
    let (owner, rtype, data) = match rec {
        Rec::A(owner, ip) => (*owner, A, ip.octets().to_vec()),
        Rec::Aaaa(owner, ip) => (*owner, AAAA, ip.octets().to_vec()),
        Rec::Cname(owner, target) => (*owner, CNAME, name_bytes(target)),
    };
    if owner.eq_ignore_ascii_case(&query.name) {
        out.extend_from_slice(&[0xc0, 12]);
    } else {
        out.extend_from_slice(&name_bytes(owner));
    }
    out.extend_from_slice(&[(rtype >> 8) as u8, rtype as u8, 0, 1]);
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(&data);
}

/// `name` in uncompressed wire form.
pub(super) fn name_bytes(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

/// `packet` with the 2-byte length prefix of DNS over TCP.
pub(super) fn framed(packet: Vec<u8>) -> Vec<u8> {
    let mut out = (packet.len() as u16).to_be_bytes().to_vec();
    out.extend(packet);
    out
}

/// `packet` as sent in answer to `query`: framed over TCP, as it is over UDP.
pub(super) fn over(query: &Query, packet: Vec<u8>) -> Vec<u8> {
    if query.tcp { framed(packet) } else { packet }
}

/// The addresses of the loopback servers, for a resolv.conf.
pub(super) fn ips(servers: &[TestServer]) -> Vec<IpAddr> {
    servers.iter().map(|s| s.addr.ip()).collect()
}
