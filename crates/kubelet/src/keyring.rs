//! Image pull credentials from `imagePullSecrets`, matched to an image the way the
//! kubelet's keyring matches them.
//!
//! A secret of type `kubernetes.io/dockerconfigjson` (`{"auths": {KEY: ENTRY}}` under
//! `.dockerconfigjson`) or `kubernetes.io/dockercfg` (`{KEY: ENTRY}` under `.dockercfg`)
//! gives entries with `username`/`password` or a base64 `auth` of `user:password`.
//! A KEY (`https://` or `http://` prefix ignored, a `/v1/` or `/v2/` path ignored) matches
//! an image when the host has as many dot-separated labels, each label matches as a glob
//! (`*.example.com`, Go's `filepath.Match` syntax, matched in bounded time by `glob`),
//! the port is the same (none matches none), and the key's path is a
//! prefix of the image's path. More specific keys (reverse lexicographic order) come
//! first; every matching entry is a candidate, tried in turn. An image of Docker Hub also
//! matches an `index.docker.io` key.

mod glob;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;

/// The longest host name DNS allows.
const MAX_HOST: usize = 253;

/// A user name and password for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl Credential {
    /// What identifies this credential without revealing it: `sha256:<hex>` of
    /// `basic\0<user>\0<password>`. A runtime records the IDs of the credentials that
    /// pulled an image ([`ImageStatus::pulled_with`](crate::runtime::ImageStatus)), the
    /// same way, so that the image manager can tell whether a pod may use it.
    #[must_use]
    pub fn id(&self) -> String {
        use sha2::Digest as _;
        let hash = sha2::Sha256::digest(format!("basic\0{}\0{}", self.username, self.password));
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Credentials by registry key, as read from pull secrets.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    /// Normalised key (`host[:port][/path]`) → entries, in the order they were added.
    entries: BTreeMap<String, Vec<Credential>>,
}

#[derive(serde::Deserialize)]
struct Entry {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    auth: String,
}

#[derive(serde::Deserialize)]
struct DockerConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

fn decode_auth(auth: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    let trimmed = auth.trim();
    let decoded = if trimmed.ends_with('=') {
        base64::engine::general_purpose::STANDARD.decode(trimmed)
    } else {
        base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed)
    }
    .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// `https://host:port/v2/path` → `host:port/path`; `host` alone stays `host`.
fn normalise_key(key: &str) -> String {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    let path = path
        .strip_prefix("v2/")
        .or_else(|| path.strip_prefix("v1/"))
        .unwrap_or(path);
    let path = path.trim_end_matches('/');
    if path.is_empty() {
        host.to_owned()
    } else {
        format!("{host}/{path}")
    }
}

/// Splits `host[:port][/path]` into host labels, port and path (with its leading `/`).
fn split(url: &str) -> (Vec<&str>, &str, &str) {
    let (authority, path) = url.find('/').map_or((url, ""), |i| url.split_at(i));
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, p),
        _ => (authority, ""),
    };
    (host.split('.').collect(), port, path)
}

/// Whether key `key` matches repository `repo` (`host[:port]/path`).
/// A host longer than a DNS name can be (253) matches no key: the pull cannot resolve
/// it anyway, and it bounds the work of matching to the keys' length times this.
fn matches(key: &str, repo: &str) -> bool {
    let (key_labels, key_port, key_path) = split(key);
    let (labels, port, path) = split(repo);
    labels.iter().map(|l| l.len() + 1).sum::<usize>() <= MAX_HOST + 1
        && key_port == port
        && key_labels.len() == labels.len()
        && path.starts_with(key_path)
        && key_labels
            .iter()
            .zip(&labels)
            .all(|(k, l)| glob::matches(k, l))
}

/// The repository an image is pulled from, tag and digest removed, with Docker Hub's
/// defaults applied: `busybox:1` → `docker.io/library/busybox`.
#[must_use]
pub fn repository(image: &str) -> String {
    let name = image.split('@').next().unwrap_or(image);
    let name = match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    };
    match name.split_once('/') {
        None => format!("docker.io/library/{name}"),
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            name.to_owned()
        }
        Some(_) => format!("docker.io/{name}"),
    }
}

/// What is wrong with a pull secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secret {name}: {reason}")]
pub struct SecretError {
    /// The secret's name.
    pub name: String,
    /// What is wrong.
    pub reason: String,
}

impl Keyring {
    /// Adds the entries of a pull secret. A secret of another type adds nothing, as with
    /// the kubelet.
    ///
    /// # Errors
    /// When the secret's content does not parse; nothing is added then.
    pub fn add_secret(&mut self, secret: &Secret) -> Result<(), SecretError> {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let error = |reason: String| SecretError {
            name: name.clone(),
            reason,
        };
        let data = secret.data.clone().unwrap_or_default();
        let entries: BTreeMap<String, Entry> = match secret.type_.as_deref() {
            Some("kubernetes.io/dockerconfigjson") => {
                let Some(bytes) = data.get(".dockerconfigjson") else {
                    return Ok(());
                };
                serde_json::from_slice::<DockerConfigJson>(&bytes.0)
                    .map_err(|e| error(format!("invalid .dockerconfigjson: {e}")))?
                    .auths
            }
            Some("kubernetes.io/dockercfg") => {
                let Some(bytes) = data.get(".dockercfg") else {
                    return Ok(());
                };
                serde_json::from_slice(&bytes.0)
                    .map_err(|e| error(format!("invalid .dockercfg: {e}")))?
            }
            _ => return Ok(()),
        };
        for (key, entry) in entries {
            let (username, password) = if entry.auth.is_empty() {
                (entry.username, entry.password)
            } else {
                decode_auth(&entry.auth).ok_or_else(|| {
                    error(format!("entry {key:?}: auth is not base64(user:password)"))
                })?
            };
            self.entries
                .entry(normalise_key(&key))
                .or_default()
                .push(Credential { username, password });
        }
        Ok(())
    }

    /// The credentials to try for `image`, most specific key first; empty when none
    /// matches (the pull is then anonymous).
    #[must_use]
    pub fn lookup(&self, image: &str) -> Vec<Credential> {
        let repo = repository(image);
        let mut found: Vec<Credential> = self
            .entries
            .iter()
            .rev()
            .filter(|(key, _)| matches(key, &repo))
            .flat_map(|(_, creds)| creds.iter().cloned())
            .collect();
        if found.is_empty() && repo.starts_with("docker.io/") {
            found = self
                .entries
                .get("index.docker.io")
                .cloned()
                .unwrap_or_default();
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(type_: &str, key: &str, json: &serde_json::Value) -> Secret {
        Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("s".to_owned()),
                ..Default::default()
            },
            type_: Some(type_.to_owned()),
            data: Some(BTreeMap::from([(
                key.to_owned(),
                ByteString(json.to_string().into_bytes()),
            )])),
            ..Secret::default()
        }
    }

    fn users(ring: &Keyring, image: &str) -> Vec<String> {
        ring.lookup(image).into_iter().map(|c| c.username).collect()
    }

    #[test]
    fn repositories_get_docker_hub_defaults() {
        assert_eq!(repository("busybox"), "docker.io/library/busybox");
        assert_eq!(repository("busybox:1.36"), "docker.io/library/busybox");
        assert_eq!(repository("me/app:v1"), "docker.io/me/app");
        assert_eq!(
            repository("127.0.0.1:5000/e2e/app:v1"),
            "127.0.0.1:5000/e2e/app"
        );
        assert_eq!(repository("ghcr.io/o/app@sha256:abc"), "ghcr.io/o/app");
        assert_eq!(repository("localhost/app"), "localhost/app");
    }

    #[test]
    fn keys_match_by_host_port_path_prefix_and_glob() {
        let mut ring = Keyring::default();
        let auths = serde_json::json!({ "auths": {
            "https://registry.example.com": { "username": "host", "password": "p" },
            "registry.example.com/team": { "username": "team", "password": "p" },
            "http://127.0.0.1:5000/v2/": { "auth": "cG9ydDpzZWNyZXQ6d2l0aDpjb2xvbnM=" },
            "*.glob.example.com": { "username": "glob", "password": "p" }
        }});
        ring.add_secret(&secret(
            "kubernetes.io/dockerconfigjson",
            ".dockerconfigjson",
            &auths,
        ))
        .expect("valid");
        // The more specific path first, then the host.
        assert_eq!(
            users(&ring, "registry.example.com/team/app:v1"),
            ["team", "host"]
        );
        assert_eq!(users(&ring, "registry.example.com/other/app"), ["host"]);
        // A port must be the same on both sides.
        assert_eq!(
            users(&ring, "registry.example.com:443/team/app"),
            Vec::<String>::new()
        );
        assert_eq!(users(&ring, "127.0.0.1:5000/e2e/app:v1"), ["port"]);
        assert_eq!(
            ring.lookup("127.0.0.1:5000/x")[0].password,
            "secret:with:colons"
        );
        assert_eq!(users(&ring, "127.0.0.1/e2e/app"), Vec::<String>::new());
        // A glob matches one label, never a different number of them.
        assert_eq!(users(&ring, "eu.glob.example.com/app"), ["glob"]);
        assert_eq!(
            users(&ring, "a.eu.glob.example.com/app"),
            Vec::<String>::new()
        );
        // Not a match for the team path: "team" is a prefix of "teamster" as a string,
        // as it is for the kubelet.
        assert_eq!(
            users(&ring, "registry.example.com/teamster/app"),
            ["team", "host"]
        );
    }

    #[test]
    fn a_pathological_glob_key_does_not_hang_the_lookup() {
        // Finding 7: the recursive matcher needed about 4e15 steps for this label.
        let key = format!("{}b.example.com", "*a".repeat(20));
        let auths = serde_json::json!({ "auths": { key: { "username": "u", "password": "p" } } });
        let mut ring = Keyring::default();
        ring.add_secret(&secret(
            "kubernetes.io/dockerconfigjson",
            ".dockerconfigjson",
            &auths,
        ))
        .expect("valid");
        let image = format!("{}.example.com/app", "a".repeat(60));
        assert!(ring.lookup(&image).is_empty());
        let image = format!("{}b.example.com/app", "a".repeat(60));
        assert_eq!(users(&ring, &image), ["u"]);
        // A host longer than DNS allows matches no key.
        let image = format!("{}b.example.com/app", "a".repeat(260));
        assert!(ring.lookup(&image).is_empty());
    }

    #[test]
    fn dockercfg_secrets_and_docker_hub_fallback() {
        let mut ring = Keyring::default();
        let cfg = serde_json::json!({
            "https://index.docker.io/v1/": { "username": "hub", "password": "p" }
        });
        ring.add_secret(&secret("kubernetes.io/dockercfg", ".dockercfg", &cfg))
            .expect("valid");
        assert_eq!(users(&ring, "busybox"), ["hub"]);
        assert_eq!(users(&ring, "quay.io/app"), Vec::<String>::new());
    }

    #[test]
    fn other_secret_types_add_nothing_and_bad_content_is_an_error() {
        let mut ring = Keyring::default();
        let auths = serde_json::json!({ "auths": { "r.example": { "username": "u" } } });
        ring.add_secret(&secret("Opaque", ".dockerconfigjson", &auths))
            .expect("ignored");
        assert!(ring.lookup("r.example/app").is_empty());
        let bad = serde_json::json!({ "auths": { "r.example": { "auth": "!!!" } } });
        let err = ring
            .add_secret(&secret(
                "kubernetes.io/dockerconfigjson",
                ".dockerconfigjson",
                &bad,
            ))
            .expect_err("bad auth");
        assert!(err.to_string().contains("auth is not base64"), "{err}");
    }
}
