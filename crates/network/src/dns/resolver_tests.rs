//! The resolver against tiny DNS servers on loopback addresses: search order, failures
//! moving to the next candidate or server, TCP after truncation, spoofed and hostile
//! answers, CNAME chains, hosts entries first.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use super::name::{candidates, check};
use super::test_server::{
    self, A, AAAA, Handler, Query, Rec, TestServer, over, reply, reply_ttl, with_soa,
};
use super::{Hosts, LookupError, LookupErrorKind, ResolvConf, Resolver};

const NOERROR: u8 = 0;
const SERVFAIL: u8 = 2;
const NXDOMAIN: u8 = 3;
const REFUSED: u8 = 5;
pub(super) const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 7);
pub(super) const SEARCHES: [&str; 3] = [
    "shop.svc.cluster.local",
    "svc.cluster.local",
    "cluster.local",
];

pub(super) fn handler(f: impl Fn(&Query) -> Vec<Vec<u8>> + Send + Sync + 'static) -> Arc<Handler> {
    Arc::new(f)
}

/// A server that knows `name` (an A record) and answers NXDOMAIN to anything else.
pub(super) fn zone(name: &'static str, ip: Ipv4Addr) -> Arc<Handler> {
    handler(move |q| {
        let packet = match (q.name == name, q.qtype) {
            (true, A) => reply(q, NOERROR, false, &[Rec::A(name, ip)]),
            (true, _) => reply(q, NOERROR, false, &[]),
            (false, _) => reply(q, NXDOMAIN, false, &[]),
        };
        vec![over(q, packet)]
    })
}

fn silent() -> Arc<Handler> {
    handler(|_| Vec::new())
}

/// A server that answers every question with `rcode` (SERVFAIL, REFUSED).
pub(super) fn failing(rcode: u8) -> Arc<Handler> {
    handler(move |q| vec![over(q, reply(q, rcode, false, &[]))])
}

/// A resolver asking `servers`, with `searches`, `ndots`, one attempt of 1 s (answers on
/// loopback come in microseconds; the margin is for a loaded machine).
pub(super) fn resolver(servers: &[TestServer], searches: &[&str], ndots: u8) -> Resolver {
    resolver_with(servers, searches, ndots, Hosts::new())
}

fn resolver_with(servers: &[TestServer], searches: &[&str], ndots: u8, hosts: Hosts) -> Resolver {
    let mut conf = ResolvConf {
        nameservers: test_server::ips(servers),
        ..ResolvConf::default()
    };
    conf.searches = searches.iter().map(|s| (*s).to_owned()).collect();
    conf.options.ndots = ndots;
    conf.options.timeout = Duration::from_secs(1);
    conf.options.attempts = 1;
    Resolver::new(conf, hosts).with_port(servers.first().map_or(53, |s| s.addr.port()))
}

fn full(short: &str) -> Vec<String> {
    SEARCHES.iter().map(|d| format!("{short}.{d}")).collect()
}

#[tokio::test]
async fn a_short_name_tries_the_search_list_in_order_then_stops_at_the_answer() {
    let servers = test_server::start(vec![zone("backend.svc.cluster.local", BACKEND)]).await;
    let found = resolver(&servers, &SEARCHES, 5).lookup("backend").await;
    assert_eq!(found, Ok(vec![IpAddr::V4(BACKEND)]));
    assert_eq!(servers[0].names(A), full("backend")[..2].to_vec());
    assert_eq!(servers[0].names(AAAA), full("backend")[..2].to_vec());
}

#[tokio::test]
async fn a_name_with_enough_dots_is_asked_as_it_is_first_and_nxdomain_moves_on() {
    let servers = test_server::start(vec![zone("nothing", BACKEND)]).await;
    let found = resolver(&servers, &SEARCHES, 1).lookup("example.com").await;
    assert_eq!(found, Err(LookupError::NotFound("example.com".into())));
    assert_eq!(
        found.map_err(|e| e.kind()),
        Err(LookupErrorKind::NameUnresolvable)
    );
    let mut expected = vec!["example.com".to_owned()];
    expected.extend(full("example.com"));
    assert_eq!(servers[0].names(A), expected);
}

#[tokio::test]
async fn below_ndots_the_name_as_it_is_comes_last_and_an_absolute_name_alone() {
    let servers = test_server::start(vec![zone("nothing", BACKEND)]).await;
    let resolver = resolver(&servers, &SEARCHES, 5);
    assert!(resolver.lookup("a.b.c").await.is_err());
    let mut expected = full("a.b.c");
    expected.push("a.b.c".to_owned());
    assert_eq!(servers[0].names(A), expected);
    assert!(resolver.lookup("Web.Example.").await.is_err());
    assert_eq!(
        servers[0].names(A).last().map(String::as_str),
        Some("Web.Example")
    );
    assert_eq!(servers[0].names(A).len(), expected.len() + 1);
}

#[tokio::test]
async fn nodata_moves_to_the_next_candidate() {
    let servers = test_server::start(vec![handler(|q| {
        let records = if q.name == "db.cluster.local" {
            vec![Rec::A("db.cluster.local", BACKEND)]
        } else {
            vec![]
        };
        vec![over(q, reply(q, NOERROR, false, &records))]
    })])
    .await;
    let found = resolver(&servers, &SEARCHES, 5).lookup("db").await;
    assert_eq!(found, Ok(vec![IpAddr::V4(BACKEND)]));
    assert_eq!(servers[0].names(A), full("db"));
}

#[tokio::test]
async fn a_server_that_never_answers_gives_way_to_the_next_after_its_timeout() {
    let servers = test_server::start(vec![silent(), zone("backend", BACKEND)]).await;
    let found = resolver(&servers, &[], 1).lookup("backend").await;
    assert_eq!(found, Ok(vec![IpAddr::V4(BACKEND)]));
    assert_eq!(servers[0].names(A), ["backend"]);
    assert_eq!(servers[1].names(A), ["backend"]);
}

#[tokio::test]
async fn servers_that_never_answer_end_the_search_with_a_temporary_failure() {
    let servers = test_server::start(vec![silent(), silent()]).await;
    let found = resolver(&servers, &SEARCHES, 5).lookup("backend").await;
    assert_eq!(found, Err(LookupError::Timeout));
    assert_eq!(
        found.map_err(|e| e.kind()),
        Err(LookupErrorKind::TemporaryResolverFailure)
    );
    // As glibc's: a candidate that no server answered ends the search.
    assert_eq!(servers[0].names(A), full("backend")[..1].to_vec());
}

#[tokio::test]
async fn servfail_and_refused_move_to_the_next_server() {
    let servers = test_server::start(vec![
        failing(SERVFAIL),
        failing(REFUSED),
        zone("x", BACKEND),
    ])
    .await;
    assert_eq!(
        resolver(&servers, &[], 1).lookup("x").await,
        Ok(vec![IpAddr::V4(BACKEND)])
    );
    let servers = test_server::start(vec![failing(SERVFAIL), failing(REFUSED)]).await;
    let found = resolver(&servers, &[], 1).lookup("x").await;
    assert_eq!(found, Err(LookupError::ServerFailure));
    let servers = test_server::start(vec![failing(REFUSED)]).await;
    let found = resolver(&servers, &[], 1).lookup("x").await;
    assert_eq!(found, Err(LookupError::Refused));
}

#[tokio::test]
async fn a_closed_port_is_unreachable() {
    let servers = test_server::start(vec![silent()]).await;
    let resolver = resolver(&servers, &[], 1);
    let port = servers[0].addr.port();
    drop(servers);
    let found = resolver.with_port(port).lookup("x").await;
    assert!(
        matches!(found, Err(LookupError::Unreachable(_))),
        "{found:?}"
    );
}

#[tokio::test]
async fn a_truncated_answer_is_asked_again_over_tcp() {
    let servers = test_server::start(vec![handler(|q| {
        let packet = match (q.tcp, q.qtype) {
            (false, _) => reply(q, NOERROR, true, &[]),
            (true, A) => reply(q, NOERROR, false, &[Rec::A("big", BACKEND)]),
            (true, _) => reply(q, NOERROR, false, &[Rec::Aaaa("big", Ipv6Addr::LOCALHOST)]),
        };
        vec![over(q, packet)]
    })])
    .await;
    let found = resolver(&servers, &[], 1).lookup("big").await;
    assert_eq!(
        found,
        Ok(vec![IpAddr::V4(BACKEND), IpAddr::V6(Ipv6Addr::LOCALHOST)])
    );
    let transports: Vec<bool> = servers[0]
        .seen()
        .iter()
        .filter(|q| q.qtype == A)
        .map(|q| q.tcp)
        .collect();
    assert_eq!(transports, [false, true]);
}

#[tokio::test]
async fn use_vc_asks_over_tcp_only() {
    let servers = test_server::start(vec![zone("x", BACKEND)]).await;
    let mut resolver = resolver(&servers, &[], 1);
    resolver = Resolver::new(
        ResolvConf::parse(&(resolver.conf().render() + "options use-vc\n")).unwrap_or_default(),
        Hosts::new(),
    )
    .with_port(servers[0].addr.port());
    assert_eq!(resolver.lookup("x").await, Ok(vec![IpAddr::V4(BACKEND)]));
    assert!(servers[0].seen().iter().all(|q| q.tcp));
}

#[tokio::test]
async fn answers_with_another_id_or_question_are_ignored() {
    let servers = test_server::start(vec![handler(|q| {
        let mut spoofed = reply(q, NOERROR, false, &[Rec::A("x", Ipv4Addr::new(6, 6, 6, 6))]);
        spoofed[..2].copy_from_slice(&q.id.wrapping_add(1).to_be_bytes());
        let other = Query {
            name: "y".into(),
            question: [test_server::name_bytes("y"), vec![0, 1, 0, 1]].concat(),
            ..q.clone()
        };
        let wrong_question = reply(
            &other,
            NOERROR,
            false,
            &[Rec::A("y", Ipv4Addr::new(6, 6, 6, 7))],
        );
        vec![
            spoofed,
            wrong_question,
            reply(q, NOERROR, false, &[Rec::A("x", BACKEND)]),
        ]
    })])
    .await;
    assert_eq!(
        resolver(&servers, &[], 1).lookup("x").await,
        Ok(vec![IpAddr::V4(BACKEND)])
    );
}

#[tokio::test]
async fn only_spoofed_answers_end_in_a_timeout() {
    let servers = test_server::start(vec![handler(|q| {
        let mut spoofed = reply(q, NOERROR, false, &[Rec::A("x", Ipv4Addr::new(6, 6, 6, 6))]);
        spoofed[..2].copy_from_slice(&q.id.wrapping_add(1).to_be_bytes());
        vec![spoofed.clone(), spoofed]
    })])
    .await;
    assert_eq!(
        resolver(&servers, &[], 1).lookup("x").await,
        Err(LookupError::Timeout)
    );
}

#[tokio::test]
async fn a_cname_chain_is_followed_to_its_addresses() {
    let chain = [
        Rec::Cname("web", "b.example"),
        Rec::Cname("b.example", "c.example"),
    ];
    let servers = test_server::start(vec![handler(move |q| {
        let mut records = chain.to_vec();
        records.push(match q.qtype {
            A => Rec::A("c.example", BACKEND),
            _ => Rec::Aaaa("c.example", Ipv6Addr::LOCALHOST),
        });
        records.push(Rec::A("elsewhere", Ipv4Addr::new(6, 6, 6, 6)));
        vec![over(q, reply(q, NOERROR, false, &records))]
    })])
    .await;
    let found = resolver(&servers, &[], 1).lookup("web").await;
    assert_eq!(
        found,
        Ok(vec![IpAddr::V4(BACKEND), IpAddr::V6(Ipv6Addr::LOCALHOST)])
    );
}

#[tokio::test]
async fn a_cname_loop_or_a_chain_over_eight_links_finds_nothing() {
    let servers = test_server::start(vec![handler(|q| {
        let records = match q.name.as_str() {
            "loop" => vec![
                Rec::Cname("loop", "l2"),
                Rec::Cname("l2", "loop"),
                Rec::A("l3", BACKEND),
            ],
            _ => {
                let names = ["long", "n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8", "n9"];
                let mut records: Vec<Rec> =
                    names.windows(2).map(|w| Rec::Cname(w[0], w[1])).collect();
                records.push(Rec::A("n9", BACKEND));
                records
            }
        };
        vec![over(q, reply(q, NOERROR, false, &records))]
    })])
    .await;
    let resolver = resolver(&servers, &[], 1);
    assert_eq!(
        resolver.lookup("loop").await,
        Err(LookupError::NotFound("loop".into()))
    );
    assert_eq!(
        resolver.lookup("long").await,
        Err(LookupError::NotFound("long".into()))
    );
}

#[tokio::test]
async fn a_huge_or_garbage_answer_is_bounded_and_ends_the_lookup() {
    let servers = test_server::start(vec![handler(|q| {
        let mut packet = reply(q, NOERROR, false, &[]);
        packet[6..8].copy_from_slice(&u16::MAX.to_be_bytes());
        if q.tcp {
            let mut framed = u16::MAX.to_be_bytes().to_vec();
            framed.extend(packet);
            framed.resize(2 + 65_535, 0xc0);
            return vec![framed];
        }
        packet[2] |= 0x02 * u8::from(q.qtype == AAAA);
        packet.resize(60_000, 0xc0);
        vec![packet]
    })])
    .await;
    let found = resolver(&servers, &[], 1).lookup("x").await;
    assert_eq!(found, Err(LookupError::Refused));
}

#[tokio::test]
async fn hosts_entries_come_first_and_ip_addresses_are_returned_as_they_are() {
    let servers = test_server::start(vec![zone("db", Ipv4Addr::new(6, 6, 6, 6))]).await;
    let mut hosts = Hosts::kubernetes();
    hosts.add(Ipv4Addr::new(10, 1, 1, 1).into(), ["db", "db.local"]);
    let resolver = resolver_with(&servers, &[], 1, hosts);
    let db = vec![IpAddr::V4(Ipv4Addr::new(10, 1, 1, 1))];
    assert_eq!(resolver.lookup("db").await.as_ref(), Ok(&db));
    assert_eq!(resolver.lookup("DB.Local.").await.as_ref(), Ok(&db));
    let localhost = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    assert_eq!(resolver.lookup("localhost").await, Ok(localhost));
    assert_eq!(
        resolver.lookup("10.0.0.1").await,
        Ok(vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))])
    );
    assert_eq!(
        resolver.lookup("::1").await,
        Ok(vec![IpAddr::V6(Ipv6Addr::LOCALHOST)])
    );
    assert!(servers[0].seen().is_empty());
}

#[tokio::test]
async fn invalid_names_are_refused_without_a_query() {
    let servers = test_server::start(vec![zone("x", BACKEND)]).await;
    let resolver = resolver(&servers, &SEARCHES, 5);
    let long_label = "a".repeat(64);
    let long_name = ["a".repeat(63).as_str(); 5].join(".");
    for name in [
        "",
        ".",
        "a..b",
        "bad name",
        "ex@mple",
        "café",
        long_label.as_str(),
        long_name.as_str(),
    ] {
        let found = resolver.lookup(name).await;
        assert_eq!(
            found.map_err(|e| e.kind()),
            Err(LookupErrorKind::InvalidArgument),
            "{name:?}"
        );
    }
    assert!(servers[0].seen().is_empty());
    let empty = Resolver::new(ResolvConf::default(), Hosts::new());
    assert_eq!(empty.lookup("x").await, Err(LookupError::NoNameservers));
}

#[tokio::test]
async fn single_request_asks_a_then_aaaa_and_no_aaaa_asks_a_alone() {
    let servers = test_server::start(vec![zone("x", BACKEND)]).await;
    let mut conf = resolver(&servers, &[], 1).conf().clone();
    conf.options.single_request = true;
    let port = servers[0].addr.port();
    let resolver = Resolver::new(conf.clone(), Hosts::new()).with_port(port);
    assert_eq!(resolver.lookup("x").await, Ok(vec![IpAddr::V4(BACKEND)]));
    let types: Vec<u16> = servers[0].seen().iter().map(|q| q.qtype).collect();
    assert_eq!(types, [A, AAAA]);
    conf.options.no_aaaa = true;
    let resolver = Resolver::new(conf, Hosts::new()).with_port(port);
    assert_eq!(resolver.lookup("x").await, Ok(vec![IpAddr::V4(BACKEND)]));
    assert_eq!(servers[0].seen().len(), 3);
}

#[tokio::test]
async fn rotate_starts_each_lookup_with_the_next_server() {
    let servers = test_server::start(vec![zone("x", BACKEND), zone("x", BACKEND)]).await;
    let conf = resolver(&servers, &[], 1).conf().clone();
    let mut rotating = conf.clone();
    rotating.options.rotate = true;
    let resolver = Resolver::new(rotating, Hosts::new()).with_port(servers[0].addr.port());
    for _ in 0..2 {
        assert_eq!(resolver.lookup("x").await, Ok(vec![IpAddr::V4(BACKEND)]));
    }
    assert_eq!(
        (servers[0].names(A).len(), servers[1].names(A).len()),
        (1, 1)
    );
}

#[tokio::test]
async fn the_cache_keeps_answers_for_their_ttl_and_negative_ones_with_an_soa() {
    let servers = test_server::start(vec![handler(|q| {
        let packet = match q.name.as_str() {
            "kept" => reply_ttl(q, NOERROR, false, &[Rec::A("kept", BACKEND)], 60),
            "ttl0" => reply_ttl(q, NOERROR, false, &[Rec::A("ttl0", BACKEND)], 0),
            "missing" => with_soa(reply(q, NXDOMAIN, false, &[]), 30, 5),
            _ => reply(q, NXDOMAIN, false, &[]),
        };
        vec![over(q, packet)]
    })])
    .await;
    let resolver = resolver(&servers, &[], 1).with_cache(8);
    for name in ["kept", "ttl0", "missing", "no-soa"] {
        for _ in 0..2 {
            let _ = resolver.lookup(name).await;
        }
    }
    assert_eq!(resolver.lookup("KEPT").await, Ok(vec![IpAddr::V4(BACKEND)]));
    let missing = Err(LookupError::NotFound("missing".into()));
    assert_eq!(resolver.lookup("missing").await, missing);
    let asked = servers[0].names(A);
    let times = |name: &str| asked.iter().filter(|n| *n == name).count();
    assert_eq!(
        [
            times("kept"),
            times("ttl0"),
            times("missing"),
            times("no-soa")
        ],
        [1, 2, 1, 2]
    );
}

#[test]
fn candidates_follow_glibc_res_search() {
    let searches: Vec<String> = ["a.b", "c.", ".", ""]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let name = |n| check(n).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(candidates(&name("x"), &searches, 1), ["x.a.b", "x.c", "x"]);
    assert_eq!(
        candidates(&name("x.y"), &searches, 1),
        ["x.y", "x.y.a.b", "x.y.c"]
    );
    assert_eq!(candidates(&name("x.y."), &searches, 1), ["x.y"]);
    let long = ["a".repeat(63).as_str(); 3].join(".");
    let near_limit = vec!["b".repeat(62)];
    assert_eq!(candidates(&name(&long), &near_limit, 5), [long]);
}
