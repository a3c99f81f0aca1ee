//! A DNS server of a test's own, inside the test's network namespace: shared by the
//! runtime's lookup tests (`tests/lookup.rs`) and its outgoing-request unit tests
//! (`src/outgoing_tests.rs`, which include this file by path).

use std::collections::HashMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use network::{Hosts, NetNs, ResolvConf, Resolver};

/// Where the server listens, inside the namespace.
pub const DNS_PORT: u16 = 5353;

/// The resolver of a pod of namespace `shop` as the kubelet composes its DNS, with the
/// hosts entries `hosts`, asking the test's server.
pub fn shop_resolver(hosts: Hosts) -> Resolver {
    let conf = ResolvConf::parse(
        "nameserver 127.0.0.1\n\
         search shop.svc.cluster.local svc.cluster.local cluster.local\n\
         options ndots:5 timeout:2 attempts:2\n",
    )
    .expect("resolv.conf");
    Resolver::new(conf, hosts).with_port(DNS_PORT)
}

/// A DNS server on 127.0.0.1:[`DNS_PORT`] of a namespace that knows the names of its zone
/// (A records; no AAAA), answers NXDOMAIN for any other, and keeps the names asked (a
/// query of another type than A as `NAME type N`).
pub struct DnsServer {
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl DnsServer {
    /// Starts the server of `zone` (names in lower case) in `net`.
    pub async fn start(net: &NetNs, zone: HashMap<&'static str, Vec<Ipv4Addr>>) -> Self {
        let socket = net
            .run(|| UdpSocket::bind((Ipv4Addr::LOCALHOST, DNS_PORT)))
            .await
            .expect("the namespace thread")
            .expect("bind the DNS port");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (asked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some((name, reply)) = answer(&buf[..n], &zone) {
                    a.lock().expect("lock").push(name);
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        Self { asked, stop }
    }

    /// The names asked so far, in order.
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().expect("lock").clone()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The reply to one query, and the name asked (with its type when not A).
fn answer(query: &[u8], zone: &HashMap<&'static str, Vec<Ipv4Addr>>) -> Option<(String, Vec<u8>)> {
    let mut labels = Vec::new();
    let mut at = 12;
    loop {
        let len = usize::from(*query.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).into_owned());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let name = labels.join(".").to_ascii_lowercase();
    let found = zone.get(name.as_str());
    let addresses = match (found, qtype) {
        (Some(ips), 1) => ips.as_slice(),
        _ => &[],
    };
    let mut reply = query.get(..at + 4)?.to_vec();
    // QR, RD copied, RA; NOERROR or NXDOMAIN; the question, then the answers; no
    // authority, no additional.
    reply[2] = 0x80 | (query[2] & 0x01);
    reply[3] = if found.is_some() { 0x80 } else { 0x83 };
    let count = u16::try_from(addresses.len()).ok()?;
    reply[6..8].copy_from_slice(&count.to_be_bytes());
    reply[8..12].fill(0);
    for ip in addresses {
        reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4]);
        reply.extend_from_slice(&ip.octets());
    }
    let asked = if qtype == 1 {
        name
    } else {
        format!("{name} type {qtype}")
    };
    Some((asked, reply))
}
