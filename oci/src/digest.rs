//! Content digests (`algorithm:encoded`), per the OCI image spec's descriptor grammar.
//!
//! Only `sha256` is accepted for content Berth computes itself: it is the one algorithm every
//! client (docker, containerd, skopeo) produces, and accepting an algorithm we cannot verify
//! would let unverified bytes sit under a digest.

use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;

/// A validated `sha256:<64 lowercase hex>` digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    /// Always 64 lowercase hex characters.
    hex: String,
}

/// Why a string is not a digest we accept.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DigestError {
    /// Not of the form `algorithm:encoded` with the spec's character sets.
    #[error("invalid digest {0:?}: expected algorithm:encoded, e.g. sha256:<64 hex digits>")]
    Malformed(String),
    /// Well formed, but an algorithm this registry does not compute.
    #[error("unsupported digest algorithm {0:?}: only sha256 is supported")]
    Unsupported(String),
}

impl Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self::from_sha256(Sha256::digest(data).as_slice())
    }

    /// Wraps a raw 32-byte SHA-256 output.
    pub fn from_sha256(raw: &[u8]) -> Self {
        Digest { hex: hex::encode(raw) }
    }

    /// The algorithm name (`sha256`).
    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }

    /// The encoded part: 64 lowercase hex characters.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The digest of zero bytes, which clients may "upload" with an empty PUT.
    pub fn empty() -> Self {
        Self::of(&[])
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || DigestError::Malformed(s.chars().take(200).collect());
        let (alg, enc) = s.split_once(':').ok_or_else(malformed)?;
        // algorithm-component ::= [a-z0-9]+, separated by [+._-]
        let alg_ok = !alg.is_empty()
            && alg
                .split(['+', '.', '_', '-'])
                .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        // encoded ::= [a-zA-Z0-9=_-]+
        let enc_ok = !enc.is_empty()
            && enc
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'));
        if !alg_ok || !enc_ok {
            return Err(malformed());
        }
        match alg {
            "sha256" => {
                if enc.len() == 64 && enc.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                    Ok(Digest { hex: enc.to_owned() })
                } else {
                    Err(malformed())
                }
            }
            other => Err(DigestError::Unsupported(other.to_owned())),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let d = Digest::empty();
        assert_eq!(
            d.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.to_string().parse::<Digest>(), Ok(d));
    }

    #[test]
    fn rejects_bad_digests() {
        for s in [
            "",
            "sha256",
            "sha256:",
            ":abc",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0",
            "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:../../etc/passwd",
        ] {
            assert!(matches!(s.parse::<Digest>(), Err(DigestError::Malformed(_))), "{s}");
        }
        assert!(matches!(
            "sha512:abcd".parse::<Digest>(),
            Err(DigestError::Unsupported(_))
        ));
    }
}
