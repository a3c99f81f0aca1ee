//! What failures of the servers come to, as glibc's `getaddrinfo` reports them: servers
//! that all refuse or fail are a temporary failure (`EAI_AGAIN`), and a name asked as it
//! is first (it has `ndots` dots) that gets no answer still goes on to the search list.

use std::net::IpAddr;
use std::time::Instant;

use super::resolver_tests::{BACKEND, SEARCHES, failing, handler, resolver, zone};
use super::test_server::{self, A, over, reply};
use super::{LookupError, LookupErrorKind};

const SERVFAIL: u8 = 2;
const NXDOMAIN: u8 = 3;
const REFUSED: u8 = 5;

#[tokio::test]
async fn servers_that_all_refuse_or_fail_are_a_temporary_failure() {
    for rcodes in [
        [REFUSED, REFUSED],
        [SERVFAIL, SERVFAIL],
        [REFUSED, SERVFAIL],
    ] {
        let servers = test_server::start(rcodes.iter().map(|&r| failing(r)).collect()).await;
        let found = resolver(&servers, &SEARCHES, 5).lookup("backend").await;
        assert_eq!(
            found.map_err(|e| e.kind()),
            Err(LookupErrorKind::TemporaryResolverFailure),
            "{rcodes:?}"
        );
        // Both servers were asked before giving up.
        assert!(servers.iter().all(|s| !s.names(A).is_empty()), "{rcodes:?}");
    }
}

#[tokio::test]
async fn a_name_asked_as_it_is_first_without_an_answer_goes_on_to_the_search_list() {
    // `backend.shop` has ndots:1's dot: asked as it is first, where the server never
    // answers (an outside name its upstream cannot reach); then in the search list.
    let known = "backend.shop.svc.cluster.local";
    let servers = test_server::start(vec![handler(move |q| {
        if !q.name.ends_with(".cluster.local") {
            Vec::new()
        } else if q.name == known {
            zone(known, BACKEND)(q)
        } else {
            vec![over(q, reply(q, NXDOMAIN, false, &[]))]
        }
    })])
    .await;
    let resolver = resolver(&servers, &SEARCHES, 1);
    let started = Instant::now();
    let found = resolver.lookup("backend.shop").await;
    assert_eq!(found, Ok(vec![IpAddr::V4(BACKEND)]));
    assert_eq!(
        servers[0].names(A),
        [
            "backend.shop",
            "backend.shop.shop.svc.cluster.local",
            "backend.shop.svc.cluster.local"
        ]
    );
    // One query's timeout (1 s) for the name as it is, well within the lookup's.
    assert!(started.elapsed().as_secs() < 5, "{:?}", started.elapsed());

    // Nothing in the search list either: the name's own failure is what is reported
    // (the servers could not say), not that the name does not exist.
    let found = resolver.lookup("nothing.shop").await;
    assert_eq!(found, Err(LookupError::Timeout));
    let asked = servers[0].names(A);
    for name in [
        "nothing.shop",
        "nothing.shop.shop.svc.cluster.local",
        "nothing.shop.svc.cluster.local",
        "nothing.shop.cluster.local",
    ] {
        assert!(
            asked.iter().any(|a| a == name),
            "{name} not asked: {asked:?}"
        );
    }
}
