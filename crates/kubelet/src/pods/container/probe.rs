//! A container's probes beside its run, as the kubelet's prober runs them: the startup
//! probe first (the container is not `started` until it succeeds), then liveness and
//! readiness side by side. Every failure is an `Unhealthy` event with the kubelet's
//! message; readiness moves the container's `ready`; a startup or liveness probe that
//! reaches its failure threshold ends the run so that it is restarted.

use std::net::IpAddr;

use super::Supervisor;
use crate::events::EventType;
use crate::pods::probe::{self, Kind, Spec, Thresholds};

/// A probe's failure when the pod has no address: no network of its own on a node
/// without a pod network (the probe is not sent to the node's ports instead).
const NO_POD_IP: &str =
    "the pod has no IP address to probe: it has no network of its own on this node";

impl Supervisor {
    /// What a new run's startup and readiness are until its probes say otherwise: not
    /// passed (`Some(false)`) for each probe it has, so that the run is not ready for a
    /// moment between entering Running and its first probe. Set with the Running state
    /// itself: a Service or a rolling update would take that moment as ready.
    pub(super) fn unprobed(&self) -> (Option<bool>, Option<bool>) {
        let c = &self.spec;
        if self.slot.init && c.restart_policy.as_deref() != Some("Always") {
            return (None, None);
        }
        let has = |p: Option<&k8s_openapi::api::core::v1::Probe>| {
            p.and_then(|p| probe::spec(p, c)).is_some()
        };
        (
            has(c.startup_probe.as_ref()).then_some(false),
            has(c.readiness_probe.as_ref()).then_some(false),
        )
    }

    /// The probes of this run against `ip`; returns only when a startup or liveness
    /// probe failed for good (the run is to be killed and restarted).
    pub(super) async fn probe(&self, ip: Option<IpAddr>) -> Kind {
        let c = &self.spec;
        // Regular init containers are not probed; sidecars are.
        if self.slot.init && c.restart_policy.as_deref() != Some("Always") {
            return std::future::pending().await;
        }
        let spec =
            |p: Option<&k8s_openapi::api::core::v1::Probe>| p.and_then(|p| probe::spec(p, c));
        let (startup, liveness, readiness) = (
            spec(c.startup_probe.as_ref()),
            spec(c.liveness_probe.as_ref()),
            spec(c.readiness_probe.as_ref()),
        );
        let slot = self.slot;
        if let Some(s) = startup {
            if !self.run_probe(Kind::Startup, &s, ip).await {
                return Kind::Startup;
            }
            self.shared.update(slot, |r| r.probe_started = Some(true));
        }
        let live = async {
            match &liveness {
                Some(s) => {
                    self.run_probe(Kind::Liveness, s, ip).await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let ready = async {
            match &readiness {
                Some(s) => {
                    self.run_probe(Kind::Readiness, s, ip).await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = live => Kind::Liveness,
            () = ready => std::future::pending().await,
        }
    }

    /// One probe's loop: false when a startup or liveness probe fails for good, true when
    /// a startup probe succeeds; a readiness probe never returns.
    async fn run_probe(&self, kind: Kind, spec: &Spec, ip: Option<IpAddr>) -> bool {
        tokio::time::sleep(spec.initial_delay).await;
        let mut thresholds = Thresholds::default();
        loop {
            let result = match ip {
                Some(ip) => probe::run(&spec.check, ip, spec.timeout).await,
                None => Err(NO_POD_IP.to_owned()),
            };
            if let Err(message) = &result {
                self.event(
                    EventType::Warning,
                    "Unhealthy",
                    format!("{} probe failed: {message}", kind.as_str()),
                )
                .await;
            }
            match (kind, thresholds.observe(spec, result.is_ok())) {
                (Kind::Startup, Some(true)) => return true,
                (Kind::Startup | Kind::Liveness, Some(false)) => return false,
                (Kind::Readiness, Some(v)) => {
                    self.shared.update(self.slot, |r| r.probe_ready = Some(v));
                }
                _ => {}
            }
            tokio::time::sleep(spec.period).await;
        }
    }
}
