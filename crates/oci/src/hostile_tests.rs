//! Pulls from the hostile registry of `tests/support/hostile.rs`: every malformed answer
//! is an error (never a panic, an abort or a stuck pull), and leaves nothing in the store,
//! nothing outside it and no temporary file.

use std::path::PathBuf;
use std::time::Duration;

use crate::hostile::{Attack, GOOD_WASM, HostileRegistry};
use crate::{Error, RegistryAuth, Store, StoreConfig};

const SENTINEL: &[u8] = b"outside the store: never read, written or removed";

/// A store under `base/store`, a sentinel file at `base/sentinel`, and a hostile
/// registry whose traversal digests point at the sentinel.
pub(crate) struct Fixture {
    base: tempfile::TempDir,
    sentinel: PathBuf,
    pub(crate) store: Store,
    pub(crate) registry: HostileRegistry,
}

pub(crate) async fn fixture() -> Fixture {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let base = tempfile::tempdir().expect("tempdir");
    let sentinel = base.path().join("sentinel");
    std::fs::write(&sentinel, SENTINEL).expect("sentinel");
    // From `store/blobs/sha256/`, three levels up is `base`.
    let registry = HostileRegistry::start("../../../sentinel", &sentinel)
        .await
        .expect("hostile registry");
    let store = Store::open_with(
        &base.path().join("store"),
        StoreConfig {
            insecure_registries: vec![registry.addr.clone()],
            // Generous for loopback on a machine busy with the whole suite (2 s of
            // silence cut a 5 MiB manifest there once), short enough for the slow
            // answers to end the test in seconds.
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(5),
            manifest_timeout: Duration::from_secs(10),
            pull_timeout: Duration::from_secs(30),
            ..StoreConfig::default()
        },
    )
    .expect("store");
    Fixture {
        base,
        sentinel,
        store,
        registry,
    }
}

/// The first 1000 characters of `err`'s message, and its length.
pub(crate) fn short(err: &Error) -> String {
    let text = err.to_string();
    let head: String = text.chars().take(1000).collect();
    format!("{head} ({} bytes)", text.len())
}

fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

impl Fixture {
    /// The sentinel is intact, nothing new sits beside the store, and the store holds
    /// no content, no record and no temporary file.
    fn assert_nothing_left(&self) {
        assert_eq!(std::fs::read(&self.sentinel).expect("sentinel"), SENTINEL);
        assert_eq!(entries(self.base.path()), ["sentinel", "store"]);
        let root = self.base.path().join("store");
        assert_eq!(
            entries(&root.join("tmp")),
            Vec::<String>::new(),
            "temp files"
        );
        assert_eq!(entries(&root.join("refs")), Vec::<String>::new(), "records");
        assert_eq!(
            entries(&root.join("blobs/sha256")),
            Vec::<String>::new(),
            "blobs"
        );
    }

    /// Requests the registry saw for `attack`'s repository.
    pub(crate) fn requests(&self, attack: Attack) -> Vec<String> {
        let repo = format!("/v2/hostile/{}/", attack.name());
        self.registry
            .requests()
            .into_iter()
            .filter(|r| r.contains(&repo))
            .collect()
    }
}

/// Pulls `attack`'s image: it must fail, within a minute, leaving nothing behind.
pub(crate) async fn refused(attack: Attack) -> (Error, Fixture) {
    let f = fixture().await;
    let image = f.registry.image(attack);
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        f.store.pull(&image, &RegistryAuth::Anonymous),
    )
    .await
    .unwrap_or_else(|_| panic!("{attack:?}: the pull never ended"));
    let err = result.expect_err("a hostile answer must not pull");
    // Its first characters: an unbounded message could be as large as an endless body.
    eprintln!("{attack:?}: {}", short(&err));
    f.assert_nothing_left();
    assert!(f.store.cached(&image).await.expect("cached").is_none());
    assert!(f.store.images().await.is_empty());
    (err, f)
}

#[tokio::test]
async fn the_hostile_registry_serves_a_good_image_that_pulls() {
    let f = fixture().await;
    let image = f.registry.image(Attack::Good);
    let (pulled, downloaded) = f
        .store
        .pull(&image, &RegistryAuth::Anonymous)
        .await
        .expect("the control image pulls");
    assert!(downloaded);
    let module = f
        .store
        .module(pulled.module_digest.as_str())
        .await
        .expect("module");
    assert_eq!(module.as_ref(), GOOD_WASM);
    assert_eq!(
        entries(&f.base.path().join("store/tmp")),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn a_layer_digest_climbing_out_of_the_store_is_refused_and_cannot_steer_removal() {
    let (err, f) = refused(Attack::TraversalDigest).await;
    assert!(
        matches!(&err, Error::InvalidDigest { digest, .. } if digest == "sha256:../../../sentinel"),
        "{err}"
    );
    assert!(
        f.requests(Attack::TraversalDigest)
            .iter()
            .all(|r| !r.contains("/blobs/"))
    );
    // Image GC hands the store digests: a non-digest removes nothing.
    for bad in [
        "sha256:../../../sentinel",
        "../../../sentinel",
        "sentinel",
        "",
    ] {
        let err = f.store.remove(bad).await.expect_err(bad);
        assert!(matches!(err, Error::InvalidDigest { .. }), "{bad}: {err}");
        let err = f.store.module(bad).await.expect_err(bad);
        assert!(matches!(err, Error::InvalidDigest { .. }), "{bad}: {err}");
    }
    f.assert_nothing_left();
}

#[tokio::test]
async fn an_absolute_path_as_a_layer_digest_is_refused() {
    let (err, f) = refused(Attack::AbsoluteDigest).await;
    assert!(matches!(err, Error::InvalidDigest { .. }), "{err}");
    let absolute = format!("sha256:{}", f.sentinel.display());
    assert!(f.store.remove(&absolute).await.is_err());
    f.assert_nothing_left();
}

#[tokio::test]
async fn an_index_entry_climbing_out_is_refused_before_it_becomes_a_url() {
    let (err, f) = refused(Attack::TraversalIndex).await;
    assert!(matches!(err, Error::InvalidDigest { .. }), "{err}");
    assert_eq!(f.requests(Attack::TraversalIndex).len(), 1, "only the tag");
}

#[tokio::test]
async fn a_huge_declared_size_is_refused_without_downloading() {
    let (err, f) = refused(Attack::HugeDeclaredSize).await;
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    assert!(
        err.to_string().contains(
            "(declared 4611686018427387904 bytes) is larger than the limit of 268435456 bytes"
        ),
        "{err}"
    );
    assert!(
        f.requests(Attack::HugeDeclaredSize)
            .iter()
            .all(|r| !r.contains("/blobs/"))
    );
}

#[tokio::test]
async fn a_blob_larger_than_declared_is_cut_off() {
    let (err, _f) = refused(Attack::LargerThanDeclared).await;
    assert!(
        matches!(err, Error::SizeMismatch { declared: 100, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn an_endless_blob_is_cut_off_at_its_declared_size() {
    let (err, _f) = refused(Attack::EndlessBlob).await;
    assert!(
        matches!(err, Error::SizeMismatch { declared: 1000, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn a_slow_loris_manifest_times_out() {
    let (err, _f) = refused(Attack::SlowLorisManifest).await;
    assert!(matches!(err, Error::Registry(_)), "{err}");
    assert!(err.to_string().contains("timed out"), "{err}");
}

#[tokio::test]
async fn a_slow_loris_blob_times_out() {
    let (err, _f) = refused(Attack::SlowLorisBlob).await;
    assert!(matches!(err, Error::Registry(_)), "{err}");
    assert!(err.to_string().contains("timed out"), "{err}");
}

#[tokio::test]
async fn a_manifest_that_never_ends_reaches_the_manifest_timeout() {
    let (err, _f) = refused(Attack::TrickleManifest).await;
    assert!(
        matches!(err, Error::Timeout { ref what, .. } if what.contains("manifest")),
        "{err}"
    );
}

#[tokio::test]
async fn a_manifest_over_4_mib_is_refused() {
    let (err, _f) = refused(Attack::HugeManifest).await;
    assert!(
        matches!(err, Error::TooLarge { limit, .. } if limit == 4 << 20),
        "{err}"
    );
}

#[tokio::test]
async fn a_manifest_that_never_ends_is_cut_off_at_4_mib() {
    // Sent as fast as the connection takes it: oci-client would read it whole (memory
    // without bound until the 60 s timeout); the store reads it chunk by chunk.
    let started = std::time::Instant::now();
    let (err, _f) = refused(Attack::EndlessManifest).await;
    assert!(
        matches!(err, Error::TooLarge { limit, .. } if limit == 4 << 20),
        "{err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "cut off only after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_blob_that_does_not_match_its_digest_is_refused() {
    let (err, _f) = refused(Attack::WrongDigest).await;
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
}

#[tokio::test]
async fn a_pull_cancelled_mid_download_leaves_no_temporary_file() {
    let f = fixture().await;
    let image = f.registry.image(Attack::SlowLorisBlob);
    let tmp = f.base.path().join("store/tmp");
    let pull = f.store.pull(&image, &RegistryAuth::Anonymous);
    let watch = async {
        // The download has begun once its temporary file exists.
        while entries(&tmp).is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        result = pull => panic!("the pull ended before it was cancelled: {result:?}"),
        () = watch => {}
    }
    f.assert_nothing_left();
}

#[tokio::test]
async fn a_declared_size_over_a_smaller_cap_is_refused() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let base = tempfile::tempdir().expect("tempdir");
    let registry = HostileRegistry::start("x", base.path())
        .await
        .expect("registry");
    let store = Store::open_with(
        &base.path().join("store"),
        StoreConfig {
            insecure_registries: vec![registry.addr.clone()],
            max_blob_size: 4,
            ..StoreConfig::default()
        },
    )
    .expect("store");
    let err = store
        .pull(&registry.image(Attack::Good), &RegistryAuth::Anonymous)
        .await
        .expect_err("8 bytes over a 4-byte cap");
    assert!(matches!(err, Error::TooLarge { limit: 4, .. }), "{err}");
    assert!(registry.requests().iter().all(|r| !r.contains("/blobs/")));
}
