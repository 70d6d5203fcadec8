//! The local content store: every blob an image needs (manifests, configs, compressed
//! layers), by digest, shared by all images on the node.
//!
//! # Layout
//! ```text
//! <root>/content/blobs/sha256/<hex>     committed blobs, never modified
//! <root>/content/ingest/<hex>.<random>  blobs being written; removed on failure
//! ```
//!
//! Invariant: a file under `blobs/` always holds exactly the bytes of its digest. Writers go
//! to `ingest/`, count and hash while writing, and are renamed into place only after size and
//! digest match (like containerd's local content writer's `Commit`). Durability is the
//! caller's choice: a pull writes many blobs and snapshot files and then syncs the filesystem
//! once ([`ContentStore::sync`]) before it records the image, which costs one `syncfs`
//! instead of an `fsync` per file.

use berth_oci::Digest;
use sha2::{Digest as _, Sha256};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Why a content operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The bytes written are not the blob that was announced.
    #[error("content {expected}: got {actual} ({size} bytes){}", expected_size.map(|s| format!(", expected {s} bytes")).unwrap_or_default())]
    Mismatch {
        /// The digest announced.
        expected: Digest,
        /// The digest of what arrived.
        actual: Digest,
        /// Bytes that arrived.
        size: u64,
        /// Bytes announced, when known.
        expected_size: Option<u64>,
    },
    /// No such blob.
    #[error("content {0} is not in the store")]
    NotFound(Digest),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// The content store under `<root>/content`.
#[derive(Debug, Clone)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

impl ContentStore {
    /// Opens (creating) the store under `root`.
    pub fn open(root: &Path) -> Result<ContentStore, Error> {
        let blobs = root.join("content/blobs/sha256");
        let ingest = root.join("content/ingest");
        for d in [&blobs, &ingest] {
            fs::create_dir_all(d).map_err(io_at(d))?;
        }
        Ok(ContentStore { blobs, ingest })
    }

    /// Where the blob `d` lives (whether or not it is there).
    pub fn path(&self, d: &Digest) -> PathBuf {
        self.blobs.join(d.hex())
    }

    /// The size of blob `d`, if present.
    pub fn size(&self, d: &Digest) -> Option<u64> {
        fs::metadata(self.path(d)).ok().filter(|m| m.is_file()).map(|m| m.len())
    }

    /// Reads a whole (small) blob: manifests and configs.
    pub fn read(&self, d: &Digest) -> Result<Vec<u8>, Error> {
        let p = self.path(d);
        match fs::read(&p) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::NotFound(d.clone())),
            Err(e) => Err(io_at(&p)(e)),
        }
    }

    /// Stores `bytes` as blob `d` after checking they are that blob.
    pub fn put(&self, d: &Digest, bytes: &[u8]) -> Result<(), Error> {
        if self.size(d) == Some(bytes.len() as u64) {
            return Ok(());
        }
        let mut w = self.writer(d, Some(bytes.len() as u64))?;
        w.write_all(bytes).map_err(io_at(&w.path))?;
        w.commit()
    }

    /// A writer for blob `expected` of `size` bytes (when known).
    pub fn writer(&self, expected: &Digest, size: Option<u64>) -> Result<Writer, Error> {
        let path = self
            .ingest
            .join(format!("{}.{:016x}", expected.hex(), rand::random::<u64>()));
        let file = File::create_new(&path).map_err(io_at(&path))?;
        Ok(Writer {
            file: Some(file),
            path,
            dest: self.path(expected),
            expected: expected.clone(),
            size,
            hasher: Sha256::new(),
            written: 0,
        })
    }

    /// Removes blob `d` (absent is fine: removal is idempotent).
    pub fn delete(&self, d: &Digest) -> Result<(), Error> {
        let p = self.path(d);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_at(&p)(e)),
            _ => Ok(()),
        }
    }

    /// Every committed blob with its size.
    pub fn list(&self) -> Result<Vec<(Digest, u64)>, Error> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.blobs).map_err(io_at(&self.blobs))? {
            let e = e.map_err(io_at(&self.blobs))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(d) = format!("sha256:{name}").parse::<Digest>() else {
                continue;
            };
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            out.push((d, len));
        }
        Ok(out)
    }

    /// Removes ingest files that no writer owns any more (left by a killed pull).
    /// Only files older than `age` go: a concurrent pull may be writing the younger ones.
    pub fn clean_ingest(&self, age: std::time::Duration) -> Result<u64, Error> {
        let mut freed = 0;
        for e in fs::read_dir(&self.ingest).map_err(io_at(&self.ingest))?.flatten() {
            let Ok(m) = e.metadata() else { continue };
            let old = m
                .modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|a| a > age);
            if old && fs::remove_file(e.path()).is_ok() {
                freed += m.len();
            }
        }
        Ok(freed)
    }

    /// Flushes everything written on this filesystem to disk: one `syncfs` for a whole pull.
    pub fn sync(&self) -> Result<(), Error> {
        let f = File::open(&self.blobs).map_err(io_at(&self.blobs))?;
        nix::unistd::syncfs(&f).map_err(|e| io_at(&self.blobs)(e.into()))
    }
}

/// A blob being written: hashed and counted as it goes; committed only if it is the blob
/// announced. Dropped without commit, it leaves nothing behind.
#[derive(Debug)]
pub struct Writer {
    file: Option<File>,
    path: PathBuf,
    dest: PathBuf,
    expected: Digest,
    size: Option<u64>,
    hasher: Sha256,
    written: u64,
}

impl Writer {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Checks size and digest, then renames the blob into place. A blob already present
    /// (another pull won the race) is success: content addressing makes them identical.
    pub fn commit(mut self) -> Result<(), Error> {
        let actual = Digest::from_sha256(&std::mem::take(&mut self.hasher).finalize());
        if actual != self.expected || self.size.is_some_and(|s| s != self.written) {
            return Err(Error::Mismatch {
                expected: self.expected.clone(),
                actual,
                size: self.written,
                expected_size: self.size,
            });
        }
        self.file.take();
        fs::rename(&self.path, &self.dest).map_err(io_at(&self.dest))?;
        Ok(())
    }
}

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("writer already committed"))?;
        let n = f.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_the_announced_blob_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let d = Digest::of(b"hello");
        cs.put(&d, b"hello").unwrap();
        assert_eq!(cs.read(&d).unwrap(), b"hello");
        assert_eq!(cs.size(&d), Some(5));

        let other = Digest::of(b"other");
        let mut w = cs.writer(&other, Some(5)).unwrap();
        w.write_all(b"wrong").unwrap();
        let err = w.commit().unwrap_err();
        assert!(matches!(err, Error::Mismatch { .. }), "{err}");
        assert!(cs.size(&other).is_none());

        let mut w = cs.writer(&other, None).unwrap();
        w.write_all(b"oth").unwrap();
        drop(w);
        assert_eq!(fs::read_dir(dir.path().join("content/ingest")).unwrap().count(), 0);
        assert_eq!(cs.list().unwrap(), vec![(d.clone(), 5)]);
        cs.delete(&d).unwrap();
        cs.delete(&d).unwrap();
        assert!(matches!(cs.read(&d), Err(Error::NotFound(_))));
    }
}
