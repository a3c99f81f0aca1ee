//! Token reviews and subject access reviews: the API server answers who a bearer token
//! is and whether a user may do something to this node, through the node's own client
//! (the `system:node` rules of the Node authorizer let a node create both).

use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::PostParams;

use super::User;
use super::attributes::Subresource;

/// Why a review could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The API server refused or failed the review.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The API server did not answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// One access question: may `user` do `verb` on `nodes/<subresource>` of `node`?
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    /// Who asks.
    pub user: &'a User,
    /// The API verb.
    pub verb: &'a str,
    /// The subresource of `nodes`.
    pub subresource: Subresource,
    /// This node's name.
    pub node: &'a str,
}

/// Who answers reviews: the API server, or a fake in tests.
pub trait Reviewer: Send + Sync {
    /// The user `token` belongs to; `None` when the token is not valid.
    ///
    /// # Errors
    /// When there is no answer.
    fn review_token<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<User>, ReviewError>>;

    /// Whether the access is allowed.
    ///
    /// # Errors
    /// When there is no answer.
    fn review_access<'a>(&'a self, access: Access<'a>) -> BoxFuture<'a, Result<bool, ReviewError>>;
}

/// Reviews by the API server (`TokenReview`, `SubjectAccessReview`), each bounded in time.
#[derive(Clone)]
pub struct KubeReviewer {
    client: kube::Client,
    timeout: Duration,
}

impl std::fmt::Debug for KubeReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeReviewer")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl KubeReviewer {
    /// Reviews through `client`, each given up after 10 s (the kubelet's webhook
    /// timeout).
    #[must_use]
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            timeout: Duration::from_secs(10),
        }
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, ReviewError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| ReviewError::Timeout(self.timeout))?
            .map_err(ReviewError::from)
    }
}

impl Reviewer for KubeReviewer {
    fn review_token<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<User>, ReviewError>> {
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: token.to_owned(),
                    audiences: None,
                },
                ..TokenReview::default()
            };
            let api: Api<TokenReview> = Api::all(self.client.clone());
            let answer = self
                .bounded(api.create(&PostParams::default(), &review))
                .await?;
            let status = answer.status.unwrap_or_default();
            if status.authenticated != Some(true) {
                return Ok(None);
            }
            let info = status.user.unwrap_or_default();
            Ok(info.username.filter(|n| !n.is_empty()).map(|name| User {
                name,
                uid: info.uid.unwrap_or_default(),
                groups: info.groups.unwrap_or_default(),
                extra: info.extra.unwrap_or_default(),
            }))
        })
    }

    fn review_access<'a>(&'a self, access: Access<'a>) -> BoxFuture<'a, Result<bool, ReviewError>> {
        Box::pin(async move {
            let user = access.user;
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: Some(user.name.clone()),
                    uid: Some(user.uid.clone()).filter(|u| !u.is_empty()),
                    groups: Some(user.groups.clone()),
                    extra: Some(user.extra.clone()).filter(|e| !e.is_empty()),
                    resource_attributes: Some(ResourceAttributes {
                        verb: Some(access.verb.to_owned()),
                        group: Some(String::new()),
                        version: Some("v1".to_owned()),
                        resource: Some("nodes".to_owned()),
                        subresource: Some(access.subresource.as_str().to_owned()),
                        name: Some(access.node.to_owned()),
                        namespace: Some(String::new()),
                        ..ResourceAttributes::default()
                    }),
                    non_resource_attributes: None,
                },
                ..SubjectAccessReview::default()
            };
            let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
            let answer = self
                .bounded(api.create(&PostParams::default(), &review))
                .await?;
            Ok(answer.status.is_some_and(|s| s.allowed))
        })
    }
}
