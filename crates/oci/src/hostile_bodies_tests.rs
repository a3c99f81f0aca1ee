//! Pulls from the hostile registry's attacks on what a client reads for its caller: an
//! endless token answer and an endless blob error body are cut off after a bounded number
//! of bytes (the process's peak memory barely moves), and the body of an answer reached
//! through a redirect (a loopback service's) never reaches the error message.

use crate::hostile::{Attack, ENDLESS_BOUND, INTERNAL_SECRET};
use crate::hostile_tests::{fixture, refused, short};
use crate::{Error, RegistryAuth};

/// Peak resident memory of this process so far (`VmHWM`), in bytes.
fn peak_resident() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

/// The peak may grow by this much while an attack sends up to [`ENDLESS_BOUND`] (256
/// MiB): room for the other tests of this process, far below what reading the body
/// whole costs.
const GROWTH_ALLOWED: u64 = 64 << 20;

/// Pulls `attack`'s image and says how far the peak memory grew and how many bytes the
/// attack sent.
async fn refused_measured(attack: Attack) -> (Error, u64, u64) {
    let before = peak_resident();
    let (err, f) = refused(attack).await;
    let grown = peak_resident().saturating_sub(before);
    let sent = f.registry.sent(attack);
    eprintln!("{attack:?}: {sent} bytes sent, peak memory grew by {grown} bytes");
    (err, grown, sent)
}

#[tokio::test]
async fn an_endless_token_answer_is_cut_off_at_1_mib() {
    let (err, grown, sent) = refused_measured(Attack::EndlessToken).await;
    assert!(sent > 1 << 20, "the attack sent only {sent} bytes");
    assert!(
        grown < GROWTH_ALLOWED,
        "peak memory grew by {grown} bytes while {sent} (of at most {ENDLESS_BOUND}) were sent"
    );
    assert!(
        matches!(err, Error::TooLarge { ref what, limit } if limit == 1 << 20 && what.contains("token")),
        "{}",
        short(&err)
    );
}

#[tokio::test]
async fn an_endless_blob_error_body_is_read_only_to_16_kib() {
    let (err, grown, sent) = refused_measured(Attack::EndlessBlobError).await;
    assert!(sent > 1 << 20, "the attack sent only {sent} bytes");
    assert!(
        grown < GROWTH_ALLOWED,
        "peak memory grew by {grown} bytes while {sent} (of at most {ENDLESS_BOUND}) were sent"
    );
    let message = err.to_string();
    assert!(message.len() < 2048, "{}", short(&err));
    assert!(
        matches!(err, Error::Registry(_)) && message.contains("500 Internal Server Error"),
        "{}",
        short(&err)
    );
    assert!(!message.contains("after a redirect"), "{}", short(&err));
}

/// `attack` redirects a request to a loopback service answering `status`: the pull fails
/// saying so, and nothing of the service's body is in the message.
async fn redirect_refused(attack: Attack, status: &str) {
    let (err, _f) = refused(attack).await;
    let message = err.to_string();
    assert!(!message.contains(INTERNAL_SECRET), "{}", short(&err));
    assert!(!message.contains("DENIED"), "{}", short(&err));
    assert!(
        matches!(err, Error::Registry(_)) && message.contains(status),
        "{}",
        short(&err)
    );
}

#[tokio::test]
async fn a_token_answer_behind_a_redirect_stays_out_of_the_message() {
    redirect_refused(Attack::RedirectToken, "401 Unauthorized").await;
}

#[tokio::test]
async fn a_manifest_answer_behind_a_redirect_stays_out_of_the_message() {
    redirect_refused(Attack::RedirectManifest, "403 Forbidden").await;
}

#[tokio::test]
async fn a_blob_answer_behind_a_redirect_stays_out_of_the_message() {
    redirect_refused(Attack::RedirectBlob, "500 Internal Server Error").await;
}

/// A guard rather than an attack that failed before (reqwest drops the `Authorization`
/// header on a redirect to another host, and the store sets it per request): a pull
/// secret or token never follows a redirect to the loopback service.
#[tokio::test]
async fn a_redirect_carries_no_credential_to_the_other_address() {
    let f = fixture().await;
    let auth = RegistryAuth::Basic("puller".to_owned(), "pull secret".to_owned());
    for attack in [
        Attack::RedirectToken,
        Attack::RedirectManifest,
        Attack::RedirectBlob,
    ] {
        let err = f
            .store
            .pull(&f.registry.image(attack), &auth)
            .await
            .expect_err("a redirect to an error answer must not pull");
        assert!(
            !err.to_string().contains(INTERNAL_SECRET),
            "{}",
            short(&err)
        );
    }
    let seen = f.registry.internal_requests();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.iter().all(|r| !r.contains("credentials")), "{seen:?}");
}
