//! The authorization attributes of a request to the kubelet API, as the kubelet's
//! `GetRequestAttributes` builds them: resource `nodes`, the node's name, a verb from the
//! HTTP method and a subresource from the path's first segment.

use std::fmt;

/// The subresource of `nodes` a request to the kubelet API needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subresource {
    /// `/stats/...`
    Stats,
    /// `/metrics...`
    Metrics,
    /// `/logs/...` (named after `pods/log`).
    Log,
    /// `/checkpoint/...`
    Checkpoint,
    /// `/pods`, `/runningpods/` (fine-grained; `proxy` also allows them).
    Pods,
    /// `/healthz...` (fine-grained; `proxy` also allows it).
    Healthz,
    /// `/configz` (fine-grained; `proxy` also allows it).
    Configz,
    /// `/statusz` (fine-grained; `proxy` also allows it).
    Statusz,
    /// Everything else: container logs, exec, attach, port-forward, run.
    Proxy,
}

impl Subresource {
    /// The name RBAC rules use (`nodes/<name>`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stats => "stats",
            Self::Metrics => "metrics",
            Self::Log => "log",
            Self::Checkpoint => "checkpoint",
            Self::Pods => "pods",
            Self::Healthz => "healthz",
            Self::Configz => "configz",
            Self::Statusz => "statusz",
            Self::Proxy => "proxy",
        }
    }
}

impl fmt::Display for Subresource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request asks of `nodes/<this node>`: any one of its subresources, checked in
/// order, being allowed for its verb lets the request through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attributes {
    /// The API verb (`get`, `create`, ...; empty for methods the kubelet does not map).
    pub verb: &'static str,
    /// The fine-grained subresource, tried first, where the path has one.
    pub fine: Option<Subresource>,
    /// The subresource that always allows the request.
    pub coarse: Subresource,
}

impl Attributes {
    /// The attributes of `method` on `path` (the request's path as routed: not decoded,
    /// not normalised).
    #[must_use]
    pub fn of(method: &str, path: &str) -> Self {
        let fine = [
            ("/pods", Subresource::Pods),
            ("/healthz", Subresource::Healthz),
            ("/configz", Subresource::Configz),
            ("/statusz", Subresource::Statusz),
            ("/runningpods/", Subresource::Pods),
        ]
        .into_iter()
        .find(|(prefix, _)| is_subpath(path, prefix))
        .map(|(_, s)| s);
        let coarse = [
            ("/stats/", Subresource::Stats),
            ("/metrics", Subresource::Metrics),
            ("/logs/", Subresource::Log),
            ("/checkpoint/", Subresource::Checkpoint),
        ]
        .into_iter()
        .find(|(prefix, _)| is_subpath(path, prefix))
        .map_or(Subresource::Proxy, |(_, s)| s);
        Self {
            verb: verb(method),
            fine,
            coarse,
        }
    }

    /// The subresources to check, in order.
    pub fn subresources(&self) -> impl Iterator<Item = Subresource> + '_ {
        self.fine.into_iter().chain(std::iter::once(self.coarse))
    }
}

/// The API verb of an HTTP method, as the kubelet maps it (other methods, `HEAD`
/// included, get the empty verb, which only a `*` rule allows).
#[must_use]
pub fn verb(method: &str) -> &'static str {
    match method {
        "POST" => "create",
        "GET" => "get",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "",
    }
}

/// Whether `path` is `prefix` (without its trailing slash) or below it.
fn is_subpath(path: &str, prefix: &str) -> bool {
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn subs(method: &str, path: &str) -> (&'static str, Vec<&'static str>) {
        let a = Attributes::of(method, path);
        (a.verb, a.subresources().map(Subresource::as_str).collect())
    }

    #[test]
    fn paths_map_to_the_kubelets_subresources() {
        let cases: &[(&str, &[&str])] = &[
            ("/stats/summary", &["stats"]),
            ("/stats", &["stats"]),
            ("/metrics", &["metrics"]),
            ("/metrics/cadvisor", &["metrics"]),
            ("/metrics/probes", &["metrics"]),
            ("/logs/", &["log"]),
            ("/logs/syslog", &["log"]),
            ("/checkpoint/ns/pod/c", &["checkpoint"]),
            ("/pods", &["pods", "proxy"]),
            ("/pods/", &["pods", "proxy"]),
            ("/runningpods/", &["pods", "proxy"]),
            ("/healthz", &["healthz", "proxy"]),
            ("/healthz/ping", &["healthz", "proxy"]),
            ("/configz", &["configz", "proxy"]),
            ("/statusz", &["statusz", "proxy"]),
            ("/containerLogs/ns/pod/c", &["proxy"]),
            ("/exec/ns/pod/c", &["proxy"]),
            ("/attach/ns/pod/c", &["proxy"]),
            ("/portForward/ns/pod", &["proxy"]),
            ("/run/ns/pod/c", &["proxy"]),
            ("/spec/", &["proxy"]),
            ("/", &["proxy"]),
            ("", &["proxy"]),
            // Prefixes only count on a segment boundary, and case matters.
            ("/metricsx", &["proxy"]),
            ("/statsfoo", &["proxy"]),
            ("/healthzz", &["proxy"]),
            ("/Metrics", &["proxy"]),
            ("/podsx", &["proxy"]),
            // Not normalised: these are what the router sees, so they stay what they
            // start with, and an encoded segment is not a known one.
            ("/%6detrics", &["proxy"]),
            ("/./metrics", &["proxy"]),
            ("//metrics", &["proxy"]),
        ];
        for (path, want) in cases {
            assert_eq!(subs("GET", path).1, *want, "{path}");
        }
    }

    #[test]
    fn methods_map_to_the_kubelets_verbs() {
        for (method, verb) in [
            ("GET", "get"),
            ("POST", "create"),
            ("PUT", "update"),
            ("PATCH", "patch"),
            ("DELETE", "delete"),
            ("HEAD", ""),
            ("OPTIONS", ""),
            ("get", ""),
        ] {
            assert_eq!(subs(method, "/metrics").0, verb, "{method}");
        }
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("metrics".to_owned()),
            Just("stats".to_owned()),
            Just("logs".to_owned()),
            Just("healthz".to_owned()),
            Just("pods".to_owned()),
            Just("containerLogs".to_owned()),
            Just("..".to_owned()),
            Just(".".to_owned()),
            Just(String::new()),
            Just("%2e%2e".to_owned()),
            Just("%2F".to_owned()),
            Just("metrics%2F..".to_owned()),
            "[a-zA-Z0-9%./_-]{0,12}",
        ]
    }

    proptest! {
        #[test]
        fn every_path_has_one_coarse_subresource_and_never_panics(path in "\\PC{0,64}", method in "[A-Z]{0,7}") {
            let a = Attributes::of(&method, &path);
            let all: Vec<_> = a.subresources().collect();
            prop_assert!(!all.is_empty() && all.len() <= 2);
            prop_assert_eq!(*all.last().expect("non-empty"), a.coarse);
            // A fine-grained subresource always falls back to proxy.
            if a.fine.is_some() {
                prop_assert_eq!(a.coarse, Subresource::Proxy);
            }
        }

        #[test]
        fn only_a_literal_first_segment_gives_a_weaker_subresource(segments in proptest::collection::vec(segment(), 0..6)) {
            let path = format!("/{}", segments.join("/"));
            let a = Attributes::of("GET", &path);
            let first = segments.first().map_or("", String::as_str);
            // The subresource comes from the first segment as the router sees it; no
            // `..`, `.`, empty or encoded segment after it can change it.
            let expected = match first {
                "metrics" => Subresource::Metrics,
                "stats" => Subresource::Stats,
                "logs" => Subresource::Log,
                _ => Subresource::Proxy,
            };
            prop_assert_eq!(a.coarse, expected, "{}", path);
            let fine = match first {
                "healthz" => Some(Subresource::Healthz),
                "pods" => Some(Subresource::Pods),
                _ => None,
            };
            prop_assert_eq!(a.fine, fine, "{}", path);
        }
    }
}
