//! Network configuration lists (`*.conflist`, or one plugin's `*.conf` / `*.json`), read
//! from `--cni-conf-dir` as a container runtime reads them: the first file in lexical
//! order that parses is the pod network.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{Error, Result};

/// Largest configuration file read, in bytes.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// One plugin of a list: its `type` (the binary's name), the capabilities it asks the
/// runtime for, and the whole object, given to the plugin on stdin.
#[derive(Debug, Clone, PartialEq)]
pub struct Plugin {
    /// The binary's file name in one of the `--cni-bin-dir` directories.
    pub kind: String,
    /// `capabilities` set to `true`: which runtime settings it receives in
    /// `runtimeConfig` (`portMappings`, `ipRanges`, ...).
    pub capabilities: BTreeSet<String>,
    /// The plugin's configuration object, as written.
    pub conf: Map<String, Value>,
}

/// A network configuration list.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkList {
    /// The network's name (`name`).
    pub name: String,
    /// The CNI version every plugin is spoken to in (`cniVersion`).
    pub cni_version: String,
    /// The plugins, run in order for ADD and CHECK, in reverse for DEL.
    pub plugins: Vec<Plugin>,
    /// Where it was read from.
    pub source: PathBuf,
}

impl NetworkList {
    /// Parses a list (`plugins`) or a single plugin's configuration (`type`).
    ///
    /// # Errors
    /// [`Error::Config`] naming what is missing or malformed.
    pub fn parse(bytes: &[u8], source: &Path) -> Result<Self> {
        let bad = |why: String| Error::Config(format!("{}: {why}", source.display()));
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
        let Value::Object(top) = value else {
            return Err(bad("not a JSON object".into()));
        };
        let text = |key: &str| -> Result<String> {
            match top.get(key) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                _ => Err(bad(format!("`{key}` is missing or not a string"))),
            }
        };
        let name = text("name")?;
        if !valid_name(&name) {
            return Err(bad(format!(
                "network name {name:?} has characters other than letters, digits, `.`, `_`, `-`"
            )));
        }
        let cni_version = text("cniVersion")?;
        let confs: Vec<Map<String, Value>> = match top.get("plugins") {
            Some(Value::Array(list)) => list
                .iter()
                .map(|p| match p {
                    Value::Object(o) => Ok(o.clone()),
                    _ => Err(bad("a plugin is not an object".into())),
                })
                .collect::<Result<_>>()?,
            Some(_) => return Err(bad("`plugins` is not a list".into())),
            None if top.contains_key("type") => vec![top.clone()],
            None => return Err(bad("neither `plugins` nor `type`".into())),
        };
        if confs.is_empty() {
            return Err(bad("`plugins` is empty".into()));
        }
        let plugins = confs
            .into_iter()
            .map(|conf| {
                let kind = match conf.get("type") {
                    Some(Value::String(t)) if valid_name(t) && !t.starts_with('.') => t.clone(),
                    other => {
                        return Err(bad(format!(
                            "plugin `type` {other:?} is not a plain binary name"
                        )));
                    }
                };
                let capabilities = match conf.get("capabilities") {
                    Some(Value::Object(caps)) => caps
                        .iter()
                        .filter(|(_, v)| **v == Value::Bool(true))
                        .map(|(k, _)| k.clone())
                        .collect(),
                    _ => BTreeSet::new(),
                };
                Ok(Plugin {
                    kind,
                    capabilities,
                    conf,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            name,
            cni_version,
            plugins,
            source: source.to_owned(),
        })
    }

    /// The first configuration in `dir` (files ending `.conflist`, `.conf` or `.json`, in
    /// lexical order) that parses; the ones before it that do not are logged.
    ///
    /// # Errors
    /// [`Error::NoConfig`] when the directory is missing or holds no valid file.
    pub fn load(dir: &Path) -> Result<Self> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::NoConfig(format!("{}: {e}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| x == "conflist" || x == "conf" || x == "json")
            })
            .collect();
        files.sort();
        for file in &files {
            match read_bounded(file).and_then(|b| Self::parse(&b, file)) {
                Ok(list) => return Ok(list),
                Err(e) => tracing::warn!(error = %e, "skipping a CNI configuration"),
            }
        }
        Err(Error::NoConfig(format!(
            "no valid network configuration in {}",
            dir.display()
        )))
    }
}

/// Reads a regular file (never through a symlink's target outside our control: a
/// symlink is refused), at most [`MAX_CONFIG_BYTES`].
fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(Error::Config(format!(
            "{}: larger than {MAX_CONFIG_BYTES} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Letters, digits, `.`, `_` and `-`: a network name, a plugin name or a container ID
/// that can go into a file name and an environment variable safely.
#[must_use]
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetworkList> {
        NetworkList::parse(s.as_bytes(), Path::new("t.conflist"))
    }

    #[test]
    fn a_list_and_a_single_plugin_both_parse() {
        let list = parse(
            r#"{"cniVersion":"1.0.0","name":"k","plugins":[
                {"type":"bridge","capabilities":{"ipRanges":true,"x":false}},
                {"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        )
        .expect("test");
        assert_eq!(list.name, "k");
        assert_eq!(list.plugins.len(), 2);
        assert_eq!(
            list.plugins[0].capabilities,
            BTreeSet::from(["ipRanges".to_owned()])
        );
        let one = parse(r#"{"cniVersion":"0.4.0","name":"k","type":"bridge"}"#).expect("test");
        assert_eq!(one.plugins[0].kind, "bridge");
    }

    #[test]
    fn plugin_types_that_are_paths_and_bad_lists_are_refused() {
        for bad in [
            r#"{"cniVersion":"1.0.0","name":"k","plugins":[{"type":"../../bin/sh"}]}"#,
            r#"{"cniVersion":"1.0.0","name":"k","plugins":[{"type":"/bin/sh"}]}"#,
            r#"{"cniVersion":"1.0.0","name":"k","plugins":[{"type":".hidden"}]}"#,
            r#"{"cniVersion":"1.0.0","name":"k","plugins":[]}"#,
            r#"{"cniVersion":"1.0.0","name":"a/b","plugins":[{"type":"bridge"}]}"#,
            r#"{"name":"k","plugins":[{"type":"bridge"}]}"#,
            r#"[1]"#,
            "not json",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn load_takes_the_first_valid_file_and_skips_broken_and_oversized_ones() {
        let dir = tempfile::tempdir().expect("test");
        std::fs::write(dir.path().join("00-broken.conflist"), "{").expect("test");
        std::fs::write(
            dir.path().join("05-huge.conflist"),
            vec![b' '; (MAX_CONFIG_BYTES + 10) as usize],
        )
        .expect("test");
        std::fs::write(
            dir.path().join("10-good.conflist"),
            r#"{"cniVersion":"1.0.0","name":"good","plugins":[{"type":"bridge"}]}"#,
        )
        .expect("test");
        std::fs::write(
            dir.path().join("20-later.conf"),
            r#"{"cniVersion":"1.0.0","name":"later","type":"bridge"}"#,
        )
        .expect("test");
        std::os::unix::fs::symlink(
            dir.path().join("10-good.conflist"),
            dir.path().join("01-link.conflist"),
        )
        .expect("test");
        assert_eq!(NetworkList::load(dir.path()).expect("test").name, "good");
        let empty = tempfile::tempdir().expect("test");
        assert!(matches!(
            NetworkList::load(empty.path()),
            Err(Error::NoConfig(_))
        ));
    }
}
