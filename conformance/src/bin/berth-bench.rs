//! `berth-bench`: Berth side by side with the reference registry (Debian's docker-registry,
//! distribution 2.8), the same workload against each, alternating, in one run.
//!
//! Prints a table — figure, Berth, peer, ratio — with the median of `--runs` runs and their
//! spread (min–max). The ratio is peer/Berth for times and sizes, Berth/peer for rates: above 1
//! means Berth is better. Then notes (what a listing returned, how populating went, what is not
//! available). Every figure and note also goes to `--json FILE`. A benchmark, not a test: it
//! asserts no timing.
//!
//! The machine this runs on has 2 cores: the load generator shares them with the server under
//! test, as it does for the peer. Sizes below are full runs; `--smoke` shrinks every workload so
//! that all of them together finish in well under two minutes and CI keeps the harness working.
//!
//! Workloads (`--only NAME`, repeatable):
//! - `blob-push`: blob uploads of 1 MiB, 100 MiB and 1 GiB (`--smoke`: 64 KiB, 1 MiB), each
//!   monolithic (POST, one streamed PUT `?digest=`) and chunked (POST, PATCHes of 8 MiB with
//!   `Content-Range`, an empty final PUT; `--smoke`: 256 KiB), from 1 and 16 concurrent clients,
//!   each pushing its own blob to its own repository: seconds for the whole batch, MB/s, and the
//!   server's peak RSS over it. Limit: at most 2 GiB in flight per run ([`IN_FLIGHT_CAP`]), so
//!   1 GiB blobs go up from 1 and 2 clients, not 16. Every upload is new content (a shared body
//!   and a unique tail), so neither side can skip a write. Only the sending is timed; before it,
//!   dirty pages are flushed (`sync`) and, when run as root, the page cache is dropped, so a run
//!   pays neither for the previous run's writeback nor for reclaiming its cached pages (which,
//!   measured on the 2-core CI machine, can double a 1 GiB write); `--keep-caches` measures
//!   with a warm, full page cache instead. Each run gets a fresh pair of servers whose data is
//!   deleted afterwards: a full run writes ~90 GB, more than the disk holds.
//!   `blob-put` is the 1 GiB (`--smoke`: 1 MiB) monolithic upload from one client alone,
//!   `blob-put-chunked` the chunked one.
//! - `blob-pull`: GET of one blob of each of those sizes from 1 and 16 concurrent clients (the
//!   same 2 GiB cap: 1 and 2 for 1 GiB), from page cache (one untimed GET warms it), read to the
//!   end and discarded: seconds and MB/s. `blob-get` is the largest size from one client alone.
//! - `small-requests`: manifest GET by tag, manifest GET by digest, manifest HEAD by tag, blob
//!   HEAD and the tag list of a repository with 50 tags, each from 1, 16 and 64 concurrent
//!   keep-alive connections for 2 s (`--smoke`: 1 and 4, 0.3 s): requests per second and
//!   p50/p99 latency. `manifest-get` is the manifest GET by tag alone.
//! - `scale`: a fresh pair of servers populated through the API, [`POPULATE_IN_FLIGHT`]
//!   requests in flight, to 1k then 10k repositories (one small image each, its blobs mounted
//!   from the first repository: two mounts and a manifest PUT per repository) while that first
//!   repository grows to 1k, 10k and then 100k tags (one manifest under many tags): ~110k tags
//!   in all (`--smoke`: 5 and 50 repositories; 10, 100 and 1000 tags). At each size: the tag
//!   list's first page (`n=1000`; `--smoke`: 10) and its full walk along `Link` pages, and the
//!   same for `_catalog`, in ms; what each server returned (distribution 2.8 ignores `n` on tag
//!   lists and answers everything at once); how the cost grew from one size to the next (×10),
//!   classified as flat, log, linear or quadratic; the median page time of each full walk (the
//!   per-page latency); how long populating took. Limit: each server
//!   gets `--populate-budget` seconds of populating (default 180: the bound that keeps the
//!   workload to a few minutes); the first step is the sample that measures its rate, and a later step that
//!   would not fit at that rate is populated only as far as fits (a step that overruns anyway
//!   is cut at the budget). That server is then measured at the size it reached, under that
//!   size's name, and a note says so: a figure is never extrapolated to a size not populated.
//! - `client`: push and pull of a generated 3-layer image of ~600 MB (`--smoke`: ~3 MB)
//!   between an OCI layout and Berth, `berth` against `skopeo copy` (the peer column), same
//!   registry, same layout, new repositories each run.
//! - `node` (root): `run --rm --network none IMAGE true` latency of the node tests' busybox
//!   image, `berth-node` against `docker run` (the image pulled into dockerd from the same
//!   Berth registry; dockerd treats 127.0.0.0/8 as insecure) and against `runc run` alone on a
//!   bundle of the same rootfs (GNU tar + `runc spec`): one checked, untimed run each, then
//!   `--runs` × 4 samples (`--smoke`: 3) in alternating order, every sample a whole CLI
//!   invocation; then pull + unpack of a 3-layer gzip image of 600 MiB (`--smoke`: 3 MiB) of
//!   6-bit-entropy data (so that inflating is real work; ~470 MB compressed), built once per
//!   run of the harness: `berth-node pull` into a fresh `--root` against `docker pull` after
//!   `docker rmi`. A missing part (berth-node not built, not root, no docker daemon, no runc)
//!   is a "not available" note with the reason, never a made-up figure.
//! - `auth-cost`: the manifest GET at c=16 (`--smoke`: 4) against Berth with `--auth none`,
//!   `basic` and `token` (a signed-in user; the token fetched once, as clients do), Berth only:
//!   what authentication costs per request.
//!
//! Where Berth keeps its data: by default SQLite and files in its data directory, like the
//! peer's files. `--berth-database postgres://…` gives every Berth server a PostgreSQL database
//! of its own (created in that cluster, dropped afterwards); `--berth-storage s3://BUCKET/PREFIX`
//! puts its blobs in S3, each server under a prefix of its own, on the endpoint `--s3-endpoint`
//! or the `AWS_*` variables name, or, with `--moto`, on a moto S3 server started for each Berth
//! server (and stopped with it). The peer always stores on its file system. E.g. the issue's
//! closing figures: `berth-bench --berth-database postgres://berth:berth@127.0.0.1/berth
//! --berth-storage s3://bench/registry --moto --only blob-put --only blob-put-chunked --only
//! blob-get --only scale`. `auth-cost` and `client`'s extra servers stay on the defaults.

use anyhow::{bail, Context as _, Result};
use berth_conformance::images;
use berth_conformance::servers::{free_port, sibling_bin, Kind, Moto, PgDatabase, Server};
use bytes::Bytes;
use clap::Parser;
use futures::{StreamExt as _, TryStreamExt as _};
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LINK, LOCATION};
use reqwest::{Method, StatusCode};
use sha2::{Digest as _, Sha256};
use std::ops::Range;
use std::path::Path;
use std::time::{Duration, Instant};

/// Every workload `--only` accepts; the aliases (`blob-put`, `blob-get`, `manifest-get`) pick
/// one case of the workload they were folded into.
const WORKLOADS: [&str; 11] = [
    "blob-push",
    "blob-put",
    "blob-put-chunked",
    "blob-pull",
    "blob-get",
    "small-requests",
    "manifest-get",
    "scale",
    "client",
    "node",
    "auth-cost",
];

#[derive(Parser)]
#[command(
    name = "berth-bench",
    about = "Berth vs the reference registry, same workloads, one run"
)]
struct Cli {
    /// Tiny sizes: finishes in seconds, so CI can keep the harness from rotting.
    #[arg(long)]
    smoke: bool,
    /// Run only these workloads (repeatable): blob-push (or its cases blob-put,
    /// blob-put-chunked), blob-pull (or blob-get), small-requests (or manifest-get), scale, client, node, auth-cost.
    #[arg(long = "only")]
    only: Vec<String>,
    /// Runs per workload and server; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Do not drop the page cache before timed uploads.
    #[arg(long)]
    keep_caches: bool,
    /// Berth's metadata in PostgreSQL: the URL of a database whose role may create databases
    /// (e.g. postgres://berth:berth@127.0.0.1:5432/berth); each Berth server gets a database of
    /// its own there, dropped afterwards [default: SQLite in its data directory].
    #[arg(long, value_name = "URL")]
    berth_database: Option<String>,
    /// Berth's blobs: s3://BUCKET/PREFIX (each server under PREFIX/<its name>) or file:///PATH
    /// [default: files in its data directory].
    #[arg(long, value_name = "URL")]
    berth_storage: Option<String>,
    /// S3 endpoint for --berth-storage s3://… (e.g. http://127.0.0.1:9000; path-style requests)
    /// [default: AWS_ENDPOINT, else AWS itself].
    #[arg(long, value_name = "URL", conflicts_with = "moto")]
    s3_endpoint: Option<String>,
    /// Start a moto S3 server (moto_server, PyPI moto[server]) for each Berth server, with
    /// --berth-storage's bucket in it.
    #[arg(long)]
    moto: bool,
    /// Seconds each server of `scale` may spend populating.
    #[arg(long, default_value_t = 180, value_name = "SECS")]
    populate_budget: u64,
}

impl Cli {
    /// What Berth runs on, for the notes and the JSON.
    fn berth_setup(&self) -> String {
        let db = match &self.berth_database {
            Some(_) => "PostgreSQL (a database per server)".to_owned(),
            None => "SQLite".to_owned(),
        };
        let blobs = match (&self.berth_storage, self.moto, &self.s3_endpoint) {
            (None, ..) => "files".to_owned(),
            (Some(u), true, _) => format!("{u} on moto_server (one per server, 127.0.0.1)"),
            (Some(u), false, Some(e)) => format!("{u} at {e}"),
            (Some(u), false, None) => u.clone(),
        };
        format!("metadata in {db}, blobs in {blobs}")
    }

    fn check(&self) -> Result<()> {
        if let Some(s) = &self.berth_storage {
            anyhow::ensure!(
                s.starts_with("s3://") || s.starts_with("file:///"),
                "--berth-storage takes s3://BUCKET/PREFIX or file:///PATH, not {s:?}"
            );
            anyhow::ensure!(
                !self.moto || s.starts_with("s3://"),
                "--moto needs --berth-storage s3://BUCKET/PREFIX"
            );
        } else {
            anyhow::ensure!(
                !self.moto && self.s3_endpoint.is_none(),
                "--moto and --s3-endpoint need --berth-storage s3://BUCKET/PREFIX"
            );
        }
        if let Some(d) = &self.berth_database {
            anyhow::ensure!(
                d.starts_with("postgres://") || d.starts_with("postgresql://"),
                "--berth-database takes a postgres:// URL (SQLite is the default)"
            );
        }
        anyhow::ensure!(self.populate_budget > 0, "--populate-budget must be at least 1");
        Ok(())
    }
}

/// Index of Berth's samples in [`Figure::samples`] (and of Berth in a server pair).
const BERTH: usize = 0;
/// Index of the peer's.
const PEER: usize = 1;

/// One measured figure: samples per server, Berth's then the peer's.
struct Figure {
    name: String,
    unit: &'static str,
    /// Lower is better (times) or higher is better (throughput).
    lower_is_better: bool,
    samples: [Vec<f64>; 2],
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn spread(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

impl Figure {
    fn new(name: String, unit: &'static str, lower_is_better: bool) -> Figure {
        Figure {
            name,
            unit,
            lower_is_better,
            samples: [Vec::new(), Vec::new()],
        }
    }

    /// Records a sample for `side` ([`BERTH`] or [`PEER`]).
    fn add(&mut self, side: usize, value: f64) {
        self.samples[side].push(value);
    }

    fn ratio(&self) -> f64 {
        let (b, p) = (median(&self.samples[BERTH]), median(&self.samples[PEER]));
        if self.lower_is_better {
            p / b
        } else {
            b / p
        }
    }
}

/// The index of the figure called `name` in `figs`, added (empty) if there is none yet: for
/// figures whose name depends on what a run reached.
fn figure_index(figs: &mut Vec<Figure>, name: String, unit: &'static str, lower_is_better: bool) -> usize {
    if let Some(i) = figs.iter().position(|f| f.name == name) {
        return i;
    }
    figs.push(Figure::new(name, unit, lower_is_better));
    figs.len() - 1
}

/// Which server of a pair goes first in `run`: alternating, so neither always meets the other's
/// leftovers (dirty pages, a warm CPU cache, a busy disk).
fn order(run: usize) -> [usize; 2] {
    if run.is_multiple_of(2) {
        [BERTH, PEER]
    } else {
        [PEER, BERTH]
    }
}

fn who(server: &Server) -> &'static str {
    match server.kind {
        Kind::Berth => "berth",
        Kind::Reference => "peer",
    }
}

/// Berth and the reference registry, started over new directories `dir/NAME-…`, as
/// `[berth, peer]`; Berth on the database and storage the command line names.
fn start_pair(cli: &Cli, dir: &Path, name: &str) -> Result<[Server; 2]> {
    let berth = start_berth(cli, &dir.join(format!("{name}-berth")))?;
    let peer = Server::reference(&dir.join(format!("{name}-reference")), free_port()?)?;
    Ok([berth, peer])
}

/// Starts Berth over `data` as `--berth-database`, `--berth-storage`, `--s3-endpoint` and
/// `--moto` say; its database and moto server end with it.
fn start_berth(cli: &Cli, data: &Path) -> Result<Server> {
    static SERIAL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = data
        .file_name()
        .map_or_else(|| "berth".to_owned(), |n| n.to_string_lossy().into_owned());
    std::fs::create_dir_all(data)?;
    let mut args: Vec<String> = Vec::new();
    let db = match &cli.berth_database {
        Some(admin) => Some(PgDatabase::create(admin, "bench")?),
        None => None,
    };
    if let Some(db) = &db {
        args.extend(["--database".to_owned(), db.url.clone()]);
    }
    let mut moto = None;
    if let Some(url) = &cli.berth_storage {
        let mut config = String::new();
        let storage = if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            anyhow::ensure!(!bucket.is_empty(), "{url:?} names no bucket");
            let own = format!("{name}-{serial}");
            let prefix = [prefix.trim_matches('/'), own.as_str()]
                .iter()
                .filter(|p| !p.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join("/");
            if cli.moto {
                let m = Moto::start(data, bucket)?;
                config = format!(
                    "[s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\npath_style = true\n\
                     access_key_id = \"bench\"\nsecret_access_key = \"bench\"\n",
                    m.endpoint
                );
                moto = Some(m);
            } else if let Some(e) = &cli.s3_endpoint {
                config = format!("[s3]\nendpoint = \"{e}\"\npath_style = true\n");
            }
            format!("s3://{bucket}/{prefix}")
        } else {
            format!("{}/{name}-{serial}", url.trim_end_matches('/'))
        };
        args.extend(["--storage".to_owned(), storage]);
        if !config.is_empty() {
            let file = data.join("bench-config.toml");
            std::fs::write(&file, config)?;
            args.extend(["--config".to_owned(), file.display().to_string()]);
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Server::berth_on(&sibling_bin("berth-registry")?, data, "127.0.0.1", free_port()?, &args)?;
    // Dropped after the server's process: the database is no longer in use then.
    if let Some(db) = db {
        server.attach(db);
    }
    if let Some(m) = moto {
        server.attach(m);
    }
    Ok(server)
}

/// Stops both servers and deletes their data (their logs stay beside it).
fn discard(pair: [Server; 2]) {
    for mut server in pair {
        server.crash();
        let _ = std::fs::remove_dir_all(&server.data);
    }
}

/// Deterministic data (xorshift, seeded): the same bytes on every machine.
fn generate(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.max(1);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `1 GiB`, `100 MiB`, `64 KiB`: sizes as the figures name them.
fn size_label(n: usize) -> String {
    match n {
        n if n >= 1 << 30 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 => format!("{} MiB", n >> 20),
        n => format!("{} KiB", n >> 10),
    }
}

/// `1k`, `100k`, `50`: counts as the figures name them.
fn count_label(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_owned()
    } else {
        format!("{base}{location}")
    }
}

/// Flushes dirty pages and, unless told to keep them (or not root), drops the page cache;
/// answers whether it dropped it.
fn settle(keep_caches: bool) -> Result<bool> {
    std::process::Command::new("sync").status()?;
    Ok(!keep_caches && std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok())
}

/// Blob content to push: `body ++ tail`. Blobs made by one [`Source`] share `body` (generated
/// once) and differ in `tail`, so each is new content that neither server can skip as already
/// stored.
struct Blob {
    body: Bytes,
    tail: Bytes,
    digest: String,
}

/// Makes [`Blob`]s sharing one body. The digest of each comes from a clone of a hasher that
/// has already read the body: a 1 GiB body is hashed once, not once per upload.
struct Source {
    body: Bytes,
    hashed: Sha256,
}

/// Tells the tails of one process apart.
static FRESH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Source {
    fn new(len: usize, seed: u64) -> Source {
        let body = Bytes::from(generate(len, seed));
        let mut hashed = Sha256::new();
        hashed.update(&body);
        Source { body, hashed }
    }

    /// A blob never pushed before: the body and a tail unique to this process and call.
    fn fresh(&self) -> Blob {
        let n = FRESH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tail = Bytes::from(format!(
            "\nberth-bench {} {n} {:?}\n",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        let mut h = self.hashed.clone();
        h.update(&tail);
        Blob {
            body: self.body.clone(),
            digest: berth_oci::Digest::from_sha256(&h.finalize()).to_string(),
            tail,
        }
    }
}

impl Blob {
    /// A blob of exactly `bytes`.
    fn whole(bytes: Vec<u8>) -> Blob {
        Blob {
            digest: berth_oci::Digest::of(&bytes).to_string(),
            body: Bytes::from(bytes),
            tail: Bytes::new(),
        }
    }

    fn len(&self) -> usize {
        self.body.len() + self.tail.len()
    }

    /// Bytes `range` as a streamed request body, in slices of at most 256 KiB, never copied.
    fn stream(&self, range: Range<usize>) -> reqwest::Body {
        const SLICE: usize = 256 * 1024;
        let mut pieces = Vec::new();
        let mut offset = 0;
        for part in [&self.body, &self.tail] {
            let (lo, hi) = (range.start.max(offset), range.end.min(offset + part.len()));
            pieces.extend(
                (lo..hi)
                    .step_by(SLICE)
                    .map(|i| Ok::<_, std::io::Error>(part.slice(i - offset..(i + SLICE).min(hi) - offset))),
            );
            offset += part.len();
        }
        reqwest::Body::wrap_stream(futures::stream::iter(pieces))
    }
}

/// How a blob goes up after the POST.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One PUT `?digest=` carrying the whole blob.
    Monolithic,
    /// PATCHes of this many bytes with `Content-Range`, then an empty PUT `?digest=`.
    Chunked(usize),
}

impl Mode {
    fn label(self) -> String {
        match self {
            Mode::Monolithic => "monolithic".to_owned(),
            Mode::Chunked(n) => format!("chunked {}", size_label(n)),
        }
    }
}

/// Fails unless `r` answered `want`, quoting the body.
async fn expect_status(
    r: reqwest::Response,
    want: StatusCode,
    server: &Server,
    what: &str,
) -> Result<reqwest::Response> {
    if r.status() == want {
        return Ok(r);
    }
    let (status, url) = (r.status(), r.url().clone());
    bail!(
        "{:?}: {what} {url} answered {status}: {}",
        server.kind,
        r.text().await.unwrap_or_default()
    )
}

/// The absolute URL in `r`'s `Location`.
fn location(server: &Server, r: &reqwest::Response) -> Result<String> {
    let loc = r
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .with_context(|| format!("{:?}: {} answered no Location", server.kind, r.url()))?;
    Ok(absolute(&server.url(), loc))
}

/// POSTs to `repo`'s uploads, asking to mount `(digest, from)` if given. Answers the upload
/// session's URL, or `None` when the blob was mounted and nothing is left to send.
async fn open_upload(
    client: &reqwest::Client,
    server: &Server,
    repo: &str,
    auth: &HeaderMap,
    mount: Option<(&str, &str)>,
) -> Result<Option<String>> {
    let mut url = format!("{}/v2/{repo}/blobs/uploads/", server.url());
    if let Some((digest, from)) = mount {
        url.push_str(&format!("?mount={digest}&from={from}"));
    }
    let r = client.post(url).headers(auth.clone()).send().await?;
    if mount.is_some() && r.status() == StatusCode::CREATED {
        return Ok(None);
    }
    let r = expect_status(r, StatusCode::ACCEPTED, server, "POST").await?;
    Ok(Some(location(server, &r)?))
}

/// Sends `blob` into the upload session at `loc` the way `mode` says; each PATCH goes to the
/// Location the previous answer gave.
async fn send_blob(
    client: &reqwest::Client,
    server: &Server,
    mut loc: String,
    blob: &Blob,
    mode: Mode,
    auth: &HeaderMap,
) -> Result<()> {
    let len = blob.len();
    let mut sent = 0;
    if let Mode::Chunked(chunk) = mode {
        while sent < len {
            let end = (sent + chunk).min(len);
            let r = client
                .patch(&loc)
                .headers(auth.clone())
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_RANGE, format!("{sent}-{}", end - 1))
                .header(CONTENT_LENGTH, end - sent)
                .body(blob.stream(sent..end))
                .send()
                .await?;
            let r = expect_status(r, StatusCode::ACCEPTED, server, "PATCH").await?;
            loc = location(server, &r)?;
            sent = end;
        }
    }
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = client
        .put(format!("{loc}{sep}digest={}", blob.digest))
        .headers(auth.clone())
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(CONTENT_LENGTH, len - sent)
        .body(blob.stream(sent..len))
        .send()
        .await?;
    expect_status(r, StatusCode::CREATED, server, "PUT").await?;
    Ok(())
}

/// Puts `blob` into `repo` monolithically, or mounts it from `mount_from` where the server can.
async fn push_blob(
    client: &reqwest::Client,
    server: &Server,
    repo: &str,
    blob: &Blob,
    auth: &HeaderMap,
    mount_from: Option<&str>,
) -> Result<()> {
    let mount = mount_from.map(|from| (blob.digest.as_str(), from));
    match open_upload(client, server, repo, auth, mount).await? {
        Some(loc) => send_blob(client, server, loc, blob, Mode::Monolithic, auth).await,
        None => Ok(()),
    }
}

/// Pushes `blobs` to `server` all at once, each into a repository of its own, the way `mode`
/// says. Only the sending is timed: the POSTs come first, then [`settle`], so each run pays
/// only for its own writes. Returns seconds, the server's peak RSS (KiB) over the sending and
/// each blob's URL.
async fn put_once(
    client: &reqwest::Client,
    server: &Server,
    blobs: &[Blob],
    mode: Mode,
    keep_caches: bool,
) -> Result<(f64, Option<u64>, Vec<String>)> {
    let none = HeaderMap::new();
    let mut sessions = Vec::new();
    let mut urls = Vec::new();
    for blob in blobs {
        let repo = format!("bench/put-{}", &blob.digest[7..19]);
        sessions.push(
            open_upload(client, server, &repo, &none, None)
                .await?
                .context("a POST without mount answered 201")?,
        );
        urls.push(format!("{}/v2/{repo}/blobs/{}", server.url(), blob.digest));
    }
    settle(keep_caches)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.reset_peak_rss();
    let started = Instant::now();
    futures::future::try_join_all(
        blobs
            .iter()
            .zip(sessions)
            .map(|(blob, loc)| send_blob(client, server, loc, blob, mode, &none)),
    )
    .await?;
    Ok((started.elapsed().as_secs_f64(), server.peak_rss_kib(), urls))
}

/// Most bytes one timed run of `blob-push` or `blob-pull` may have in flight: 16 clients of
/// 1 GiB each would stage 16 GiB on a 2-core machine, so the concurrency is cut to fit.
const IN_FLIGHT_CAP: usize = 2 << 30;

/// The blob sizes of `blob-push` and `blob-pull`, smallest first.
fn blob_sizes(smoke: bool) -> Vec<usize> {
    if smoke {
        vec![64 << 10, 1 << 20]
    } else {
        vec![1 << 20, 100 << 20, 1 << 30]
    }
}

/// Concurrency levels for blobs of `size`: 1 and 16, the latter cut to [`IN_FLIGHT_CAP`].
fn blob_levels(size: usize) -> Vec<usize> {
    let top = (IN_FLIGHT_CAP / size).clamp(1, 16);
    if top == 1 {
        vec![1]
    } else {
        vec![1, top]
    }
}

/// Which `blob-push` cases to run: all of them, or some of the largest size from one client.
#[derive(Clone, Copy)]
struct PushCases {
    all: bool,
    /// `blob-put`: monolithic.
    put: bool,
    /// `blob-put-chunked`: chunked.
    put_chunked: bool,
}

impl PushCases {
    fn wants(self, size: usize, largest: usize, mode: Mode, c: usize) -> bool {
        self.all
            || (size == largest
                && c == 1
                && match mode {
                    Mode::Monolithic => self.put,
                    Mode::Chunked(_) => self.put_chunked,
                })
    }
}

/// `blob-push`, or the cases of it `cases` names.
async fn blob_push(cli: &Cli, dir: &Path, cases: PushCases) -> Result<Vec<Figure>> {
    let sizes = blob_sizes(cli.smoke);
    let largest = sizes.iter().copied().max().unwrap_or_default();
    let chunk = if cli.smoke { 256 << 10 } else { 8 << 20 };
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let mut figs = Vec::new();
    for size in sizes {
        if !cases.all && size != largest {
            continue;
        }
        let source = Source::new(size, 42);
        for mode in [Mode::Monolithic, Mode::Chunked(chunk)] {
            for c in blob_levels(size) {
                if !cases.wants(size, largest, mode, c) {
                    continue;
                }
                let name = format!("blob push {} {} c={c}", size_label(size), mode.label());
                let mut time = Figure::new(format!("{name} (s)"), "s", true);
                let mut rate = Figure::new(format!("{name} (MB/s)"), "MB/s", false);
                let mut rss = Figure::new(format!("{name} peak RSS (MiB)"), "MiB", true);
                for run in 0..cli.runs {
                    let pair = start_pair(cli, dir, "push")?;
                    for i in order(run) {
                        let blobs: Vec<Blob> = (0..c).map(|_| source.fresh()).collect();
                        let (secs, peak, _) = put_once(&client, &pair[i], &blobs, mode, cli.keep_caches).await?;
                        time.add(i, secs);
                        rate.add(i, (size * c) as f64 / secs / 1e6);
                        rss.add(i, peak.map_or(f64::NAN, |k| k as f64 / 1024.0));
                    }
                    discard(pair);
                }
                figs.extend([time, rate, rss]);
            }
        }
    }
    Ok(figs)
}

/// Reads `url` to the end; returns the bytes read.
async fn get_once(client: &reqwest::Client, url: &str) -> Result<u64> {
    let r = client.get(url).send().await?;
    if r.status() != StatusCode::OK {
        bail!("GET {url} answered {}", r.status());
    }
    let mut s = r.bytes_stream();
    let mut n = 0u64;
    while let Some(chunk) = s.next().await {
        n += chunk?.len() as u64;
    }
    Ok(n)
}

/// `blob-pull`; with `only_get`, the one case `blob-get` names (largest, c=1).
async fn blob_pull(cli: &Cli, pair: &[Server; 2], only_get: bool) -> Result<Vec<Figure>> {
    let sizes = blob_sizes(cli.smoke);
    let largest = sizes.iter().copied().max().unwrap_or_default();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let mut figs = Vec::new();
    for size in sizes {
        if only_get && size != largest {
            continue;
        }
        let source = Source::new(size, 43);
        let mut urls = Vec::new();
        for server in pair {
            let (_, _, url) = put_once(&client, server, &[source.fresh()], Mode::Monolithic, true).await?;
            get_once(&client, &url[0]).await?; // warm the page cache
            urls.push(url[0].clone());
        }
        for c in blob_levels(size) {
            if only_get && c != 1 {
                continue;
            }
            let name = format!("blob pull {} c={c}", size_label(size));
            let mut time = Figure::new(format!("{name} (s)"), "s", true);
            let mut rate = Figure::new(format!("{name} (MB/s)"), "MB/s", false);
            for run in 0..cli.runs {
                for i in order(run) {
                    let started = Instant::now();
                    let got = futures::future::try_join_all((0..c).map(|_| get_once(&client, &urls[i]))).await?;
                    let secs = started.elapsed().as_secs_f64();
                    anyhow::ensure!(
                        got.iter().all(|&n| n as usize >= size),
                        "short read: {got:?} of {size} bytes"
                    );
                    time.add(i, secs);
                    rate.add(i, got.iter().sum::<u64>() as f64 / secs / 1e6);
                }
            }
            figs.extend([time, rate]);
        }
    }
    Ok(figs)
}
/// A tar archive holding one file `name` with `data` (ustar, by hand: the layout needs valid
/// layers, and a tar library would be a dependency for 20 lines).
fn tar_one(name: &str, data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

/// Writes an OCI layout at `dir` with one image tagged `1` of `layers` layers of `each` bytes,
/// content chosen by `seed`.
fn make_layout(dir: &Path, layers: usize, each: usize, seed: u64) -> Result<()> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8]| -> Result<(String, usize)> {
        let d = berth_oci::Digest::of(bytes);
        std::fs::write(blobs.join(d.hex()), bytes)?;
        Ok((d.to_string(), bytes.len()))
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for i in 0..layers {
        let tar = tar_one(&format!("layer{i}.bin"), &generate(each, seed * 1000 + i as u64));
        let (d, n) = put(&tar)?;
        diff_ids.push(d.clone());
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": n}));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let (cd, cn) = put(config.to_string().as_bytes())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": berth_oci::media::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
        "layers": descs,
    });
    let (md, mn) = put(manifest.to_string().as_bytes())?;
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": berth_oci::media::OCI_MANIFEST, "digest": md, "size": mn,
        "annotations": {"org.opencontainers.image.ref.name": "1"}}]});
    std::fs::write(dir.join("index.json"), index.to_string())?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(())
}

/// Runs `cmd` after flushing dirty pages (untimed), so that no run pays for the writeback of
/// the one before; returns the seconds it took.
fn timed(cmd: &mut std::process::Command) -> Result<f64> {
    std::process::Command::new("sync").status()?;
    let started = Instant::now();
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(secs)
}

async fn client(cli: &Cli, dir: &Path, berth: &Server) -> Result<Vec<Figure>> {
    let (layers, each, label) = if cli.smoke {
        (3, 1 << 20, "3 MB")
    } else {
        (3, 200 << 20, "600 MB")
    };
    let bin = sibling_bin("berth")?;
    let mut push = Figure::new(format!("push {label} 3 layers, berth vs skopeo (s)"), "s", true);
    let mut pull = Figure::new(format!("pull {label} 3 layers, berth vs skopeo (s)"), "s", true);
    for run in 0..cli.runs {
        // New content every run, pushed by each tool to a repository of its own: neither can
        // skip or mount a blob the other (or an earlier run) already sent; skopeo's blob-info
        // cache would otherwise turn its push into mounts.
        let (lb, ls) = (dir.join(format!("layout-b{run}")), dir.join(format!("layout-s{run}")));
        make_layout(&lb, layers, each, 2 * run as u64 + 1)?;
        make_layout(&ls, layers, each, 2 * run as u64 + 2)?;
        let (rb, rs) = (
            format!("{}/bench/client-b{run}:1", berth.addr),
            format!("{}/bench/client-s{run}:1", berth.addr),
        );
        let (ob, os) = (dir.join(format!("pull-b{run}")), dir.join(format!("pull-s{run}")));
        let berth_push = || {
            timed(
                std::process::Command::new(&bin)
                    .args(["--quiet", "push"])
                    .arg(&lb)
                    .arg(&rb),
            )
        };
        let skopeo_push = || {
            timed(
                std::process::Command::new("skopeo")
                    .args(["copy", "--quiet", "--dest-tls-verify=false"])
                    .arg(format!("oci:{}:1", ls.display()))
                    .arg(format!("docker://{rs}")),
            )
        };
        let berth_pull = || {
            timed(
                std::process::Command::new(&bin)
                    .args(["--quiet", "pull", &rb, "--to"])
                    .arg(&ob),
            )
        };
        let skopeo_pull = || {
            timed(
                std::process::Command::new("skopeo")
                    .args(["copy", "--quiet", "--src-tls-verify=false"])
                    .arg(format!("docker://{rs}"))
                    .arg(format!("oci:{}:1", os.display())),
            )
        };
        settle(true)?;
        for i in order(run) {
            push.add(i, if i == BERTH { berth_push() } else { skopeo_push() }?);
        }
        for i in order(run) {
            pull.add(i, if i == BERTH { berth_pull() } else { skopeo_pull() }?);
        }
        for d in [&ob, &os, &lb, &ls] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
    Ok(vec![push, pull])
}

/// A small image in one repository: its config and layer blobs and its manifest.
struct SmallImage {
    /// `http://HOST:PORT/v2/REPO`.
    base: String,
    /// [config, layer].
    blobs: [Blob; 2],
    manifest: String,
    digest: String,
}

impl SmallImage {
    /// `base/rest`.
    fn url(&self, rest: &str) -> String {
        format!("{}/{rest}", self.base)
    }
}

/// PUTs `img`'s manifest into `repo` under `tag`.
async fn put_manifest(
    client: &reqwest::Client,
    server: &Server,
    repo: &str,
    tag: &str,
    img: &SmallImage,
    auth: &HeaderMap,
) -> Result<()> {
    let r = client
        .put(format!("{}/v2/{repo}/manifests/{tag}", server.url()))
        .headers(auth.clone())
        .header(CONTENT_TYPE, berth_oci::media::OCI_MANIFEST)
        .body(img.manifest.clone())
        .send()
        .await?;
    expect_status(r, StatusCode::CREATED, server, "manifest PUT").await?;
    Ok(())
}

/// Pushes a small image (config, one 4 KiB layer, manifest tagged `v1`) to `repo`.
async fn push_small_image(
    client: &reqwest::Client,
    server: &Server,
    repo: &str,
    auth: &HeaderMap,
) -> Result<SmallImage> {
    let config =
        Blob::whole(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec());
    let layer = Blob::whole(generate(4096, 7));
    for blob in [&config, &layer] {
        push_blob(client, server, repo, blob, auth, None).await?;
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": berth_oci::media::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.digest, "size": layer.len()}],
    })
    .to_string();
    let img = SmallImage {
        base: format!("{}/v2/{repo}", server.url()),
        blobs: [config, layer],
        digest: berth_oci::Digest::of(manifest.as_bytes()).to_string(),
        manifest,
    };
    put_manifest(client, server, repo, "v1", &img, auth).await?;
    Ok(img)
}

/// Result of a closed-loop load run.
struct Load {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `concurrency` loops, each sending `method` `url` and reading the whole answer (which must be
/// 200), for `duration`.
async fn load(method: Method, url: &str, concurrency: usize, duration: Duration, headers: HeaderMap) -> Result<Load> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, method, url, headers) = (client.clone(), method.clone(), url.to_owned(), headers.clone());
        tasks.spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let r = client
                    .request(method.clone(), &url)
                    .headers(headers.clone())
                    .send()
                    .await?;
                let status = r.status();
                let _ = r.bytes().await?;
                if status != StatusCode::OK {
                    bail!("{method} {url} answered {status}");
                }
                lat.push(t0.elapsed().as_micros() as u64);
            }
            Ok::<_, anyhow::Error>(lat)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(f64::NAN, |us| *us as f64 / 1000.0)
    };
    Ok(Load {
        per_sec: all.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    })
}

fn accept_manifests() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        ACCEPT,
        reqwest::header::HeaderValue::from_static(
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        ),
    );
    h
}

/// Tags in the repository whose tag list `small-requests` reads.
const SMALL_TAGS: usize = 50;

/// The requests of `small-requests` against `img`: label, method, URL, headers.
fn small_requests_of(img: &SmallImage) -> [(String, Method, String, HeaderMap); 5] {
    [
        (
            "manifest GET by tag".to_owned(),
            Method::GET,
            img.url("manifests/v1"),
            accept_manifests(),
        ),
        (
            "manifest GET by digest".to_owned(),
            Method::GET,
            img.url(&format!("manifests/{}", img.digest)),
            accept_manifests(),
        ),
        (
            "manifest HEAD by tag".to_owned(),
            Method::HEAD,
            img.url("manifests/v1"),
            accept_manifests(),
        ),
        (
            "blob HEAD".to_owned(),
            Method::HEAD,
            img.url(&format!("blobs/{}", img.blobs[1].digest)),
            HeaderMap::new(),
        ),
        (
            format!("tags list ({SMALL_TAGS} tags)"),
            Method::GET,
            img.url("tags/list"),
            HeaderMap::new(),
        ),
    ]
}

/// `small-requests`; with `only_manifest_get`, the manifest GET by tag alone (`manifest-get`).
async fn small_requests(cli: &Cli, pair: &[Server; 2], only_manifest_get: bool) -> Result<Vec<Figure>> {
    let client = reqwest::Client::new();
    let none = HeaderMap::new();
    let mut requests = Vec::new();
    for server in pair {
        let img = push_small_image(&client, server, "bench/small", &none).await?;
        for t in 1..SMALL_TAGS {
            put_manifest(&client, server, "bench/small", &format!("t{t:02}"), &img, &none).await?;
        }
        requests.push(small_requests_of(&img));
    }
    let (levels, duration): (&[usize], Duration) = if cli.smoke {
        (&[1, 4], Duration::from_millis(300))
    } else {
        (&[1, 16, 64], Duration::from_secs(2))
    };
    let kinds = if only_manifest_get { 1 } else { requests[BERTH].len() };
    let mut figs = Vec::new();
    for (k, (label, ..)) in requests[BERTH].iter().enumerate().take(kinds) {
        for &c in levels {
            let mut rate = Figure::new(format!("{label} c={c} (req/s)"), "req/s", false);
            let mut p50 = Figure::new(format!("{label} c={c} p50 (ms)"), "ms", true);
            let mut p99 = Figure::new(format!("{label} c={c} p99 (ms)"), "ms", true);
            for run in 0..cli.runs {
                for i in order(run) {
                    let (_, method, url, headers) = &requests[i][k];
                    let l = load(method.clone(), url, c, duration, headers.clone()).await?;
                    rate.add(i, l.per_sec);
                    p50.add(i, l.p50_ms);
                    p99.add(i, l.p99_ms);
                }
            }
            figs.extend([rate, p50, p99]);
        }
    }
    Ok(figs)
}

/// Requests kept in flight while `scale` populates a registry.
const POPULATE_IN_FLIGHT: usize = 32;
/// The repository `scale` pushes its image to first, mounts blobs from, and grows tags on.
const SCALE_BASE: &str = "scale/r00000";
/// Bound on the pages a listing walk follows (100k tags are 100 pages of 1000).
const MAX_PAGES: usize = 10_000;

/// One step of populating: a new repository (both blobs mounted from [`SCALE_BASE`], the
/// manifest tagged `v1`), or one more tag on [`SCALE_BASE`] (the same manifest).
#[derive(Clone, Copy)]
enum Job {
    Repo(usize),
    Tag(usize),
}

impl Job {
    fn requests(self) -> u64 {
        match self {
            Job::Repo(_) => 3,
            Job::Tag(_) => 1,
        }
    }

    async fn run(self, client: &reqwest::Client, server: &Server, img: &SmallImage) -> Result<()> {
        let none = HeaderMap::new();
        match self {
            Job::Repo(i) => {
                let repo = format!("scale/r{i:05}");
                for blob in &img.blobs {
                    push_blob(client, server, &repo, blob, &none, Some(SCALE_BASE)).await?;
                }
                put_manifest(client, server, &repo, "v1", img, &none).await
            }
            Job::Tag(j) => put_manifest(client, server, SCALE_BASE, &format!("t{j:06}"), img, &none).await,
        }
    }
}

/// One server's side of `scale`: how far it is populated and what that cost.
struct Populated<'a> {
    server: &'a Server,
    img: SmallImage,
    repos: usize,
    /// Tags on [`SCALE_BASE`].
    tags: usize,
    requests: u64,
    secs: f64,
    /// Why populating stopped short, once it has.
    stopped: Option<String>,
    /// Populating time it gets in all (`--populate-budget`, outside `--smoke` the bound that
    /// keeps the workload to a few minutes).
    budget: Duration,
}

impl Populated<'_> {
    /// Grows the registry towards `repos` repositories and `tags` tags on [`SCALE_BASE`], within
    /// its `budget` of populating in all. When the rate so far says the step would not
    /// fit, only the part that fits is populated (repositories first); when the budget runs out
    /// anyway, it stops where it is. Either way it says so in `notes` and populates no further.
    /// Returns the seconds it took, when it populated all it was asked.
    async fn grow(
        &mut self,
        client: &reqwest::Client,
        repos: usize,
        tags: usize,
        notes: &mut Vec<String>,
    ) -> Result<Option<f64>> {
        if self.stopped.is_some() {
            return Ok(None);
        }
        let name = who(self.server);
        let target = format!("{} repositories, {} tags", count_label(repos), count_label(tags));
        let mut jobs: Vec<Job> = (self.repos..repos)
            .map(Job::Repo)
            .chain((self.tags..tags).map(Job::Tag))
            .collect();
        let budget = self.budget.as_secs_f64();
        let mut short = None;
        if self.requests > 0 {
            let rate = self.requests as f64 / self.secs;
            let projected = self.secs + jobs.iter().map(|j| j.requests()).sum::<u64>() as f64 / rate;
            if projected > budget {
                let fits = ((budget - self.secs) * rate).max(0.0) as u64;
                let mut sum = 0;
                let keep = jobs
                    .iter()
                    .take_while(|j| {
                        sum += j.requests();
                        sum <= fits
                    })
                    .count();
                jobs.truncate(keep);
                short = Some(format!(
                    "at its {rate:.0} req/s, populating to {target} would take {projected:.0} s in all, \
                     over the {budget:.0} s budget"
                ));
            }
        }
        let requests: u64 = jobs.iter().map(|j| j.requests()).sum();
        settle(true)?;
        let deadline = Instant::now() + self.budget.saturating_sub(Duration::from_secs_f64(self.secs));
        let (server, img) = (self.server, &self.img);
        let started = Instant::now();
        let done: Vec<Option<Job>> = futures::stream::iter(jobs)
            .map(|job| async move {
                if Instant::now() >= deadline {
                    return Ok(None);
                }
                job.run(client, server, img).await.map(|()| Some(job))
            })
            .buffer_unordered(POPULATE_IN_FLIGHT)
            .try_collect()
            .await?;
        let secs = started.elapsed().as_secs_f64();
        self.secs += secs;
        for job in done.iter().flatten() {
            self.requests += job.requests();
            match job {
                Job::Repo(_) => self.repos += 1,
                Job::Tag(_) => self.tags += 1,
            }
        }
        if done.iter().any(Option::is_none) {
            short = Some(format!("the {budget:.0} s budget ran out while populating to {target}"));
        }
        if let Some(why) = short {
            let why = format!(
                "{name}: {why}: populated only to {} repositories, {} tags ({:.1} s of populating in all), \
                 and measured at that size",
                self.repos, self.tags, self.secs
            );
            notes.push(format!("scale: {why}"));
            self.stopped = Some(why);
            return Ok(None);
        }
        notes.push(format!(
            "scale: {name} populated to {target} in {secs:.2} s ({:.0} req/s, {POPULATE_IN_FLIGHT} in flight)",
            requests as f64 / secs
        ));
        Ok(Some(secs))
    }
}

/// A listing read page by page.
struct Walk {
    secs: f64,
    /// Each page's time, in order.
    page_secs: Vec<f64>,
    items: usize,
    pages: usize,
    /// The last page read still pointed to a next one.
    more: bool,
}

/// The target of `Link: <…>; rel="next"`.
fn next_link(value: &str) -> Option<&str> {
    let part = value.split(',').find(|p| p.contains("rel=\"next\""))?;
    part.get(part.find('<')? + 1..part.find('>')?)
}

/// GETs `url`, then follows `Link: <…>; rel="next"` up to `max_pages` pages in all; the
/// entries of `key` are counted afterwards, untimed.
async fn walk(client: &reqwest::Client, server: &Server, url: String, key: &str, max_pages: usize) -> Result<Walk> {
    let started = Instant::now();
    let mut bodies = Vec::new();
    let mut page_secs = Vec::new();
    let mut next = Some(url);
    while bodies.len() < max_pages {
        let Some(url) = next.take() else { break };
        let page_started = Instant::now();
        let r = expect_status(client.get(&url).send().await?, StatusCode::OK, server, "GET").await?;
        next = r
            .headers()
            .get(LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_link)
            .map(|l| absolute(&server.url(), l));
        bodies.push(r.bytes().await?);
        page_secs.push(page_started.elapsed().as_secs_f64());
    }
    let secs = started.elapsed().as_secs_f64();
    let mut items = 0;
    for body in &bodies {
        let v: serde_json::Value = serde_json::from_slice(body).context("a listing that is not JSON")?;
        items += v[key].as_array().map_or(0, Vec::len);
    }
    Ok(Walk {
        secs,
        page_secs,
        items,
        pages: bodies.len(),
        more: next.is_some(),
    })
}

/// How a cost grew when the size grew from `a` to `b`: whichever of flat (×1), log
/// (×ln b/ln a), linear (×b/a) or quadratic (×(b/a)²) is nearest, on a log scale. From 1k to
/// 10k, flat and log differ by only ×1.33: noise can swap them, never either with linear.
fn classify(growth: f64, a: usize, b: usize) -> &'static str {
    let (a, b) = (a as f64, b as f64);
    let expected = [
        ("flat", 1.0),
        ("log", b.ln() / a.ln()),
        ("linear", b / a),
        ("quadratic", (b / a).powi(2)),
    ];
    let off = |e: f64| (growth.ln() - e.ln()).abs();
    expected
        .into_iter()
        .min_by(|x, y| off(x.1).total_cmp(&off(y.1)))
        .map_or("?", |(name, _)| name)
}

/// One listing `scale` measures at each size.
struct Series {
    /// `tags list` or `catalog`.
    what: &'static str,
    how: String,
    catalog: bool,
    max_pages: usize,
}

/// `scale`: populates a fresh pair of servers step by step and measures listings at each size.
async fn scale(cli: &Cli, dir: &Path) -> Result<(Vec<Figure>, Vec<String>)> {
    // Steps of (repositories, tags on SCALE_BASE), and the page size asked for.
    let (steps, page) = if cli.smoke {
        ([(5, 10), (50, 100), (50, 1000)], 10)
    } else {
        ([(1000, 1000), (10_000, 10_000), (10_000, 100_000)], 1000)
    };
    let series = [
        ("tags list", format!("first page n={page}"), false, 1),
        ("tags list", "full walk".to_owned(), false, MAX_PAGES),
        ("catalog", format!("first page n={page}"), true, 1),
        ("catalog", "full walk".to_owned(), true, MAX_PAGES),
    ]
    .map(|(what, how, catalog, max_pages)| Series {
        what,
        how,
        catalog,
        max_pages,
    });
    let pair = start_pair(cli, dir, "scale")?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(POPULATE_IN_FLIGHT)
        .build()?;
    let mut sides = Vec::new();
    for server in &pair {
        sides.push(Populated {
            server,
            img: push_small_image(&client, server, SCALE_BASE, &HeaderMap::new()).await?,
            repos: 1,
            tags: 1,
            requests: 0,
            secs: 0.0,
            stopped: None,
            budget: Duration::from_secs(cli.populate_budget),
        });
    }
    let mut populate = Vec::new();
    let mut listings = Vec::new();
    let mut pages = Vec::new();
    let mut growths = Vec::new();
    let mut notes = Vec::new();
    // Per series and side: each size measured, with its figure's index in `listings`.
    let mut points: Vec<[Vec<(usize, usize)>; 2]> = series.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    for (step, &(repos, tags)) in steps.iter().enumerate() {
        let mut fill = Figure::new(
            format!(
                "scale populate step {}: to {} repos, {} tags (s)",
                step + 1,
                count_label(repos),
                count_label(tags)
            ),
            "s",
            true,
        );
        for (i, side) in sides.iter_mut().enumerate() {
            if let Some(secs) = side.grow(&client, repos, tags, &mut notes).await? {
                fill.add(i, secs);
            }
        }
        populate.push(fill);
        for (s, ser) in series.iter().enumerate() {
            // Each side at the size it reached, when that is new since it was last measured.
            let sizes = [BERTH, PEER].map(|i| {
                let size = if ser.catalog { sides[i].repos } else { sides[i].tags };
                (points[s][i].last().map(|p| p.0) != Some(size)).then_some(size)
            });
            let (url, key, unit) = if ser.catalog {
                (format!("/v2/_catalog?n={page}"), "repositories", "repos")
            } else {
                (format!("/v2/{SCALE_BASE}/tags/list?n={page}"), "tags", "tags")
            };
            let mut returned = Vec::new();
            for run in 0..cli.runs {
                for i in order(run) {
                    let Some(size) = sizes[i] else { continue };
                    let name = format!("scale {} @{} {unit}, {} (ms)", ser.what, count_label(size), ser.how);
                    let f = figure_index(&mut listings, name, "ms", true);
                    let w = walk(&client, &pair[i], format!("{}{url}", pair[i].url()), key, ser.max_pages).await?;
                    listings[f].add(i, w.secs * 1000.0);
                    if ser.max_pages > 1 {
                        let name = format!(
                            "scale {} @{} {unit}, median page of the full walk (ms)",
                            ser.what,
                            count_label(size)
                        );
                        let p = figure_index(&mut pages, name, "ms", true);
                        pages[p].add(i, median(&w.page_secs) * 1000.0);
                    }
                    if run == 0 {
                        points[s][i].push((size, f));
                        returned.push(format!(
                            "{} @{}: {} {key} in {} page{}, {}{}",
                            who(&pair[i]),
                            count_label(size),
                            w.items,
                            w.pages,
                            if w.pages == 1 { "" } else { "s" },
                            if w.more { "Link to more" } else { "no Link" },
                            if ser.max_pages > 1 && w.items != size {
                                format!(" (expected {size})")
                            } else {
                                String::new()
                            }
                        ));
                    }
                }
            }
            if !returned.is_empty() {
                notes.push(format!(
                    "scale {} {} returned: {}",
                    ser.what,
                    ser.how,
                    returned.join("; ")
                ));
            }
        }
    }
    for (s, ser) in series.iter().enumerate() {
        let mut words = Vec::new();
        for i in [BERTH, PEER] {
            let mut steps = Vec::new();
            for w in points[s][i].windows(2) {
                let ((a, fa), (b, fb)) = (w[0], w[1]);
                let g = median(&listings[fb].samples[i]) / median(&listings[fa].samples[i]);
                let step = format!("{}→{}", count_label(a), count_label(b));
                let name = format!("scale growth {} {}, {step} (×)", ser.what, ser.how);
                let k = figure_index(&mut growths, name, "×", true);
                growths[k].add(i, g);
                steps.push(format!("{step} ×{g:.2} ({})", classify(g, a, b)));
            }
            if steps.is_empty() {
                steps.push("not measured at two sizes".to_owned());
            }
            words.push(format!("{} {}", who(&pair[i]), steps.join(", ")));
        }
        notes.push(format!("scale growth {} {}: {}", ser.what, ser.how, words.join("; ")));
    }
    for side in &sides {
        notes.push(format!(
            "scale: {} populating took {:.1} s in all ({} requests, {} repositories, {} tags on {SCALE_BASE})",
            who(side.server),
            side.secs,
            side.requests,
            side.repos,
            side.tags
        ));
    }
    drop(sides);
    discard(pair);
    Ok((
        populate
            .into_iter()
            .chain(listings)
            .chain(pages)
            .chain(growths)
            .collect(),
        notes,
    ))
}

/// Runs `cmd` (stdin closed), which must succeed; answers its standard output.
fn output_of(cmd: &mut std::process::Command) -> Result<String> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`timed`], also answering the standard output (to check what a timed run did).
fn timed_output(cmd: &mut std::process::Command) -> Result<(f64, String)> {
    std::process::Command::new("sync").status()?;
    let started = Instant::now();
    let out = output_of(cmd)?;
    Ok((started.elapsed().as_secs_f64(), out))
}

/// Why a peer of the `node` workload cannot run here, if it cannot.
fn node_peer_missing(tool: &str) -> Option<String> {
    let args: &[&str] = if tool == "docker" { &["info"] } else { &["--version"] };
    match std::process::Command::new(tool)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "`{tool} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("").trim()
        )),
        Err(e) => Some(format!("{tool} is not installed ({e})")),
    }
}

/// Whether this process runs as root (the effective uid in `/proc/self/status`).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().nth(1))
            == Some("0")
    })
}

/// A runc bundle at `dir` for `image` (its one layer unpacked by GNU tar into `rootfs`, the
/// config from `runc spec` with the image's `Env` and no terminal), running `args`.
fn runc_bundle(dir: &Path, image: &images::Image, args: &[&str]) -> Result<()> {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    for (digest, _) in &image.layers {
        let blob = image.layout.join("blobs/sha256").join(&digest["sha256:".len()..]);
        output_of(
            std::process::Command::new("tar")
                .args(["--numeric-owner", "-xzf"])
                .arg(&blob)
                .arg("-C")
                .arg(&rootfs),
        )?;
    }
    let _ = std::fs::remove_file(dir.join("config.json"));
    output_of(std::process::Command::new("runc").args(["spec", "--bundle"]).arg(dir))?;
    runc_args(dir, args)
}

/// Rewrites the bundle's process: `args`, no terminal, docker's default PATH.
fn runc_args(dir: &Path, args: &[&str]) -> Result<()> {
    let path = dir.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["process"]["args"] = serde_json::json!(args);
    spec["process"]["env"] = serde_json::json!([images::DEFAULT_PATH]);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    Ok(())
}

/// Pushes `image` from its layout to `dst` with the `berth` client.
fn push_image(image: &images::Image, dst: &str) -> Result<()> {
    output_of(
        std::process::Command::new(sibling_bin("berth")?)
            .args(["--quiet", "push"])
            .arg(&image.layout)
            .arg(dst)
            .args(["--tag", &image.tag]),
    )?;
    Ok(())
}

/// `node`: `run --rm IMAGE true` latency (berth-node against `docker run` and against runc
/// alone on a bundle of the same rootfs), then pull + unpack of a ~600 MB 3-layer gzip image
/// (berth-node into a fresh root each run, against `docker pull` after `docker rmi`). What
/// cannot run here (no berth-node, not root, no docker daemon, no runc) is a note saying so.
async fn node(cli: &Cli, dir: &Path, berth: &Server) -> Result<(Vec<Figure>, Vec<String>)> {
    let mut notes = Vec::new();
    let na = |what: &str, why: &str| format!("node: {what}: not available ({why})");
    let (latency, pull) = ("`run --rm IMAGE true` latency", "pull + unpack of a 3-layer gzip image");
    let bin = match sibling_bin("berth-node") {
        Ok(b) => b,
        Err(e) => return Ok((Vec::new(), vec![na(latency, &e.to_string()), na(pull, &e.to_string())])),
    };
    if !is_root() {
        let why = "berth-node mounts overlays and makes namespaces: run berth-bench as root";
        return Ok((Vec::new(), vec![na(latency, why), na(pull, why)]));
    }
    let docker_missing = node_peer_missing("docker");
    let runc_missing = node_peer_missing("runc");
    let node_at = |root: &Path| {
        let mut c = std::process::Command::new(&bin);
        c.arg("--root").arg(root);
        c
    };
    let mut figs = Vec::new();

    // 1. `run --rm IMAGE true`: the busybox image of the node tests, pulled beforehand by
    // each side; one untimed run each, checked to print what it should, then samples in
    // rotating order.
    let imgs = images::node_layout(&dir.join("node-images"))?;
    let reference = format!("{}/bench/node:1", berth.addr);
    push_image(&imgs.plain, &reference)?;
    let root = dir.join("node-root");
    let pulled = output_of(node_at(&root).args(["pull", &reference]))?;
    if pulled.lines().last().map(str::trim) != Some(imgs.plain.digest.as_str()) {
        bail!(
            "berth-node pull {reference} printed {pulled:?}, not the digest {}",
            imgs.plain.digest
        );
    }
    let said = output_of(node_at(&root).args(["run", "--rm", "--network", "none", &reference, "echo", "ok"]))?;
    if said.trim() != "ok" {
        bail!("berth-node run {reference} echo ok printed {said:?}");
    }
    if let Some(why) = &docker_missing {
        notes.push(na(&format!("{latency}, docker run"), why));
    } else {
        output_of(std::process::Command::new("docker").args(["pull", "-q", &reference]))?;
        let said = output_of(std::process::Command::new("docker").args([
            "run",
            "--rm",
            "--network",
            "none",
            &reference,
            "echo",
            "ok",
        ]))?;
        if said.trim() != "ok" {
            bail!("docker run {reference} echo ok printed {said:?}");
        }
    }
    let bundle = dir.join("node-bundle");
    let mut runc_n = 0u32;
    let mut runc_run = |bundle: &Path| -> Result<(f64, String)> {
        runc_n += 1;
        timed_output(
            std::process::Command::new("runc")
                .args(["run", "--bundle"])
                .arg(bundle)
                .arg(format!("berth-bench-{}-{runc_n}", std::process::id())),
        )
    };
    if let Some(why) = &runc_missing {
        notes.push(na(&format!("{latency}, runc alone"), why));
    } else {
        runc_bundle(&bundle, &imgs.plain, &["echo", "ok"])?;
        let (_, said) = runc_run(&bundle)?;
        if said.trim() != "ok" {
            bail!("runc run echo ok printed {said:?}");
        }
        runc_args(&bundle, &["true"])?;
    }
    let mut vs_docker = Figure::new("run --rm true: berth-node vs docker run (ms)".into(), "ms", true);
    let mut vs_runc = Figure::new("run --rm true: berth-node vs runc alone (ms)".into(), "ms", true);
    let samples = if cli.smoke { 3 } else { cli.runs * 4 };
    for i in 0..=samples {
        let mut tools = vec!["berth-node"];
        if docker_missing.is_none() {
            tools.push("docker");
        }
        if runc_missing.is_none() {
            tools.push("runc");
        }
        if i % 2 == 1 {
            tools.reverse();
        }
        for tool in tools {
            let secs = match tool {
                "berth-node" => timed(node_at(&root).args(["run", "--rm", "--network", "none", &reference, "true"]))?,
                "docker" => timed(std::process::Command::new("docker").args([
                    "run",
                    "--rm",
                    "--network",
                    "none",
                    &reference,
                    "true",
                ]))?,
                _ => runc_run(&bundle)?.0,
            };
            // Sample 0 warms caches (page cache, cgroup and overlay metadata) and is dropped.
            if i == 0 {
                continue;
            }
            let ms = secs * 1e3;
            match tool {
                "berth-node" => {
                    vs_docker.add(BERTH, ms);
                    vs_runc.add(BERTH, ms);
                }
                "docker" => vs_docker.add(PEER, ms),
                _ => vs_runc.add(PEER, ms),
            }
        }
    }
    if docker_missing.is_none() {
        figs.push(vs_docker);
        let _ = output_of(std::process::Command::new("docker").args(["rmi", &reference]));
    }
    if runc_missing.is_none() {
        figs.push(vs_runc);
    }

    // 2. Pull + unpack of the big image: a fresh berth-node root every run, and a docker
    // without the image (rmi before each run).
    let (each, label) = if cli.smoke {
        (1 << 20, "3 MiB")
    } else {
        (200 << 20, "600 MiB")
    };
    let started = Instant::now();
    let big = images::big_layout(&dir.join("node-big"), 3, each, 42)?;
    let big_ref = format!("{}/bench/node-big:1", berth.addr);
    push_image(&big, &big_ref)?;
    notes.push(format!(
        "node: pull image: 3 gzip layers, {label} in all ({} bytes compressed), built and pushed in {:.1} s",
        big.blob_bytes(),
        started.elapsed().as_secs_f64()
    ));
    let mut pulls = Figure::new(
        format!("pull + unpack {label} 3 layers: berth-node vs docker pull (s)"),
        "s",
        true,
    );
    for run in 0..cli.runs {
        for i in order(run) {
            if i == BERTH {
                let root = dir.join(format!("node-pull-{run}"));
                settle(cli.keep_caches)?;
                let (secs, out) = timed_output(node_at(&root).args(["pull", &big_ref]))?;
                if out.lines().last().map(str::trim) != Some(big.digest.as_str()) {
                    bail!(
                        "berth-node pull {big_ref} printed {out:?}, not the digest {}",
                        big.digest
                    );
                }
                pulls.add(BERTH, secs);
                std::fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
            } else if docker_missing.is_none() {
                let _ = output_of(std::process::Command::new("docker").args(["rmi", &big_ref]));
                settle(cli.keep_caches)?;
                pulls.add(
                    PEER,
                    timed(std::process::Command::new("docker").args(["pull", "-q", &big_ref]))?,
                );
            }
        }
    }
    if let Some(why) = &docker_missing {
        notes.push(na(&format!("{pull}, docker pull"), why));
    } else {
        let _ = output_of(std::process::Command::new("docker").args(["rmi", &big_ref]));
    }
    figs.push(pulls);
    let _ = std::fs::remove_dir_all(dir.join("node-big"));
    Ok((figs, notes))
}

/// Starts Berth in `mode` with a user `bench` (password `bench-password`) and returns it with
/// the `Authorization` header a client would send after signing in.
async fn berth_with_auth(dir: &Path, mode: &str) -> Result<(Server, HeaderMap)> {
    use base64::Engine as _;
    let bin = sibling_bin("berth-registry")?;
    let data = dir.join(format!("berth-{mode}"));
    let mut child = std::process::Command::new(&bin)
        .args(["user", "add", "bench", "--password-stdin", "--data"])
        .arg(&data)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write as _;
        stdin.write_all(b"bench-password\n")?;
    }
    anyhow::ensure!(child.wait()?.success(), "berth-registry user add failed");
    let server = Server::berth_with(&bin, &data, free_port()?, &["--auth", mode])?;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("bench:bench-password")
    );
    let value = if mode == "token" {
        let r = reqwest::Client::new()
            .get(format!(
                "{}/token?service=berth&scope=repository:bench/small:pull,push",
                server.url()
            ))
            .header("authorization", &basic)
            .send()
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await?)?;
        format!(
            "Bearer {}",
            v["token"].as_str().context("no token in the /token answer")?
        )
    } else {
        basic
    };
    let mut h = HeaderMap::new();
    h.insert(reqwest::header::AUTHORIZATION, value.parse()?);
    Ok((server, h))
}

/// `auth-cost`: prints its own table (Berth only, three modes) and returns its rows for JSON.
async fn auth_cost(cli: &Cli, dir: &Path, open: &Server) -> Result<Vec<serde_json::Value>> {
    let (c, duration) = if cli.smoke {
        (4, Duration::from_millis(300))
    } else {
        (16, Duration::from_secs(3))
    };
    let client = reqwest::Client::new();
    let none = push_small_image(&client, open, "bench/small", &HeaderMap::new()).await?;
    let (basic, basic_h) = berth_with_auth(dir, "basic").await?;
    let (token, token_h) = berth_with_auth(dir, "token").await?;
    let basic_img = push_small_image(&client, &basic, "bench/small", &basic_h).await?;
    let token_img = push_small_image(&client, &token, "bench/small", &token_h).await?;
    let cases = [
        ("none", none, HeaderMap::new()),
        ("basic", basic_img, basic_h),
        ("token", token_img, token_h),
    ];
    let mut results: Vec<(&str, Vec<Load>)> = cases.iter().map(|(m, _, _)| (*m, Vec::new())).collect();
    for _ in 0..cli.runs {
        for (i, (_, img, h)) in cases.iter().enumerate() {
            let mut headers = accept_manifests();
            headers.extend(h.clone());
            results[i]
                .1
                .push(load(Method::GET, &img.url("manifests/v1"), c, duration, headers).await?);
        }
    }
    println!(
        "\nauth cost: manifest GET at c={c}, Berth only (median of {} runs)",
        cli.runs
    );
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>12}",
        "auth", "req/s", "p50 (ms)", "p99 (ms)", "vs none"
    );
    let base = median(&results[0].1.iter().map(|l| l.per_sec).collect::<Vec<_>>());
    let mut rows = Vec::new();
    for (mode, loads) in &results {
        let rate = median(&loads.iter().map(|l| l.per_sec).collect::<Vec<_>>());
        let p50 = median(&loads.iter().map(|l| l.p50_ms).collect::<Vec<_>>());
        let p99 = median(&loads.iter().map(|l| l.p99_ms).collect::<Vec<_>>());
        println!("{mode:<8} {rate:>10.0} {p50:>10.3} {p99:>10.3} {:>11.2}x", rate / base);
        rows.push(serde_json::json!({
            "auth": mode, "concurrency": c, "req_per_s": rate, "p50_ms": p50, "p99_ms": p99,
            "vs_none": rate / base,
        }));
    }
    Ok(rows)
}

fn print_table(figs: &[Figure]) {
    let width = figs.iter().map(|f| f.name.chars().count()).max().unwrap_or(0).max(6);
    println!(
        "{:<width$} {:>24} {:>24} {:>8}",
        "figure", "berth (median, min–max)", "peer (median, min–max)", "ratio"
    );
    for f in figs {
        let digits = match f.unit {
            "req/s" => 0,
            "MB/s" => 1,
            _ => 3,
        };
        let cell = |v: &[f64]| {
            if v.is_empty() {
                return "not measured".to_owned();
            }
            let (lo, hi) = spread(v);
            format!("{:.d$} ({:.d$}–{:.d$})", median(v), lo, hi, d = digits)
        };
        let ratio = f.ratio();
        println!(
            "{:<width$} {:>24} {:>24} {:>8}",
            f.name,
            cell(&f.samples[BERTH]),
            cell(&f.samples[PEER]),
            if ratio.is_finite() {
                format!("{ratio:.2}x")
            } else {
                "–".to_owned()
            }
        );
    }
    println!("ratio: peer/berth for times, sizes and growth, berth/peer for rates (above 1: Berth better)");
}

fn to_json(figs: &[Figure], notes: &[String], auth: &[serde_json::Value], cli: &Cli) -> serde_json::Value {
    serde_json::json!({
        "smoke": cli.smoke,
        "runs": cli.runs,
        "peer": "docker-registry (distribution 2.8, Debian)",
        "berth_setup": cli.berth_setup(),
        "page_cache_dropped": !cli.keep_caches,
        "figures": figs.iter().map(|f| serde_json::json!({
            "name": f.name,
            "unit": f.unit,
            "berth": { "median": median(&f.samples[BERTH]), "samples": f.samples[BERTH] },
            "peer": { "median": median(&f.samples[PEER]), "samples": f.samples[PEER] },
            "ratio": f.ratio(),
        })).collect::<Vec<_>>(),
        "notes": notes,
        "auth_cost": auth,
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    for w in &cli.only {
        if !WORKLOADS.contains(&w.as_str()) {
            bail!("unknown workload {w:?}; known: {}", WORKLOADS.join(", "));
        }
    }
    if cli.runs == 0 {
        bail!("--runs must be at least 1");
    }
    cli.check()?;
    let want = |w: &str| cli.only.is_empty() || cli.only.iter().any(|o| o == w);
    let dir = tempfile::Builder::new().prefix("berth-bench").tempdir()?;
    let pair = start_pair(&cli, dir.path(), "shared")?;
    let mut figs = Vec::new();
    let mut notes = Vec::new();
    notes.push(format!("berth: {}; peer: files", cli.berth_setup()));
    if want("blob-push") || want("blob-put") || want("blob-put-chunked") {
        let cases = PushCases {
            all: want("blob-push"),
            put: want("blob-put"),
            put_chunked: want("blob-put-chunked"),
        };
        figs.extend(blob_push(&cli, dir.path(), cases).await?);
        let dropped = settle(cli.keep_caches)?;
        notes.push(format!(
            "blob-push: page cache {} before each timed upload",
            if dropped { "dropped" } else { "kept (warm)" }
        ));
    }
    if want("blob-pull") || want("blob-get") {
        figs.extend(blob_pull(&cli, &pair, !want("blob-pull")).await?);
    }
    if want("client") {
        figs.extend(client(&cli, dir.path(), &pair[BERTH]).await?);
    }
    if want("small-requests") || want("manifest-get") {
        figs.extend(small_requests(&cli, &pair, !want("small-requests")).await?);
    }
    if want("scale") {
        let (f, n) = scale(&cli, dir.path()).await?;
        figs.extend(f);
        notes.extend(n);
    }
    if want("node") {
        let (f, n) = node(&cli, dir.path(), &pair[BERTH]).await?;
        figs.extend(f);
        notes.extend(n);
    }
    if !figs.is_empty() {
        print_table(&figs);
    }
    for note in &notes {
        println!("{note}");
    }
    let auth = if want("auth-cost") {
        auth_cost(&cli, dir.path(), &pair[BERTH]).await?
    } else {
        Vec::new()
    };
    if let Some(path) = &cli.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&to_json(&figs, &notes, &auth, &cli))?,
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
