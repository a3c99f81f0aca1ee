//! Tests of the store: layouts, records, removal, crash leftovers.

use super::*;
use crate::WASM_CONFIG_TYPE;
use crate::records::is_ref_key;

fn sha256(data: &[u8]) -> String {
    Digest::of(Algorithm::Sha256, data).to_string()
}

/// An empty store (and the directory it lives in, removed on drop).
fn store() -> (tempfile::TempDir, Store) {
    // The registry client needs a TLS provider even when it never connects.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root = tempfile::tempdir().expect("tempdir");
    let store = Store::open(root.path(), &[]).expect("store");
    (root, store)
}

/// Writes `data` as a blob of the layout at `dir`; returns its descriptor fields.
fn blob(dir: &Path, data: &[u8]) -> (String, usize) {
    let digest = sha256(data);
    let path = dir.join("blobs/sha256").join(&digest[7..]);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, data).expect("write");
    (digest, data.len())
}

fn manifest(dir: &Path, wasm: &[u8], layer_type: &str) -> (String, usize) {
    let (config, config_size) = blob(dir, b"{}");
    let (layer, layer_size) = blob(dir, wasm);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": WASM_CONFIG_TYPE, "digest": config, "size": config_size },
        "layers": [{ "mediaType": layer_type, "digest": layer, "size": layer_size }]
    });
    blob(dir, manifest.to_string().as_bytes())
}

#[tokio::test]
async fn an_image_layout_imports_and_the_store_lists_measures_and_removes() {
    let layout = tempfile::tempdir().expect("tempdir");
    let wasm = b"\0asm\x01\0\0\0".to_vec();
    let (app, app_size) = manifest(layout.path(), &wasm, "application/wasm");
    let (container, container_size) = manifest(
        layout.path(),
        b"not wasm",
        "application/vnd.oci.image.layer.v1.tar+gzip",
    );
    // A multi-platform index whose wasm entry is `app`.
    let multi = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": container,
              "size": container_size, "platform": { "os": "linux", "architecture": "amd64" } },
            { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": app,
              "size": app_size, "platform": { "os": "wasip1", "architecture": "wasm" } }
        ]
    });
    let (multi, multi_size) = blob(layout.path(), multi.to_string().as_bytes());
    let entry = |digest: &str, size: usize, media: &str, name: &str| {
        serde_json::json!({ "mediaType": media, "digest": digest, "size": size,
            "annotations": { "org.opencontainers.image.ref.name": name } })
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [
            entry(&app, app_size, "application/vnd.oci.image.manifest.v1+json", "example.com/app:v1"),
            entry(&multi, multi_size, "application/vnd.oci.image.index.v1+json", "example.com/multi:v1"),
            entry(&app, app_size, "application/vnd.oci.image.manifest.v1+json", "v1"),
        ]
    });
    std::fs::write(layout.path().join("index.json"), index.to_string()).expect("index");

    let store = store();
    let store = &store.1;
    let imported = store.import_layout(layout.path()).await.expect("import");
    let names: Vec<&str> = imported.iter().map(|i| i.reference.as_str()).collect();
    assert_eq!(names, ["example.com/app:v1", "example.com/multi:v1"]);
    assert_eq!(imported[0].image_id, format!("example.com/app@{app}"));
    assert_eq!(imported[1].image_id, format!("example.com/multi@{multi}"));
    assert_eq!(imported[1].module_digest.to_string(), sha256(&wasm));
    let cached = store.cached("example.com/multi:v1").await.expect("cached");
    assert_eq!(
        cached.map(|i| i.module_digest.to_string()),
        Some(sha256(&wasm))
    );
    assert_eq!(
        store.module(&sha256(&wasm)).await.expect("module").as_ref(),
        wasm.as_slice()
    );
    assert_eq!(store.images().await.len(), 2);
    assert_eq!(store.usage().await, wasm.len() as u64);

    assert_eq!(
        store.remove(&sha256(&wasm)).await.expect("remove"),
        wasm.len() as u64
    );
    assert!(store.images().await.is_empty());
    assert_eq!(store.usage().await, 0);
    assert!(
        store
            .cached("example.com/app:v1")
            .await
            .expect("cached")
            .is_none()
    );
}

#[test]
fn a_write_a_crash_interrupted_is_dropped_when_the_store_opens() {
    let root = tempfile::tempdir().expect("tempdir");
    let _ = rustls::crypto::ring::default_provider().install_default();
    drop(Store::open(root.path(), &[]).expect("store"));
    let torn = root.path().join("blobs/sha256/abc.tmp42");
    std::fs::write(&torn, b"half").expect("write");
    let kept = root.path().join("blobs/sha256/def");
    std::fs::write(&kept, b"whole").expect("write");
    drop(Store::open(root.path(), &[]).expect("store"));
    assert!(!torn.exists());
    assert!(kept.exists());
}

#[tokio::test]
async fn a_layout_entry_that_is_not_wasm_is_refused() {
    let layout = tempfile::tempdir().expect("tempdir");
    let (container, size) = manifest(
        layout.path(),
        b"layer",
        "application/vnd.oci.image.layer.v1.tar+gzip",
    );
    let index = serde_json::json!({ "schemaVersion": 2, "manifests": [
        { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": container, "size": size,
          "annotations": { "org.opencontainers.image.ref.name": "example.com/nginx:1" } }
    ]});
    std::fs::write(layout.path().join("index.json"), index.to_string()).expect("index");
    let store = store();
    let store = &store.1;
    let err = store
        .import_layout(layout.path())
        .await
        .expect_err("not wasm");
    assert!(
        err.to_string().contains("is not a wasm artifact: its layers are [\"application/vnd.oci.image.layer.v1.tar+gzip\"]"),
        "{err}"
    );
}

/// Puts `wasm` in the store as the content of `reference`, as a pull would.
async fn put(store: &Store, reference: &str, wasm: &[u8]) -> Image {
    let digest = Digest::of(Algorithm::Sha256, wasm);
    let path = store.blob_path(&digest);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, wasm).expect("blob");
    let parsed = parse(reference).expect("reference");
    let image = Image {
        reference: parsed.whole(),
        image_id: format!("{}@{digest}", parsed.repository()),
        module_digest: digest,
        size: wasm.len() as u64,
        credentials: Vec::new(),
    };
    store.record(&parsed, &image).await.expect("record");
    image
}

#[tokio::test]
async fn references_that_escaped_alike_keep_their_own_records() {
    let (_root, store) = store();
    // The earlier scheme wrote both as `example.com_team_app_web_v1.json`.
    let a = put(&store, "example.com/team_app/web:v1", b"tenant a").await;
    let b = put(&store, "example.com/team/app_web:v1", b"tenant b").await;
    let c = put(&store, "example.com/team/app/web:v1", b"tenant c").await;
    for image in [&a, &b, &c] {
        let cached = store.cached(&image.reference).await.expect("cached");
        assert_eq!(cached.as_ref(), Some(image));
    }
    assert_eq!(store.images().await.len(), 3);
}

#[tokio::test]
async fn a_record_under_another_reference_s_name_is_not_served() {
    let (root, store) = store();
    let a = put(&store, "example.com/a:v1", b"a").await;
    // A record copied (or planted) under b's name still says it is a's.
    let a_path = store.ref_path(&parse(&a.reference).expect("a"));
    let b_path = store.ref_path(&parse("example.com/b:v1").expect("b"));
    std::fs::copy(&a_path, &b_path).expect("copy");
    assert_eq!(
        store.cached("example.com/b:v1").await.expect("cached"),
        None
    );
    assert_eq!(store.images().await, [a]);
    drop(root);
}

#[tokio::test]
async fn records_of_the_earlier_naming_scheme_are_migrated_at_open() {
    let root = tempfile::tempdir().expect("tempdir");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store = Store::open(root.path(), &[]).expect("store");
    let wasm = b"\0asm\x01\0\0\0";
    let image = put(&store, "example.com/app:v1", wasm).await;
    drop(store);
    // As the earlier version left it: the record under the escaped reference, plus a
    // record whose digest climbs out of the store.
    let refs = root.path().join("refs");
    for entry in std::fs::read_dir(&refs).expect("refs").flatten() {
        std::fs::remove_file(entry.path()).expect("rm");
    }
    std::fs::write(
        refs.join("example.com_app_v1.json"),
        serde_json::to_vec(&image).expect("json"),
    )
    .expect("old record");
    let mut planted = serde_json::to_value(&image).expect("json");
    planted["reference"] = "example.com/evil:v1".into();
    planted["module_digest"] = "sha256:../../../etc/passwd".into();
    std::fs::write(refs.join("example.com_evil_v1.json"), planted.to_string()).expect("evil");

    let store = Store::open(root.path(), &[]).expect("store");
    assert_eq!(
        store.cached("example.com/app:v1").await.expect("cached"),
        Some(image.clone())
    );
    assert_eq!(
        store.cached("example.com/evil:v1").await.expect("cached"),
        None
    );
    assert_eq!(store.images().await, [image]);
    let names: Vec<String> = std::fs::read_dir(&refs)
        .expect("refs")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(is_ref_key(names[0].trim_end_matches(".json")), "{names:?}");
}

#[tokio::test]
async fn a_layout_whose_digests_climb_out_is_refused_and_touches_nothing() {
    let base = tempfile::tempdir().expect("tempdir");
    let sentinel = base.path().join("sentinel");
    std::fs::write(&sentinel, b"keep").expect("sentinel");
    let layout = base.path().join("layout");
    std::fs::create_dir_all(&layout).expect("layout");
    let (root, store) = store();
    // The entry's digest, then a manifest's layer digest, each climbing to the sentinel.
    // From `layout/blobs/sha256/`, three levels up is `base`.
    let climbing = "sha256:../../../sentinel";
    let layer_climbs = {
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": { "mediaType": WASM_CONFIG_TYPE, "digest": sha256(b"{}"), "size": 2 },
            "layers": [{ "mediaType": "application/wasm", "digest": climbing, "size": 4 }]
        });
        blob(&layout, manifest.to_string().as_bytes())
    };
    for (digest, size) in [(climbing.to_owned(), 4), layer_climbs] {
        let index = serde_json::json!({ "schemaVersion": 2, "manifests": [
            { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": size,
              "annotations": { "org.opencontainers.image.ref.name": "example.com/app:v1" } }
        ]});
        std::fs::write(layout.join("index.json"), index.to_string()).expect("index");
        let err = store
            .import_layout(&layout)
            .await
            .expect_err("climbing digest");
        assert!(matches!(err, Error::InvalidDigest { .. }), "{err}");
    }
    assert_eq!(std::fs::read(&sentinel).expect("sentinel"), b"keep");
    assert!(store.images().await.is_empty());
    assert_eq!(
        std::fs::read_dir(root.path().join("tmp"))
            .expect("tmp")
            .count(),
        0
    );
}

#[tokio::test]
async fn a_layout_layer_over_the_cap_or_its_declared_size_is_refused() {
    let layout = tempfile::tempdir().expect("tempdir");
    let wasm = vec![7u8; 64];
    let (layer, _) = blob(layout.path(), &wasm);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root = tempfile::tempdir().expect("tempdir");
    let small = Store::open_with(
        root.path(),
        StoreConfig {
            max_blob_size: 32,
            ..StoreConfig::default()
        },
    )
    .expect("store");
    for (declared, cap_error) in [(64, true), (16, false)] {
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": { "mediaType": WASM_CONFIG_TYPE, "digest": sha256(b"{}"), "size": 2 },
            "layers": [{ "mediaType": "application/wasm", "digest": layer, "size": declared }]
        });
        let (digest, size) = blob(layout.path(), manifest.to_string().as_bytes());
        let index = serde_json::json!({ "schemaVersion": 2, "manifests": [
            { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": size,
              "annotations": { "org.opencontainers.image.ref.name": "example.com/big:v1" } }
        ]});
        std::fs::write(layout.path().join("index.json"), index.to_string()).expect("index");
        let err = small
            .import_layout(layout.path())
            .await
            .expect_err("refused");
        if cap_error {
            assert!(matches!(err, Error::TooLarge { limit: 32, .. }), "{err}");
        } else {
            assert!(
                matches!(err, Error::SizeMismatch { declared: 16, .. }),
                "{err}"
            );
        }
    }
    assert!(small.images().await.is_empty());
    assert_eq!(
        std::fs::read_dir(root.path().join("tmp"))
            .expect("tmp")
            .count(),
        0
    );
    assert_eq!(small.usage().await, 0);
}

/// Whatever a caller (image GC) passes as a digest, `remove` and `module` touch nothing
/// outside `blobs/`: a file beside the store and one at the root survive. One store for
/// every case (opening one builds a TLS client, which made this test take 30 s).
#[test]
fn no_string_given_to_remove_or_module_reaches_outside_the_blobs() {
    use proptest::prelude::*;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let base = tempfile::tempdir().expect("tempdir");
    let outside = base.path().join("sentinel");
    std::fs::write(&outside, b"keep").expect("sentinel");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store = Store::open(&base.path().join("store"), &[]).expect("store");
    let inside = base.path().join("store/sentinel");
    std::fs::write(&inside, b"keep").expect("sentinel");
    let strategy = (
        "(sha256:|sha512:)?(\\.\\./){0,4}(sentinel|store/sentinel|[a-f0-9]{64}|/[a-z/]{0,9})?",
        proptest::bool::weighted(0.1),
    );
    let mut runner = proptest::test_runner::TestRunner::default();
    let result = runner.run(&strategy, |(text, absolute)| {
        let text = if absolute {
            format!("sha256:{}", outside.display())
        } else {
            text
        };
        runtime.block_on(async {
            let removed = store.remove(&text).await;
            let read = store.module(&text).await;
            if Digest::parse(&text).is_err() {
                let refused = |r: Result<()>| matches!(r, Err(Error::InvalidDigest { .. }));
                prop_assert!(refused(removed.map(|_| ())), "remove");
                prop_assert!(refused(read.map(|_| ())), "module");
            }
            Ok(())
        })?;
        prop_assert_eq!(std::fs::read(&outside).expect("outside"), b"keep");
        prop_assert_eq!(std::fs::read(&inside).expect("inside"), b"keep");
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
