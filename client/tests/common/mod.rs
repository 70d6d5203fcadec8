//! Helpers for `berth`'s end-to-end tests: they run the real `berth` binary against real
//! registries (`berth-registry`, the reference registry `docker-registry`) and real peers
//! (docker, umoci), and print the command, its output and the server logs on failure.
//!
//! Every `berth` runs with `DOCKER_CONFIG` pointing into the test's temporary directory, so
//! `~/.docker` is never read or written. A missing peer skips the test with a message on a
//! developer's machine and fails it under `CI=true`.
#![allow(dead_code)]

use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub use berth_conformance::servers::{free_port, Server};

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Uncompressed OCI layer media type.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// The annotation naming a manifest in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[allow(unused_imports)] // each test binary uses its own subset
pub use berth_conformance::peers::{require, require_docker, require_file};

/// The command and everything it printed, for failure messages.
pub fn show(cmd: &Command, out: &Output) -> String {
    format!(
        "command: {cmd:?}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` with `input` (if any) on its standard input and returns its output, success or not.
pub fn output(cmd: &mut Command, input: Option<&str>) -> Output {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        stdin
            .write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("writing to the standard input of {cmd:?}: {e}"));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}"))
}

/// Runs `cmd`; panics with everything when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = output(cmd, None);
    assert!(out.status.success(), "command failed:\n{}", show(cmd, &out));
    out
}

/// Runs `cmd` with `input` on stdin; panics with everything when it fails.
pub fn run_with_stdin(cmd: &mut Command, input: &str) -> Output {
    let out = output(cmd, Some(input));
    assert!(out.status.success(), "command failed:\n{}", show(cmd, &out));
    out
}

/// Standard output as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `berth` binary under test, run with a docker config directory of its own.
pub struct Berth {
    /// `DOCKER_CONFIG` for every run.
    pub docker_config: PathBuf,
    /// `BERTH_CHUNK_SIZE` for every run, if set.
    pub chunk_size: Option<String>,
}

impl Berth {
    /// `berth` with credentials under `docker_config` (created if needed).
    pub fn new(docker_config: &Path) -> Berth {
        std::fs::create_dir_all(docker_config).expect("docker config dir");
        Berth {
            docker_config: docker_config.to_owned(),
            chunk_size: None,
        }
    }

    /// A `berth ARGS…` command, not yet run.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
        c.args(args)
            .env("DOCKER_CONFIG", &self.docker_config)
            // berth's record of where blobs are (for mounts) stays inside the test too.
            .env("XDG_CACHE_HOME", self.docker_config.join("cache"))
            .env("NO_COLOR", "1")
            .env_remove("BERTH_LOG")
            .env_remove("BERTH_CHUNK_SIZE");
        if let Some(size) = &self.chunk_size {
            c.env("BERTH_CHUNK_SIZE", size);
        }
        c
    }

    /// Runs `berth ARGS…`, success or not.
    pub fn output(&self, args: &[&str]) -> (Command, Output) {
        let mut c = self.cmd(args);
        let out = output(&mut c, None);
        (c, out)
    }

    /// Runs `berth ARGS…` with `input` on stdin, success or not.
    pub fn output_with_stdin(&self, args: &[&str], input: &str) -> (Command, Output) {
        let mut c = self.cmd(args);
        let out = output(&mut c, Some(input));
        (c, out)
    }

    /// Runs `berth ARGS…`, which must succeed.
    pub fn ok(&self, args: &[&str]) -> Output {
        let (c, out) = self.output(args);
        assert!(out.status.success(), "berth failed:\n{}", show(&c, &out));
        out
    }

    /// Runs `berth --json ARGS…`, which must succeed and print one JSON value.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let (c, out) = self.output(&all);
        assert!(out.status.success(), "berth failed:\n{}", show(&c, &out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("berth --json printed no JSON ({e}):\n{}", show(&c, &out)))
    }

    /// Runs `berth ARGS…`, which must fail with exit code `code`; returns its output.
    pub fn fails(&self, args: &[&str], code: i32) -> Output {
        let (c, out) = self.output(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "berth should have exited with {code}:\n{}",
            show(&c, &out)
        );
        out
    }

    /// The docker config file `berth` reads and writes, parsed (`{}` when absent).
    pub fn config_json(&self) -> serde_json::Value {
        let p = self.docker_config.join("config.json");
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display())),
            Err(_) => serde_json::json!({}),
        }
    }
}

/// The `berth-registry` binary built beside this test.
pub fn registry_bin() -> PathBuf {
    berth_conformance::servers::sibling_bin("berth-registry").unwrap_or_else(|e| panic!("{e:#}"))
}

/// Starts `berth-registry serve` over `data` on a free loopback port with `extra` flags.
pub fn start_berth(data: &Path, extra: &[&str]) -> Server {
    let port = free_port().expect("a free port");
    Server::berth_with(&registry_bin(), data, port, extra).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Starts the reference registry over `data` on a free loopback port.
pub fn start_reference(data: &Path) -> Server {
    let port = free_port().expect("a free port");
    Server::reference(data, port).unwrap_or_else(|e| panic!("{e:#}"))
}

/// `berth-registry user add NAME --password-stdin --data DATA`.
pub fn user_add(data: &Path, name: &str, password: &str) {
    std::fs::create_dir_all(data).expect("data dir");
    run_with_stdin(
        Command::new(registry_bin())
            .args(["user", "add", name, "--password-stdin", "--data"])
            .arg(data),
        &format!("{password}\n"),
    );
}

/// `sha256:<hex>` of `bytes`. Large inputs go through coreutils' `sha256sum`: this test crate
/// is built without optimisation, where sha2 manages some 40 MB/s, which would make the big
/// layer of the chunked-upload test cost more than everything else.
pub fn sha256(bytes: &[u8]) -> String {
    if bytes.len() < 16 << 20 {
        return format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    }
    use std::io::Write as _;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start sha256sum (coreutils): {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(bytes).expect("writing to sha256sum");
    }
    let out = child.wait_with_output().expect("waiting for sha256sum");
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.split_whitespace().next().unwrap_or("").to_owned();
    assert!(
        out.status.success() && hex.len() == 64,
        "sha256sum failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("sha256:{hex}")
}

/// Deterministic bytes, `len` of them: a MiB of xorshift64* noise, repeated with every MiB
/// stamped with its own number, so that no two MiB (of one call, or of calls with different
/// seeds) are alike, at the cost of a copy rather than a generator step per 8 bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    const BLOCK: usize = 1 << 20;
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut block = Vec::with_capacity(BLOCK + 8);
    while block.len() < BLOCK.min(len) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        block.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    block.truncate(BLOCK.min(len));
    let mut out = Vec::with_capacity(len);
    let mut n = 0u64;
    while out.len() < len {
        let at = out.len();
        let take = block.len().min(len - at);
        out.extend_from_slice(&block[..take]);
        let stamp = (seed ^ n.wrapping_mul(0xA24B_AED4_963E_E407)).to_le_bytes();
        let k = stamp.len().min(take);
        out[at..at + k].copy_from_slice(&stamp[..k]);
        n += 1;
    }
    out
}

/// One ustar header block for a regular file (`typeflag` b'0') or directory (b'5').
fn tar_header(name: &str, size: usize, typeflag: u8) -> [u8; 512] {
    assert!(name.len() < 100, "tar name too long: {name}");
    let mut h = [0u8; 512];
    let put = |h: &mut [u8; 512], at: usize, s: &[u8]| h[at..at + s.len()].copy_from_slice(s);
    put(&mut h, 0, name.as_bytes());
    put(&mut h, 100, if typeflag == b'5' { b"0000755\0" } else { b"0000644\0" });
    put(&mut h, 108, b"0000000\0");
    put(&mut h, 116, b"0000000\0");
    put(&mut h, 124, format!("{size:011o}\0").as_bytes());
    put(&mut h, 136, format!("{:011o}\0", 1_700_000_000u64).as_bytes());
    put(&mut h, 148, b"        ");
    h[156] = typeflag;
    put(&mut h, 257, b"ustar\0");
    put(&mut h, 263, b"00");
    put(&mut h, 265, b"root");
    put(&mut h, 297, b"root");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
    h
}

/// An uncompressed tar of about `size` bytes: a directory `dir/` holding files of generated
/// data (at most 16 MiB each), ending with the two zero blocks.
pub fn tar_layer(dir: &str, size: usize, seed: u64) -> Vec<u8> {
    const FILE_MAX: usize = 16 << 20;
    let mut out = Vec::with_capacity(size + 8192);
    out.extend_from_slice(&tar_header(&format!("{dir}/"), 0, b'5'));
    let mut left = size;
    let mut n = 0u64;
    while left > 0 {
        let len = left.min(FILE_MAX);
        out.extend_from_slice(&tar_header(&format!("{dir}/file{n}.bin"), len, b'0'));
        out.extend_from_slice(&noise(seed.wrapping_mul(1000).wrapping_add(n), len));
        out.resize(out.len().div_ceil(512) * 512, 0);
        left -= len;
        n += 1;
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// An image written as an OCI layout by [`write_image`].
pub struct Image {
    /// The layout directory.
    pub layout: PathBuf,
    /// The manifest's exact bytes.
    pub manifest: Vec<u8>,
    /// `sha256:…` of the manifest.
    pub digest: String,
    /// The config's exact bytes.
    pub config: Vec<u8>,
    /// The layers' digests and sizes, in order.
    pub layers: Vec<(String, u64)>,
}

impl Image {
    /// Blobs the manifest references: the config and every layer.
    pub fn blob_count(&self) -> usize {
        1 + self.layers.len()
    }

    /// Bytes of those blobs.
    pub fn blob_bytes(&self) -> u64 {
        self.config.len() as u64 + self.layers.iter().map(|(_, s)| s).sum::<u64>()
    }
}

fn write_blob(layout: &Path, bytes: &[u8]) -> String {
    let d = sha256(bytes);
    let p = layout.join("blobs/sha256").join(&d["sha256:".len()..]);
    std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
    d
}

/// Writes an OCI image layout at `layout` holding one image tagged `tag` (its `ref.name`)
/// whose uncompressed tar layers have about `layer_sizes` bytes each; `seed` makes the data
/// (and so every digest) differ between images.
pub fn write_image(layout: &Path, tag: &str, layer_sizes: &[usize], seed: u64) -> Image {
    std::fs::create_dir_all(layout.join("blobs/sha256")).expect("layout dir");
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    let mut layers = Vec::new();
    for (i, &size) in layer_sizes.iter().enumerate() {
        let tar = tar_layer(&format!("layer{i}"), size, seed.wrapping_mul(31).wrapping_add(i as u64));
        layers.push((write_blob(layout, &tar), tar.len() as u64));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "Labels": {"seed": seed.to_string()}},
        // Uncompressed layers: each diff_id is the layer's own digest.
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>()},
        "history": layers.iter().enumerate().map(|(i, _)| serde_json::json!({
            "created": "2024-01-01T00:00:00Z",
            "created_by": format!("berth e2e layer {i}"),
        })).collect::<Vec<_>>(),
    }))
    .expect("config JSON");
    let config_digest = write_blob(layout, &config);
    let manifest = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": layers.iter().map(|(d, s)| serde_json::json!({
            "mediaType": OCI_LAYER_TAR, "digest": d, "size": s,
        })).collect::<Vec<_>>(),
        "annotations": {"org.opencontainers.image.title": "berth e2e"},
    }))
    .expect("manifest JSON");
    let digest = write_blob(layout, &manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": digest,
            "size": manifest.len(),
            "annotations": {REF_NAME: tag},
        }],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).expect("index.json");
    Image {
        layout: layout.to_owned(),
        manifest,
        digest,
        config,
        layers,
    }
}

/// Every file under `layout/blobs/sha256`, name → bytes.
pub fn layout_blobs(layout: &Path) -> BTreeMap<String, Vec<u8>> {
    let dir = layout.join("blobs/sha256");
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let e = e.expect("dir entry");
        let bytes = std::fs::read(e.path()).unwrap_or_else(|err| panic!("{}: {err}", e.path().display()));
        out.insert(e.file_name().to_string_lossy().into_owned(), bytes);
    }
    out
}

/// Names of the files under `layout/blobs/sha256`.
pub fn blob_names(layout: &Path) -> Vec<String> {
    let dir = layout.join("blobs/sha256");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Asserts the two layouts hold exactly the same blob files with the same bytes (compared
/// whole, but reported by name and size, not dumped).
pub fn assert_same_blobs(expected: &Path, actual: &Path) {
    let a = layout_blobs(expected);
    let b = layout_blobs(actual);
    let names = |m: &BTreeMap<String, Vec<u8>>| {
        m.iter()
            .map(|(k, v)| format!("{k} ({} bytes)", v.len()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "blob files differ:\n{} has {:#?}\n{} has {:#?}",
        expected.display(),
        names(&a),
        actual.display(),
        names(&b)
    );
    for (name, bytes) in &a {
        let other = &b[name];
        assert!(
            bytes == other,
            "blob {name} differs: {} bytes in {}, {} bytes in {} (sha256 of the copy: {})",
            bytes.len(),
            expected.display(),
            other.len(),
            actual.display(),
            sha256(other)
        );
    }
}

/// The manifest `index.json` lists under `tag`.
pub fn index_entry(layout: &Path, tag: &str) -> serde_json::Value {
    let p = layout.join("index.json");
    let text = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let index: serde_json::Value = serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    index["manifests"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["annotations"][REF_NAME] == tag).cloned())
        .unwrap_or_else(|| panic!("{} lists nothing tagged {tag:?}: {index}", p.display()))
}

/// Builds a busybox image as an OCI layout at `dir/oci` tagged `1` (and `base`, its parent
/// without a command) whose command prints `hello from berth`: umoci and busybox-static, nothing
/// pulled from anywhere.
pub fn busybox_layout(dir: &Path) -> PathBuf {
    berth_conformance::images::busybox_layout(dir).unwrap_or_else(|e| panic!("{e:#}"))
}
