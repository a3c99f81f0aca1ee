//! Where volume content comes from: ConfigMaps, Secrets, the downward API and
//! service-account tokens read through the API server (with a node-wide cache for the
//! periodic sync), and the node paths of PersistentVolumeClaims.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, ServiceAccountTokenProjection,
};
use kube::ResourceExt;

use crate::api::{BoxFuture, ClusterApi};

use super::atomic::{self, File, Files};
use super::downward::{self, NodeFacts};

/// Seconds a requested service-account token lives when the projection names none.
const DEFAULT_TOKEN_SECONDS: i64 = 3600;

/// A part of a projected volume (and the single part of a configMap, secret or
/// downwardAPI volume).
#[derive(Debug, Clone)]
pub(super) enum Part {
    ConfigMap {
        name: String,
        items: Option<Vec<KeyToPath>>,
        optional: bool,
    },
    Secret {
        name: String,
        items: Option<Vec<KeyToPath>>,
        optional: bool,
    },
    Downward(Vec<DownwardAPIVolumeFile>),
    Token(ServiceAccountTokenProjection),
    /// A projected source this node cannot fill (the mount fails, naming it).
    Unsupported(&'static str),
}

/// A token the node agent requested for a `serviceAccountToken` projection.
#[derive(Debug, Clone)]
pub(super) struct Token {
    token: String,
    issued: SystemTime,
    expires: SystemTime,
}

impl Token {
    /// The kubelet's rule: a token is renewed when 80 % of its life has passed, or when it
    /// is older than 24 hours.
    fn needs_refresh(&self, now: SystemTime) -> bool {
        let life = self.expires.duration_since(self.issued).unwrap_or_default();
        let age = now.duration_since(self.issued).unwrap_or_default();
        age >= life.mul_f64(0.8) || age >= Duration::from_secs(24 * 3600)
    }
}

/// Objects by `(namespace, name)`, with when each was read (`None`: it did not exist).
type Entries<T> = Mutex<HashMap<(String, String), (Instant, Option<T>)>>;

/// ConfigMaps and Secrets read for volumes, shared by every pod of the node, so that the
/// periodic sync of many pods referencing one object (every pod's `kube-root-ca.crt`)
/// reads it about once per sync period instead of once per pod.
#[derive(Debug, Default)]
pub struct ObjectCache {
    config_maps: Entries<ConfigMap>,
    secrets: Entries<Secret>,
}

/// The entry for `key` if younger than `max_age`; entries older than twice that are
/// dropped on the way, so the cache holds only what pods still read.
fn cached<T: Clone>(
    map: &Entries<T>,
    key: &(String, String),
    max_age: Duration,
) -> Option<Option<T>> {
    let mut map = map
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // A first mount (max age zero) must not wipe what the periodic syncs share.
    let keep = (max_age * 2).max(Duration::from_secs(120));
    map.retain(|_, (at, _)| at.elapsed() < keep);
    map.get(key)
        .filter(|(at, _)| at.elapsed() < max_age)
        .map(|(_, v)| v.clone())
}

fn remember<T>(map: &Entries<T>, key: (String, String), value: Option<T>) {
    map.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(key, (Instant::now(), value));
}

/// What the node agent reads volume content with.
pub struct Context<'a> {
    /// The API client (the node's identity: the Node authorizer lets it read what its
    /// pods reference, and nothing else).
    pub api: &'a dyn ClusterApi,
    /// The node's address and allocatable resources.
    pub facts: NodeFacts,
    /// Objects read lately.
    pub cache: &'a ObjectCache,
    /// How old a cached object may be; zero reads every object afresh (a pod's first
    /// mount).
    pub max_age: Duration,
}

/// Kinds read by name for volumes and the environment.
pub(crate) trait Named: Clone + std::fmt::Debug + Send + 'static {
    /// Object `ns/name`, `None` when it does not exist.
    fn get<'a>(
        api: &'a dyn ClusterApi,
        ns: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Self>, kube::Error>>;
}

impl Named for ConfigMap {
    fn get<'a>(
        api: &'a dyn ClusterApi,
        ns: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Self>, kube::Error>> {
        api.config_map(ns, name)
    }
}

impl Named for Secret {
    fn get<'a>(
        api: &'a dyn ClusterApi,
        ns: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Self>, kube::Error>> {
        api.secret(ns, name)
    }
}

/// Namespaced object `ns/name` of kind `K`, `None` when it does not exist; the error
/// names it as `kind` (`configmap`, `secret`).
pub(crate) async fn read<K: Named>(
    api: &dyn ClusterApi,
    kind: &str,
    ns: &str,
    name: &str,
) -> Result<Option<K>, String> {
    K::get(api, ns, name)
        .await
        .map_err(|e| format!("failed to get {kind} {ns}/{name}: {e}"))
}

pub(super) fn mode(m: Option<i32>, default: u32) -> u32 {
    m.and_then(|m| u32::try_from(m).ok()).unwrap_or(default) & 0o7777
}

/// Files for `data` (key → bytes): every key, or just `items`, each at its path.
fn keyed(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: u32,
    optional: bool,
    missing_key: impl Fn(&str) -> String,
) -> Result<Files, String> {
    let mut files = Files::new();
    match items {
        None => {
            for (key, bytes) in data {
                files.insert(
                    key.clone(),
                    File {
                        data: bytes.clone(),
                        mode: default_mode,
                    },
                );
            }
        }
        Some(items) => {
            for item in items {
                let Some(bytes) = data.get(&item.key) else {
                    if optional {
                        continue;
                    }
                    return Err(missing_key(&item.key));
                };
                if !atomic::valid_path(&item.path) {
                    return Err(format!("invalid item path {:?}", item.path));
                }
                files.insert(
                    item.path.clone(),
                    File {
                        data: bytes.clone(),
                        mode: mode(item.mode, default_mode),
                    },
                );
            }
        }
    }
    Ok(files)
}

/// A ConfigMap's `data` as bytes by key, and its `binaryData` when `binary`: a volume
/// holds both, environment variables come from `data` alone (as the kubelet reads them).
pub(crate) fn config_map_data(cm: &ConfigMap, binary: bool) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    if binary {
        for (k, v) in cm.binary_data.iter().flatten() {
            data.insert(k.clone(), v.0.clone());
        }
    }
    data
}

/// A Secret's `data` (and `stringData`, should a server echo it) as bytes by key.
pub(crate) fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        data.insert(k.clone(), v.clone().into_bytes());
    }
    data
}

impl Context<'_> {
    /// `ns/name` of kind `K` from `entries` when read lately enough, else from the API
    /// server (and remembered).
    async fn cached_read<K: Named>(
        &self,
        entries: &Entries<K>,
        kind: &str,
        ns: &str,
        name: &str,
    ) -> Result<Option<K>, String> {
        let key = (ns.to_owned(), name.to_owned());
        if let Some(hit) = cached(entries, &key, self.max_age) {
            return Ok(hit);
        }
        let got = read::<K>(self.api, kind, ns, name).await?;
        remember(entries, key, got.clone());
        Ok(got)
    }

    async fn config_map(&self, ns: &str, name: &str) -> Result<Option<ConfigMap>, String> {
        self.cached_read(&self.cache.config_maps, "configmap", ns, name)
            .await
    }

    async fn secret(&self, ns: &str, name: &str) -> Result<Option<Secret>, String> {
        self.cached_read(&self.cache.secrets, "secret", ns, name)
            .await
    }

    async fn request_token(
        &self,
        pod: &Pod,
        projection: &ServiceAccountTokenProjection,
    ) -> Result<Token, String> {
        let ns = pod.namespace().unwrap_or_default();
        let account = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_owned());
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(projection.audience.iter().cloned().collect()),
                expiration_seconds: Some(
                    projection
                        .expiration_seconds
                        .unwrap_or(DEFAULT_TOKEN_SECONDS),
                ),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".to_owned()),
                    kind: Some("Pod".to_owned()),
                    name: Some(pod.name_any()),
                    uid: pod.uid(),
                }),
            }),
            ..TokenRequest::default()
        };
        let issued = SystemTime::now();
        let answer = self
            .api
            .request_token(&ns, &account, request)
            .await
            .map_err(|e| format!("failed to fetch token: {e}"))?;
        let status = answer.status.unwrap_or_default();
        let token = status
            .token
            .ok_or_else(|| "failed to fetch token: no token in the answer".to_owned())?;
        let seconds = status
            .expiration_timestamp
            .map_or(0, |t| u64::try_from(t.0.as_second()).unwrap_or_default());
        Ok(Token {
            token,
            issued,
            expires: std::time::UNIX_EPOCH + Duration::from_secs(seconds),
        })
    }

    /// The files of `parts` for `pod`; `None` when an optional source is missing and
    /// nothing else is asked (the kubelet then mounts an empty directory).
    pub(super) async fn project(
        &self,
        pod: &Pod,
        volume: &str,
        parts: &[Part],
        default_mode: u32,
        tokens: &Mutex<HashMap<(String, String), Token>>,
    ) -> Result<Files, String> {
        let ns = pod.namespace().unwrap_or_default();
        let mut files = Files::new();
        for part in parts {
            match part {
                Part::ConfigMap {
                    name,
                    items,
                    optional,
                } => match self.config_map(&ns, name).await? {
                    Some(cm) => files.extend(keyed(
                        &config_map_data(&cm, true),
                        items.as_deref(),
                        default_mode,
                        *optional,
                        |k| format!("configmap references non-existent config key: {k}"),
                    )?),
                    None if *optional => {}
                    None => return Err(format!("configmap {name:?} not found")),
                },
                Part::Secret {
                    name,
                    items,
                    optional,
                } => match self.secret(&ns, name).await? {
                    Some(s) => files.extend(keyed(
                        &secret_data(&s),
                        items.as_deref(),
                        default_mode,
                        *optional,
                        |k| format!("references non-existent secret key: {k}"),
                    )?),
                    None if *optional => {}
                    None => return Err(format!("secret {name:?} not found")),
                },
                Part::Downward(items) => {
                    for item in items {
                        if !atomic::valid_path(&item.path) {
                            return Err(format!("invalid item path {:?}", item.path));
                        }
                        let value = if let Some(f) = &item.field_ref {
                            downward::field(pod, f, &self.facts, true)?
                        } else if let Some(r) = &item.resource_field_ref {
                            downward::resource(pod, "", r, &self.facts)?
                        } else {
                            continue;
                        };
                        files.insert(
                            item.path.clone(),
                            File {
                                data: value.into_bytes(),
                                mode: mode(item.mode, default_mode),
                            },
                        );
                    }
                }
                Part::Unsupported(kind) => {
                    return Err(format!(
                        "projected {kind} sources are not supported by krustlet"
                    ));
                }
                Part::Token(projection) => {
                    let key = (volume.to_owned(), projection.path.clone());
                    let held = tokens
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .get(&key)
                        .cloned();
                    let token = match held {
                        Some(t) if !t.needs_refresh(SystemTime::now()) => t,
                        _ => {
                            let t = self.request_token(pod, projection).await?;
                            tokens
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .insert(key, t.clone());
                            t
                        }
                    };
                    files.insert(
                        projection.path.clone(),
                        File {
                            data: token.token.into_bytes(),
                            mode: default_mode,
                        },
                    );
                }
            }
        }
        Ok(files)
    }

    /// The node path of claim `claim`: its bound volume's `local` or `hostPath` path.
    pub(super) async fn claim_path(&self, ns: &str, claim: &str) -> Result<PathBuf, String> {
        let pvc = match self.api.claim(ns, claim).await {
            Ok(Some(pvc)) => pvc,
            Ok(None) => return Err(format!("persistentvolumeclaim {claim:?} not found")),
            Err(e) => return Err(format!("failed to get persistentvolumeclaim {claim}: {e}")),
        };
        let phase = pvc
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        let bound = pvc.spec.as_ref().and_then(|s| s.volume_name.clone());
        let Some(pv_name) = bound.filter(|_| phase == "Bound") else {
            return Err(format!(
                "PVC {ns}/{claim} has non-bound phase ({phase:?}) or empty pvc.Spec.VolumeName"
            ));
        };
        let pv = self
            .api
            .volume(&pv_name)
            .await
            .map_err(|e| format!("failed to get persistentvolume {pv_name}: {e}"))?;
        let spec = pv.spec.unwrap_or_default();
        if spec.volume_mode.as_deref() == Some("Block") {
            return Err(format!(
                "persistentvolume {pv_name} is a block volume; a wasm pod can only mount directories"
            ));
        }
        if let Some(local) = spec.local {
            return Ok(PathBuf::from(local.path));
        }
        if let Some(host) = spec.host_path {
            return Ok(PathBuf::from(host.path));
        }
        Err(format!(
            "persistentvolume {pv_name} is not a local or hostPath volume, the only kinds a krustlet node mounts"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_renew_at_eighty_percent_of_their_life() {
        let issued = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let t = Token {
            token: String::new(),
            issued,
            expires: issued + Duration::from_secs(600),
        };
        assert!(!t.needs_refresh(issued + Duration::from_secs(479)));
        assert!(t.needs_refresh(issued + Duration::from_secs(480)));
    }

    #[test]
    fn cached_objects_expire_and_old_ones_are_dropped() {
        let map: Entries<u32> = Mutex::default();
        let key = ("ns".to_owned(), "a".to_owned());
        remember(&map, key.clone(), Some(1));
        assert_eq!(cached(&map, &key, Duration::from_secs(60)), Some(Some(1)));
        // Max age zero: always read afresh, without dropping what others may use.
        assert_eq!(cached(&map, &key, Duration::ZERO), None);
        assert_eq!(map.lock().map(|m| m.len()).unwrap_or(0), 1);
    }
}
