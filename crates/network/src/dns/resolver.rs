//! The stub resolver: a pod's name looked up as glibc's `getaddrinfo(AF_UNSPEC)` would
//! in a container with the same resolv.conf and hosts file.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::LookupError;
use super::cache::{Cache, Cached};
use super::conf::{MAX_NAMESERVERS, ResolvConf};
use super::hosts::Hosts;
use super::name::{self, Name};
use super::outcome::{Outcome, combine, lower, worse};
use super::transport;
use super::wire::{Question, RecordType};

/// The longest one lookup may take, whatever the configuration.
pub const MAX_LOOKUP_TIME: Duration = Duration::from_secs(30);
/// The port nameservers are asked on.
const DNS_PORT: u16 = 53;

/// A pod's resolver: its resolv.conf and hosts entries, and nothing else. It holds no
/// socket: each lookup makes its own, in the network namespace of the thread that polls
/// it.
///
/// ```no_run
/// use network::dns::{Hosts, ResolvConf, Resolver};
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let conf = ResolvConf::parse(
///     "nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\n\
///      options ndots:5\n",
/// )?;
/// let mut hosts = Hosts::kubernetes();
/// hosts.add("10.244.1.5".parse()?, ["web-0"]);
/// let resolver = Resolver::new(conf, hosts);
/// let addresses = resolver.lookup("backend").await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Resolver {
    conf: ResolvConf,
    hosts: Hosts,
    port: u16,
    next_server: AtomicUsize,
    cache: Option<Cache>,
}

impl Resolver {
    /// A resolver for `conf`, consulting `hosts` first.
    pub fn new(conf: ResolvConf, hosts: Hosts) -> Self {
        Resolver {
            conf,
            hosts,
            port: DNS_PORT,
            next_server: AtomicUsize::new(0),
            cache: None,
        }
    }

    /// Asks every nameserver on `port` instead of 53 (a test server, a local proxy).
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Keeps the results of lookups (addresses, and names not found when the answer
    /// carries the zone's SOA) for their TTL, at most 30 s, in at most `entries` entries
    /// (at most 1024). Without it, as glibc, every lookup asks the nameservers.
    pub fn with_cache(mut self, entries: usize) -> Self {
        self.cache = Some(Cache::new(entries));
        self
    }

    /// The configuration it resolves by.
    pub fn conf(&self) -> &ResolvConf {
        &self.conf
    }

    /// The addresses of `name`, IPv4 first then IPv6, without repeats, at most 32: an IP
    /// address is returned as it is; a name in the hosts entries gets their addresses;
    /// otherwise the search list's candidates are asked of the nameservers in turn.
    ///
    /// # Errors
    /// [`LookupError::InvalidName`] for a name that is no host name;
    /// [`LookupError::NotFound`] when no candidate has an address;
    /// [`LookupError::Timeout`], [`LookupError::Unreachable`],
    /// [`LookupError::ServerFailure`] when the servers did not say, and
    /// [`LookupError::Refused`] when they would not (all temporary failures, as glibc's
    /// `EAI_AGAIN`); [`LookupError::NoNameservers`] when there is no server to ask.
    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, LookupError> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let checked = name::check(name)?;
        let from_hosts = self.hosts.lookup(name);
        if !from_hosts.is_empty() {
            return Ok(from_hosts);
        }
        if self.conf.nameservers.is_empty() {
            return Err(LookupError::NoNameservers);
        }
        let key = name.to_ascii_lowercase();
        if let Some(cached) = self.cache.as_ref().and_then(|c| c.get(&key)) {
            return cached;
        }
        let (result, ttl) = self.search_in_time(&checked).await;
        if let (Some(cache), Some(ttl)) = (&self.cache, ttl) {
            cache.put(&key, result.clone(), ttl);
        }
        result
    }

    /// Searches the candidates of `name`, within the lookup's deadline.
    async fn search_in_time(&self, name: &Name) -> (Cached, Option<u32>) {
        let candidates = name::candidates(name, &self.conf.searches, self.conf.options.ndots);
        let budget = self.budget(candidates.len());
        match tokio::time::timeout(budget, self.search(name, &candidates)).await {
            Ok(found) => found,
            Err(_) => (Err(LookupError::Timeout), None),
        }
    }

    /// The deadline of a lookup: every query's timeout over UDP and again over TCP,
    /// bounded by [`MAX_LOOKUP_TIME`]. Queries end sooner; this only stops a lookup
    /// that would outlast them.
    fn budget(&self, candidates: usize) -> Duration {
        let options = &self.conf.options;
        let servers = self.conf.nameservers.len().min(MAX_NAMESERVERS);
        let queries = if options.single_request { 2 } else { 1 };
        let waits = 2 * queries * usize::from(options.attempts.max(1)) * servers * candidates;
        let total = options
            .timeout
            .saturating_mul(u32::try_from(waits).unwrap_or(u32::MAX));
        total.min(MAX_LOOKUP_TIME)
    }

    /// Asks each candidate in turn, as `res_search` does; returns the result and how
    /// long it may be cached. A failure (no answer, refused) ends the search, except for
    /// the name asked as it is before the search list: then the list is still tried, and
    /// that failure is reported if it finds nothing (glibc's `saved_herrno`).
    async fn search(&self, name: &Name, candidates: &[String]) -> (Cached, Option<u32>) {
        let as_is_first = candidates.len() > 1 && candidates.first() == Some(&name.text);
        let mut as_is_failure = None;
        let mut servfail = false;
        let mut nodata = false;
        let mut negative_ttl = Some(u32::MAX);
        for (i, candidate) in candidates.iter().enumerate() {
            match self.resolve(candidate).await {
                Outcome::Failed(error) if i == 0 && as_is_first => as_is_failure = Some(error),
                Outcome::Found(addresses, ttl) => return (Ok(addresses), Some(ttl)),
                Outcome::NxDomain(ttl) => negative_ttl = lower(negative_ttl, ttl),
                Outcome::NoData(ttl) => {
                    nodata = true;
                    negative_ttl = lower(negative_ttl, ttl);
                }
                Outcome::ServFail => servfail = true,
                Outcome::Failed(error) => return (Err(error), None),
            }
        }
        if let Some(error) = as_is_failure {
            return (Err(error), None);
        }
        if servfail {
            let error = if nodata {
                LookupError::NotFound(super::shorten(&name.text))
            } else {
                LookupError::ServerFailure
            };
            return (Err(error), None);
        }
        (
            Err(LookupError::NotFound(super::shorten(&name.text))),
            negative_ttl,
        )
    }

    /// The nameservers asked, in order: the first three, from the next one each lookup
    /// with `rotate`.
    fn servers(&self) -> Vec<SocketAddr> {
        let used = &self.conf.nameservers[..self.conf.nameservers.len().min(MAX_NAMESERVERS)];
        let start = if self.conf.options.rotate {
            self.next_server.fetch_add(1, Ordering::Relaxed) % used.len().max(1)
        } else {
            0
        };
        let rotated = used[start..].iter().chain(&used[..start]);
        rotated.map(|&ip| SocketAddr::new(ip, self.port)).collect()
    }

    /// Asks the nameservers about one name, `attempts` rounds over them; the first
    /// definite answer (addresses, NXDOMAIN, NODATA) ends it.
    async fn resolve(&self, candidate: &str) -> Outcome {
        let servers = self.servers();
        let mut worst = Outcome::Failed(LookupError::Timeout);
        for _ in 0..self.conf.options.attempts.max(1) {
            for &server in &servers {
                let outcome = self.ask_server(server, candidate).await;
                if outcome.is_definite() {
                    return outcome;
                }
                worst = worse(worst, outcome);
            }
        }
        worst
    }

    /// Asks one server for the A and the AAAA records of `candidate`, together or one
    /// after the other (`single-request`).
    async fn ask_server(&self, server: SocketAddr, candidate: &str) -> Outcome {
        let options = &self.conf.options;
        let question = |qtype| Question {
            name: candidate.to_owned(),
            qtype,
        };
        let (a, aaaa) = (question(RecordType::A), question(RecordType::Aaaa));
        let ask = |q| transport::ask(server, q, options.edns0, options.use_vc, options.timeout);
        if options.no_aaaa {
            return combine(vec![(ask(&a).await, &a)]);
        }
        let (first, second) = if options.single_request {
            (ask(&a).await, ask(&aaaa).await)
        } else {
            tokio::join!(ask(&a), ask(&aaaa))
        };
        combine(vec![(first, &a), (second, &aaaa)])
    }
}
