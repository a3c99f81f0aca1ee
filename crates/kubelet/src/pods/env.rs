//! A container's environment as the kubelet builds it: `envFrom` sources first (with
//! their `prefix`), then `env` in order, later names replacing earlier ones; `value`s
//! expand `$(VAR)` references to variables defined before them; `valueFrom` reads a
//! ConfigMap or Secret key, a field of the pod or a resource of a container.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::ResourceExt;

use crate::api::ClusterApi;

use super::spec::expand;
use crate::volumes::downward::{self, NodeFacts};
use crate::volumes::{config_map_data, read, secret_data};

/// Names the kubelet accepts for variables (`C_IDENTIFIER`-like, but it allows any
/// printable ASCII except `=`).
fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('=') && name.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// Where a variable's value comes from: a ConfigMap or a Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Source {
    ConfigMap,
    Secret,
}

impl Source {
    /// As the kubelet names it in "not found" messages (`configmap "x" not found`).
    fn lower(self) -> &'static str {
        match self {
            Self::ConfigMap => "configmap",
            Self::Secret => "secret",
        }
    }

    /// As the kubelet names it in missing-key messages (`... in ConfigMap ns/x`).
    fn title(self) -> &'static str {
        match self {
            Self::ConfigMap => "ConfigMap",
            Self::Secret => "Secret",
        }
    }
}

/// Why a container's environment cannot be built: the kubelet's messages, shown with
/// `CreateContainerConfigError`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EnvError {
    /// A source that is not optional does not exist (`configmap "x" not found`).
    #[error("{} {name:?} not found", .kind.lower())]
    NotFound { kind: Source, name: String },
    /// A key that is not optional is missing from its source.
    #[error("couldn't find key {key} in {} {ns}/{name}", .kind.title())]
    MissingKey {
        kind: Source,
        key: String,
        ns: String,
        name: String,
    },
    /// A source could not be read.
    #[error("{0}")]
    Read(String),
    /// A `fieldRef` or `resourceFieldRef` the kubelet does not resolve.
    #[error("{0}")]
    Field(String),
    /// The Services could not be read for their variables.
    #[error("{0}")]
    Services(String),
}

/// An object's data: bytes by key.
type Data = BTreeMap<String, Vec<u8>>;

/// The data of the ConfigMaps and Secrets one container refers to, each read once.
struct Lookup<'a> {
    api: &'a dyn ClusterApi,
    ns: String,
    read: BTreeMap<(Source, String), Option<Data>>,
}

impl Lookup<'_> {
    /// The data of `source` `name`; `None` when it does not exist.
    async fn data(&mut self, source: Source, name: &str) -> Result<Option<&Data>, EnvError> {
        let key = (source, name.to_owned());
        if !self.read.contains_key(&key) {
            let (api, ns, kind) = (self.api, self.ns.as_str(), source.lower());
            let got = match source {
                Source::ConfigMap => read::<ConfigMap>(api, kind, ns, name)
                    .await
                    .map_err(EnvError::Read)?
                    .map(|cm| config_map_data(&cm, false)),
                Source::Secret => read::<Secret>(api, kind, ns, name)
                    .await
                    .map_err(EnvError::Read)?
                    .map(|s| secret_data(&s)),
            };
            self.read.insert(key.clone(), got);
        }
        Ok(self.read.get(&key).and_then(Option::as_ref))
    }
}

fn set(env: &mut Vec<(String, String)>, name: String, value: String) {
    match env.iter_mut().find(|(n, _)| *n == name) {
        Some(slot) => slot.1 = value,
        None => env.push((name, value)),
    }
}

/// The environment of `container`, and an event message for each `envFrom` source whose
/// keys were skipped as invalid names.
///
/// # Errors
/// A missing, non-optional source or key, an unreadable source, an unsupported field:
/// the container then waits as `CreateContainerConfigError` and is tried again.
pub(crate) async fn resolve(
    api: &dyn ClusterApi,
    pod: &Pod,
    container: &Container,
    facts: &NodeFacts,
) -> Result<(Vec<(String, String)>, Vec<String>), EnvError> {
    let ns = pod.namespace().unwrap_or_default();
    let mut lookup = Lookup {
        api,
        ns: ns.clone(),
        read: BTreeMap::new(),
    };
    // The Service variables: `$(VAR)` may name them, and they are set where the
    // container defines no variable of the same name.
    let services = api
        .services(&ns)
        .await
        .map_err(|e| EnvError::Services(e.to_string()))?;
    let service_vars = super::service_env::vars(pod, &services);
    let mut env: Vec<(String, String)> = Vec::new();
    let mut invalid = Vec::new();
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        let (from, name, optional, kind) = if let Some(r) = &source.config_map_ref {
            (Source::ConfigMap, &r.name, r.optional, "configMap")
        } else if let Some(r) = &source.secret_ref {
            (Source::Secret, &r.name, r.optional, "secret")
        } else {
            continue;
        };
        let data = match lookup.data(from, name).await? {
            Some(data) => data,
            None if optional == Some(true) => continue,
            None => {
                return Err(EnvError::NotFound {
                    kind: from,
                    name: name.clone(),
                });
            }
        };
        let mut skipped = Vec::new();
        for (key, value) in data {
            let var = format!("{prefix}{key}");
            if valid_name(&var) {
                set(&mut env, var, String::from_utf8_lossy(value).into_owned());
            } else {
                skipped.push(var);
            }
        }
        if !skipped.is_empty() {
            // The kubelet's InvalidEnvironmentVariableNames event, one per source.
            invalid.push(format!(
                "Keys [{}] from the EnvFrom {kind} {ns}/{name} were skipped since they are considered invalid environment variable names.",
                skipped.join(", ")
            ));
        }
    }
    for var in container.env.iter().flatten() {
        let value = if let Some(v) = &var.value {
            let mut known = env.clone();
            known.extend(
                service_vars
                    .iter()
                    .filter(|(k, _)| !env.iter().any(|(n, _)| n == k))
                    .cloned(),
            );
            expand(v, &known)
        } else if let Some(from) = &var.value_from {
            let by_key = if let Some(r) = &from.config_map_key_ref {
                Some((Source::ConfigMap, &r.name, &r.key, r.optional == Some(true)))
            } else {
                from.secret_key_ref
                    .as_ref()
                    .map(|r| (Source::Secret, &r.name, &r.key, r.optional == Some(true)))
            };
            if let Some((source, name, key, optional)) = by_key {
                match lookup.data(source, name).await? {
                    Some(data) => match data.get(key) {
                        Some(v) => String::from_utf8_lossy(v).into_owned(),
                        None if optional => continue,
                        None => {
                            return Err(EnvError::MissingKey {
                                kind: source,
                                key: key.clone(),
                                ns,
                                name: name.clone(),
                            });
                        }
                    },
                    None if optional => continue,
                    None => {
                        return Err(EnvError::NotFound {
                            kind: source,
                            name: name.clone(),
                        });
                    }
                }
            } else if let Some(f) = &from.field_ref {
                downward::field(pod, f, facts, false).map_err(EnvError::Field)?
            } else if let Some(r) = &from.resource_field_ref {
                downward::resource(pod, &container.name, r, facts).map_err(EnvError::Field)?
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        set(&mut env, var.name.clone(), value);
    }
    // First, so that the container's own variables come last, as the manifest has them.
    let mut all: Vec<(String, String)> = service_vars
        .into_iter()
        .filter(|(k, _)| !env.iter().any(|(name, _)| name == k))
        .collect();
    all.extend(env);
    Ok((all, invalid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_the_kubelets_messages() {
        let missing = EnvError::NotFound {
            kind: Source::ConfigMap,
            name: "cm".to_owned(),
        };
        assert_eq!(missing.to_string(), r#"configmap "cm" not found"#);
        let key = EnvError::MissingKey {
            kind: Source::Secret,
            key: "k".to_owned(),
            ns: "ns".to_owned(),
            name: "s".to_owned(),
        };
        assert_eq!(key.to_string(), "couldn't find key k in Secret ns/s");
    }
}
