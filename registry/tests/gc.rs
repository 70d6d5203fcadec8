//! Online garbage collection against the real binary: images pushed continuously (monolithic
//! and chunked uploads, cross-repository mounts, tags deleted, stray blobs deleted) while the
//! collector runs both in the background of `serve` and as `berth-registry gc`, with no grace
//! period. Every image still tagged must stay pullable and digest-correct; what was deleted
//! must be gone from disk afterwards. On SQLite (two processes over one database file) and
//! on PostgreSQL.

mod common;

use common::*;
use reqwest::{Client, StatusCode};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// Deterministic bytes, different for every seed.
fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[derive(Clone, Debug)]
struct Image {
    repo: String,
    tag: String,
    digest: String,
    manifest: Vec<u8>,
    blobs: Vec<(String, Vec<u8>)>,
}

fn abs(base: &str, location: &str) -> String {
    if location.starts_with("http") {
        location.to_owned()
    } else {
        format!("{base}{location}")
    }
}

async fn push_blob(c: &Client, base: &str, repo: &str, blob: &[u8], chunked: bool, mount_from: Option<&str>) {
    let d = digest(blob);
    let start = match mount_from {
        Some(from) => format!("{base}/v2/{repo}/blobs/uploads/?mount={d}&from={from}"),
        None if !chunked => {
            let r = c
                .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
                .header("Content-Type", "application/octet-stream")
                .body(blob.to_vec())
                .send()
                .await
                .expect("monolithic POST");
            assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
            return;
        }
        None => format!("{base}/v2/{repo}/blobs/uploads/"),
    };
    let r = c.post(start).send().await.expect("POST");
    if r.status() == StatusCode::CREATED {
        return; // mounted
    }
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
    let mut url = abs(base, r.headers()["location"].to_str().expect("location"));
    let (first, last) = blob.split_at(if chunked { blob.len() / 2 } else { 0 });
    if !first.is_empty() {
        let r = c
            .patch(&url)
            .header("Content-Type", "application/octet-stream")
            .header("Content-Range", format!("0-{}", first.len() - 1))
            .body(first.to_vec())
            .send()
            .await
            .expect("PATCH");
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
        url = abs(base, r.headers()["location"].to_str().expect("location"));
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    let r = c
        .put(format!("{url}{sep}digest={d}"))
        .header("Content-Type", "application/octet-stream")
        .body(last.to_vec())
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
}

/// Pushes an image: a shared base layer (mounted from `gc/p0` when it can be), a layer and a
/// config of its own. `Err` when the manifest put found a blob gone: with no grace period the
/// collector may take a just-uploaded blob before its manifest arrives, and the client pushes
/// again, as docker would.
async fn push_image(c: &Client, base: &str, repo: &str, tag: &str, seed: u64) -> Result<Image, String> {
    let base_layer = data(40_000, 1);
    let own = data(20_000 + (seed % 7) as usize * 1000, seed);
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes();
    let mount = (repo != "gc/p0").then_some("gc/p0");
    push_blob(c, base, repo, &base_layer, false, mount).await;
    push_blob(c, base, repo, &own, seed.is_multiple_of(2), None).await;
    push_blob(c, base, repo, &config, false, None).await;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}]}}"#,
        digest(&config),
        config.len(),
        digest(&base_layer),
        base_layer.len(),
        digest(&own),
        own.len()
    )
    .into_bytes();
    let r = c
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .expect("manifest PUT");
    if r.status() == StatusCode::BAD_REQUEST {
        let text = r.text().await.unwrap_or_default();
        assert!(text.contains("MANIFEST_BLOB_UNKNOWN"), "unexpected refusal: {text}");
        return Err(text);
    }
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    Ok(Image {
        repo: repo.to_owned(),
        tag: tag.to_owned(),
        digest: digest(&manifest),
        manifest,
        blobs: vec![
            (digest(&base_layer), base_layer),
            (digest(&own), own),
            (digest(&config), config),
        ],
    })
}

/// Pulls `img` by tag and checks every byte against its digest.
async fn pull_check(c: &Client, base: &str, img: &Image) -> Result<(), String> {
    let r = c
        .get(format!("{base}/v2/{}/manifests/{}", img.repo, img.tag))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != StatusCode::OK {
        return Err(format!("{}:{}: manifest {}", img.repo, img.tag, r.status()));
    }
    let body = r.bytes().await.map_err(|e| e.to_string())?;
    if body[..] != img.manifest[..] || digest(&body) != img.digest {
        return Err(format!("{}:{}: manifest differs", img.repo, img.tag));
    }
    for (d, bytes) in &img.blobs {
        let r = c
            .get(format!("{base}/v2/{}/blobs/{d}", img.repo))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status() != StatusCode::OK {
            return Err(format!("{}:{}: blob {d}: {}", img.repo, img.tag, r.status()));
        }
        let got = r.bytes().await.map_err(|e| e.to_string())?;
        if digest(&got) != *d || got[..] != bytes[..] {
            return Err(format!("{}:{}: blob {d} has other bytes", img.repo, img.tag));
        }
    }
    Ok(())
}

/// Hex digests of the blob files on disk.
fn disk_blobs(data: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let root = data.join("blobs/sha256");
    for fan in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(fan.path()).into_iter().flatten().flatten() {
            out.insert(f.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

/// Everything under `<data>/uploads`.
fn disk_uploads(data: &Path) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            out.push(e.path());
            if e.path().is_dir() {
                walk(&e.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&data.join("uploads"), &mut out);
    out
}

/// Where the registry under test keeps things.
struct Stores {
    data: PathBuf,
    config: PathBuf,
    database: Option<String>,
    /// An `s3://` URL and how to reach it; `None`: blobs in `data`.
    s3: Option<(String, berth_storage::blob::StorageOptions)>,
}

impl Stores {
    fn new(
        dir: &Path,
        gc: &str,
        database: Option<String>,
        s3: Option<(String, berth_storage::blob::StorageOptions)>,
    ) -> Self {
        let config = dir.join("config.toml");
        let mut text = format!("[gc]\n{gc}\n");
        if let Some((_, o)) = &s3 {
            text.push_str(&format!(
                "[s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\npath_style = true\n",
                o.s3.endpoint.as_deref().expect("endpoint")
            ));
            // Credentials the usual way, from the environment (children inherit it).
            std::env::set_var("AWS_ACCESS_KEY_ID", "berth-test");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "berth-test");
        }
        std::fs::write(&config, text).expect("config");
        Stores {
            data: dir.join("data"),
            config,
            database,
            s3,
        }
    }

    /// Flags naming the stores, for `serve` and `gc`.
    fn args(&self) -> Vec<String> {
        let mut a = vec!["--config".to_owned(), self.config.display().to_string()];
        if let Some(db) = &self.database {
            a.extend(["--database".to_owned(), db.clone()]);
        }
        if let Some((url, _)) = &self.s3 {
            a.extend(["--storage".to_owned(), url.clone()]);
        }
        a
    }

    fn start(&self) -> Server {
        let args = self.args();
        start_with(&self.data, &args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    fn gc(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(registry_bin());
        cmd.arg("gc").arg("--data").arg(&self.data).args(self.args()).args(args);
        cmd.env("RUST_LOG", "warn").env("NO_COLOR", "1");
        cmd
    }

    /// Hex digests of the stored blobs.
    async fn blobs(&self) -> BTreeSet<String> {
        match &self.s3 {
            None => disk_blobs(&self.data),
            Some((url, opts)) => berth_storage::BlobStore::open(url, opts)
                .expect("s3 store")
                .list_blobs()
                .await
                .expect("list the bucket")
                .into_iter()
                .map(|(d, _)| d.hex().to_owned())
                .collect(),
        }
    }

    /// What is left under `uploads/`.
    async fn uploads(&self) -> Vec<String> {
        match &self.s3 {
            None => disk_uploads(&self.data)
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            Some((url, opts)) => berth_storage::BlobStore::open(url, opts)
                .expect("s3 store")
                .list_upload_sessions()
                .await
                .expect("list the bucket"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushed_images_survive_continuous_gc_on_sqlite() {
    pushed_images_survive_continuous_gc(None, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushed_images_survive_continuous_gc_on_postgres() {
    let Some(url) = berth_storage::testing::fresh_postgres().await else {
        return;
    };
    pushed_images_survive_continuous_gc(Some(url), None).await;
}

/// The replicas' configuration: PostgreSQL and S3 (moto), uploads through multipart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushed_images_survive_continuous_gc_on_postgres_and_s3() {
    let Some(url) = berth_storage::testing::fresh_postgres().await else {
        return;
    };
    let Some(s3) = berth_storage::testing::fresh_s3() else {
        return;
    };
    pushed_images_survive_continuous_gc(Some(url), Some(s3)).await;
}

async fn pushed_images_survive_continuous_gc(
    database: Option<String>,
    s3: Option<(String, berth_storage::blob::StorageOptions)>,
) {
    const PUSHERS: u64 = 3;
    const IMAGES: u64 = 12;
    const TIME_LIMIT: Duration = Duration::from_secs(60);
    let tmp = tempfile::tempdir().expect("tmp");
    // The background collector every second, without grace period, beside the CLI's runs.
    let stores = Arc::new(Stores::new(
        tmp.path(),
        "interval_secs = 1\ngrace_secs = 0",
        database,
        s3,
    ));
    let reg = stores.start();
    let base = reg.url();
    let c = Client::new();

    let done = Arc::new(AtomicBool::new(false));
    let cli = {
        let (done, stores) = (done.clone(), stores.clone());
        tokio::task::spawn_blocking(move || {
            let mut runs = 0u32;
            while !done.load(Ordering::Relaxed) {
                let mut cmd = stores.gc(&["--grace", "0"]);
                let out = cmd.output().expect("run berth-registry gc");
                assert!(
                    out.status.success(),
                    "gc failed while pushes ran:\n{}",
                    show(&cmd, &out)
                );
                runs += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            runs
        })
    };

    let started = Instant::now();
    let mut pushers = Vec::new();
    for p in 0..PUSHERS {
        let (c, base) = (c.clone(), base.clone());
        pushers.push(tokio::spawn(async move {
            let repo = format!("gc/p{p}");
            let (mut live, mut garbage_manifests, mut garbage_blobs) = (Vec::new(), Vec::new(), Vec::new());
            let mut retries = 0u32;
            for i in 0..IMAGES {
                if started.elapsed() > TIME_LIMIT {
                    break;
                }
                let tag = format!("v{i}");
                let seed = 1000 * (p + 1) + i;
                let img = loop {
                    match push_image(&c, &base, &repo, &tag, seed).await {
                        Ok(img) => break img,
                        Err(why) => {
                            retries += 1;
                            assert!(retries < 1000, "pushes keep losing their blobs: {why}");
                        }
                    }
                };
                // Pullable right after the push, while collections run.
                pull_check(&c, &base, &img)
                    .await
                    .unwrap_or_else(|e| panic!("fresh image: {e}"));
                if i % 3 == 2 {
                    // Untag: the manifest and its own layer and config become garbage.
                    let r = c
                        .delete(format!("{base}/v2/{repo}/manifests/{tag}"))
                        .send()
                        .await
                        .expect("DELETE tag");
                    assert_eq!(r.status(), StatusCode::ACCEPTED);
                    garbage_manifests.push((repo.clone(), img.digest.clone()));
                    garbage_blobs.extend(img.blobs[1..].iter().map(|(d, _)| d.clone()));
                } else {
                    live.push(img);
                }
                if i % 4 == 3 {
                    // A stray blob, deleted: its bytes must go.
                    let stray = data(5000, seed + 7_000_000);
                    push_blob(&c, &base, &repo, &stray, false, None).await;
                    let r = c
                        .delete(format!("{base}/v2/{repo}/blobs/{}", digest(&stray)))
                        .send()
                        .await
                        .expect("DELETE blob");
                    // Without grace period the collector may have taken the unused link first.
                    assert!(
                        matches!(r.status(), StatusCode::ACCEPTED | StatusCode::NOT_FOUND),
                        "DELETE of a stray blob: {}",
                        r.status()
                    );
                    garbage_blobs.push(digest(&stray));
                }
                // Images pushed earlier stay whole.
                for old in &live {
                    pull_check(&c, &base, old)
                        .await
                        .unwrap_or_else(|e| panic!("older image: {e}"));
                }
            }
            (live, garbage_manifests, garbage_blobs, retries)
        }));
    }
    let (mut live, mut garbage_manifests, mut garbage_blobs, mut retries) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for p in pushers {
        let (l, gm, gb, r) = p.await.unwrap_or_else(|e| panic!("pusher failed: {e}\n{}", reg.log()));
        live.extend(l);
        garbage_manifests.extend(gm);
        garbage_blobs.extend(gb);
        retries += r;
    }
    done.store(true, Ordering::Relaxed);
    let cli_runs = cli.await.expect("gc loop");
    let background_runs = reg.log().matches("garbage collection done").count();
    eprintln!(
        "{} images live, {} untagged, {} blobs deleted or freed; {retries} pushes retried; \
         {cli_runs} gc CLI runs and {background_runs} background runs during the pushes, in {:.1} s",
        live.len(),
        garbage_manifests.len(),
        garbage_blobs.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(cli_runs >= 2, "the gc CLI must have run during the pushes");
    assert!(
        background_runs >= 1,
        "the background collector must have run:\n{}",
        reg.log()
    );

    // A last collection, then: everything live is whole, and nothing else is on disk.
    run(&mut stores.gc(&["--grace", "0"]));
    for img in &live {
        pull_check(&c, &base, img)
            .await
            .unwrap_or_else(|e| panic!("after gc: {e}"));
    }
    for (repo, d) in &garbage_manifests {
        let r = c
            .get(format!("{base}/v2/{repo}/manifests/{d}"))
            .send()
            .await
            .expect("GET");
        assert_eq!(
            r.status(),
            StatusCode::NOT_FOUND,
            "untagged {repo}@{d} was not collected"
        );
    }
    let wanted: BTreeSet<String> = live
        .iter()
        .flat_map(|i| i.blobs.iter().map(|(d, _)| d.trim_start_matches("sha256:").to_owned()))
        .collect();
    let stored = stores.blobs().await;
    assert_eq!(
        stored, wanted,
        "the store must hold exactly the live images' blobs (garbage: {garbage_blobs:?})"
    );
    let uploads = stores.uploads().await;
    assert!(uploads.is_empty(), "staged data left behind: {uploads:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_reports_and_deletes_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let stores = Stores::new(tmp.path(), "enabled = false", None, None);
    let dir = stores.data.clone();
    let reg = stores.start();
    let base = reg.url();
    let c = Client::new();
    let keep = push_image(&c, &base, "gc/p0", "keep", 1).await.expect("push");
    let drop = push_image(&c, &base, "gc/p0", "drop", 2).await.expect("push");
    let r = c
        .delete(format!("{base}/v2/gc/p0/manifests/drop"))
        .send()
        .await
        .expect("untag");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let stray = data(3000, 99);
    push_blob(&c, &base, "gc/p0", &stray, true, None).await;
    let r = c
        .delete(format!("{base}/v2/gc/p0/blobs/{}", digest(&stray)))
        .send()
        .await
        .expect("DELETE blob");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let before = disk_blobs(&dir);
    // keep: 3 blobs; drop: its own layer and config (base shared); the stray blob.
    assert_eq!(before.len(), 3 + 2 + 1, "{before:?}");

    let out = run(&mut stores.gc(&["--dry-run", "--grace", "0"]));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        report.starts_with(&format!(
            "would delete 1 manifests, 2 blob links, 3 blobs ({} bytes)",
            drop.blobs[1].1.len() + drop.blobs[2].1.len() + stray.len()
        )),
        "{report}"
    );
    assert_eq!(disk_blobs(&dir), before, "a dry run deleted something");
    let r = c
        .get(format!("{base}/v2/gc/p0/manifests/{}", drop.digest))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), StatusCode::OK, "a dry run deleted the untagged manifest");

    // The default grace period (a day) keeps all of it.
    let out = run(&mut stores.gc(&[]));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("deleted 0 manifests, 0 blob links, 0 blobs"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let out = run(&mut stores.gc(&["--grace", "0s"]));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        report.starts_with("deleted 1 manifests, 2 blob links, 3 blobs"),
        "{report}"
    );
    let after = disk_blobs(&dir);
    let kept: BTreeSet<String> = keep
        .blobs
        .iter()
        .map(|(d, _)| d.trim_start_matches("sha256:").to_owned())
        .collect();
    assert_eq!(after, kept);
    pull_check(&c, &base, &keep).await.expect("kept image");
    let r = c
        .get(format!("{base}/v2/gc/p0/manifests/{}", drop.digest))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
