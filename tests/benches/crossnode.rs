//! Pod-to-pod requests across two nodes against the same on one node, run with `hack/bench
//! crossnode`, which builds krustlet in release mode and the `http-hello` and
//! `http-forward` components, installs the `oha` load generator from crates.io when
//! missing, and sets `KRUSTLET_BIN`, `OHA_BIN` and `CROSSNODE_VERSIONS`.
//!
//! Two krustlet nodes, A and B, each on a host of its own (a network namespace on the
//! local cluster's LAN bridge with its own pod bridge, kube-proxy and routes to the other
//! host's podCIDR; see `hack/hosts.sh`). A hello back end on each, reached by its pod IP
//! and through a ClusterIP Service of its own (one endpoint). On A, four forward front
//! ends, each answering a request by GETting its `TARGET_URL`: the back end on A (same
//! node) and the back end on B (cross node), by pod IP and by ClusterIP. Each front end is
//! loaded by `oha` from the machine (over the LAN to host A, the same for all four). To
//! tell the LAN hop from the rest, the back ends themselves are loaded from inside host A's
//! network namespace too: the one on A over A's pod bridge only, the one on B over the LAN
//! as a cross-node front end's requests go.
//!
//! A warm-up of each path, then for each load (16 connections on 2 client threads for
//! 15 s; 1 connection for 10 s) three rounds of one run each, the middle round in reverse
//! order; of each path's three runs the median by requests per second counts (all are in
//! the JSON). Beside each, the CPU time both agents used over the run, per request. Prints
//! a table with the date, machine and versions and writes `bench-results/crossnode.json`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::Context;
use e2e::bench::load::{
    LOADS, Load, Run, first_ok, median_by_throughput, oha, oha_bin, pinned, serving_pod,
};
use e2e::bench::{clear_labelled, cpu_ticks, machine};
use e2e::{Cluster, Host, KrustletNode, wait_pod};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::{DeleteParams, PostParams};

/// The two nodes (each on its host) and their kubelet ports.
const NODES: [(&str, u16); 2] = [("bench-xn-a", 10581), ("bench-xn-b", 10582)];
/// The `bench=` label of every pod made here.
const LABEL: &str = "crossnode";
const BACKS: [&str; 2] = ["bench-xn-back-a", "bench-xn-back-b"];
const WARMUP_SECONDS: u64 = 5;
/// The front ends' connect and first-byte timeout: a lost request is a 502 counted as an
/// error, not a stall to the run's end.
const FRONT_TIMEOUT_MS: &str = "2000";

/// A path a request takes.
#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum Route {
    /// Front end on A to the back end on A by its pod IP.
    SameNode,
    /// Front end on A to the back end on B by its pod IP.
    CrossNode,
    /// Front end on A to the back end on A by its Service's ClusterIP.
    SameNodeService,
    /// Front end on A to the back end on B by its Service's ClusterIP.
    CrossNodeService,
    /// The back end on A, from host A's network namespace: no LAN hop.
    BackendA,
    /// The back end on B, from host A's network namespace: one LAN hop.
    BackendB,
}

/// Every route, in the order of a round.
const ROUTES: [Route; 6] = [
    Route::SameNode,
    Route::CrossNode,
    Route::SameNodeService,
    Route::CrossNodeService,
    Route::BackendA,
    Route::BackendB,
];

impl Route {
    fn label(self) -> &'static str {
        match self {
            Self::SameNode => "same node: front A -> back A, pod IP",
            Self::CrossNode => "cross node: front A -> back B, pod IP",
            Self::SameNodeService => "same node: front A -> back A, ClusterIP",
            Self::CrossNodeService => "cross node: front A -> back B, ClusterIP",
            Self::BackendA => "back A alone, from host A (no LAN hop)",
            Self::BackendB => "back B alone, from host A (one LAN hop)",
        }
    }

    /// The front end's name, for the routes through one.
    fn front(self) -> Option<&'static str> {
        match self {
            Self::SameNode => Some("bench-xn-same"),
            Self::CrossNode => Some("bench-xn-cross"),
            Self::SameNodeService => Some("bench-xn-svc-same"),
            Self::CrossNodeService => Some("bench-xn-svc-cross"),
            Self::BackendA | Self::BackendB => None,
        }
    }
}

/// A route under load: the URL oha asks and, when it runs in host A, that host's
/// network namespace.
struct Target {
    route: Route,
    url: String,
    netns: Option<String>,
}

/// What one run measured, and the agents' CPU time over it.
#[derive(Clone, serde::Serialize)]
struct Measured {
    route: Route,
    #[serde(flatten)]
    run: Run,
    /// User and system CPU time of both krustlet processes over the run, per request.
    agents_cpu_us_per_request: f64,
}

/// One `oha` run of `load` on `target`, with both agents' CPU time.
fn run_load(target: &Target, load: Load, agents: &[u32]) -> anyhow::Result<Measured> {
    let client = match &target.netns {
        Some(netns) => {
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net={netns}")).arg(oha_bin());
            cmd
        }
        None => pinned(Path::new(&oha_bin()), None),
    };
    let ticks = || -> u64 { agents.iter().filter_map(|p| cpu_ticks(*p)).sum() };
    let cpu0 = ticks();
    let run = oha(client, &target.url, load)?;
    let cpu = ticks().saturating_sub(cpu0);
    Ok(Measured {
        route: target.route,
        agents_cpu_us_per_request: cpu as f64 * 10_000.0 / run.requests.max(1) as f64,
        run,
    })
}

/// The Service `name` of the pod labelled `app=<name>` (port 80 to 8080), made if an
/// earlier run did not leave it; its ClusterIP.
async fn service(services: &Api<Service>, name: &str) -> anyhow::Result<String> {
    let svc = match services.get_opt(name).await? {
        Some(svc) => svc,
        None => {
            let svc: Service = serde_json::from_value(serde_json::json!({
                "metadata": { "name": name, "labels": { "bench": LABEL } },
                "spec": { "selector": { "app": name }, "ports": [{ "port": 80, "targetPort": 8080 }] }
            }))?;
            services.create(&PostParams::default(), &svc).await?
        }
    };
    svc.spec
        .and_then(|s| s.cluster_ip)
        .with_context(|| format!("service {name} has no ClusterIP"))
}

/// Creates `pod` and waits until it runs with an address; the address.
async fn running(pods: &Api<Pod>, pod: &Pod) -> anyhow::Result<String> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    pods.create(&PostParams::default(), pod).await?;
    let pod = wait_pod(pods, &name, 120, "Running with an IP", |p| {
        e2e::phase(p) == "Running" && p.status.as_ref().is_some_and(|s| s.pod_ip.is_some())
    })
    .await?;
    pod.status
        .and_then(|s| s.pod_ip)
        .context("a running pod without an IP")
}

/// The measurements, with both nodes up on their hosts.
async fn measure(
    cluster: &Cluster,
    host_a: &Host,
    agents: &[u32],
) -> anyhow::Result<Vec<Measured>> {
    let pods = cluster.pods();
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), "default");
    let hello = cluster.push("http-hello.component", "bench").await?;
    let forward = cluster.push("http-forward.component", "bench").await?;
    clear_labelled(&pods, &format!("bench={LABEL}"), 60).await?;

    let mut back_ips = Vec::new();
    for (back, (node, _)) in BACKS.iter().zip(NODES) {
        back_ips.push(running(&pods, &serving_pod(back, node, &hello, LABEL, &[])).await?);
    }
    let mut cluster_ips = Vec::new();
    for back in BACKS {
        cluster_ips.push(service(&services, back).await?);
    }
    let mut targets = Vec::new();
    for route in ROUTES {
        let url = match route {
            Route::SameNode => format!("http://{}:8080/", back_ips[0]),
            Route::CrossNode => format!("http://{}:8080/", back_ips[1]),
            Route::SameNodeService => format!("http://{}/", cluster_ips[0]),
            Route::CrossNodeService => format!("http://{}/", cluster_ips[1]),
            Route::BackendA | Route::BackendB => {
                let ip = &back_ips[usize::from(route == Route::BackendB)];
                targets.push(Target {
                    route,
                    url: format!("http://{ip}:8080/bench"),
                    netns: Some(host_a.netns.clone()),
                });
                continue;
            }
        };
        let name = route.front().context("a front end")?;
        let env = [
            ("TARGET_URL", url.as_str()),
            ("TIMEOUT_MS", FRONT_TIMEOUT_MS),
        ];
        let ip = running(&pods, &serving_pod(name, NODES[0].0, &forward, LABEL, &env)).await?;
        let addr = SocketAddr::new(ip.parse()?, 8080);
        // Through the front end to its back end (a ClusterIP once A's kube-proxy has it).
        first_ok(addr, 120).await?;
        targets.push(Target {
            route,
            url: format!("http://{addr}/bench"),
            netns: None,
        });
    }

    for t in &targets {
        run_load(t, LOADS[0].lasting(WARMUP_SECONDS), agents)?;
    }
    let mut runs = Vec::new();
    for load in LOADS {
        for round in 0..3 {
            let order: Vec<&Target> = if round == 1 {
                targets.iter().rev().collect()
            } else {
                targets.iter().collect()
            };
            for t in order {
                let m = run_load(t, load, agents)?;
                m.run.progress(m.route.label());
                runs.push(m);
            }
        }
    }
    Ok(runs)
}

/// The median run (by requests per second) of `route` under `load`.
fn median_run(runs: &[Measured], route: Route, load: Load) -> anyhow::Result<&Measured> {
    let mine = runs
        .iter()
        .filter(|m| m.route == route && m.run.load == load)
        .collect();
    median_by_throughput(mine, |m| &m.run).context("no run")
}

/// `a` over `b` in throughput, p50 and p99: its table row and its JSON.
fn ratios(of: &str, a: &Measured, b: &Measured) -> (String, serde_json::Value) {
    let (rps, p50, p99) = (
        a.run.requests_per_second / b.run.requests_per_second,
        a.run.p50_ms / b.run.p50_ms,
        a.run.p99_ms / b.run.p99_ms,
    );
    (
        format!(
            "| {of} | {} | {rps:.2}x | {p50:.2}x | {p99:.2}x | | |",
            a.run.load.connections
        ),
        serde_json::json!({ "of": of, "throughput_ratio": rps, "p50_ratio": p50, "p99_ratio": p99 }),
    )
}

/// Prints the table; the JSON to write.
fn report(runs: &[Measured]) -> anyhow::Result<serde_json::Value> {
    let when = jiff::Timestamp::now().to_string();
    let machine = machine();
    let versions = std::env::var("CROSSNODE_VERSIONS").unwrap_or_default();
    let setup = "two krustlet nodes (release build), each on a host of its own: a network \
        namespace on the LAN bridge kr-underlay (veth pairs), its own pod bridge, kube-proxy \
        (iptables) and a route to the other host's podCIDR; the front ends (http-forward, a \
        fresh outgoing connection per request) on A are loaded from the machine over the LAN, \
        the back ends (http-hello) alone from host A's namespace; the nodes, the control \
        plane and oha share the machine's CPUs";
    println!("\nCross-node serving, {when}");
    println!("machine: {machine}");
    println!("versions: {versions}");
    println!("{setup}");
    println!(
        "oha, keep-alive; a {WARMUP_SECONDS} s warm-up of each path, then per load three rounds \
         (the middle one in reverse order); the median run of each counts\n"
    );
    println!(
        "| path | connections | requests/s | p50 ms | p99 ms | p99.9 ms | agents' CPU µs per request |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let mut compared = Vec::new();
    for load in LOADS {
        let mut medians = Vec::new();
        for route in ROUTES {
            let m = median_run(runs, route, load)?;
            println!(
                "| {} | {} | {:.0} | {:.3} | {:.3} | {:.2} | {:.0} |",
                route.label(),
                load.connections,
                m.run.requests_per_second,
                m.run.p50_ms,
                m.run.p99_ms,
                m.run.p999_ms,
                m.agents_cpu_us_per_request
            );
            medians.push(m);
        }
        let pairs = [
            (
                "cross / same node, pod IP",
                Route::CrossNode,
                Route::SameNode,
            ),
            (
                "cross / same node, ClusterIP",
                Route::CrossNodeService,
                Route::SameNodeService,
            ),
            (
                "back B / back A from host A (the LAN hop)",
                Route::BackendB,
                Route::BackendA,
            ),
        ];
        let mut ratio_json = Vec::new();
        for (of, a, b) in pairs {
            let (row, json) = ratios(of, median_run(runs, a, load)?, median_run(runs, b, load)?);
            println!("{row}");
            ratio_json.push(json);
        }
        compared
            .push(serde_json::json!({ "load": load, "medians": medians, "ratios": ratio_json }));
    }
    let errors: u64 = runs.iter().map(|m| m.run.errors).sum();
    if errors > 0 {
        println!("warning: {errors} requests failed or were not answered 200 over all runs");
    }
    Ok(serde_json::json!({
        "when": when, "machine": machine, "versions": versions, "setup": setup,
        "client": "oha, keep-alive, no latency correction",
        "warmup_seconds": WARMUP_SECONDS,
        "order": "per load: three rounds over the paths in the table's order, the middle one reversed; the median run of each counts",
        "compared": compared, "runs": runs, "errors": errors
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    // A nearly full CI disk must not put the nodes under disk pressure: this measures
    // serving.
    let flags = [
        "--eviction-hard",
        "memory.available<100Mi,nodefs.available<2%,imagefs.available<2%",
    ];
    let (host_a, node_a, _) = cluster
        .ready_node_on_host(NODES[0].0, NODES[0].1, &flags)
        .await?;
    let (host_b, node_b, _) = cluster
        .ready_node_on_host(NODES[1].0, NODES[1].1, &flags)
        .await?;
    let agents: Vec<u32> = [&node_a, &node_b]
        .iter()
        .filter_map(|n: &&KrustletNode| n.pid())
        .collect();
    let measured = measure(&cluster, &host_a, &agents).await;
    let pods = cluster.pods();
    let _ = clear_labelled(&pods, &format!("bench={LABEL}"), 60).await;
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), "default");
    for back in BACKS {
        let _ = services.delete(back, &DeleteParams::default()).await;
    }
    // Each node stops before its host goes.
    drop(node_b);
    drop(host_b);
    drop(node_a);
    drop(host_a);
    for (node, _) in NODES {
        let _ = cluster.forget_node(node).await;
    }
    let json = report(&measured?)?;
    let dir = e2e::root().join("bench-results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("crossnode.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    println!("written: bench-results/crossnode.json");
    Ok(())
}
