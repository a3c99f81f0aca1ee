//! What one server's answers to the A and AAAA questions of a name come to, and for how
//! long that may be cached.

use std::net::IpAddr;

use super::transport::AskError;
use super::wire::{self, Question, RData, RecordType, Reply};
use super::{LookupError, MAX_ADDRESSES};

/// Most CNAME records followed from the name asked to its addresses.
const MAX_CNAME_CHAIN: usize = 8;

/// What one name (one search candidate) came to. A TTL says how long the outcome may be
/// cached; `None`: not at all.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Addresses, with the lowest TTL of the records that led to them.
    Found(Vec<IpAddr>, u32),
    /// NXDOMAIN: the name does not exist.
    NxDomain(Option<u32>),
    /// NOERROR without an address: the name exists, without addresses.
    NoData(Option<u32>),
    /// SERVFAIL from the servers: try the next candidate, remember the failure.
    ServFail,
    /// No answer, or an unusable one: the search stops here, as glibc's does.
    Failed(LookupError),
}

impl Outcome {
    /// Whether the servers said what there is (addresses, no such name, no address).
    pub fn is_definite(&self) -> bool {
        matches!(
            self,
            Outcome::Found(..) | Outcome::NxDomain(_) | Outcome::NoData(_)
        )
    }
}

/// Of two failures, the one reported: a server that answered SERVFAIL says more than
/// one that refused, which says more than one that could not be reached, or did not
/// answer.
pub(crate) fn worse(kept: Outcome, new: Outcome) -> Outcome {
    let rank = |o: &Outcome| match o {
        Outcome::ServFail => 3,
        Outcome::Failed(LookupError::Refused) => 2,
        Outcome::Failed(LookupError::Unreachable(_)) => 1,
        _ => 0,
    };
    if rank(&new) > rank(&kept) { new } else { kept }
}

/// What the answers of one server come to: any address wins, then NXDOMAIN, then
/// NODATA from every question, then SERVFAIL, then the other failures.
pub(crate) fn combine(answers: Vec<(Result<Reply, AskError>, &Question)>) -> Outcome {
    let mut addresses = Vec::new();
    let mut ttl = u32::MAX;
    let (mut nxdomain, mut nodata, mut servfail) = (None, 0, false);
    let mut negative_ttl = Some(u32::MAX);
    let mut failure = None;
    let count = answers.len();
    for (answer, question) in answers {
        match answer {
            Ok(reply) => match reply.rcode {
                wire::RCODE_NOERROR => {
                    let (found, found_ttl) = addresses_of(&reply, question);
                    if found.is_empty() {
                        nodata += 1;
                        negative_ttl = lower(negative_ttl, reply.negative_ttl);
                    }
                    ttl = ttl.min(found_ttl);
                    addresses.extend(found);
                }
                wire::RCODE_NXDOMAIN => nxdomain = Some(reply.negative_ttl),
                wire::RCODE_SERVFAIL => servfail = true,
                _ => failure = Some(LookupError::Refused),
            },
            Err(AskError::Malformed) => failure = failure.or(Some(LookupError::Refused)),
            Err(AskError::Timeout) => failure = Some(LookupError::Timeout),
            Err(AskError::Io(error)) => failure = Some(LookupError::Unreachable(error.to_string())),
        }
    }
    addresses.truncate(MAX_ADDRESSES);
    if !addresses.is_empty() {
        Outcome::Found(addresses, ttl)
    } else if let Some(negative_ttl) = nxdomain {
        Outcome::NxDomain(negative_ttl)
    } else if nodata == count {
        Outcome::NoData(negative_ttl)
    } else if servfail {
        Outcome::ServFail
    } else {
        Outcome::Failed(failure.unwrap_or(LookupError::Refused))
    }
}

/// The lower of two TTLs, `None` (do not cache) if either is.
pub(crate) fn lower(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    Some(a?.min(b?))
}

/// The addresses of the question's type owned by its name or by the end of the CNAME
/// chain that starts there (at most 8 links), and the lowest TTL of those records.
fn addresses_of(reply: &Reply, question: &Question) -> (Vec<IpAddr>, u32) {
    let mut owner = question.name.to_ascii_lowercase();
    let mut ttl = u32::MAX;
    for _ in 0..MAX_CNAME_CHAIN {
        let next = reply.records.iter().find_map(|r| match &r.data {
            RData::Cname(target) if r.name == owner => Some((target.clone(), r.ttl)),
            _ => None,
        });
        let Some((target, link_ttl)) = next else {
            break;
        };
        owner = target;
        ttl = ttl.min(link_ttl);
    }
    let mut found = Vec::new();
    for record in reply.records.iter().filter(|r| r.name == owner) {
        let ip = match (&record.data, question.qtype) {
            (RData::A(ip), RecordType::A) => IpAddr::V4(*ip),
            (RData::Aaaa(ip), RecordType::Aaaa) => IpAddr::V6(*ip),
            _ => continue,
        };
        if !found.contains(&ip) && found.len() < MAX_ADDRESSES {
            found.push(ip);
            ttl = ttl.min(record.ttl);
        }
    }
    (found, ttl)
}
