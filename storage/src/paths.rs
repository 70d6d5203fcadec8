//! The only place that turns digests and upload parts into object keys.
//!
//! ```text
//! <root>/
//!   blobs/sha256/<hex[0..2]>/<hex>      committed blob bytes, named by their digest
//!   quarantine/sha256/<hex>.<unix s>    bytes scrub found damaged, moved aside for inspection
//!   uploads/<session uuid>/data         an open session's bytes: its staging file (local
//!                                       directory) or what its multipart upload writes
//!   uploads/<session uuid>/<n>-<uuid>   staged objects of a multipart session waiting to
//!                                       make a part (object stores), in order n; on local
//!                                       stores, chunks of sessions an older Berth staged
//! ```
//!
//! Blobs are global (one copy whatever the number of repositories linking them); the two-hex fan
//! out keeps directories small on file systems. Part keys carry a random suffix so that two
//! concurrent requests on one session never write the same object.
//!
//! The reverse mappings ([`digest_of_blob`], [`session_of_upload`]) serve the garbage
//! collector, which lists what is stored and asks the database about each key.

use berth_oci::Digest;
use object_store::path::Path;

/// Key of a committed blob.
pub fn blob(digest: &Digest) -> Path {
    let hex = digest.hex();
    Path::from(format!("blobs/{}/{}/{}", digest.algorithm(), &hex[..2], hex))
}

/// Prefix of everything staged for one upload session.
pub fn upload_dir(session: &str) -> Path {
    Path::from(format!("uploads/{session}"))
}

/// Key of a new staged part, `n`-th of its session.
pub fn upload_part(session: &str, n: usize) -> Path {
    Path::from(format!("uploads/{session}/{n:06}-{}", uuid::Uuid::new_v4().simple()))
}

/// Key of a session's bytes before they become a blob: the local staging file, or what the
/// session's multipart upload writes.
pub fn upload_data(session: &str) -> Path {
    Path::from(format!("uploads/{session}/data"))
}

/// Where scrub moves a damaged blob's bytes (`at`: unix seconds, so repeated quarantines of
/// one digest keep every copy for inspection).
pub fn quarantine(digest: &Digest, at: u64) -> Path {
    Path::from(format!("quarantine/{}/{}.{at}", digest.algorithm(), digest.hex()))
}

/// Prefix of every committed blob.
pub fn blobs_root() -> Path {
    Path::from("blobs")
}

/// Prefix of every upload session.
pub fn uploads_root() -> Path {
    Path::from("uploads")
}

/// The digest whose key is `key`, if `key` is a well-formed blob key.
pub fn digest_of_blob(key: &Path) -> Option<Digest> {
    let parts: Vec<_> = key.parts().collect();
    match &parts[..] {
        [root, algo, fan, hex] if root.as_ref() == "blobs" && hex.as_ref().get(..2) == Some(fan.as_ref()) => {
            format!("{}:{}", algo.as_ref(), hex.as_ref()).parse().ok()
        }
        _ => None,
    }
}

/// The session id of an upload prefix or part key (`uploads/<id>` or `uploads/<id>/…`).
pub fn session_of_upload(key: &Path) -> Option<String> {
    let mut parts = key.parts();
    match (parts.next(), parts.next()) {
        (Some(root), Some(id)) if root.as_ref() == "uploads" => Some(id.as_ref().to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let d = Digest::empty();
        assert_eq!(
            blob(&d).as_ref(),
            "blobs/sha256/e3/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(upload_part("abc", 3).as_ref().starts_with("uploads/abc/000003-"));
        assert_eq!(digest_of_blob(&blob(&d)), Some(d.clone()));
        assert_eq!(digest_of_blob(&Path::from("blobs/sha256/00/e3b0")), None);
        assert_eq!(digest_of_blob(&Path::from("uploads/x/y")), None);
        assert_eq!(session_of_upload(&upload_part("abc", 1)).as_deref(), Some("abc"));
        assert_eq!(session_of_upload(&upload_dir("abc")).as_deref(), Some("abc"));
        assert_eq!(session_of_upload(&blob(&d)), None);
    }
}
