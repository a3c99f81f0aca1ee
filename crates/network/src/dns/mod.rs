//! Name resolution for a pod, as a container's glibc resolver does it: [`ResolvConf`]
//! (what a resolv.conf says), [`Hosts`] (what `/etc/hosts` says, asked first) and the
//! stub [`Resolver`] that asks the nameservers, from the network namespace of the thread
//! that polls it.
//!
//! The DNS messages are read and written by the small codec in `wire` (questions, A,
//! AAAA and CNAME records), not by a DNS library: a resolver needs a small part of the
//! protocol, and every byte of a reply is a pod's network input.
//!
//! Bounds: a resolv.conf of at most 64 KiB; UDP answers read into 4096 bytes (no EDNS0
//! unless `options edns0`, which advertises 1232), TCP answers at most 65535 bytes; at
//! most 128 answer records read, 8 CNAME links followed and 32 addresses returned; a
//! lookup ends within [`MAX_LOOKUP_TIME`]; an optional cache ([`Resolver::with_cache`])
//! of at most [`MAX_CACHE_ENTRIES`] entries kept at most [`MAX_CACHE_TTL`].

mod cache;
mod conf;
mod hosts;
mod name;
mod outcome;
mod resolver;
mod transport;
mod wire;

#[cfg(test)]
mod conf_tests;
#[cfg(test)]
mod failure_tests;
#[cfg(test)]
mod namespace_tests;
#[cfg(test)]
mod resolver_tests;
#[cfg(test)]
mod test_server;
#[cfg(test)]
mod wire_tests;

pub use cache::{MAX_CACHE_ENTRIES, MAX_CACHE_TTL};
pub use conf::{
    ConfError, MAX_ATTEMPTS, MAX_NAMESERVERS, MAX_NDOTS, MAX_RESOLV_CONF, MAX_TIMEOUT, Options,
    ResolvConf,
};
pub use hosts::Hosts;
pub use resolver::{MAX_LOOKUP_TIME, Resolver};

/// Most addresses a lookup returns.
pub const MAX_ADDRESSES: usize = 32;
/// Most characters of a name quoted in an error message.
const QUOTED_NAME: usize = 64;

/// Why a lookup gave no address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The name is no host name: empty, a label empty or over 63 bytes, over 253 bytes,
    /// or a character other than a letter, a digit, `-`, `_` or the dots.
    #[error("invalid host name {name:?}: {reason}")]
    InvalidName {
        /// The name (its first 64 characters).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No name tried has an address (NXDOMAIN or no address record everywhere).
    #[error("host name {0:?} not found")]
    NotFound(String),
    /// No nameserver answered in time.
    #[error("no DNS server answered in time")]
    Timeout,
    /// The nameservers could not be reached.
    #[error("the DNS servers could not be reached: {0}")]
    Unreachable(String),
    /// The nameservers answered SERVFAIL.
    #[error("the DNS servers failed to resolve the name (SERVFAIL)")]
    ServerFailure,
    /// The nameservers refused the query, do not implement it, or sent unreadable
    /// answers.
    #[error("the DNS servers refused the query or sent unreadable answers")]
    Refused,
    /// The configuration names no nameserver.
    #[error("no DNS server is configured")]
    NoNameservers,
}

/// The kinds of failure a caller tells apart; they match `wasi:sockets`
/// ip-name-lookup's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupErrorKind {
    /// `invalid-argument`: the name is no host name.
    InvalidArgument,
    /// `name-unresolvable`: the name has no address.
    NameUnresolvable,
    /// `temporary-resolver-failure`: asking again later may succeed.
    TemporaryResolverFailure,
    /// `permanent-resolver-failure`: asking again will not help.
    PermanentResolverFailure,
}

impl LookupError {
    /// The kind of this failure.
    pub fn kind(&self) -> LookupErrorKind {
        match self {
            LookupError::InvalidName { .. } => LookupErrorKind::InvalidArgument,
            LookupError::NotFound(_) => LookupErrorKind::NameUnresolvable,
            // As glibc's: servers that refuse, fail or answer garbage make `res_query`
            // give TRY_AGAIN, which `getaddrinfo` reports as EAI_AGAIN.
            LookupError::Timeout
            | LookupError::Unreachable(_)
            | LookupError::ServerFailure
            | LookupError::Refused => LookupErrorKind::TemporaryResolverFailure,
            LookupError::NoNameservers => LookupErrorKind::PermanentResolverFailure,
        }
    }

    fn invalid(name: &str, reason: &'static str) -> Self {
        LookupError::InvalidName {
            name: shorten(name),
            reason,
        }
    }
}

/// The first [`QUOTED_NAME`] characters of `name`.
fn shorten(name: &str) -> String {
    name.chars().take(QUOTED_NAME).collect()
}
