//! `--register-with-taints` / `registerWithTaints`: taints the node registers with.

use serde::Deserialize;

/// One taint: `key[=value]:Effect` on the command line, `{key, value, effect}` in the
/// file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Taint {
    key: String,
    #[serde(default)]
    value: Option<String>,
    effect: String,
    /// Set by the API server, never by the node; accepted and dropped.
    #[serde(default, rename = "timeAdded")]
    _time_added: Option<String>,
}

const EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

impl Taint {
    /// Checks the key and the effect.
    fn checked(self) -> Result<Self, String> {
        let key_ok = !self.key.is_empty()
            && self.key.len() <= 316
            && self
                .key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._/".contains(c));
        if !key_ok {
            return Err(format!("invalid taint key {:?}", self.key));
        }
        if !EFFECTS.contains(&self.effect.as_str()) {
            return Err(format!(
                "invalid taint effect {:?} of {:?} (one of {})",
                self.effect,
                self.key,
                EFFECTS.join(", ")
            ));
        }
        Ok(self)
    }

    /// The API's taint.
    pub fn to_api(&self) -> k8s_openapi::api::core::v1::Taint {
        k8s_openapi::api::core::v1::Taint {
            key: self.key.clone(),
            value: self.value.clone(),
            effect: self.effect.clone(),
            time_added: None,
        }
    }
}

/// `key=value:Effect` or `key:Effect`, as the kubelet's `--register-with-taints`.
pub fn parse(text: &str) -> Result<Taint, String> {
    let (kv, effect) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} is not key=value:Effect"))?;
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v.to_owned())),
        None => (kv, None),
    };
    Taint {
        key: key.to_owned(),
        value,
        effect: effect.to_owned(),
        _time_added: None,
    }
    .checked()
}

/// `registerWithTaints` as the file writes it: the API's list of taints, or the flag's
/// comma-separated text.
#[derive(Debug)]
pub struct Taints(Vec<Taint>);

impl<'de> Deserialize<'de> for Taints {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            List(Vec<Taint>),
        }
        let list = match Form::deserialize(d)? {
            Form::Text(text) => text
                .split(',')
                .filter(|t| !t.trim().is_empty())
                .map(|t| parse(t.trim()))
                .collect::<Result<Vec<_>, _>>(),
            Form::List(list) => list.into_iter().map(Taint::checked).collect(),
        };
        list.map(Taints).map_err(serde::de::Error::custom)
    }
}

impl From<Taints> for Vec<Taint> {
    fn from(taints: Taints) -> Self {
        taints.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_form_and_the_file_form() {
        let t = parse("dedicated=edge:NoSchedule").expect("valid");
        assert_eq!(
            (t.key.as_str(), t.value.as_deref(), t.effect.as_str()),
            ("dedicated", Some("edge"), "NoSchedule")
        );
        assert_eq!(
            parse("example.com/gpu:NoExecute").expect("valid").value,
            None
        );
        for bad in [
            "dedicated=edge",
            "dedicated=edge:Sometimes",
            "=x:NoSchedule",
            "a b:NoSchedule",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let file: Taints = yaml_serde::from_str(
            "- {key: dedicated, value: edge, effect: NoSchedule}\n- {key: b, effect: NoExecute}\n",
        )
        .expect("valid");
        assert_eq!(file.0.len(), 2);
        assert!(yaml_serde::from_str::<Taints>("- {key: a, effect: Never}\n").is_err());
        let text: Taints = yaml_serde::from_str("a=1:NoSchedule,b:NoExecute").expect("valid");
        assert_eq!(text.0[1].to_api().effect, "NoExecute");
    }
}
