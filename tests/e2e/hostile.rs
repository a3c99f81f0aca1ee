//! A hostile registry against a live node: for every malformed answer (a digest that
//! climbs out of the store, a huge declared size, a blob longer than declared or
//! endless, a slow-loris, a manifest that never ends or is over 4 MiB, a wrong digest, an
//! endless token answer or blob error body, a redirect to a loopback service) the pod
//! waits in `ErrImagePull`/`ImagePullBackOff` with a message saying why, the node stays
//! `Ready`, the agent stays up with bounded memory (its peak grows by far less than the
//! endless answers send), no event or message holds the loopback service's answer, and
//! a file outside the data dir is neither read into an image nor removed.

use e2e::hostile::{Attack, HostileRegistry, INTERNAL_SECRET};
use e2e::{
    delete_and_wait, ensure_absent, node_condition, pod_with_spec, proc_status, root, setup,
    wait_pod, waiting_message, waiting_reason,
};
use kube::api::PostParams;

/// What the pod's waiting message must say for `attack`.
fn expected(attack: Attack) -> &'static str {
    match attack {
        Attack::Good => "",
        Attack::TraversalDigest | Attack::AbsoluteDigest | Attack::TraversalIndex => {
            "invalid digest \"sha256:"
        }
        Attack::HugeDeclaredSize => {
            "(declared 4611686018427387904 bytes) is larger than the limit of 268435456 bytes"
        }
        Attack::LargerThanDeclared => "does not have its declared size of 100 bytes",
        Attack::EndlessBlob => "does not have its declared size of 1000 bytes",
        Attack::SlowLorisManifest | Attack::SlowLorisBlob => "timed out",
        Attack::TrickleManifest => "timed out after 60s",
        Attack::HugeManifest | Attack::EndlessManifest => {
            "is larger than the limit of 4194304 bytes"
        }
        Attack::WrongDigest => "does not match its digest",
        Attack::EndlessToken => "is larger than the limit of 1048576 bytes",
        Attack::EndlessBlobError => "answered 500 Internal Server Error for layer sha256:",
        Attack::RedirectToken => "the token server answered 401 Unauthorized",
        Attack::RedirectManifest => "answered 403 Forbidden for the manifest after a redirect",
        Attack::RedirectBlob => "answered 500 Internal Server Error for layer",
    }
}

fn pod_name(attack: Attack) -> String {
    format!("e2e-hostile-{}", attack.name())
}

/// Process `pid` runs (exists and is not a zombie), and its resident memory in KiB.
fn alive_rss_kib(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[tokio::test]
async fn a_hostile_registry_cannot_harm_the_node() -> anyhow::Result<()> {
    // The node's store is `target/e2e/e2e-hostile/images`; four levels up from its
    // `blobs/sha256/` is `target/e2e`, outside the data dir.
    let outside = root().join("target/e2e");
    std::fs::create_dir_all(&outside)?;
    let sentinel = outside.join("hostile-sentinel");
    let content = b"outside the data dir: never read, written or removed";
    std::fs::write(&sentinel, content)?;
    let registry = HostileRegistry::start("../../../../hostile-sentinel", &sentinel).await?;
    let (cluster, node) = setup(
        "e2e-hostile",
        10395,
        &["--insecure-registries", &registry.addr],
    )
    .await?;
    let pods = cluster.pods();
    let pid = node
        .pid()
        .ok_or_else(|| anyhow::anyhow!("node not started"))?;
    let peak_before = proc_status(pid, "VmHWM").unwrap_or(0);
    for attack in Attack::HOSTILE {
        let name = pod_name(attack);
        ensure_absent(&pods, &name).await?;
        let spec = serde_json::json!({
            "restartPolicy": "Never",
            "containers": [{ "name": "main", "image": registry.image(attack) }]
        });
        pods.create(
            &PostParams::default(),
            &pod_with_spec(&name, &node.name, spec),
        )
        .await?;
    }
    // The slowest answers end at the read timeout (30 s) and the manifest timeout (60 s).
    for attack in Attack::HOSTILE {
        let name = pod_name(attack);
        let fragment = expected(attack);
        let pod = wait_pod(&pods, &name, 180, "a pull error saying why", |p| {
            matches!(
                waiting_reason(p, "main").as_deref(),
                Some("ErrImagePull" | "ImagePullBackOff")
            ) && waiting_message(p, "main").is_some_and(|m| m.contains(fragment))
        })
        .await?;
        let message = waiting_message(&pod, "main").unwrap_or_default();
        assert!(
            message.len() < 2048,
            "{name}: message of {} bytes",
            message.len()
        );
        assert!(!message.contains(INTERNAL_SECRET), "{name}: {message}");
        for event in cluster.events(&name).await? {
            let text = event.message.unwrap_or_default();
            assert!(text.len() < 4096, "{name}: event of {} bytes", text.len());
            assert!(!text.contains(INTERNAL_SECRET), "{name}: {text}");
        }
    }
    let live = cluster.nodes().get(&node.name).await?;
    assert_eq!(node_condition(&live, "Ready").as_deref(), Some("True"));
    let rss = alive_rss_kib(pid).ok_or_else(|| anyhow::anyhow!("the agent died"))?;
    assert!(rss < 1 << 20, "agent resident memory {rss} KiB");
    // The endless token answer and blob error body send up to 256 MiB each: read whole,
    // they would raise the agent's peak by more than that.
    let grown = proc_status(pid, "VmHWM")
        .unwrap_or(0)
        .saturating_sub(peak_before);
    let sent = registry.sent(Attack::EndlessToken) + registry.sent(Attack::EndlessBlobError);
    eprintln!("agent peak grew by {grown} KiB while the endless answers sent {sent} bytes");
    assert!(grown < 128 << 10, "agent peak grew by {grown} KiB");
    assert_eq!(std::fs::read(&sentinel)?, content);

    for attack in Attack::HOSTILE {
        delete_and_wait(&pods, &pod_name(attack), 60).await?;
    }
    // Pulls cancelled with their pods leave no temporary file, and no image came in.
    let store = node.data_dir.join("images");
    assert_eq!(std::fs::read_dir(store.join("tmp"))?.count(), 0);
    assert_eq!(std::fs::read_dir(store.join("refs"))?.count(), 0);
    assert_eq!(std::fs::read_dir(store.join("blobs/sha256"))?.count(), 0);
    assert!(alive_rss_kib(pid).is_some(), "the agent died");
    assert_eq!(std::fs::read(&sentinel)?, content);
    std::fs::remove_file(&sentinel)?;
    Ok(())
}
