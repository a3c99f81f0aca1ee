//! The local cluster's DNS (`hack/cluster up`'s CoreDNS behind the `kube-dns` Service):
//! hand-built queries over UDP and TCP, from the host, to the Service's ClusterIP (which
//! kube-proxy translates to CoreDNS) and to CoreDNS's own address, for the `kubernetes`
//! Service, a Service the test creates in a namespace of its own, a name that does not
//! exist and names outside the cluster's zones (all NXDOMAIN: nothing is forwarded). A
//! few dozen queries, each with a 3 s timeout.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use e2e::{Cluster, cluster_env};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};

/// A socket's time for one query.
const TIMEOUT: Duration = Duration::from_secs(3);
/// How long CoreDNS may take to see a new Service (its watch, then a cached denial of at
/// most 5 s).
const SEE_SERVICE: Duration = Duration::from_secs(90);

const NOERROR: u8 = 0;
const NXDOMAIN: u8 = 3;

#[derive(Clone, Copy, Debug)]
enum Transport {
    Udp,
    Tcp,
}

/// What a server answered: the response code and the A records of the answer section.
#[derive(Debug, PartialEq)]
struct Answer {
    rcode: u8,
    addresses: Vec<Ipv4Addr>,
}

/// A query for the A records of `name`, recursion desired, id `id`.
fn query(id: u16, name: &str) -> anyhow::Result<Vec<u8>> {
    let mut msg = Vec::with_capacity(64);
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    msg.extend_from_slice(&1u16.to_be_bytes()); // one question
    msg.extend_from_slice(&[0; 6]); // no answers, authorities, additionals
    for label in name.trim_end_matches('.').split('.') {
        ensure!(
            !label.is_empty() && label.len() < 64,
            "bad label in {name:?}"
        );
        msg.push(label.len() as u8);
        msg.extend_from_slice(label.as_bytes());
    }
    msg.push(0);
    msg.extend_from_slice(&1u16.to_be_bytes()); // A
    msg.extend_from_slice(&1u16.to_be_bytes()); // IN
    Ok(msg)
}

/// The offset just past the (possibly compressed) name at `at`.
fn skip_name(msg: &[u8], mut at: usize) -> anyhow::Result<usize> {
    loop {
        let len = *msg.get(at).context("name past the end")?;
        match len {
            0 => return Ok(at + 1),
            l if l & 0xC0 == 0xC0 => return Ok(at + 2),
            l if l < 64 => at += 1 + usize::from(l),
            l => bail!("bad label length {l:#x}"),
        }
    }
}

fn u16_at(msg: &[u8], at: usize) -> anyhow::Result<u16> {
    let b = msg.get(at..at + 2).context("message too short")?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

/// The response to query `id`: an authoritative one (every answer of the cluster's DNS
/// is its own, none relayed).
fn parse(id: u16, msg: &[u8]) -> anyhow::Result<Answer> {
    ensure!(u16_at(msg, 0)? == id, "an answer to another query");
    let flags = u16_at(msg, 2)?;
    ensure!(flags & 0x8000 != 0, "not a response");
    ensure!(flags & 0x0400 != 0, "not authoritative");
    ensure!(flags & 0x0200 == 0, "truncated");
    let (questions, answers) = (u16_at(msg, 4)?, u16_at(msg, 6)?);
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(msg, at)? + 4;
    }
    let mut addresses = Vec::new();
    for _ in 0..answers {
        at = skip_name(msg, at)?;
        let (kind, len) = (u16_at(msg, at)?, usize::from(u16_at(msg, at + 8)?));
        let data = msg
            .get(at + 10..at + 10 + len)
            .context("record past the end")?;
        if kind == 1 && len == 4 {
            addresses.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += 10 + len;
    }
    Ok(Answer {
        rcode: (flags & 0x000F) as u8,
        addresses,
    })
}

/// One query for `name` to `server` over `transport`, bounded by [`TIMEOUT`].
fn ask(server: SocketAddr, transport: Transport, name: &str) -> anyhow::Result<Answer> {
    let id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos() as u16;
    let msg = query(id, name)?;
    let mut buf = vec![0u8; 4096];
    match transport {
        Transport::Udp => {
            let sock = UdpSocket::bind("0.0.0.0:0")?;
            sock.set_read_timeout(Some(TIMEOUT))?;
            sock.connect(server)?;
            sock.send(&msg)?;
            let n = sock.recv(&mut buf).context("no UDP answer")?;
            parse(id, &buf[..n])
        }
        Transport::Tcp => {
            let mut s = TcpStream::connect_timeout(&server, TIMEOUT)?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.set_write_timeout(Some(TIMEOUT))?;
            let len = u16::try_from(msg.len())?;
            s.write_all(&[&len.to_be_bytes()[..], &msg].concat())?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len).context("no TCP answer")?;
            let len = usize::from(u16::from_be_bytes(len));
            s.read_exact(&mut buf[..len])?;
            parse(id, &buf[..len])
        }
    }
}

/// [`ask`] on a blocking thread.
async fn ask_async(
    server: SocketAddr,
    transport: Transport,
    name: String,
) -> anyhow::Result<Answer> {
    tokio::task::spawn_blocking(move || ask(server, transport, &name)).await?
}

/// Asks until the answer is `want` or `bound` passed (once a second); the last answer.
async fn ask_until(
    server: SocketAddr,
    transport: Transport,
    name: &str,
    want: &Answer,
    bound: Duration,
) -> anyhow::Result<Answer> {
    let deadline = Instant::now() + bound;
    loop {
        let got = ask_async(server, transport, name.to_owned()).await;
        match got {
            Ok(ref a) if a == want => return got,
            _ if Instant::now() >= deadline => {
                return got.with_context(|| format!("{name} at {server} over {transport:?}"));
            }
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// CoreDNS's address: the one endpoint of the `kube-dns` Service's EndpointSlice.
async fn coredns_addr(cluster: &Cluster) -> anyhow::Result<Ipv4Addr> {
    let slices: Api<EndpointSlice> = Api::namespaced(cluster.client.clone(), "kube-system");
    let list = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=kube-dns"))
        .await?;
    let addrs: Vec<&String> = list
        .items
        .iter()
        .flat_map(|s| {
            s.endpoints
                .iter()
                .flatten()
                .flat_map(|e| e.addresses.iter())
        })
        .collect();
    ensure!(addrs.len() == 1, "kube-dns endpoints: {addrs:?}");
    Ok(addrs[0].parse()?)
}

async fn cluster_ip(api: &Api<Service>, name: &str) -> anyhow::Result<Ipv4Addr> {
    let svc = api.get(name).await?;
    let ip = svc.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
    ip.parse()
        .with_context(|| format!("Service {name}'s ClusterIP {ip:?}"))
}

#[tokio::test]
async fn kube_dns_answers_cluster_names_at_its_cluster_ip_and_coredns_address() -> anyhow::Result<()>
{
    let cluster = Cluster::connect().await?;
    let env = cluster_env()?;
    let cluster_dns: Ipv4Addr = env
        .get("CLUSTER_DNS")
        .context("hack/cluster env prints no CLUSTER_DNS")?
        .parse()?;
    let domain = env
        .get("CLUSTER_DOMAIN")
        .context("hack/cluster env prints no CLUSTER_DOMAIN")?
        .clone();
    assert_eq!(cluster_dns, Ipv4Addr::new(10, 0, 0, 10));
    assert_eq!(domain, "cluster.local");

    // The Service is the one `env` names; its one endpoint is CoreDNS.
    let system: Api<Service> = Api::namespaced(cluster.client.clone(), "kube-system");
    assert_eq!(cluster_ip(&system, "kube-dns").await?, cluster_dns);
    let coredns = coredns_addr(&cluster).await?;
    let default: Api<Service> = Api::namespaced(cluster.client.clone(), "default");
    let kubernetes = cluster_ip(&default, "kubernetes").await?;
    assert_eq!(kubernetes, Ipv4Addr::new(10, 0, 0, 1));

    // A Service of the test's own, in a fresh namespace, deleted whatever the outcome.
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    let ns = e2e::fresh_namespace(&cluster, "e2e-dns").await?;
    let servers = [
        (
            SocketAddr::from((cluster_dns, 53)),
            "the kube-dns ClusterIP",
        ),
        (SocketAddr::from((coredns, 53)), "CoreDNS's address"),
    ];
    let result = lookups(&cluster, &ns, &domain, kubernetes, &servers).await;
    namespaces.delete(&ns, &DeleteParams::default()).await?;
    result
}

/// Creates Service `backend` in `ns`; then asks each server, over UDP and TCP, for the
/// `kubernetes` Service, `backend`, an absent name and names outside the cluster.
async fn lookups(
    cluster: &Cluster,
    ns: &str,
    domain: &str,
    kubernetes: Ipv4Addr,
    servers: &[(SocketAddr, &str)],
) -> anyhow::Result<()> {
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), ns);
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "backend" },
        "spec": { "ports": [{ "name": "http", "port": 80, "protocol": "TCP" }] },
    }))?;
    services.create(&PostParams::default(), &svc).await?;
    let backend = cluster_ip(&services, "backend").await?;

    let found = |ip| Answer {
        rcode: NOERROR,
        addresses: vec![ip],
    };
    let denied = |rcode| Answer {
        rcode,
        addresses: vec![],
    };
    let mut first = true;
    for &(server, what) in servers {
        for transport in [Transport::Udp, Transport::Tcp] {
            let ctx = |name: &str| format!("{name} at {what} ({server}) over {transport:?}");
            let name = format!("kubernetes.default.svc.{domain}");
            let got = ask_async(server, transport, name.clone()).await;
            assert_eq!(
                got.with_context(|| ctx(&name))?,
                found(kubernetes),
                "{}",
                ctx(&name)
            );

            // The first lookup waits for CoreDNS to see the new Service; after it, every
            // server and transport answers at once.
            let name = format!("backend.{ns}.svc.{domain}");
            let bound = if first { SEE_SERVICE } else { TIMEOUT };
            let got = ask_until(server, transport, &name, &found(backend), bound).await?;
            assert_eq!(got, found(backend), "{}", ctx(&name));
            first = false;

            let name = format!("absent.{ns}.svc.{domain}");
            let got = ask_async(server, transport, name.clone()).await;
            assert_eq!(
                got.with_context(|| ctx(&name))?,
                denied(NXDOMAIN),
                "{}",
                ctx(&name)
            );

            // Nothing outside the cluster's zones: no forwarding to the world, and a
            // search list walked to its end (a bare short name) ends on "no such name".
            for name in ["example.com", "backend"] {
                let got = ask_async(server, transport, name.to_owned()).await;
                assert_eq!(
                    got.with_context(|| ctx(name))?,
                    denied(NXDOMAIN),
                    "{}",
                    ctx(name)
                );
            }
        }
    }
    Ok(())
}

#[test]
fn a_query_is_built_and_an_answer_with_compressed_names_parsed() -> anyhow::Result<()> {
    let q = query(0x1234, "a.b")?;
    assert_eq!(
        q,
        [
            0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 1, b'b', 0, 0, 1, 0, 1
        ]
    );
    // The same, answered: one A record whose name points back at the question.
    let mut a = q.clone();
    a[2] = 0x85;
    a[3] = 0x80;
    a[7] = 1;
    a.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 10, 0, 0, 7]);
    assert_eq!(
        parse(0x1234, &a)?,
        Answer {
            rcode: NOERROR,
            addresses: vec![Ipv4Addr::new(10, 0, 0, 7)]
        }
    );
    assert!(parse(0x4321, &a).is_err(), "another query's id");
    assert!(parse(0x1234, &a[..a.len() - 2]).is_err(), "cut short");
    Ok(())
}
