//! berth-node: pull images into a local content store, unpack their layers into overlay
//! snapshots keyed by chain ID, and run containers in namespaces and cgroups.
//!
//! # Layout
//! - [`node`]: the state root and its layout; the lock shared records change under.
//! - [`content`]: blobs by digest under `<root>/content`, written via ingest + verify + rename.
//! - [`image`]: image records (reference → manifest, config, chain IDs) and the pull pipeline:
//!   layers fetched in parallel, each decompressed and unpacked while it downloads.
//! - [`gc`]: `rmi` and `prune`: what no image and no container reaches is deleted.
//! - [`snapshot`]: the overlay snapshotter; computes mounts as data, never mounts.
//! - [`unpack`]: applies one layer (a tar stream) into a snapshot directory, OCI whiteouts
//!   turned into overlay whiteouts, no entry escaping the directory.
//! - [`spec`]: the OCI runtime spec (`config.json`), the contract between the node and any
//!   runtime (the embedded one in [`linux`], or `runc`).
//! - [`sys`]: privileged syscalls behind a trait, with a recording double for tests.
//! - [`cgroup`]: cgroup v1 and v2 managers rooted at a path passed in (v2 device rules as an
//!   eBPF program, [`cgroup::devices`]).
//! - [`seccomp`]: docker's seccomp profiles resolved for a container and compiled to BPF.
//! - [`linux`]: the embedded runtime: the container's init (namespaces, mounts, pivot_root,
//!   capabilities, exec) and `exec` into a running container.
//! - [`container`]: image config → runtime spec, persisted container state, the supervisor
//!   that keeps a detached container's logs and exit status, and the lifecycle verbs.
//!
//! Dependencies inside: `container` → `snapshot`, `cgroup`, `sys`, `linux`; `content`,
//! `snapshot` and `unpack` describe what to do and never call `sys` themselves.
#![deny(missing_docs)]

pub mod cgroup;
pub mod container;
pub mod content;
mod error;
pub mod gc;
pub mod image;
pub mod linux;
pub mod node;
pub mod seccomp;
pub mod snapshot;
pub mod spec;
pub mod sys;
pub mod unpack;

pub use error::{escape_controls, Error, Result};
pub use node::Node;
