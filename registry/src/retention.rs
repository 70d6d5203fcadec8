//! Retention: which tags and untagged manifests the `[[retention]]` policies remove, planned
//! from one read of the metadata and carried out by re-checked deletes, so that
//! `berth-registry retention run --dry-run` lists exactly what a real run then removes (unless
//! a push, a pull or a node report in between changes the answer; the re-check then keeps it).
//!
//! What is never removed: immutable tags; tags whose manifest, or a manifest it lists, is
//! pinned by hand or reported in use by a node; untagged manifests that are pinned, listed by
//! another manifest, or referrers of a manifest still present. Retention removes tags and
//! untagged manifests only: their blobs go with garbage collection, which keeps what is
//! shared.

use crate::auth::rules::glob_match;
use crate::config::{parse_duration, RetentionRule};
use berth_storage::meta::Policy;
use berth_storage::Meta;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// One removal of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    /// Repository name.
    pub repo: String,
    /// What goes.
    pub target: Target,
    /// Why, in words.
    pub reason: String,
}

/// What a removal removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A tag (its manifest stays, untagged, for the collector).
    Tag {
        /// Tag name.
        tag: String,
        /// The manifest it named when planned.
        digest: String,
    },
    /// An untagged manifest.
    Untagged {
        /// Repository id.
        repo_id: i64,
        /// Its digest.
        digest: String,
        /// Unix milliseconds: removed only if not referenced since.
        cutoff: i64,
    },
}

impl std::fmt::Display for Removal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            Target::Tag { tag, digest } => write!(f, "tag {}:{tag} ({digest}): {}", self.repo, self.reason),
            Target::Untagged { digest, .. } => write!(f, "manifest {}@{digest}: {}", self.repo, self.reason),
        }
    }
}

fn dur(s: &Option<String>) -> Option<Duration> {
    s.as_deref().and_then(|s| parse_duration(s).ok())
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(86400) && s > 0 {
        format!("{}d", s / 86400)
    } else if s.is_multiple_of(3600) && s > 0 {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) && s > 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

fn covers_repo(r: &RetentionRule, repo: &str) -> bool {
    r.repos.iter().any(|g| glob_match(g, repo))
}

fn covers_tag(r: &RetentionRule, tag: &str) -> bool {
    (r.keep_last.is_some() || r.pulled_within.is_some())
        && (r.tags.is_empty() || r.tags.iter().any(|g| glob_match(g, tag)))
}

/// Plans a run at `now` (unix milliseconds): what the policies remove, in the order a run
/// removes it (tags first, then untagged manifests).
pub async fn plan(meta: &Meta, rules: &[RetentionRule], policy: &dyn Policy, now: i64) -> anyhow::Result<Vec<Removal>> {
    let tags = meta.retention_tags().await?;
    let graph = meta.gc_graph().await?;
    let repo_ids: HashMap<&str, i64> = graph.repos.iter().map(|(id, n)| (n.as_str(), *id)).collect();
    // Manifests that hold a pinned manifest: the pinned ones and every manifest listing one.
    let mut holds_pin: HashSet<(i64, &str)> = HashSet::new();
    for m in &graph.manifests {
        if graph.pins.contains(&m.digest) {
            holds_pin.insert((m.repo_id, m.digest.as_str()));
        }
    }
    for (repo, parent, child) in &graph.refs {
        if graph.pins.contains(child) {
            holds_pin.insert((*repo, parent.as_str()));
        }
    }
    let mut out = Vec::new();

    // Tags, per repository.
    let mut by_repo: HashMap<&str, Vec<&berth_storage::meta::RetentionTag>> = HashMap::new();
    for t in &tags {
        by_repo.entry(t.repo.as_str()).or_default().push(t);
    }
    let mut repos: Vec<&str> = by_repo.keys().copied().collect();
    repos.sort();
    for repo in repos {
        let rules: Vec<&RetentionRule> = rules.iter().filter(|r| covers_repo(r, repo)).collect();
        if rules.is_empty() {
            continue;
        }
        let list = &by_repo[repo];
        // Each rule's ranking of the tags it covers, newest push first.
        let ranks: Vec<HashMap<&str, usize>> = rules
            .iter()
            .map(|r| {
                let mut covered: Vec<&&berth_storage::meta::RetentionTag> =
                    list.iter().filter(|t| covers_tag(r, &t.tag)).collect();
                covered.sort_by(|a, b| b.pushed_at.cmp(&a.pushed_at).then_with(|| a.tag.cmp(&b.tag)));
                covered.iter().enumerate().map(|(i, t)| (t.tag.as_str(), i)).collect()
            })
            .collect();
        for t in list {
            let mut reason = None;
            let mut kept = false;
            for (r, rank) in rules.iter().zip(&ranks) {
                let Some(&i) = rank.get(t.tag.as_str()) else { continue };
                let recent = r.keep_last.is_some_and(|n| i < n as usize);
                let seen = t.last_pulled.unwrap_or(0).max(t.pushed_at);
                let pulled = dur(&r.pulled_within).is_some_and(|d| seen >= now.saturating_sub(ms(d)));
                if recent || pulled {
                    kept = true;
                    break;
                }
                if reason.is_none() {
                    let mut why = Vec::new();
                    if let Some(n) = r.keep_last {
                        why.push(format!("not among the {n} most recently pushed"));
                    }
                    if let Some(d) = dur(&r.pulled_within) {
                        why.push(format!("not pulled within {}", human(d)));
                    }
                    reason = Some(why.join(", "));
                }
            }
            let Some(reason) = reason.filter(|_| !kept) else {
                continue;
            };
            if policy.immutable(repo, &t.tag) {
                continue;
            }
            let held = repo_ids
                .get(repo)
                .is_some_and(|id| holds_pin.contains(&(*id, t.digest.as_str())));
            if held {
                continue;
            }
            out.push(Removal {
                repo: repo.to_owned(),
                target: Target::Tag {
                    tag: t.tag.clone(),
                    digest: t.digest.clone(),
                },
                reason,
            });
        }
    }

    // Untagged manifests, by the longest `untagged_after` of the policies covering them.
    let tagged: HashSet<(i64, &str)> = graph.tags.iter().map(|(r, d)| (*r, d.as_str())).collect();
    let listed: HashSet<(i64, &str)> = graph.refs.iter().map(|(r, _, c)| (*r, c.as_str())).collect();
    let present: HashSet<(i64, &str)> = graph.manifests.iter().map(|m| (m.repo_id, m.digest.as_str())).collect();
    let mut untagged = Vec::new();
    for m in &graph.manifests {
        let Some(repo) = graph.repos.get(&m.repo_id) else {
            continue;
        };
        let Some(after) = rules
            .iter()
            .filter(|r| covers_repo(r, repo))
            .filter_map(|r| dur(&r.untagged_after))
            .max()
        else {
            continue;
        };
        let key = (m.repo_id, m.digest.as_str());
        let cutoff = now.saturating_sub(ms(after));
        let subject_present = m.subject.as_deref().is_some_and(|s| present.contains(&(m.repo_id, s)));
        if m.last_referenced >= cutoff
            || tagged.contains(&key)
            || listed.contains(&key)
            || subject_present
            || graph.pins.contains(&m.digest)
        {
            continue;
        }
        untagged.push(Removal {
            repo: repo.clone(),
            target: Target::Untagged {
                repo_id: m.repo_id,
                digest: m.digest.clone(),
                cutoff,
            },
            reason: format!("untagged for more than {}", human(after)),
        });
    }
    untagged.sort_by(|a, b| (&a.repo, a.to_string()).cmp(&(&b.repo, b.to_string())));
    out.extend(untagged);
    Ok(out)
}

/// Carries out a plan; returns what was removed (each re-checked as it goes) and how many
/// removals the re-check refused.
pub async fn execute(meta: &Meta, plan: Vec<Removal>) -> anyhow::Result<(Vec<Removal>, usize)> {
    let mut done = Vec::new();
    let mut kept = 0;
    for r in plan {
        let removed = match &r.target {
            Target::Tag { tag, digest } => meta.retention_delete_tag(&r.repo, tag, digest).await?,
            Target::Untagged {
                repo_id,
                digest,
                cutoff,
            } => meta.gc_delete_manifest(*repo_id, digest, *cutoff).await?,
        };
        if removed {
            tracing::info!(removal = %r, "retention removed");
            done.push(r);
        } else {
            tracing::info!(removal = %r, "retention kept it on re-check");
            kept += 1;
        }
    }
    Ok((done, kept))
}

/// The time now, in unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(ms)
        .unwrap_or(0)
}

/// Starts the periodic retention run of `serve`, when policies exist and an interval is set.
pub fn spawn(
    rules: Vec<RetentionRule>,
    interval: Duration,
    meta: Meta,
    policy: std::sync::Arc<dyn Policy>,
) -> Option<tokio::task::JoinHandle<()>> {
    if rules.is_empty() || interval.is_zero() {
        return None;
    }
    tracing::info!(
        interval_secs = interval.as_secs(),
        policies = rules.len(),
        "background retention on"
    );
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let run = async {
                let p = plan(&meta, &rules, policy.as_ref(), now_ms()).await?;
                execute(&meta, p).await
            };
            match run.await {
                Ok((done, kept)) => tracing::info!(removed = done.len(), kept_on_recheck = kept, "retention run done"),
                Err(e) => tracing::warn!(error = %e, "retention run failed; retrying at the next interval"),
            }
        }
    }))
}
