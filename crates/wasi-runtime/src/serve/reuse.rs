//! Reused instances of a WASI 0.3 service (`wasi:http/handler@0.3`), as `wasmtime
//! serve` reuses them: a worker is one instance in one store, answering up to
//! [`Reuse::max_concurrent`] requests at once and [`Reuse::max_requests`] in its life,
//! dropped once idle for [`Reuse::idle_timeout`].
//!
//! Requests wait in the pod's queue, at most [`QUEUE_WAIT`] (then 503), for a worker
//! that takes them; when no worker would take one, a new worker is started on one of
//! the pod's instance slots ([`crate::fair`]), which it holds for its whole life. Every
//! worker's store counts into the container's memory budget, so all of a pod's
//! instances together stay within its limit, and each worker runs as the container's
//! metered task, so its CPU is the container's.
//!
//! A request past its time limit is answered 504 and its worker takes no more requests:
//! wasmtime 48 cannot cancel one guest task alone, so the instance finishes its other
//! requests and is dropped then, or one more time limit later at the latest (a guest
//! busy in a loop holds its whole store until then). A trap, or a memory growth past the
//! limit, ends the instance and every request it was answering (500), as an OOM kill
//! of one worker process; the pod goes on serving with other instances.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::StreamExt;
use futures::channel::oneshot;
use futures::stream::FuturesUnordered;
use tokio::sync::Notify;
use tokio::time::Instant;
use wasmtime::AsContextMut;
use wasmtime::component::Accessor;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::handler::{ExpirationError, Prepared, Proxy, ProxyPre};
use wasmtime_wasi_http::p3::bindings::ServicePre;

use super::{Failure, HttpState, Server, until};
use crate::logs::Stream;
use crate::pool::{QUEUE_WAIT, Reuse};

/// A request's answer from its instance.
type Answer = wasmtime::Result<hyper::Response<wasmtime_wasi_http::WasiBody>>;

/// One request waiting for a worker.
struct Job {
    request: hyper::Request<wasmtime_wasi_http::WasiBody>,
    answer: oneshot::Sender<Answer>,
    /// Told when a worker takes the request; dropped by a caller that stopped waiting.
    taken: oneshot::Sender<()>,
    deadline: Instant,
}

/// A pod's reused instances: the queue of requests and how many workers would take one.
pub(crate) struct Workers {
    pre: ServicePre<HttpState>,
    reuse: Reuse,
    queue: Mutex<VecDeque<Job>>,
    pushed: Notify,
    /// Workers that would take a request now, counting those being started.
    available: AtomicUsize,
    /// Requests waiting for or being answered by a worker, up to their headers.
    requests: tokio::sync::Semaphore,
}

impl Workers {
    pub(crate) fn new(pre: ServicePre<HttpState>, reuse: Reuse, per_pod: usize) -> Self {
        Self {
            pre,
            reuse,
            queue: Mutex::default(),
            pushed: Notify::new(),
            available: AtomicUsize::new(0),
            // As `wasmtime serve`'s 1000 requests at once, within what the pod's share
            // of instances can answer at once.
            requests: tokio::sync::Semaphore::new(
                per_pod.saturating_mul(reuse.max_concurrent).clamp(1, 1000),
            ),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Job>> {
        lock(&self.queue)
    }

    /// The next request someone still waits for.
    async fn next(&self) -> Job {
        loop {
            let pushed = self.pushed.notified();
            if let Some(job) = self.queue().pop_front() {
                if job.answer.is_canceled() || job.taken.is_canceled() {
                    continue;
                }
                return job;
            }
            pushed.await;
        }
    }
}

impl Server {
    /// One request to a reused instance: its place in the queue, a worker to take it,
    /// and its response (headers) within the request's time limit.
    pub(super) async fn reused(
        self: Arc<Self>,
        workers: &Arc<Workers>,
        request: hyper::Request<hyper::body::Incoming>,
    ) -> Result<hyper::Response<wasmtime_wasi_http::WasiBody>, Failure> {
        let limit = self.request_timeout;
        let deadline = Instant::now() + limit;
        let Ok(Ok(_permit)) = tokio::time::timeout(QUEUE_WAIT, workers.requests.acquire()).await
        else {
            return Err(Failure::Busy(format!(
                "the pod had {} requests waiting or in flight for {QUEUE_WAIT:?}",
                workers.requests.available_permits()
            )));
        };
        let request = request.map(|body| {
            use http_body_util::BodyExt;
            body.map_err(wasmtime_wasi_http::Error::from).boxed_unsync()
        });
        let (answer, answered) = oneshot::channel();
        let (taken, was_taken) = oneshot::channel();
        workers.queue().push_back(Job {
            request,
            answer,
            taken,
            deadline,
        });
        // Every waiting worker looks; one takes it.
        workers.pushed.notify_waiters();
        self.clone().want_worker(workers);
        match tokio::time::timeout(QUEUE_WAIT, was_taken).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                return Err(Failure::Failed(
                    "the instance that took the request ended before it began".to_owned(),
                ));
            }
            // The job stays queued, abandoned: a worker skips it.
            Err(_) => {
                return Err(Failure::Busy(format!(
                    "no instance of the pod took the request within {QUEUE_WAIT:?} (its \
                     share of the node's instances was busy)"
                )));
            }
        }
        tokio::select! {
            answer = answered => match answer {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(e)) if e.is::<ExpirationError>() => Err(Failure::TimedOut(limit)),
                Ok(Err(e)) => Err(Failure::Failed(format!("{e:?}"))),
                Err(_) => Err(Failure::Failed(
                    "its instance ended before it answered (the instance's failure is \
                     in the log)"
                        .to_owned(),
                )),
            },
            // A guest busy in a loop holds its store: its worker cannot answer even
            // the expiry, so the time limit is kept here too.
            () = tokio::time::sleep_until(deadline) => Err(Failure::TimedOut(limit)),
        }
    }

    /// Starts a worker when requests wait and no worker would take one.
    fn want_worker(self: Arc<Self>, workers: &Arc<Workers>) {
        if workers.queue().is_empty()
            || workers
                .available
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        let workers = workers.clone();
        let meter = self.meter.clone();
        tokio::spawn(meter.wrap(async move {
            let mut cut = self.cut.subscribe();
            let slot = tokio::select! {
                slot = self.instances.acquire(Some(QUEUE_WAIT)) => slot,
                () = until(&mut cut, |c| *c) => None,
            };
            let Some(slot) = slot else {
                workers.available.fetch_sub(1, Ordering::AcqRel);
                return;
            };
            let available = Available {
                workers: workers.clone(),
                server: self.clone(),
                counted: true,
            };
            self.worker(&workers, available).await;
            drop(slot);
        }));
    }

    /// One instance, answering requests until it expires, is cut, or fails.
    async fn worker(self: &Arc<Self>, workers: &Arc<Workers>, mut available: Available) {
        let mut store = match self.store() {
            Ok(store) => store,
            Err(message) => return self.instance_failed(workers, available, &message),
        };
        let proxy = match ProxyPre::P3(workers.pre.clone())
            .instantiate_async(&mut store)
            .await
        {
            Ok(proxy) => proxy,
            Err(e) => {
                let e = Server::memory_context(&store, e);
                return self.instance_failed(workers, available, &format!("{e:?}"));
            }
        };
        // What the loop inside the store tells the expiry check outside it: a guest
        // busy in a loop holds the store, so nothing inside runs until its slice ends.
        let shared = Shared {
            status: Mutex::new((Status::Idle, Instant::now())),
            spare: AtomicBool::new(true),
        };
        let outcome = {
            let intake = Intake {
                proxy: &proxy,
                workers,
                shared: &shared,
                available: &mut available,
            };
            let serving = store.run_concurrent(async |accessor| intake.run(accessor).await);
            let mut cut = self.cut.subscribe();
            let cut = until(&mut cut, |c| *c);
            self.watch(serving, cut, &shared, workers.reuse).await
        };
        available.set(false);
        self.ended(&store, outcome);
    }

    /// Drives a worker's store until it ends, is cut, or expires: idle past the idle
    /// time, or busy past the time limit since its latest request began (checked out
    /// here, since a guest busy in a loop keeps the store's own loop from running).
    async fn watch(
        &self,
        serving: impl Future<Output = wasmtime::Result<wasmtime::Result<()>>>,
        cut: impl Future<Output = ()>,
        shared: &Shared,
        reuse: Reuse,
    ) -> wasmtime::Result<End> {
        let (mut serving, mut cut) = (pin!(serving), pin!(cut));
        let mut expiry = pin!(tokio::time::sleep(reuse.idle_timeout));
        let mut expires = None;
        let done =
            |r: wasmtime::Result<wasmtime::Result<()>>| r.and_then(|r| r).map(|()| End::Done);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = serving.as_mut().poll(cx) {
                return Poll::Ready(done(r));
            }
            if cut.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(End::Cut));
            }
            let (state, since) = *lock(&shared.status);
            let at = since
                + match state {
                    Status::Idle => reuse.idle_timeout,
                    Status::Busy | Status::Finishing => self.request_timeout,
                };
            if expires != Some(at) {
                expires = Some(at);
                expiry.as_mut().reset(at);
            }
            if expiry.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(if state == Status::Idle {
                    End::Done
                } else {
                    End::PastTimeLimit
                }));
            }
            // The store went idle: it may take another request at once.
            if !shared.spare.swap(true, Ordering::Relaxed) {
                return serving.as_mut().poll(cx).map(done);
            }
            Poll::Pending
        })
        .await
    }

    /// Tells the container's log why a worker ended, unless it was a plain end.
    fn ended(&self, store: &wasmtime::Store<HttpState>, outcome: wasmtime::Result<End>) {
        let line = match outcome {
            Ok(End::Done | End::Cut) => return,
            Ok(End::PastTimeLimit) => format!(
                "an instance was dropped: its requests took longer than their time limit \
                 of {:?}",
                self.request_timeout
            ),
            Err(e) => format!(
                "an instance failed, with every request it was answering: {:?}",
                Server::memory_context(store, e)
            ),
        };
        self.log.record(Stream::Stderr, false, line.as_bytes());
    }

    /// An instance that could not be made answers the first waiting request with why
    /// (the others wait for another worker, or their turn ends).
    fn instance_failed(&self, workers: &Workers, mut available: Available, message: &str) {
        loop {
            let Some(job) = workers.queue().pop_front() else {
                break;
            };
            if job.taken.send(()).is_ok() {
                let _ = job.answer.send(Err(wasmtime::format_err!(
                    "cannot make an instance: {message}"
                )));
                break;
            }
        }
        // The next waiting request gets an instance of its own (or the same answer).
        available.set(false);
    }
}

/// What a worker's loop inside its store tells the expiry check outside it.
struct Shared {
    /// What the worker does, and since when.
    status: Mutex<(Status, Instant)>,
    /// The store's loop went idle since a request was last taken: only then is another
    /// taken, so that a busy instance leaves new requests to other workers.
    spare: AtomicBool,
}

/// The loop inside a worker's store: takes requests from the pod's queue while the
/// instance may, runs them concurrently, and ends when it may take no more and nothing
/// is left to do.
struct Intake<'a> {
    proxy: &'a Proxy,
    workers: &'a Arc<Workers>,
    shared: &'a Shared,
    available: &'a mut Available,
}

impl Intake<'_> {
    async fn run(self, accessor: &Accessor<HttpState>) -> wasmtime::Result<()> {
        let Self {
            proxy,
            workers,
            shared,
            available,
        } = self;
        let Proxy::P3(service) = proxy else {
            return Err(wasmtime::format_err!(
                "a WASI 0.3 worker was given a 0.2 instance"
            ));
        };
        let func = *service.wasi_http_handler().func_handle().func();
        let reuse = workers.reuse;
        let mut open = FuturesUnordered::new();
        let mut starts: Vec<Instant> = Vec::new();
        let (mut served, mut accepting) = (0usize, true);
        let mut next = None;
        std::future::poll_fn(|cx: &mut Context<'_>| {
            loop {
                // Answered or expired requests first: an expiry stops the intake.
                while let Poll::Ready(Some(done)) = open.poll_next_unpin(cx) {
                    let (answered, began): (bool, Instant) = match done {
                        Ok(done) => done,
                        Err(e) => return Poll::Ready(Err(e)),
                    };
                    if let Some(i) = starts.iter().position(|s| *s == began) {
                        starts.swap_remove(i);
                    }
                    accepting &= answered;
                    set(
                        &shared.status,
                        match starts.iter().max() {
                            Some(latest) => (Status::Busy, *latest),
                            None => (Status::Finishing, Instant::now()),
                        },
                    );
                }
                let ready = accessor.poll_ready_for_concurrent_call(func, cx).is_ready();
                accepting &= served < reuse.max_requests;
                let takes = accepting
                    && ready
                    && open.len() < reuse.max_concurrent
                    && (open.is_empty() || shared.spare.load(Ordering::Relaxed));
                available.set(takes);
                if takes {
                    let job = next.get_or_insert_with(|| Box::pin(workers.next()));
                    if let Poll::Ready(job) = job.as_mut().poll(cx) {
                        next = None;
                        shared.spare.store(false, Ordering::Relaxed);
                        served += 1;
                        let began = Instant::now();
                        starts.push(began);
                        set(&shared.status, (Status::Busy, began));
                        open.push(take(accessor, proxy, job, began));
                        continue;
                    }
                }
                if !open.is_empty() || accessor.poll_no_interesting_tasks(cx).is_pending() {
                    return Poll::Pending;
                }
                // Nothing open, nothing the guest still does.
                if !(accepting && ready) {
                    return Poll::Ready(Ok(()));
                }
                let mut status = lock(&shared.status);
                if status.0 != Status::Idle {
                    *status = (Status::Idle, Instant::now());
                }
                return Poll::Pending;
            }
        })
        .await
    }
}

/// One request taken by an instance: its call, answered (`true`) or past its time
/// limit (`false`).
async fn take<'a>(
    accessor: &'a Accessor<HttpState>,
    proxy: &'a Proxy,
    job: Job,
    began: Instant,
) -> wasmtime::Result<(bool, Instant)> {
    let Job {
        request,
        answer,
        taken,
        deadline,
    } = job;
    let _ = taken.send(());
    let prepared = accessor.with(|mut store| {
        Prepared::new(
            store.as_context_mut(),
            proxy,
            request,
            <HttpState as WasiHttpView>::http,
            answer,
        )
    })?;
    let answered = prepared
        .run(accessor, tokio::time::sleep_until(deadline))
        .await?;
    Ok((answered, began))
}

/// What a worker is doing, and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Nothing: it is dropped after [`Reuse::idle_timeout`].
    Idle,
    /// Answering requests, the latest begun at the time given.
    Busy,
    /// Its requests are answered, and the guest still works (a body still streams).
    Finishing,
}

/// How a worker ended, apart from failing.
enum End {
    Done,
    Cut,
    PastTimeLimit,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
fn set(status: &Mutex<(Status, Instant)>, to: (Status, Instant)) {
    *lock(status) = to;
}

/// A worker's count in [`Workers::available`].
struct Available {
    workers: Arc<Workers>,
    server: Arc<Server>,
    counted: bool,
}

impl Available {
    fn set(&mut self, available: bool) {
        if available == self.counted {
            return;
        }
        self.counted = available;
        if available {
            self.workers.available.fetch_add(1, Ordering::AcqRel);
        } else {
            self.workers.available.fetch_sub(1, Ordering::AcqRel);
            // Requests that were left to this worker need another.
            self.server.clone().want_worker(&self.workers);
        }
    }
}

impl Drop for Available {
    fn drop(&mut self) {
        if self.counted {
            self.workers.available.fetch_sub(1, Ordering::AcqRel);
        }
    }
}
