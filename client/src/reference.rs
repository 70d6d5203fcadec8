//! Image references (`busybox`, `ghcr.io/org/app:1.0`, `localhost:5000/x@sha256:…`), parsed and
//! normalized the way docker does it (distribution/reference `ParseNormalizedNamed`), so that a name
//! typed for `docker pull` means the same image to `berth`.
//!
//! The rules, in the order they are applied:
//! 1. A 64-hex-digit string is refused: docker reads it as an image ID, never as a name.
//! 2. The first `/`-separated component is the registry if it contains `.` or `:` or is exactly
//!    `localhost`; otherwise the registry is `docker.io` and the whole string is the path.
//!    `index.docker.io` (the legacy Hub name) becomes `docker.io`.
//! 3. On `docker.io`, a one-component repository is an official image: `busybox` →
//!    `docker.io/library/busybox`. Other registries get no prefix.
//! 4. `@` starts the digest; before it, a `:` after the last `/` starts the tag.
//! 5. The repository must be lowercase and match the distribution grammar
//!    ([`berth_oci::validate_repository`]); `registry/repository` is at most 255 characters; the tag
//!    matches [`berth_oci::validate_tag`]; the digest parses as a [`Digest`].
//!
//! Departures from docker, each deliberate:
//! - Recent distribution/reference (v0.6+, docker 25+) also treats an *upper-case* first component
//!   as a registry host, so `docker pull UPPER/x` dials a host named `UPPER`. We keep the older
//!   rule and answer "repository name must be lowercase": a single-label upper-case host is almost
//!   always a typo, and the error says what to fix.
//! - Only `sha256` digests are accepted (docker also parses `sha512:`), because [`Digest`] only
//!   holds digests we can verify.
//! - A registry's port must fit in 16 bits and a bracketed IPv6 literal must be an address; docker's
//!   grammar accepts any digits and any run of hex digits and colons, which cannot be dialled.

use berth_oci::{validate_repository, validate_tag, Digest, DigestError, NameError};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Docker Hub's canonical registry name in references.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that actually serves Docker Hub's registry API.
const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
/// Docker Hub's legacy name ("the Docker Index"), normalized to [`DOCKER_HUB`].
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
/// The key docker uses for Docker Hub in `config.json` and credential helpers: a v1-era URL that
/// every docker-compatible tool still expects.
const DOCKER_HUB_CREDENTIAL_KEY: &str = "https://index.docker.io/v1/";
/// Namespace of official images on Docker Hub.
const OFFICIAL_PREFIX: &str = "library/";
/// Longest `registry/repository` docker accepts.
const NAME_TOTAL_MAX: usize = 255;
/// How much of a user's input an error message repeats.
const ECHO_MAX: usize = 200;

/// A parsed, normalized image reference: which repository on which registry, and optionally which
/// tag and/or manifest digest.
///
/// Both a tag and a digest may be present (`app:1.0@sha256:…`), as in docker; the digest then
/// decides what is fetched and the tag is informational.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry `host[:port]` as written (`docker.io` for Docker Hub, `[::1]:5000` for IPv6).
    pub registry: String,
    /// Repository path within the registry (`library/busybox`), validated against the spec grammar.
    pub repository: String,
    /// The tag, if one was given; `None` means "latest" when a manifest is fetched.
    pub tag: Option<String>,
    /// The manifest digest, if one was given.
    pub digest: Option<Digest>,
}

/// Why a string is not an image reference. Every message names the input and what is wrong with it
/// in one line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReferenceError {
    /// Nothing was given.
    #[error("invalid reference format: the image reference is empty")]
    Empty,
    /// A bare 64-hex-digit string, which docker reserves for image IDs.
    #[error("invalid reference {input:?}: a 64-character hexadecimal string is an image ID, not a repository name")]
    Identifier {
        /// The input, possibly shortened.
        input: String,
    },
    /// The repository path has upper-case letters.
    #[error("invalid reference {input:?}: repository name must be lowercase (got {repository:?})")]
    Uppercase {
        /// The input, possibly shortened.
        input: String,
        /// The repository path as normalized (`library/` prefix included on Docker Hub).
        repository: String,
    },
    /// The registry part is not `host[:port]`.
    #[error("invalid reference {input:?}: registry {registry:?} is not a valid host[:port]")]
    Registry {
        /// The input, possibly shortened.
        input: String,
        /// The registry component.
        registry: String,
    },
    /// `registry/repository` is longer than docker allows.
    #[error("invalid reference {input:?}: repository name must not be more than 255 characters (got {len})")]
    NameTooLong {
        /// The input, possibly shortened.
        input: String,
        /// Length of `registry/repository`.
        len: usize,
    },
    /// The repository path breaks the distribution grammar.
    #[error("invalid reference {input:?}: {error}")]
    Repository {
        /// The input, possibly shortened.
        input: String,
        /// What the grammar check said.
        error: NameError,
    },
    /// The tag is empty, too long or has characters outside `[A-Za-z0-9_.-]`.
    #[error("invalid reference {input:?}: tag {tag:?} {reason}")]
    Tag {
        /// The input, possibly shortened.
        input: String,
        /// The tag, possibly shortened.
        tag: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The part after `@` is not a `sha256:<64 hex>` digest.
    #[error("invalid reference {input:?}: {error}")]
    Digest {
        /// The input, possibly shortened.
        input: String,
        /// What the digest parser said.
        error: DigestError,
    },
}

/// At most [`ECHO_MAX`] characters of `s`, so that a pathological input cannot flood a terminal.
fn clip(s: &str) -> String {
    if s.chars().count() <= ECHO_MAX {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(ECHO_MAX).collect();
        out.push('…');
        out
    }
}

/// `[a-f0-9]{64}`: docker's image-ID syntax.
fn is_identifier(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`: one label of a registry host name.
fn domain_component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
        }
        _ => false,
    }
}

/// Splits `host[:port]` (host possibly a bracketed IPv6 literal) into host and port; `None` when the
/// brackets are unbalanced.
pub(crate) fn split_host_port(registry: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = registry.strip_prefix('[') {
        let (addr, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        // Return the host with its brackets, as it is written in URLs.
        Some((&registry[..addr.len() + 2], port))
    } else {
        match registry.split_once(':') {
            Some((host, port)) => Some((host, Some(port))),
            None => Some((registry, None)),
        }
    }
}

/// Whether `registry` is `host[:port]` per docker's domain grammar (plus a real IPv6 address and a
/// 16-bit port, see the module docs).
fn registry_ok(registry: &str) -> bool {
    let Some((host, port)) = split_host_port(registry) else {
        return false;
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
        None => host.split('.').all(domain_component_ok),
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok());
    host_ok && port_ok
}

/// Why `tag` fails [`validate_tag`], in words.
fn tag_problem(tag: &str) -> &'static str {
    if tag.is_empty() {
        "is empty"
    } else if tag.len() > 128 {
        "is longer than 128 characters"
    } else if tag.starts_with(['.', '-']) {
        "must not start with '.' or '-'"
    } else {
        "may only contain letters, digits, '_', '.' and '-'"
    }
}

impl Reference {
    /// Parses and normalizes a reference as `docker pull` would; see the module docs for the rules.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let input = || clip(s);
        if is_identifier(s) {
            return Err(ReferenceError::Identifier { input: input() });
        }

        let (registry, remainder) = match s.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (first, rest),
            _ => (DOCKER_HUB, s),
        };
        let registry = if registry == DOCKER_HUB_LEGACY {
            DOCKER_HUB
        } else {
            registry
        };
        if !registry_ok(registry) {
            return Err(ReferenceError::Registry {
                input: input(),
                registry: clip(registry),
            });
        }

        let (name_and_tag, digest) = match remainder.split_once('@') {
            Some((before, digest)) => (before, Some(digest)),
            None => (remainder, None),
        };
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
            Some(i) => (
                &name_and_tag[..last_slash + i],
                Some(&name_and_tag[last_slash + i + 1..]),
            ),
            None => (name_and_tag, None),
        };

        let repository = if registry == DOCKER_HUB && !name.contains('/') {
            format!("{OFFICIAL_PREFIX}{name}")
        } else {
            name.to_owned()
        };
        if repository.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase {
                input: input(),
                repository: clip(&repository),
            });
        }
        let len = registry.len() + 1 + repository.len();
        if len > NAME_TOTAL_MAX {
            return Err(ReferenceError::NameTooLong { input: input(), len });
        }
        validate_repository(&repository).map_err(|error| ReferenceError::Repository { input: input(), error })?;

        if let Some(tag) = tag {
            if validate_tag(tag).is_err() {
                return Err(ReferenceError::Tag {
                    input: input(),
                    tag: clip(tag),
                    reason: tag_problem(tag),
                });
            }
        }
        let digest = digest
            .map(Digest::from_str)
            .transpose()
            .map_err(|error| ReferenceError::Digest { input: input(), error })?;

        Ok(Reference {
            registry: registry.to_owned(),
            repository,
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// What to put in `/v2/<repository>/manifests/<this>`: the digest if there is one (it pins the
    /// content even when a tag is also given), else the tag, else `latest` as docker defaults.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// The `host[:port]` to send registry API requests to: Docker Hub is named `docker.io` in
    /// references but served from `registry-1.docker.io`.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API_HOST
        } else {
            &self.registry
        }
    }

    /// The key docker files this registry's credentials under (in `config.json` `auths`,
    /// `credHelpers` and credential helpers): `https://index.docker.io/v1/` for Docker Hub, the
    /// registry `host[:port]` otherwise. Using docker's key is what lets `docker login` and
    /// `berth` share credentials.
    pub fn credential_key(&self) -> String {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_CREDENTIAL_KEY.to_owned()
        } else {
            self.registry.clone()
        }
    }

    /// Whether the registry is on loopback (`localhost`, `127.0.0.0/8`, `[::1]`, with or without a
    /// port). Such registries may be spoken to over plain HTTP when they do not speak TLS, as docker
    /// allows by default: traffic that never leaves the machine has nothing to gain from TLS, and
    /// local test registries rarely have certificates.
    pub fn is_loopback(&self) -> bool {
        let Some((host, _)) = split_host_port(&self.registry) else {
            return false;
        };
        if host.eq_ignore_ascii_case("localhost") {
            return true;
        }
        if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            return v6
                .parse::<Ipv6Addr>()
                .is_ok_and(|ip| ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()));
        }
        host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

/// The full canonical form, `registry/repository[:tag][@digest]`, never docker's shortened
/// "familiar" form: what is printed is exactly what will be contacted, and it parses back to the
/// same reference.
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parse(s: &str) -> Reference {
        match Reference::parse(s) {
            Ok(r) => r,
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    fn err(s: &str) -> ReferenceError {
        match Reference::parse(s) {
            Ok(r) => panic!("{s:?} should not parse, got {r:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn normalizes_like_docker() {
        // (input, registry, repository, tag)
        let cases: &[(&str, &str, &str, Option<&str>)] = &[
            ("busybox", "docker.io", "library/busybox", None),
            ("busybox:1.36", "docker.io", "library/busybox", Some("1.36")),
            ("library/busybox", "docker.io", "library/busybox", None),
            ("docker.io/busybox", "docker.io", "library/busybox", None),
            (
                "docker.io/library/busybox:latest",
                "docker.io",
                "library/busybox",
                Some("latest"),
            ),
            ("index.docker.io/busybox", "docker.io", "library/busybox", None),
            ("index.docker.io/user/app:v2", "docker.io", "user/app", Some("v2")),
            ("user/app", "docker.io", "user/app", None),
            ("user/team/app:1", "docker.io", "user/team/app", Some("1")),
            ("ghcr.io/org/app:v1", "ghcr.io", "org/app", Some("v1")),
            ("ghcr.io/app", "ghcr.io", "app", None),
            ("registry-1.docker.io/app", "registry-1.docker.io", "app", None),
            ("localhost/x", "localhost", "x", None),
            ("localhost:5000/x/y:t", "localhost:5000", "x/y", Some("t")),
            ("myhost:5000/repo", "myhost:5000", "repo", None),
            ("127.0.0.1:5000/a/b", "127.0.0.1:5000", "a/b", None),
            ("[::1]:5000/x", "[::1]:5000", "x", None),
            ("[2001:db8::1]/x:t", "[2001:db8::1]", "x", Some("t")),
            ("Example.COM/x", "Example.COM", "x", None),
            // No '/' means no registry: docker reads this as image "localhost" with tag "5000".
            ("localhost:5000", "docker.io", "library/localhost", Some("5000")),
            // A first component without '.' or ':' is a namespace, not a host.
            ("myhost/repo", "docker.io", "myhost/repo", None),
        ];
        for &(input, registry, repository, tag) in cases {
            let r = parse(input);
            assert_eq!(r.registry, registry, "{input}");
            assert_eq!(r.repository, repository, "{input}");
            assert_eq!(r.tag.as_deref(), tag, "{input}");
            assert_eq!(r.digest, None, "{input}");
        }
    }

    #[test]
    fn digests_and_tags_together() {
        let r = parse(&format!("host:5000/repo:tag@sha256:{HEX}"));
        assert_eq!(r.registry, "host:5000");
        assert_eq!(r.repository, "repo");
        assert_eq!(r.tag.as_deref(), Some("tag"));
        assert_eq!(r.digest.as_ref().map(|d| d.hex().to_owned()), Some(HEX.to_owned()));
        assert_eq!(r.reference(), format!("sha256:{HEX}"));
        assert_eq!(r.to_string(), format!("host:5000/repo:tag@sha256:{HEX}"));

        let r = parse(&format!("busybox@sha256:{HEX}"));
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.tag, None);
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@sha256:{HEX}"));

        let r = parse(&format!("[::1]:5000/x@sha256:{HEX}"));
        assert_eq!(r.registry, "[::1]:5000");
        assert!(r.digest.is_some());
    }

    #[test]
    fn display_is_canonical_and_round_trips() {
        for (input, shown) in [
            ("busybox", "docker.io/library/busybox"),
            ("busybox:1", "docker.io/library/busybox:1"),
            ("index.docker.io/u/a", "docker.io/u/a"),
            ("localhost:5000/x:t", "localhost:5000/x:t"),
            ("[::1]:5000/x", "[::1]:5000/x"),
        ] {
            let r = parse(input);
            assert_eq!(r.to_string(), shown);
            assert_eq!(parse(shown), r, "{shown} should parse back to the same reference");
            assert_eq!(shown.parse::<Reference>().unwrap(), r);
        }
    }

    #[test]
    fn manifest_reference() {
        assert_eq!(parse("busybox").reference(), "latest");
        assert_eq!(parse("busybox:1.36").reference(), "1.36");
        assert_eq!(
            parse(&format!("busybox@sha256:{HEX}")).reference(),
            format!("sha256:{HEX}")
        );
    }

    #[test]
    fn api_host_and_credential_key() {
        let hub = parse("busybox");
        assert_eq!(hub.api_host(), "registry-1.docker.io");
        assert_eq!(hub.credential_key(), "https://index.docker.io/v1/");
        let legacy = parse("index.docker.io/u/a");
        assert_eq!(legacy.credential_key(), "https://index.docker.io/v1/");
        let local = parse("127.0.0.1:5000/x");
        assert_eq!(local.api_host(), "127.0.0.1:5000");
        assert_eq!(local.credential_key(), "127.0.0.1:5000");
        let v6 = parse("[::1]:5000/x");
        assert_eq!(v6.api_host(), "[::1]:5000");
        assert_eq!(v6.credential_key(), "[::1]:5000");
        assert_eq!(parse("ghcr.io/o/a").credential_key(), "ghcr.io");
    }

    #[test]
    fn loopback() {
        for yes in [
            "localhost/x",
            "localhost:5000/x",
            "LOCALHOST:5000/x",
            "127.0.0.1/x",
            "127.0.0.1:5000/x",
            "127.8.9.10:1/x",
            "[::1]/x",
            "[::1]:5000/x",
            "[0:0:0:0:0:0:0:1]:5000/x",
        ] {
            assert!(parse(yes).is_loopback(), "{yes}");
        }
        for no in [
            "busybox",
            "example.com/x",
            "10.0.0.1:5000/x",
            "128.0.0.1/x",
            "[::2]:5000/x",
            "localhost.example.com/x",
            "mylocalhost:5000/x",
        ] {
            assert!(!parse(no).is_loopback(), "{no}");
        }
    }

    #[test]
    fn errors() {
        assert_eq!(err(""), ReferenceError::Empty);

        let e = err("UPPER/x");
        assert!(matches!(e, ReferenceError::Uppercase { .. }), "{e:?}");
        assert!(e.to_string().contains("repository name must be lowercase"), "{e}");
        assert!(
            matches!(err("Busybox"), ReferenceError::Uppercase { ref repository, .. } if repository == "library/Busybox")
        );
        assert!(matches!(err("ghcr.io/Org/app"), ReferenceError::Uppercase { .. }));

        assert!(matches!(err("a:b:c"), ReferenceError::Repository { .. }));
        assert!(matches!(err("ghcr.io/a:b/c"), ReferenceError::Repository { .. }));
        assert!(matches!(err("docker.io/"), ReferenceError::Repository { .. }));
        assert!(matches!(err("-x"), ReferenceError::Repository { .. }));
        assert!(matches!(err("a//b"), ReferenceError::Repository { .. }));
        assert!(matches!(err("a b"), ReferenceError::Repository { .. }));

        assert!(matches!(err("x@sha256:abc"), ReferenceError::Digest { .. }));
        assert!(matches!(err("x@"), ReferenceError::Digest { .. }));
        assert!(matches!(
            err(&format!("x@sha256:{HEX}@sha256:{HEX}")),
            ReferenceError::Digest { .. }
        ));
        assert!(matches!(
            err(&format!("x@sha512:{HEX}{HEX}")),
            ReferenceError::Digest {
                error: DigestError::Unsupported(_),
                ..
            }
        ));

        let long_tag = "a".repeat(129);
        let e = err(&format!("x:{long_tag}"));
        assert!(matches!(e, ReferenceError::Tag { .. }), "{e:?}");
        assert!(e.to_string().contains("longer than 128"), "{e}");
        assert!(parse(&format!("x:{}", "a".repeat(128))).tag.is_some());
        assert!(matches!(err("x:"), ReferenceError::Tag { .. }));
        assert!(matches!(err("x:.hidden"), ReferenceError::Tag { .. }));

        assert!(matches!(err(HEX), ReferenceError::Identifier { .. }));
        assert!(matches!(err("host:port/x"), ReferenceError::Registry { .. }));
        assert!(matches!(err("host:99999/x"), ReferenceError::Registry { .. }));
        assert!(matches!(err("host:/x"), ReferenceError::Registry { .. }));
        assert!(matches!(err("-bad.com/x"), ReferenceError::Registry { .. }));
        assert!(matches!(err("a..b/x"), ReferenceError::Registry { .. }));
        assert!(matches!(err("[::1/x"), ReferenceError::Registry { .. }));
        assert!(matches!(err("[zz::1]:5000/x"), ReferenceError::Registry { .. }));
        assert!(matches!(err("[::1]5000/x"), ReferenceError::Registry { .. }));

        let long = format!("example.com/{}", "a".repeat(250));
        assert!(matches!(err(&long), ReferenceError::NameTooLong { len: 262, .. }));
    }

    #[test]
    fn errors_are_one_line_and_bounded() {
        let huge = format!("x:{}", "a".repeat(10_000));
        for input in ["", "UPPER/x", "a:b:c", "x@sha256:abc", huge.as_str(), "host:port/x"] {
            let msg = err(input).to_string();
            assert!(!msg.contains('\n'), "{msg}");
            assert!(msg.len() < 1000, "{} characters", msg.len());
        }
    }
}
