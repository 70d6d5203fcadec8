//! Where blobs were last seen, per registry: the repository a push can mount a blob from
//! instead of uploading it again (docker keeps the same record, its "blobsum → repository"
//! metadata). A push to `team/b` of layers pushed to `team/a` then moves no bytes.
//!
//! Only a hint: the registry checks the mount (the blob must be in that repository and the
//! client allowed to pull it), and when it refuses, the upload proceeds in the session it
//! opened instead. So the file may be stale, lost or shared between processes (the last
//! writer wins) without harm. Kept in `$XDG_CACHE_HOME/berth/blob-locations.json`
//! (`~/.cache/berth/…`), bounded to [`LIMIT`] blobs.

use berth_oci::Digest;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Blobs remembered at most; beyond it the file starts afresh (it is only a hint).
pub const LIMIT: usize = 20_000;

/// Registry → digest → repository.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Locations {
    #[serde(flatten)]
    registries: BTreeMap<String, BTreeMap<String, String>>,
}

fn path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("berth").join("blob-locations.json"))
}

impl Locations {
    /// The record on disk (empty when there is none or it does not parse).
    pub fn load() -> Locations {
        path()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// A repository of `registry`, other than `not`, where `digest` was seen.
    pub fn find(&self, registry: &str, digest: &Digest, not: &str) -> Option<&str> {
        self.registries
            .get(registry)?
            .get(&digest.to_string())
            .map(String::as_str)
            .filter(|r| *r != not)
    }

    /// Remembers that `repo` of `registry` has `digests`.
    pub fn record<'a>(&mut self, registry: &str, repo: &str, digests: impl IntoIterator<Item = &'a Digest>) {
        let total: usize = self.registries.values().map(BTreeMap::len).sum();
        if total > LIMIT {
            self.registries.clear();
        }
        let blobs = self.registries.entry(registry.to_owned()).or_default();
        for d in digests {
            blobs.insert(d.to_string(), repo.to_owned());
        }
    }

    /// Writes the record (a temporary file renamed over the old one). Failures are logged and
    /// otherwise ignored: the next push uploads instead of mounting, nothing worse.
    pub fn save(&self) {
        let Some(p) = path() else { return };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = p.with_extension(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
            std::fs::write(&tmp, serde_json::to_vec(self).unwrap_or_default())?;
            std::fs::rename(&tmp, &p).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
        };
        if let Err(e) = write() {
            tracing::debug!(path = %p.display(), error = %e, "cannot record blob locations");
        }
    }
}
