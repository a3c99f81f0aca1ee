//! Tests of the gate: who is authenticated how, the kubelet's bodies, and the caches.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::fake::FakeReviewer;
use super::*;

fn gate(config: AuthConfig, fake: &Arc<FakeReviewer>) -> Auth {
    Auth::new(config, "node-a", fake.clone())
}

fn alice_may_get_proxy(a: &Access<'_>) -> bool {
    a.user.name == "alice" && a.verb == "get" && a.subresource == Subresource::Proxy
}

fn fake() -> Arc<FakeReviewer> {
    Arc::new(FakeReviewer::new(
        &[
            ("alice-token", "alice", &["team"]),
            ("bob-token", "bob", &[]),
        ],
        alice_may_get_proxy,
    ))
}

const LOGS: &str = "/containerLogs/ns/pod/c";

#[tokio::test]
async fn without_credentials_it_is_401_unless_anonymous_is_allowed() {
    let fake = fake();
    let closed = gate(AuthConfig::default(), &fake);
    for header in [
        None,
        Some(&b"Basic YTpi"[..]),
        Some(b"Bearer "),
        Some(b"Bearer"),
    ] {
        assert_eq!(
            closed.check(None, header, "GET", LOGS).await,
            Err(Rejection::Unauthorized),
            "{header:?}"
        );
    }
    assert_eq!(Rejection::Unauthorized.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(Rejection::Unauthorized.body(), "Unauthorized");

    let open = gate(
        AuthConfig {
            anonymous: true,
            ..AuthConfig::default()
        },
        &fake,
    );
    let refused = open.check(None, None, "GET", "/healthz").await;
    let Err(rejection) = refused else {
        panic!("anonymous has no rights: {refused:?}")
    };
    assert_eq!(rejection.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        rejection.body(),
        "Forbidden (user=system:anonymous, verb=get, resource=nodes, subresource(s)=[healthz proxy])"
    );
}

#[tokio::test]
async fn an_invalid_token_is_401_even_when_anonymous_is_allowed() {
    let fake = fake();
    let open = gate(
        AuthConfig {
            anonymous: true,
            ..AuthConfig::default()
        },
        &fake,
    );
    for header in [
        &b"Bearer nobody-token"[..],
        b"Bearer \xff\xfe",
        &[b"Bearer ", &[b'a'; MAX_TOKEN_BYTES + 1][..]].concat(),
    ] {
        assert_eq!(
            open.check(None, Some(header), "GET", LOGS).await,
            Err(Rejection::Unauthorized)
        );
    }
    // A review that fails is no authentication either.
    fake.failing.store(true, Ordering::SeqCst);
    assert_eq!(
        open.check(None, Some(b"Bearer alice-token"), "GET", LOGS)
            .await,
        Err(Rejection::Unauthorized)
    );
}

#[tokio::test]
async fn a_token_user_is_authorized_by_review_and_forbidden_otherwise() {
    let fake = fake();
    let gate = gate(AuthConfig::default(), &fake);
    let alice = gate
        .check(None, Some(b"bearer  alice-token"), "GET", LOGS)
        .await;
    // Two spaces: the token is empty, as the kubelet splits the header.
    assert_eq!(alice, Err(Rejection::Unauthorized));
    let alice = gate
        .check(None, Some(b" Bearer alice-token "), "GET", LOGS)
        .await
        .expect("alice may get nodes/proxy");
    assert_eq!(alice.name, "alice");
    assert_eq!(alice.groups, ["team", "system:authenticated"]);

    let bob = gate
        .check(None, Some(b"Bearer bob-token"), "GET", LOGS)
        .await;
    let Err(rejection) = bob else {
        panic!("bob has no rights: {bob:?}")
    };
    assert_eq!(
        rejection.body(),
        "Forbidden (user=bob, verb=get, resource=nodes, subresource(s)=[proxy])"
    );
    // Alice may get, not create.
    let post = gate
        .check(None, Some(b"Bearer alice-token"), "POST", "/exec/ns/pod/c")
        .await;
    assert_eq!(
        post.map_err(|r| r.body()),
        Err(
            "Forbidden (user=alice, verb=create, resource=nodes, subresource(s)=[proxy])"
                .to_owned()
        )
    );
    // nodes/proxy also allows the fine-grained paths; not the coarse others.
    assert!(
        gate.check(None, Some(b"Bearer alice-token"), "GET", "/healthz")
            .await
            .is_ok()
    );
    let metrics = gate
        .check(None, Some(b"Bearer alice-token"), "GET", "/metrics")
        .await;
    assert_eq!(
        metrics.map_err(|r| r.body()),
        Err(
            "Forbidden (user=alice, verb=get, resource=nodes, subresource(s)=[metrics])".to_owned()
        )
    );
}

#[tokio::test]
async fn a_certificate_user_is_authorized_with_its_organizations_as_groups() {
    let fake = Arc::new(FakeReviewer::new(&[], |a| {
        a.user.groups == ["kubelet-api-clients", "system:authenticated"] && a.node == "node-a"
    }));
    let gate = gate(AuthConfig::default(), &fake);
    let apiserver = User {
        name: "kube-apiserver-kubelet-client".to_owned(),
        groups: vec!["kubelet-api-clients".to_owned()],
        ..User::default()
    };
    let user = gate
        .check(Some(&apiserver), Some(b"Bearer ignored"), "GET", LOGS)
        .await
        .expect("allowed");
    assert_eq!(user.name, "kube-apiserver-kubelet-client");
    // The certificate wins; the token is not even reviewed.
    assert_eq!(fake.token_reviews.load(Ordering::SeqCst), 0);

    let other_node = User {
        name: "system:node:node-b".to_owned(),
        groups: vec!["system:nodes".to_owned()],
        ..User::default()
    };
    let refused = gate.check(Some(&other_node), None, "GET", LOGS).await;
    assert_eq!(
        refused.map_err(|r| (r.status(), r.body())),
        Err((
            StatusCode::FORBIDDEN,
            "Forbidden (user=system:node:node-b, verb=get, resource=nodes, subresource(s)=[proxy])"
                .to_owned()
        ))
    );
}

#[tokio::test]
async fn a_failed_access_review_is_500_with_the_kubelets_text_and_not_cached() {
    let fake = fake();
    let gate = gate(AuthConfig::default(), &fake);
    let cert = User {
        name: "alice".to_owned(),
        ..User::default()
    };
    fake.failing.store(true, Ordering::SeqCst);
    let failed = gate.check(Some(&cert), None, "GET", "/healthz").await;
    let Err(rejection) = failed else {
        panic!("{failed:?}")
    };
    assert_eq!(rejection.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        rejection.body(),
        "Authorization error (user=alice, verb=get, resource=nodes, subresource=healthz)"
    );
    fake.failing.store(false, Ordering::SeqCst);
    assert!(
        gate.check(Some(&cert), None, "GET", "/healthz")
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn always_allow_skips_reviews_but_not_authentication() {
    let fake = fake();
    let gate = gate(
        AuthConfig {
            mode: AuthorizationMode::AlwaysAllow,
            ..AuthConfig::default()
        },
        &fake,
    );
    assert!(
        gate.check(None, Some(b"Bearer bob-token"), "POST", "/exec/a/b/c")
            .await
            .is_ok()
    );
    assert_eq!(
        gate.check(None, None, "GET", "/metrics").await,
        Err(Rejection::Unauthorized)
    );
    assert_eq!(fake.access_reviews.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn decisions_are_cached_5_min_when_allowed_and_30_s_when_denied() {
    let fake = fake();
    let gate = gate(AuthConfig::default(), &fake);
    let reviews = || fake.access_reviews.load(Ordering::SeqCst);
    let alice = User {
        name: "alice".to_owned(),
        ..User::default()
    };
    let bob = User {
        name: "bob".to_owned(),
        ..User::default()
    };
    assert!(gate.check(Some(&alice), None, "GET", LOGS).await.is_ok());
    assert!(gate.check(Some(&bob), None, "GET", LOGS).await.is_err());
    assert_eq!(reviews(), 2);
    // A change of RBAC is not seen while the decisions are cached...
    fake.set_rule(|a| a.user.name == "bob");
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(gate.check(Some(&alice), None, "GET", LOGS).await.is_ok());
    assert!(gate.check(Some(&bob), None, "GET", LOGS).await.is_err());
    assert_eq!(reviews(), 2);
    // ...the denial expires after 30 s...
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(gate.check(Some(&bob), None, "GET", LOGS).await.is_ok());
    assert!(gate.check(Some(&alice), None, "GET", LOGS).await.is_ok());
    assert_eq!(reviews(), 3);
    // ...the allowance after 5 minutes.
    tokio::time::advance(Duration::from_secs(300 - 31)).await;
    assert!(gate.check(Some(&alice), None, "GET", LOGS).await.is_err());
    assert_eq!(reviews(), 4);
    // Other verbs and subresources are other questions.
    assert!(gate.check(Some(&bob), None, "POST", LOGS).await.is_ok());
    assert_eq!(reviews(), 5);
}

#[tokio::test(start_paused = true)]
async fn token_reviews_are_cached_2_min_valid_or_not() {
    let fake = fake();
    let gate = gate(AuthConfig::default(), &fake);
    let reviews = || fake.token_reviews.load(Ordering::SeqCst);
    for _ in 0..3 {
        assert!(
            gate.check(None, Some(b"Bearer alice-token"), "GET", LOGS)
                .await
                .is_ok()
        );
        assert!(
            gate.check(None, Some(b"Bearer nobody"), "GET", LOGS)
                .await
                .is_err()
        );
    }
    assert_eq!(reviews(), 2);
    tokio::time::advance(Duration::from_secs(119)).await;
    assert!(
        gate.check(None, Some(b"Bearer alice-token"), "GET", LOGS)
            .await
            .is_ok()
    );
    assert_eq!(reviews(), 2);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(
        gate.check(None, Some(b"Bearer alice-token"), "GET", LOGS)
            .await
            .is_ok()
    );
    assert_eq!(reviews(), 3);
}

#[test]
fn authorization_modes_parse_by_the_kubelets_names() {
    assert_eq!("Webhook".parse(), Ok(AuthorizationMode::Webhook));
    assert_eq!("AlwaysAllow".parse(), Ok(AuthorizationMode::AlwaysAllow));
    assert!("webhook".parse::<AuthorizationMode>().is_err());
    assert_eq!(AuthConfig::default().mode, AuthorizationMode::Webhook);
    assert!(!AuthConfig::default().anonymous);
}

/// `n` distinct bearer tokens nobody issued, as an attacker would send them.
fn random_tokens(n: usize) -> Vec<String> {
    use std::hash::BuildHasher;
    let seed = std::hash::RandomState::new();
    (0..n)
        .map(|i| format!("random-{:016x}-{i}", seed.hash_one(i)))
        .collect()
}

fn bearer_header(token: &str) -> Vec<u8> {
    format!("Bearer {token}").into_bytes()
}

/// The attack is capped at 10 000 tokens.
const FLOOD: usize = 10_000;

#[tokio::test(start_paused = true)]
async fn a_flood_of_random_tokens_is_reviewed_once_each_and_evicts_no_valid_user() {
    let fake = fake();
    let gate = gate(AuthConfig::default(), &fake);
    let reviews = || fake.token_reviews.load(Ordering::SeqCst);
    let alice = bearer_header("alice-token");
    assert!(gate.check(None, Some(&alice), "GET", LOGS).await.is_ok());
    let flood = random_tokens(FLOOD);
    for token in &flood {
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            gate.check(None, Some(&bearer_header(token)), "GET", LOGS)
                .await,
            Err(Rejection::Unauthorized)
        );
    }
    assert_eq!(reviews(), 1 + FLOOD);
    // The invalid tokens took no place of a valid one: Alice is not reviewed again.
    assert!(gate.check(None, Some(&alice), "GET", LOGS).await.is_ok());
    assert_eq!(reviews(), 1 + FLOOD, "the flood evicted alice's token");
    // The latest invalid tokens are cached as invalid: sent again, not reviewed again.
    for token in &flood[FLOOD - 1000..] {
        assert!(
            gate.check(None, Some(&bearer_header(token)), "GET", LOGS)
                .await
                .is_err()
        );
    }
    assert_eq!(reviews(), 1 + FLOOD);
    // Both caches stay within their bounds.
    assert_eq!(gate.tokens.cached_len(), (1, tokens::INVALID_ENTRIES));
    assert_eq!(gate.tokens.flights_len(), 0);
}

#[tokio::test(start_paused = true)]
async fn one_token_sent_many_times_at_once_is_reviewed_once() {
    let fake = fake();
    *fake.latency.lock().expect("test") = Duration::from_secs(1);
    let gate = Arc::new(gate(AuthConfig::default(), &fake));
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..200 {
        let gate = gate.clone();
        let valid = i % 2 == 0;
        let token = if valid { "alice-token" } else { "nobody-token" };
        requests.spawn(async move {
            let answer = gate
                .check(None, Some(&bearer_header(token)), "GET", LOGS)
                .await;
            answer.is_ok() == valid
        });
    }
    while let Some(right) = requests.join_next().await {
        assert!(right.expect("test"));
    }
    assert_eq!(fake.token_reviews.load(Ordering::SeqCst), 2);
    assert_eq!(gate.tokens.flights_len(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_request_that_goes_away_hands_its_review_over_or_ends_it() {
    let fake = fake();
    *fake.latency.lock().expect("test") = Duration::from_secs(1);
    let gate = Arc::new(gate(AuthConfig::default(), &fake));
    let ask = |gate: Arc<Auth>, token: &'static str| async move {
        gate.check(None, Some(&bearer_header(token)), "GET", LOGS)
            .await
    };
    // The first request, which runs the review, goes away; the second gets the answer.
    let first = tokio::spawn(ask(gate.clone(), "alice-token"));
    tokio::time::advance(Duration::from_millis(10)).await;
    let second = tokio::spawn(ask(gate.clone(), "alice-token"));
    tokio::task::yield_now().await;
    first.abort();
    assert!(second.await.expect("test").is_ok());
    assert_eq!(gate.tokens.flights_len(), 0);
    // A lone request that goes away leaves nothing behind.
    let lone = tokio::spawn(ask(gate.clone(), "bob-token"));
    tokio::time::advance(Duration::from_millis(10)).await;
    assert_eq!(gate.tokens.flights_len(), 1);
    lone.abort();
    assert!(lone.await.is_err_and(|e| e.is_cancelled()));
    assert_eq!(gate.tokens.flights_len(), 0);
}

#[tokio::test(start_paused = true)]
async fn token_reviews_in_flight_are_bounded_node_wide_and_nobody_waits_forever() {
    let fake = fake();
    let gate = Arc::new(gate(AuthConfig::default(), &fake));
    let alice = bearer_header("alice-token");
    assert!(gate.check(None, Some(&alice), "GET", LOGS).await.is_ok());
    *fake.latency.lock().expect("test") = Duration::from_millis(100);
    let started = tokio::time::Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    for token in random_tokens(FLOOD) {
        let gate = gate.clone();
        requests.spawn(async move {
            gate.check(None, Some(&bearer_header(&token)), "GET", LOGS)
                .await
        });
    }
    // A user whose token is cached is served at once, flood or not.
    tokio::task::yield_now().await;
    assert!(gate.check(None, Some(&alice), "GET", LOGS).await.is_ok());
    assert_eq!(started.elapsed(), Duration::ZERO);
    while let Some(answer) = requests.join_next().await {
        assert_eq!(answer.expect("test"), Err(Rejection::Unauthorized));
    }
    let most = fake.most_in_flight.load(Ordering::SeqCst);
    let reviews = fake.token_reviews.load(Ordering::SeqCst);
    println!(
        "{FLOOD} random tokens at once: {reviews} reviews, at most {most} in flight, all answered within {:?}",
        started.elapsed()
    );
    assert!(
        most <= tokens::IN_FLIGHT,
        "{most} token reviews in flight at once"
    );
    // Whoever waited too long for a turn was answered 401 without a review.
    assert!(started.elapsed() <= tokens::MAX_WAIT + Duration::from_millis(200));
    assert!(reviews < FLOOD);
    assert_eq!(gate.tokens.flights_len(), 0);
}
