//! Where a pod may connect to: a list of `[scheme://]host[:port]` patterns (as Spin's
//! `allowed_outbound_hosts`), `*` standing for any scheme, host or port, and
//! `*.example.com` for any name under one. No list: anything the pod's network reaches.
//! Outgoing `wasi:http` requests are checked by scheme, host and port; `wasi:sockets`
//! connections, which have only an address, against patterns whose host is that address
//! or `*`, or an address a lookup of a name the list allows gave (with that pattern's
//! port). A name lookup itself is refused unless the list allows the name (a pod cannot
//! learn, or leak through, names it may not reach). Every refusal is counted and written
//! to the container's log.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// One pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    /// `None`: any scheme.
    scheme: Option<String>,
    /// `*`, `*.suffix`, a name or an address (lowercase; IPv6 without brackets).
    host: String,
    /// `None`: any port.
    port: Option<u16>,
}

/// Told of each refusal (what was refused, `scheme://host:port` or `address:port`).
pub type OnRefused = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// Addresses granted by lookups a container may keep at once (the oldest go first).
pub const MAX_GRANTED_ADDRESSES: usize = 256;

/// Addresses granted by lookups, each with its port (`None`: any).
type Granted = Arc<Mutex<VecDeque<(IpAddr, Option<u16>)>>>;

/// The parsed allow-list of one container (its clones share the addresses its lookups
/// granted).
#[derive(Clone)]
pub struct AllowList {
    patterns: Vec<Pattern>,
    on_refused: Option<OnRefused>,
    /// Addresses looked up for allowed names, each with the port its pattern allows
    /// (`None`: any).
    granted: Granted,
}

impl std::fmt::Debug for AllowList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllowList")
            .field("patterns", &self.patterns)
            .finish_non_exhaustive()
    }
}

impl PartialEq for AllowList {
    fn eq(&self, other: &Self) -> bool {
        self.patterns == other.patterns
    }
}

/// Refusals so far, of every container of the engine.
pub(crate) static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Outgoing connections refused by an allow-list since the engine started.
#[must_use]
pub fn refused_total() -> u64 {
    REFUSED.load(Ordering::Relaxed)
}

impl AllowList {
    /// Parses patterns separated by commas, spaces or newlines.
    ///
    /// # Errors
    /// A pattern that is empty after its scheme, has a bad port, or a path.
    pub fn parse(text: &str) -> Result<Self, String> {
        let patterns = text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(parse_one)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            patterns,
            on_refused: None,
            granted: Arc::default(),
        })
    }

    /// The same list, telling `f` of each refusal (the node agent makes an event of it).
    #[must_use]
    pub fn on_refused(mut self, f: OnRefused) -> Self {
        self.on_refused = Some(f);
        self
    }

    /// A refusal: counted, a line in the container's log, and told to the
    /// [`on_refused`](Self::on_refused) hook.
    pub(crate) fn refuse(&self, log: Option<&crate::logs::LogFile>, what: &str) {
        refuse(log, what);
        if let Some(f) = &self.on_refused {
            f(what);
        }
    }

    /// Whether a request to `scheme://host:port` is allowed.
    #[must_use]
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        self.patterns.iter().any(|p| {
            p.scheme
                .as_deref()
                .is_none_or(|s| s.eq_ignore_ascii_case(scheme))
                && p.port.is_none_or(|pp| pp == port)
                && host_matches(&p.host, &host)
        })
    }

    /// Whether a socket connection to `addr` is allowed (any scheme): a pattern names
    /// the address, or a lookup of an allowed name gave it.
    #[must_use]
    pub fn allows_addr(&self, addr: SocketAddr) -> bool {
        let host = addr.ip().to_string();
        let listed = self.patterns.iter().any(|p| {
            p.port.is_none_or(|pp| pp == addr.port()) && (p.host == "*" || p.host == host)
        });
        listed
            || self
                .granted
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .any(|(ip, port)| *ip == addr.ip() && port.is_none_or(|p| p == addr.port()))
    }

    /// The ports the list allows for `name` (any scheme; `None` in the list: any port),
    /// or `None` when no pattern allows the name: its lookup is refused.
    #[must_use]
    pub fn name_ports(&self, name: &str) -> Option<Vec<Option<u16>>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let ports: Vec<Option<u16>> = self
            .patterns
            .iter()
            .filter(|p| host_matches(&p.host, &name))
            .map(|p| p.port)
            .collect();
        (!ports.is_empty()).then_some(ports)
    }

    /// Lets connections to `ips` on `ports` (from [`name_ports`](Self::name_ports)) through;
    /// at most [`MAX_GRANTED_ADDRESSES`] are kept, the oldest dropped first.
    pub fn grant(&self, ips: &[IpAddr], ports: &[Option<u16>]) {
        let mut granted = self.granted.lock().unwrap_or_else(PoisonError::into_inner);
        for ip in ips {
            for port in ports {
                let entry = (*ip, *port);
                if granted.contains(&entry) {
                    continue;
                }
                if granted.len() == MAX_GRANTED_ADDRESSES {
                    granted.pop_front();
                }
                granted.push_back(entry);
            }
        }
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(suffix) = pattern.strip_prefix("*.") {
        return host.len() > suffix.len() + 1
            && host.ends_with(suffix)
            && host.as_bytes()[host.len() - suffix.len() - 1] == b'.';
    }
    pattern == host
}

fn parse_one(s: &str) -> Result<Pattern, String> {
    let bad = |why: &str| format!("allowed outbound host {s:?}: {why}");
    let (scheme, rest) = match s.split_once("://") {
        Some(("*", rest)) => (None, rest),
        Some((scheme, rest))
            if !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.') =>
        {
            (Some(scheme.to_ascii_lowercase()), rest)
        }
        Some(_) => return Err(bad("invalid scheme")),
        None => (None, s),
    };
    if rest.contains('/') {
        return Err(bad("a path is not allowed"));
    }
    // `[v6]:port`, `host:port`, `host`.
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        (h, after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        None | Some("*") => None,
        Some(p) => Some(p.parse::<u16>().map_err(|_| bad("invalid port"))?),
    };
    Ok(Pattern {
        scheme,
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// A refusal: counted, and a line in the container's log.
fn refuse(log: Option<&crate::logs::LogFile>, what: &str) {
    REFUSED.fetch_add(1, Ordering::Relaxed);
    if let Some(log) = log {
        log.record(
            crate::logs::Stream::Stderr,
            false,
            format!(
                "krustlet: outbound connection refused by the pod's allowed outbound hosts: {what}"
            )
            .as_bytes(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_scheme_host_and_port() {
        let a = AllowList::parse(
            "http://10.0.0.12:80, *://api.example.com:*\n*.svc.local https://[::1]:8443",
        )
        .expect("test");
        assert!(a.allows("http", "10.0.0.12", 80));
        assert!(!a.allows("https", "10.0.0.12", 80));
        assert!(!a.allows("http", "10.0.0.12", 81));
        assert!(!a.allows("http", "10.0.0.13", 80));
        assert!(a.allows("https", "API.example.com", 9));
        assert!(a.allows("http", "web.svc.local", 80));
        assert!(
            !a.allows("http", "svc.local", 80),
            "the wildcard needs a label"
        );
        assert!(!a.allows("http", "evilsvc.local", 80));
        assert!(a.allows("https", "[::1]", 8443));
        assert!(a.allows_addr("10.0.0.12:80".parse().expect("test")));
        assert!(!a.allows_addr("10.0.0.12:81".parse().expect("test")));
        assert!(
            !a.allows_addr("10.0.0.99:80".parse().expect("test")),
            "names never match addresses"
        );
        let any = AllowList::parse("*://*:*").expect("test");
        assert!(any.allows("http", "x", 1) && any.allows_addr("1.2.3.4:5".parse().expect("test")));
        let none = AllowList::parse("").expect("test");
        assert!(
            !none.allows("http", "x", 80) && !none.allows_addr("1.2.3.4:5".parse().expect("test"))
        );
    }

    #[test]
    fn a_lookup_of_an_allowed_name_grants_its_addresses_on_that_port() {
        let a = AllowList::parse("http://backend:80, tcp://*.db.local:5432").expect("test");
        assert_eq!(a.name_ports("backend"), Some(vec![Some(80)]));
        assert_eq!(a.name_ports("BACKEND."), Some(vec![Some(80)]));
        assert_eq!(a.name_ports("x.db.local"), Some(vec![Some(5432)]));
        assert_eq!(a.name_ports("elsewhere.example"), None);
        let addr = |s: &str| s.parse::<SocketAddr>().expect("test");
        assert!(!a.allows_addr(addr("10.0.0.7:80")), "not looked up yet");
        let clone = a.clone();
        clone.grant(&["10.0.0.7".parse().expect("test")], &[Some(80)]);
        assert!(
            a.allows_addr(addr("10.0.0.7:80")),
            "clones share the grants"
        );
        assert!(
            !a.allows_addr(addr("10.0.0.7:81")),
            "only the pattern's port"
        );
        // Bounded: the oldest grant goes first.
        for i in 0..MAX_GRANTED_ADDRESSES {
            let ip = IpAddr::from([10, 1, (i / 256) as u8, (i % 256) as u8]);
            a.grant(&[ip], &[None]);
        }
        assert!(!a.allows_addr(addr("10.0.0.7:80")));
        assert!(a.allows_addr(addr("10.1.0.255:9")));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "http://",
            "http://x:99999",
            "http://x/path",
            "h_t://x",
            "[::1",
            "://x",
            "x:port",
        ] {
            assert!(AllowList::parse(bad).is_err(), "{bad}");
        }
    }
}
