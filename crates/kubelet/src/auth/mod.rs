//! Who may call the kubelet API, as the kubelet decides it: authentication by verified
//! client certificate (`--client-ca-file`) or bearer token (`TokenReview`, unless
//! `--authentication-token-webhook=false`), anonymous only with `--anonymous-auth`;
//! authorization by `SubjectAccessReview` of the kubelet's attributes ([`attributes`])
//! unless `--authorization-mode AlwaysAllow`; both cached.
//!
//! - [`attributes`]: path and method to `nodes/<subresource>` and verb.
//! - [`review`]: the API server's answers (and the trait a test fakes).

pub mod attributes;
mod cache;
pub mod review;
mod tokens;
pub(crate) mod x509;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;

pub use attributes::{Attributes, Subresource};
pub use review::{Access, KubeReviewer, ReviewError, Reviewer};

use cache::TtlCache;

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct User {
    /// The user name (a certificate's common name, a token's user).
    pub name: String,
    /// The user's UID, where the token review gave one.
    pub uid: String,
    /// Groups (a certificate's organizations, a token's groups).
    pub groups: Vec<String>,
    /// Extra attributes from the token review.
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    /// The user of unauthenticated requests (`system:anonymous`).
    #[must_use]
    pub fn anonymous() -> Self {
        Self {
            name: "system:anonymous".to_owned(),
            groups: vec!["system:unauthenticated".to_owned()],
            ..Self::default()
        }
    }

    /// The user of a verified client certificate (DER): its subject's common name and
    /// organizations; `None` without a common name.
    #[must_use]
    pub fn from_certificate(der: &[u8]) -> Option<Self> {
        let (name, groups) = x509::subject(der)?;
        (!name.is_empty()).then(|| Self {
            name,
            groups,
            ..Self::default()
        })
    }

    /// Adds `system:authenticated`, as the kubelet does for every authenticated user,
    /// unless the user already is in it or in `system:unauthenticated`.
    fn authenticated(mut self) -> Self {
        if !self
            .groups
            .iter()
            .any(|g| g == "system:authenticated" || g == "system:unauthenticated")
        {
            self.groups.push("system:authenticated".to_owned());
        }
        self
    }
}

/// How the kubelet API authorizes authenticated requests (`--authorization-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
pub enum AuthorizationMode {
    /// A `SubjectAccessReview` per request (cached).
    #[default]
    Webhook,
    /// Every authenticated request is allowed.
    AlwaysAllow,
}

impl std::str::FromStr for AuthorizationMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Webhook" => Ok(Self::Webhook),
            "AlwaysAllow" => Ok(Self::AlwaysAllow),
            _ => Err(format!(
                "unknown authorization mode {s:?} (Webhook or AlwaysAllow)"
            )),
        }
    }
}

/// Authentication and authorization settings; the defaults are the kubelet config
/// file's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthConfig {
    /// Whether requests without credentials are served as `system:anonymous`
    /// (`--anonymous-auth`, default false); otherwise they get 401.
    pub anonymous: bool,
    /// Whether bearer tokens are authenticated by `TokenReview`
    /// (`--authentication-token-webhook`, `authentication.webhook.enabled`, default
    /// true). When false a bearer token is no credential at all, as in the kubelet: the
    /// request is anonymous when that is allowed, 401 otherwise.
    pub token_webhook: bool,
    /// `--authorization-mode` (default `Webhook`).
    pub mode: AuthorizationMode,
    /// How long token reviews are cached (`--authentication-token-webhook-cache-ttl`,
    /// default 2 min).
    pub token_cache_ttl: Duration,
    /// How long allowed decisions are cached
    /// (`--authorization-webhook-cache-authorized-ttl`, default 5 min).
    pub authorized_ttl: Duration,
    /// How long denied decisions are cached
    /// (`--authorization-webhook-cache-unauthorized-ttl`, default 30 s).
    pub unauthorized_ttl: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            anonymous: false,
            token_webhook: true,
            mode: AuthorizationMode::Webhook,
            token_cache_ttl: Duration::from_secs(120),
            authorized_ttl: Duration::from_secs(300),
            unauthorized_ttl: Duration::from_secs(30),
        }
    }
}

/// Why a request is refused, with the kubelet's status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No valid credentials (401 `Unauthorized`).
    Unauthorized,
    /// Authenticated, but no subresource of the request is allowed (403).
    Forbidden {
        /// The user name.
        user: String,
        /// What was asked.
        attributes: Attributes,
    },
    /// The authorizer could not answer (500).
    Error {
        /// The user name.
        user: String,
        /// The verb.
        verb: &'static str,
        /// The subresource whose review failed.
        subresource: Subresource,
    },
}

impl Rejection {
    /// The HTTP status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::Error { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The body, worded as the kubelet's.
    #[must_use]
    pub fn body(&self) -> String {
        match self {
            Self::Unauthorized => "Unauthorized".to_owned(),
            Self::Forbidden { user, attributes } => {
                let subresources: Vec<_> =
                    attributes.subresources().map(Subresource::as_str).collect();
                format!(
                    "Forbidden (user={user}, verb={}, resource=nodes, subresource(s)=[{}])",
                    attributes.verb,
                    subresources.join(" ")
                )
            }
            Self::Error {
                user,
                verb,
                subresource,
            } => format!(
                "Authorization error (user={user}, verb={verb}, resource=nodes, subresource={subresource})"
            ),
        }
    }
}

/// Bearer tokens longer than this are refused without a review (service account tokens
/// are about 1 KiB).
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Entries of the decision cache.
const DECISION_CACHE_ENTRIES: usize = 8192;

type DecisionKey = (User, &'static str, Subresource);

/// The kubelet API's gate: authenticates and authorizes each request.
pub struct Auth {
    config: AuthConfig,
    node: String,
    reviewer: Arc<dyn Reviewer>,
    tokens: tokens::TokenReviews,
    decisions: TtlCache<DecisionKey, bool>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("config", &self.config)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// The gate of node `node`'s API.
    #[must_use]
    pub fn new(config: AuthConfig, node: &str, reviewer: Arc<dyn Reviewer>) -> Self {
        Self {
            config,
            node: node.to_owned(),
            tokens: tokens::TokenReviews::new(reviewer.clone(), config.token_cache_ttl),
            reviewer,
            decisions: TtlCache::new(DECISION_CACHE_ENTRIES),
        }
    }

    /// Who sent a request with the TLS `peer` (a verified client certificate's user)
    /// and `authorization` header, and whether they may `method` `path`.
    ///
    /// # Errors
    /// The [`Rejection`] to answer with.
    pub async fn check(
        &self,
        peer: Option<&User>,
        authorization: Option<&[u8]>,
        method: &str,
        path: &str,
    ) -> Result<User, Rejection> {
        let user = self.authenticate(peer, authorization).await?;
        self.authorize(&user, method, path).await?;
        Ok(user)
    }

    /// The kubelet's order: the client certificate, then a bearer token; anonymous only
    /// when neither was presented (an invalid token is never anonymous).
    async fn authenticate(
        &self,
        peer: Option<&User>,
        authorization: Option<&[u8]>,
    ) -> Result<User, Rejection> {
        if let Some(user) = peer {
            return Ok(user.clone().authenticated());
        }
        let credential = match bearer(authorization) {
            // Without the token webhook the kubelet has no token authenticator: a bearer
            // token is no credential, the request is as one without any.
            Bearer::Token(_) | Bearer::Invalid if !self.config.token_webhook => Bearer::None,
            credential => credential,
        };
        match credential {
            Bearer::None if self.config.anonymous => Ok(User::anonymous()),
            Bearer::None | Bearer::Invalid => Err(Rejection::Unauthorized),
            Bearer::Token(token) => self.review_token(token).await,
        }
    }

    async fn review_token(&self, token: &str) -> Result<User, Rejection> {
        match self.tokens.user(token).await {
            Ok(Some(user)) => Ok(user.authenticated()),
            Ok(None) => Err(Rejection::Unauthorized),
            // Not a warning each: a flood of tokens would flood the log too.
            Err(e @ tokens::TokenError::Busy) => {
                tracing::debug!(error = %e, "cannot review a bearer token");
                Err(Rejection::Unauthorized)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot review a bearer token");
                Err(Rejection::Unauthorized)
            }
        }
    }

    async fn authorize(&self, user: &User, method: &str, path: &str) -> Result<(), Rejection> {
        if self.config.mode == AuthorizationMode::AlwaysAllow {
            return Ok(());
        }
        let attributes = Attributes::of(method, path);
        for subresource in attributes.subresources() {
            let key = (user.clone(), attributes.verb, subresource);
            let allowed = match self.decisions.get(&key) {
                Some(allowed) => allowed,
                None => {
                    let access = Access {
                        user,
                        verb: attributes.verb,
                        subresource,
                        node: &self.node,
                    };
                    let allowed = self.reviewer.review_access(access).await.map_err(|e| {
                        tracing::warn!(user = %user.name, %subresource, error = %e, "cannot review an access to the kubelet API");
                        Rejection::Error {
                            user: user.name.clone(),
                            verb: attributes.verb,
                            subresource,
                        }
                    })?;
                    let ttl = if allowed {
                        self.config.authorized_ttl
                    } else {
                        self.config.unauthorized_ttl
                    };
                    self.decisions.insert(key, allowed, ttl);
                    allowed
                }
            };
            if allowed {
                return Ok(());
            }
        }
        Err(Rejection::Forbidden {
            user: user.name.clone(),
            attributes,
        })
    }
}

/// What an `Authorization` header holds.
enum Bearer<'a> {
    /// No bearer token (no header, another scheme, an empty token).
    None,
    /// A token that cannot be valid (not UTF-8, too long).
    Invalid,
    Token(&'a str),
}

/// The bearer token of an `Authorization` header, split as the kubelet splits it.
fn bearer(header: Option<&[u8]>) -> Bearer<'_> {
    let Some(header) = header else {
        return Bearer::None;
    };
    let header = header.trim_ascii();
    let mut parts = header.splitn(3, |b| *b == b' ');
    let (Some(scheme), Some(token)) = (parts.next(), parts.next()) else {
        return Bearer::None;
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") || token.is_empty() {
        return Bearer::None;
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Bearer::Invalid;
    }
    std::str::from_utf8(token).map_or(Bearer::Invalid, Bearer::Token)
}

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod token_webhook_tests;
