//! The kubelet's own file, `kind: KubeletConfiguration` of `kubelet.config.k8s.io/v1beta1`,
//! read into krustlet's settings: each field mapped to a setting, or warned about once
//! (one krustlet cannot honour, one it does not know).
//!
//! As the kubelet's defaulting does, a mapped field at its zero value (`0`, `0s`, `""`)
//! means "the default" and sets nothing; an unsupported field at its zero value (`0`,
//! `false`, `""`, `{}`, `[]`, or a map of those) asks for nothing and gives no warning.
//! Unknown fields are warned about and ignored, as the kubelet's lenient decoding of
//! v1beta1 does after its strict decoding fails.

use yaml_serde::{Mapping, Value};

use super::FileConfig;
use super::fields::{FIXED, UNSUPPORTED};

/// The `apiVersion` read.
pub const API_VERSION: &str = "kubelet.config.k8s.io/v1beta1";
/// The `kind` read.
pub const KIND: &str = "KubeletConfiguration";

/// How an upstream value becomes krustlet's.
#[derive(Clone, Copy)]
enum Convert {
    /// As it is.
    Same,
    /// A Go duration to whole seconds, rounded up (krustlet's `...Seconds` settings).
    Seconds,
    /// As it is; zero is a value, not "the default" (the kubelet's pointer fields).
    ZeroCounts,
}

/// Upstream field (a dotted path) -> krustlet's key (the flag's name in camelCase).
const MAPPED: &[(&str, &str, Convert)] = &[
    ("address", "address", Convert::Same),
    ("port", "port", Convert::Same),
    ("tlsCertFile", "certFile", Convert::Same),
    ("tlsPrivateKeyFile", "privateKeyFile", Convert::Same),
    ("rotateCertificates", "rotateCertificates", Convert::Same),
    (
        "serverTLSBootstrap",
        "rotateServerCertificates",
        Convert::Same,
    ),
    ("staticPodPath", "podManifestPath", Convert::Same),
    ("fileCheckFrequency", "fileCheckFrequency", Convert::Same),
    ("syncFrequency", "syncFrequency", Convert::Same),
    (
        "authentication.anonymous.enabled",
        "anonymousAuth",
        Convert::Same,
    ),
    // The kubelet's pointer field: false is a value (off), not "the default" (on).
    (
        "authentication.webhook.enabled",
        "authenticationTokenWebhook",
        Convert::ZeroCounts,
    ),
    (
        "authentication.webhook.cacheTTL",
        "authenticationTokenWebhookCacheTtl",
        Convert::Same,
    ),
    (
        "authentication.x509.clientCAFile",
        "clientCaFile",
        Convert::Same,
    ),
    ("authorization.mode", "authorizationMode", Convert::Same),
    (
        "authorization.webhook.cacheAuthorizedTTL",
        "authorizationWebhookCacheAuthorizedTtl",
        Convert::Same,
    ),
    (
        "authorization.webhook.cacheUnauthorizedTTL",
        "authorizationWebhookCacheUnauthorizedTtl",
        Convert::Same,
    ),
    ("maxPods", "maxPods", Convert::Same),
    ("systemReserved", "systemReserved", Convert::Same),
    ("kubeReserved", "kubeReserved", Convert::Same),
    ("clusterDNS", "clusterDns", Convert::Same),
    ("clusterDomain", "clusterDomain", Convert::Same),
    // The kubelet's pointer field: "" is a value (no file), not "the default".
    ("resolvConf", "resolvConf", Convert::ZeroCounts),
    (
        "imageGCHighThresholdPercent",
        "imageGcHighThresholdPercent",
        Convert::ZeroCounts,
    ),
    (
        "imageGCLowThresholdPercent",
        "imageGcLowThresholdPercent",
        Convert::ZeroCounts,
    ),
    (
        "imageMinimumGCAge",
        "imageMinimumGcAgeSeconds",
        Convert::Seconds,
    ),
    ("containerLogMaxSize", "containerLogMaxSize", Convert::Same),
    (
        "containerLogMaxFiles",
        "containerLogMaxFiles",
        Convert::ZeroCounts,
    ),
    ("evictionHard", "evictionHard", Convert::ZeroCounts),
    (
        "evictionPressureTransitionPeriod",
        "evictionPressureTransitionPeriod",
        Convert::Same,
    ),
    (
        "nodeLeaseDurationSeconds",
        "nodeLeaseDurationSeconds",
        Convert::Same,
    ),
    (
        "nodeStatusReportFrequency",
        "nodeStatusReportSeconds",
        Convert::Seconds,
    ),
    // krustlet checks its status for changes at each lease renewal.
    (
        "nodeStatusUpdateFrequency",
        "nodeLeaseRenewSeconds",
        Convert::Seconds,
    ),
    (
        "registerWithTaints",
        "registerWithTaints",
        Convert::ZeroCounts,
    ),
    ("eventRecordQPS", "eventQps", Convert::ZeroCounts),
    ("eventBurst", "eventBurst", Convert::Same),
    ("shutdownGracePeriod", "shutdownGracePeriod", Convert::Same),
    (
        "shutdownGracePeriodCriticalPods",
        "shutdownGracePeriodCriticalPods",
        Convert::Same,
    ),
];

/// krustlet's own settings, which the upstream kind has no field for (most are flags
/// of the kubelet: `--kubeconfig`, `--node-ip`, `--root-dir`...), read under their
/// krustlet names. A kubelet given this file would warn of them as unknown fields.
pub(super) const EXTENSIONS: &[&str] = &[
    "kubeconfig",
    "bootstrapKubeconfig",
    "certDir",
    "nodeName",
    "nodeIp",
    "dataDir",
    "nodeLabels",
    "insecureRegistries",
    "imageGcPeriodSeconds",
    "imageFsCapacityBytes",
    "imageLayoutDir",
    "cniConfDir",
    "cniBinDir",
    "cniCacheDir",
    "cniInProcess",
    "netnsDir",
    "maxImageSizeBytes",
    "containerMaxOpenFiles",
    "moduleCompileTimeout",
];

/// Reads a `KubeletConfiguration` document: the settings and one warning per field
/// not honoured.
///
/// # Errors
/// A value of the wrong type or out of range, named by its upstream field.
pub(super) fn read(document: &Mapping) -> anyhow::Result<(FileConfig, Vec<String>)> {
    let mut settings = FileConfig::default();
    let mut warnings = Vec::new();
    walk(document, "", &mut settings, &mut warnings)?;
    Ok((settings, warnings))
}

fn walk(
    map: &Mapping,
    prefix: &str,
    settings: &mut FileConfig,
    warnings: &mut Vec<String>,
) -> anyhow::Result<()> {
    for (key, value) in map {
        let Some(key) = key.as_str() else {
            anyhow::bail!("{prefix}: a key that is not a string: {key:?}");
        };
        let path = format!("{prefix}{key}");
        if prefix.is_empty() && (key == "apiVersion" || key == "kind") {
            continue;
        }
        if let Some((_, target, convert)) = MAPPED.iter().find(|(p, ..)| *p == path) {
            let unset =
                value.is_null() || (!matches!(convert, Convert::ZeroCounts) && is_zero(value));
            if !unset {
                let one = translate(&path, target, *convert, value)?;
                *settings = std::mem::take(settings).or(one);
            }
            continue;
        }
        if let Some((_, at, why)) = FIXED.iter().find(|(p, ..)| *p == path) {
            if !value.is_null() && !same(value, at) {
                warnings.push(format!(
                    "KubeletConfiguration field {path} is ignored: only {at} is honoured ({why})"
                ));
            }
            continue;
        }
        if let Some((_, why)) = UNSUPPORTED.iter().find(|(p, _)| *p == path) {
            if !is_zero(value) {
                warnings.push(format!(
                    "KubeletConfiguration field {path} is ignored: {why}"
                ));
            }
            continue;
        }
        let nested = format!("{path}.");
        let parent = MAPPED
            .iter()
            .map(|(p, ..)| *p)
            .chain(FIXED.iter().map(|(p, ..)| *p));
        if parent.clone().any(|p| p.starts_with(&nested)) {
            match value {
                Value::Mapping(inner) => walk(inner, &nested, settings, warnings)?,
                Value::Null => {}
                _ => anyhow::bail!("KubeletConfiguration field {path}: expected a map"),
            }
            continue;
        }
        if prefix.is_empty() && EXTENSIONS.contains(&key) {
            let one = translate(&path, key, Convert::Same, value)?;
            *settings = std::mem::take(settings).or(one);
            continue;
        }
        warnings.push(format!(
            "KubeletConfiguration has an unknown field {path}: ignored"
        ));
    }
    Ok(())
}

/// One field as the setting `target`.
fn translate(
    path: &str,
    target: &str,
    convert: Convert,
    value: &Value,
) -> anyhow::Result<FileConfig> {
    let bad = |e: &dyn std::fmt::Display| anyhow::anyhow!("KubeletConfiguration field {path}: {e}");
    let value = match convert {
        Convert::Same | Convert::ZeroCounts => value.clone(),
        Convert::Seconds => {
            let text = value
                .as_str()
                .ok_or_else(|| bad(&"expected a duration such as 2m"))?;
            let duration = crate::parse_duration(text).map_err(|e| bad(&e))?;
            let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
            Value::from(seconds)
        }
    };
    let mut one = Mapping::new();
    one.insert(Value::from(target), value);
    let settings: FileConfig = yaml_serde::from_value(Value::Mapping(one)).map_err(|e| bad(&e))?;
    settings.check().map_err(|e| bad(&e))?;
    Ok(settings)
}

/// Whether `value` is a zero value (what an unset field of the kubelet's serializes to).
fn is_zero(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty() || crate::parse_duration(s).is_ok_and(|d| d.is_zero()),
        Value::Sequence(list) => list.is_empty(),
        Value::Mapping(map) => map.values().all(is_zero),
        Value::Tagged(tagged) => is_zero(&tagged.value),
    }
}

/// Whether `value` is the honoured value `at` (durations compared as durations).
fn same(value: &Value, at: &str) -> bool {
    let text = match value {
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => return false,
    };
    text == at
        || matches!(
            (crate::parse_duration(&text), crate::parse_duration(at)),
            (Ok(a), Ok(b)) if a == b && !at.chars().all(|c| c.is_ascii_digit())
        )
}

/// The upstream fields mapped to a setting, for the table of docs/configuration.md and the tests.
#[cfg(test)]
pub(super) fn mapped_targets() -> impl Iterator<Item = &'static str> {
    MAPPED.iter().map(|(_, target, _)| *target)
}
