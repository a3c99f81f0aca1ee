use std::path::Path;

use super::*;

const HELLO: &str = "apiVersion: v1
kind: Pod
metadata:
  name: hello
spec:
  containers:
  - name: hello
    image: 127.0.0.1:5000/demo/hello:v1
";

fn one(text: &str) -> Pod {
    let mut pods = parse(text, Path::new("/etc/pods/hello.yaml"), "Node-1").expect("parses");
    assert_eq!(pods.len(), 1);
    pods.remove(0)
}

#[test]
fn a_manifest_becomes_a_pod_of_this_node_named_after_it() {
    let pod = one(HELLO);
    assert_eq!(pod.metadata.name.as_deref(), Some("hello-node-1"));
    assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
    let spec = pod.spec.as_ref().expect("spec");
    assert_eq!(spec.node_name.as_deref(), Some("Node-1"));
    assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
    assert_eq!(spec.termination_grace_period_seconds, Some(30));
    assert_eq!(
        spec.containers[0].image_pull_policy.as_deref(),
        Some("IfNotPresent")
    );
    let uid = pod.metadata.uid.clone().expect("uid");
    assert_eq!(uid.len(), 32);
    assert_eq!(annotation(&pod, HASH_ANNOTATION), Some(uid.as_str()));
    assert_eq!(annotation(&pod, SOURCE_ANNOTATION), Some("file"));
    assert!(!is_mirror(&pod));
}

#[test]
fn the_uid_follows_content_file_and_node_and_nothing_else() {
    let a = one(HELLO).metadata.uid;
    assert_eq!(
        one(HELLO).metadata.uid,
        a,
        "the same manifest, the same UID"
    );
    let edited = HELLO.replace(":v1", ":v2");
    assert_ne!(one(&edited).metadata.uid, a);
    let other_file = parse(HELLO, Path::new("/etc/pods/other.yaml"), "Node-1").expect("parses");
    assert_ne!(other_file[0].metadata.uid, a);
    let other_node = parse(HELLO, Path::new("/etc/pods/hello.yaml"), "node-2").expect("parses");
    assert_ne!(other_node[0].metadata.uid, a);
}

#[test]
fn several_documents_yaml_and_json_are_read() {
    let text = format!(
        "{HELLO}---\n---\n{}",
        HELLO.replace(
            "name: hello\nspec",
            "name: second\n  namespace: tools\nspec"
        )
    );
    let pods = parse(&text, Path::new("/p/x.yaml"), "n").expect("parses");
    let names: Vec<_> = pods
        .iter()
        .map(|p| p.metadata.name.clone().expect("name"))
        .collect();
    assert_eq!(names, ["hello-n", "second-n"]);
    assert_eq!(pods[1].metadata.namespace.as_deref(), Some("tools"));
    let json = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"j"},
        "spec":{"containers":[{"name":"c","image":"r/i"}]}}"#;
    let pods = parse(json, Path::new("/p/j.json"), "n").expect("parses");
    assert_eq!(pods[0].metadata.name.as_deref(), Some("j-n"));
    assert_eq!(
        pods[0].spec.as_ref().expect("spec").containers[0]
            .image_pull_policy
            .as_deref(),
        Some("Always"),
        "no tag is :latest"
    );
}

#[test]
fn bad_documents_refuse_the_whole_file_with_a_reason() {
    let cases = [
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n",
            "kind Pod",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {}\nspec: {containers: [{name: c, image: i}]}\n",
            "metadata.name",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n",
            "must not be empty",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c}]}\n",
            "no image",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: i}, {name: c, image: i}]}\n",
            "used twice",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: P_Q}\nspec: {containers: [{name: c, image: i}]}\n",
            "DNS subdomain",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {nodeName: other, containers: [{name: c, image: i}]}\n",
            "nodeName",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: i, ports: nope}]}\n",
            "document 2",
        ),
        (": : :\n", "document 2"),
    ];
    for (text, want) in cases {
        let err = parse(&format!("{HELLO}---\n{text}"), Path::new("/p/x"), "n").expect_err(text);
        assert!(err.contains(want), "{text}: {err}");
    }
}

#[test]
fn the_directory_is_read_in_order_skipping_hidden_large_and_duplicate() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("b.yaml"), HELLO).expect("write");
    std::fs::write(
        dir.path().join("a.yaml"),
        HELLO.replace("name: hello\n", "name: first\n"),
    )
    .expect("write");
    std::fs::write(dir.path().join("c.yaml"), HELLO).expect("write"); // same name as b
    std::fs::write(dir.path().join(".hidden.yaml"), "garbage: [").expect("write");
    std::fs::write(dir.path().join("d.yaml"), "kind: Nope\n").expect("write");
    let big = vec![b'#'; usize::try_from(MAX_MANIFEST_BYTES).expect("fits") + 1];
    std::fs::write(dir.path().join("e.yaml"), big).expect("write");
    std::fs::create_dir(dir.path().join("sub")).expect("write");
    let (pods, problems) = read_dir(dir.path(), "n");
    let names: Vec<_> = pods
        .iter()
        .map(|p| p.metadata.name.clone().expect("name"))
        .collect();
    assert_eq!(names, ["first-n", "hello-n"]);
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].contains("c.yaml") && problems[0].contains("earlier manifest"));
    assert!(problems[1].contains("d.yaml"));
    assert!(problems[2].contains("e.yaml") && problems[2].contains("larger than"));
    let (none, problems) = read_dir(&dir.path().join("missing"), "n");
    assert!(none.is_empty());
    assert_eq!(problems.len(), 1);
}

/// A FIFO that no one ever writes to sits in the directory before a valid manifest (and
/// a link to it after): the manifest's pod is read, each FIFO is reported and skipped,
/// and the read ends (the bound only keeps a reader that waits from hanging the test).
#[tokio::test]
async fn a_fifo_in_the_directory_is_skipped_not_waited_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("hello.yaml"), HELLO).expect("write");
    let fifo = dir.path().join("a-fifo.yaml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success(), "mkfifo {}", fifo.display());
    std::os::unix::fs::symlink(&fifo, dir.path().join("z-link.yaml")).expect("symlink");
    let path = dir.path().to_owned();
    let mut read = tokio::task::spawn_blocking(move || read_dir(&path, "n"));
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(60), &mut read).await;
    let Ok(joined) = outcome else {
        // A reader blocked in open(2) waits for a writer: be one (non-blocking, so that
        // this never waits itself) each time it waits, so that its thread ends and the
        // test fails rather than hangs. Bounded: 60 s at most.
        for _ in 0..6000 {
            if read.is_finished() {
                break;
            }
            let _ = rustix::fs::open(
                &fifo,
                rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::NONBLOCK,
                rustix::fs::Mode::empty(),
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the reader waited on the FIFO for 60 s");
    };
    let (pods, problems) = joined.expect("the reader ran");
    let names: Vec<_> = pods
        .iter()
        .map(|p| p.metadata.name.clone().expect("name"))
        .collect();
    assert_eq!(names, ["hello-n"]);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].contains("a-fifo.yaml") && problems[0].contains("not a regular file"),
        "{problems:?}"
    );
    assert!(problems[1].contains("z-link.yaml"), "{problems:?}");
}

/// [`HELLO`] with `metadata.uid` set to `uid`.
fn with_uid(uid: &str) -> String {
    let quoted = serde_json::to_string(uid).expect("a JSON string");
    HELLO.replace(
        "  name: hello\n",
        &format!("  name: hello\n  uid: {quoted}\n"),
    )
}

#[test]
fn a_manifest_uid_that_could_name_another_path_refuses_the_manifest() {
    let long = "a".repeat(300);
    for uid in ["../../x", "a/b", "..", "a\0b", long.as_str()] {
        let err = parse(&with_uid(uid), Path::new("/p/x.yaml"), "n").expect_err(uid);
        assert!(err.contains("metadata.uid"), "{uid:?}: {err}");
    }
    // A plain UID the manifest gives is kept, as the kubelet keeps it.
    let kept = one(&with_uid("0b9e3c1a-static-web"));
    assert_eq!(kept.metadata.uid.as_deref(), Some("0b9e3c1a-static-web"));
    // An empty one is no UID: the hash is, as the kubelet computes one.
    let hashed = one(&with_uid("")).metadata.uid.expect("uid");
    assert_eq!(hashed.len(), 32);
}
