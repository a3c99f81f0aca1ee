//! The optional `--config` file: the kubelet's `KubeletConfiguration`
//! (`apiVersion: kubelet.config.k8s.io/v1beta1`, see `upstream.rs`), or krustlet's own
//! older form, without `apiVersion` and `kind`, whose keys are the flags' names in
//! camelCase (`nodeName`, `port`, `maxPods`, ...); that one is still read, with a
//! warning that the upstream kind is preferred.
//!
//! Precedence, highest first: a flag on the command line, its `KRUSTLET_*` environment
//! variable, the config file, the built-in default.

mod fields;
mod upstream;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::Deserialize;

use crate::NodeArgs;

/// Declares the file's settings once: each becomes an optional field of [`FileConfig`]
/// (with its serde attributes) and a line of [`FileConfig::apply`], which moves the value
/// into the `NodeArgs` field of the same name with `Into` (`T` into `T` or `Option<T>`).
macro_rules! file_config {
    ($($(#[$attr:meta])* $field:ident: $ty:ty,)*) => {
        /// Every setting the file may hold; unknown keys are an error, not silently ignored.
        #[derive(Debug, Default, Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct FileConfig {
            $($(#[$attr])* $field: Option<$ty>,)*
        }

        impl FileConfig {
            /// The settings, by their `NodeArgs` field (and clap argument) names.
            #[cfg(test)]
            const FIELDS: &[&str] = &[$(stringify!($field)),*];

            /// Each setting of `self`, or else of `other`.
            fn or(self, other: Self) -> Self {
                Self { $($field: self.$field.or(other.$field),)* }
            }

            /// Fills every setting of `args` that neither the command line nor the
            /// environment set.
            pub fn apply(self, args: &mut NodeArgs, matches: &ArgMatches) {
                let unset = |id: &str| {
                    !matches!(
                        matches.value_source(id),
                        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                    )
                };
                $(if let Some(v) = self.$field {
                    if unset(stringify!($field)) {
                        args.$field = v.into();
                    }
                })*
            }
        }
    };
}

file_config! {
    kubeconfig: PathBuf,
    bootstrap_kubeconfig: PathBuf,
    cert_dir: PathBuf,
    rotate_certificates: bool,
    /// The kubelet file's name for it.
    #[serde(alias = "serverTLSBootstrap")]
    rotate_server_certificates: bool,
    #[serde(alias = "staticPodPath")]
    pod_manifest_path: PathBuf,
    #[serde(default, deserialize_with = "go_duration")]
    file_check_frequency: Duration,
    node_name: String,
    node_ip: IpAddr,
    address: IpAddr,
    port: u16,
    data_dir: PathBuf,
    cert_file: PathBuf,
    private_key_file: PathBuf,
    client_ca_file: PathBuf,
    anonymous_auth: bool,
    authentication_token_webhook: bool,
    authorization_mode: kubelet::auth::AuthorizationMode,
    #[serde(default, deserialize_with = "go_duration")]
    authentication_token_webhook_cache_ttl: Duration,
    #[serde(default, deserialize_with = "go_duration")]
    authorization_webhook_cache_authorized_ttl: Duration,
    #[serde(default, deserialize_with = "go_duration")]
    authorization_webhook_cache_unauthorized_ttl: Duration,
    max_pods: u32,
    insecure_registries: Vec<String>,
    node_labels: Labels,
    /// The kubelet file's map (`systemReserved: {memory: 256Mi}`).
    system_reserved: Labels,
    /// The kubelet file's map (`kubeReserved: {memory: 256Mi}`).
    kube_reserved: Labels,
    /// The kubelet file's name for it.
    #[serde(alias = "clusterDNS")]
    cluster_dns: Vec<IpAddr>,
    cluster_domain: String,
    resolv_conf: String,
    node_lease_renew_seconds: u64,
    node_lease_duration_seconds: i32,
    node_status_report_seconds: u64,
    /// The API's list of taints, or the flag's `key=value:Effect,...`.
    register_with_taints: crate::taint::Taints,
    #[serde(default, deserialize_with = "go_duration")]
    shutdown_grace_period: Duration,
    #[serde(default, deserialize_with = "go_duration")]
    shutdown_grace_period_critical_pods: Duration,
    #[serde(default, deserialize_with = "go_duration")]
    sync_frequency: Duration,
    /// `memory.available<100Mi,...`, or the kubelet file's map form
    /// (`evictionHard: {memory.available: 100Mi}`).
    #[serde(default, deserialize_with = "thresholds")]
    eviction_hard: String,
    #[serde(default, deserialize_with = "go_duration")]
    eviction_pressure_transition_period: Duration,
    #[serde(alias = "eventRecordQPS")]
    event_qps: u32,
    event_burst: u32,
    #[serde(alias = "imageGCHighThresholdPercent")]
    image_gc_high_threshold_percent: u8,
    #[serde(alias = "imageGCLowThresholdPercent")]
    image_gc_low_threshold_percent: u8,
    image_minimum_gc_age_seconds: u64,
    image_gc_period_seconds: u64,
    image_fs_capacity_bytes: u64,
    image_layout_dir: PathBuf,
    cni_conf_dir: PathBuf,
    cni_bin_dir: Vec<PathBuf>,
    cni_cache_dir: PathBuf,
    cni_in_process: bool,
    netns_dir: PathBuf,
    max_image_size_bytes: u64,
    container_max_open_files: usize,
    #[serde(default, deserialize_with = "go_duration")]
    module_compile_timeout: Duration,
    #[serde(default, deserialize_with = "log_size")]
    container_log_max_size: u64,
    container_log_max_files: u32,
}

/// `nodeLabels` (and `systemReserved`, `kubeReserved`) as the file writes them, a map;
/// the flag's `key=value` pairs in key order.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
struct Labels(BTreeMap<String, String>);

impl From<Labels> for Vec<(String, String)> {
    fn from(labels: Labels) -> Self {
        labels.0.into_iter().collect()
    }
}

/// A size as the kubelet's configuration file writes `containerLogMaxSize` (`10Mi`).
fn log_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let text = String::deserialize(d)?;
    crate::parse_log_size(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A Go duration string (`syncFrequency: 1m30s`), as the kubelet's configuration file
/// writes durations.
fn go_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    crate::parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// Eviction thresholds as a string or as the kubelet file's map of signal to amount.
fn thresholds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Text(String),
        Map(BTreeMap<String, String>),
    }
    Ok(Some(match Form::deserialize(d)? {
        Form::Text(text) => text,
        Form::Map(map) => map
            .iter()
            .map(|(signal, amount)| format!("{signal}<{amount}"))
            .collect::<Vec<_>>()
            .join(","),
    }))
}

impl FileConfig {
    /// Reads and parses the file: the settings, and the warnings to log (one per field
    /// not honoured, or one for krustlet's older form).
    ///
    /// # Errors
    /// When the file cannot be read, is neither form, or holds a bad value.
    pub fn read(path: &std::path::Path) -> anyhow::Result<(Self, Vec<String>)> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }

    fn parse(text: &str) -> anyhow::Result<(Self, Vec<String>)> {
        let document: yaml_serde::Value = yaml_serde::from_str(text)?;
        let map = match document {
            yaml_serde::Value::Mapping(map) => map,
            yaml_serde::Value::Null => return Ok((Self::default(), Vec::new())),
            _ => anyhow::bail!("expected a map of settings"),
        };
        let field = |name: &str| map.get(name).map(|v| v.as_str().unwrap_or("?").to_owned());
        match (field("apiVersion"), field("kind")) {
            (None, None) => {
                let settings: Self = yaml_serde::from_value(yaml_serde::Value::Mapping(map))?;
                settings.check().map_err(anyhow::Error::msg)?;
                let warning = format!(
                    "the config file has no apiVersion and kind: read as krustlet's own form \
                     (keys named after the flags); the kubelet's kind (apiVersion: {}, kind: {}) \
                     is preferred",
                    upstream::API_VERSION,
                    upstream::KIND
                );
                Ok((settings, vec![warning]))
            }
            (Some(version), Some(kind))
                if version == upstream::API_VERSION && kind == upstream::KIND =>
            {
                upstream::read(&map)
            }
            (version, kind) => anyhow::bail!(
                "apiVersion {version:?} and kind {kind:?}: only apiVersion {} with kind {} is read",
                upstream::API_VERSION,
                upstream::KIND
            ),
        }
    }

    /// The ranges the flags' parsers enforce, for values from the file.
    fn check(&self) -> Result<(), String> {
        for (name, percent) in [
            (
                "image GC high threshold",
                self.image_gc_high_threshold_percent,
            ),
            (
                "image GC low threshold",
                self.image_gc_low_threshold_percent,
            ),
        ] {
            if percent.is_some_and(|p| p > 100) {
                return Err(format!("the {name} must be a percentage, 0 to 100"));
            }
        }
        if self.container_log_max_files.is_some_and(|n| n < 2) {
            return Err("containerLogMaxFiles must be at least 2".to_owned());
        }
        if self.node_lease_duration_seconds.is_some_and(|n| n < 1) {
            return Err("nodeLeaseDurationSeconds must be at least 1".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;
    use crate::Cli;

    fn parse(args: &[&str], yaml: &str) -> NodeArgs {
        let matches = Cli::command()
            .try_get_matches_from(args)
            .expect("valid flags");
        let mut cli = Cli::from_arg_matches(&matches).expect("valid flags");
        let (file, _) = FileConfig::parse(yaml).expect("valid yaml");
        file.apply(&mut cli.node, &matches);
        cli.node
    }

    #[test]
    fn the_file_fills_defaults_and_flags_win() {
        let yaml = "nodeName: from-file\nport: 11000\nmaxPods: 7\ninsecureRegistries: [a:1]\nsyncFrequency: 1m30s\nmaxImageSizeBytes: 1048576\n";
        let args = parse(&["krustlet", "--port", "12000"], yaml);
        assert_eq!(args.node_name.as_deref(), Some("from-file"));
        assert_eq!(args.port, 12000);
        assert_eq!(args.max_pods, Some(7));
        assert_eq!(args.insecure_registries, ["a:1"]);
        assert_eq!(args.sync_frequency, std::time::Duration::from_secs(90));
        assert_eq!(args.max_image_size_bytes, 1 << 20);
        let defaults = parse(&["krustlet"], "{}\n");
        assert_eq!(defaults.max_image_size_bytes, 256 << 20);
    }

    #[test]
    fn the_runtime_limits_come_from_the_file() {
        let args = parse(
            &["krustlet"],
            "containerMaxOpenFiles: 64\nmoduleCompileTimeout: 2m\n",
        );
        assert_eq!(args.container_max_open_files, 64);
        assert_eq!(
            args.module_compile_timeout,
            std::time::Duration::from_secs(120)
        );
        let args = parse(&["krustlet"], "");
        assert_eq!(args.container_max_open_files, 1024);
        assert_eq!(
            args.module_compile_timeout,
            std::time::Duration::from_secs(60)
        );
    }

    #[test]
    fn eviction_and_event_limits_take_the_kubelet_file_keys() {
        let yaml = "evictionHard:\n  memory.available: 1Gi\n  nodefs.available: 5%\nevictionPressureTransitionPeriod: 30s\neventRecordQPS: 5\neventBurst: 10\n";
        let args = parse(&["krustlet"], yaml);
        assert_eq!(
            args.eviction_hard,
            "memory.available<1Gi,nodefs.available<5%"
        );
        assert_eq!(
            args.eviction_pressure_transition_period,
            std::time::Duration::from_secs(30)
        );
        assert_eq!((args.event_qps, args.event_burst), (5, 10));
        let args = parse(
            &["krustlet", "--eviction-hard", "nodefs.available<1%"],
            "evictionHard: memory.available<1Gi\n",
        );
        assert_eq!(args.eviction_hard, "nodefs.available<1%");
    }

    #[test]
    fn the_kubelet_api_is_closed_by_default_and_the_file_can_open_it() {
        let args = parse(&["krustlet"], "{}");
        assert!(!args.anonymous_auth);
        assert_eq!(
            args.authorization_mode,
            kubelet::auth::AuthorizationMode::Webhook
        );
        assert_eq!(
            args.authorization_webhook_cache_unauthorized_ttl,
            std::time::Duration::from_secs(30)
        );
        let yaml = "anonymousAuth: true\nauthorizationMode: AlwaysAllow\nauthenticationTokenWebhookCacheTtl: 10s\n";
        let args = parse(&["krustlet"], yaml);
        assert!(args.anonymous_auth);
        assert_eq!(
            args.authorization_mode,
            kubelet::auth::AuthorizationMode::AlwaysAllow
        );
        assert_eq!(
            args.authentication_token_webhook_cache_ttl,
            std::time::Duration::from_secs(10)
        );
        let args = parse(
            &[
                "krustlet",
                "--anonymous-auth=false",
                "--authorization-mode",
                "Webhook",
            ],
            yaml,
        );
        assert!(!args.anonymous_auth);
        assert_eq!(
            args.authorization_mode,
            kubelet::auth::AuthorizationMode::Webhook
        );
        assert!(parse_flags(&["krustlet", "--anonymous-auth"]).anonymous_auth);
        assert!(
            Cli::command()
                .try_get_matches_from(["krustlet", "--authorization-mode", "webhook"])
                .is_err()
        );
    }

    #[test]
    fn container_log_rotation_as_the_kubelet_configures_it() {
        let args = parse(&["krustlet"], "");
        assert_eq!(
            (args.container_log_max_size, args.container_log_max_files),
            (10 * 1024 * 1024, 5)
        );
        let yaml = "containerLogMaxSize: 200Ki\ncontainerLogMaxFiles: 3\n";
        let args = parse(&["krustlet"], yaml);
        assert_eq!(
            (args.container_log_max_size, args.container_log_max_files),
            (200 * 1024, 3)
        );
        let args = parse(&["krustlet", "--container-log-max-size", "1G"], yaml);
        assert_eq!(args.container_log_max_size, 1_000_000_000);
        assert!(yaml_serde::from_str::<FileConfig>("containerLogMaxSize: 10MB\n").is_err());
        assert_eq!(crate::parse_log_size("1.5Mi"), Ok(1_572_864));
        for bad in ["0", "-1", "10MB", "lots"] {
            assert!(crate::parse_log_size(bad).is_err(), "{bad}");
        }
        assert_eq!(crate::parse_log_size("4096"), Ok(4096));
        assert!(
            Cli::command()
                .try_get_matches_from(["krustlet", "--container-log-max-files", "1"])
                .is_err()
        );
    }

    fn parse_flags(args: &[&str]) -> NodeArgs {
        parse(args, "{}")
    }

    #[test]
    fn certificate_settings_take_the_kubelet_file_keys() {
        let args = parse(&["krustlet"], "{}");
        assert!(!args.rotate_certificates && !args.rotate_server_certificates);
        assert_eq!((args.cert_dir, args.bootstrap_kubeconfig), (None, None));
        let yaml = "rotateCertificates: true\nserverTLSBootstrap: true\ncertDir: /pki\nbootstrapKubeconfig: /boot\nkubeconfig: /kc\n";
        let args = parse(&["krustlet"], yaml);
        assert!(args.rotate_certificates && args.rotate_server_certificates);
        assert_eq!(args.cert_dir.as_deref(), Some(std::path::Path::new("/pki")));
        assert_eq!(
            args.bootstrap_kubeconfig.as_deref(),
            Some(std::path::Path::new("/boot"))
        );
        let args = parse(&["krustlet", "--rotate-server-certificates=false"], yaml);
        assert!(!args.rotate_server_certificates);
        assert!(parse_flags(&["krustlet", "--rotate-certificates"]).rotate_certificates);
        let refused = |flags: &[&str]| Cli::command().try_get_matches_from(flags).is_err();
        assert!(refused(&[
            "krustlet",
            "--rotate-server-certificates",
            "--cert-file",
            "c",
            "--private-key-file",
            "k"
        ]));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(yaml_serde::from_str::<FileConfig>("nodeNmae: typo\n").is_err());
    }

    #[test]
    fn reserves_from_the_file_are_pairs_as_the_flags_give_them() {
        let args = parse(
            &["krustlet", "--kube-reserved", "memory=1Gi"],
            "systemReserved: {memory: 256Mi, cpu: 100m}\nkubeReserved: {memory: 512Mi}\n",
        );
        let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
            p.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            args.system_reserved,
            pairs(&[("cpu", "100m"), ("memory", "256Mi")])
        );
        assert_eq!(args.kube_reserved, pairs(&[("memory", "1Gi")]));
    }

    #[test]
    fn node_labels_from_the_file_are_pairs_in_key_order() {
        let args = parse(&["krustlet"], "nodeLabels: {zone: b, tier: edge}\n");
        let pairs = [("tier", "edge"), ("zone", "b")].map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(args.node_labels, pairs);
        let args = parse(
            &["krustlet", "--node-labels", "a=1"],
            "nodeLabels: {b: '2'}\n",
        );
        assert_eq!(args.node_labels, [("a".to_owned(), "1".to_owned())]);
    }

    #[test]
    fn every_flag_has_a_file_key_but_the_flag_only_ones() {
        // The file's own path; the eviction monitoring interval was never a file key.
        let flag_only = ["config", "eviction_monitoring_interval", "help", "version"];
        for arg in Cli::command().get_arguments() {
            let id = arg.get_id().as_str();
            assert!(
                FileConfig::FIELDS.contains(&id) || flag_only.contains(&id),
                "--{id} has no key in the config file"
            );
        }
        for id in FileConfig::FIELDS {
            assert!(!flag_only.contains(id), "{id}");
        }
    }
}

#[cfg(test)]
mod upstream_tests;
