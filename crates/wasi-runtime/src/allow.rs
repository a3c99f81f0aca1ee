//! Where a pod may connect to: a list of `[scheme://]host[:port]` patterns (as Spin's
//! `allowed_outbound_hosts`), `*` standing for any scheme, host or port, and
//! `*.example.com` for any name under one. No list: anything the pod's network reaches.
//! Outgoing `wasi:http` requests are checked by scheme, host and port; `wasi:sockets`
//! connections, which have only an address, against patterns whose host is that address
//! or `*`. Every refusal is counted and written to the container's log.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// The parsed allow-list of one container.
#[derive(Clone)]
pub struct AllowList {
    patterns: Vec<Pattern>,
    on_refused: Option<OnRefused>,
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

    /// Whether a socket connection to `addr` is allowed (any scheme).
    #[must_use]
    pub fn allows_addr(&self, addr: SocketAddr) -> bool {
        let host = addr.ip().to_string();
        self.patterns
            .iter()
            .any(|p| p.port.is_none_or(|pp| pp == addr.port()) && (p.host == "*" || p.host == host))
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
