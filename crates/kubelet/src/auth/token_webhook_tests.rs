//! Tests of the gate with bearer-token authentication turned off
//! (`--authentication-token-webhook=false`): a token is no credential and is never sent
//! for review.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::fake::FakeReviewer;
use super::*;

fn fake() -> Arc<FakeReviewer> {
    Arc::new(FakeReviewer::new(&[("alice-token", "alice", &[])], |_| {
        true
    }))
}

fn off(anonymous: bool) -> AuthConfig {
    AuthConfig {
        anonymous,
        token_webhook: false,
        mode: AuthorizationMode::AlwaysAllow,
        ..AuthConfig::default()
    }
}

#[tokio::test]
async fn without_the_token_webhook_a_valid_token_is_401_and_never_reviewed() {
    let fake = fake();
    let gate = Auth::new(off(false), "node-a", fake.clone());
    for header in [
        &b"Bearer alice-token"[..],
        b"Bearer nobody-token",
        b"Bearer \xff",
    ] {
        assert_eq!(
            gate.check(None, Some(header), "GET", "/pods").await,
            Err(Rejection::Unauthorized),
            "{header:?}"
        );
    }
    assert_eq!(fake.token_reviews.load(Ordering::SeqCst), 0);
    // A verified client certificate still authenticates.
    let cert = User {
        name: "kube-apiserver".to_owned(),
        ..User::default()
    };
    let user = gate
        .check(Some(&cert), Some(b"Bearer alice-token"), "GET", "/pods")
        .await
        .expect("the certificate's user");
    assert_eq!(user.name, "kube-apiserver");
}

#[tokio::test]
async fn without_the_token_webhook_a_token_is_anonymous_where_anonymous_is_allowed() {
    let fake = fake();
    let gate = Auth::new(off(true), "node-a", fake.clone());
    let user = gate
        .check(None, Some(b"Bearer alice-token"), "GET", "/pods")
        .await
        .expect("served");
    assert_eq!(user, User::anonymous());
    assert_eq!(fake.token_reviews.load(Ordering::SeqCst), 0);
    // On by default: the same token is alice's.
    let on = Auth::new(
        AuthConfig {
            token_webhook: true,
            ..off(true)
        },
        "node-a",
        fake.clone(),
    );
    let user = on
        .check(None, Some(b"Bearer alice-token"), "GET", "/pods")
        .await
        .expect("served");
    assert_eq!(user.name, "alice");
    assert!(AuthConfig::default().token_webhook);
}
