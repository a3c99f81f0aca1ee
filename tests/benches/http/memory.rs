//! The agent's memory for WASI 0.3 services against WASI 0.2 ones, on the bench node and
//! measured as `hack/bench density` does (the agent's `VmRSS`):
//!
//! - **per idle served pod**: four batches of [`IDLE_PODS`] pods, each beside those
//!   before it: the 0.3 `p3-hello`, the 0.2 `http-hello`, `http-hello` again, then
//!   `p3-hello`; each batch's RSS over the one before it, per pod, once its pods listen
//!   (no request made); each kind's figure is the mean of its two batches, so that a
//!   drift of the agent's growth over the four cancels. No pod is deleted in between:
//!   the allocator would give the memory freed back to the next batch, which would then
//!   seem to cost nothing;
//! - **per 1000 requests at once**: [`HELD_REQUESTS`] requests held open over
//!   [`HELD_PODS`] pods (100 each: the most instances a pod holds at once, so the 0.2
//!   side's instance per request fits; the node's pool holds 1000), each its own
//!   connection, by the 0.3 `p3-slow` (`/sleep/<ms>`, an async wait: the instance's other
//!   requests run meanwhile) and by the 0.2 `http-hello` (`/sleep/<s>`); the peak RSS
//!   while they are held (sampled every 100 ms) over the same pods idle. The 0.3 side
//!   goes first, so what the 0.2 side finds already resident (the pool's slots its
//!   instances used) is in its favour.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::Cluster;
use e2e::bench::load::first_ok;
use e2e::bench::rss_kib;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{address_of, clear, pod, watch_addresses};

/// The label (`bench=<LABEL>`) of this module's pods.
pub(super) const LABEL: &str = "http-mem";
/// Idle pods in each batch (two batches of each kind).
const IDLE_PODS: usize = 30;
/// The batches of idle pods, in the order created.
const IDLE_ORDER: [&str; 4] = ["0.3", "0.2", "0.2", "0.3"];
/// Pods the held requests are spread over.
const HELD_PODS: usize = 10;
/// Requests held open at once.
const HELD_REQUESTS: usize = 1000;
/// How long each held request waits in its component before it is answered.
const HOLD_SECONDS: u64 = 5;
/// The wait before a reading of idle pods: the pods' start work done.
const SETTLE: Duration = Duration::from_secs(2);
/// The wait before a reading of pods that answered: past the 1 s after which an idle
/// 0.3 instance is dropped.
const SETTLE_ASKED: Duration = Duration::from_secs(3);

/// The images measured.
pub(super) struct Images {
    pub(super) p2_hello: String,
    pub(super) p3_hello: String,
    pub(super) p3_slow: String,
}

/// What was measured (RSS in KiB).
#[derive(serde::Serialize)]
pub(super) struct Memory {
    /// Pods in each batch of idle ones.
    idle_pods: usize,
    /// The kinds (WASI versions) of the batches of idle pods, in the order created.
    idle_order: [&'static str; 4],
    /// RSS without them, then with each batch beside those before it.
    idle_rss_kib: [u64; 5],
    held: [Held; 2],
}

impl Memory {
    /// KiB per pod of each batch of kind `wasi`, in the order created.
    fn idle_per_pod(&self, wasi: &str) -> Vec<f64> {
        let rss = self.idle_rss_kib;
        (0..self.idle_order.len())
            .filter(|&i| self.idle_order[i] == wasi)
            .map(|i| rss[i + 1].saturating_sub(rss[i]) as f64 / self.idle_pods as f64)
            .collect()
    }
}

/// Requests held open at once by one kind of pod.
#[derive(serde::Serialize)]
struct Held {
    wasi: &'static str,
    component: &'static str,
    path: String,
    pods: usize,
    requests: usize,
    rss_kib_idle: u64,
    rss_kib_peak: u64,
    answered_200: usize,
    /// Instances that answered them: the 0.3 component's answers saying that they were
    /// their instance's first request (`x-instance-requests: 1`); the 0.2 component
    /// has one instance per request.
    instances: usize,
    /// The most requests one 0.3 instance was given (`x-instance-requests`).
    most_per_instance: u64,
    seconds_min: f64,
    seconds_max: f64,
}

impl Held {
    fn mib(&self) -> f64 {
        self.rss_kib_peak.saturating_sub(self.rss_kib_idle) as f64 / 1024.0
    }
}

/// Creates pods `names` of `image` (25 requests at a time) and waits until each
/// listens (a connection accepted, no request sent); their addresses.
async fn create_serving(
    pods: &Api<Pod>,
    names: &[String],
    image: &str,
) -> anyhow::Result<Vec<IpAddr>> {
    let seen = watch_addresses(pods.clone(), LABEL);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for chunk in names.chunks(25) {
        let creations = chunk.iter().map(|name| {
            let (p, pods) = (pod(name, image, LABEL), pods.clone());
            async move { pods.create(&PostParams::default(), &p).await }
        });
        for created in futures::future::join_all(creations).await {
            created?;
        }
    }
    let mut ips = Vec::new();
    for name in names {
        let ip = address_of(pods, &seen, name, 120).await?.1;
        let give_up = Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(SocketAddr::new(ip, 8080))
            .await
            .is_err()
        {
            anyhow::ensure!(Instant::now() < give_up, "{name} does not listen");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        ips.push(ip);
    }
    Ok(ips)
}

/// One request to each of `ips`, one at a time: answered at once, the pods' instances
/// would each take a slot of the node's pool, which keeps a used slot's first pages
/// resident.
async fn ask_each(ips: &[IpAddr]) -> anyhow::Result<()> {
    for ip in ips {
        first_ok(SocketAddr::new(*ip, 8080), 60).await?;
    }
    Ok(())
}

/// RSS of `pid` after `settle`.
async fn settled_rss(pid: u32, settle: Duration) -> u64 {
    tokio::time::sleep(settle).await;
    rss_kib(pid).unwrap_or_default()
}

/// Measures both; leaves no pod of its own behind.
pub(super) async fn measure(
    cluster: &Cluster,
    pid: u32,
    images: &Images,
) -> anyhow::Result<Memory> {
    let began = Instant::now();
    let pods = cluster.pods();
    clear(&pods, LABEL).await?;
    let mut idle_rss_kib = [settled_rss(pid, SETTLE).await; 5];
    for (i, wasi) in IDLE_ORDER.into_iter().enumerate() {
        let image = if wasi == "0.3" {
            &images.p3_hello
        } else {
            &images.p2_hello
        };
        let names: Vec<String> = (0..IDLE_PODS)
            .map(|n| format!("bench-http-idle-{i}-{n}"))
            .collect();
        create_serving(&pods, &names, image).await?;
        idle_rss_kib[i + 1] = settled_rss(pid, SETTLE).await;
    }
    clear(&pods, LABEL).await?;
    eprintln!(
        "memory, {IDLE_PODS} idle pods a batch, {IDLE_ORDER:?}: RSS {idle_rss_kib:?} KiB ({:.0} s)",
        began.elapsed().as_secs_f64()
    );
    let p3 = hold(
        &pods,
        pid,
        ("0.3", "p3-slow", &images.p3_slow),
        &format!("/sleep/{}", HOLD_SECONDS * 1000),
    )
    .await?;
    clear(&pods, LABEL).await?;
    let p2 = hold(
        &pods,
        pid,
        ("0.2", "http-hello", &images.p2_hello),
        &format!("/sleep/{HOLD_SECONDS}"),
    )
    .await?;
    clear(&pods, LABEL).await?;
    eprintln!(
        "memory, {HELD_REQUESTS} held requests: 0.3 {:.1} MiB, 0.2 {:.1} MiB ({:.0} s in all)",
        p3.mib(),
        p2.mib(),
        began.elapsed().as_secs_f64()
    );
    Ok(Memory {
        idle_pods: IDLE_PODS,
        idle_order: IDLE_ORDER,
        idle_rss_kib,
        held: [p3, p2],
    })
}

/// [`HELD_REQUESTS`] requests of `path` held at once by [`HELD_PODS`] pods of `kind`
/// (its WASI version, component and image).
async fn hold(
    pods: &Api<Pod>,
    pid: u32,
    kind: (&'static str, &'static str, &str),
    path: &str,
) -> anyhow::Result<Held> {
    let (wasi, component, image) = kind;
    let names: Vec<String> = (0..HELD_PODS)
        .map(|i| format!("bench-http-held-{i}"))
        .collect();
    let ips = create_serving(pods, &names, image).await?;
    ask_each(&ips).await?;
    let rss_kib_idle = settled_rss(pid, SETTLE_ASKED).await;
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid).unwrap_or_default());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        })
    };
    let requests =
        (0..HELD_REQUESTS).map(|i| held(SocketAddr::new(ips[i % ips.len()], 8080), path));
    let answers = futures::future::join_all(requests).await;
    done.store(true, Ordering::Relaxed);
    let rss_kib_peak = sampler.await?;
    let answers: Vec<Answer> = answers.into_iter().filter_map(Result::ok).collect();
    let ok: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
    let seconds =
        |pick: fn(f64, f64) -> f64, from: f64| ok.iter().map(|a| a.seconds).fold(from, pick);
    let counts = ok.iter().filter_map(|a| a.instance_requests);
    Ok(Held {
        wasi,
        component,
        path: path.to_owned(),
        pods: HELD_PODS,
        requests: HELD_REQUESTS,
        rss_kib_idle,
        rss_kib_peak,
        answered_200: ok.len(),
        instances: match wasi {
            "0.2" => ok.len(),
            _ => ok.iter().filter(|a| a.instance_requests == Some(1)).count(),
        },
        most_per_instance: counts.max().unwrap_or(1),
        seconds_min: seconds(f64::min, f64::INFINITY),
        seconds_max: seconds(f64::max, 0.0),
    })
}

/// One held request's answer.
struct Answer {
    status: u16,
    /// The `x-instance-requests` header (0.3 components only).
    instance_requests: Option<u64>,
    /// From the connect to the end of the answer.
    seconds: f64,
}

/// GET `path` from `addr` over a connection of its own (closed after it).
async fn held(addr: SocketAddr, path: &str) -> anyhow::Result<Answer> {
    let t0 = Instant::now();
    let bound = Duration::from_secs(HOLD_SECONDS + 60);
    let mut s = tokio::time::timeout(bound, tokio::net::TcpStream::connect(addr)).await??;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    tokio::time::timeout(bound, (&mut s).take(64 << 10).read_to_end(&mut raw)).await??;
    let text = String::from_utf8_lossy(&raw);
    let Some(status) = text.get(9..12).and_then(|c| c.parse().ok()) else {
        bail!("not an HTTP response from {addr}");
    };
    let head = text.split("\r\n\r\n").next().context("no head")?;
    let instance_requests = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("x-instance-requests")
            .then(|| value.trim().parse().ok())?
    });
    Ok(Answer {
        status,
        instance_requests,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

impl Memory {
    /// Prints the table; its JSON.
    pub(super) fn report(&self) -> serde_json::Value {
        let (p3_idle, p2_idle) = (self.idle_per_pod("0.3"), self.idle_per_pod("0.2"));
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let each = |v: &[f64]| {
            v.iter()
                .map(|k| format!("{k:.0}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let [p3, p2] = &self.held;
        println!(
            "\nWASI 0.3 against WASI 0.2 served pods on the same node, the agent's memory (VmRSS, as \
             hack/bench density); held requests: {} /{} against {} /{}, each its own connection\n",
            p3.component,
            p3.path.trim_start_matches('/'),
            p2.component,
            p2.path.trim_start_matches('/')
        );
        println!("| measure | WASI 0.3 | WASI 0.2 | 0.3 / 0.2 |");
        println!("| --- | --- | --- | --- |");
        println!(
            "| per idle served pod (batches of {} listening, none asked, created {} each beside \
             those before; RSS over the node without them, {:.1} MiB; each batch in brackets) | \
             {:.0} KiB ({}) | {:.0} KiB ({}) | {:.2}x |",
            self.idle_pods,
            self.idle_order.join(", "),
            self.idle_rss_kib[0] as f64 / 1024.0,
            mean(&p3_idle),
            each(&p3_idle),
            mean(&p2_idle),
            each(&p2_idle),
            mean(&p3_idle) / mean(&p2_idle)
        );
        println!(
            "| {} requests held at once ({} pods, {} each; peak RSS over the same pods idle) | {:.1} MiB | {:.1} MiB | {:.2}x |",
            p3.requests,
            p3.pods,
            p3.requests / p3.pods,
            p3.mib(),
            p2.mib(),
            p3.mib() / p2.mib()
        );
        let per = |h: &Held| h.mib() * 1024.0 / h.requests as f64;
        println!(
            "| the same per request | {:.1} KiB | {:.1} KiB | |",
            per(p3),
            per(p2)
        );
        println!(
            "| instances that answered them | {} (up to {} requests each) | {} (one per request) | |",
            p3.instances, p3.most_per_instance, p2.instances
        );
        println!(
            "| answered 200; from connect to answer | {}, {:.2} to {:.2} s | {}, {:.2} to {:.2} s | |",
            p3.answered_200,
            p3.seconds_min,
            p3.seconds_max,
            p2.answered_200,
            p2.seconds_min,
            p2.seconds_max
        );
        for h in [p3, p2] {
            if h.answered_200 < h.requests {
                println!(
                    "warning: {} of the {} held requests to {} were not answered 200",
                    h.requests - h.answered_200,
                    h.requests,
                    h.component
                );
            }
        }
        serde_json::json!({
            "measured": self,
            "idle_kib_per_pod_p3": mean(&p3_idle), "idle_kib_per_pod_p2": mean(&p2_idle),
            "held_mib_p3": p3.mib(), "held_mib_p2": p2.mib()
        })
    }
}
