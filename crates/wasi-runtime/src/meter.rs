//! What one container uses and may use of the CPU: the time its guest code (and the host
//! calls it makes on the guest threads) spends on a CPU, its working set, and a CPU
//! bandwidth limit enforced the way the kernel's CFS bandwidth control does it.
//!
//! Every future that runs a container's guest code is wrapped in [`Metered`]: each poll
//! reads the thread's CPU clock before it, and adds what the poll took to the
//! container's [`Meter`]: the CPU clock's difference, or, for a poll shorter than
//! [`SHORT_POLL`] by the wall clock, its wall time (the CPU clock is a system call, the
//! wall clock is not; a poll that short was hardly ever preempted, and one that was is
//! counted [`SHORT_POLL`] too much at most). A poll is one epoch slice of guest code at most (the module
//! yields at each tick), so a limited container is held back at the next slice once its
//! quota for the current period is spent, until the period ends. Time spent beyond the
//! quota (a slice overran it) is a debt paid from the following periods, so the share
//! over any second stays at the limit.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A poll that took less wall time is counted by it, without a second read of the CPU
/// clock: a served request takes a few such polls, and the clock read was 5 % of a
/// served pod's CPU under load.
pub(crate) const SHORT_POLL: Duration = Duration::from_micros(20);

/// The period of CPU bandwidth control, as the kernel's default `cpu.cfs_period_us`.
pub const CPU_PERIOD: Duration = Duration::from_millis(100);

/// A container's CPU settings, in millicores (`resources.limits.cpu`,
/// `resources.requests.cpu`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuShare {
    /// At most this much CPU over every [`CPU_PERIOD`]; `None`: unlimited.
    pub limit_millis: Option<u64>,
    /// What it asked for: how long its slices are when guest threads are contended
    /// (see [`CpuShare::slice_ticks`]).
    pub request_millis: Option<u64>,
}

impl CpuShare {
    /// Epoch ticks a module runs before it yields its guest thread to the next one:
    /// one per 100 millicores requested, at least 1 (no request) and at most 10. When
    /// more modules are busy than there are guest threads, they take turns, each for
    /// its slice, so the CPU is shared in proportion to what they requested (within
    /// that range).
    #[must_use]
    pub fn slice_ticks(&self) -> u64 {
        self.request_millis.map_or(1, |m| (m / 100).clamp(1, 10))
    }
}

/// What a container has used, as read by [`Meter::usage`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time its guest code ran, cumulative.
    pub cpu: Duration,
    /// Bytes of its linear memories and tables now, plus its compiled code.
    pub memory_bytes: u64,
    /// Bandwidth periods in which it ran (only counted with a limit).
    pub periods: u64,
    /// Of those, the periods in which it was held back.
    pub throttled_periods: u64,
    /// How long it was held back, in all.
    pub throttled: Duration,
}

/// One container's accounting; cloning is cheap, every clone counts into the same one.
#[derive(Debug, Clone)]
pub struct Meter(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// Whether polls read the CPU clock (off only to measure what that costs).
    clock: bool,
    cpu_nanos: AtomicU64,
    /// Bytes granted to the live stores' memories and tables (see `limits.rs`).
    memory: Arc<AtomicU64>,
    code_bytes: u64,
    quota: Option<Duration>,
    bandwidth: Mutex<Bandwidth>,
    periods: AtomicU64,
    throttled_periods: AtomicU64,
    throttled_nanos: AtomicU64,
}

/// The current period of a limited container.
#[derive(Debug)]
struct Bandwidth {
    /// When the current period began.
    start: Instant,
    /// CPU spent in it, debt of earlier periods included.
    used: Duration,
    /// The current period has been counted in `periods`.
    counted: bool,
    /// The current period has been counted in `throttled_periods`.
    throttled: bool,
}

impl Meter {
    /// The meter of a container limited to `share`, whose compiled code takes
    /// `code_bytes`.
    #[must_use]
    pub fn new(share: CpuShare, code_bytes: u64) -> Self {
        Self::with_clock(share, code_bytes, true)
    }

    /// The same; with `clock` false no CPU time is read, so none is counted and no
    /// limit holds (to measure what accounting costs).
    #[must_use]
    pub(crate) fn with_clock(share: CpuShare, code_bytes: u64, clock: bool) -> Self {
        let quota = share.limit_millis.map(|m| {
            let nanos = u128::from(m) * CPU_PERIOD.as_nanos() / 1000;
            // At least a microsecond: a limit of 0 would never run at all.
            Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX).max(1000))
        });
        Self(Arc::new(Inner {
            clock,
            cpu_nanos: AtomicU64::new(0),
            memory: Arc::new(AtomicU64::new(0)),
            code_bytes,
            quota,
            bandwidth: Mutex::new(Bandwidth {
                start: Instant::now(),
                used: Duration::ZERO,
                counted: false,
                throttled: false,
            }),
            periods: AtomicU64::new(0),
            throttled_periods: AtomicU64::new(0),
            throttled_nanos: AtomicU64::new(0),
        }))
    }

    /// What the container has used so far.
    #[must_use]
    pub fn usage(&self) -> Usage {
        let i = &self.0;
        Usage {
            cpu: Duration::from_nanos(i.cpu_nanos.load(Ordering::Relaxed)),
            memory_bytes: i
                .memory
                .load(Ordering::Relaxed)
                .saturating_add(i.code_bytes),
            periods: i.periods.load(Ordering::Relaxed),
            throttled_periods: i.throttled_periods.load(Ordering::Relaxed),
            throttled: Duration::from_nanos(i.throttled_nanos.load(Ordering::Relaxed)),
        }
    }

    /// The gauge the container's stores add their memory to.
    pub(crate) fn memory_gauge(&self) -> Arc<AtomicU64> {
        self.0.memory.clone()
    }

    /// Runs `future` counting its CPU time into this meter (and held back by its limit).
    pub(crate) fn wrap<F: Future>(&self, future: F) -> Metered<F> {
        Metered {
            inner: Box::pin(future),
            meter: self.clone(),
            hold: None,
        }
    }

    /// Counts `spent` of CPU.
    fn charge(&self, spent: Duration) {
        let nanos = u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX);
        self.0.cpu_nanos.fetch_add(nanos, Ordering::Relaxed);
        if self.0.quota.is_some() {
            let mut bw = self.lock();
            bw.used = bw.used.saturating_add(spent);
        }
    }

    /// Whether the container may run at `now`; `Err(until)` when its quota is spent.
    fn admit(&self, now: Instant) -> Result<(), Instant> {
        let Some(quota) = self.0.quota else {
            return Ok(());
        };
        let mut bw = self.lock();
        let elapsed = now.saturating_duration_since(bw.start);
        if elapsed >= CPU_PERIOD {
            let periods =
                u32::try_from(elapsed.as_nanos() / CPU_PERIOD.as_nanos()).unwrap_or(u32::MAX);
            // Unused quota is not saved up; a debt is paid off period by period.
            bw.used = bw.used.saturating_sub(quota.saturating_mul(periods));
            bw.start += CPU_PERIOD.saturating_mul(periods);
            bw.counted = false;
            bw.throttled = false;
        }
        if !bw.counted {
            bw.counted = true;
            self.0.periods.fetch_add(1, Ordering::Relaxed);
        }
        if bw.used < quota {
            return Ok(());
        }
        if !bw.throttled {
            bw.throttled = true;
            self.0.throttled_periods.fetch_add(1, Ordering::Relaxed);
        }
        Err(bw.start + CPU_PERIOD)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bandwidth> {
        // The state stays consistent whatever panicked while holding it.
        self.0
            .bandwidth
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The CPU time the calling thread has spent, from the kernel's per-thread clock.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// A future whose polls are counted into a [`Meter`] and held back by its limit.
pub(crate) struct Metered<F> {
    inner: Pin<Box<F>>,
    meter: Meter,
    /// The end of the current hold, while the quota is spent.
    hold: Option<(Pin<Box<tokio::time::Sleep>>, Instant)>,
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if !self.meter.0.clock {
            return self.inner.as_mut().poll(cx);
        }
        loop {
            if let Some((sleep, since)) = &mut self.hold {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let held = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
                self.meter
                    .0
                    .throttled_nanos
                    .fetch_add(held, Ordering::Relaxed);
                self.hold = None;
            }
            let now = Instant::now();
            match self.meter.admit(now) {
                Ok(()) => break,
                Err(until) => {
                    self.hold = Some((Box::pin(tokio::time::sleep_until(until.into())), now));
                }
            }
        }
        let before = thread_cpu();
        let began = Instant::now();
        let result = self.inner.as_mut().poll(cx);
        let wall = began.elapsed();
        self.meter.charge(if wall < SHORT_POLL {
            wall
        } else {
            thread_cpu().saturating_sub(before)
        });
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_follow_the_request_within_bounds() {
        let share = |r| CpuShare {
            limit_millis: None,
            request_millis: r,
        };
        assert_eq!(share(None).slice_ticks(), 1);
        assert_eq!(share(Some(50)).slice_ticks(), 1);
        assert_eq!(share(Some(250)).slice_ticks(), 2);
        assert_eq!(share(Some(1000)).slice_ticks(), 10);
        assert_eq!(share(Some(64_000)).slice_ticks(), 10);
    }

    fn limited(millis: u64) -> Meter {
        Meter::new(
            CpuShare {
                limit_millis: Some(millis),
                request_millis: None,
            },
            0,
        )
    }

    #[test]
    fn a_spent_quota_holds_until_the_period_ends_and_debt_carries_over() {
        let m = limited(200);
        let start = m.lock().start;
        assert_eq!(m.admit(start), Ok(()));
        // 20 ms is the quota of 200m; a slice overran it by 15 ms.
        m.charge(Duration::from_millis(35));
        assert_eq!(
            m.admit(start + Duration::from_millis(40)),
            Err(start + CPU_PERIOD)
        );
        // The next period pays the 15 ms debt first: 5 ms of it left.
        assert_eq!(m.admit(start + CPU_PERIOD), Ok(()));
        m.charge(Duration::from_millis(5));
        assert_eq!(
            m.admit(start + CPU_PERIOD + Duration::from_millis(1)),
            Err(start + CPU_PERIOD * 2)
        );
        let u = m.usage();
        assert_eq!(u.cpu, Duration::from_millis(40));
        assert_eq!((u.periods, u.throttled_periods), (2, 2));
        // Idle periods do not save quota up.
        assert_eq!(m.admit(start + CPU_PERIOD * 10), Ok(()));
        m.charge(Duration::from_millis(20));
        assert!(
            m.admit(start + CPU_PERIOD * 10 + Duration::from_millis(30))
                .is_err()
        );
    }

    #[test]
    fn unlimited_never_holds_and_counts_no_periods() {
        let m = Meter::new(CpuShare::default(), 4096);
        m.charge(Duration::from_secs(5));
        assert_eq!(m.admit(Instant::now()), Ok(()));
        let u = m.usage();
        assert_eq!((u.periods, u.throttled_periods), (0, 0));
        // Compiled code counts even with no store alive.
        assert_eq!(u.memory_bytes, 4096);
    }

    /// Spins on the CPU for `busy` per poll, `polls` times.
    struct Spin {
        busy: Duration,
        polls: u32,
    }

    impl Future for Spin {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let start = thread_cpu();
            while thread_cpu() - start < self.busy {}
            self.polls -= 1;
            if self.polls == 0 {
                return Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn polls_shorter_than_a_short_poll_still_count() {
        // 2000 polls of 5 us each: each is counted by its wall time, which is at
        // least the CPU it spun.
        let m = Meter::new(CpuShare::default(), 0);
        m.wrap(Spin {
            busy: Duration::from_micros(5),
            polls: 2000,
        })
        .await;
        let u = m.usage();
        assert!(u.cpu >= Duration::from_millis(10), "{u:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_limited_spinner_gets_its_share_of_wall_time() {
        // 10 polls of 5 ms at 100m (10 ms per 100 ms): the last poll cannot begin
        // before 45 ms of CPU have been paid for by 4 whole periods, however busy the
        // machine is.
        let m = limited(100);
        let began = Instant::now();
        m.wrap(Spin {
            busy: Duration::from_millis(5),
            polls: 10,
        })
        .await;
        let took = began.elapsed();
        let u = m.usage();
        assert!(u.cpu >= Duration::from_millis(50), "{u:?}");
        assert!(
            took >= Duration::from_millis(400),
            "done in {took:?}: not held back"
        );
        // (How often and how long it was held depends on how busy the machine is: a
        // slow poll spans periods by itself.)
        assert!(u.periods >= 1, "{u:?}");
    }
}
