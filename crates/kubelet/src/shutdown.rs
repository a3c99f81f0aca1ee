//! Graceful node shutdown, as the kubelet's `GracefulNodeShutdown`: once it begins, the
//! node reports not ready, new pods are rejected, regular pods are killed within
//! `shutdownGracePeriod - shutdownGracePeriodCriticalPods`, then critical pods (priority
//! at least `system-cluster-critical`'s) within `shutdownGracePeriodCriticalPods`; each is
//! reported `Failed` with the kubelet's reason, message and `DisruptionTarget` condition.
//!
//! What begins it (SIGTERM, SIGINT) is the binary's affair; [`run`] is told by a token.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::pods::PodsHandle;

/// The priority of `system-cluster-critical` (and the lowest of a critical pod).
pub const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;
/// A killed pod's `status.reason`.
pub const REASON: &str = "Terminated";
/// A killed pod's `status.message` and its `DisruptionTarget` condition's message.
pub const MESSAGE: &str = "Pod was terminated in response to imminent node shutdown.";
/// The `DisruptionTarget` condition's reason.
pub const DISRUPTION_REASON: &str = "TerminationByKubelet";
/// The reason of a pod rejected while the node shuts down.
pub const NOT_ADMITTED_REASON: &str = "NodeShutdown";
/// Its message.
pub const NOT_ADMITTED_MESSAGE: &str = "Pod was rejected as the node is shutting down.";
/// The node's `Ready=False` message during the shutdown.
pub const NOT_READY_MESSAGE: &str = "node is shutting down";

/// `shutdownGracePeriod` and `shutdownGracePeriodCriticalPods`; zero: no graceful
/// shutdown (the agent stops its workloads and keeps the sandboxes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings {
    grace_period: Duration,
    critical_pods: Duration,
}

/// Why [`Settings::new`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shutdownGracePeriodCriticalPods {critical:?} must be <= shutdownGracePeriod {total:?}")]
pub struct InvalidSettings {
    critical: Duration,
    total: Duration,
}

/// One step of the shutdown: pods of at least `min_priority` (below the next step's),
/// killed within `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Group {
    min_priority: i32,
    period: Duration,
}

/// The pods one step kills, each with its grace period, and how long it waits for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// How long the step waits for its pods.
    pub period: Duration,
    /// Pod UIDs with the grace period each is killed with.
    pub pods: Vec<(String, Duration)>,
}

impl Settings {
    /// The settings, whole seconds as the kubelet counts them.
    ///
    /// # Errors
    /// When the critical pods' period is longer than the whole.
    pub fn new(grace_period: Duration, critical_pods: Duration) -> Result<Self, InvalidSettings> {
        let whole = |d: Duration| Duration::from_secs(d.as_secs());
        let (grace_period, critical_pods) = (whole(grace_period), whole(critical_pods));
        if critical_pods > grace_period {
            return Err(InvalidSettings {
                critical: critical_pods,
                total: grace_period,
            });
        }
        Ok(Self {
            grace_period,
            critical_pods,
        })
    }

    /// Whether a graceful shutdown is configured.
    #[must_use]
    pub fn enabled(&self) -> bool {
        !self.grace_period.is_zero()
    }

    /// The whole period.
    #[must_use]
    pub fn grace_period(&self) -> Duration {
        self.grace_period
    }

    /// Regular pods first, critical pods last, as the kubelet splits the period.
    fn groups(&self) -> [Group; 2] {
        [
            Group {
                min_priority: i32::MIN,
                period: self.grace_period - self.critical_pods,
            },
            Group {
                min_priority: SYSTEM_CRITICAL_PRIORITY,
                period: self.critical_pods,
            },
        ]
    }

    /// The steps that kill `pods`: a pod belongs to the last group whose priority it
    /// reaches (no priority counts as 0); its grace period is the group's, or its own
    /// `terminationGracePeriodSeconds` when shorter. Groups without pods are left out.
    #[must_use]
    pub fn plan(&self, pods: &[Pod]) -> Vec<Step> {
        let groups = self.groups();
        let mut steps: Vec<Step> = groups
            .iter()
            .map(|g| Step {
                period: g.period,
                pods: Vec::new(),
            })
            .collect();
        for pod in pods {
            let spec = pod.spec.as_ref();
            let mut priority = spec.and_then(|s| s.priority).unwrap_or(0);
            // A static pod is critical to the kubelet whatever its priority.
            if crate::eviction::is_critical(pod) {
                priority = priority.max(SYSTEM_CRITICAL_PRIORITY);
            }
            let index = groups
                .iter()
                .rposition(|g| priority >= g.min_priority)
                .unwrap_or(0);
            let own = spec
                .and_then(|s| s.termination_grace_period_seconds)
                .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)));
            let period = groups[index].period;
            let grace = own.map_or(period, |own| own.min(period));
            steps[index]
                .pods
                .push((pod.uid().unwrap_or_default(), grace));
        }
        steps.retain(|s| !s.pods.is_empty());
        steps
    }
}

/// Whether the node is shutting down: the heartbeat reports it not ready, admission
/// rejects new pods.
#[derive(Debug, Clone)]
pub struct ShuttingDown(Arc<watch::Sender<bool>>);

impl Default for ShuttingDown {
    fn default() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }
}

impl ShuttingDown {
    /// Whether the node is shutting down now.
    #[must_use]
    pub fn get(&self) -> bool {
        *self.0.borrow()
    }

    /// A receiver that sees the change.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }

    fn begin(&self) {
        self.0.send_replace(true);
    }
}

/// The kubelet's admission during a shutdown: every pod rejected.
pub(crate) fn admit(shutting_down: bool) -> Option<crate::pods::admission::Rejection> {
    shutting_down
        .then(|| crate::pods::admission::Rejection::new(NOT_ADMITTED_REASON, NOT_ADMITTED_MESSAGE))
}

/// Waits for `begin`, then shuts the node's pods down by [`Settings::plan`] and cancels
/// `stop`, which stops the rest of the agent; returns whether it did. A `stop` from
/// elsewhere (a second signal) ends it at once.
pub(crate) async fn run(
    settings: Settings,
    pods: PodsHandle,
    state: ShuttingDown,
    begin: CancellationToken,
    stop: CancellationToken,
) -> bool {
    tokio::select! {
        () = stop.cancelled() => return false,
        () = begin.cancelled() => {}
    }
    let end = Instant::now() + settings.grace_period;
    tracing::info!(
        period = ?settings.grace_period,
        critical_pods = ?settings.critical_pods,
        "graceful node shutdown"
    );
    state.begin();
    let steps = settings.plan(&pods.active_pods().await);
    let killing = async {
        for step in steps {
            let count = step.pods.len();
            let done = pods.shut_down(step.pods).await;
            let until = (Instant::now() + step.period).min(end);
            let all = async {
                for mut d in done {
                    let _ = d.wait_for(|done| *done).await;
                }
            };
            match tokio::time::timeout_at(until, all).await {
                Ok(()) => tracing::info!(pods = count, "pods shut down"),
                Err(_) => tracing::warn!(
                    pods = count,
                    period = ?step.period,
                    "pods not shut down within their period"
                ),
            }
        }
    };
    tokio::select! {
        () = stop.cancelled() => tracing::warn!("graceful node shutdown cut short"),
        () = killing => {}
    }
    stop.cancel();
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, priority: Option<i32>, grace: Option<i64>) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.uid = Some(uid.to_owned());
        pod.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            priority,
            termination_grace_period_seconds: grace,
            ..Default::default()
        });
        pod
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn regular_pods_first_then_critical_each_within_its_share() {
        let settings = Settings::new(secs(30), secs(10)).expect("valid");
        let pods = [
            pod("critical", Some(SYSTEM_CRITICAL_PRIORITY), Some(30)),
            pod("regular", None, Some(30)),
            pod("quick", Some(1000), Some(5)),
            pod("node-critical", Some(2_000_001_000), None),
            pod("negative", Some(-5), None),
        ];
        let steps = settings.plan(&pods);
        fn grace(s: &Step) -> Vec<(&str, u64)> {
            s.pods
                .iter()
                .map(|(uid, g)| (uid.as_str(), g.as_secs()))
                .collect()
        }
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].period, secs(20));
        assert_eq!(
            grace(&steps[0]),
            [("regular", 20), ("quick", 5), ("negative", 20)]
        );
        assert_eq!(steps[1].period, secs(10));
        assert_eq!(grace(&steps[1]), [("critical", 10), ("node-critical", 10)]);
    }

    #[test]
    fn a_group_without_pods_is_no_step_and_zero_is_disabled() {
        let settings = Settings::new(secs(10), Duration::ZERO).expect("valid");
        let steps = settings.plan(&[pod("a", None, None)]);
        assert_eq!(
            steps,
            [Step {
                period: secs(10),
                pods: vec![("a".to_owned(), secs(10))]
            }]
        );
        assert!(settings.plan(&[]).is_empty());
        assert!(!Settings::default().enabled());
        assert!(settings.enabled());
    }

    #[test]
    fn the_critical_share_may_not_exceed_the_whole_and_periods_are_whole_seconds() {
        assert!(Settings::new(secs(5), secs(6)).is_err());
        let s = Settings::new(Duration::from_millis(10_900), Duration::from_millis(900))
            .expect("valid");
        assert_eq!(s.groups()[0].period, secs(10));
        assert_eq!(s.groups()[1].period, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_begins_when_the_agent_stops_first() {
        let (handle, _commands) = PodsHandle::new();
        let state = ShuttingDown::default();
        let (begin, stop) = (CancellationToken::new(), CancellationToken::new());
        stop.cancel();
        let ran = run(Settings::default(), handle, state.clone(), begin, stop).await;
        assert!(!ran && !state.get());
    }

    #[tokio::test(start_paused = true)]
    async fn critical_pods_are_shut_down_only_after_the_regular_ones_or_their_period() {
        use crate::pods::Command;
        let (handle, mut commands) = PodsHandle::new();
        let state = ShuttingDown::default();
        let (begin, stop) = (CancellationToken::new(), CancellationToken::new());
        let settings = Settings::new(secs(30), secs(10)).expect("valid");
        let started = Instant::now();
        let manager = tokio::spawn(run(
            settings,
            handle,
            state.clone(),
            begin.clone(),
            stop.clone(),
        ));
        begin.cancel();
        // The pods loop: two regular pods (one that never finishes), one critical.
        let mut asked = Vec::new();
        let mut keep = Vec::new();
        while let Some(command) = commands.recv().await {
            match command {
                Command::ActivePods(reply) => {
                    assert!(
                        state.get(),
                        "not ready and rejecting before the pods are listed"
                    );
                    let _ = reply.send(vec![
                        pod("critical", Some(SYSTEM_CRITICAL_PRIORITY), None),
                        pod("quick", None, Some(3)),
                        pod("stuck", None, None),
                    ]);
                }
                Command::Shutdown { pods, reply } => {
                    asked.push((started.elapsed().as_secs(), pods.clone()));
                    let done: Vec<_> = pods
                        .iter()
                        .map(|(uid, _)| {
                            let (tx, rx) = watch::channel(false);
                            if uid != "stuck" {
                                tx.send_replace(true);
                            }
                            keep.push(tx);
                            rx
                        })
                        .collect();
                    let _ = reply.send(done);
                }
                Command::Evict { .. } | Command::AllPods(_) => unreachable!(),
            }
            if asked.len() == 2 {
                break;
            }
        }
        assert!(manager.await.expect("manager"));
        assert!(stop.is_cancelled());
        let uids = |pods: &[(String, Duration)]| {
            pods.iter()
                .map(|(u, g)| (u.clone(), g.as_secs()))
                .collect::<Vec<_>>()
        };
        // The regular pods first; the critical one once the stuck pod's 20 s are over.
        assert_eq!(asked[0].0, 0);
        assert_eq!(
            uids(&asked[0].1),
            [("quick".to_owned(), 3), ("stuck".to_owned(), 20)]
        );
        assert_eq!(asked[1].0, 20);
        assert_eq!(uids(&asked[1].1), [("critical".to_owned(), 10)]);
        assert_eq!(
            started.elapsed(),
            secs(20),
            "the critical pod was done at once"
        );
    }
}
