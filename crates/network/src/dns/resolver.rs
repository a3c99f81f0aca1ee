//! The stub resolver: a pod's name looked up as glibc's `getaddrinfo(AF_UNSPEC)` would
//! in a container with the same resolv.conf and hosts file.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::conf::{MAX_NAMESERVERS, ResolvConf};
use super::hosts::Hosts;
use super::name::{self, Name};
use super::transport::{self, AskError};
use super::wire::{self, Question, RData, RecordType, Reply};
use super::{LookupError, MAX_ADDRESSES};

/// The longest one lookup may take, whatever the configuration.
pub const MAX_LOOKUP_TIME: Duration = Duration::from_secs(30);
/// Most CNAME records followed from the name asked to its addresses.
const MAX_CNAME_CHAIN: usize = 8;
/// The port nameservers are asked on.
const DNS_PORT: u16 = 53;

/// What one name (one search candidate) came to.
#[derive(Debug)]
enum Outcome {
    Found(Vec<IpAddr>),
    /// NXDOMAIN: the name does not exist.
    NxDomain,
    /// NOERROR without an address: the name exists, without addresses.
    NoData,
    /// SERVFAIL from the servers: try the next candidate, remember the failure.
    ServFail,
    /// No answer, or an unusable one: the search stops here, as glibc's does.
    Failed(LookupError),
}

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
}

impl Resolver {
    /// A resolver for `conf`, consulting `hosts` first.
    pub fn new(conf: ResolvConf, hosts: Hosts) -> Self {
        Resolver {
            conf,
            hosts,
            port: DNS_PORT,
            next_server: AtomicUsize::new(0),
        }
    }

    /// Asks every nameserver on `port` instead of 53 (a test server, a local proxy).
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = port;
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
    /// [`LookupError::ServerFailure`] when the servers did not say;
    /// [`LookupError::Refused`] and [`LookupError::NoNameservers`] when they will not.
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
        let candidates = name::candidates(&checked, &self.conf.searches, self.conf.options.ndots);
        let budget = self.budget(candidates.len());
        match tokio::time::timeout(budget, self.search(&checked, &candidates)).await {
            Ok(result) => result,
            Err(_) => Err(LookupError::Timeout),
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

    /// Asks each candidate in turn, as `res_search` does.
    async fn search(&self, name: &Name, candidates: &[String]) -> Result<Vec<IpAddr>, LookupError> {
        let mut servfail = false;
        let mut nodata = false;
        for candidate in candidates {
            match self.resolve(candidate).await {
                Outcome::Found(addresses) => return Ok(addresses),
                Outcome::NxDomain => {}
                Outcome::NoData => nodata = true,
                Outcome::ServFail => servfail = true,
                Outcome::Failed(error) => return Err(error),
            }
        }
        if servfail && !nodata {
            return Err(LookupError::ServerFailure);
        }
        Err(LookupError::NotFound(super::shorten(&name.text)))
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
                match outcome {
                    Outcome::Found(_) | Outcome::NxDomain | Outcome::NoData => return outcome,
                    _ => worst = worse(worst, outcome),
                }
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

/// Of two failures, the one reported: a server that answered SERVFAIL says more than
/// one that refused, which says more than one that did not answer.
fn worse(kept: Outcome, new: Outcome) -> Outcome {
    let rank = |o: &Outcome| match o {
        Outcome::ServFail => 3,
        Outcome::Failed(LookupError::Refused) => 2,
        Outcome::Failed(LookupError::Unreachable(_)) => 1,
        _ => 0,
    };
    if rank(&new) > rank(&kept) { new } else { kept }
}

/// One server's answers to the A and AAAA questions, as one outcome: any address wins,
/// then NXDOMAIN, then NODATA from both, then the failures.
fn combine(answers: Vec<(Result<Reply, AskError>, &Question)>) -> Outcome {
    let mut addresses = Vec::new();
    let (mut nxdomain, mut nodata, mut servfail) = (false, 0, false);
    let mut failure = None;
    let count = answers.len();
    for (answer, question) in answers {
        match answer {
            Ok(reply) => match reply.rcode {
                wire::RCODE_NOERROR => {
                    let found = addresses_of(&reply, question);
                    nodata += usize::from(found.is_empty());
                    addresses.extend(found);
                }
                wire::RCODE_NXDOMAIN => nxdomain = true,
                wire::RCODE_SERVFAIL => servfail = true,
                _ => failure = Some(LookupError::Refused),
            },
            Err(AskError::Malformed) => failure = failure.or(Some(LookupError::Refused)),
            Err(AskError::Timeout) => failure = Some(LookupError::Timeout),
            Err(AskError::Io(error)) => failure = Some(LookupError::Unreachable(error.to_string())),
        }
    }
    addresses.dedup();
    addresses.truncate(MAX_ADDRESSES);
    if !addresses.is_empty() {
        Outcome::Found(addresses)
    } else if nxdomain {
        Outcome::NxDomain
    } else if nodata == count {
        Outcome::NoData
    } else if servfail {
        Outcome::ServFail
    } else {
        Outcome::Failed(failure.unwrap_or(LookupError::Refused))
    }
}

/// The addresses of the question's type owned by its name or by the end of the CNAME
/// chain that starts there (at most 8 links).
fn addresses_of(reply: &Reply, question: &Question) -> Vec<IpAddr> {
    let mut owner = question.name.to_ascii_lowercase();
    for _ in 0..MAX_CNAME_CHAIN {
        let next = reply.records.iter().find_map(|r| match &r.data {
            RData::Cname(target) if r.name == owner => Some(target.clone()),
            _ => None,
        });
        match next {
            Some(target) => owner = target,
            None => break,
        }
    }
    let mut found = Vec::new();
    for record in reply.records.iter().filter(|r| r.name == owner) {
        let ip = match (record.data.clone(), question.qtype) {
            (RData::A(ip), RecordType::A) => IpAddr::V4(ip),
            (RData::Aaaa(ip), RecordType::Aaaa) => IpAddr::V6(ip),
            _ => continue,
        };
        if !found.contains(&ip) && found.len() < MAX_ADDRESSES {
            found.push(ip);
        }
    }
    found
}
