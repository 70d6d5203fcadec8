//! `berth-bench`: Berth side by side with the reference registry (Debian's docker-registry,
//! distribution 2.8), the same workload against each, alternating, in one run.
//!
//! Prints a table — figure, Berth, peer, ratio — with the median of `--runs` runs and their
//! spread (min–max). The ratio is peer time / Berth time: above 1 means Berth is faster.
//! Results also go to `--json FILE`. A benchmark, not a test: it asserts no timing.
//!
//! Workloads so far (`--only NAME`):
//! - `blob-put`: one monolithic upload (POST, then a single streamed PUT `?digest=`) of
//!   1 GiB (`--smoke`: 1 MiB), new content each run so neither side can skip the write; the
//!   server's peak RSS over the upload is reported beside the time. Before each timed upload
//!   dirty pages are flushed (`sync`) and, when run as root, the page cache is dropped, so a run
//!   pays neither for the previous run's writeback nor for reclaiming its cached pages (which,
//!   measured on the 2-core CI machine, can double a 1 GiB write). `--keep-caches` measures
//!   with a warm, full page cache instead.
//! - `blob-get`: GET of a 1 GiB blob (`--smoke`: 1 MiB) from page cache (one untimed GET
//!   warms it), read to the end and discarded: seconds and GB/s.
//! - `manifest-get`: GET of a small image manifest by tag, from 1, 16 and 64 concurrent
//!   keep-alive connections for a fixed time (`--smoke`: 1 and 4, briefly): requests per second
//!   and p50/p99 latency. The load generator shares the machine's 2 cores with the server, as
//!   it does for the peer.
//! - `client`: push and pull of a generated 3-layer image of ~600 MB (`--smoke`: ~3 MB)
//!   between an OCI layout and Berth, `berth` against `skopeo copy` (the peer column), same
//!   registry, same layout, new repositories each run.
//! - `auth-cost`: the same manifest GET at c=16 against Berth with `--auth none`, `basic` and
//!   `token` (a signed-in user; the token fetched once, as clients do), Berth only: what
//!   authentication costs per request.

use anyhow::{bail, Context as _, Result};
use berth_conformance::servers::{free_port, sibling_bin, Server};
use bytes::Bytes;
use clap::Parser;
use sha2::{Digest as _, Sha256};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "berth-bench",
    about = "Berth vs the reference registry, same workloads, one run"
)]
struct Cli {
    /// Tiny sizes: finishes in seconds, so CI can keep the harness from rotting.
    #[arg(long)]
    smoke: bool,
    /// Run only these workloads (repeatable): blob-put, blob-get, manifest-get, client, auth-cost.
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
}

/// One measured figure: samples per server.
struct Figure {
    name: String,
    unit: &'static str,
    /// Lower is better (times) or higher is better (throughput).
    lower_is_better: bool,
    berth: Vec<f64>,
    peer: Vec<f64>,
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
            berth: Vec::new(),
            peer: Vec::new(),
        }
    }

    fn ratio(&self) -> f64 {
        let (b, p) = (median(&self.berth), median(&self.peer));
        if self.lower_is_better {
            p / b
        } else {
            b / p
        }
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

fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_owned()
    } else {
        format!("{base}{location}")
    }
}

/// One monolithic upload of `head ++ body` to `server`; returns seconds and peak RSS (KiB).
/// Flushes dirty pages and, unless told to keep them (or not root), drops the page cache.
fn settle(keep_caches: bool) -> Result<bool> {
    std::process::Command::new("sync").status()?;
    Ok(!keep_caches && std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok())
}

async fn put_once(
    client: &reqwest::Client,
    server: &Server,
    head: Bytes,
    body: &Bytes,
    keep_caches: bool,
) -> Result<(f64, Option<u64>, String)> {
    let mut h = Sha256::new();
    h.update(&head);
    h.update(body);
    let digest = berth_oci::Digest::from_sha256(&h.finalize()).to_string();
    let repo = format!("bench/put-{}", &digest[7..19]);
    let r = client
        .post(format!("{}/v2/{repo}/blobs/uploads/", server.url()))
        .send()
        .await?;
    if r.status() != reqwest::StatusCode::ACCEPTED {
        bail!("{:?}: POST answered {}", server.kind, r.status());
    }
    let loc = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .context("POST answered no Location")?;
    let loc = absolute(&server.url(), loc);
    let sep = if loc.contains('?') { '&' } else { '?' };
    // Each run pays only for its own writes.
    settle(keep_caches)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.reset_peak_rss();
    const SLICE: usize = 256 * 1024;
    let mut chunks = vec![Ok::<Bytes, std::io::Error>(head.clone())];
    chunks.extend(
        (0..body.len())
            .step_by(SLICE)
            .map(|i| Ok(body.slice(i..(i + SLICE).min(body.len())))),
    );
    let len = (head.len() + body.len()) as u64;
    let started = Instant::now();
    let r = client
        .put(format!("{loc}{sep}digest={digest}"))
        .header("content-type", "application/octet-stream")
        .header("content-length", len)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await?;
    let secs = started.elapsed().as_secs_f64();
    if r.status() != reqwest::StatusCode::CREATED {
        bail!(
            "{:?}: PUT answered {}: {}",
            server.kind,
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    Ok((
        secs,
        server.peak_rss_kib(),
        format!("{}/v2/{repo}/blobs/{digest}", server.url()),
    ))
}

async fn blob_put(cli: &Cli, berth: &Server, peer: &Server) -> Result<Vec<Figure>> {
    let size = if cli.smoke { 1 << 20 } else { 1 << 30 };
    let label = if cli.smoke { "1 MiB" } else { "1 GiB" };
    let body = Bytes::from(generate(size, 42));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let mut time = Figure::new(format!("blob PUT {label} monolithic (s)"), "s", true);
    let mut rss = Figure::new(format!("peak RSS during PUT {label} (MiB)"), "MiB", true);
    for run in 0..cli.runs {
        // Alternate who goes first, so neither always meets the other's leftovers.
        let order: [&Server; 2] = if run % 2 == 0 { [berth, peer] } else { [peer, berth] };
        for (i, server) in order.into_iter().enumerate() {
            let head = Bytes::from(format!("run {run} server {i} {:?}\n", Instant::now()));
            let (secs, peak, _) = put_once(&client, server, head, &body, cli.keep_caches).await?;
            let peak = peak.map_or(f64::NAN, |k| k as f64 / 1024.0);
            let (t, r) = if std::ptr::eq(server, berth) {
                (&mut time.berth, &mut rss.berth)
            } else {
                (&mut time.peer, &mut rss.peer)
            };
            t.push(secs);
            r.push(peak);
        }
    }
    Ok(vec![time, rss])
}

/// Reads `url` to the end; returns seconds.
async fn get_once(client: &reqwest::Client, url: &str) -> Result<(f64, u64)> {
    use futures::StreamExt as _;
    let started = Instant::now();
    let r = client.get(url).send().await?;
    if r.status() != reqwest::StatusCode::OK {
        bail!("GET {url} answered {}", r.status());
    }
    let mut s = r.bytes_stream();
    let mut n = 0u64;
    while let Some(chunk) = s.next().await {
        n += chunk?.len() as u64;
    }
    Ok((started.elapsed().as_secs_f64(), n))
}

async fn blob_get(cli: &Cli, berth: &Server, peer: &Server) -> Result<Vec<Figure>> {
    let size = if cli.smoke { 1 << 20 } else { 1 << 30 };
    let label = if cli.smoke { "1 MiB" } else { "1 GiB" };
    let body = Bytes::from(generate(size, 43));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let mut urls = Vec::new();
    for server in [berth, peer] {
        let head = Bytes::from(format!("blob-get {:?}\n", server.kind));
        let (_, _, url) = put_once(&client, server, head, &body, true).await?;
        get_once(&client, &url).await?; // warm the page cache
        urls.push(url);
    }
    let mut time = Figure::new(format!("blob GET {label} (s)"), "s", true);
    let mut rate = Figure::new(format!("blob GET {label} (GB/s)"), "GB/s", false);
    for run in 0..cli.runs {
        let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (secs, n) = get_once(&client, &urls[i]).await?;
            anyhow::ensure!(n as usize >= size, "short read: {n} bytes");
            let (t, r) = if i == 0 {
                (&mut time.berth, &mut rate.berth)
            } else {
                (&mut time.peer, &mut rate.peer)
            };
            t.push(secs);
            r.push(n as f64 / secs / 1e9);
        }
    }
    Ok(vec![time, rate])
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
fn make_layout(dir: &std::path::Path, layers: usize, each: usize, seed: u64) -> Result<()> {
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

async fn client(cli: &Cli, dir: &std::path::Path, berth: &Server) -> Result<Vec<Figure>> {
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
        if run % 2 == 0 {
            push.berth.push(berth_push()?);
            push.peer.push(skopeo_push()?);
            pull.berth.push(berth_pull()?);
            pull.peer.push(skopeo_pull()?);
        } else {
            push.peer.push(skopeo_push()?);
            push.berth.push(berth_push()?);
            pull.peer.push(skopeo_pull()?);
            pull.berth.push(berth_pull()?);
        }
        for d in [&ob, &os, &lb, &ls] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
    Ok(vec![push, pull])
}

/// Pushes a small image (config, one layer, manifest tagged `v1`) and returns the manifest URL.
async fn push_small_image(
    client: &reqwest::Client,
    server: &Server,
    repo: &str,
    auth: &reqwest::header::HeaderMap,
) -> Result<String> {
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
    let layer = generate(4096, 7);
    let mut descriptors = Vec::new();
    for (bytes, media_type) in [
        (config, "application/vnd.oci.image.config.v1+json"),
        (layer, "application/vnd.oci.image.layer.v1.tar"),
    ] {
        let digest = berth_oci::Digest::of(&bytes).to_string();
        let r = client
            .post(format!("{}/v2/{repo}/blobs/uploads/", server.url()))
            .headers(auth.clone())
            .send()
            .await?;
        if r.status() != reqwest::StatusCode::ACCEPTED {
            bail!("{:?}: POST answered {}", server.kind, r.status());
        }
        let loc = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .context("POST answered no Location")?;
        let loc = absolute(&server.url(), loc);
        let sep = if loc.contains('?') { '&' } else { '?' };
        let size = bytes.len();
        let r = client
            .put(format!("{loc}{sep}digest={digest}"))
            .headers(auth.clone())
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
            .await?;
        if r.status() != reqwest::StatusCode::CREATED {
            bail!("{:?}: blob PUT answered {}", server.kind, r.status());
        }
        descriptors.push(serde_json::json!({"mediaType": media_type, "digest": digest, "size": size}));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": berth_oci::media::OCI_MANIFEST,
        "config": descriptors[0],
        "layers": [descriptors[1]],
    });
    let url = format!("{}/v2/{repo}/manifests/v1", server.url());
    let r = client
        .put(&url)
        .headers(auth.clone())
        .header("content-type", berth_oci::media::OCI_MANIFEST)
        .body(manifest.to_string())
        .send()
        .await?;
    if r.status() != reqwest::StatusCode::CREATED {
        bail!("{:?}: manifest PUT answered {}", server.kind, r.status());
    }
    Ok(url)
}

/// Result of a closed-loop load run.
struct Load {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `concurrency` loops, each sending GET `url` and reading the whole answer, for `duration`.
async fn load(url: &str, concurrency: usize, duration: Duration, headers: reqwest::header::HeaderMap) -> Result<Load> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, url, headers) = (client.clone(), url.to_owned(), headers.clone());
        tasks.spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let r = client.get(&url).headers(headers.clone()).send().await?;
                let status = r.status();
                let _ = r.bytes().await?;
                if status != reqwest::StatusCode::OK {
                    bail!("GET {url} answered {status}");
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

fn accept_manifests() -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::ACCEPT,
        reqwest::header::HeaderValue::from_static(
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        ),
    );
    h
}

async fn manifest_get(cli: &Cli, berth: &Server, peer: &Server) -> Result<Vec<Figure>> {
    let client = reqwest::Client::new();
    let urls = [
        push_small_image(&client, berth, "bench/small", &Default::default()).await?,
        push_small_image(&client, peer, "bench/small", &Default::default()).await?,
    ];
    let (levels, duration): (&[usize], Duration) = if cli.smoke {
        (&[1, 4], Duration::from_millis(300))
    } else {
        (&[1, 16, 64], Duration::from_secs(3))
    };
    let mut figs = Vec::new();
    for &c in levels {
        let mut rate = Figure::new(format!("manifest GET c={c} (req/s)"), "req/s", false);
        let mut p50 = Figure::new(format!("manifest GET c={c} p50 (ms)"), "ms", true);
        let mut p99 = Figure::new(format!("manifest GET c={c} p99 (ms)"), "ms", true);
        for run in 0..cli.runs {
            let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let l = load(&urls[i], c, duration, accept_manifests()).await?;
                let (r, a, b) = if i == 0 {
                    (&mut rate.berth, &mut p50.berth, &mut p99.berth)
                } else {
                    (&mut rate.peer, &mut p50.peer, &mut p99.peer)
                };
                r.push(l.per_sec);
                a.push(l.p50_ms);
                b.push(l.p99_ms);
            }
        }
        figs.extend([rate, p50, p99]);
    }
    Ok(figs)
}

/// Starts Berth in `mode` with a user `bench` (password `bench-password`) and returns it with
/// the `Authorization` header a client would send after signing in.
async fn berth_with_auth(dir: &std::path::Path, mode: &str) -> Result<(Server, reqwest::header::HeaderMap)> {
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
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(reqwest::header::AUTHORIZATION, value.parse()?);
    Ok((server, h))
}

async fn auth_cost(cli: &Cli, dir: &std::path::Path, open: &Server) -> Result<()> {
    let (c, duration) = if cli.smoke {
        (4, Duration::from_millis(300))
    } else {
        (16, Duration::from_secs(3))
    };
    let client = reqwest::Client::new();
    let none_url = push_small_image(&client, open, "bench/small", &Default::default()).await?;
    let (basic, basic_h) = berth_with_auth(dir, "basic").await?;
    let (token, token_h) = berth_with_auth(dir, "token").await?;
    let basic_url = push_small_image(&client, &basic, "bench/small", &basic_h).await?;
    let token_url = push_small_image(&client, &token, "bench/small", &token_h).await?;
    let cases = [
        ("none", none_url, reqwest::header::HeaderMap::new()),
        ("basic", basic_url, basic_h),
        ("token", token_url, token_h),
    ];
    let mut results: Vec<(&str, Vec<Load>)> = cases.iter().map(|(m, _, _)| (*m, Vec::new())).collect();
    for _ in 0..cli.runs {
        for (i, (_, url, h)) in cases.iter().enumerate() {
            let mut headers = accept_manifests();
            headers.extend(h.clone());
            results[i].1.push(load(url, c, duration, headers).await?);
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
    for (mode, loads) in &results {
        let rate = median(&loads.iter().map(|l| l.per_sec).collect::<Vec<_>>());
        let p50 = median(&loads.iter().map(|l| l.p50_ms).collect::<Vec<_>>());
        let p99 = median(&loads.iter().map(|l| l.p99_ms).collect::<Vec<_>>());
        println!("{mode:<8} {rate:>10.0} {p50:>10.3} {p99:>10.3} {:>11.2}x", rate / base);
    }
    Ok(())
}

fn print_table(figs: &[Figure]) {
    println!(
        "{:<40} {:>22} {:>22} {:>8}",
        "figure", "berth (median, min–max)", "peer (median, min–max)", "ratio"
    );
    for f in figs {
        let digits = if f.unit == "req/s" { 0 } else { 3 };
        let cell = |v: &[f64]| {
            let (lo, hi) = spread(v);
            format!("{:.d$} ({:.d$}–{:.d$})", median(v), lo, hi, d = digits)
        };
        println!(
            "{:<40} {:>22} {:>22} {:>7.2}x",
            f.name,
            cell(&f.berth),
            cell(&f.peer),
            f.ratio()
        );
    }
    println!("ratio: peer/berth for times and sizes, berth/peer for rates (above 1: Berth better)");
}

fn to_json(figs: &[Figure], cli: &Cli) -> serde_json::Value {
    serde_json::json!({
        "smoke": cli.smoke,
        "runs": cli.runs,
        "peer": "docker-registry (distribution 2.8, Debian)",
        "page_cache_dropped": !cli.keep_caches,
        "figures": figs.iter().map(|f| serde_json::json!({
            "name": f.name,
            "unit": f.unit,
            "berth": { "median": median(&f.berth), "samples": f.berth },
            "peer": { "median": median(&f.peer), "samples": f.peer },
            "ratio": f.ratio(),
        })).collect::<Vec<_>>(),
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
    const WORKLOADS: [&str; 5] = ["blob-put", "blob-get", "manifest-get", "client", "auth-cost"];
    for w in &cli.only {
        if !WORKLOADS.contains(&w.as_str()) {
            bail!("unknown workload {w:?}; known: {}", WORKLOADS.join(", "));
        }
    }
    if cli.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let want = |w: &str| cli.only.is_empty() || cli.only.iter().any(|o| o == w);
    let dir = tempfile::Builder::new().prefix("berth-bench").tempdir()?;
    let berth = Server::berth(&sibling_bin("berth-registry")?, &dir.path().join("berth"), free_port()?)?;
    let peer = Server::reference(&dir.path().join("reference"), free_port()?)?;
    let mut figs = Vec::new();
    if want("blob-put") {
        figs.extend(blob_put(&cli, &berth, &peer).await?);
    }
    if want("blob-get") {
        figs.extend(blob_get(&cli, &berth, &peer).await?);
    }
    if want("client") {
        figs.extend(client(&cli, dir.path(), &berth).await?);
    }
    if want("manifest-get") {
        figs.extend(manifest_get(&cli, &berth, &peer).await?);
    }
    if want("blob-put") {
        let dropped = settle(cli.keep_caches)?;
        println!(
            "blob-put: page cache {} before each timed upload",
            if dropped { "dropped" } else { "kept (warm)" }
        );
    }
    if !figs.is_empty() {
        print_table(&figs);
    }
    if want("auth-cost") {
        auth_cost(&cli, dir.path(), &berth).await?;
    }
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&to_json(&figs, &cli))?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
