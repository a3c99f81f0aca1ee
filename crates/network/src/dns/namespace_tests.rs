//! The resolver's sockets belong to the namespace of the thread that polls a lookup, not
//! to the one that built the resolver: the same resolver reaches a loopback server from
//! the agent's namespace and finds no route to it from a new pod namespace.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use super::test_server::{self, Rec, over, reply};
use super::{Hosts, LookupError, ResolvConf, Resolver};
use crate::netns::{self, NetNs};

#[tokio::test]
async fn a_lookup_uses_the_namespace_of_the_thread_that_polls_it() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (network namespaces)"
    );
    let ip = Ipv4Addr::new(10, 96, 0, 9);
    let servers = test_server::start(vec![Arc::new(move |q: &test_server::Query| {
        vec![over(q, reply(q, 0, false, &[Rec::A("svc", ip)]))]
    })])
    .await;
    let mut conf = ResolvConf {
        nameservers: test_server::ips(&servers),
        ..ResolvConf::default()
    };
    conf.options.timeout = Duration::from_secs(1);
    let resolver = Arc::new(Resolver::new(conf, Hosts::new()).with_port(servers[0].addr.port()));
    assert_eq!(resolver.lookup("svc").await, Ok(vec![IpAddr::V4(ip)]));

    let dir = tempfile::tempdir().expect("test");
    let path = dir.path().join("pod-dns");
    let ns = NetNs::create(&path).await.expect("test");
    let inside = resolver.clone();
    let found = ns
        .spawn(async move { inside.lookup("svc").await })
        .await
        .expect("test");
    // A new namespace's loopback is down: no route to 127.0.0.1 from there.
    assert!(
        matches!(found, Err(LookupError::Unreachable(_))),
        "{found:?}"
    );
    assert_eq!(servers[0].names(test_server::A), ["svc"]);
    drop(ns);
    netns::remove(&path).expect("test");
}
