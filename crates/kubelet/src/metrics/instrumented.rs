//! [`Instrumented`]: a [`Runtime`] that counts, times and tallies the failures of every
//! call it passes on, as the kubelet's instrumented CRI services do
//! (`kubelet_runtime_operations_*`, by `operation_type`: the CRI method's name).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use super::KubeletMetrics;
use crate::api::BoxFuture;
use crate::keyring::Credential;
use crate::runtime::{
    ContainerHandle, ContainerRun, Counter, Image, ImageError, ImageFsUsage, ImageStatus, Runtime,
    Sandbox, SandboxConfig, StoredImage,
};

/// Wraps a runtime; each call is recorded in the metrics.
pub struct Instrumented {
    inner: Arc<dyn Runtime>,
    metrics: KubeletMetrics,
}

impl std::fmt::Debug for Instrumented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instrumented").finish_non_exhaustive()
    }
}

impl Instrumented {
    /// `inner`, recorded in `metrics`.
    #[must_use]
    pub fn new(inner: Arc<dyn Runtime>, metrics: KubeletMetrics) -> Self {
        Self { inner, metrics }
    }

    fn sync<T>(&self, op: &'static str, call: impl FnOnce(&dyn Runtime) -> T) -> T {
        let at = Instant::now();
        let out = call(&*self.inner);
        self.metrics.runtime_operation(op, at.elapsed(), false);
        out
    }

    fn timed<'a, T: Send + 'a>(
        &'a self,
        op: &'static str,
        failed: fn(&T) -> bool,
        call: impl Future<Output = T> + Send + 'a,
    ) -> BoxFuture<'a, T> {
        Box::pin(async move {
            let at = Instant::now();
            let out = call.await;
            self.metrics
                .runtime_operation(op, at.elapsed(), failed(&out));
            out
        })
    }
}

fn never<T>(_: &T) -> bool {
    false
}

fn is_err<T, E>(r: &Result<T, E>) -> bool {
    r.is_err()
}

impl Runtime for Instrumented {
    fn version(&self) -> String {
        self.sync("version", |r| r.version())
    }

    fn image_status<'a>(
        &'a self,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<Option<ImageStatus>, ImageError>> {
        self.timed("image_status", is_err, self.inner.image_status(reference))
    }

    fn pull_image<'a>(
        &'a self,
        reference: &'a str,
        credential: Option<&'a Credential>,
    ) -> BoxFuture<'a, Result<Image, ImageError>> {
        self.timed(
            "pull_image",
            is_err,
            self.inner.pull_image(reference, credential),
        )
    }

    fn run_pod_sandbox(&self, config: SandboxConfig) -> BoxFuture<'_, Result<Sandbox, String>> {
        self.timed("run_podsandbox", is_err, self.inner.run_pod_sandbox(config))
    }

    fn update_pod_cidrs(&self, cidrs: Vec<String>) {
        self.sync("update_runtime_config", |r| r.update_pod_cidrs(cidrs));
    }

    fn list_pod_sandboxes(&self) -> BoxFuture<'_, Vec<String>> {
        self.timed("list_podsandbox", never, self.inner.list_pod_sandboxes())
    }

    fn remove_pod_sandbox<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ()> {
        self.timed(
            "remove_podsandbox",
            never,
            self.inner.remove_pod_sandbox(id),
        )
    }

    fn port_forward<'a>(
        &'a self,
        id: &'a str,
        port: u16,
    ) -> BoxFuture<'a, Result<tokio::net::TcpStream, String>> {
        self.timed("port_forward", is_err, self.inner.port_forward(id, port))
    }

    fn start_container(&self, run: ContainerRun) -> BoxFuture<'_, Result<ContainerHandle, String>> {
        self.timed("start_container", is_err, self.inner.start_container(run))
    }

    fn counters(&self) -> Vec<Counter> {
        // Our own page's reading, not an operation of the runtime.
        self.inner.counters()
    }

    fn images(&self) -> BoxFuture<'_, Vec<StoredImage>> {
        self.timed("list_images", never, self.inner.images())
    }

    fn remove_image<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, Result<u64, String>> {
        self.timed("remove_image", is_err, self.inner.remove_image(handle))
    }

    fn image_fs_usage(&self) -> BoxFuture<'_, ImageFsUsage> {
        self.timed("image_fs_info", never, self.inner.image_fs_usage())
    }
}
