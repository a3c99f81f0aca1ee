//! A component's name lookups (`wasi:sockets/ip-name-lookup`) answered with its pod's
//! DNS: the echo component in lookup mode (`LOOKUP=NAME`, target/wasm/http-echo.component
//! .wasm, built by hack/build-wasm) in a network namespace of the test's own, asking a
//! DNS server of the test's own on that namespace's loopback (nothing leaves it).
//! Needs root (network namespaces).

mod common;
#[path = "common/dns.rs"]
mod dns;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use dns::DnsServer;
use network::{Hosts, NetNs};
use wasi_runtime::{ContainerSpec, Engine, EngineConfig, Exit, PodDns};

/// The one name it knows, and its address.
const KNOWN: &str = "backend.shop.svc.cluster.local";
const KNOWN_IP: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 3);
/// wasi:sockets error codes, as the component prints them.
const NAME_UNRESOLVABLE: u32 = 18;
const PERMANENT_RESOLVER_FAILURE: u32 = 20;

fn echo() -> Arc<[u8]> {
    common::wasm("http-echo")
}

/// The test's DNS server, knowing [`KNOWN`] only.
async fn dns_server(net: &NetNs) -> DnsServer {
    DnsServer::start(net, HashMap::from([(KNOWN, vec![KNOWN_IP])])).await
}

/// The pod's DNS as the kubelet composes it for a pod of namespace `shop`, with one
/// host alias, asking the test's server.
fn pod_dns() -> Arc<PodDns> {
    let mut hosts = Hosts::new();
    hosts.add("192.0.2.9".parse().expect("ip"), ["legacy"]);
    Arc::new(PodDns::new(
        dns::shop_resolver(hosts),
        &wasi_runtime::LookupBudget::default(),
    ))
}

fn spec(
    dir: &tempfile::TempDir,
    net: Option<Arc<NetNs>>,
    dns: Option<Arc<PodDns>>,
    name: &str,
) -> ContainerSpec {
    ContainerSpec {
        request_timeout: None,
        reuse: wasi_runtime::ReuseSpec::default(),
        dns,
        pod_id: "pod".to_owned(),
        module_key: "sha256:echo".to_owned(),
        wasm: echo(),
        args: vec!["echo".to_owned()],
        env: vec![("LOOKUP".to_owned(), name.to_owned())],
        log_path: dir.path().join(format!("{name}.log")),
        memory_limit: None,
        preopens: Vec::new(),
        network: net,
        http_port: wasi_runtime::DEFAULT_HTTP_PORT,
        cpu: wasi_runtime::CpuShare::default(),
        allowed_outbound: None,
    }
}

/// Runs the lookup of `name` (bounded: a lookup ends within its resolver's bound);
/// its exit and what it wrote.
async fn look_up(
    engine: &Engine,
    dir: &tempfile::TempDir,
    net: Option<Arc<NetNs>>,
    dns: Option<Arc<PodDns>>,
    name: &str,
) -> (Exit, String) {
    run_lookup(engine, spec(dir, net, dns, name)).await
}

/// Runs the lookup `spec` asks for; its exit and what it wrote.
async fn run_lookup(engine: &Engine, spec: ContainerSpec) -> (Exit, String) {
    let log_path = spec.log_path.clone();
    let running = engine.start(spec).await.expect("start");
    let exit = tokio::time::timeout(Duration::from_secs(120), running.wait())
        .await
        .expect("the lookup ends");
    (exit, std::fs::read_to_string(log_path).unwrap_or_default())
}

#[tokio::test]
async fn a_components_lookups_are_answered_by_its_pods_dns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = common::namespace(&dir).await;
    let server = dns_server(&net).await;
    let engine = Engine::new(&EngineConfig::default()).expect("engine");
    let dns = pod_dns();

    // A short name: the pod's search paths first (ndots:5), the first one answers.
    let (exit, log) = look_up(
        &engine,
        &dir,
        Some(net.clone()),
        Some(dns.clone()),
        "backend",
    )
    .await;
    assert_eq!(exit, Exit::Code(0), "{log}");
    assert!(log.contains("address 10.1.2.3"), "{log}");
    let asked = server.asked();
    let first_a = asked.iter().find(|a| !a.contains(" type "));
    assert_eq!(first_a.map(String::as_str), Some(KNOWN), "{asked:?}");

    // A host alias: answered before any DNS, the server never asked.
    let before = server.asked().len();
    let (exit, log) = look_up(
        &engine,
        &dir,
        Some(net.clone()),
        Some(dns.clone()),
        "legacy",
    )
    .await;
    assert_eq!(exit, Exit::Code(0), "{log}");
    assert!(log.contains("address 192.0.2.9"), "{log}");
    assert_eq!(server.asked().len(), before, "{:?}", server.asked());

    // An unknown name: every search path and the name itself asked, then the
    // component sees name-unresolvable (not a hang).
    let (exit, log) = look_up(
        &engine,
        &dir,
        Some(net.clone()),
        Some(dns.clone()),
        "nothing.example",
    )
    .await;
    assert_eq!(exit, Exit::Code(1), "{log}");
    assert!(
        log.contains(&format!(
            "lookup nothing.example failed: error {NAME_UNRESOLVABLE}"
        )),
        "{log}"
    );
    let asked = server.asked();
    for name in [
        "nothing.example.shop.svc.cluster.local",
        "nothing.example.svc.cluster.local",
        "nothing.example.cluster.local",
        "nothing.example",
    ] {
        assert!(
            asked.iter().any(|a| a == name),
            "{name} not asked: {asked:?}"
        );
    }

    // Without a network, no lookup at all.
    let (exit, log) = look_up(&engine, &dir, None, Some(dns), "backend").await;
    assert_eq!(exit, Exit::Code(1), "{log}");
    assert!(
        log.contains(&format!("failed: error {PERMANENT_RESOLVER_FAILURE}")),
        "{log}"
    );
}

#[tokio::test]
async fn with_an_allow_list_only_allowed_names_are_looked_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = common::namespace(&dir).await;
    let server = dns_server(&net).await;
    let engine = Engine::new(&EngineConfig::default()).expect("engine");
    let dns = pod_dns();
    let allowed = |name: &str| {
        let mut spec = spec(&dir, Some(net.clone()), Some(dns.clone()), name);
        spec.allowed_outbound =
            Some(wasi_runtime::AllowList::parse("tcp://backend:80").expect("allow-list"));
        spec
    };
    // The name the list allows: looked up as without a list.
    let (exit, log) = run_lookup(&engine, allowed("backend")).await;
    assert_eq!(exit, Exit::Code(0), "{log}");
    assert!(log.contains("address 10.1.2.3"), "{log}");
    // Another name: refused before any query, and said in the container's log.
    let before = server.asked().len();
    let (exit, log) = run_lookup(&engine, allowed("elsewhere")).await;
    assert_eq!(exit, Exit::Code(1), "{log}");
    assert!(
        log.contains(&format!("failed: error {PERMANENT_RESOLVER_FAILURE}")),
        "{log}"
    );
    assert!(
        log.contains("refused by the pod's allowed outbound hosts: elsewhere (name lookup)"),
        "{log}"
    );
    assert_eq!(server.asked().len(), before, "{:?}", server.asked());
}

/// A WASI 0.3 command that looks `name` up once with `wasi:sockets/ip-name-lookup@0.3.0`
/// (`resolve-addresses`, lowered synchronously) and returns `ok` when it got at least one
/// address, `err` otherwise.
fn lookup_p3(name: &str) -> Arc<[u8]> {
    let len = name.len();
    let wasm = wat::parse_str(format!(
        r#"(component
            (import "wasi:sockets/ip-name-lookup@0.3.0" (instance $lookup
                (type $ip (variant
                    (case "ipv4" (tuple u8 u8 u8 u8))
                    (case "ipv6" (tuple u16 u16 u16 u16 u16 u16 u16 u16))))
                (export "ip-address" (type $ip' (eq $ip)))
                (type $err (variant
                    (case "access-denied") (case "invalid-argument")
                    (case "name-unresolvable") (case "temporary-resolver-failure")
                    (case "permanent-resolver-failure") (case "other" (option string))))
                (export "error-code" (type $err' (eq $err)))
                (export "resolve-addresses"
                    (func async (param "name" string) (result (result (list $ip') (error $err')))))))
            (core module $libc
                (memory (export "mem") 1)
                (global $bump (mut i32) (i32.const 1024))
                (func (export "realloc") (param i32 i32 i32 i32) (result i32)
                    (local $at i32)
                    (local.set $at (i32.and
                        (i32.add (global.get $bump) (i32.sub (local.get 2) (i32.const 1)))
                        (i32.sub (i32.const 0) (local.get 2))))
                    (global.set $bump (i32.add (local.get $at) (local.get 3)))
                    (local.get $at)))
            (core instance $libc (instantiate $libc))
            (alias core export $libc "mem" (core memory $mem))
            (alias core export $libc "realloc" (core func $realloc))
            (alias export $lookup "resolve-addresses" (func $resolve))
            (core func $resolve_lowered
                (canon lower (func $resolve) (memory $mem) (realloc $realloc)))
            (core module $m
                (import "libc" "mem" (memory 1))
                (import "" "resolve" (func $resolve (param i32 i32 i32)))
                (data (i32.const 16) "{name}")
                (func (export "run") (result i32)
                    (call $resolve (i32.const 16) (i32.const {len}) (i32.const 256))
                    ;; result<list<ip-address>, error-code> at 256: the case byte, then
                    ;; the list's address (260) and length (264).
                    (if (result i32) (i32.eqz (i32.load8_u (i32.const 256)))
                        (then (i32.eqz (i32.load (i32.const 264))))
                        (else (i32.const 1)))))
            (core instance $i (instantiate $m
                (with "libc" (instance $libc))
                (with "" (instance (export "resolve" (func $resolve_lowered))))))
            (type $run_type (func async (result (result))))
            (func $run (type $run_type) (canon lift (core func $i "run")))
            (instance $cli (export "run" (func $run)))
            (export "wasi:cli/run@0.3.0" (instance $cli)))"#
    ))
    .expect("valid component");
    Arc::from(wasm)
}

#[tokio::test]
async fn a_wasi_0_3_components_lookups_are_answered_by_its_pods_dns_and_allow_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = common::namespace(&dir).await;
    let server = dns_server(&net).await;
    let engine = Engine::new(&EngineConfig::default()).expect("engine");
    let dns = pod_dns();
    let run = |name: &str, allow: Option<&str>| {
        let mut spec = spec(&dir, Some(net.clone()), Some(dns.clone()), name);
        spec.module_key = format!("sha256:p3-lookup-{name}");
        spec.wasm = lookup_p3(name);
        spec.allowed_outbound =
            allow.map(|a| wasi_runtime::AllowList::parse(a).expect("allow-list"));
        spec
    };
    // A short name only the pod's DNS knows (through its search paths): found.
    let (exit, log) = run_lookup(&engine, run("backend", None)).await;
    assert_eq!(exit, Exit::Code(0), "{log}");
    assert!(
        server.asked().iter().any(|a| a == KNOWN),
        "{:?}",
        server.asked()
    );
    // A name nobody has: the lookup fails, the run ends with err.
    let (exit, log) = run_lookup(&engine, run("nothing.example", None)).await;
    assert_eq!(exit, Exit::Code(1), "{log}");
    // With an allow-list, a name it does not allow is refused before any query.
    let before = server.asked().len();
    let (exit, log) = run_lookup(&engine, run("elsewhere", Some("tcp://backend:80"))).await;
    assert_eq!(exit, Exit::Code(1), "{log}");
    assert!(
        log.contains("refused by the pod's allowed outbound hosts: elsewhere (name lookup)"),
        "{log}"
    );
    assert_eq!(server.asked().len(), before, "{:?}", server.asked());
}
