//! Blocking work (file writes, mounts, `/proc` and `/etc` reads) kept off the async
//! threads, the same way everywhere: [`run`] hands it to tokio's blocking pool.

use std::io;

/// Runs `work` on tokio's blocking pool and waits for it. A panic in `work` goes on in
/// the caller, as if `work` had run there.
///
/// # Errors
/// Only when the runtime shuts down before `work` started.
pub(crate) async fn run<T, F>(work: F) -> io::Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => Ok(value),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(io::Error::other(format!("blocking work stopped: {e}"))),
    }
}

/// Runs `work` on the calling thread for a caller that cannot await [`run`]: on a
/// multi-threaded runtime the worker's other tasks are handed to another thread first
/// (`block_in_place`), so none of them waits behind `work`; elsewhere (a current-thread
/// runtime, no runtime) `work` simply runs.
pub(crate) fn in_place<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let multi_thread =
        Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn work_runs_in_the_pool_and_panics_reach_the_caller() {
        let caller = std::thread::current().id();
        let worker = run(|| std::thread::current().id()).await.expect("run");
        assert_ne!(worker, caller);
        let panicked = tokio::spawn(run(|| -> u8 { panic!("in the pool") })).await;
        assert!(panicked.is_err_and(|e| e.is_panic()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn in_place_work_leaves_the_worker_to_other_tasks() {
        // The one worker thread runs a task that blocks in `in_place` until a task
        // queued behind it on that same worker has run: it can only if `in_place`
        // handed the worker's tasks to another thread.
        let blocked = tokio::spawn(async {
            let (tx, rx) = std::sync::mpsc::channel();
            let other = tokio::spawn(async move { tx.send(()).expect("send") });
            let ran = in_place(|| rx.recv_timeout(std::time::Duration::from_secs(10)));
            (ran, other)
        });
        let (ran, other) = blocked.await.expect("blocked task");
        ran.expect("the other task ran while the work blocked");
        other.await.expect("other task");
    }

    #[tokio::test]
    async fn in_place_runs_inline_on_a_current_thread_runtime() {
        assert_eq!(in_place(|| 7), 7);
    }
}
