//! OCI image layouts on disk (image-spec `image-layout.md`): `oci-layout`, `index.json`,
//! `blobs/<alg>/<hex>`. Blobs are written through a temporary file in the same directory and
//! renamed once their digest is verified, so a layout never holds a partial blob under a digest.
//!
//! # Crash safety
//! Every file gets its name by a rename after its data was synced, so after a crash a name
//! holds the right bytes or does not exist (never zeros or a torn tail, which is what a
//! rename before the data reached the disk can leave). The renames are made durable by syncing
//! their directory before anything that depends on them is written: blobs before the
//! manifests that list them, everything before `index.json`, which is written last. What
//! `index.json` records is on disk when a pull returns.

use crate::error::{Error, Result};
use berth_oci::{Descriptor, Digest};
use std::path::{Path, PathBuf};

/// The annotation naming a manifest in `index.json` (what `oci:dir:tag` refers to).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI image layout directory.
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Opens an existing layout.
    pub fn open(root: &Path) -> Result<Layout> {
        if !root.join("oci-layout").is_file() || !root.join("index.json").is_file() {
            return Err(Error::local(
                root,
                "not an OCI image layout (no oci-layout or index.json): create one with `berth pull REF --to DIR`, `skopeo copy … oci:DIR:TAG` or umoci",
            ));
        }
        Ok(Layout { root: root.to_owned() })
    }

    /// Opens a layout, creating an empty one if the directory has none.
    pub fn create(root: &Path) -> Result<Layout> {
        let new_root = !root.exists();
        std::fs::create_dir_all(root.join("blobs/sha256")).map_err(|e| Error::local(root, e))?;
        if !root.join("oci-layout").exists() {
            replace_file(&root.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        if !root.join("index.json").exists() {
            let index =
                serde_json::json!({"schemaVersion": 2, "mediaType": berth_oci::media::OCI_INDEX, "manifests": []});
            replace_file(&root.join("index.json"), index.to_string().as_bytes())?;
        }
        // The new names: `sha256` in `blobs`, the files and `blobs` in the root, and the root
        // itself in its parent when it was made here.
        sync_dir(&root.join("blobs"))?;
        sync_dir(root)?;
        if new_root {
            if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        Ok(Layout { root: root.to_owned() })
    }

    /// Where a blob lives (whether or not it is there).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs").join(d.algorithm()).join(d.hex())
    }

    /// Whether the blob is present with the given size.
    pub fn has_blob(&self, d: &Digest, size: u64) -> bool {
        std::fs::metadata(self.blob_path(d)).is_ok_and(|m| m.len() == size)
    }

    /// Whether the blob is present with the given size and its content matches its digest.
    /// A pull checks blobs it finds rather than trusting their names: another tool (or an
    /// older berth) may have renamed a file before its data reached the disk, and a crash
    /// then leaves the name over zeros or a torn tail. Hashed on a blocking thread.
    pub async fn has_verified_blob(&self, d: &Digest, size: u64) -> Result<bool> {
        if !self.has_blob(d, size) {
            return Ok(false);
        }
        let p = self.blob_path(d);
        let want = d.clone();
        tokio::task::spawn_blocking(move || file_digest(&p).map(|actual| actual == want))
            .await
            .map_err(|e| Error::local(self.blob_path(d), e))?
    }

    /// Makes the renames of blobs into `blobs/<alg>` durable: a pull calls it before it writes
    /// what lists those blobs.
    pub fn sync_blobs(&self, algorithm: &str) -> Result<()> {
        sync_dir(&self.root.join("blobs").join(algorithm))
    }

    /// A temporary path beside the blobs, for a download in progress.
    pub fn temp_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(d.algorithm())
            .join(format!(".{}.partial", d.hex()))
    }

    /// Reads a small blob (manifest, config) whole, verifying its digest.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.blob_path(d);
        let bytes = std::fs::read(&p).map_err(|e| Error::local(&p, e))?;
        let actual = Digest::of(&bytes);
        if &actual != d {
            return Err(Error::DigestMismatch {
                what: p.display().to_string(),
                expected: d.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(bytes)
    }

    /// Writes a small blob (manifest, config) whole, durably; returns its digest. A file
    /// already there is kept only if it holds exactly these bytes.
    pub fn write_blob(&self, bytes: &[u8]) -> Result<Digest> {
        let d = Digest::of(bytes);
        let p = self.blob_path(&d);
        if !self.has_blob(&d, bytes.len() as u64) || std::fs::read(&p).ok().as_deref() != Some(bytes) {
            write_atomic(&p, bytes)?;
        }
        Ok(d)
    }

    fn index(&self) -> Result<serde_json::Value> {
        let p = self.root.join("index.json");
        let text = std::fs::read(&p).map_err(|e| Error::local(&p, e))?;
        serde_json::from_slice(&text).map_err(|e| Error::local(&p, format!("invalid index.json: {e}")))
    }

    /// The manifests the index lists.
    pub fn manifests(&self) -> Result<Vec<Descriptor>> {
        let index = self.index()?;
        let p = self.root.join("index.json");
        serde_json::from_value(index["manifests"].clone())
            .map_err(|e| Error::local(&p, format!("invalid index.json: {e}")))
    }

    /// The manifest named `tag` (its `ref.name` annotation), or the only one when `tag` is
    /// `None`.
    pub fn find(&self, tag: Option<&str>) -> Result<Descriptor> {
        let all = self.manifests()?;
        let name = |d: &Descriptor| d.annotations.as_ref().and_then(|a| a.get(REF_NAME)).cloned();
        match tag {
            Some(t) => all
                .into_iter()
                .find(|d| name(d).as_deref() == Some(t))
                .ok_or_else(|| Error::local(&self.root, format!("no manifest tagged {t:?} in index.json"))),
            None if all.len() == 1 => Ok(all.into_iter().next().expect("one element")),
            None => {
                let tags: Vec<String> = all.iter().filter_map(name).collect();
                Err(Error::Usage(format!(
                    "{} holds {} manifests: pick one with --tag ({})",
                    self.root.display(),
                    all.len(),
                    tags.join(", ")
                )))
            }
        }
    }

    /// Lists `desc` in index.json under `tag`, replacing what had that tag.
    pub fn set_tag(&self, desc: &Descriptor, tag: &str) -> Result<()> {
        let mut index = self.index()?;
        let mut entry = serde_json::to_value(desc).map_err(|e| Error::local(&self.root, e))?;
        entry["annotations"][REF_NAME] = serde_json::json!(tag);
        let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
        let mut kept: Vec<serde_json::Value> = manifests
            .into_iter()
            .filter(|m| m["annotations"][REF_NAME].as_str() != Some(tag))
            .collect();
        kept.push(entry);
        index["manifests"] = serde_json::Value::Array(kept);
        let text = serde_json::to_vec(&index).map_err(|e| Error::local(&self.root, e))?;
        write_atomic(&self.root.join("index.json"), &text)
    }
}

/// Writes `bytes` to `path` durably: through a synced temporary file and a rename, then a sync
/// of the directory, so that after a crash `path` holds the old bytes or the new, and after
/// the return the new ones.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_file(path, bytes)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// [`write_atomic`] without the directory sync: the data is on disk before the name points
/// at it, the rename is durable once the caller syncs the directory.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::local(dir, e))?;
    let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_data()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::local(path, e));
    }
    Ok(())
}

/// Syncs a directory: the names created, renamed or removed in it become durable.
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::local(dir, format!("syncing the directory: {e}")))
}

/// The SHA-256 digest of a file's content, read in large pieces.
fn file_digest(path: &Path) -> Result<Digest> {
    use sha2::Digest as _;
    use std::io::Read as _;
    let mut f = std::fs::File::open(path).map_err(|e| Error::local(path, e))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::local(path, e)),
        }
    }
    Ok(Digest::from_sha256(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_write_tag_find() {
        let dir = tempfile::tempdir().expect("tmp");
        let l = Layout::create(dir.path()).expect("create");
        let d = l.write_blob(b"{}").expect("write");
        assert_eq!(l.read_blob(&d).expect("read"), b"{}");
        let desc = Descriptor {
            media_type: berth_oci::media::OCI_MANIFEST.into(),
            digest: d.clone(),
            size: 2,
            artifact_type: None,
            annotations: None,
            urls: None,
            platform: None,
        };
        l.set_tag(&desc, "v1").expect("tag");
        l.set_tag(&desc, "v2").expect("tag");
        l.set_tag(&desc, "v1").expect("retag");
        let l = Layout::open(dir.path()).expect("open");
        assert_eq!(l.manifests().expect("list").len(), 2);
        assert_eq!(l.find(Some("v2")).expect("find").digest, d);
        assert!(l.find(None).is_err(), "two manifests: a tag is needed");
        std::fs::write(l.blob_path(&d), b"[]").expect("corrupt");
        assert!(matches!(l.read_blob(&d), Err(Error::DigestMismatch { .. })));
    }

    #[tokio::test]
    async fn blobs_found_are_checked_not_trusted() {
        let dir = tempfile::tempdir().expect("tmp");
        let l = Layout::create(dir.path()).expect("create");
        let good = b"a layer's bytes".to_vec();
        let d = Digest::of(&good);
        assert!(
            !l.has_verified_blob(&d, good.len() as u64).await.expect("check"),
            "missing"
        );
        // What a rename before the data reached the disk can leave after a crash: the name,
        // the size, zeros.
        std::fs::write(l.blob_path(&d), vec![0u8; good.len()]).expect("torn");
        assert!(l.has_blob(&d, good.len() as u64), "the size alone looks right");
        assert!(
            !l.has_verified_blob(&d, good.len() as u64).await.expect("check"),
            "zeros"
        );
        std::fs::write(l.blob_path(&d), &good).expect("good");
        assert!(l.has_verified_blob(&d, good.len() as u64).await.expect("check"));
        assert!(!l.has_verified_blob(&d, 1).await.expect("check"), "another size");

        // A small blob written over a torn one of the same size gets its bytes back.
        let manifest = br#"{"schemaVersion":2}"#;
        let md = Digest::of(manifest);
        std::fs::write(l.blob_path(&md), vec![0u8; manifest.len()]).expect("torn");
        assert_eq!(l.write_blob(manifest).expect("write"), md);
        assert_eq!(l.read_blob(&md).expect("read"), manifest);

        // Only names that mean something are left: no temporary files.
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("blobs/sha256"))
            .expect("list")
            .chain(std::fs::read_dir(dir.path()).expect("list"))
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want = vec![
            d.hex().to_owned(),
            md.hex().to_owned(),
            "blobs".into(),
            "index.json".into(),
            "oci-layout".into(),
        ];
        want.sort();
        assert_eq!(names, want);
    }
}
