//! OCI image layouts on disk (image-spec `image-layout.md`): `oci-layout`, `index.json`,
//! `blobs/<alg>/<hex>`. Blobs are written through a temporary file in the same directory and
//! renamed once their digest is verified, so a layout never holds a partial blob under a digest.

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
        std::fs::create_dir_all(root.join("blobs/sha256")).map_err(|e| Error::local(root, e))?;
        if !root.join("oci-layout").exists() {
            write_atomic(&root.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        if !root.join("index.json").exists() {
            let index =
                serde_json::json!({"schemaVersion": 2, "mediaType": berth_oci::media::OCI_INDEX, "manifests": []});
            write_atomic(&root.join("index.json"), index.to_string().as_bytes())?;
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

    /// Writes a small blob (manifest, config) whole; returns its digest.
    pub fn write_blob(&self, bytes: &[u8]) -> Result<Digest> {
        let d = Digest::of(bytes);
        let p = self.blob_path(&d);
        if !self.has_blob(&d, bytes.len() as u64) {
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

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::local(dir, e))?;
    let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    std::fs::write(&tmp, bytes).map_err(|e| Error::local(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::local(path, e))
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
}
