//! The OCI vocabulary every Berth crate shares, so that the registry, the client and the node
//! runtime agree on what a digest, a repository name or a manifest is — written once.
//!
//! # Layout
//! - [`digest`]: `algorithm:hex` content identifiers and the streaming SHA-256 hasher.
//! - [`name`]: repository-name and tag grammar from the distribution spec.
//! - [`media`]: media-type constants.
//! - [`manifest`]: extraction of what a registry must know from a manifest body.
//! - [`platform`]: `os/arch[/variant]`: the host's, and which index child matches one.
#![deny(missing_docs)]

pub mod digest;
pub mod manifest;
pub mod media;
pub mod name;
pub mod platform;

pub use digest::{Digest, DigestError};
pub use manifest::{Descriptor, ManifestError, ParsedManifest};
pub use name::{validate_repository, validate_tag, NameError};
