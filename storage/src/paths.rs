//! The only place that turns digests and upload parts into object keys.
//!
//! ```text
//! <root>/
//!   blobs/sha256/<hex[0..2]>/<hex>      committed blob bytes, named by their digest
//!   uploads/<session uuid>/<n>-<uuid>   staged parts of an open upload session, in order n
//! ```
//!
//! Blobs are global (one copy whatever the number of repositories linking them); the two-hex fan
//! out keeps directories small on file systems. Part keys carry a random suffix so that two
//! concurrent requests on one session never write the same object.

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
    }
}
