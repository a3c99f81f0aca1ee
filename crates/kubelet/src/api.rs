//! What the pod machinery reads and writes in the Kubernetes API, as one narrow trait:
//! pod status patches and deletion, events, and the objects volumes, environment and
//! pull credentials read (ConfigMaps, Secrets, service account tokens, claims and
//! volumes). [`KubeApi`] is the real thing over a `kube::Client`; unit tests of the pod
//! state machine put an in-memory sink in its place (`pods::testing`). The node's own
//! objects (registration, lease, node status) and the pod watch stay on the client.
//!
//! Errors are `kube::Error`, so that callers keep telling a 404 from a 409 and their
//! messages read as they always have.

use std::future::Future;
use std::pin::Pin;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};

/// A boxed future borrowing the API for `'a`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The API calls of the pod machinery.
pub trait ClusterApi: Send + Sync + 'static {
    /// Merge-patches pod `ns/name`'s status subresource with `patch` (a JSON object
    /// holding `status`, and `metadata.uid` as a precondition).
    fn patch_pod_status<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
        patch: serde_json::Value,
    ) -> BoxFuture<'a, Result<(), kube::Error>>;

    /// Deletes pod `ns/name` with `params` (grace period, UID precondition).
    fn delete_pod<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
        params: DeleteParams,
    ) -> BoxFuture<'a, Result<(), kube::Error>>;

    /// Creates `event` in `ns`.
    fn create_event<'a>(
        &'a self,
        ns: &'a str,
        event: Event,
    ) -> BoxFuture<'a, Result<(), kube::Error>>;

    /// Merge-patches event `ns/name` (a repeat: its count and last timestamp).
    fn patch_event<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
        patch: serde_json::Value,
    ) -> BoxFuture<'a, Result<(), kube::Error>>;

    /// ConfigMap `ns/name`; `None` when it does not exist.
    fn config_map<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<ConfigMap>, kube::Error>>;

    /// Secret `ns/name`; `None` when it does not exist.
    fn secret<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Secret>, kube::Error>>;

    /// A token for service account `ns/account` (the `token` subresource).
    fn request_token<'a>(
        &'a self,
        ns: &'a str,
        account: &'a str,
        request: TokenRequest,
    ) -> BoxFuture<'a, Result<TokenRequest, kube::Error>>;

    /// PersistentVolumeClaim `ns/name`; `None` when it does not exist.
    fn claim<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<PersistentVolumeClaim>, kube::Error>>;

    /// PersistentVolume `name`.
    fn volume<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<PersistentVolume, kube::Error>>;

    /// The Services of namespace `ns` and of `default` (for the containers' Service
    /// environment variables), from a cache the API keeps current.
    fn services<'a>(&'a self, ns: &'a str) -> BoxFuture<'a, Result<Vec<Service>, kube::Error>>;
}

/// [`ClusterApi`] over the API server.
#[derive(Clone)]
pub struct KubeApi {
    client: Client,
    /// Every Service of the cluster, watched from the first time they are asked for
    /// (as the kubelet's service informer).
    services: std::sync::Arc<tokio::sync::OnceCell<kube::runtime::reflector::Store<Service>>>,
}

impl std::fmt::Debug for KubeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeApi").finish_non_exhaustive()
    }
}

impl KubeApi {
    /// The API through `client` (the node's identity).
    #[must_use]
    pub fn new(client: Client) -> Self {
        Self {
            client,
            services: std::sync::Arc::default(),
        }
    }

    /// The Service cache, started (and listed once) on first use.
    async fn service_store(
        &self,
    ) -> Result<&kube::runtime::reflector::Store<Service>, kube::Error> {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, reflector, watcher};
        self.services
            .get_or_try_init(|| async {
                let (reader, writer) = reflector::store();
                let api = Api::<Service>::all(self.client.clone());
                let stream = reflector(writer, watcher(api, watcher::Config::default()))
                    .default_backoff()
                    .touched_objects()
                    .for_each(|r| async move {
                        if let Err(e) = r {
                            tracing::warn!(error = %e, "service watch failed; retrying");
                        }
                    });
                tokio::spawn(stream);
                // As the kubelet: no Service variables before the Services were read once.
                match tokio::time::timeout(
                    std::time::Duration::from_secs(60),
                    reader.wait_until_ready(),
                )
                .await
                {
                    Ok(Ok(())) => Ok(reader),
                    _ => Err(kube::Error::Service(
                        "services have not yet been read at least once, cannot construct envvars"
                            .into(),
                    )),
                }
            })
            .await
    }

    fn ns<K>(&self, ns: &str) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), ns)
    }
}

impl ClusterApi for KubeApi {
    fn patch_pod_status<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
        patch: serde_json::Value,
    ) -> BoxFuture<'a, Result<(), kube::Error>> {
        Box::pin(async move {
            self.ns::<Pod>(ns)
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(drop)
        })
    }

    fn delete_pod<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
        params: DeleteParams,
    ) -> BoxFuture<'a, Result<(), kube::Error>> {
        Box::pin(async move { self.ns::<Pod>(ns).delete(name, &params).await.map(drop) })
    }

    fn create_event<'a>(
        &'a self,
        ns: &'a str,
        event: Event,
    ) -> BoxFuture<'a, Result<(), kube::Error>> {
        Box::pin(async move {
            self.ns::<Event>(ns)
                .create(&PostParams::default(), &event)
                .await
                .map(drop)
        })
    }

    fn patch_event<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
        patch: serde_json::Value,
    ) -> BoxFuture<'a, Result<(), kube::Error>> {
        Box::pin(async move {
            self.ns::<Event>(ns)
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(drop)
        })
    }

    fn config_map<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<ConfigMap>, kube::Error>> {
        Box::pin(async move { self.ns::<ConfigMap>(ns).get_opt(name).await })
    }

    fn secret<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Secret>, kube::Error>> {
        Box::pin(async move { self.ns::<Secret>(ns).get_opt(name).await })
    }

    fn request_token<'a>(
        &'a self,
        ns: &'a str,
        account: &'a str,
        request: TokenRequest,
    ) -> BoxFuture<'a, Result<TokenRequest, kube::Error>> {
        Box::pin(async move {
            self.ns::<ServiceAccount>(ns)
                .create_token_request(account, &PostParams::default(), &request)
                .await
        })
    }

    fn claim<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<PersistentVolumeClaim>, kube::Error>> {
        Box::pin(async move { self.ns::<PersistentVolumeClaim>(ns).get_opt(name).await })
    }

    fn volume<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<PersistentVolume, kube::Error>> {
        Box::pin(async move {
            Api::<PersistentVolume>::all(self.client.clone())
                .get(name)
                .await
        })
    }

    fn services<'a>(&'a self, ns: &'a str) -> BoxFuture<'a, Result<Vec<Service>, kube::Error>> {
        Box::pin(async move {
            let store = self.service_store().await?;
            Ok(store
                .state()
                .iter()
                .filter(|s| matches!(s.metadata.namespace.as_deref(), Some(n) if n == ns || n == "default"))
                .map(|s| Service::clone(s))
                .collect())
        })
    }
}

/// A `404 Not Found` as the API server answers it, for sinks that hold no such object.
#[must_use]
pub fn not_found(kind: &str, name: &str) -> kube::Error {
    kube::Error::Api(
        kube::core::Status::failure(&format!("{kind} \"{name}\" not found"), "NotFound")
            .with_code(404)
            .boxed(),
    )
}
