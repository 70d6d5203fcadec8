//! Images the end-to-end tests and the benchmark build themselves, so nothing is pulled from
//! the internet.
//!
//! Two ways in:
//! - [`busybox_layout`] asks umoci, the reference tool, for a one-layer busybox image (the
//!   registry and client tests use it to check that what a standard tool wrote round-trips).
//! - [`Tar`] + [`Layer`] + [`write_image`] write an OCI layout entry by entry, in Rust, for
//!   images no tool would produce on request: whiteouts, 130 layers, entries that try to escape
//!   the directory they are unpacked into, and the benchmark's ~600 MB image. The tar format is
//!   written by hand (ustar headers are 512 fixed bytes; a library would refuse to write the
//!   hostile entries, which is the point of having them) and gzip is Debian's `gzip -n`
//!   (deterministic: no name, no timestamp), so the same seed always gives the same digests.
//!
//! [`node_layout`], [`whiteout_layout`], [`many_layers_layout`], [`hostile_layout`] and
//! [`big_layout`] are the images `berth-node`'s tests and the `node` benchmark run.

use anyhow::{bail, Context as _, Result};
use berth_oci::Digest;
use serde_json::json;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn umoci(args: &[&str], extra: Option<&Path>) -> Result<()> {
    let mut c = Command::new("umoci");
    c.args(args);
    if let Some(p) = extra {
        c.arg(p);
    }
    let out = c
        .output()
        .with_context(|| format!("running umoci {args:?} (Debian package umoci)"))?;
    if !out.status.success() {
        bail!(
            "umoci {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Builds a busybox image as an OCI layout at `dir/oci`, tagged `1`, whose command prints
/// `hello from berth`: umoci and /bin/busybox from busybox-static.
pub fn busybox_layout(dir: &Path) -> Result<PathBuf> {
    let layout = dir.join("oci");
    let bundle = dir.join("bundle");
    let base = format!("{}:base", layout.display());
    umoci(&["init", "--layout"], Some(&layout))?;
    umoci(&["new", "--image", &base], None)?;
    umoci(&["unpack", "--image", &base], Some(&bundle))?;
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .context("copying /bin/busybox (Debian package busybox-static)")?;
    std::os::unix::fs::symlink("busybox", bin.join("sh"))?;
    umoci(&["repack", "--image", &base], Some(&bundle))?;
    umoci(
        &[
            "config",
            "--image",
            &base,
            "--tag",
            "1",
            "--config.env",
            "PATH=/bin",
            "--config.cmd",
            "/bin/sh",
            "--config.cmd",
            "-c",
            "--config.cmd",
            "echo hello from berth",
        ],
        None,
    )?;
    Ok(layout)
}

/// Uncompressed OCI layer.
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Gzip-compressed OCI layer.
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI image config.
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// The index annotation that names (tags) a manifest in a layout.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The uid and gid of the user `app` in [`busybox_rootfs`]'s `/etc/passwd` and `/etc/group`.
pub const APP_UID: u32 = 1000;

/// The mtime of every entry: fixed, so that a layer's digest depends on its content alone.
const MTIME: u64 = 1_700_000_000;

/// A tar archive written entry by entry: plain ustar headers (names up to 255 bytes through the
/// `prefix` field), nothing checked beyond what the format can hold. Callers choose every
/// path, including ones no sane archive has (`../x`, a path through a symlink): it is how the
/// hostile layers are made.
#[derive(Default)]
pub struct Tar {
    buf: Vec<u8>,
}

/// What a tar entry is (its `typeflag`).
#[derive(Clone, Copy)]
enum Kind {
    File,
    Hardlink,
    Symlink,
    Dir,
}

impl Kind {
    fn flag(self) -> u8 {
        match self {
            Kind::File => b'0',
            Kind::Hardlink => b'1',
            Kind::Symlink => b'2',
            Kind::Dir => b'5',
        }
    }
}

/// Splits `path` into ustar's `prefix` (≤ 155 bytes) and `name` (≤ 100 bytes) at a `/`.
fn split_name(path: &str) -> Result<(&str, &str)> {
    if path.len() <= 100 {
        return Ok(("", path));
    }
    for (i, c) in path.char_indices() {
        if c == '/' && i <= 155 && path.len() - i - 1 <= 100 && i > 0 {
            return Ok((&path[..i], &path[i + 1..]));
        }
    }
    bail!("tar path too long for ustar: {path}")
}

impl Tar {
    /// An empty archive.
    pub fn new() -> Tar {
        Tar::default()
    }

    #[allow(clippy::too_many_arguments)] // one header's fields, each a distinct thing
    fn entry(&mut self, path: &str, kind: Kind, mode: u32, uid: u32, gid: u32, link: &str, data: &[u8]) -> Result<()> {
        let (prefix, name) = split_name(path)?;
        if link.len() > 100 {
            bail!("tar link target too long for ustar: {link}");
        }
        let mut h = [0u8; 512];
        let mut put = |at: usize, s: &[u8]| h[at..at + s.len()].copy_from_slice(s);
        put(0, name.as_bytes());
        put(100, format!("{mode:07o}\0").as_bytes());
        put(108, format!("{uid:07o}\0").as_bytes());
        put(116, format!("{gid:07o}\0").as_bytes());
        put(124, format!("{:011o}\0", data.len()).as_bytes());
        put(136, format!("{MTIME:011o}\0").as_bytes());
        put(148, b"        ");
        put(156, &[kind.flag()]);
        put(157, link.as_bytes());
        put(257, b"ustar\0");
        put(263, b"00");
        put(265, if uid == 0 { b"root" as &[u8] } else { b"" });
        put(297, if gid == 0 { b"root" as &[u8] } else { b"" });
        put(329, b"0000000\0");
        put(337, b"0000000\0");
        put(345, prefix.as_bytes());
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        self.buf.extend_from_slice(&h);
        self.buf.extend_from_slice(data);
        self.buf.resize(self.buf.len().div_ceil(512) * 512, 0);
        Ok(())
    }

    /// A directory owned by root.
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<&mut Tar> {
        self.entry(path, Kind::Dir, mode, 0, 0, "", &[])?;
        Ok(self)
    }

    /// A directory owned by `uid:gid`.
    pub fn dir_owned(&mut self, path: &str, mode: u32, uid: u32, gid: u32) -> Result<&mut Tar> {
        self.entry(path, Kind::Dir, mode, uid, gid, "", &[])?;
        Ok(self)
    }

    /// A regular file owned by root.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<&mut Tar> {
        self.entry(path, Kind::File, mode, 0, 0, "", data)?;
        Ok(self)
    }

    /// A symbolic link `path -> target` (the target is written as given, absolute or not).
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Tar> {
        self.entry(path, Kind::Symlink, 0o777, 0, 0, target, &[])?;
        Ok(self)
    }

    /// A hard link `path` to the earlier entry `target`, whose `mode` it repeats: extractors
    /// (docker's among them) apply a link header's mode to the inode both names share.
    pub fn hardlink(&mut self, path: &str, target: &str, mode: u32) -> Result<&mut Tar> {
        self.entry(path, Kind::Hardlink, mode, 0, 0, target, &[])?;
        Ok(self)
    }

    /// An OCI whiteout: `dir/.wh.name` deletes `dir/name` of the layers below.
    pub fn whiteout(&mut self, dir: &str, name: &str) -> Result<&mut Tar> {
        self.file(&format!("{dir}/.wh.{name}"), 0o644, &[])
    }

    /// An OCI opaque whiteout: `dir/.wh..wh..opq` hides everything the layers below have in
    /// `dir` (entries of this layer in `dir` stay).
    pub fn opaque(&mut self, dir: &str) -> Result<&mut Tar> {
        self.file(&format!("{dir}/.wh..wh..opq"), 0o644, &[])
    }

    /// The archive, with its two terminating zero blocks.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.resize(self.buf.len() + 1024, 0);
        self.buf
    }
}

/// `bytes` through `gzip -n -LEVEL` (Debian's gzip; `-n` keeps names and times out, so the
/// output depends on the input alone). Fed from a thread: gzip's output pipe would fill while
/// its input is still being written.
pub fn gzip(bytes: &[u8], level: u32) -> Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .args(["-n", "-c", &format!("-{}", level.clamp(1, 9))])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running gzip (Debian package gzip)")?;
    let mut stdin = child.stdin.take().context("gzip's standard input")?;
    let mut stdout = child.stdout.take().context("gzip's standard output")?;
    let mut out = Vec::with_capacity(bytes.len() / 2 + 1024);
    let written = std::thread::scope(|s| {
        let writer = s.spawn(move || stdin.write_all(bytes));
        let read = stdout.read_to_end(&mut out);
        let written = writer.join();
        read.map(|_| written)
    })?;
    match written {
        Ok(w) => w.context("writing to gzip")?,
        Err(_) => bail!("the thread feeding gzip panicked"),
    }
    let status = child.wait()?;
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        bail!("gzip failed ({status}): {err}");
    }
    Ok(out)
}

/// A layer blob ready for a layout: its bytes as stored, media type and diff ID (the digest of
/// the uncompressed tar, which the image config lists).
pub struct Layer {
    /// The blob as stored and pushed (compressed or not).
    pub blob: Vec<u8>,
    /// [`LAYER_TAR`] or [`LAYER_GZIP`].
    pub media_type: &'static str,
    /// `sha256:…` of the uncompressed tar.
    pub diff_id: String,
}

impl Layer {
    /// An uncompressed layer.
    pub fn plain(tar: Vec<u8>) -> Layer {
        Layer {
            diff_id: Digest::of(&tar).to_string(),
            blob: tar,
            media_type: LAYER_TAR,
        }
    }

    /// A gzip layer (level 6, gzip's default).
    pub fn gzip(tar: &[u8]) -> Result<Layer> {
        Self::gzip_level(tar, 6)
    }

    /// A gzip layer at `level` (1 fastest … 9 smallest).
    pub fn gzip_level(tar: &[u8], level: u32) -> Result<Layer> {
        Ok(Layer {
            blob: gzip(tar, level)?,
            media_type: LAYER_GZIP,
            diff_id: Digest::of(tar).to_string(),
        })
    }
}

/// One image written into a layout by [`write_image`].
#[derive(Debug, Clone)]
pub struct Image {
    /// The layout directory.
    pub layout: PathBuf,
    /// Its name in the layout (`org.opencontainers.image.ref.name`), used as the tag when pushed.
    pub tag: String,
    /// `sha256:…` of the manifest.
    pub digest: String,
    /// `sha256:…` of the config.
    pub config_digest: String,
    /// The layer blobs' digests and sizes, bottom first.
    pub layers: Vec<(String, u64)>,
    /// The layers' diff IDs, bottom first.
    pub diff_ids: Vec<String>,
}

impl Image {
    /// Bytes of the manifest's blobs (config and layers), as a registry stores them.
    pub fn blob_bytes(&self) -> u64 {
        self.layers.iter().map(|(_, n)| n).sum()
    }

    /// `skopeo copy`'s source name for this image: `oci:LAYOUT:TAG`.
    pub fn oci_ref(&self) -> String {
        format!("oci:{}:{}", self.layout.display(), self.tag)
    }
}

fn put_blob(layout: &Path, bytes: &[u8]) -> Result<String> {
    let d = Digest::of(bytes);
    let p = layout.join("blobs/sha256").join(d.hex());
    if !p.exists() {
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(d.to_string())
}

/// Writes an image into the OCI layout at `layout` (created if needed; other images in it
/// stay, one of the same `tag` is replaced): `layers` bottom first, and `config` as the image
/// config's `config` object (`Env`, `Cmd`, `Entrypoint`, `User`, `WorkingDir`, …).
pub fn write_image(layout: &Path, tag: &str, config: serde_json::Value, layers: &[Layer]) -> Result<Image> {
    std::fs::create_dir_all(layout.join("blobs/sha256")).with_context(|| format!("creating {}", layout.display()))?;
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut descs = Vec::new();
    let mut sizes = Vec::new();
    for l in layers {
        let d = put_blob(layout, &l.blob)?;
        descs.push(json!({"mediaType": l.media_type, "digest": d, "size": l.blob.len()}));
        sizes.push((d, l.blob.len() as u64));
    }
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let image_config = json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": (0..layers.len()).map(|i| json!({
            "created": "2024-01-01T00:00:00Z",
            "created_by": format!("berth test image {tag}, layer {i}"),
        })).collect::<Vec<_>>(),
    });
    let config_bytes = serde_json::to_vec(&image_config)?;
    let config_digest = put_blob(layout, &config_bytes)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": berth_oci::media::OCI_MANIFEST,
        "config": {"mediaType": CONFIG, "digest": config_digest, "size": config_bytes.len()},
        "layers": descs,
    }))?;
    let digest = put_blob(layout, &manifest)?;

    let index_path = layout.join("index.json");
    let mut entries: Vec<serde_json::Value> = match std::fs::read(&index_path) {
        Ok(b) => serde_json::from_slice::<serde_json::Value>(&b)
            .with_context(|| format!("{} is not JSON", index_path.display()))?["manifests"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    entries.retain(|m| m["annotations"][REF_NAME] != tag);
    entries.push(json!({
        "mediaType": berth_oci::media::OCI_MANIFEST,
        "digest": digest,
        "size": manifest.len(),
        "annotations": {REF_NAME: tag},
    }));
    let index = json!({"schemaVersion": 2, "mediaType": berth_oci::media::OCI_INDEX, "manifests": entries});
    std::fs::write(&index_path, serde_json::to_vec_pretty(&index)?)?;
    Ok(Image {
        layout: layout.to_owned(),
        tag: tag.to_owned(),
        digest,
        config_digest,
        layers: sizes,
        diff_ids,
    })
}

/// The applets `/bin/busybox` provides (`busybox --list`).
fn busybox_applets() -> Result<Vec<String>> {
    let out = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .context("running /bin/busybox --list (Debian package busybox-static)")?;
    if !out.status.success() {
        bail!("/bin/busybox --list failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(str::to_owned)
        .collect())
}

/// The base layer of every test image: the usual top-level directories, `/bin/busybox` (static,
/// from Debian's busybox-static) with a symlink per applet, `/etc/passwd` and `/etc/group`
/// naming `root`, `app` ([`APP_UID`]) and `nobody`, `/home/app` owned by `app`, `/srv`, and a
/// hard link `/bin/busybox.link` (hard links must survive unpacking).
pub fn busybox_rootfs() -> Result<Tar> {
    let busybox = std::fs::read("/bin/busybox").context("reading /bin/busybox (Debian package busybox-static)")?;
    let mut t = Tar::new();
    for d in ["bin", "dev", "etc", "home", "proc", "srv", "sys", "usr", "var"] {
        t.dir(d, 0o755)?;
    }
    t.dir("root", 0o700)?.dir("tmp", 0o1777)?;
    t.dir_owned("home/app", 0o755, APP_UID, APP_UID)?;
    t.file("bin/busybox", 0o755, &busybox)?;
    t.hardlink("bin/busybox.link", "bin/busybox", 0o755)?;
    for applet in busybox_applets()? {
        t.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    t.file(
        "etc/passwd",
        0o644,
        format!(
            "root:x:0:0:root:/root:/bin/sh\napp:x:{APP_UID}:{APP_UID}:app:/home/app:/bin/sh\n\
             nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
        )
        .as_bytes(),
    )?;
    t.file(
        "etc/group",
        0o644,
        format!("root:x:0:\napp:x:{APP_UID}:\nnogroup:x:65534:\n").as_bytes(),
    )?;
    t.file("srv/motd", 0o644, b"served from the image\n")?;
    Ok(t)
}

/// `PATH` the test images set, docker's default.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The images of [`node_layout`].
pub struct NodeImages {
    /// Tag `1`: runs as root in `/srv`, `Env` has `GREETING=from-image`, `Cmd` prints
    /// `hello from berth`.
    pub plain: Image,
    /// Tag `user`: the same layer, `User` `app`, `WorkingDir` `/home/app`.
    pub user: Image,
    /// Tag `entry`: `Entrypoint` `["echo", "entry:"]`, `Cmd` `["default"]`.
    pub entry: Image,
}

/// Writes the busybox images `berth-node`'s tests run into the OCI layout `dir/node`: one gzip
/// layer ([`busybox_rootfs`]) under three configs, see [`NodeImages`].
pub fn node_layout(dir: &Path) -> Result<NodeImages> {
    let layout = dir.join("node");
    let base = Layer::gzip(&busybox_rootfs()?.finish())?;
    let env = json!([DEFAULT_PATH, "GREETING=from-image"]);
    let plain = write_image(
        &layout,
        "1",
        json!({"Env": env, "Cmd": ["sh", "-c", "echo hello from berth"], "WorkingDir": "/srv"}),
        std::slice::from_ref(&base),
    )?;
    let user = write_image(
        &layout,
        "user",
        json!({"Env": env, "Cmd": ["sh"], "User": "app", "WorkingDir": "/home/app"}),
        std::slice::from_ref(&base),
    )?;
    let entry = write_image(
        &layout,
        "entry",
        json!({"Env": env, "Entrypoint": ["echo", "entry:"], "Cmd": ["default"]}),
        std::slice::from_ref(&base),
    )?;
    Ok(NodeImages { plain, user, entry })
}

fn shell_config() -> serde_json::Value {
    json!({"Env": [DEFAULT_PATH], "Cmd": ["sh"]})
}

/// Writes a whiteout image into the layout `dir/whiteout`, tag `1`: the busybox layer; then
/// `/data/a`, `/data/b`, `/opq/x` (gzip); then a layer (uncompressed, so both kinds are
/// exercised) that deletes `/data/a` (`.wh.a`), makes `/opq` opaque (`.wh..wh..opq`) and adds
/// `/opq/y`. Run, `/data` must hold only `b` and `/opq` only `y`.
pub fn whiteout_layout(dir: &Path) -> Result<Image> {
    let mut lower = Tar::new();
    lower
        .dir("data", 0o755)?
        .file("data/a", 0o644, b"a\n")?
        .file("data/b", 0o644, b"b\n")?
        .dir("opq", 0o755)?
        .file("opq/x", 0o644, b"x\n")?;
    let mut upper = Tar::new();
    upper
        .dir("data", 0o755)?
        .whiteout("data", "a")?
        .dir("opq", 0o755)?
        .opaque("opq")?
        .file("opq/y", 0o644, b"y\n")?;
    write_image(
        &dir.join("whiteout"),
        "1",
        shell_config(),
        &[
            Layer::gzip(&busybox_rootfs()?.finish())?,
            Layer::gzip(&lower.finish())?,
            Layer::plain(upper.finish()),
        ],
    )
}

/// Writes an image of the busybox layer and `n` more, the `i`-th adding `/layers/NNN` (`i`
/// zero-padded to 3 digits, holding `layer i`), into the layout `dir/many`, tag `1`: more
/// layers than one page of overlay mount options names when the snapshot paths are absolute.
pub fn many_layers_layout(dir: &Path, n: usize) -> Result<Image> {
    let mut layers = vec![Layer::gzip(&busybox_rootfs()?.finish())?];
    for i in 0..n {
        let mut t = Tar::new();
        t.dir("layers", 0o755)?
            .file(&format!("layers/{i:03}"), 0o644, format!("layer {i}\n").as_bytes())?;
        layers.push(Layer::gzip(&t.finish())?);
    }
    write_image(&dir.join("many"), "1", shell_config(), &layers)
}

/// The two hostile images of [`hostile_layout`].
pub struct HostileImages {
    /// Tag `dotdot`: a layer with the entry `../escape-MARKER` (and a harmless file before it).
    pub dotdot: Image,
    /// Tag `symlink`: a layer with `evil -> /` followed by `evil/tmp/pwned-MARKER`, which an
    /// unpacker following symlinks would write to the host's `/tmp`.
    pub symlink: Image,
    /// The entry names, as an error message should quote them: `../escape-MARKER` and
    /// `evil/tmp/pwned-MARKER`.
    pub entries: [String; 2],
}

/// Writes two images whose top layer tries to escape the directory it is unpacked into, into
/// the layout `dir/hostile`, each on top of the busybox layer. `marker` makes the file names
/// unique, so a test can look for them on the host afterwards.
pub fn hostile_layout(dir: &Path, marker: &str) -> Result<HostileImages> {
    let layout = dir.join("hostile");
    let base = Layer::gzip(&busybox_rootfs()?.finish())?;
    let escape = format!("../escape-{marker}");
    let pwned = format!("evil/tmp/pwned-{marker}");
    let mut t = Tar::new();
    t.file("harmless", 0o644, b"ok\n")?.file(&escape, 0o644, b"escaped\n")?;
    let dotdot = write_image(&layout, "dotdot", shell_config(), &[base, Layer::gzip(&t.finish())?])?;
    let base = Layer::gzip(&busybox_rootfs()?.finish())?;
    let mut t = Tar::new();
    t.symlink("evil", "/")?.file(&pwned, 0o644, b"pwned\n")?;
    let symlink = write_image(&layout, "symlink", shell_config(), &[base, Layer::gzip(&t.finish())?])?;
    Ok(HostileImages {
        dotdot,
        symlink,
        entries: [escape, pwned],
    })
}

/// Deterministic bytes of about 6 bits of entropy each (xorshift64, seeded, each byte one of
/// 64 symbols): gzip keeps roughly three quarters of them, so a gzip layer of this data is
/// about as large as the data and inflating it is real Huffman decoding — random bytes would
/// be stored blocks (a memcpy to inflate), zeros would shrink to nothing.
pub fn entropy6(len: usize, seed: u64) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut v = x;
        for _ in 0..8 {
            out.push(ALPHABET[(v & 63) as usize]);
            v >>= 8;
        }
    }
    out.truncate(len);
    out
}

/// Writes the benchmark's pull image into the layout `dir/big`, tag `1`: `layers` gzip layers
/// (level 1, built in parallel) of `each` bytes of [`entropy6`] data each, split into files of
/// at most 64 MiB, content chosen by `seed`; no busybox (it is pulled, never run). 3 layers of
/// 200 MiB make the ~600 MB image (about 470 MB compressed).
pub fn big_layout(dir: &Path, layers: usize, each: usize, seed: u64) -> Result<Image> {
    const FILE_MAX: usize = 64 << 20;
    let build = |i: usize| -> Result<Layer> {
        let mut t = Tar::new();
        t.dir(&format!("layer{i}"), 0o755)?;
        let (mut left, mut n) = (each, 0u64);
        while left > 0 {
            let len = left.min(FILE_MAX);
            let data = entropy6(len, seed.wrapping_mul(1000).wrapping_add(i as u64 * 100 + n));
            t.file(&format!("layer{i}/file{n}.bin"), 0o644, &data)?;
            left -= len;
            n += 1;
        }
        Layer::gzip_level(&t.finish(), 1)
    };
    let built: Vec<Result<Layer>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..layers).map(|i| s.spawn(move || build(i))).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a layer builder panicked")))
            })
            .collect()
    });
    let layers = built.into_iter().collect::<Result<Vec<_>>>()?;
    write_image(&dir.join("big"), "1", json!({"Env": [DEFAULT_PATH]}), &layers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The archives are read back by GNU tar: a header written wrong would show up here, not
    /// as a puzzling unpack failure in the runtime's tests.
    #[test]
    fn gnu_tar_reads_what_tar_writes() {
        let mut t = Tar::new();
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        t.dir("d", 0o755)
            .unwrap()
            .file("d/f", 0o600, b"hello")
            .unwrap()
            .symlink("d/s", "/etc")
            .unwrap()
            .hardlink("d/h", "d/f", 0o600)
            .unwrap()
            .file(&long, 0o644, b"long")
            .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("t.tar");
        std::fs::write(&file, t.finish()).unwrap();
        let out = Command::new("tar").arg("-tvf").arg(&file).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let list = String::from_utf8_lossy(&out.stdout);
        assert!(list.contains("-rw------- root/root         5"), "{list}");
        assert!(list.contains("d/s -> /etc"), "{list}");
        assert!(list.contains("d/h link to d/f"), "{list}");
        assert!(list.contains(&long), "{list}");
    }

    #[test]
    fn gzip_round_trips_and_entropy6_is_compressible_but_not_much() {
        let data = entropy6(1 << 20, 7);
        assert_eq!(data, entropy6(1 << 20, 7), "seeded: the same bytes every time");
        let gz = gzip(&data, 1).unwrap();
        let ratio = gz.len() as f64 / data.len() as f64;
        assert!((0.6..0.95).contains(&ratio), "gzip kept {ratio:.2} of the data");
        let mut child = Command::new("gzip")
            .arg("-dc")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(&gz));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert_eq!(out.stdout, data);
    }

    #[test]
    fn layouts_name_their_images_and_keep_each_other() {
        let tmp = tempfile::tempdir().unwrap();
        let mut t = Tar::new();
        t.file("a", 0o644, b"a").unwrap();
        let layer = Layer::plain(t.finish());
        let one = write_image(tmp.path(), "one", json!({"Cmd": ["a"]}), std::slice::from_ref(&layer)).unwrap();
        let two = write_image(tmp.path(), "two", json!({"Cmd": ["b"]}), std::slice::from_ref(&layer)).unwrap();
        assert_ne!(one.digest, two.digest);
        assert_eq!(
            one.diff_ids,
            vec![layer.diff_id.clone()],
            "uncompressed: diff ID = digest"
        );
        assert_eq!(one.layers[0].0, layer.diff_id);
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(tmp.path().join("index.json")).unwrap()).unwrap();
        let names: Vec<_> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["annotations"][REF_NAME].clone(), m["digest"].clone()))
            .collect();
        assert_eq!(
            names,
            vec![(json!("one"), json!(one.digest)), (json!("two"), json!(two.digest))]
        );
        for d in [&one.digest, &one.config_digest, &two.config_digest] {
            assert!(tmp.path().join("blobs/sha256").join(&d[7..]).is_file(), "{d}");
        }
    }
}
