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
    max_pods: Option<u32>,
    insecure_registries: Option<Vec<String>>,
    node_labels: Option<std::collections::BTreeMap<String, String>>,
    node_lease_renew_seconds: Option<u64>,
    node_status_report_seconds: Option<u64>,
    #[serde(default, deserialize_with = "go_duration")]
    sync_frequency: Option<std::time::Duration>,
    #[serde(alias = "imageGCHighThresholdPercent")]
    image_gc_high_threshold_percent: Option<u8>,
    #[serde(alias = "imageGCLowThresholdPercent")]
    image_gc_low_threshold_percent: Option<u8>,
    image_minimum_gc_age_seconds: Option<u64>,
    image_gc_period_seconds: Option<u64>,
    image_fs_capacity_bytes: Option<u64>,
    image_layout_dir: Option<PathBuf>,
    max_image_size_bytes: Option<u64>,
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

impl FileConfig {
    /// Reads and parses the file.
    pub fn read(path: &std::path::Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
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
            max_pods: Some,
            insecure_registries: std::convert::identity,
            node_labels: |m: std::collections::BTreeMap<String, String>| m.into_iter().collect(),
            node_lease_renew_seconds: std::convert::identity,
            node_status_report_seconds: std::convert::identity,
            sync_frequency: std::convert::identity,
            image_gc_high_threshold_percent: std::convert::identity,
            image_gc_low_threshold_percent: std::convert::identity,
            image_minimum_gc_age_seconds: std::convert::identity,
            image_gc_period_seconds: std::convert::identity,
            image_fs_capacity_bytes: Some,
            image_layout_dir: Some,
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
        let file: FileConfig = serde_yaml::from_str(yaml).expect("valid yaml");
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
    fn unknown_keys_are_rejected() {
        assert!(serde_yaml::from_str::<FileConfig>("nodeNmae: typo\n").is_err());
    }
}
