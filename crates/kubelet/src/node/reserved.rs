//! What the node keeps back from its pods, as the kubelet's `--system-reserved` and
//! `--kube-reserved`, and the allocatable resources that leaves: capacity minus both
//! reserves minus the hard eviction threshold of the resource (`memory.available`,
//! `nodefs.available`), as the kubelet computes `status.allocatable`.
//!
//! On a wasm node the agent is the container runtime and every pod lives in its process,
//! so the memory reserve is what keeps the agent's own memory (watches, caches, compiled
//! code, the pods' bookkeeping) out of the pods' reach: the wasm runtime bounds all pods'
//! memory together by the allocatable memory, as the kubelet bounds the cgroup of all
//! pods by capacity minus the reserves.

use crate::eviction::{Signal, Threshold};
use crate::quantity::{Quantity, QuantityError};

/// Resources kept back from pods: `--system-reserved` and `--kube-reserved` together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reserved {
    /// Millicores of CPU.
    pub cpu_millis: u64,
    /// Bytes of memory.
    pub memory: u64,
    /// Bytes of the data dir's filesystem.
    pub ephemeral_storage: u64,
}

/// A reserve that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReservedError {
    /// A resource the kubelet does not reserve.
    #[error(
        "cannot reserve {0:?}: the reserved resources are cpu, memory, ephemeral-storage and pid"
    )]
    Resource(String),
    /// An amount that is not a valid quantity.
    #[error("invalid amount {value:?} of {resource}: {error}")]
    Amount {
        /// The resource.
        resource: String,
        /// The amount as written.
        value: String,
        /// Why it is refused.
        #[source]
        error: QuantityError,
    },
}

impl Reserved {
    /// Adds up reserves given as `resource=quantity` pairs (the flags' form; the
    /// configuration file's maps the same). `pid` is accepted and has no effect: wasm
    /// pods start no processes.
    ///
    /// # Errors
    /// An unknown resource or an amount that does not parse.
    pub fn with_pairs(mut self, pairs: &[(String, String)]) -> Result<Self, ReservedError> {
        for (resource, value) in pairs {
            let amount = |f: fn(Quantity) -> Result<u64, QuantityError>| {
                value
                    .parse::<Quantity>()
                    .and_then(f)
                    .map_err(|error| ReservedError::Amount {
                        resource: resource.clone(),
                        value: value.clone(),
                        error,
                    })
            };
            match resource.as_str() {
                "cpu" => {
                    self.cpu_millis = self.cpu_millis.saturating_add(amount(millis)?);
                }
                "memory" => self.memory = self.memory.saturating_add(amount(Quantity::bytes)?),
                "ephemeral-storage" => {
                    self.ephemeral_storage = self
                        .ephemeral_storage
                        .saturating_add(amount(Quantity::bytes)?);
                }
                "pid" => {
                    amount(Quantity::bytes)?;
                }
                other => return Err(ReservedError::Resource(other.to_owned())),
            }
        }
        Ok(self)
    }
}

/// A CPU quantity in millicores, rounded up as the kubelet's `MilliValue()`.
fn millis(q: Quantity) -> Result<u64, QuantityError> {
    if q.is_negative() {
        return Err(QuantityError::Negative);
    }
    u64::try_from(q.milli_value()).map_err(|_| QuantityError::OutOfRange)
}

/// What a hard threshold of `signal` keeps back from a capacity of `capacity`.
fn held_back(hard: &[Threshold], signal: Signal, capacity: u64) -> u64 {
    hard.iter()
        .filter(|t| t.signal == signal)
        .map(|t| t.quantity(capacity))
        .max()
        .unwrap_or_default()
}

/// The allocatable memory of a node with `capacity` bytes: less the reserves and the
/// `memory.available` hard threshold.
#[must_use]
pub fn allocatable_memory(capacity: u64, reserved: &Reserved, hard: &[Threshold]) -> u64 {
    capacity
        .saturating_sub(reserved.memory)
        .saturating_sub(held_back(hard, Signal::MemoryAvailable, capacity))
}

/// The allocatable ephemeral storage of a data dir of `capacity` bytes: less the reserves
/// and the `nodefs.available` hard threshold.
#[must_use]
pub fn allocatable_storage(capacity: u64, reserved: &Reserved, hard: &[Threshold]) -> u64 {
    capacity
        .saturating_sub(reserved.ephemeral_storage)
        .saturating_sub(held_back(hard, Signal::NodefsAvailable, capacity))
}

/// The allocatable CPU of `cpus` cores, in millicores: less the reserves.
#[must_use]
pub fn allocatable_cpu_millis(cpus: u64, reserved: &Reserved) -> u64 {
    cpus.saturating_mul(1000)
        .saturating_sub(reserved.cpu_millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eviction::thresholds;

    fn pairs(text: &[(&str, &str)]) -> Vec<(String, String)> {
        text.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn system_and_kube_reserves_add_up() {
        let r = Reserved::default()
            .with_pairs(&pairs(&[
                ("cpu", "100m"),
                ("memory", "256Mi"),
                ("pid", "100"),
            ]))
            .and_then(|r| {
                r.with_pairs(&pairs(&[("memory", "256Mi"), ("ephemeral-storage", "1Gi")]))
            })
            .expect("valid");
        assert_eq!(
            r,
            Reserved {
                cpu_millis: 100,
                memory: 512 << 20,
                ephemeral_storage: 1 << 30
            }
        );
        assert_eq!(
            Reserved::default().with_pairs(&pairs(&[("gpu", "1")])),
            Err(ReservedError::Resource("gpu".to_owned()))
        );
        assert!(
            Reserved::default()
                .with_pairs(&pairs(&[("memory", "lots")]))
                .is_err()
        );
    }

    #[test]
    fn allocatable_is_capacity_less_the_reserves_and_the_hard_thresholds() {
        let hard = thresholds::parse("memory.available<100Mi,nodefs.available<10%").expect("hard");
        let r = Reserved {
            cpu_millis: 500,
            memory: 1 << 30,
            ephemeral_storage: 1 << 30,
        };
        assert_eq!(
            allocatable_memory(8 << 30, &r, &hard),
            (7 << 30) - (100 << 20)
        );
        assert_eq!(allocatable_storage(100 << 30, &r, &hard), 89 << 30);
        assert_eq!(allocatable_cpu_millis(2, &r), 1500);
        // More reserved than there is: nothing, never an underflow.
        assert_eq!(allocatable_memory(512 << 20, &r, &hard), 0);
    }
}
