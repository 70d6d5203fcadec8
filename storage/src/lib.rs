//! Content-addressed storage for Berth: blob bytes behind [`object_store`], registry metadata in
//! SQL via sqlx. Knows nothing of HTTP: the registry crate maps [`Error`] onto the
//! distribution spec's error codes.
//!
//! # Layout
//! - [`paths`]: the only place that maps digests and upload parts to object keys.
//! - [`blob`]: [`BlobStore`], blob bytes over `Arc<dyn ObjectStore>` (stat, ranged get, staged
//!   parts, atomic commit), opened from a URL: `file:///PATH`, `s3://BUCKET/PREFIX`,
//!   `memory://`; the backend's multipart API where it has one.
//! - [`hashstate`]: SHA-256 state persisted between chunks, so uploads survive a restart.
//! - [`meta`]: [`Meta`], the metadata repository (repositories, blobs and per-repository links,
//!   manifests, tags, referrers, upload sessions, and the auth state replicas share: the token
//!   signing key and failed-login counts).
//! - [`upload`]: upload sessions: stage each chunk as a part (or, on object stores, send it as
//!   parts of a multipart upload recorded in the database) while hashing, then verify and
//!   commit.
//! - [`gc`]: online garbage collection (mark from tags, sweep with per-item re-checks under
//!   row locks), upload-session expiry and staging cleanup.
//!
//! # Invariants
//! - A blob is visible under its digest only after its bytes hashed to that digest; bytes reach
//!   the digest's key by rename or a multipart completion, never by an in-place write.
//! - A repository sees a blob only through its link row: the link lookup is the access check.
//! - Whoever creates a reference locks the referenced row in the same transaction; the
//!   collector locks it before deciding. Nothing referenced is ever collected, and the
//!   collector needs no read-only window.
#![deny(missing_docs)]

pub mod blob;
mod durable;
mod error;
pub mod gc;
pub mod hash;
pub mod hashstate;
pub mod meta;
pub mod paths;
pub mod scrub;
#[doc(hidden)]
pub mod testing;
pub mod upload;

pub use blob::{BlobRead, BlobStore};
pub use error::{Error, Result};
pub use meta::Meta;
pub use upload::{Upload, Uploads};
