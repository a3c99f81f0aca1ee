//! Eviction signals and hard thresholds as the kubelet spells them
//! (`memory.available<100Mi,nodefs.available<10%`), and which of them the node crosses.

use std::fmt;

/// What the eviction manager observes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    /// Memory the host has available (`MemAvailable`).
    MemoryAvailable,
    /// Free bytes of the filesystem holding the data dir (pods' logs and volumes).
    NodefsAvailable,
    /// Free inodes of that filesystem.
    NodefsInodesFree,
    /// Free bytes of the filesystem holding images.
    ImagefsAvailable,
    /// Free inodes of that filesystem.
    ImagefsInodesFree,
}

impl Signal {
    const ALL: [Self; 5] = [
        Self::MemoryAvailable,
        Self::NodefsAvailable,
        Self::NodefsInodesFree,
        Self::ImagefsAvailable,
        Self::ImagefsInodesFree,
    ];

    /// The kubelet's name of the signal.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::MemoryAvailable => "memory.available",
            Self::NodefsAvailable => "nodefs.available",
            Self::NodefsInodesFree => "nodefs.inodesFree",
            Self::ImagefsAvailable => "imagefs.available",
            Self::ImagefsInodesFree => "imagefs.inodesFree",
        }
    }

    /// The resource the kubelet names in an eviction message for this signal.
    #[must_use]
    pub fn resource(self) -> &'static str {
        match self {
            Self::MemoryAvailable => "memory",
            Self::NodefsAvailable | Self::ImagefsAvailable => "ephemeral-storage",
            Self::NodefsInodesFree | Self::ImagefsInodesFree => "inodes",
        }
    }

    /// Whether crossing it is disk pressure (else memory pressure).
    #[must_use]
    pub fn is_disk(self) -> bool {
        self != Self::MemoryAvailable
    }

    /// Whether it counts bytes (else inodes).
    fn is_bytes(self) -> bool {
        matches!(
            self,
            Self::MemoryAvailable | Self::NodefsAvailable | Self::ImagefsAvailable
        )
    }
}

/// A threshold's amount: a quantity or a share of the capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    /// Bytes (or inodes).
    Absolute(u64),
    /// Percent of the capacity, 0 to 100.
    Percent(f64),
}

/// One hard threshold: evict when `signal` falls below `amount`.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// What is observed.
    pub signal: Signal,
    /// Below what.
    pub amount: Amount,
}

impl Threshold {
    /// The amount in bytes (or inodes) for a resource of `capacity`.
    #[must_use]
    pub fn quantity(&self, capacity: u64) -> u64 {
        match self.amount {
            Amount::Absolute(n) => n,
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            Amount::Percent(p) => (capacity as f64 * p / 100.0) as u64,
        }
    }
}

/// The kubelet's default hard thresholds on Linux.
pub const DEFAULT_EVICTION_HARD: &str = "memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,imagefs.available<15%,imagefs.inodesFree<5%";

/// Parses `--eviction-hard`: `signal<amount` pairs separated by commas, an amount a
/// quantity (`100Mi`, `1Gi`, `500000`) or a percentage (`10%`). An empty text sets none.
///
/// # Errors
/// The reason, for an unknown signal, an operator other than `<`, or a bad amount.
pub fn parse(text: &str) -> Result<Vec<Threshold>, String> {
    let mut out: Vec<Threshold> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, amount) = part
            .split_once('<')
            .ok_or_else(|| format!("eviction threshold {part:?}: expected signal<amount"))?;
        let signal = Signal::ALL
            .into_iter()
            .find(|s| s.name() == name.trim())
            .ok_or_else(|| format!("eviction threshold {part:?}: unknown signal {name:?}"))?;
        let amount = amount.trim();
        let amount = if let Some(p) = amount.strip_suffix('%') {
            let p: f64 = p
                .parse()
                .map_err(|_| format!("eviction threshold {part:?}: bad percentage"))?;
            if !(0.0..=100.0).contains(&p) {
                return Err(format!(
                    "eviction threshold {part:?}: percentage must be within 0% and 100%"
                ));
            }
            Amount::Percent(p)
        } else {
            let n = amount
                .parse::<crate::quantity::Quantity>()
                .ok()
                .and_then(|q| q.bytes().ok())
                .ok_or_else(|| format!("eviction threshold {part:?}: bad quantity"))?;
            Amount::Absolute(n)
        };
        if out.iter().any(|t| t.signal == signal) {
            return Err(format!(
                "eviction threshold {part:?}: {name} is given twice"
            ));
        }
        out.push(Threshold { signal, amount });
    }
    Ok(out)
}

/// What one signal measured: what is available of how much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// Available (bytes or inodes).
    pub available: u64,
    /// Capacity (bytes or inodes).
    pub capacity: u64,
}

/// A threshold the node has crossed, with what was observed.
#[derive(Debug, Clone, PartialEq)]
pub struct Crossed {
    /// The threshold.
    pub threshold: Threshold,
    /// The observation that crossed it.
    pub observed: Observation,
}

impl Crossed {
    /// The kubelet's eviction message for a pod evicted for it.
    #[must_use]
    pub fn message(&self) -> String {
        let signal = self.threshold.signal;
        let show = |n: u64| {
            if signal.is_bytes() {
                Binary(n).to_string()
            } else {
                n.to_string()
            }
        };
        format!(
            "The node was low on resource: {}. Threshold quantity: {}, available: {}. ",
            signal.resource(),
            show(self.threshold.quantity(self.observed.capacity)),
            show(self.observed.available),
        )
    }
}

/// The thresholds of `thresholds` that `observe` says are crossed, memory first.
pub fn crossed(
    thresholds: &[Threshold],
    observe: impl Fn(Signal) -> Option<Observation>,
) -> Vec<Crossed> {
    let mut out: Vec<Crossed> = thresholds
        .iter()
        .filter_map(|t| {
            let observed = observe(t.signal)?;
            (observed.available < t.quantity(observed.capacity)).then(|| Crossed {
                threshold: t.clone(),
                observed,
            })
        })
        .collect();
    out.sort_by_key(|c| c.threshold.signal);
    out
}

/// Bytes as Kubernetes prints a binary quantity: the largest of `Ki`..`Ei` that divides
/// it exactly, else plain bytes.
pub(crate) struct Binary(pub(crate) u64);

impl fmt::Display for Binary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SUFFIXES: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
        let mut n = self.0;
        let mut suffix = "";
        for s in SUFFIXES {
            if n == 0 || !n.is_multiple_of(1024) {
                break;
            }
            n /= 1024;
            suffix = s;
        }
        write!(f, "{n}{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_default_thresholds_parse() {
        let t = parse(DEFAULT_EVICTION_HARD).expect("default");
        assert_eq!(t.len(), 5);
        assert_eq!(t[0].signal, Signal::MemoryAvailable);
        assert_eq!(t[0].amount, Amount::Absolute(100 << 20));
        assert_eq!(t[1].amount, Amount::Percent(10.0));
        assert!(parse("").expect("empty").is_empty());
    }

    #[test]
    fn bad_thresholds_are_refused_with_a_reason() {
        for (text, reason) in [
            ("memory.available>1Mi", "expected signal<amount"),
            ("disk.available<1Mi", "unknown signal"),
            ("nodefs.available<110%", "within 0% and 100%"),
            ("nodefs.available<lots", "bad quantity"),
            ("nodefs.available<1%,nodefs.available<2%", "given twice"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(reason), "{text}: {err}");
        }
    }

    #[test]
    fn a_crossed_threshold_reads_as_the_kubelets_message() {
        let t = parse("nodefs.available<10%,memory.available<100Mi").expect("parse");
        let observe = |s: Signal| match s {
            Signal::NodefsAvailable => Some(Observation {
                available: 5 << 20,
                capacity: 100 << 20,
            }),
            Signal::MemoryAvailable => Some(Observation {
                available: 1 << 30,
                capacity: 4 << 30,
            }),
            _ => None,
        };
        let crossed = crossed(&t, observe);
        assert_eq!(crossed.len(), 1);
        assert_eq!(
            crossed[0].message(),
            "The node was low on resource: ephemeral-storage. Threshold quantity: 10Mi, available: 5Mi. "
        );
        assert_eq!(Binary(1536).to_string(), "1536");
        assert_eq!(Binary(0).to_string(), "0");
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,80}") {
            let _ = parse(&text);
        }

        #[test]
        fn a_threshold_is_crossed_exactly_below_its_amount(
            amount in 0u64..1 << 40, available in 0u64..1 << 40,
        ) {
            let t = [Threshold { signal: Signal::NodefsAvailable, amount: Amount::Absolute(amount) }];
            let observed = Observation { available, capacity: 1 << 41 };
            let crossed = crossed(&t, |_| Some(observed));
            prop_assert_eq!(crossed.len() == 1, available < amount);
        }
    }
}
