//! Applying an image layer (a tar stream, possibly compressed) to a snapshot directory.
//!
//! The layer is unpacked straight into the upper (`fs`) directory of an active snapshot, not
//! through a mounted overlay: no mount is needed while pulling, and the directory ends up
//! exactly as overlayfs expects an upper directory to look, so OCI whiteouts are converted
//! to overlayfs's own form on the way:
//! - `.wh.<name>` becomes a character device 0/0 named `<name>`: overlayfs hides `<name>` in
//!   the layers below;
//! - `.wh..wh..opq` in a directory becomes the xattr `trusted.overlay.opaque=y` on that
//!   directory: overlayfs hides everything below it;
//! - other `.wh..wh.*` names (aufs bookkeeping) are ignored.
//!
//! # Safety
//! A layer comes from a registry and is trusted no further than its digest: the whole point
//! of these rules is that no layer can write outside `dest`, or forge overlayfs metadata.
//! - Paths are normalized (`./a`, `a//b`); a `..` component or an absolute path refuses the
//!   layer. So does a hard link target breaking the same rules.
//! - No parent component of an entry (or of a hard link target) may be a symlink: `a -> /etc`
//!   followed by `a/passwd` refuses the layer instead of writing `/etc/passwd`. The last
//!   component is never followed either: an existing path is removed before an entry takes
//!   its place (a directory over a directory merges).
//! - `trusted.overlay.*` and `user.overlay.*` xattrs in the tar (PAX `SCHILY.xattr.*`) refuse
//!   the layer: they would let a layer forge whiteouts, opaque directories or redirects.
//!
//! - What a layer may write is bounded ([`apply_capped`]): file bytes as they are written
//!   (sparse entries and compression bombs count what they expand to, not what they cost to
//!   download) plus a block per entry, against the smaller of a cap and the free space of the
//!   destination's filesystem less a reserve, so a bomb stops with a one-line error instead of
//!   filling the node's disk.
//!
//! A refused or failed layer leaves a partial directory: the caller removes the snapshot.
//!
//! # Speed
//! This runs on the pull hot path, while the layer downloads. Reads are large and buffered
//! (1 MiB), file data is copied in 256 KiB writes, each directory chain is checked once
//! (a cache of directories known to be real, updated when an entry replaces one), and
//! nothing is fsynced per file: [`sync`] flushes the whole filesystem once per layer with
//! `syncfs(2)`, which costs about the same as one fsync.

use berth_oci::Digest;
use sha2::{Digest as _, Sha256};
use std::borrow::Cow;
use std::collections::BTreeSet;
use std::ffi::{CString, OsStr};
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Buffer between the (compressed) network stream and the decompressor, and between the
/// decompressed stream and the tar reader.
const READ_BUFFER: usize = 1 << 20;
/// Size of each write of file data.
const COPY_BUFFER: usize = 256 << 10;

const WHITEOUT_PREFIX: &str = ".wh.";
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// The default cap on what one layer may unpack to (file bytes plus 512 bytes per entry):
/// far above any real layer (the largest public images' layers are a few GiB), far below a
/// bomb's petabytes.
pub const DEFAULT_MAX_LAYER_SIZE: u64 = 64 << 30;
/// Free space kept on the destination's filesystem when unpacking: at most this, or 5 % of
/// the filesystem if that is less, so that the node can still write its records.
const FREE_SPACE_RESERVE: u64 = 256 << 20;
/// What each entry counts toward the cap besides its data: one tar block, about an inode.
const ENTRY_COST: u64 = 512;

/// What applying a layer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// SHA-256 of the uncompressed tar stream, every byte up to EOF (the end-of-archive
    /// blocks and any padding after them included): the layer's DiffID in the image config.
    pub diff_id: Digest,
    /// Length of the uncompressed stream in bytes.
    pub size: u64,
}

/// Why a layer could not be applied.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum Error {
    /// The layer's media type is not a tar, gzip tar or zstd tar layer.
    #[error("unsupported layer media type {media_type:?}: expected a tar layer, plain, +gzip or +zstd")]
    UnsupportedMediaType {
        /// The media type given.
        media_type: String,
    },
    /// Reading the stream failed: the source, the decompression, or the tar framing.
    #[error("reading the layer: {source}")]
    Read {
        /// The error from the reader.
        #[source]
        source: io::Error,
    },
    /// The layer tries something this unpacker does not allow; nothing more is applied.
    #[error("layer entry {entry:?} refused: {reason}")]
    Refused {
        /// The entry's path as written in the tar.
        entry: String,
        /// What it tried.
        reason: String,
    },
    /// Creating an entry failed.
    #[error("layer entry {entry:?}: {op} {path}: {source}")]
    Entry {
        /// The entry's path as written in the tar.
        entry: String,
        /// What was being done (`create`, `write`, `chown`, …).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The layer unpacks to more than the cap allows.
    #[error("layer unpacks to more than the cap of {cap} bytes (raise it with --max-layer-size)")]
    TooLarge {
        /// The cap, in bytes.
        cap: u64,
    },
    /// The layer unpacks to more than the destination's filesystem has free.
    #[error("not enough free space in {}: the layer needs more than the {free} bytes free (besides a reserve of {reserve})", path.display())]
    NoSpace {
        /// The destination.
        path: PathBuf,
        /// Bytes that were free when unpacking began.
        free: u64,
        /// Bytes kept free.
        reserve: u64,
    },
    /// An operation on the destination itself failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn read_err(source: io::Error) -> Error {
    Error::Read { source }
}

/// Wraps the compressed layer `r` in the decompressor its media type calls for.
///
/// Gzip: OCI `…tar+gzip` and docker's `…tar.gzip`, decoded as multi-member (some tools
/// write several gzip members). Zstd: `…tar+zstd` (and `…tar.zstd`), every frame decoded,
/// skippable frames skipped. Plain: `…tar`. Anything else (`+encrypted`, a config, an
/// artifact) is refused rather than guessed at.
pub fn decompressor<'a, R: Read + 'a>(media_type: &str, r: R) -> Result<Box<dyn Read + 'a>, Error> {
    let base = media_type.split(';').next().unwrap_or_default().trim();
    if base.ends_with("tar+gzip") || base.ends_with("tar.gzip") {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(
            BufReader::with_capacity(READ_BUFFER, r),
        )))
    } else if base.ends_with("tar+zstd") || base.ends_with("tar.zstd") {
        Ok(Box::new(ZstdFrames::new(BufReader::with_capacity(READ_BUFFER, r))))
    } else if base.ends_with(".tar") {
        Ok(Box::new(r))
    } else {
        Err(Error::UnsupportedMediaType {
            media_type: media_type.to_owned(),
        })
    }
}

/// Decodes a stream of zstd frames. ruzstd's `StreamingDecoder` stops after one frame, and
/// the zstd format (and `zstd:chunked` layers) allow many, with skippable frames between.
struct ZstdFrames<R: BufRead> {
    source: R,
    decoder: ruzstd::decoding::FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> ZstdFrames<R> {
    fn new(source: R) -> Self {
        ZstdFrames {
            source,
            decoder: ruzstd::decoding::FrameDecoder::new(),
            in_frame: false,
        }
    }
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
        use ruzstd::decoding::BlockDecodingStrategy;
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.in_frame {
                while self.decoder.can_collect() < buf.len() && !self.decoder.is_finished() {
                    let wanted = buf.len() - self.decoder.can_collect();
                    self.decoder
                        .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBytes(wanted))
                        .map_err(io::Error::other)?;
                }
                let n = self.decoder.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                if self.decoder.is_finished() && self.decoder.can_collect() == 0 {
                    self.in_frame = false;
                }
                continue;
            }
            if self.source.fill_buf()?.is_empty() {
                return Ok(0);
            }
            match self.decoder.reset(&mut self.source) {
                Ok(()) => self.in_frame = true,
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame { length, .. })) => {
                    let skipped = io::copy(&mut (&mut self.source).take(u64::from(length)), &mut io::sink())?;
                    if skipped != u64::from(length) {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "truncated zstd skippable frame",
                        ));
                    }
                }
                Err(e) => return Err(io::Error::other(e)),
            }
        }
    }
}

/// Hashes and counts everything read through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// Applies the uncompressed layer `layer` (see [`decompressor`]) to `dest`, an empty
/// snapshot upper directory, and returns its DiffID. The stream is read to EOF.
///
/// Must run as root (device nodes, ownership, `trusted.*` xattrs). Blocking: call it from
/// `spawn_blocking`. Nothing is synced: call [`sync`] before committing the snapshot.
/// Bounded by [`DEFAULT_MAX_LAYER_SIZE`]; see [`apply_capped`].
pub fn apply<R: Read>(layer: R, dest: &Path) -> Result<Applied, Error> {
    apply_capped(layer, dest, DEFAULT_MAX_LAYER_SIZE)
}

/// [`apply`], refusing the layer ([`Error::TooLarge`], [`Error::NoSpace`]) as soon as what it
/// wrote (file bytes plus 512 per entry) passes `cap` or the free space `dest`'s filesystem
/// had at the start less a reserve (256 MiB, or 5 % of a smaller filesystem). Layers pulled
/// in parallel each see the whole free space; the reserve is what keeps them apart.
pub fn apply_capped<R: Read>(layer: R, dest: &Path, cap: u64) -> Result<Applied, Error> {
    match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::Io {
                op: "apply a layer to",
                path: dest.to_owned(),
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            })
        }
        Err(source) => {
            return Err(Error::Io {
                op: "apply a layer to",
                path: dest.to_owned(),
                source,
            })
        }
    }
    let hashing = Hashing {
        inner: layer,
        hasher: Sha256::new(),
        size: 0,
    };
    let mut archive = tar::Archive::new(BufReader::with_capacity(READ_BUFFER, hashing));
    let mut applier = Applier::new(dest, Budget::new(dest, cap)?);
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        applier.entry(&mut entry)?;
    }
    applier.finish()?;
    // The tar reader stops at the end-of-archive blocks; the DiffID covers what follows too.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(read_err)?;
    let hashing = rest.into_inner();
    Ok(Applied {
        diff_id: Digest::from_sha256(hashing.hasher.finalize().as_slice()),
        size: hashing.size,
    })
}

/// Flushes everything written to `dest`'s filesystem (`syncfs(2)`): once per layer, before
/// the snapshot is committed, instead of an fsync per file.
pub fn sync(dest: &Path) -> Result<(), Error> {
    let dir = File::open(dest).map_err(|source| Error::Io {
        op: "open",
        path: dest.to_owned(),
        source,
    })?;
    nix::unistd::syncfs(&dir).map_err(|e| Error::Io {
        op: "syncfs",
        path: dest.to_owned(),
        source: e.into(),
    })
}

/// How much a layer may still write, and why it may not write more.
struct Budget {
    dest: PathBuf,
    cap: u64,
    free: u64,
    reserve: u64,
    /// min(cap, free − reserve).
    limit: u64,
    used: u64,
}

impl Budget {
    fn new(dest: &Path, cap: u64) -> Result<Budget, Error> {
        let st = nix::sys::statvfs::statvfs(dest).map_err(|e| Error::Io {
            op: "statvfs",
            path: dest.to_owned(),
            source: e.into(),
        })?;
        let frsize = st.fragment_size() as u64;
        let free = (st.blocks_available() as u64).saturating_mul(frsize);
        let total = (st.blocks() as u64).saturating_mul(frsize);
        let reserve = FREE_SPACE_RESERVE.min(total / 20);
        Ok(Budget {
            dest: dest.to_owned(),
            cap,
            free,
            reserve,
            limit: cap.min(free.saturating_sub(reserve)),
            used: 0,
        })
    }

    /// Counts `n` more bytes; fails once the total passes the limit.
    fn spend(&mut self, n: u64) -> Result<(), Error> {
        self.used = self.used.saturating_add(n);
        if self.used <= self.limit {
            return Ok(());
        }
        if self.limit == self.cap {
            Err(Error::TooLarge { cap: self.cap })
        } else {
            Err(Error::NoSpace {
                path: self.dest.clone(),
                free: self.free,
                reserve: self.reserve,
            })
        }
    }
}

/// Ownership, mode, times and xattrs of an entry, from its header and PAX records.
struct Attrs {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: (i64, u32),
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Attrs {
    fn timespec(&self) -> nix::sys::time::TimeSpec {
        nix::sys::time::TimeSpec::new(self.mtime.0, i64::from(self.mtime.1))
    }
}

/// Parses a PAX time (`1700000000.123456789`, possibly negative) into seconds and nanoseconds.
fn parse_pax_time(value: &str) -> Option<(i64, u32)> {
    let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
    let secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nanos: u32 = digits.parse().ok()?;
    // -1.5 means 1.5 s before the epoch: -2 s + 0.5 s.
    if value.starts_with('-') && nanos > 0 {
        return Some((secs - 1, 1_000_000_000 - nanos));
    }
    Some((secs, nanos))
}

enum Mkdir {
    Created,
    Merged,
}

/// The state of one layer being applied.
struct Applier<'d> {
    dest: &'d Path,
    /// Directories (relative to `dest`) known to be real directories, not symlinks: every
    /// parent component in here needs no check. Entries are removed when replaced.
    dirs: BTreeSet<PathBuf>,
    /// Directory mtimes, applied last, since creating their children changes them.
    dir_times: Vec<(PathBuf, nix::sys::time::TimeSpec)>,
    buffer: Vec<u8>,
    budget: Budget,
}

impl<'d> Applier<'d> {
    fn new(dest: &'d Path, budget: Budget) -> Self {
        Applier {
            dest,
            budget,
            dirs: BTreeSet::new(),
            dir_times: Vec::new(),
            buffer: vec![0; COPY_BUFFER],
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), Error> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink()
        {
            return Ok(());
        }
        self.budget.spend(ENTRY_COST)?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let refuse = |reason: String| Error::Refused {
            entry: name.clone(),
            reason,
        };
        let rel = normalize(Path::new(OsStr::from_bytes(&raw))).map_err(|r| refuse(format!("its path {r}")))?;
        let attrs = self.attrs(entry, &name)?;

        // Old tars mark directories as regular files whose name ends in '/'.
        let is_dir = kind.is_dir() || (kind == tar::EntryType::Regular && raw.ends_with(b"/"));
        let file_name = rel.file_name().map(OsStrExt::as_bytes).unwrap_or_default();
        if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            let parent = rel.parent().unwrap_or(Path::new(""));
            self.ensure_dirs(parent, true, &name)?;
            if file_name == WHITEOUT_OPAQUE.as_bytes() {
                let dir = self.dest.join(parent);
                return set_xattr(&dir, OPAQUE_XATTR, b"y").map_err(entry_err(&name, "set opaque xattr on", &dir));
            }
            if file_name.starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
                tracing::debug!(entry = %name, "ignoring whiteout metadata entry");
                return Ok(());
            }
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(refuse(format!("whiteout of {:?}", String::from_utf8_lossy(hidden))));
            }
            let target = parent.join(OsStr::from_bytes(hidden));
            return self.whiteout(&target, &attrs, &name);
        }

        if rel.as_os_str().is_empty() {
            // "./": the layer's root directory itself.
            if !is_dir {
                return Err(refuse("a non-directory entry names the layer root".into()));
            }
            return self.directory_attrs(&rel, &attrs, &name);
        }
        if let Some(parent) = rel.parent() {
            self.ensure_dirs(parent, true, &name)?;
        }
        let full = self.dest.join(&rel);
        match kind {
            _ if is_dir => {
                if let Mkdir::Created = self.mkdir(&rel, &full, &name)? {
                    self.dirs.insert(rel.clone());
                }
                self.directory_attrs(&rel, &attrs, &name)
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.file(entry, &rel, &full, &attrs, &name)
            }
            tar::EntryType::Symlink => {
                let target = link_target(entry).ok_or_else(|| refuse("symlink without a target".into()))?;
                self.replacing(&rel, &full, &name, "symlink", |p| {
                    std::os::unix::fs::symlink(&target, p)
                })?;
                self.owner_and_xattrs(&full, &attrs, &name, false)?;
                self.set_times(&full, &attrs, &name)
            }
            tar::EntryType::Link => {
                let target = link_target(entry).ok_or_else(|| refuse("hard link without a target".into()))?;
                let target = normalize(&target).map_err(|r| refuse(format!("its hard link target {r}")))?;
                if target.as_os_str().is_empty() || target == rel {
                    return Err(refuse(format!("hard link to {:?}", target.display().to_string())));
                }
                if let Some(parent) = target.parent() {
                    self.ensure_dirs(parent, false, &name)?;
                }
                let source = self.dest.join(&target);
                match fs::symlink_metadata(&source) {
                    Ok(m) if m.is_dir() => return Err(refuse("hard link to a directory".into())),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(refuse(format!(
                            "hard link target {:?} is not in the layer before it",
                            target.display().to_string()
                        )))
                    }
                    Err(e) => return Err(entry_err(&name, "stat", &source)(e)),
                }
                self.replacing(&rel, &full, &name, "link", |p| fs::hard_link(&source, p))
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                use nix::sys::stat::{makedev, mknod, Mode, SFlag};
                let header = entry.header();
                let (major, minor) = match (kind, header.device_major(), header.device_minor()) {
                    // A FIFO has no device; some writers leave the fields empty.
                    (tar::EntryType::Fifo, _, _) => (0, 0),
                    (_, Ok(major), Ok(minor)) => (major.unwrap_or(0), minor.unwrap_or(0)),
                    _ => return Err(refuse("unreadable device numbers".into())),
                };
                let sflag = match kind {
                    tar::EntryType::Char => SFlag::S_IFCHR,
                    tar::EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let dev = makedev(major.into(), minor.into());
                self.replacing(&rel, &full, &name, "mknod", |p| {
                    mknod(p, sflag, Mode::from_bits_truncate(0o600), dev).map_err(io::Error::from)
                })?;
                self.owner_and_xattrs(&full, &attrs, &name, true)?;
                self.set_times(&full, &attrs, &name)
            }
            other => Err(refuse(format!("unsupported entry type {other:?}"))),
        }
    }

    /// Reads ownership, mode, mtime and xattrs, PAX records overriding the header.
    fn attrs<R: Read>(&self, entry: &mut tar::Entry<'_, R>, name: &str) -> Result<Attrs, Error> {
        let refuse = |reason: String| Error::Refused {
            entry: name.to_owned(),
            reason,
        };
        let header = entry.header();
        let old = header.as_old();
        // Some writers leave a numeric field empty (all NUL or spaces), which tar readers
        // (GNU tar, Go's archive/tar) take as 0; the tar crate reports it as an error.
        let number = |v: io::Result<u64>, field: &[u8], what: &str| {
            v.ok()
                .or_else(|| field.iter().all(|b| *b == 0 || *b == b' ').then_some(0))
                .ok_or_else(|| refuse(format!("unreadable {what}")))
        };
        let id = |v: u64, what: &str| u32::try_from(v).map_err(|_| refuse(format!("{what} {v} out of range")));
        let mut attrs = Attrs {
            uid: id(number(header.uid(), &old.uid, "uid")?, "uid")?,
            gid: id(number(header.gid(), &old.gid, "gid")?, "gid")?,
            mode: number(header.mode().map(u64::from), &old.mode, "mode")? as u32 & 0o7777,
            mtime: (
                i64::try_from(number(header.mtime(), &old.mtime, "mtime")?)
                    .map_err(|_| refuse("mtime out of range".into()))?,
                0,
            ),
            xattrs: Vec::new(),
        };
        let Some(pax) = entry.pax_extensions().map_err(read_err)? else {
            return Ok(attrs);
        };
        for ext in pax {
            let ext = ext.map_err(read_err)?;
            let Ok(key) = ext.key() else { continue };
            let value = || ext.value().ok().map(str::trim);
            match key {
                "uid" => {
                    attrs.uid = value()
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| refuse("bad PAX uid".into()))?
                }
                "gid" => {
                    attrs.gid = value()
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| refuse("bad PAX gid".into()))?
                }
                "mtime" => {
                    attrs.mtime = value()
                        .and_then(parse_pax_time)
                        .ok_or_else(|| refuse("bad PAX mtime".into()))?
                }
                _ => {
                    if let Some(xattr) = key.strip_prefix(PAX_XATTR_PREFIX) {
                        if xattr.starts_with("trusted.overlay.") || xattr.starts_with("user.overlay.") {
                            return Err(refuse(format!(
                                "it carries the overlayfs xattr {xattr:?}, which could forge whiteouts or opaque directories"
                            )));
                        }
                        attrs.xattrs.push((xattr.to_owned(), ext.value_bytes().to_vec()));
                    }
                }
            }
        }
        Ok(attrs)
    }

    /// Checks that every component of `dir` (relative to dest) is a real directory, never a
    /// symlink; missing ones are created when `create` (tars may omit parent entries).
    fn ensure_dirs(&mut self, dir: &Path, create: bool, name: &str) -> Result<(), Error> {
        if dir.as_os_str().is_empty() || self.dirs.contains(dir) {
            return Ok(());
        }
        let mut current = PathBuf::new();
        for component in dir.components() {
            current.push(component);
            if self.dirs.contains(&current) {
                continue;
            }
            let full = self.dest.join(&current);
            let shown = || current.display().to_string();
            match fs::symlink_metadata(&full) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(Error::Refused {
                        entry: name.to_owned(),
                        reason: format!(
                            "its parent {:?} is a symlink, which could lead outside the layer",
                            shown()
                        ),
                    })
                }
                Ok(_) => {
                    return Err(Error::Refused {
                        entry: name.to_owned(),
                        reason: format!("its parent {:?} is not a directory", shown()),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    DirBuilder::new()
                        .mode(0o755)
                        .create(&full)
                        .map_err(entry_err(name, "create", &full))?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(Error::Refused {
                        entry: name.to_owned(),
                        reason: format!("{:?} is not in the layer before it", shown()),
                    })
                }
                Err(e) => return Err(entry_err(name, "stat", &full)(e)),
            }
            self.dirs.insert(current.clone());
        }
        Ok(())
    }

    /// Removes whatever is at `rel` (a directory with everything in it) and forgets the
    /// directories that went with it.
    fn remove(&mut self, rel: &Path, full: &Path, name: &str) -> Result<(), Error> {
        match fs::symlink_metadata(full) {
            Ok(m) if m.is_dir() => {
                fs::remove_dir_all(full).map_err(entry_err(name, "remove", full))?;
                let gone: Vec<PathBuf> = self
                    .dirs
                    .range(rel.to_path_buf()..)
                    .take_while(|d| d.starts_with(rel))
                    .cloned()
                    .collect();
                for d in gone {
                    self.dirs.remove(&d);
                }
                Ok(())
            }
            Ok(_) => fs::remove_file(full).map_err(entry_err(name, "remove", full)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(entry_err(name, "stat", full)(e)),
        }
    }

    /// Runs `create`, which must not follow or overwrite an existing path; if the path
    /// exists, removes it and tries once more.
    fn replacing<T>(
        &mut self,
        rel: &Path,
        full: &Path,
        name: &str,
        op: &'static str,
        mut create: impl FnMut(&Path) -> io::Result<T>,
    ) -> Result<T, Error> {
        match create(full) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove(rel, full, name)?;
                create(full).map_err(entry_err(name, op, full))
            }
            other => other.map_err(entry_err(name, op, full)),
        }
    }

    fn mkdir(&mut self, rel: &Path, full: &Path, name: &str) -> Result<Mkdir, Error> {
        match DirBuilder::new().mode(0o755).create(full) {
            Ok(()) => Ok(Mkdir::Created),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match fs::symlink_metadata(full) {
                Ok(m) if m.is_dir() => Ok(Mkdir::Merged),
                _ => {
                    self.remove(rel, full, name)?;
                    DirBuilder::new()
                        .mode(0o755)
                        .create(full)
                        .map_err(entry_err(name, "create", full))?;
                    Ok(Mkdir::Created)
                }
            },
            Err(e) => Err(entry_err(name, "create", full)(e)),
        }
    }

    fn directory_attrs(&mut self, rel: &Path, attrs: &Attrs, name: &str) -> Result<(), Error> {
        let full = self.dest.join(rel);
        self.owner_and_xattrs(&full, attrs, name, true)?;
        self.dir_times.push((full, attrs.timespec()));
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        rel: &Path,
        full: &Path,
        attrs: &Attrs,
        name: &str,
    ) -> Result<(), Error> {
        let mut file = self.replacing(rel, full, name, "create", |p| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(p)
        })?;
        loop {
            let n = match entry.read(&mut self.buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_err(e)),
            };
            // Counted before it is written: a bomb stops at the cap, not one buffer past it.
            self.budget.spend(n as u64)?;
            file.write_all(&self.buffer[..n])
                .map_err(entry_err(name, "write", full))?;
        }
        // chown before chmod: chown clears setuid/setgid.
        std::os::unix::fs::fchown(&file, Some(attrs.uid), Some(attrs.gid)).map_err(entry_err(name, "chown", full))?;
        file.set_permissions(Permissions::from_mode(attrs.mode))
            .map_err(entry_err(name, "chmod", full))?;
        self.xattrs(full, attrs, name)?;
        let t = attrs.timespec();
        nix::sys::stat::futimens(&file, &t, &t).map_err(|e| entry_err(name, "set times of", full)(e.into()))
    }

    fn whiteout(&mut self, rel: &Path, attrs: &Attrs, name: &str) -> Result<(), Error> {
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        let full = self.dest.join(rel);
        self.replacing(rel, &full, name, "create whiteout", |p| {
            mknod(p, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(io::Error::from)
        })?;
        std::os::unix::fs::lchown(&full, Some(attrs.uid), Some(attrs.gid)).map_err(entry_err(name, "chown", &full))
    }

    /// lchown, then (unless a symlink) chmod, then xattrs: in that order because chown
    /// clears setuid bits and `security.capability`.
    fn owner_and_xattrs(&self, full: &Path, attrs: &Attrs, name: &str, chmod: bool) -> Result<(), Error> {
        std::os::unix::fs::lchown(full, Some(attrs.uid), Some(attrs.gid)).map_err(entry_err(name, "chown", full))?;
        if chmod {
            // `full` is a directory or node this layer just made, never a symlink.
            fs::set_permissions(full, Permissions::from_mode(attrs.mode)).map_err(entry_err(name, "chmod", full))?;
        }
        self.xattrs(full, attrs, name)
    }

    fn xattrs(&self, full: &Path, attrs: &Attrs, name: &str) -> Result<(), Error> {
        for (key, value) in &attrs.xattrs {
            if let Err(e) = set_xattr(full, key, value) {
                match e.raw_os_error() {
                    // The filesystem or the security module does not take this one (e.g.
                    // security.selinux without SELinux): the file is still usable.
                    Some(libc::ENOTSUP) | Some(libc::EPERM) => {
                        tracing::debug!(entry = %name, xattr = %key, error = %e, "xattr not supported here; skipped")
                    }
                    _ => return Err(entry_err(name, "set xattr on", full)(e)),
                }
            }
        }
        Ok(())
    }

    fn set_times(&self, full: &Path, attrs: &Attrs, name: &str) -> Result<(), Error> {
        let t = attrs.timespec();
        lutimens(full, t).map_err(entry_err(name, "set times of", full))
    }

    /// Directory mtimes, now that nothing more is written inside them.
    fn finish(self) -> Result<(), Error> {
        for (dir, t) in self.dir_times.iter().rev() {
            lutimens(dir, *t).map_err(|source| Error::Io {
                op: "set times of",
                path: dir.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

fn lutimens(path: &Path, t: nix::sys::time::TimeSpec) -> io::Result<()> {
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

fn entry_err<'a>(name: &'a str, op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Entry {
        entry: name.to_owned(),
        op,
        path: path.to_owned(),
        source,
    }
}

fn link_target<R: Read>(entry: &tar::Entry<'_, R>) -> Option<PathBuf> {
    let bytes: Cow<'_, [u8]> = entry.link_name_bytes()?;
    if bytes.is_empty() {
        return None;
    }
    Some(PathBuf::from(OsStr::from_bytes(&bytes)))
}

/// The path relative to the layer root: `.` components and repeated slashes dropped;
/// absolute paths and `..` refused (with the reason, for the error).
fn normalize(path: &Path) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            Component::ParentDir => return Err("contains a `..` component"),
            Component::RootDir | Component::Prefix(_) => return Err("is absolute"),
        }
    }
    Ok(out)
}

/// `lsetxattr(2)`: sets an xattr on `path` itself, never on what a symlink points to.
#[allow(unsafe_code)]
fn set_xattr(path: &Path, key: &str, value: &[u8]) -> io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes())?;
    let key = CString::new(key)?;
    // SAFETY: both strings are NUL-terminated and live across the call; `value` is a valid
    // slice whose pointer and length are passed together; the call writes no memory of ours.
    let rc = unsafe { libc::lsetxattr(path.as_ptr(), key.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
pub(crate) mod test_layers {
    //! Builds layer tars in tests.
    use std::io::Write;

    /// One entry of a test layer.
    pub enum E<'a> {
        Dir(&'a str, u32),
        File(&'a str, &'a [u8], u32),
        Symlink(&'a str, &'a str),
        Link(&'a str, &'a str),
        /// A file with PAX records.
        PaxFile(&'a str, &'a [u8], Vec<(&'a str, &'a [u8])>),
    }

    /// A tar of `entries`, owned by 1000:1000 (files) with mtime 1_600_000_000.
    pub fn tar(entries: &[E<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(1_600_000_000);
            h.set_uid(1000);
            h.set_gid(1000);
            match e {
                E::Dir(p, mode) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*mode);
                    h.set_size(0);
                    b.append_data(&mut h, p, &[][..]).unwrap();
                }
                E::File(p, data, mode) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, p, *data).unwrap();
                }
                E::Symlink(p, target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, p, target).unwrap();
                }
                E::Link(p, target) => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_mode(0o644);
                    h.set_size(0);
                    b.append_link(&mut h, p, target).unwrap();
                }
                E::PaxFile(p, data, pax) => {
                    b.append_pax_extensions(pax.iter().map(|(k, v)| (*k, *v))).unwrap();
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, p, *data).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    /// A raw ustar header block for `name` (bypassing the Builder's own path checks, which
    /// refuse `..` and absolute paths), followed by `data` padded to 512 bytes.
    pub fn raw_entry(out: &mut Vec<u8>, name: &str, kind: tar::EntryType, link: &str, data: &[u8]) {
        let mut h = tar::Header::new_ustar();
        {
            let u = h.as_ustar_mut().unwrap();
            u.name[..name.len()].copy_from_slice(name.as_bytes());
            u.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        out.write_all(h.as_bytes()).unwrap();
        out.write_all(data).unwrap();
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    /// An old-GNU sparse entry (`S`) of `real_size` bytes whose only data, `data`, sits at
    /// its end: a few hundred bytes in the tar that expand to `real_size` on disk.
    pub fn sparse_entry(out: &mut Vec<u8>, name: &str, real_size: u64, data: &[u8]) {
        fn octal(field: &mut [u8; 12], v: u64) {
            field.copy_from_slice(format!("{v:011o}\0").as_bytes());
        }
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        h.set_mtime(1_600_000_000);
        {
            let g = h.as_gnu_mut().unwrap();
            octal(&mut g.sparse[0].offset, real_size - data.len() as u64);
            octal(&mut g.sparse[0].numbytes, data.len() as u64);
            octal(&mut g.realsize, real_size);
        }
        h.set_cksum();
        out.write_all(h.as_bytes()).unwrap();
        out.write_all(data).unwrap();
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    /// The end-of-archive marker.
    pub fn end(out: &mut Vec<u8>) {
        out.resize(out.len() + 1024, 0);
    }

    /// Reads an xattr (for checks).
    #[allow(unsafe_code)]
    pub fn get_xattr(path: &std::path::Path, key: &str) -> Option<Vec<u8>> {
        use std::os::unix::ffi::OsStrExt;
        let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        let k = std::ffi::CString::new(key).unwrap();
        let mut buf = vec![0u8; 4096];
        // SAFETY: NUL-terminated strings and a buffer whose length is passed with it.
        let n = unsafe { libc::lgetxattr(p.as_ptr(), k.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return None;
        }
        buf.truncate(n as usize);
        Some(buf)
    }

    /// Whether we can do what unpacking needs (root); under CI=true, not being root fails.
    pub fn root_or_skip() -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        if berth_conformance::peers::under_ci() {
            panic!("this test needs root (mknod, chown, trusted.* xattrs, mount) and CI=true demands it");
        }
        eprintln!("SKIP: not root (set CI=true to make this a failure)");
        false
    }
}

#[cfg(test)]
mod tests {
    use super::test_layers::{end, get_xattr, raw_entry, root_or_skip, sparse_entry, tar, E};
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    fn apply_bytes(data: &[u8]) -> (tempfile::TempDir, Result<Applied, Error>) {
        let dir = tempfile::tempdir().unwrap();
        let r = apply(data, dir.path());
        (dir, r)
    }

    fn refused(r: Result<Applied, Error>, entry: &str, reason_part: &str) {
        match r {
            Err(Error::Refused { entry: e, reason }) => {
                assert_eq!(e, entry, "reason: {reason}");
                assert!(reason.contains(reason_part), "reason {reason:?} lacks {reason_part:?}");
            }
            other => panic!("expected refusal of {entry}, got {other:?}"),
        }
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        if !root_or_skip() {
            return;
        }
        let data = tar(&[
            E::Dir("etc/", 0o755),
            E::File("etc/.wh.passwd", b"", 0o644),
            E::Dir("var/", 0o755),
            E::File("var/.wh..wh..opq", b"", 0o644),
            E::File("var/.wh..wh.plnk", b"", 0o644),
            // a whiteout whose directory has no entry of its own
            E::File("usr/lib/.wh.x", b"", 0o644),
        ]);
        let (dir, r) = apply_bytes(&data);
        r.unwrap();
        let wh = fs::symlink_metadata(dir.path().join("etc/passwd")).unwrap();
        assert!(wh.file_type().is_char_device());
        assert_eq!(wh.rdev(), 0);
        assert!(!dir.path().join("etc/.wh.passwd").exists());
        assert_eq!(
            get_xattr(&dir.path().join("var"), "trusted.overlay.opaque").as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(
            fs::read_dir(dir.path().join("var")).unwrap().count(),
            0,
            "markers are not files"
        );
        assert!(fs::symlink_metadata(dir.path().join("usr/lib/x"))
            .unwrap()
            .file_type()
            .is_char_device());
    }

    #[test]
    fn files_links_modes_owners_and_times_are_kept() {
        if !root_or_skip() {
            return;
        }
        let data = tar(&[
            E::Dir("./", 0o755),
            E::Dir("./bin/", 0o711),
            E::File("./bin/su", b"#!/bin/sh\n", 0o4755),
            E::Dir("tmp/", 0o1777),
            E::File("bin/sh", b"shell", 0o755),
            E::Link("bin/ash", "bin/sh"),
            E::Symlink("bin/dash", "/bin/sh"),
            E::PaxFile(
                "data",
                b"x",
                vec![("SCHILY.xattr.user.note", b"hello"), ("mtime", b"1500000000.25")],
            ),
        ]);
        let (dir, r) = apply_bytes(&data);
        let applied = r.unwrap();
        assert_eq!(applied.size, data.len() as u64);
        assert_eq!(applied.diff_id, Digest::of(&data));
        let root = dir.path();
        let su = fs::symlink_metadata(root.join("bin/su")).unwrap();
        assert_eq!(su.mode() & 0o7777, 0o4755, "setuid kept");
        assert_eq!((su.uid(), su.gid()), (1000, 1000));
        assert_eq!(su.mtime(), 1_600_000_000);
        assert_eq!(
            fs::symlink_metadata(root.join("tmp")).unwrap().mode() & 0o7777,
            0o1777,
            "sticky kept"
        );
        let bin = fs::symlink_metadata(root.join("bin")).unwrap();
        assert_eq!(bin.mode() & 0o7777, 0o711);
        assert_eq!(bin.mtime(), 1_600_000_000, "directory mtime set after its children");
        let sh = fs::symlink_metadata(root.join("bin/sh")).unwrap();
        let ash = fs::symlink_metadata(root.join("bin/ash")).unwrap();
        assert_eq!(sh.ino(), ash.ino(), "hard link");
        assert_eq!(sh.nlink(), 2);
        let dash = fs::symlink_metadata(root.join("bin/dash")).unwrap();
        assert!(dash.file_type().is_symlink());
        assert_eq!(fs::read_link(root.join("bin/dash")).unwrap(), Path::new("/bin/sh"));
        assert_eq!(dash.mtime(), 1_600_000_000, "symlink's own mtime");
        assert_eq!((dash.uid(), dash.gid()), (1000, 1000));
        let data_m = fs::symlink_metadata(root.join("data")).unwrap();
        assert_eq!(
            (data_m.mtime(), data_m.mtime_nsec()),
            (1_500_000_000, 250_000_000),
            "PAX mtime"
        );
        assert_eq!(
            get_xattr(&root.join("data"), "user.note").as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(fs::read(root.join("bin/sh")).unwrap(), b"shell");
    }

    #[test]
    fn devices_fifos_and_empty_numeric_fields() {
        if !root_or_skip() {
            return;
        }
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, major, minor) in [
            ("dev/null", tar::EntryType::Char, 1, 3),
            ("dev/loop0", tar::EntryType::Block, 7, 0),
            ("run/fifo", tar::EntryType::Fifo, 0, 0),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(0o666);
            h.set_uid(0);
            h.set_gid(5);
            h.set_mtime(1_600_000_000);
            h.set_size(0);
            h.set_device_major(major).unwrap();
            h.set_device_minor(minor).unwrap();
            b.append_data(&mut h, path, &[][..]).unwrap();
        }
        let mut data = b.into_inner().unwrap();
        data.truncate(data.len() - 1024);
        // A header whose uid, gid and mtime fields were left empty: read as 0.
        let mut h = tar::Header::new_ustar();
        h.set_path("empty-fields").unwrap();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o640);
        h.set_size(0);
        h.set_cksum();
        data.extend_from_slice(h.as_bytes());
        end(&mut data);

        let (dir, r) = apply_bytes(&data);
        r.unwrap();
        let null = fs::symlink_metadata(dir.path().join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
        assert_eq!((null.mode() & 0o7777, null.gid()), (0o666, 5));
        let lp = fs::symlink_metadata(dir.path().join("dev/loop0")).unwrap();
        assert!(lp.file_type().is_block_device());
        assert_eq!(lp.rdev(), nix::sys::stat::makedev(7, 0));
        assert!(fs::symlink_metadata(dir.path().join("run/fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        let e = fs::symlink_metadata(dir.path().join("empty-fields")).unwrap();
        assert_eq!((e.uid(), e.gid(), e.mtime(), e.mode() & 0o7777), (0, 0, 0, 0o640));
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        if !root_or_skip() {
            return;
        }
        let data = tar(&[
            E::Dir("d/", 0o755),
            E::File("d/f", b"old", 0o644),
            E::File("d/f", b"new", 0o600),
            E::Dir("d/", 0o700),
            E::Symlink("s", "d"),
            E::File("s", b"file now", 0o644),
            E::Dir("x/", 0o755),
            E::File("x/inner", b"", 0o644),
            E::File("x", b"x is a file", 0o644),
        ]);
        let (dir, r) = apply_bytes(&data);
        r.unwrap();
        let root = dir.path();
        assert_eq!(fs::read(root.join("d/f")).unwrap(), b"new");
        assert_eq!(
            fs::symlink_metadata(root.join("d")).unwrap().mode() & 0o7777,
            0o700,
            "dir over dir merges"
        );
        assert_eq!(
            fs::read(root.join("s")).unwrap(),
            b"file now",
            "a symlink is replaced, not followed"
        );
        assert_eq!(fs::read(root.join("x")).unwrap(), b"x is a file");
    }

    #[test]
    fn dotdot_is_refused() {
        let mut data = Vec::new();
        raw_entry(&mut data, "a/../../x", tar::EntryType::Regular, "", b"evil");
        end(&mut data);
        let (_dir, r) = apply_bytes(&data);
        refused(r, "a/../../x", "`..`");
    }

    #[test]
    fn absolute_path_is_refused() {
        let mut data = Vec::new();
        raw_entry(&mut data, "/etc/evil", tar::EntryType::Regular, "", b"evil");
        end(&mut data);
        let (_dir, r) = apply_bytes(&data);
        refused(r, "/etc/evil", "absolute");
    }

    #[test]
    fn symlinked_parent_is_refused() {
        if !root_or_skip() {
            return;
        }
        let outside = tempfile::tempdir().unwrap();
        let data = tar(&[
            E::Symlink("a", outside.path().to_str().unwrap()),
            E::File("a/passwd", b"evil", 0o644),
        ]);
        let (_dir, r) = apply_bytes(&data);
        refused(r, "a/passwd", "symlink");
        assert!(
            !outside.path().join("passwd").exists(),
            "nothing written through the symlink"
        );

        // The same through a relative symlink and a deeper path.
        let data = tar(&[
            E::Dir("d/", 0o755),
            E::Symlink("d/up", "../.."),
            E::File("d/up/x/y", b"evil", 0o644),
        ]);
        let (_dir, r) = apply_bytes(&data);
        refused(r, "d/up/x/y", "symlink");
    }

    #[test]
    fn symlink_replacing_a_checked_directory_is_still_caught() {
        if !root_or_skip() {
            return;
        }
        let outside = tempfile::tempdir().unwrap();
        let data = tar(&[
            E::Dir("a/", 0o755),
            E::File("a/ok", b"fine", 0o644),
            E::Symlink("a", outside.path().to_str().unwrap()),
            E::File("a/passwd", b"evil", 0o644),
        ]);
        let (_dir, r) = apply_bytes(&data);
        refused(r, "a/passwd", "symlink");
        assert!(!outside.path().join("passwd").exists());
    }

    #[test]
    fn hardlink_escapes_are_refused() {
        if !root_or_skip() {
            return;
        }
        let mut data = Vec::new();
        raw_entry(&mut data, "passwd", tar::EntryType::Link, "../../etc/passwd", b"");
        end(&mut data);
        let (_dir, r) = apply_bytes(&data);
        refused(r, "passwd", "`..`");

        let mut data = Vec::new();
        raw_entry(&mut data, "passwd", tar::EntryType::Link, "/etc/passwd", b"");
        end(&mut data);
        let (_dir, r) = apply_bytes(&data);
        refused(r, "passwd", "absolute");

        // Through a symlinked directory inside the layer.
        let data = tar(&[E::Symlink("etc", "/etc"), E::Link("passwd", "etc/passwd")]);
        let (_dir, r) = apply_bytes(&data);
        refused(r, "passwd", "symlink");

        // To something not (yet) in the layer.
        let data = tar(&[E::Link("a", "b")]);
        let (_dir, r) = apply_bytes(&data);
        refused(r, "a", "not in the layer");
    }

    #[test]
    fn overlay_xattrs_in_the_tar_are_refused() {
        let data = tar(&[E::PaxFile(
            "f",
            b"",
            vec![("SCHILY.xattr.trusted.overlay.opaque", b"y")],
        )]);
        let (dir, r) = apply_bytes(&data);
        refused(r, "f", "trusted.overlay.opaque");
        assert!(!dir.path().join("f").exists(), "refused before anything was written");
    }

    #[test]
    fn gzip_and_zstd_layers_give_the_diff_id_of_the_tar() {
        if !root_or_skip() {
            return;
        }
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let data = tar(&[E::Dir("d/", 0o755), E::File("d/big", &big, 0o644)]);
        let expected = Digest::of(&data);

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let zst = ruzstd::encoding::compress_to_vec(&data[..], ruzstd::encoding::CompressionLevel::Fastest);
        // Two zstd frames with a skippable frame between: all must be read.
        let (a, b) = data.split_at(data.len() / 2);
        let mut multi = ruzstd::encoding::compress_to_vec(a, ruzstd::encoding::CompressionLevel::Fastest);
        multi.extend_from_slice(&0x184D2A50u32.to_le_bytes());
        multi.extend_from_slice(&3u32.to_le_bytes());
        multi.extend_from_slice(b"pad");
        multi.extend(ruzstd::encoding::compress_to_vec(
            b,
            ruzstd::encoding::CompressionLevel::Fastest,
        ));

        for (media_type, blob) in [
            ("application/vnd.oci.image.layer.v1.tar+gzip", &gz),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", &gz),
            ("application/vnd.oci.image.layer.v1.tar+zstd", &zst),
            ("application/vnd.oci.image.layer.v1.tar+zstd", &multi),
            ("application/vnd.oci.image.layer.v1.tar", &data),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let applied = apply(decompressor(media_type, &blob[..]).unwrap(), dir.path()).unwrap();
            assert_eq!(applied.diff_id, expected, "{media_type}");
            assert_eq!(applied.size, data.len() as u64);
            assert_eq!(fs::read(dir.path().join("d/big")).unwrap(), big, "{media_type}");
        }
    }

    #[test]
    fn diff_id_covers_bytes_after_the_end_marker() {
        if !root_or_skip() {
            return;
        }
        let mut data = tar(&[E::Dir("d/", 0o755)]);
        data.extend_from_slice(&[0u8; 10240]);
        let (_dir, r) = apply_bytes(&data);
        let applied = r.unwrap();
        assert_eq!(applied.diff_id, Digest::of(&data));
        assert_eq!(applied.size, data.len() as u64);
    }

    #[test]
    fn unknown_media_types_are_refused() {
        for mt in [
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+encrypted",
        ] {
            match decompressor(mt, &b""[..]) {
                Err(Error::UnsupportedMediaType { media_type }) => assert_eq!(media_type, mt),
                Err(e) => panic!("{mt}: {e}"),
                Ok(_) => panic!("{mt} accepted"),
            }
        }
    }

    #[test]
    fn sync_flushes_the_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        sync(dir.path()).unwrap();
        assert!(matches!(
            sync(&dir.path().join("missing")),
            Err(Error::Io { op: "open", .. })
        ));
    }

    #[test]
    fn pax_times_parse() {
        assert_eq!(parse_pax_time("1500000000"), Some((1_500_000_000, 0)));
        assert_eq!(parse_pax_time("1500000000.5"), Some((1_500_000_000, 500_000_000)));
        assert_eq!(parse_pax_time("1.123456789123"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time("-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time("x"), None);
    }

    #[test]
    fn a_sparse_bomb_stops_at_the_cap() {
        if !root_or_skip() {
            return;
        }
        let mut t = Vec::new();
        sparse_entry(&mut t, "bomb", 2 << 30, b"tail");
        end(&mut t);
        assert!(t.len() < 4096, "the bomb is small: {} bytes", t.len());
        let dir = tempfile::tempdir().unwrap();
        let cap = 16 << 20;
        match apply_capped(&t[..], dir.path(), cap) {
            Err(Error::TooLarge { cap: c }) => assert_eq!(c, cap),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        let written = fs::metadata(dir.path().join("bomb")).map(|m| m.len()).unwrap_or(0);
        assert!(written <= cap, "wrote {written} bytes past the cap of {cap}");
        // Under the cap the same entry unpacks whole (the reader fills the holes).
        let mut small = Vec::new();
        sparse_entry(&mut small, "ok", 1 << 20, b"tail");
        end(&mut small);
        let dir = tempfile::tempdir().unwrap();
        apply_capped(&small[..], dir.path(), cap).unwrap();
        let data = fs::read(dir.path().join("ok")).unwrap();
        assert_eq!(data.len(), 1 << 20);
        assert!(data.ends_with(b"tail"));
    }

    #[test]
    fn a_compression_bomb_stops_at_the_cap() {
        if !root_or_skip() {
            return;
        }
        let zeros = vec![0u8; 64 << 20];
        let t = tar(&[E::File("zeros", &zeros, 0o644)]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&t).unwrap();
        let gz = gz.finish().unwrap();
        assert!(gz.len() < 1 << 20, "the bomb is small: {} bytes", gz.len());
        let dir = tempfile::tempdir().unwrap();
        let r = apply_capped(
            decompressor("application/vnd.oci.image.layer.v1.tar+gzip", &gz[..]).unwrap(),
            dir.path(),
            8 << 20,
        );
        let e = r.unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "{e:?}");
        assert!(e.to_string().contains("--max-layer-size"), "{e}");
    }

    #[test]
    fn a_layer_larger_than_the_free_space_stops_before_the_disk_is_full() {
        if !root_or_skip() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=32m"),
        )
        .unwrap();
        let mut t = Vec::new();
        sparse_entry(&mut t, "big", 64 << 20, b"tail");
        end(&mut t);
        let r = apply_capped(&t[..], dir.path(), DEFAULT_MAX_LAYER_SIZE);
        let used = nix::sys::statvfs::statvfs(dir.path()).unwrap();
        let free = used.blocks_available() as u64 * used.fragment_size() as u64;
        nix::mount::umount2(dir.path(), nix::mount::MntFlags::MNT_DETACH).unwrap();
        let e = r.unwrap_err();
        assert!(matches!(e, Error::NoSpace { .. }), "{e:?}");
        assert!(e.to_string().contains("not enough free space"), "{e}");
        // The reserve (5 % of 32 MiB) was left free.
        assert!(free >= (32 << 20) / 20 - 8192, "only {free} bytes left free");
    }
}
