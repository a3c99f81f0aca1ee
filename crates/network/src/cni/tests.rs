//! The CNI client against scripted plugins that record what they were given. The real
//! reference plugins run in the end-to-end tests.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use super::*;

struct Setup {
    dir: tempfile::TempDir,
    cni: Cni,
}

/// A plugin that appends `<name> <command> <ifname> <stdin>` to `calls.log` and prints
/// `result` (with `$N` replaced by the call's count) or fails as told.
fn plugin(bin: &Path, name: &str, body: &str) {
    let path = bin.join(name);
    let script = format!(
        "#!/bin/sh\nin=$(cat)\nlog=\"$(dirname \"$0\")/../calls.log\"\n\
         printf '%s %s %s %s\\n' {name} \"$CNI_COMMAND\" \"$CNI_IFNAME\" \"$in\" >> \"$log\"\n{body}\n"
    );
    std::fs::write(&path, script).expect("test");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("test");
}

fn setup(conflist: &str) -> Setup {
    let dir = tempfile::tempdir().expect("test");
    let bin = dir.path().join("bin");
    let conf = dir.path().join("net.d");
    std::fs::create_dir_all(&bin).expect("test");
    std::fs::create_dir_all(&conf).expect("test");
    std::fs::write(conf.join("10-test.conflist"), conflist).expect("test");
    plugin(&bin, "loopback", "echo '{\"cniVersion\":\"1.0.0\"}'");
    let cni = Cni {
        conf_dir: conf,
        bin_dirs: vec![bin],
        cache_dir: dir.path().join("cache"),
        timeout: Duration::from_secs(20),
        in_process: true,
    };
    Setup { dir, cni }
}

fn calls(s: &Setup) -> Vec<String> {
    std::fs::read_to_string(s.dir.path().join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn att(id: &str) -> Attachment {
    Attachment {
        container_id: id.to_owned(),
        netns: "/run/netns/x".into(),
        args: vec![("K8S_POD_NAME".into(), "p".into())],
    }
}

const LIST: &str = r#"{"cniVersion":"1.0.0","name":"net-a","plugins":[
    {"type":"first","capabilities":{"ipRanges":true}},
    {"type":"second","capabilities":{"portMappings":true}}]}"#;

#[tokio::test]
async fn add_chains_results_and_del_undoes_in_reverse_with_the_cached_result() {
    let s = setup(LIST);
    let bin = &s.cni.bin_dirs[0];
    plugin(
        bin,
        "first",
        r#"echo '{"cniVersion":"1.0.0","ips":[{"address":"10.244.3.7/24"}]}'"#,
    );
    // The second passes its prevResult through, as a chained plugin does.
    plugin(
        bin,
        "second",
        r#"echo '{"cniVersion":"1.0.0","ips":[{"address":"10.244.3.7/24"}]}'"#,
    );
    let settings = RuntimeSettings {
        pod_cidrs: vec!["10.244.3.0/24".into()],
        port_mappings: vec![PortMapping {
            host_port: 8081,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: None,
        }],
    };
    let got = s.cni.add(&att("uid-1"), &settings).await.expect("test");
    assert_eq!(got.ips, vec!["10.244.3.7".parse::<IpAddr>().expect("test")]);
    let log = calls(&s);
    assert_eq!(log.len(), 3, "{log:#?}");
    assert!(log[0].starts_with("loopback ADD lo "));
    assert!(log[1].starts_with("first ADD eth0 "));
    // Each plugin gets only the capabilities it declared.
    assert!(
        log[1].contains(r#""runtimeConfig":{"ipRanges":[[{"subnet":"10.244.3.0/24"}]]}"#),
        "{}",
        log[1]
    );
    assert!(!log[1].contains("portMappings"));
    assert!(log[1].contains(r#""name":"net-a""#) && log[1].contains(r#""cniVersion":"1.0.0""#));
    assert!(log[2].contains(r#""hostPort":8081"#) && !log[2].contains("ipRanges"));
    assert!(
        log[2]
            .contains(r#""prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.244.3.7/24"}]}"#)
    );
    assert_eq!(s.cni.attached_ids(), vec!["uid-1".to_owned()]);
    assert_eq!(
        s.cni.cached("uid-1").expect("test").expect("test").ips,
        got.ips
    );

    // The configuration changes; DEL still uses the list the pod was added with.
    std::fs::write(
        s.cni.conf_dir.join("10-test.conflist"),
        r#"{"cniVersion":"1.0.0","name":"net-b","plugins":[{"type":"other"}]}"#,
    )
    .expect("test");
    s.cni.del(&att("uid-1")).await.expect("test");
    let log = calls(&s);
    assert_eq!(log.len(), 5, "{log:#?}");
    assert!(log[3].starts_with("second DEL eth0 ") && log[4].starts_with("first DEL eth0 "));
    assert!(log[4].contains(r#""prevResult":{"cniVersion":"1.0.0","ips""#));
    // DEL gets the runtime settings ADD got: the ranges to release, the ports to unmap.
    assert!(
        log[4].contains(r#""ipRanges":[[{"subnet":"10.244.3.0/24"}]]"#),
        "{}",
        log[4]
    );
    assert!(log[3].contains(r#""hostPort":8081"#), "{}", log[3]);
    assert!(s.cni.attached_ids().is_empty());
    assert!(s.cni.cached("uid-1").expect("test").is_none());
    // Again: nothing cached, the current list is asked (and "other" is missing, so
    // the DEL fails clearly instead of passing for nothing).
    let again = s.cni.del(&att("uid-1")).await.expect_err("test");
    assert!(matches!(again, Error::NotFound { .. }), "{again}");
}

#[tokio::test]
async fn a_failing_plugin_reports_its_message_and_what_ran_is_undone() {
    let s = setup(LIST);
    let bin = &s.cni.bin_dirs[0];
    plugin(bin, "first", r#"echo '{"cniVersion":"1.0.0","ips":[]}'"#);
    plugin(
        bin,
        "second",
        r#"[ "$CNI_COMMAND" = DEL ] && exit 0
echo '{"cniVersion":"1.0.0","code":11,"msg":"no more ports","details":"8081 taken"}'; exit 1"#,
    );
    let e = s
        .cni
        .add(&att("uid-2"), &RuntimeSettings::default())
        .await
        .expect_err("test");
    assert_eq!(
        e.to_string(),
        r#"plugin type="second" name="net-a" failed (ADD): no more ports: 8081 taken"#
    );
    let log = calls(&s);
    let commands: Vec<&str> = log
        .iter()
        .map(|l| l.splitn(3, ' ').take(2).last().expect("test"))
        .collect();
    assert_eq!(commands, ["ADD", "ADD", "ADD", "DEL", "DEL"], "{log:#?}");
    assert!(s.cni.attached_ids().is_empty());
}

#[tokio::test]
async fn endless_output_hanging_plugins_and_bad_ids_are_bounded() {
    let mut s = setup(LIST);
    let bin = s.cni.bin_dirs[0].clone();
    plugin(&bin, "first", "head -c 3000000 /dev/zero");
    let e = s
        .cni
        .add(&att("uid-3"), &RuntimeSettings::default())
        .await
        .expect_err("test");
    assert!(e.to_string().contains("more than 1048576 bytes"), "{e}");
    plugin(&bin, "first", "sleep 30");
    s.cni.timeout = Duration::from_millis(300);
    let began = std::time::Instant::now();
    let e = s
        .cni
        .add(&att("uid-3"), &RuntimeSettings::default())
        .await
        .expect_err("test");
    assert!(e.to_string().contains("no answer within"), "{e}");
    assert!(began.elapsed() < Duration::from_secs(20));
    for bad in ["../x", "a/b", "", "a b"] {
        assert!(matches!(
            s.cni.add(&att(bad), &RuntimeSettings::default()).await,
            Err(Error::Config(_))
        ));
    }
    std::fs::remove_file(bin.join("loopback")).expect("test");
    let e = s
        .cni
        .add(&att("uid-4"), &RuntimeSettings::default())
        .await
        .expect_err("test");
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
}

#[tokio::test]
async fn no_configuration_means_not_ready_and_del_of_nothing_succeeds() {
    let s = setup(LIST);
    std::fs::remove_file(s.cni.conf_dir.join("10-test.conflist")).expect("test");
    let e = s
        .cni
        .add(&att("uid-5"), &RuntimeSettings::default())
        .await
        .expect_err("test");
    assert!(matches!(e, Error::NoConfig(_)), "{e}");
    assert!(e.to_string().starts_with("cni config uninitialized"));
    s.cni.del(&att("uid-5")).await.expect("test");
}
