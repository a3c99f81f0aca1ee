//! The optional `--config` file: YAML whose keys are the flags' names in camelCase
//! (`nodeName`, `port`, `maxPods`, ...), as the kubelet's configuration file uses.
//!
//! Precedence, highest first: a flag on the command line, its `KRUSTLET_*` environment
//! variable, the config file, the built-in default.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::Deserialize;

use crate::NodeArgs;

/// Every setting the file may hold; unknown keys are an error, not silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileConfig {
    kubeconfig: Option<PathBuf>,
    node_name: Option<String>,
    node_ip: Option<IpAddr>,
    address: Option<IpAddr>,
    port: Option<u16>,
    data_dir: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    private_key_file: Option<PathBuf>,
    client_ca_file: Option<PathBuf>,
    anonymous_auth: Option<bool>,
    authorization_mode: Option<kubelet::auth::AuthorizationMode>,
    #[serde(default, deserialize_with = "go_duration")]
    authentication_token_webhook_cache_ttl: Option<std::time::Duration>,
    #[serde(default, deserialize_with = "go_duration")]
    authorization_webhook_cache_authorized_ttl: Option<std::time::Duration>,
    #[serde(default, deserialize_with = "go_duration")]
    authorization_webhook_cache_unauthorized_ttl: Option<std::time::Duration>,
    max_pods: Option<u32>,
    insecure_registries: Option<Vec<String>>,
    node_labels: Option<std::collections::BTreeMap<String, String>>,
    node_lease_renew_seconds: Option<u64>,
    node_status_report_seconds: Option<u64>,
    #[serde(default, deserialize_with = "go_duration")]
    sync_frequency: Option<std::time::Duration>,
    /// `memory.available<100Mi,...`, or the kubelet file's map form
    /// (`evictionHard: {memory.available: 100Mi}`).
    #[serde(default, deserialize_with = "thresholds")]
    eviction_hard: Option<String>,
    #[serde(default, deserialize_with = "go_duration")]
    eviction_pressure_transition_period: Option<std::time::Duration>,
    #[serde(alias = "eventRecordQPS")]
    event_qps: Option<u32>,
    event_burst: Option<u32>,
    #[serde(alias = "imageGCHighThresholdPercent")]
    image_gc_high_threshold_percent: Option<u8>,
    #[serde(alias = "imageGCLowThresholdPercent")]
    image_gc_low_threshold_percent: Option<u8>,
    image_minimum_gc_age_seconds: Option<u64>,
    image_gc_period_seconds: Option<u64>,
    image_fs_capacity_bytes: Option<u64>,
    image_layout_dir: Option<PathBuf>,
    max_image_size_bytes: Option<u64>,
    container_max_open_files: Option<usize>,
    #[serde(default, deserialize_with = "go_duration")]
    module_compile_timeout: Option<std::time::Duration>,
    #[serde(default, deserialize_with = "log_size")]
    container_log_max_size: Option<u64>,
    container_log_max_files: Option<u32>,
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
fn go_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::time::Duration>, D::Error> {
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
        Map(std::collections::BTreeMap<String, String>),
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
    /// Reads and parses the file.
    pub fn read(path: &std::path::Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        yaml_serde::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Fills every setting of `args` that neither the command line nor the environment set.
    pub fn apply(self, args: &mut NodeArgs, matches: &ArgMatches) {
        let unset = |id: &str| {
            !matches!(
                matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        macro_rules! fill {
            ($($field:ident: $wrap:expr),* $(,)?) => {
                $(if let Some(v) = self.$field {
                    if unset(stringify!($field)) {
                        args.$field = $wrap(v);
                    }
                })*
            };
        }
        fill!(
            kubeconfig: Some,
            node_name: Some,
            node_ip: Some,
            address: std::convert::identity,
            port: std::convert::identity,
            data_dir: std::convert::identity,
            cert_file: Some,
            private_key_file: Some,
            client_ca_file: Some,
            anonymous_auth: std::convert::identity,
            authorization_mode: std::convert::identity,
            authentication_token_webhook_cache_ttl: std::convert::identity,
            authorization_webhook_cache_authorized_ttl: std::convert::identity,
            authorization_webhook_cache_unauthorized_ttl: std::convert::identity,
            max_pods: Some,
            insecure_registries: std::convert::identity,
            node_labels: |m: std::collections::BTreeMap<String, String>| m.into_iter().collect(),
            node_lease_renew_seconds: std::convert::identity,
            node_status_report_seconds: std::convert::identity,
            sync_frequency: std::convert::identity,
            eviction_hard: std::convert::identity,
            eviction_pressure_transition_period: std::convert::identity,
            event_qps: std::convert::identity,
            event_burst: std::convert::identity,
            image_gc_high_threshold_percent: std::convert::identity,
            image_gc_low_threshold_percent: std::convert::identity,
            image_minimum_gc_age_seconds: std::convert::identity,
            image_gc_period_seconds: std::convert::identity,
            image_fs_capacity_bytes: Some,
            image_layout_dir: Some,
            container_log_max_size: std::convert::identity,
            container_log_max_files: std::convert::identity,
            container_max_open_files: std::convert::identity,
            module_compile_timeout: std::convert::identity,
            max_image_size_bytes: std::convert::identity,
        );
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
        let file: FileConfig = yaml_serde::from_str(yaml).expect("valid yaml");
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
    fn unknown_keys_are_rejected() {
        assert!(yaml_serde::from_str::<FileConfig>("nodeNmae: typo\n").is_err());
    }
}
