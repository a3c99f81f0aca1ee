//! A pull's conversation with one registry: the `/v2/` ping, the bearer-token exchange and
//! the requests that follow, made by the store itself so that every body it reads (a token
//! answer, an error answer) is read chunk by chunk under a byte cap, and so that nothing of
//! an answer reached through a redirect (which may come from another service) reaches a
//! message.

use oci_client::Reference;
use oci_client::secrets::RegistryAuth;
use reqwest::StatusCode;

use crate::registry::chain;
use crate::{Error, Result};

/// Most bytes of a token server's answer read (a token is a few KiB at most).
pub(crate) const TOKEN_BODY_LIMIT: usize = 1 << 20;

/// Most bytes of a registry's error answer read (for its error codes).
pub(crate) const ERROR_BODY_LIMIT: usize = 16 << 10;

/// What a request carries to prove who asks.
#[derive(Clone)]
enum Authorization {
    None,
    Basic(String, String),
    Bearer(String),
}

/// The requests of one pull from one repository, with the credential or token the
/// registry asked for.
pub(crate) struct Session<'c> {
    http: &'c reqwest::Client,
    /// `<scheme>://<registry>/v2/<repository>`.
    base: String,
    /// The reference, for messages.
    whole: String,
    authorization: Authorization,
}

/// A body read under a cap: whole, or its first `cap` bytes when it was longer (the rest
/// is never read).
pub(crate) enum Body {
    Whole(Vec<u8>),
    Over(Vec<u8>),
}

/// Reads `response`'s body chunk by chunk, stopping at `cap` bytes.
pub(crate) async fn read_capped(
    response: &mut reqwest::Response,
    cap: usize,
) -> std::result::Result<Body, reqwest::Error> {
    let mut body: Vec<u8> = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > cap {
            let room = cap - body.len();
            body.extend_from_slice(&chunk[..room]);
            return Ok(Body::Over(body));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Body::Whole(body))
}

/// Whether `response` comes from another URL than `requested` (a redirect was followed;
/// when in doubt, yes).
pub(crate) fn redirected(response: &reqwest::Response, requested: &str) -> bool {
    reqwest::Url::parse(requested).map_or(true, |url| *response.url() != url)
}

/// The registry's error codes (`MANIFEST_UNKNOWN`, `DENIED`, ...) in an error answer's
/// body: at most four, each an upper-case word of at most 40 characters; nothing else
/// of the body.
pub(crate) fn error_codes(body: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        code: Option<String>,
    }
    let Ok(envelope) = serde_json::from_slice::<Envelope>(body) else {
        return Vec::new();
    };
    envelope
        .errors
        .into_iter()
        .filter_map(|e| e.code)
        .filter(|c| {
            (1..=40).contains(&c.len())
                && c.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
        .take(4)
        .collect()
}

/// A registry's failed answer `status` for `what` (`the manifest`, `layer <digest>`) of
/// `whole`, as a message a pod may show: the status, and the registry's error codes only when no redirect was followed
/// (after one, the body may be another service's and stays out).
pub(crate) fn refusal(
    whole: &str,
    what: &str,
    status: StatusCode,
    redirected: bool,
    body: &[u8],
) -> Error {
    let prefix = match status.as_u16() {
        401 | 403 => "Not authorized: ",
        404 => "Not found: ",
        _ => "",
    };
    let mut message = format!("{prefix}{whole}: the registry answered {status} for {what}");
    if redirected {
        message.push_str(" after a redirect");
    } else {
        let codes = error_codes(body);
        if !codes.is_empty() {
            message.push_str(": ");
            message.push_str(&codes.join(", "));
        }
    }
    Error::Registry(message)
}

/// The first `Bearer` challenge among `WWW-Authenticate` values: its `realm` and
/// `service`.
fn bearer_challenge(headers: &reqwest::header::HeaderMap) -> Option<(String, Option<String>)> {
    headers
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let (scheme, params) = v.trim().split_once(' ')?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return None;
            }
            let params = auth_params(params);
            let find = |key: &str| {
                params
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(key))
                    .map(|(_, v)| v.clone())
            };
            Some((find("realm")?, find("service")))
        })
}

/// `key=value` and `key="quoted \" value"` pairs, comma-separated (RFC 9110's
/// auth-params); stops at anything else.
fn auth_params(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        let Some((key, after)) = rest.split_once('=') else {
            return pairs;
        };
        let key = key.trim();
        if key.is_empty() || key.contains([' ', '\t', ',', '"']) {
            return pairs;
        }
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            let Some(end) = end else { return pairs };
            (value, &quoted[end..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        pairs.push((key.to_owned(), value));
        rest = next;
    }
}

impl<'c> Session<'c> {
    /// Asks the registry of `reference` what it wants (`GET /v2/`) and, when it answers
    /// with a bearer challenge, gets a pull token for the repository from the token
    /// server with `auth` (its answer read up to [`TOKEN_BODY_LIMIT`]).
    pub(crate) async fn open(
        http: &'c reqwest::Client,
        insecure_registries: &[String],
        reference: &Reference,
        auth: &RegistryAuth,
    ) -> Result<Self> {
        let whole = reference.whole();
        let registry = reference.resolve_registry();
        let scheme = if insecure_registries.iter().any(|r| r == registry) {
            "http"
        } else {
            "https"
        };
        let base = format!("{scheme}://{registry}/v2/{}", reference.repository());
        let given = match auth {
            RegistryAuth::Anonymous => Authorization::None,
            RegistryAuth::Basic(user, password) => {
                Authorization::Basic(user.clone(), password.clone())
            }
            RegistryAuth::Bearer(token) => Authorization::Bearer(token.clone()),
        };
        let mut session = Self {
            http,
            base,
            whole: whole.clone(),
            authorization: given.clone(),
        };
        if matches!(given, Authorization::Bearer(_)) {
            return Ok(session);
        }
        let http_error = |e: reqwest::Error| Error::Registry(format!("{whole}: {}", chain(&e)));
        // The ping's body is never read.
        let ping = http
            .get(format!("{scheme}://{registry}/v2/"))
            .send()
            .await
            .map_err(http_error)?;
        if let Some((realm, service)) = bearer_challenge(ping.headers()) {
            drop(ping);
            let scope = format!("repository:{}:pull", reference.repository());
            let token = session.token(&realm, service.as_deref(), &scope).await?;
            session.authorization = Authorization::Bearer(token);
        }
        Ok(session)
    }

    /// A token from the token server at `realm` (a URL the registry chose: it may be
    /// any address, so nothing of its answer but a token and a status reaches a message).
    async fn token(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<String> {
        let whole = &self.whole;
        let mut url = reqwest::Url::parse(realm).map_err(|e| {
            Error::Registry(format!(
                "{whole}: the registry's token realm is not a URL: {e}"
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::Registry(format!(
                "{whole}: the registry's token realm is not an HTTP URL"
            )));
        }
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("scope", scope);
            if let Some(service) = service {
                query.append_pair("service", service);
            }
        }
        let mut request = self.http.get(url);
        if let Authorization::Basic(user, password) = &self.authorization {
            request = request.basic_auth(user, Some(password));
        }
        let http_error = |e: reqwest::Error| {
            Error::Registry(format!("{whole}: requesting a token: {}", chain(&e)))
        };
        let mut response = request.send().await.map_err(http_error)?;
        let status = response.status();
        if !status.is_success() {
            let prefix = match status.as_u16() {
                401 | 403 => "Not authorized: ",
                _ => "",
            };
            return Err(Error::Registry(format!(
                "{prefix}{whole}: the token server answered {status}"
            )));
        }
        let body = match read_capped(&mut response, TOKEN_BODY_LIMIT)
            .await
            .map_err(http_error)?
        {
            Body::Whole(body) => body,
            Body::Over(_) => {
                return Err(Error::TooLarge {
                    what: format!("the token server's answer for {whole}"),
                    limit: TOKEN_BODY_LIMIT as u64,
                });
            }
        };
        #[derive(serde::Deserialize)]
        struct Answer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let answer: Option<Answer> = serde_json::from_slice(&body).ok();
        answer
            .and_then(|a| a.token.or(a.access_token))
            .filter(|t| {
                !t.is_empty()
                    && reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).is_ok()
            })
            .ok_or_else(|| {
                Error::Registry(format!(
                    "{whole}: the token server's answer holds no usable token"
                ))
            })
    }

    /// The reference, for messages.
    pub(crate) fn whole(&self) -> &str {
        &self.whole
    }

    /// The URL of `kind` (`manifests`, `blobs`) `name` in the repository.
    pub(crate) fn url(&self, kind: &str, name: &str) -> String {
        format!("{}/{kind}/{name}", self.base)
    }

    /// `GET url` with the session's credential or token (reqwest drops it on a redirect
    /// to another host).
    pub(crate) fn get(&self, url: &str) -> reqwest::RequestBuilder {
        let request = self.http.get(url);
        match &self.authorization {
            Authorization::None => request,
            Authorization::Basic(user, password) => request.basic_auth(user, Some(password)),
            Authorization::Bearer(token) => request.bearer_auth(token),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{auth_params, error_codes};

    #[test]
    fn auth_params_read_quoted_and_bare_values() {
        assert_eq!(
            auth_params(
                r#"realm="https://auth.example/token",service=registry.example, scope="repository:a/b:pull,push""#
            ),
            [
                ("realm".to_owned(), "https://auth.example/token".to_owned()),
                ("service".to_owned(), "registry.example".to_owned()),
                ("scope".to_owned(), "repository:a/b:pull,push".to_owned()),
            ]
        );
        assert_eq!(
            auth_params(r#"realm="a\"b""#),
            [("realm".to_owned(), "a\"b".to_owned())]
        );
        assert!(auth_params(r#"realm="unterminated"#).is_empty());
    }

    #[test]
    fn only_short_upper_case_error_codes_are_kept() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"secret text"},{"code":"lower case"},{"code":"DENIED"}]}"#;
        assert_eq!(error_codes(body), ["MANIFEST_UNKNOWN", "DENIED"]);
        assert!(error_codes(b"not json").is_empty());
    }
}
