//! `wasi:sockets/ip-name-lookup` answered with the pod's own DNS: a component's name
//! lookups go to the pod's resolver (the configuration the kubelet composed: cluster
//! DNS, search paths, `ndots`, `hostAliases`), asked from inside the pod's network
//! namespace, instead of the host's `getaddrinfo` and `/etc/resolv.conf`.
//!
//! The interface is defined over wasmtime-wasi's own (the linker shadows it), with a
//! stream resource of ours: its handles are made and read only here.

use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use network::{LookupErrorKind, Resolver};

use crate::fair::{FairPool, Shares, Tenant};
use wasmtime::component::{HasData, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{
    Host, HostResolveAddressStream, ResolveAddressStream,
};
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddress, Network};
use wasmtime_wasi::p2::{DynPollable, Pollable, SocketError, subscribe};

/// Lookups of one pod in flight at once; more wait for a turn (each holds up to two
/// sockets while it asks).
pub const MAX_LOOKUPS_PER_POD: usize = 16;

/// Lookups in flight on the node at once, all pods together (at most twice as many
/// sockets); shared fairly ([`crate::fair`]): each pod is guaranteed
/// [`LOOKUP_RESERVE_PER_POD`] of them (fewer when the pods are very many), whatever the
/// others ask.
pub const MAX_LOOKUPS_PER_NODE: usize = 512;

/// The lookups in flight each pod is guaranteed of the node's.
pub const LOOKUP_RESERVE_PER_POD: usize = 2;

/// The node's lookups in flight, shared by the pods' [`PodDns`]es; cloning is cheap.
#[derive(Debug, Clone)]
pub struct LookupBudget(FairPool);

impl Default for LookupBudget {
    /// [`MAX_LOOKUPS_PER_NODE`], [`LOOKUP_RESERVE_PER_POD`] and [`MAX_LOOKUPS_PER_POD`].
    fn default() -> Self {
        Self::with(Shares {
            total: MAX_LOOKUPS_PER_NODE,
            reserve: LOOKUP_RESERVE_PER_POD,
            per_pod: MAX_LOOKUPS_PER_POD,
        })
    }
}

impl LookupBudget {
    pub(crate) fn with(shares: Shares) -> Self {
        Self(FairPool::new(shares))
    }
}

/// How a container's name lookups are answered.
#[derive(Clone, Default)]
pub enum Lookups {
    /// Not at all: the container has no network (`permanent-resolver-failure`, as
    /// wasmtime-wasi answers when lookups are not allowed).
    #[default]
    Denied,
    /// By the host's resolver, on the pod namespace's thread (a pod without a DNS
    /// configuration of its own).
    Host,
    /// By the pod's resolver.
    Pod(Arc<PodDns>),
}

/// A pod's resolver and its turns of the node's [`LookupBudget`].
pub struct PodDns {
    resolver: Resolver,
    turns: Tenant,
}

impl std::fmt::Debug for PodDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodDns")
            .field("nameservers", &self.resolver.conf().nameservers)
            .finish_non_exhaustive()
    }
}

impl PodDns {
    /// The lookups of a pod answered by `resolver`, in turns of the node's `budget`.
    pub fn new(resolver: Resolver, budget: &LookupBudget) -> Self {
        Self {
            resolver,
            turns: budget.0.tenant(),
        }
    }

    /// Looks `name` up, waiting for a turn first (a lookup's time is bounded, so turns
    /// come back).
    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, ErrorCode> {
        let _turn = self
            .turns
            .acquire(None)
            .await
            .ok_or(ErrorCode::PermanentResolverFailure)?;
        self.resolver
            .lookup(name)
            .await
            .map_err(|e| match e.kind() {
                LookupErrorKind::InvalidArgument => ErrorCode::InvalidArgument,
                LookupErrorKind::NameUnresolvable => ErrorCode::NameUnresolvable,
                LookupErrorKind::TemporaryResolverFailure => ErrorCode::TemporaryResolverFailure,
                LookupErrorKind::PermanentResolverFailure => ErrorCode::PermanentResolverFailure,
            })
    }
}

/// What the interface's functions see of a store.
pub struct LookupView<'a> {
    /// The store's resources.
    pub table: &'a mut ResourceTable,
    /// How its lookups are answered.
    pub lookups: &'a Lookups,
    /// The container's allow-list and log, if it has a list.
    pub outbound: Option<&'a (crate::AllowList, crate::logs::LogFile)>,
}

/// The [`HasData`] of the shadowing interface.
pub struct PodLookups;

impl HasData for PodLookups {
    type Data<'a> = LookupView<'a>;
}

/// One lookup: running on the pod's runtime, then its addresses handed out in turn.
struct Stream {
    state: State,
}

enum State {
    Running(tokio::task::JoinHandle<Result<Vec<IpAddr>, ErrorCode>>),
    Done(Result<std::vec::IntoIter<IpAddr>, ErrorCode>),
}

impl Stream {
    /// Takes the lookup's result if it has ended (without waiting).
    fn settle(&mut self) {
        if let State::Running(task) = &mut self.state {
            if !task.is_finished() {
                return;
            }
            let mut cx = Context::from_waker(Waker::noop());
            if let Poll::Ready(result) = std::pin::Pin::new(task).poll(&mut cx) {
                self.state = State::Done(ended(result));
            }
        }
    }
}

fn ended(
    result: Result<Result<Vec<IpAddr>, ErrorCode>, tokio::task::JoinError>,
) -> Result<std::vec::IntoIter<IpAddr>, ErrorCode> {
    match result {
        Ok(found) => found.map(Vec::into_iter),
        Err(_) => Err(ErrorCode::Unknown),
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // A lookup the guest gave up on stops asking.
        if let State::Running(task) = &self.state {
            task.abort();
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Stream {
    async fn ready(&mut self) {
        if let State::Running(task) = &mut self.state {
            let result = task.await;
            self.state = State::Done(ended(result));
        }
    }
}

/// Our stream behind the interface's handle type (both name one table entry).
fn ours(handle: &Resource<ResolveAddressStream>) -> Resource<Stream> {
    if handle.owned() {
        Resource::new_own(handle.rep())
    } else {
        Resource::new_borrow(handle.rep())
    }
}

/// Starts a lookup of `name` as `lookups` answer it, on the current runtime (the pod
/// namespace's, where a component with a network runs).
fn start(
    lookups: &Lookups,
    outbound: Option<&(crate::AllowList, crate::logs::LogFile)>,
    name: String,
) -> Result<Stream, ErrorCode> {
    // With an allow-list, only names it allows are looked up; what they resolve to may
    // then be connected to (an address asked for as such is checked at connect).
    let mut grant = None;
    if let Some((allow, log)) = outbound
        && name.parse::<IpAddr>().is_err()
    {
        match allow.name_ports(&name) {
            Some(ports) => grant = Some((allow.clone(), ports)),
            None => {
                allow.refuse(Some(log), &format!("{name} (name lookup)"));
                return Err(ErrorCode::PermanentResolverFailure);
            }
        }
    }
    let task = match lookups {
        Lookups::Denied => return Err(ErrorCode::PermanentResolverFailure),
        Lookups::Pod(dns) => {
            let dns = dns.clone();
            tokio::spawn(async move {
                let ips = dns.lookup(&name).await?;
                if let Some((allow, ports)) = &grant {
                    allow.grant(&ips, ports);
                }
                Ok(ips)
            })
        }
        Lookups::Host => {
            if let Ok(ip) = name.parse::<IpAddr>() {
                return Ok(Stream {
                    state: State::Done(Ok(vec![ip].into_iter())),
                });
            }
            if name.is_empty() || name.len() > 253 {
                return Err(ErrorCode::InvalidArgument);
            }
            tokio::spawn(async move {
                let found = tokio::net::lookup_host((name.as_str(), 0))
                    .await
                    .map_err(|_| ErrorCode::NameUnresolvable)?;
                let mut ips: Vec<IpAddr> = found.map(|a| a.ip().to_canonical()).collect();
                ips.dedup();
                ips.truncate(network::dns::MAX_ADDRESSES);
                if let Some((allow, ports)) = &grant {
                    allow.grant(&ips, ports);
                }
                Ok(ips)
            })
        }
    };
    Ok(Stream {
        state: State::Running(task),
    })
}

impl Host for LookupView<'_> {
    fn resolve_addresses(
        &mut self,
        network: Resource<Network>,
        name: String,
    ) -> Result<Resource<ResolveAddressStream>, SocketError> {
        // The network handle is the capability to look names up.
        self.table.get(&network)?;
        let stream = start(self.lookups, self.outbound, name)?;
        let handle = self.table.push(stream)?;
        Ok(Resource::new_own(handle.rep()))
    }
}

// The interface's errors are those of `wasi:sockets/network`, converted here as
// wasmtime-wasi converts them (its own view serves the network interface itself).
impl wasmtime_wasi::p2::bindings::sockets::network::Host for LookupView<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        error.downcast()
    }

    fn network_error_code(
        &mut self,
        err: Resource<wasmtime_wasi::p2::bindings::sockets::network::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        let err = self.table.get(&err)?;
        Ok(err.downcast_ref::<std::io::Error>().map(ErrorCode::from))
    }
}

impl wasmtime_wasi::p2::bindings::sockets::network::HostNetwork for LookupView<'_> {
    fn drop(&mut self, network: Resource<Network>) -> wasmtime::Result<()> {
        self.table.delete(network)?;
        Ok(())
    }
}

impl HostResolveAddressStream for LookupView<'_> {
    fn resolve_next_address(
        &mut self,
        handle: Resource<ResolveAddressStream>,
    ) -> Result<Option<IpAddress>, SocketError> {
        let stream = self.table.get_mut(&ours(&handle))?;
        stream.settle();
        match &mut stream.state {
            State::Running(_) => Err(ErrorCode::WouldBlock.into()),
            State::Done(Ok(ips)) => Ok(ips.next().map(IpAddress::from)),
            State::Done(Err(e)) => Err((*e).into()),
        }
    }

    fn subscribe(
        &mut self,
        handle: Resource<ResolveAddressStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        subscribe(self.table, ours(&handle))
    }

    fn drop(&mut self, handle: Resource<ResolveAddressStream>) -> wasmtime::Result<()> {
        self.table.delete(ours(&handle))?;
        Ok(())
    }
}

/// The WASI 0.3 `ip-name-lookup` (an async function, no stream): answered as the 0.2
/// one is, by [`start`], awaited in place.
mod p3 {
    use std::net::IpAddr;

    use wasmtime::component::Accessor;
    use wasmtime_wasi::p3::bindings::sockets::ip_name_lookup::{ErrorCode, Host, HostWithStore};
    use wasmtime_wasi::p3::bindings::sockets::types::IpAddress;

    use super::{LookupView, PodLookups, State};
    use wasmtime_wasi::p2::bindings::sockets::network::ErrorCode as P2ErrorCode;

    impl<U> HostWithStore<U> for PodLookups {
        async fn resolve_addresses(
            store: &Accessor<U, Self>,
            name: String,
        ) -> wasmtime::Result<Result<Vec<IpAddress>, ErrorCode>> {
            let started = store.with(|mut view| {
                let view = view.get();
                super::start(view.lookups, view.outbound, name)
            });
            // The stream lives across the wait: a call the guest drops aborts the lookup.
            let found = match started {
                Err(e) => Err(e),
                Ok(mut stream) => {
                    wasmtime_wasi::p2::Pollable::ready(&mut stream).await;
                    match std::mem::replace(
                        &mut stream.state,
                        State::Done(Err(P2ErrorCode::Unknown)),
                    ) {
                        State::Done(done) => done.map(Iterator::collect::<Vec<IpAddr>>),
                        State::Running(_) => Err(P2ErrorCode::Unknown),
                    }
                }
            };
            Ok(found
                .map(|ips| ips.into_iter().map(IpAddress::from).collect())
                .map_err(|e| match e {
                    P2ErrorCode::AccessDenied => ErrorCode::AccessDenied,
                    P2ErrorCode::InvalidArgument => ErrorCode::InvalidArgument,
                    P2ErrorCode::NameUnresolvable => ErrorCode::NameUnresolvable,
                    P2ErrorCode::TemporaryResolverFailure => ErrorCode::TemporaryResolverFailure,
                    P2ErrorCode::PermanentResolverFailure => ErrorCode::PermanentResolverFailure,
                    _ => ErrorCode::Other(None),
                }))
        }
    }

    impl Host for LookupView<'_> {}
}

/// Replaces wasmtime-wasi's `ip-name-lookup` in `linker` by the pod's lookups of each
/// store (`view` gives them).
pub(crate) fn shadow<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    view: fn(&mut T) -> LookupView<'_>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::add_to_linker::<T, PodLookups>(
        linker, view,
    )?;
    // WASI 0.3's too, for the linkers that have it (`wasmtime_wasi::p3::add_to_linker`
    // first).
    wasmtime_wasi::p3::bindings::sockets::ip_name_lookup::add_to_linker::<T, PodLookups>(
        linker, view,
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A server that never answers; how many queries it got.
    fn silent_server() -> (u16, Arc<AtomicUsize>) {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let port = socket.local_addr().expect("addr").port();
        let got = Arc::new(AtomicUsize::new(0));
        let seen = got.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            // Ends with the test process; reads only.
            loop {
                if socket.recv_from(&mut buf).is_ok() {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        (port, got)
    }

    #[tokio::test]
    async fn a_pods_lookups_in_flight_are_bounded() {
        let (port, got) = silent_server();
        let conf =
            network::ResolvConf::parse("nameserver 127.0.0.1\noptions timeout:10 attempts:1\n")
                .expect("conf");
        let dns = Arc::new(PodDns::new(
            Resolver::new(conf, network::Hosts::new()).with_port(port),
            &LookupBudget::default(),
        ));
        // 100 lookups at once, each asking A and AAAA of a server that never answers.
        let lookups: Vec<_> = (0..100)
            .map(|i| {
                let dns = dns.clone();
                tokio::spawn(async move { dns.lookup(&format!("n{i}.example")).await })
            })
            .collect();
        let expected = MAX_LOOKUPS_PER_POD * 2;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while got.load(Ordering::Relaxed) < expected && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Unbounded, all 200 queries would be out within milliseconds.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(got.load(Ordering::Relaxed), expected);
        for l in lookups {
            l.abort();
        }
    }

    #[tokio::test]
    async fn pods_flooding_lookups_hold_the_nodes_budget_but_not_a_quiet_pods_turns() {
        let (port, got) = silent_server();
        let conf =
            network::ResolvConf::parse("nameserver 127.0.0.1\noptions timeout:10 attempts:1\n")
                .expect("conf");
        // A node of 8 lookups, 2 guaranteed to each pod: three pods flooding a server
        // that never answers, and a quiet pod whose name is in its hosts entries.
        let budget = LookupBudget::with(Shares {
            total: 8,
            reserve: 2,
            per_pod: MAX_LOOKUPS_PER_POD,
        });
        let mut hosts = network::Hosts::new();
        hosts.add(
            "192.0.2.7".parse().expect("ip"),
            vec!["quiet.local".to_owned()],
        );
        let quiet = PodDns::new(Resolver::new(conf.clone(), hosts), &budget);
        let mut lookups = Vec::new();
        for _ in 0..3 {
            let flood = Arc::new(PodDns::new(
                Resolver::new(conf.clone(), network::Hosts::new()).with_port(port),
                &budget,
            ));
            for i in 0..20 {
                let flood = flood.clone();
                lookups.push(tokio::spawn(async move {
                    flood.lookup(&format!("n{i}.example")).await
                }));
            }
        }
        // The floods share what the quiet pod's reserve leaves: 6 lookups, 12 queries
        // (with a budget per pod only, 48 lookups and 96 queries would be out).
        let expected = 6 * 2;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while got.load(Ordering::Relaxed) < expected && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(got.load(Ordering::Relaxed), expected);
        // The quiet pod's turn is there at once.
        let answer = tokio::time::timeout(Duration::from_secs(5), quiet.lookup("quiet.local"))
            .await
            .expect("the quiet pod's lookup waited on the floods");
        assert_eq!(answer, Ok(vec!["192.0.2.7".parse().expect("ip")]));
        for l in lookups {
            l.abort();
        }
    }
}
