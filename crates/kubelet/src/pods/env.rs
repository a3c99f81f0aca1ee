//! A container's environment as the kubelet builds it: `envFrom` sources first (with
//! their `prefix`), then `env` in order, later names replacing earlier ones; `value`s
//! expand `$(VAR)` references to variables defined before them; `valueFrom` reads a
//! ConfigMap or Secret key, a field of the pod or a resource of a container.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::{Api, Client, ResourceExt};

use super::spec::expand;
use crate::volumes::downward::{self, NodeFacts};
use crate::volumes::secret_data;

/// A ConfigMap's `data`: environment variables come from it alone, not `binaryData`, as
/// the kubelet reads them.
fn config_map_data(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    cm.data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect()
}

/// Names the kubelet accepts for variables (`C_IDENTIFIER`-like, but it allows any
/// printable ASCII except `=`).
fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('=') && name.bytes().all(|b| (0x20..0x7f).contains(&b))
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

struct Lookup<'a> {
    client: &'a Client,
    ns: String,
    config_maps: BTreeMap<String, Option<ConfigMap>>,
    secrets: BTreeMap<String, Option<Secret>>,
}

impl Lookup<'_> {
    async fn config_map(&mut self, name: &str) -> Result<Option<&ConfigMap>, String> {
        if !self.config_maps.contains_key(name) {
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.ns);
            let got = match api.get(name).await {
                Ok(cm) => Some(cm),
                Err(e) if not_found(&e) => None,
                Err(e) => return Err(format!("failed to get configmap {}/{name}: {e}", self.ns)),
            };
            self.config_maps.insert(name.to_owned(), got);
        }
        Ok(self.config_maps.get(name).and_then(Option::as_ref))
    }

    async fn secret(&mut self, name: &str) -> Result<Option<&Secret>, String> {
        if !self.secrets.contains_key(name) {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns);
            let got = match api.get(name).await {
                Ok(s) => Some(s),
                Err(e) if not_found(&e) => None,
                Err(e) => return Err(format!("failed to get secret {}/{name}: {e}", self.ns)),
            };
            self.secrets.insert(name.to_owned(), got);
        }
        Ok(self.secrets.get(name).and_then(Option::as_ref))
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
/// The kubelet's message for a missing, non-optional source: the container then waits
/// as `CreateContainerConfigError` and is tried again.
pub(crate) async fn resolve(
    client: &Client,
    pod: &Pod,
    container: &Container,
    facts: &NodeFacts,
) -> Result<(Vec<(String, String)>, Vec<String>), String> {
    let ns = pod.namespace().unwrap_or_default();
    let mut lookup = Lookup {
        client,
        ns: ns.clone(),
        config_maps: BTreeMap::new(),
        secrets: BTreeMap::new(),
    };
    let mut env: Vec<(String, String)> = Vec::new();
    let mut invalid = Vec::new();
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        let (data, kind, name) = if let Some(r) = &source.config_map_ref {
            match lookup.config_map(&r.name).await? {
                Some(cm) => (config_map_data(cm), "configMap", &r.name),
                None if r.optional == Some(true) => continue,
                None => return Err(format!("configmap {:?} not found", r.name)),
            }
        } else if let Some(r) = &source.secret_ref {
            match lookup.secret(&r.name).await? {
                Some(s) => (secret_data(s), "secret", &r.name),
                None if r.optional == Some(true) => continue,
                None => return Err(format!("secret {:?} not found", r.name)),
            }
        } else {
            continue;
        };
        let mut skipped = Vec::new();
        for (key, value) in data {
            let var = format!("{prefix}{key}");
            if valid_name(&var) {
                set(&mut env, var, String::from_utf8_lossy(&value).into_owned());
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
            expand(v, &env)
        } else if let Some(from) = &var.value_from {
            if let Some(r) = &from.config_map_key_ref {
                let optional = r.optional == Some(true);
                match lookup.config_map(&r.name).await? {
                    Some(cm) => match config_map_data(cm).remove(&r.key) {
                        Some(v) => String::from_utf8_lossy(&v).into_owned(),
                        None if optional => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in ConfigMap {ns}/{}",
                                r.key, r.name
                            ));
                        }
                    },
                    None if optional => continue,
                    None => return Err(format!("configmap {:?} not found", r.name)),
                }
            } else if let Some(r) = &from.secret_key_ref {
                let optional = r.optional == Some(true);
                match lookup.secret(&r.name).await? {
                    Some(s) => match secret_data(s).remove(&r.key) {
                        Some(v) => String::from_utf8_lossy(&v).into_owned(),
                        None if optional => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in Secret {ns}/{}",
                                r.key, r.name
                            ));
                        }
                    },
                    None if optional => continue,
                    None => return Err(format!("secret {:?} not found", r.name)),
                }
            } else if let Some(f) = &from.field_ref {
                downward::field(pod, f, facts, false)?
            } else if let Some(r) = &from.resource_field_ref {
                downward::resource(pod, &container.name, r, facts)?
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok((env, invalid))
}
