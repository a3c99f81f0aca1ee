//! Standalone mode: no API server, only static pods (the kubelet without `--kubeconfig`).
//! [`LocalApi`] takes the pod machinery's API calls: statuses are kept for the kubelet
//! API's `/pods`, events go to the log, objects a pod would read from the API do not
//! exist. [`NoReviews`] answers the kubelet API's token and access reviews: there is no
//! one to ask.

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, PersistentVolume, PersistentVolumeClaim, Secret, Service,
};
use kube::api::DeleteParams;

use crate::api::{BoxFuture, ClusterApi};
use crate::auth::User;
use crate::auth::review::{Access, ReviewError, Reviewer};

/// The error of every call that needs an API server.
fn no_api_server(what: &str) -> kube::Error {
    kube::Error::Service(format!("{what}: standalone mode has no API server").into())
}

/// The pod machinery's API in standalone mode.
#[derive(Debug, Default)]
pub struct LocalApi;

impl ClusterApi for LocalApi {
    fn patch_pod_status<'a>(
        &'a self,
        _ns: &'a str,
        _name: &'a str,
        _patch: serde_json::Value,
    ) -> BoxFuture<'a, Result<(), kube::Error>> {
        // The status book (see `pods::writer`) already holds it for `/pods`.
        Box::pin(async { Ok(()) })
    }

    fn delete_pod<'a>(
        &'a self,
        _ns: &'a str,
        _name: &'a str,
        _params: DeleteParams,
    ) -> BoxFuture<'a, Result<(), kube::Error>> {
        Box::pin(async { Ok(()) })
    }

    fn create_event<'a>(
        &'a self,
        ns: &'a str,
        event: Event,
    ) -> BoxFuture<'a, Result<(), kube::Error>> {
        Box::pin(async move {
            tracing::info!(
                namespace = ns,
                object = event.involved_object.name.as_deref().unwrap_or_default(),
                kind = event.type_.as_deref().unwrap_or_default(),
                reason = event.reason.as_deref().unwrap_or_default(),
                "event: {}",
                event.message.as_deref().unwrap_or_default()
            );
            Ok(())
        })
    }

    fn patch_event<'a>(
        &'a self,
        _ns: &'a str,
        _name: &'a str,
        _patch: serde_json::Value,
    ) -> BoxFuture<'a, Result<(), kube::Error>> {
        Box::pin(async { Ok(()) })
    }

    fn config_map<'a>(
        &'a self,
        _ns: &'a str,
        _name: &'a str,
    ) -> BoxFuture<'a, Result<Option<ConfigMap>, kube::Error>> {
        Box::pin(async { Ok(None) })
    }

    fn secret<'a>(
        &'a self,
        _ns: &'a str,
        _name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Secret>, kube::Error>> {
        Box::pin(async { Ok(None) })
    }

    fn request_token<'a>(
        &'a self,
        _ns: &'a str,
        _account: &'a str,
        _request: TokenRequest,
    ) -> BoxFuture<'a, Result<TokenRequest, kube::Error>> {
        Box::pin(async { Err(no_api_server("a service account token")) })
    }

    fn claim<'a>(
        &'a self,
        _ns: &'a str,
        _name: &'a str,
    ) -> BoxFuture<'a, Result<Option<PersistentVolumeClaim>, kube::Error>> {
        Box::pin(async { Ok(None) })
    }

    fn volume<'a>(
        &'a self,
        _name: &'a str,
    ) -> BoxFuture<'a, Result<PersistentVolume, kube::Error>> {
        Box::pin(async { Err(no_api_server("a persistent volume")) })
    }

    fn services<'a>(&'a self, _ns: &'a str) -> BoxFuture<'a, Result<Vec<Service>, kube::Error>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// Token and access reviews in standalone mode: none can be made, so bearer tokens are
/// not accepted and `Webhook` authorization allows nothing; client certificates
/// (`--client-ca-file`) with `AlwaysAllow` are the way in.
#[derive(Debug, Default)]
pub struct NoReviews;

impl Reviewer for NoReviews {
    fn review_token<'a>(
        &'a self,
        _token: &'a str,
    ) -> BoxFuture<'a, Result<Option<User>, ReviewError>> {
        Box::pin(async { Err(ReviewError::Kube(no_api_server("a token review"))) })
    }

    fn review_access<'a>(
        &'a self,
        _access: Access<'a>,
    ) -> BoxFuture<'a, Result<bool, ReviewError>> {
        Box::pin(async { Err(ReviewError::Kube(no_api_server("an access review"))) })
    }
}
