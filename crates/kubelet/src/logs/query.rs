//! The query string of `/containerLogs`, decoded as the kubelet decodes `PodLogOptions`
//! from URL parameters and validated as `ValidatePodLogOptions` validates them.

use std::fmt::Write as _;

/// Where a log read starts in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Only records of the last this many seconds (`sinceSeconds`, at least 1).
    Seconds(u64),
    /// Only records at or after this time (`sinceTime`, RFC 3339).
    Time(jiff::Timestamp),
}

/// The `kubectl logs` options the kubelet API accepts, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming while the container runs.
    pub follow: bool,
    /// Only the last N lines.
    pub tail_lines: Option<u64>,
    /// Prefix each line with its RFC 3339 timestamp.
    pub timestamps: bool,
    /// The previous run's log instead of the current one.
    pub previous: bool,
    /// Stop after this many bytes (at least 1).
    pub limit_bytes: Option<u64>,
    /// Only lines newer than this.
    pub since: Option<Since>,
}

/// Why a query was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A value does not parse; the kubelet answers 400 `Unable to decode query.`.
    #[error("cannot decode {name}={value:?}")]
    Decode {
        /// The parameter.
        name: &'static str,
        /// Its value as sent.
        value: String,
    },
    /// A value parses but is not allowed (a negative `tailLines`, a `limitBytes` or
    /// `sinceSeconds` below 1, both `sinceSeconds` and `sinceTime`); the kubelet answers
    /// 422 `Invalid request.`.
    #[error("{0}")]
    Invalid(String),
}

/// Percent-decodes one `application/x-www-form-urlencoded` component (`+` is a space);
/// `None` for a malformed escape or bytes that are not UTF-8. Never longer than `raw`.
fn decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The first value of each parameter, as Go's `url.Values` conversion takes it; pairs
/// that do not decode are dropped, as `URL.Query()` drops them.
fn first_values(query: &str) -> Vec<(String, String)> {
    let mut seen: Vec<(String, String)> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        if pair.contains(';') {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(k), Some(v)) = (decode(k), decode(v)) else {
            continue;
        };
        if !seen.iter().any(|(name, _)| *name == k) {
            seen.push((k, v));
        }
    }
    seen
}

fn int(name: &'static str, value: &str) -> Result<i64, QueryError> {
    value.parse().map_err(|_| QueryError::Decode {
        name,
        value: value.to_owned(),
    })
}

fn flag(value: &str) -> bool {
    !(value == "0" || value.eq_ignore_ascii_case("false"))
}

impl LogOptions {
    /// Decodes and validates a raw query string (without the `?`). Unknown parameters
    /// are ignored; `tail` is the old name of `tailLines` (`tail=all`: every line).
    ///
    /// # Errors
    /// [`QueryError::Decode`] when a number or time does not parse,
    /// [`QueryError::Invalid`] when a value is out of range.
    pub fn from_query(query: &str) -> Result<Self, QueryError> {
        let values = first_values(query);
        let get = |name: &str| {
            values
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let tail = match get("tail") {
            Some("all") => None,
            Some(t) if !t.is_empty() => Some(t),
            _ => get("tailLines"),
        };
        let tail_lines = tail.map(|v| int("tailLines", v)).transpose()?;
        let limit_bytes = get("limitBytes")
            .map(|v| int("limitBytes", v))
            .transpose()?;
        let since_seconds = get("sinceSeconds")
            .map(|v| int("sinceSeconds", v))
            .transpose()?;
        let since_time = match get("sinceTime") {
            None | Some("" | "null") => None,
            Some(v) => Some(
                v.parse::<jiff::Timestamp>()
                    .map_err(|_| QueryError::Decode {
                        name: "sinceTime",
                        value: v.to_owned(),
                    })?,
            ),
        };
        let mut invalid = Vec::new();
        if let Some(n) = tail_lines.filter(|n| *n < 0) {
            invalid.push(format!(
                "tailLines: Invalid value: {n}: must be greater than or equal to 0"
            ));
        }
        if let Some(n) = limit_bytes.filter(|n| *n < 1) {
            invalid.push(format!(
                "limitBytes: Invalid value: {n}: must be greater than 0"
            ));
        }
        let since = match (since_seconds, since_time) {
            (Some(_), Some(_)) => {
                invalid.push(
                    "Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified"
                        .to_owned(),
                );
                None
            }
            (Some(s), None) => match u64::try_from(s) {
                Ok(s) if s >= 1 => Some(Since::Seconds(s)),
                _ => {
                    invalid.push(format!(
                        "sinceSeconds: Invalid value: {s}: must be greater than 0"
                    ));
                    None
                }
            },
            (None, t) => t.map(Since::Time),
        };
        if !invalid.is_empty() {
            return Err(QueryError::Invalid(invalid.join(", ")));
        }
        Ok(Self {
            follow: get("follow").is_some_and(flag),
            tail_lines: tail_lines.and_then(|n| u64::try_from(n).ok()),
            timestamps: get("timestamps").is_some_and(flag),
            previous: get("previous").is_some_and(flag),
            limit_bytes: limit_bytes.and_then(|n| u64::try_from(n).ok()),
            since,
        })
    }

    /// The query string that [`LogOptions::from_query`] reads back as these options.
    #[must_use]
    pub fn to_query(&self) -> String {
        let mut q = String::new();
        let mut add = |k: &str, v: &dyn std::fmt::Display| {
            let sep = if q.is_empty() { "" } else { "&" };
            let _ = write!(q, "{sep}{k}={v}");
        };
        if self.follow {
            add("follow", &true);
        }
        if let Some(n) = self.tail_lines {
            add("tailLines", &n);
        }
        if self.timestamps {
            add("timestamps", &true);
        }
        if self.previous {
            add("previous", &true);
        }
        if let Some(n) = self.limit_bytes {
            add("limitBytes", &n);
        }
        match self.since {
            Some(Since::Seconds(s)) => add("sinceSeconds", &s),
            Some(Since::Time(t)) => add("sinceTime", &t.to_string().replace('+', "%2B")),
            None => {}
        }
        q
    }

    /// The earliest record time to show, given the time now.
    #[must_use]
    pub fn since_timestamp(&self, now: jiff::Timestamp) -> Option<jiff::Timestamp> {
        match self.since? {
            Since::Time(t) => Some(t),
            Since::Seconds(s) => {
                let s = i64::try_from(s).unwrap_or(i64::MAX);
                Some(
                    now.checked_sub(jiff::SignedDuration::from_secs(s))
                        .unwrap_or(jiff::Timestamp::MIN),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn reads_what_kubectl_sends() {
        let o = LogOptions::from_query(
            "follow=true&tailLines=10&timestamps=1&limitBytes=500&sinceSeconds=60&previous=False",
        )
        .expect("valid");
        assert_eq!(
            o,
            LogOptions {
                follow: true,
                tail_lines: Some(10),
                timestamps: true,
                previous: false,
                limit_bytes: Some(500),
                since: Some(Since::Seconds(60)),
            }
        );
        let o = LogOptions::from_query("sinceTime=2026-01-01T00%3A00%3A00Z&tail=all&tailLines=3")
            .expect("valid");
        assert_eq!(o.tail_lines, None);
        assert_eq!(
            o.since,
            Some(Since::Time("2026-01-01T00:00:00Z".parse().expect("time")))
        );
        assert_eq!(
            LogOptions::from_query("tail=4&tailLines=3")
                .expect("valid")
                .tail_lines,
            Some(4)
        );
        // As Go's conversion: the first value wins, a bare flag is true.
        let o = LogOptions::from_query("follow&tailLines=2&tailLines=-1").expect("valid");
        assert!(o.follow);
        assert_eq!(o.tail_lines, Some(2));
    }

    #[test]
    fn negative_and_zero_values_are_refused_as_the_kubelet_refuses_them() {
        for q in [
            "limitBytes=-1",
            "limitBytes=0",
            "tailLines=-1",
            "tail=-5",
            "sinceSeconds=0",
            "sinceSeconds=-3",
            "sinceSeconds=5&sinceTime=2026-01-01T00:00:00Z",
        ] {
            assert!(
                matches!(LogOptions::from_query(q), Err(QueryError::Invalid(_))),
                "{q}"
            );
        }
        for q in [
            "limitBytes=abc",
            "tailLines=",
            "tailLines=99999999999999999999",
            "sinceTime=yesterday",
        ] {
            assert!(
                matches!(LogOptions::from_query(q), Err(QueryError::Decode { .. })),
                "{q}"
            );
        }
        assert_eq!(
            LogOptions::from_query("tailLines=0")
                .expect("valid")
                .tail_lines,
            Some(0)
        );
    }

    fn options() -> impl Strategy<Value = LogOptions> {
        (
            any::<bool>(),
            proptest::option::of(0..=i64::MAX as u64),
            any::<bool>(),
            any::<bool>(),
            proptest::option::of(1..=i64::MAX as u64),
            prop_oneof![
                Just(None),
                (1..=i64::MAX as u64).prop_map(|s| Some(Since::Seconds(s))),
                (0i64..4_000_000_000, 0i32..1_000_000_000).prop_map(|(s, n)| Some(Since::Time(
                    jiff::Timestamp::new(s, n).expect("in range")
                ))),
            ],
        )
            .prop_map(
                |(follow, tail_lines, timestamps, previous, limit_bytes, since)| LogOptions {
                    follow,
                    tail_lines,
                    timestamps,
                    previous,
                    limit_bytes,
                    since,
                },
            )
    }

    proptest! {
        #[test]
        fn arbitrary_queries_never_panic(query in ".{0,200}") {
            let _ = LogOptions::from_query(&query);
        }

        #[test]
        fn query_like_strings_never_panic(
            pairs in proptest::collection::vec(
                ("(tail|tailLines|limitBytes|sinceSeconds|sinceTime|follow|previous|timestamps|x)",
                 "[-+%0-9a-fA-FT:Z.]{0,30}"),
                0..8,
            )
        ) {
            let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = LogOptions::from_query(&query.join("&"));
        }

        #[test]
        fn valid_options_round_trip(o in options()) {
            prop_assert_eq!(LogOptions::from_query(&o.to_query()), Ok(o));
        }

        #[test]
        fn negative_limits_are_always_refused(n in i64::MIN..0, which in 0..2usize) {
            let q = if which == 0 { format!("limitBytes={n}") } else { format!("tailLines={n}") };
            prop_assert!(matches!(LogOptions::from_query(&q), Err(QueryError::Invalid(_))));
        }
    }
}
