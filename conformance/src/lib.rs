//! A black-box conformance runner for the OCI distribution specification v1.1, pointed at any
//! registry URL: it pushes generated content, pulls it back, lists, deletes and asks for
//! referrers, and reports one line per check.
//!
//! The checks are written from the specification's MUST statements (and the official Go suite's
//! list of what is worth checking), never from Berth's code: the runner must be able to catch
//! Berth being wrong, and must pass against the reference registry wherever that one is right.
//!
//! # Layout
//! - [`http`]: the one HTTP client, with the `Basic` and `Bearer` token dance of the
//!   `WWW-Authenticate` challenge, and the captured [`http::Reply`] every check asserts on.
//! - [`expect`]: assertions on a reply (status, headers, OCI error codes), each failing with a
//!   message that quotes the status and a body excerpt.
//! - [`fixtures`]: deterministic, per-run-unique blobs and manifests.
//! - [`report`]: the `ok`/`FAIL` lines and the final `N passed, N failed` tally.
//! - [`servers`]: Berth and reference-registry processes for tests and benchmarks.
//! - [`images`]: images the end-to-end tests build themselves (umoci + busybox).
//! - [`peers`]: checks that real peers are present (a failure under `CI=true`).
//! - [`suite`]: the run: shared context, idempotent set-up ("ensure this is pushed"), the groups
//!   in order; one module per group: [`push`], [`pull`], [`discovery`], [`referrers`],
//!   [`management`].
//!
//! # Why `anyhow` in a library
//! The house style keeps `anyhow` to binaries, so that library callers can match on errors.
//! This library exists only to split the runner into files (and to let `berth-bench` reuse
//! [`http`]); its errors are sentences for the person reading a `FAIL` line, never matched on,
//! so a typed error enum would add ceremony and no information.
#![deny(missing_docs)]

pub mod discovery;
pub mod expect;
pub mod fixtures;
pub mod http;
pub mod images;
pub mod management;
pub mod peers;
pub mod pull;
pub mod push;
pub mod referrers;
pub mod report;
pub mod servers;
pub mod suite;

pub use suite::{run, Group, Options};
