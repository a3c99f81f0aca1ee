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
}
