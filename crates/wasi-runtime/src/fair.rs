//! A node-wide budget of slots (served instances, served connections) shared fairly
//! among the pods that use it: each pod is guaranteed a reserve of its own, the rest is
//! shared first come, first served, up to a cap per pod.
//!
//! With `n` pods registered, each pod's reserve is `total / n`, at most
//! `reserve`. A pod may take a slot when it stays within its cap and the slots in use,
//! plus the slot asked for, plus what the other pods' reserves still lack, fit in the
//! total: so whatever one pod holds, every other pod finds its reserve free, or freed as
//! soon as the slots taken from it before it came are given back (a served request's
//! time is bounded, so that is soon).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

/// How a [`FairPool`] is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shares {
    /// Slots on the node.
    pub total: usize,
    /// The most a pod is guaranteed (less when the pods are many).
    pub reserve: usize,
    /// The most one pod may hold.
    pub per_pod: usize,
}

/// The slots and who holds them.
#[derive(Debug)]
struct Inner {
    shares: Shares,
    held: Mutex<Held>,
    freed: Notify,
}

#[derive(Debug, Default)]
struct Held {
    /// Slots each registered pod holds, by registration number.
    by_pod: HashMap<u64, usize>,
    used: usize,
    next_id: u64,
}

/// A budget of slots shared by the pods registered with it; cloning is cheap.
#[derive(Debug, Clone)]
pub(crate) struct FairPool(Arc<Inner>);

/// One pod's membership of a [`FairPool`]; dropping it unregisters the pod (its permits
/// keep their slots until they are dropped).
#[derive(Debug)]
pub(crate) struct Tenant {
    pool: FairPool,
    id: u64,
}

/// One slot, given back when dropped.
#[derive(Debug)]
pub(crate) struct Permit {
    pool: FairPool,
    id: u64,
}

impl FairPool {
    pub(crate) fn new(shares: Shares) -> Self {
        Self(Arc::new(Inner {
            shares,
            held: Mutex::default(),
            freed: Notify::new(),
        }))
    }

    /// Registers a pod.
    pub(crate) fn tenant(&self) -> Tenant {
        let mut held = self.lock();
        let id = held.next_id;
        held.next_id += 1;
        held.by_pod.insert(id, 0);
        drop(held);
        Tenant {
            pool: self.clone(),
            id,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        // The counts stay consistent under every early return: keep using them.
        self.0.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Slots in use on the node.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.lock().used
    }
}

impl Tenant {
    /// A slot if one is free for this pod now.
    pub(crate) fn try_acquire(&self) -> Option<Permit> {
        let shares = self.pool.0.shares;
        let mut held = self.pool.lock();
        let pods = held.by_pod.len().max(1);
        let reserve = (shares.total / pods).min(shares.reserve);
        let mine = held.by_pod.get(&self.id).copied().unwrap_or_default();
        let others_lack: usize = held
            .by_pod
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(_, h)| reserve.saturating_sub(*h))
            .sum();
        let fits = mine < shares.per_pod && held.used + 1 + others_lack <= shares.total;
        if !fits {
            return None;
        }
        held.used += 1;
        if let Some(h) = held.by_pod.get_mut(&self.id) {
            *h += 1;
        }
        Some(Permit {
            pool: self.pool.clone(),
            id: self.id,
        })
    }

    /// A slot, waiting for one to be given back for at most `wait` (`None`: as long as
    /// it takes).
    pub(crate) async fn acquire(&self, wait: Option<Duration>) -> Option<Permit> {
        let waiting = async {
            loop {
                let freed = self.pool.0.freed.notified();
                tokio::pin!(freed);
                // Registered before the look, so a slot freed in between wakes it.
                freed.as_mut().enable();
                if let Some(p) = self.try_acquire() {
                    return p;
                }
                freed.await;
            }
        };
        match wait {
            Some(wait) => tokio::time::timeout(wait, waiting).await.ok(),
            None => Some(waiting.await),
        }
    }
}

impl Drop for Tenant {
    fn drop(&mut self) {
        let mut held = self.pool.lock();
        held.by_pod.remove(&self.id);
        drop(held);
        // Its reserve is the others' now.
        self.pool.0.freed.notify_waiters();
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut held = self.pool.lock();
        held.used = held.used.saturating_sub(1);
        if let Some(h) = held.by_pod.get_mut(&self.id) {
            *h = h.saturating_sub(1);
        }
        drop(held);
        self.pool.0.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(total: usize, reserve: usize, per_pod: usize) -> FairPool {
        FairPool::new(Shares {
            total,
            reserve,
            per_pod,
        })
    }

    fn take(t: &Tenant, n: usize) -> Vec<Permit> {
        std::iter::from_fn(|| t.try_acquire()).take(n).collect()
    }

    #[test]
    fn greedy_pods_leave_every_other_pod_its_reserve() {
        let p = pool(100, 8, 100);
        let greedy: Vec<Tenant> = (0..10).map(|_| p.tenant()).collect();
        let quiet = p.tenant();
        // Eleven pods: each is guaranteed 8; the greedy ones share the other 12.
        let held: Vec<Vec<Permit>> = greedy.iter().map(|t| take(t, 100)).collect();
        assert_eq!(held.iter().map(Vec::len).sum::<usize>(), 100 - 8);
        let quiet_held = take(&quiet, 100);
        assert_eq!(quiet_held.len(), 8);
        assert_eq!(p.used(), 100);
    }

    #[test]
    fn a_lone_pod_may_take_up_to_its_cap_and_gives_back_to_newcomers() {
        let p = pool(100, 8, 60);
        let first = p.tenant();
        let mut held = take(&first, 100);
        assert_eq!(held.len(), 60, "the cap per pod");
        let second = p.tenant();
        // The first is at its cap; the newcomer takes the rest.
        assert!(first.try_acquire().is_none());
        let second_held = take(&second, 100);
        assert_eq!(second_held.len(), 40);
        held.clear();
        assert_eq!(p.used(), 40);
    }

    #[test]
    fn slots_taken_before_a_pod_came_come_back_to_it_first() {
        let p = pool(10, 8, 100);
        let first = p.tenant();
        let mut held = take(&first, 10);
        assert_eq!(held.len(), 10);
        let second = p.tenant();
        assert!(second.try_acquire().is_none(), "all ten are held");
        // Reserves are now 5 each: what the first gives back goes to the second until
        // the second has its 5.
        held.truncate(7);
        assert!(first.try_acquire().is_none());
        let mut second_held = take(&second, 10);
        assert_eq!(second_held.len(), 3);
        held.truncate(5);
        second_held.extend(take(&second, 10));
        assert_eq!(second_held.len(), 5);
        assert!(first.try_acquire().is_none());
    }

    #[test]
    fn many_pods_share_what_there_is() {
        let p = pool(10, 8, 100);
        let tenants: Vec<Tenant> = (0..20).map(|_| p.tenant()).collect();
        // Reserves of zero: first come, first served, never past the total.
        let held: Vec<Vec<Permit>> = tenants.iter().map(|t| take(t, 1)).collect();
        assert_eq!(held.iter().map(Vec::len).sum::<usize>(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gets_the_next_slot_given_back_or_gives_up() {
        let p = pool(1, 1, 1);
        let a = p.tenant();
        let permit = a.try_acquire().expect("free");
        assert!(a.acquire(Some(Duration::from_secs(5))).await.is_none());
        let waiter =
            tokio::spawn(async move { a.acquire(Some(Duration::from_secs(5))).await.is_some() });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(permit);
        assert!(waiter.await.expect("join"));
    }
}
