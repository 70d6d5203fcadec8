//! berth's client library: move images between OCI layouts and registries.
//!
//! # Layout
//! - [`reference`]: image references exactly as docker parses them.
//! - [`credentials`]: `~/.docker/config.json`, credential helpers.
//! - [`transport`]: HTTP to one registry: scheme, Basic/Bearer auth, retries.
//! - [`registry`]: the distribution API per repository: manifests, resumable blob transfer,
//!   mounts, tags, catalog.
//! - [`layout`]: OCI image layouts on disk.
//! - [`locations`]: which repository of a registry has a blob, so pushes mount it.
//! - [`archive`]: docker's `docker save` archives, to and from OCI layouts.
//! - [`transfer`]: push, pull and copy of whole images, layers in parallel.
#![deny(missing_docs)]

pub mod archive;
pub mod credentials;
mod error;
pub mod layout;
pub mod locations;
pub mod reference;
pub mod registry;
pub mod transfer;
pub mod transport;

pub use error::{Error, Result};
