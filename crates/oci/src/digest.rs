//! Content digests (`algorithm:hex`), parsed at the boundary as containerd's `go-digest`
//! parses them, so that no string from a registry, a layout or a caller becomes a file
//! name unless it is exactly a known algorithm and its hex.

use std::fmt;
use std::path::PathBuf;

use sha2::Digest as _;

use crate::{Error, Result};

/// Longest digest text an error message repeats; a hostile one may be megabytes.
const SHOWN: usize = 160;

/// A digest algorithm the store accepts (the ones `go-digest` registers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// SHA-256, 64 hex digits: what registries use.
    Sha256,
    /// SHA-384, 96 hex digits.
    Sha384,
    /// SHA-512, 128 hex digits.
    Sha512,
}

impl Algorithm {
    /// Every accepted algorithm.
    pub const ALL: [Self; 3] = [Self::Sha256, Self::Sha384, Self::Sha512];

    /// Its name in a digest (`sha256`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }

    /// Hex digits of its digests.
    #[must_use]
    pub fn hex_len(self) -> usize {
        match self {
            Self::Sha256 => 64,
            Self::Sha384 => 96,
            Self::Sha512 => 128,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// A validated digest, `<algorithm>:<lowercase hex of the algorithm's length>`.
///
/// The only way to get one is [`Digest::parse`] (or computing one with [`Hasher`]), so a
/// `Digest` is always safe as a file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    algorithm: Algorithm,
    text: String,
}

/// The digest text as an error message may show it: at most [`SHOWN`] characters.
fn shown(text: &str) -> String {
    if text.chars().count() <= SHOWN {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(SHOWN).collect::<String>())
    }
}

fn invalid(text: &str, reason: &str) -> Error {
    Error::InvalidDigest {
        digest: shown(text),
        reason: reason.to_owned(),
    }
}

/// `go-digest`'s grammar of an algorithm: components of `[a-z0-9]+` joined by one of
/// `+._-`.
fn algorithm_grammar(name: &str) -> bool {
    !name.is_empty()
        && name.split(['+', '.', '_', '-']).all(|component| {
            !component.is_empty()
                && component
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

impl Digest {
    /// Parses `text`: a known algorithm, `:`, and exactly its number of lowercase hex digits.
    ///
    /// # Errors
    /// [`Error::InvalidDigest`] for anything else (unknown algorithm, wrong length,
    /// upper-case or non-hex digits, path separators...).
    pub fn parse(text: &str) -> Result<Self> {
        let Some((name, hex)) = text.split_once(':') else {
            return Err(invalid(text, "invalid format: no algorithm"));
        };
        if name.is_empty() || hex.is_empty() || !algorithm_grammar(name) {
            return Err(invalid(text, "invalid format"));
        }
        let Some(algorithm) = Algorithm::from_name(name) else {
            return Err(invalid(text, "unsupported digest algorithm"));
        };
        if hex.len() != algorithm.hex_len() {
            return Err(invalid(
                text,
                &format!(
                    "invalid length: {name} takes {} hex digits",
                    algorithm.hex_len()
                ),
            ));
        }
        if !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(invalid(text, "invalid format: not lowercase hex"));
        }
        Ok(Self {
            algorithm,
            text: text.to_owned(),
        })
    }

    /// Its algorithm.
    #[must_use]
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex part.
    #[must_use]
    pub fn hex(&self) -> &str {
        &self.text[self.algorithm.name().len() + 1..]
    }

    /// `algorithm:hex`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The digest of `data` with `algorithm`.
    #[must_use]
    pub fn of(algorithm: Algorithm, data: &[u8]) -> Self {
        let mut hasher = Hasher::new(algorithm);
        hasher.update(data);
        hasher.finish()
    }

    /// `<algorithm>/<hex>`, its place under a `blobs/` directory.
    #[must_use]
    pub fn relative_path(&self) -> PathBuf {
        PathBuf::from(self.algorithm.name()).join(self.hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Digest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// An incremental digest computation.
#[derive(Debug, Clone)]
pub struct Hasher(State);

#[derive(Debug, Clone)]
enum State {
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Hasher {
    /// A computation with `algorithm`.
    #[must_use]
    pub fn new(algorithm: Algorithm) -> Self {
        Self(match algorithm {
            Algorithm::Sha256 => State::Sha256(sha2::Sha256::new()),
            Algorithm::Sha384 => State::Sha384(sha2::Sha384::new()),
            Algorithm::Sha512 => State::Sha512(sha2::Sha512::new()),
        })
    }

    /// Feeds `data`.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            State::Sha256(h) => h.update(data),
            State::Sha384(h) => h.update(data),
            State::Sha512(h) => h.update(data),
        }
    }

    /// The digest of everything fed.
    #[must_use]
    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self.0 {
            State::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            State::Sha384(h) => (Algorithm::Sha384, hex::encode(h.finalize())),
            State::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest {
            algorithm,
            text: format!("{}:{hex}", algorithm.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Component, Path};

    use proptest::prelude::*;

    use super::*;

    const HEX64: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn go_digest_accepts_known_algorithms_and_refuses_the_rest() {
        let sha256 = format!("sha256:{HEX64}");
        assert_eq!(Digest::parse(&sha256).expect("valid").hex(), HEX64);
        assert_eq!(Digest::of(Algorithm::Sha256, b"").as_str(), sha256);
        let sha512 = Digest::of(Algorithm::Sha512, b"x");
        assert_eq!(Digest::parse(sha512.as_str()).expect("valid"), sha512);
        for bad in [
            "",
            "sha256",
            "sha256:",
            ":abc",
            "sha256:../../..",
            "sha256:../../../etc/passwd",
            "../../..:x",
            "sha256:/etc/passwd",
            &format!("sha256:{}", HEX64.to_uppercase()),
            &format!("sha256:{}", &HEX64[1..]),
            &format!("sha256:{HEX64}0"),
            &format!("sha256:{HEX64}/.."),
            &format!("md5:{}", &HEX64[..32]),
            &format!("SHA256:{HEX64}"),
            &format!("sha256:{}\n", &HEX64[1..]),
        ] {
            let err = Digest::parse(bad).expect_err(bad);
            assert!(matches!(err, Error::InvalidDigest { .. }), "{bad:?}: {err}");
        }
    }

    #[test]
    fn an_error_shows_at_most_a_bounded_part_of_a_hostile_digest() {
        let long = format!("sha256:{}", "a".repeat(1 << 20));
        let err = Digest::parse(&long).expect_err("too long").to_string();
        assert!(err.len() < 400, "{}", err.len());
    }

    proptest! {
        #[test]
        fn no_string_parses_into_a_path_outside_blobs(text in "\\PC{0,80}|sha(256|384|512):[a-f0-9./]{0,130}") {
            if let Ok(digest) = Digest::parse(&text) {
                let path = Path::new("/store/blobs").join(digest.relative_path());
                prop_assert!(path.starts_with("/store/blobs"));
                prop_assert_eq!(path.components().count(), 5);
                prop_assert!(path.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_))));
                prop_assert_eq!(digest.to_string(), text);
            }
        }

        #[test]
        fn valid_digests_round_trip(data in proptest::collection::vec(any::<u8>(), 0..64), alg in 0usize..3) {
            let digest = Digest::of(Algorithm::ALL[alg], &data);
            let parsed = Digest::parse(digest.as_str()).expect("valid");
            prop_assert_eq!(&parsed, &digest);
            let json = serde_json::to_string(&digest).expect("json");
            prop_assert_eq!(serde_json::from_str::<Digest>(&json).expect("parse"), digest);
        }
    }
}
