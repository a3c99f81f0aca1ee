//! Bounded compilation: one build per content digest, shared by every caller, run on a
//! blocking thread of the guest runtime, at most `concurrency` at a time, each bounded
//! in input size and in time, the slots shared fairly among pods.
//!
//! A build is a task of its own: a caller that stops waiting (its container was killed
//! or deleted while the module compiled) returns at once and the build goes on without
//! it, to be cached for the next start. A build nobody waits for any more when its turn
//! comes is not started.
//!
//! The slots are a [`FairPool`] by pod: a pod's builds hold at most half of them
//! (rounded up), so another pod always finds one, and a build waits for its slot at most
//! the compile time-out before it fails. Compilation itself cannot be interrupted inside
//! wasmtime: a build past its time-out is reported as failed at once and gives its slot
//! back, while its thread finishes in the background as one of at most `concurrency`
//! such overrunning threads; past that many, a timed-out build keeps its slot until its
//! thread ends, so the compiling threads stay bounded (at most twice `concurrency`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::watch;
use wasmtime::Module;
use wasmtime::component::Component;

use crate::engine::{Compiled, is_component};
use crate::fair::{FairPool, Shares, Tenant};
use crate::{Error, Result};

/// The outcome of one build, once known.
type Outcome = Option<Result<Compiled, String>>;
type Slot = Arc<watch::Sender<Outcome>>;

/// How builds are bounded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub timeout: Duration,
    pub max_bytes: usize,
    pub concurrency: usize,
}

/// Builds and caches compiled modules by key.
pub(crate) struct Compiler {
    engine: wasmtime::Engine,
    /// The engine of served components (`wasi:http/proxy`).
    serving: wasmtime::Engine,
    guest: Handle,
    bounds: Bounds,
    slots: Arc<Mutex<HashMap<String, Slot>>>,
    permits: FairPool,
    /// Each pod's share of `permits`, while a build of the pod waits or runs.
    tenants: Arc<Mutex<HashMap<String, Arc<Tenant>>>>,
    /// Timed-out builds whose threads still compile, having given their slot back.
    overrunning: Arc<AtomicUsize>,
    /// Builds started (compiled, or loaded from the disk cache).
    pub(crate) builds: Arc<AtomicU64>,
}

impl Compiler {
    pub(crate) fn new(
        engine: wasmtime::Engine,
        serving: wasmtime::Engine,
        guest: Handle,
        bounds: Bounds,
    ) -> Self {
        Self {
            engine,
            serving,
            guest,
            bounds,
            slots: Arc::default(),
            permits: FairPool::new(Shares {
                total: bounds.concurrency.max(1),
                reserve: 1,
                per_pod: bounds.concurrency.max(1).div_ceil(2),
            }),
            tenants: Arc::default(),
            overrunning: Arc::default(),
            builds: Arc::default(),
        }
    }

    /// The compiled module for `key`, building it from `wasm` in `pod`'s share unless a
    /// build is cached or under way. Dropping the future stops waiting, not the build.
    pub(crate) async fn get(&self, key: &str, wasm: Arc<[u8]>, pod: &str) -> Result<Compiled> {
        if wasm.len() > self.bounds.max_bytes {
            return Err(Error::Compile(format!(
                "the module is {} bytes, more than the {} bytes this node compiles",
                wasm.len(),
                self.bounds.max_bytes
            )));
        }
        let mut outcome = {
            let mut slots = lock(&self.slots);
            if let Some(slot) = slots.get(key) {
                slot.subscribe()
            } else {
                let (tx, rx) = watch::channel(None);
                let tx = Arc::new(tx);
                slots.insert(key.to_owned(), tx.clone());
                let tenant = self.tenant(pod);
                self.guest
                    .spawn(self.build(key.to_owned(), tx, wasm, tenant));
                rx
            }
        };
        let done = outcome
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::Compile("the compilation was abandoned".to_owned()))?;
        match &*done {
            Some(Ok(compiled)) => Ok(compiled.clone()),
            Some(Err(message)) => Err(Error::Compile(message.clone())),
            None => Err(Error::Compile("the compilation was abandoned".to_owned())),
        }
    }

    /// `pod`'s share of the slots, registered while one of its builds needs it.
    fn tenant(&self, pod: &str) -> Arc<Tenant> {
        let mut tenants = lock(&self.tenants);
        // Shares of pods with no build left go (the map stays as small as the builds).
        tenants.retain(|_, t| Arc::strong_count(t) > 1);
        tenants
            .entry(pod.to_owned())
            .or_insert_with(|| Arc::new(self.permits.tenant()))
            .clone()
    }

    /// Forgets the build for `key`.
    pub(crate) fn forget(&self, key: &str) {
        lock(&self.slots).remove(key);
    }

    /// The build of `key`, as a task: waits for a slot, compiles on a blocking thread
    /// within the timeout, publishes the outcome; a failure is not kept.
    fn build(
        &self,
        key: String,
        tx: Slot,
        wasm: Arc<[u8]>,
        tenant: Arc<Tenant>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let (engine, serving, bounds, slots, builds, overrunning) = (
            self.engine.clone(),
            self.serving.clone(),
            self.bounds,
            self.slots.clone(),
            self.builds.clone(),
            self.overrunning.clone(),
        );
        async move {
            let Some(permit) = tenant.acquire(Some(bounds.timeout)).await else {
                let mut map = lock(&slots);
                if map.get(&key).is_some_and(|s| Arc::ptr_eq(s, &tx)) {
                    map.remove(&key);
                }
                tx.send_replace(Some(Err(format!(
                    "no compile slot came free within {:?} (the node compiles {} modules at \
                     a time, at most {} of them for one pod)",
                    bounds.timeout,
                    bounds.concurrency.max(1),
                    bounds.concurrency.max(1).div_ceil(2)
                ))));
                return;
            };
            {
                let mut map = lock(&slots);
                if tx.receiver_count() == 0 {
                    // Every caller gave up while the build waited for its turn.
                    if map.get(&key).is_some_and(|s| Arc::ptr_eq(s, &tx)) {
                        map.remove(&key);
                    }
                    return;
                }
            }
            builds.fetch_add(1, Ordering::Relaxed);
            let mut compiling = tokio::task::spawn_blocking(move || {
                let served = is_component(&wasm)
                    .then(|| crate::serve::served(&wasm))
                    .flatten();
                if served == Some(crate::serve::Served::P2) {
                    compile_proxy(&engine, &serving, &wasm)
                } else if served == Some(crate::serve::Served::P3) {
                    // Its instances are reused, so the pool's cheap instantiation
                    // matters little, and it needs component-model async, which the
                    // pool's engine leaves out for the sake of WASI 0.2 requests.
                    Component::new(&engine, &wasm[..]).map(Compiled::Proxy)
                } else if is_component(&wasm) {
                    Component::new(&engine, &wasm[..]).map(Compiled::Component)
                } else {
                    Module::new(&engine, &wasm[..]).map(Compiled::Module)
                }
            });
            let outcome = match tokio::time::timeout(bounds.timeout, &mut compiling).await {
                Ok(Ok(Ok(compiled))) => Ok(compiled),
                Ok(Ok(Err(e))) => Err(format!("{e:#}")),
                Ok(Err(e)) => Err(format!("compiler task failed: {e}")),
                Err(_) => {
                    overrun(compiling, permit, &overrunning, bounds.concurrency.max(1));
                    Err(format!("compilation took longer than {:?}", bounds.timeout))
                }
            };
            let failed = outcome.is_err();
            let mut map = lock(&slots);
            if failed && map.get(&key).is_some_and(|s| Arc::ptr_eq(s, &tx)) {
                // Do not keep a failure: a later start may bring valid bytes.
                map.remove(&key);
            }
            tx.send_replace(Some(outcome));
        }
    }
}

/// A build past its time-out: its thread compiles on (wasmtime cannot be interrupted).
/// Its slot is given back now while fewer than `limit` such threads run, else when the
/// thread ends.
fn overrun<T: Send + 'static>(
    compiling: tokio::task::JoinHandle<T>,
    permit: crate::fair::Permit,
    overrunning: &Arc<AtomicUsize>,
    limit: usize,
) {
    let counted = overrunning
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_ok();
    let overrunning = overrunning.clone();
    let kept = (!counted).then_some(permit);
    tokio::spawn(async move {
        let _ = compiling.await;
        drop(kept);
        if counted {
            overrunning.fetch_sub(1, Ordering::Relaxed);
        }
    });
}

/// A component to serve, for the serving engine; one the pool cannot hold (more
/// memories or tables in one module, or larger ones, than a slot has) for the shared
/// engine instead, so it is served as before, without the pool.
fn compile_proxy(
    engine: &wasmtime::Engine,
    serving: &wasmtime::Engine,
    wasm: &[u8],
) -> wasmtime::Result<Compiled> {
    match Component::new(serving, wasm) {
        Ok(c) => Ok(Compiled::Proxy(c)),
        Err(e) if !wasmtime::Engine::same(serving, engine) => {
            tracing::warn!(
                error = %format!("{e:#}"),
                "a component to serve does not fit the instance pool; served without it"
            );
            Component::new(engine, wasm).map(Compiled::Proxy)
        }
        Err(e) => Err(e),
    }
}

fn lock<T>(map: &Mutex<HashMap<String, T>>) -> std::sync::MutexGuard<'_, HashMap<String, T>> {
    // A poisoned map still holds valid entries; keep using it.
    map.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
