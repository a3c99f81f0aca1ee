//! The pools' eviction, promotion and the sessions' bounds, as pure logic.

use super::*;

#[test]
fn a_full_pool_closes_its_oldest_member_for_a_newcomer() {
    let pool = Pool::new(2);
    let first = pool.join();
    let second = pool.join();
    assert!(!first.closed().is_cancelled());
    let third = pool.join();
    assert!(first.closed().is_cancelled(), "the oldest made room");
    assert!(!second.closed().is_cancelled());
    assert!(!third.closed().is_cancelled());
    assert_eq!(pool.len(), 2);
    drop(first);
    assert_eq!(pool.len(), 2, "an evicted member no longer counts");
    drop(second);
    assert_eq!(pool.len(), 1);
    let _fourth = pool.join();
    assert!(!third.closed().is_cancelled(), "there was room");
}

#[test]
fn certified_connections_do_not_share_the_strangers_pool() {
    let limits = Arc::new(Limits {
        handshakes: Pool::new(4),
        anonymous: Pool::new(2),
        authenticated: Arc::new(Semaphore::new(1)),
    });
    let certified = Connection::admit(&limits, true);
    assert!(certified.is_authenticated());
    let strangers: Vec<_> = (0..10).map(|_| Connection::admit(&limits, false)).collect();
    assert!(!certified.closed().is_cancelled());
    assert_eq!(limits.anonymous.len(), 2);
    assert_eq!(
        strangers
            .iter()
            .filter(|c| c.closed().is_cancelled())
            .count(),
        8
    );
    // With the certified places taken, a second certificate holder waits with the
    // strangers instead of being turned away.
    let another = Connection::admit(&limits, true);
    assert!(!another.is_authenticated());
    drop(certified);
    // Authorized: it moves out of the strangers' reach.
    another.authorized();
    assert!(another.is_authenticated());
    for _ in 0..4 {
        let _ = Connection::admit(&limits, false);
    }
    assert!(!another.closed().is_cancelled());
}

#[test]
fn idleness_counts_from_the_last_request_and_never_during_one() {
    let limits = Arc::new(Limits::default());
    let conn = Connection::admit(&limits, false);
    let watch = conn.watch();
    let timeouts = Timeouts::default();
    let start = watch.borrow().since;
    assert_eq!(
        timeouts.idle_deadline(&watch.borrow()),
        Some(start + FIRST_REQUEST_TIMEOUT)
    );
    let request = conn.request();
    assert_eq!(timeouts.idle_deadline(&watch.borrow()), None);
    drop(request);
    let activity = *watch.borrow();
    assert_eq!(
        timeouts.idle_deadline(&activity),
        Some(activity.since + IDLE_TIMEOUT)
    );
}

#[test]
fn sessions_are_bounded_per_node_and_per_pod() {
    let sessions = Sessions::new(3, 2);
    let a1 = sessions.open("a").expect("room");
    let _a2 = sessions.open("a").expect("room");
    assert_eq!(sessions.open("a").err(), Some(SessionRefused::Pod(2)));
    let _b1 = sessions.open("b").expect("room");
    assert_eq!(sessions.open("c").err(), Some(SessionRefused::Node(3)));
    drop(a1);
    let _c1 = sessions.open("c").expect("a place was given back");
}

/// A client certificate alone (another node's, say) does not keep a protected place once
/// its requests are refused: such a connection goes back among the strangers.
#[test]
fn a_certified_connection_whose_request_is_refused_can_be_closed_by_newcomers() {
    let limits = Arc::new(Limits {
        handshakes: Pool::new(4),
        anonymous: Pool::new(2),
        authenticated: Arc::new(Semaphore::new(2)),
    });
    let rogue = Connection::admit(&limits, true);
    let honest = Connection::admit(&limits, true);
    rogue.refused();
    assert!(!rogue.is_authenticated());
    let strangers: Vec<_> = (0..3).map(|_| Connection::admit(&limits, false)).collect();
    assert!(
        rogue.closed().is_cancelled(),
        "the oldest among the strangers"
    );
    assert!(!honest.closed().is_cancelled());
    // Its protected place was given back: the next certificate holder has it.
    assert!(Connection::admit(&limits, true).is_authenticated());
    drop(strangers);
}
