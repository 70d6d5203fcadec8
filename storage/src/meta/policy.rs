//! What the registry's governance configuration tells the metadata repository: which quota
//! scopes a repository belongs to and which tags may never move. The registry owns the
//! configuration and its globs; storage only asks, inside the transactions that must obey the
//! answer (a limit checked outside the transaction that uses it would not hold under two
//! racing pushers).

use std::fmt;
use std::sync::Arc;

/// One quota scope a repository belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    /// The scope's name, stable across restarts (the registry uses the config's globs): its
    /// usage is stored under it.
    pub scope: String,
    /// Most bytes the scope may hold, each blob and manifest counted once.
    pub limit: u64,
}

/// The registry's answers to governance questions. Called inside write transactions: answers
/// must be quick and must not touch the database.
pub trait Policy: Send + Sync + fmt::Debug {
    /// The quota scopes `repo` belongs to (none: unlimited), in a stable order (by scope name,
    /// so that concurrent transactions lock scopes in one order).
    fn quotas(&self, repo: &str) -> Vec<Quota>;
    /// Whether `tag` of `repo` is immutable: once it names a manifest, it may not move or go.
    fn immutable(&self, repo: &str, tag: &str) -> bool;
}

/// No quotas, nothing immutable: the default.
#[derive(Debug, Default)]
pub struct NoPolicy;

impl Policy for NoPolicy {
    fn quotas(&self, _repo: &str) -> Vec<Quota> {
        Vec::new()
    }
    fn immutable(&self, _repo: &str, _tag: &str) -> bool {
        false
    }
}

impl super::Meta {
    /// This repository with `policy` in force (the registry sets it once at start).
    pub fn with_policy(mut self, policy: Arc<dyn Policy>) -> Self {
        self.policy = policy;
        self
    }
}
