//! Governance: what `[[quotas]]` and `[[immutable]]` mean for the metadata repository (the
//! [`Policy`] storage asks inside its transactions), the batched record of pulls that
//! retention's `pulled_within` reads, and the shared checks of the configuration.
//!
//! Globs are the access rules' ([`glob_match`]): `*` within one path component, `**` across.

use crate::auth::rules::glob_match;
use crate::config::{parse_duration, Config};
use berth_storage::meta::{Policy, Quota};
use berth_storage::Meta;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The quotas and immutable tags in force.
#[derive(Debug, Default)]
pub struct Governance {
    /// (repository globs, scope name, limit), sorted by scope name.
    quotas: Vec<(Vec<String>, String, u64)>,
    /// (repository globs, tag globs).
    immutable: Vec<(Vec<String>, Vec<String>)>,
}

/// A quota scope's name: its repository globs, as configured.
pub fn scope_name(repos: &[String]) -> String {
    repos.join(",")
}

fn any_match(globs: &[String], name: &str) -> bool {
    globs.iter().any(|g| glob_match(g, name))
}

impl Governance {
    /// The policy of a (validated) configuration.
    pub fn new(config: &Config) -> Self {
        let mut quotas: Vec<(Vec<String>, String, u64)> = config
            .quotas
            .iter()
            .map(|q| (q.repos.clone(), scope_name(&q.repos), q.bytes.0))
            .collect();
        quotas.sort_by(|a, b| a.1.cmp(&b.1));
        Governance {
            quotas,
            immutable: config
                .immutable
                .iter()
                .map(|i| (i.repos.clone(), i.tags.clone()))
                .collect(),
        }
    }

    /// Every configured scope with its limit, by name.
    pub fn scopes(&self) -> Vec<(String, u64)> {
        self.quotas.iter().map(|(_, s, l)| (s.clone(), *l)).collect()
    }
}

impl Policy for Governance {
    fn quotas(&self, repo: &str) -> Vec<Quota> {
        self.quotas
            .iter()
            .filter(|(globs, _, _)| any_match(globs, repo))
            .map(|(_, scope, limit)| Quota {
                scope: scope.clone(),
                limit: *limit,
            })
            .collect()
    }

    fn immutable(&self, repo: &str, tag: &str) -> bool {
        self.immutable
            .iter()
            .any(|(repos, tags)| any_match(repos, repo) && tags.iter().any(|t| glob_match(t, tag)))
    }
}

/// The metadata repository with the configuration's policy in force.
pub fn apply(config: &Config, meta: Meta) -> Meta {
    meta.with_policy(Arc::new(Governance::new(config)))
}

/// Checks the governance sections (called by [`Config::validate`]).
pub fn validate(c: &Config) -> anyhow::Result<()> {
    let mut names = std::collections::HashSet::new();
    for q in &c.quotas {
        anyhow::ensure!(
            !q.repos.is_empty(),
            "[[quotas]]: every quota needs at least one repos glob"
        );
        anyhow::ensure!(
            names.insert(scope_name(&q.repos)),
            "[[quotas]]: two quotas have the same repos {:?}; merge them",
            q.repos
        );
    }
    for i in &c.immutable {
        anyhow::ensure!(
            !i.repos.is_empty() && !i.tags.is_empty(),
            "[[immutable]]: every entry needs repos and tags globs"
        );
    }
    for r in &c.retention {
        anyhow::ensure!(
            !r.repos.is_empty(),
            "[[retention]]: every policy needs at least one repos glob"
        );
        for (what, v) in [
            ("pulled_within", &r.pulled_within),
            ("untagged_after", &r.untagged_after),
        ] {
            if let Some(v) = v {
                parse_duration(v).map_err(|e| anyhow::anyhow!("[[retention]] {what}: {e}"))?;
            }
        }
        anyhow::ensure!(
            r.keep_last.is_some() || r.pulled_within.is_some() || r.untagged_after.is_some(),
            "[[retention]] for {:?}: set keep_last, pulled_within or untagged_after",
            r.repos
        );
    }
    anyhow::ensure!(
        c.governance.pull_flush_secs > 0,
        "governance.pull_flush_secs must be at least 1"
    );
    Ok(())
}

/// Pulls recorded in memory and written in batches: a pull never waits on a database write,
/// and a manifest pulled a thousand times between flushes costs one UPDATE.
#[derive(Debug, Default)]
pub struct PullLog {
    pending: Mutex<HashMap<(String, String), i64>>,
}

impl PullLog {
    /// Notes that `digest` of `repo` was pulled now.
    pub fn record(&self, repo: &str, digest: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        if let Ok(mut p) = self.pending.lock() {
            p.insert((repo.to_owned(), digest.to_owned()), now);
        }
    }

    /// Writes what was recorded since the last flush. On failure the batch is put back (a
    /// later pull of the same manifest wins) for the next try.
    pub async fn flush(&self, meta: &Meta) -> berth_storage::Result<()> {
        let batch: Vec<(String, String, i64)> = match self.pending.lock() {
            Ok(mut p) => p.drain().map(|((r, d), t)| (r, d, t)).collect(),
            Err(_) => return Ok(()),
        };
        if let Err(e) = meta.record_pulls(&batch).await {
            if let Ok(mut p) = self.pending.lock() {
                for (r, d, t) in batch {
                    p.entry((r, d)).or_insert(t);
                }
            }
            return Err(e);
        }
        Ok(())
    }

    /// Flushes every `every` until the runtime stops.
    pub fn spawn(self: &Arc<Self>, meta: Meta, every: Duration) -> tokio::task::JoinHandle<()> {
        let log = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if let Err(e) = log.flush(&meta).await {
                    tracing::warn!(error = %e, "recording pulls failed; retrying");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_and_immutable_tags_match_their_globs() {
        let c: Config = toml::from_str(
            "[[quotas]]\nrepos = [\"team/**\"]\nbytes = \"50GiB\"\n[[quotas]]\nrepos = [\"team/a\", \"x/*\"]\nbytes = 100\n\
             [[immutable]]\nrepos = [\"team/**\"]\ntags = [\"v*\", \"release-*\"]",
        )
        .expect("parse");
        c.validate().expect("valid");
        let g = Governance::new(&c);
        let q = g.quotas("team/a");
        assert_eq!(
            q.iter().map(|q| (q.scope.as_str(), q.limit)).collect::<Vec<_>>(),
            vec![("team/**", 50 << 30), ("team/a,x/*", 100)]
        );
        assert!(g.quotas("other").is_empty());
        assert!(g.immutable("team/a/b", "v1.2"));
        assert!(g.immutable("team/a", "release-3"));
        assert!(!g.immutable("team/a", "latest"));
        assert!(!g.immutable("other/a", "v1"));
    }

    #[test]
    fn sizes_and_bad_sections() {
        use crate::config::parse_bytes;
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("2KiB"), Ok(2048));
        assert_eq!(parse_bytes("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_bytes("50GiB"), Ok(50 << 30));
        for bad in ["", "GiB", "1 XB", "-1"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
        let bad = |t: &str| {
            toml::from_str::<Config>(t)
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate().map_err(|e| e.to_string()))
        };
        assert!(bad("[[quotas]]\nrepos = []\nbytes = 1").is_err());
        assert!(bad("[[quotas]]\nrepos = [\"a\"]\nbytes = \"lots\"").is_err());
        assert!(bad("[[retention]]\nrepos = [\"a\"]").is_err());
        assert!(bad("[[retention]]\nrepos = [\"a\"]\npulled_within = \"soon\"").is_err());
        assert!(bad("[[retention]]\nrepos = [\"a\"]\nkeep_last = 3\nuntagged_after = \"7d\"").is_ok());
    }
}
