//! A pod's volumes as WASI capabilities: each volume is a directory on the node, and a
//! container sees exactly the directories its `volumeMounts` name, preopened at their
//! `mountPath` with the permissions asked; nothing else of the node is visible.
//!
//! Where each kind lives on the node:
//! - `emptyDir`, `configMap`, `secret`, `downwardAPI`, `projected`:
//!   `DATA_DIR/pods/<namespace>_<name>_<uid>/_volumes/<volume>/` (the underscore keeps
//!   them apart from the containers' log directories, whose names cannot contain one);
//!   the last four are written with the kubelet's atomic writer ([`atomic`]) and always
//!   mounted read-only;
//! - `hostPath`: the host path itself, after the kubelet's `type` check;
//! - `persistentVolumeClaim`: the path of the bound `local` or `hostPath` volume.
//!
//! A mount that selects a single file (a `hostPath` of type `File`, a `subPath` naming a
//! file) cannot be a preopen, which is a directory: the file is hard-linked (or, across
//! filesystems, copied read-only) into a directory of its own that is preopened as the
//! mount path's parent.

pub mod atomic;
pub mod downward;

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, PersistentVolume,
    PersistentVolumeClaim, Pod, Secret, ServiceAccount, ServiceAccountTokenProjection, Volume,
};
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};

use crate::runtime::Mount;
use atomic::{File, Files};
use downward::NodeFacts;

/// Directory, under a pod's directory, that holds its volumes.
pub const VOLUMES_DIR: &str = "_volumes";
/// Directory, under a pod's directory, that holds single-file mounts.
const FILES_DIR: &str = "_files";
/// Mode of projected files when the volume names none (the API server defaults it too).
const DEFAULT_MODE: u32 = 0o644;
/// Seconds a requested service-account token lives when the projection names none.
const DEFAULT_TOKEN_SECONDS: i64 = 3600;

/// Why a volume cannot be set up: the kubelet's `FailedMount` event says
/// `MountVolume.SetUp failed for volume "<volume>" : <message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountError {
    /// The volume's name.
    pub volume: String,
    /// What went wrong.
    pub message: String,
}

impl std::fmt::Display for MountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MountVolume.SetUp failed for volume {:?} : {}",
            self.volume, self.message
        )
    }
}

/// A part of a projected volume (and the single part of a configMap, secret or
/// downwardAPI volume).
#[derive(Debug, Clone)]
enum Part {
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
}

#[derive(Debug, Clone)]
enum Kind {
    /// Scratch space; `limit` is `sizeLimit` in bytes.
    EmptyDir { limit: Option<u64> },
    /// Files written by the node agent and refreshed while the pod lives.
    Projected { parts: Vec<Part>, mode: u32 },
    /// A directory or file of the node (hostPath, or a claim's volume).
    Node,
}

/// One set-up volume.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Where it is on the node.
    pub path: PathBuf,
    /// Whether every mount of it is read-only whatever the mount asks.
    pub read_only: bool,
    kind: Kind,
}

/// A token the node agent requested for a `serviceAccountToken` projection.
#[derive(Debug, Clone)]
struct Token {
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

/// The volumes of one pod, set up.
#[derive(Debug)]
pub struct Volumes {
    pod_dir: PathBuf,
    volumes: HashMap<String, Prepared>,
    tokens: Mutex<HashMap<(String, String), Token>>,
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
    map.retain(|_, (at, _)| at.elapsed() < max_age * 2);
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
    pub client: &'a Client,
    /// The node's address and allocatable resources.
    pub facts: NodeFacts,
    /// Objects read lately.
    pub cache: &'a ObjectCache,
    /// How old a cached object may be; zero reads every object afresh (a pod's first
    /// mount).
    pub max_age: Duration,
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// The kind of `volume`, by the name of its one source field.
fn kind_name(volume: &Volume) -> String {
    serde_json::to_value(volume)
        .ok()
        .and_then(|v| {
            v.as_object()?
                .keys()
                .find(|k| k.as_str() != "name")
                .cloned()
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn mode(m: Option<i32>, default: u32) -> u32 {
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

/// A ConfigMap's `data` and `binaryData` as bytes by key.
pub(crate) fn config_map_data(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.iter().flatten() {
        data.insert(k.clone(), v.0.clone());
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
    async fn config_map(&self, ns: &str, name: &str) -> Result<Option<ConfigMap>, String> {
        let key = (ns.to_owned(), name.to_owned());
        if let Some(hit) = cached(&self.cache.config_maps, &key, self.max_age) {
            return Ok(hit);
        }
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        let got = match api.get(name).await {
            Ok(cm) => Some(cm),
            Err(e) if not_found(&e) => None,
            Err(e) => return Err(format!("failed to get configmap {ns}/{name}: {e}")),
        };
        remember(&self.cache.config_maps, key, got.clone());
        Ok(got)
    }

    async fn secret(&self, ns: &str, name: &str) -> Result<Option<Secret>, String> {
        let key = (ns.to_owned(), name.to_owned());
        if let Some(hit) = cached(&self.cache.secrets, &key, self.max_age) {
            return Ok(hit);
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let got = match api.get(name).await {
            Ok(s) => Some(s),
            Err(e) if not_found(&e) => None,
            Err(e) => return Err(format!("failed to get secret {ns}/{name}: {e}")),
        };
        remember(&self.cache.secrets, key, got.clone());
        Ok(got)
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
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &ns);
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
        let answer = api
            .create_token_request(&account, &PostParams::default(), &request)
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
    async fn project(
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
                        &config_map_data(&cm),
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
    async fn claim_path(&self, ns: &str, claim: &str) -> Result<PathBuf, String> {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        let pvc = match claims.get(claim).await {
            Ok(pvc) => pvc,
            Err(e) if not_found(&e) => {
                return Err(format!("persistentvolumeclaim {claim:?} not found"));
            }
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
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        let pv = pvs
            .get(&pv_name)
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

/// The kubelet's `hostPath.type` check; creates what the `...OrCreate` types ask for.
fn host_path(path: &Path, type_: &str) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let p = path.display();
    let meta = || std::fs::metadata(path);
    let check = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(format!("hostPath type check failed: {p} is not {what}"))
        }
    };
    match type_ {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if meta().is_err() {
                std::fs::create_dir_all(path)
                    .map_err(|e| format!("cannot create directory {p}: {e}"))?;
                let _ = std::fs::set_permissions(
                    path,
                    <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
                );
            }
            check(meta().is_ok_and(|m| m.is_dir()), "a directory")
        }
        "Directory" => check(meta().is_ok_and(|m| m.is_dir()), "a directory"),
        "FileOrCreate" => {
            if meta().is_err() {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .map_err(|e| format!("cannot create file {p}: {e}"))?;
            }
            check(meta().is_ok_and(|m| m.is_file()), "a file")
        }
        "File" => check(meta().is_ok_and(|m| m.is_file()), "a file"),
        "Socket" | "CharDevice" | "BlockDevice" => {
            let what = match type_ {
                "Socket" => "a socket file",
                "CharDevice" => "a character device",
                _ => "a block device",
            };
            let ft = meta().map(|m| m.file_type());
            let ok = ft.is_ok_and(|t| match type_ {
                "Socket" => t.is_socket(),
                "CharDevice" => t.is_char_device(),
                _ => t.is_block_device(),
            });
            check(ok, what)?;
            Err(format!(
                "hostPath {p} is {what}: a wasm pod can only be given directories and regular files"
            ))
        }
        other => Err(format!("invalid HostPathType {other:?}")),
    }
}

/// Whether `path` is relative and has no `..`: the kubelet's subPath rule.
fn plain_relative(path: &str) -> bool {
    Path::new(path)
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

impl Volumes {
    /// Sets up every volume of `pod` under `pod_dir`. Stops at the first volume that
    /// cannot be set up; a later call retries.
    ///
    /// # Errors
    /// The volume and the reason, for the `FailedMount` event.
    pub async fn set_up(ctx: &Context<'_>, pod: &Pod, pod_dir: &Path) -> Result<Self, MountError> {
        let this = Self {
            pod_dir: pod_dir.to_owned(),
            volumes: HashMap::new(),
            tokens: Mutex::new(HashMap::new()),
        };
        let mut volumes = HashMap::new();
        let ns = pod.namespace().unwrap_or_default();
        for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let failed = |message: String| MountError {
                volume: volume.name.clone(),
                message,
            };
            let own_dir = pod_dir.join(VOLUMES_DIR).join(&volume.name);
            let prepared = if let Some(e) = &volume.empty_dir {
                Prepared {
                    path: own_dir,
                    read_only: false,
                    kind: Kind::EmptyDir {
                        limit: e
                            .size_limit
                            .as_ref()
                            .and_then(|q| crate::pods::spec::parse_bytes(&q.0)),
                    },
                }
            } else if let Some(kind) = projection(volume) {
                Prepared {
                    path: own_dir,
                    read_only: true,
                    kind,
                }
            } else if let Some(h) = &volume.host_path {
                let path = PathBuf::from(&h.path);
                host_path(&path, h.type_.as_deref().unwrap_or_default()).map_err(failed)?;
                Prepared {
                    path,
                    read_only: false,
                    kind: Kind::Node,
                }
            } else if let Some(c) = &volume.persistent_volume_claim {
                let path = ctx.claim_path(&ns, &c.claim_name).await.map_err(failed)?;
                if !path.is_dir() {
                    return Err(failed(format!(
                        "the claim's volume path {} is not a directory on this node",
                        path.display()
                    )));
                }
                Prepared {
                    path,
                    read_only: c.read_only.unwrap_or(false),
                    kind: Kind::Node,
                }
            } else {
                return Err(failed(format!(
                    "{} volumes are not supported by krustlet: a wasm pod is given directories of this node (emptyDir, configMap, secret, downwardAPI, projected, hostPath, persistentVolumeClaim of a local or hostPath volume)",
                    kind_name(volume)
                )));
            };
            match &prepared.kind {
                Kind::EmptyDir { .. } => std::fs::create_dir_all(&prepared.path).map_err(|e| {
                    failed(format!("cannot create {}: {e}", prepared.path.display()))
                })?,
                Kind::Projected { parts, mode } => {
                    let files = ctx
                        .project(pod, &volume.name, parts, *mode, &this.tokens)
                        .await
                        .map_err(failed)?;
                    atomic::write(&prepared.path, &files)
                        .map_err(|e| failed(format!("cannot write files: {e}")))?;
                }
                Kind::Node => {}
            }
            volumes.insert(volume.name.clone(), prepared);
        }
        Ok(Self { volumes, ..this })
    }

    /// Rewrites the projected volumes from the current objects (a changed ConfigMap or
    /// Secret, new labels, a token near its end), each atomically. Returns the volumes
    /// that changed, or the first error (the kubelet keeps the old content then).
    ///
    /// # Errors
    /// As [`Volumes::set_up`].
    pub async fn refresh(&self, ctx: &Context<'_>, pod: &Pod) -> Result<Vec<String>, MountError> {
        let mut changed = Vec::new();
        for (name, v) in &self.volumes {
            let Kind::Projected { parts, mode } = &v.kind else {
                continue;
            };
            let failed = |message: String| MountError {
                volume: name.clone(),
                message,
            };
            let files = ctx
                .project(pod, name, parts, *mode, &self.tokens)
                .await
                .map_err(failed)?;
            if atomic::write(&v.path, &files).map_err(|e| failed(format!("{e}")))? {
                changed.push(name.clone());
            }
        }
        Ok(changed)
    }

    /// `emptyDir` volumes over their `sizeLimit`: (volume, limit as written, bytes used).
    #[must_use]
    pub fn over_limit(&self, pod: &Pod) -> Option<(String, String)> {
        for (name, v) in &self.volumes {
            let Kind::EmptyDir { limit: Some(limit) } = v.kind else {
                continue;
            };
            if disk_usage(&v.path) > limit {
                let written = pod
                    .spec
                    .iter()
                    .flat_map(|s| s.volumes.iter().flatten())
                    .find(|x| &x.name == name)
                    .and_then(|x| x.empty_dir.as_ref()?.size_limit.clone())
                    .map(|q| q.0)
                    .unwrap_or_default();
                return Some((name.clone(), written));
            }
        }
        None
    }

    /// The preopens of `container`: one per `volumeMount`, `subPath` and `subPathExpr`
    /// (expanded with `env`) resolved inside the volume.
    ///
    /// # Errors
    /// The kubelet's message for a bad subPath (`CreateContainerConfigError`).
    pub fn mounts(
        &self,
        container: &Container,
        env: &[(String, String)],
    ) -> Result<Vec<Mount>, String> {
        let mut mounts = Vec::new();
        for (i, m) in container.volume_mounts.iter().flatten().enumerate() {
            let bad = |why: String| {
                format!(
                    "failed to prepare subPath for volumeMount {:?} of container {:?}: {why}",
                    m.name, container.name
                )
            };
            let volume = self.volumes.get(&m.name).ok_or_else(|| {
                format!(
                    "cannot find volume {:?} to mount into container {:?}",
                    m.name, container.name
                )
            })?;
            let read_only = volume.read_only || m.read_only.unwrap_or(false);
            let sub = match (&m.sub_path, &m.sub_path_expr) {
                (Some(s), _) if !s.is_empty() => Some(s.clone()),
                (_, Some(e)) if !e.is_empty() => Some(crate::pods::spec::expand(e, env)),
                _ => None,
            };
            let mut host = volume.path.clone();
            if let Some(sub) = sub {
                if !plain_relative(&sub) {
                    return Err(bad(format!(
                        "subPath {sub:?} must be a relative path without '..'"
                    )));
                }
                host = host.join(&sub);
                if std::fs::symlink_metadata(&host).is_err() && !read_only {
                    std::fs::create_dir_all(&host).map_err(|e| bad(e.to_string()))?;
                }
                // No symlink inside the volume may lead the mount out of it.
                let root = volume.path.canonicalize().map_err(|e| bad(e.to_string()))?;
                let real = host.canonicalize().map_err(|e| bad(e.to_string()))?;
                if !real.starts_with(&root) {
                    return Err(bad(format!("subPath {sub:?} leads outside the volume")));
                }
                host = real;
            }
            if host.is_dir() {
                mounts.push(Mount {
                    host_path: host,
                    container_path: m.mount_path.clone(),
                    read_only,
                });
                continue;
            }
            // A single file: a directory of its own holding just that file.
            let guest = Path::new(&m.mount_path);
            let (Some(parent), Some(file_name)) = (guest.parent(), guest.file_name()) else {
                return Err(bad(format!("cannot mount a file at {:?}", m.mount_path)));
            };
            let dir = self
                .pod_dir
                .join(FILES_DIR)
                .join(&container.name)
                .join(i.to_string());
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(|e| bad(e.to_string()))?;
            let link = dir.join(file_name);
            if std::fs::hard_link(&host, &link).is_err() {
                std::fs::copy(&host, &link).map_err(|e| bad(e.to_string()))?;
                // A copy cannot carry writes back: it is read-only.
                mounts.push(Mount {
                    host_path: dir,
                    container_path: parent.to_string_lossy().into_owned(),
                    read_only: true,
                });
                continue;
            }
            mounts.push(Mount {
                host_path: dir,
                container_path: parent.to_string_lossy().into_owned(),
                read_only,
            });
        }
        Ok(mounts)
    }
}

/// The projected kinds of `volume` as parts; `None` for other kinds.
fn projection(volume: &Volume) -> Option<Kind> {
    if let Some(c) = &volume.config_map {
        return Some(Kind::Projected {
            parts: vec![Part::ConfigMap {
                name: c.name.clone(),
                items: c.items.clone(),
                optional: c.optional.unwrap_or(false),
            }],
            mode: mode(c.default_mode, DEFAULT_MODE),
        });
    }
    if let Some(s) = &volume.secret {
        return Some(Kind::Projected {
            parts: vec![Part::Secret {
                name: s.secret_name.clone().unwrap_or_default(),
                items: s.items.clone(),
                optional: s.optional.unwrap_or(false),
            }],
            mode: mode(s.default_mode, DEFAULT_MODE),
        });
    }
    if let Some(d) = &volume.downward_api {
        return Some(Kind::Projected {
            parts: vec![Part::Downward(d.items.clone().unwrap_or_default())],
            mode: mode(d.default_mode, DEFAULT_MODE),
        });
    }
    let p = volume.projected.as_ref()?;
    let mut parts = Vec::new();
    for source in p.sources.iter().flatten() {
        if let Some(c) = &source.config_map {
            parts.push(Part::ConfigMap {
                name: c.name.clone(),
                items: c.items.clone(),
                optional: c.optional.unwrap_or(false),
            });
        }
        if let Some(s) = &source.secret {
            parts.push(Part::Secret {
                name: s.name.clone(),
                items: s.items.clone(),
                optional: s.optional.unwrap_or(false),
            });
        }
        if let Some(d) = &source.downward_api {
            parts.push(Part::Downward(d.items.clone().unwrap_or_default()));
        }
        if let Some(t) = &source.service_account_token {
            parts.push(Part::Token(t.clone()));
        }
    }
    Some(Kind::Projected {
        parts,
        mode: mode(p.default_mode, DEFAULT_MODE),
    })
}

/// Bytes of regular files under `dir` (not following symlinks).
fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_path_types_are_checked_and_created_as_the_kubelet_does() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("made");
        assert!(host_path(&dir, "Directory").is_err());
        host_path(&dir, "DirectoryOrCreate").map_err(std::io::Error::other)?;
        assert!(dir.is_dir());
        let file = dir.join("f");
        assert_eq!(
            host_path(&file, "File"),
            Err(format!(
                "hostPath type check failed: {} is not a file",
                file.display()
            ))
        );
        host_path(&file, "FileOrCreate").map_err(std::io::Error::other)?;
        assert!(file.is_file());
        assert!(host_path(&file, "Directory").is_err());
        assert!(host_path(&dir, "File").is_err());
        assert!(
            host_path(Path::new("/dev/null"), "CharDevice")
                .is_err_and(|e| e.contains("only be given"))
        );
        assert!(host_path(&file, "Socket").is_err_and(|e| e.contains("is not a socket")));
        assert!(host_path(&file, "Sideways").is_err());
        host_path(&file, "").map_err(std::io::Error::other)?;
        Ok(())
    }

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
        // Max age zero: always read afresh, and the stale entry is dropped.
        assert_eq!(cached(&map, &key, Duration::ZERO), None);
        assert!(map.lock().map(|m| m.is_empty()).unwrap_or(false));
    }

    #[test]
    fn sub_paths_must_be_plain_relative() {
        assert!(plain_relative("a/b"));
        assert!(!plain_relative("../a"));
        assert!(!plain_relative("a/../../b"));
        assert!(!plain_relative("/etc"));
    }
}
