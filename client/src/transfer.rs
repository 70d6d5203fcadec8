//! Whole-image transfers: push (OCI layout → registry), pull (registry → OCI layout) and copy
//! (registry → registry). Blobs move in parallel (`jobs` at a time); manifests go last,
//! children before parents, so a registry never sees a manifest whose content is missing.

use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::locations::Locations;
use crate::registry::{Durability, Repo, Uploaded};
use berth_oci::{manifest, media, Descriptor, Digest};
use futures::{StreamExt as _, TryStreamExt as _};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// Nothing.
    Quiet,
    /// One line per blob when it is done (logs, CI).
    Lines,
    /// A bar per blob and a total (a terminal).
    Bars,
}

impl Show {
    /// Bars on a terminal, lines otherwise, nothing when quiet.
    pub fn auto(quiet: bool) -> Show {
        if quiet {
            Show::Quiet
        } else if std::io::stderr().is_terminal() {
            Show::Bars
        } else {
            Show::Lines
        }
    }
}

/// Progress reporting for one transfer.
pub struct Reporter {
    show: Show,
    multi: MultiProgress,
    total: ProgressBar,
}

impl Reporter {
    /// A reporter for `total_bytes`.
    pub fn new(show: Show, total_bytes: u64) -> Reporter {
        let multi = MultiProgress::new();
        let total = if show == Show::Bars {
            let bar = multi.add(ProgressBar::new(total_bytes));
            if let Ok(style) =
                ProgressStyle::with_template("total        [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        } else {
            ProgressBar::hidden()
        };
        Reporter { show, multi, total }
    }

    fn blob(&self, d: &Digest, size: u64) -> ProgressBar {
        if self.show != Show::Bars {
            return ProgressBar::hidden();
        }
        let bar = self.multi.insert_before(&self.total, ProgressBar::new(size));
        if let Ok(style) = ProgressStyle::with_template("{prefix:12} [{bar:30}] {bytes}/{total_bytes}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(d.hex()[..12].to_owned());
        bar
    }

    fn done(&self, verb: &str, d: &Digest, size: u64, bar: &ProgressBar) {
        bar.finish();
        if self.show == Show::Lines {
            eprintln!("{verb} {d} ({size} bytes)");
        }
    }

    /// A blob that needed no bytes moved (it existed, or was mounted): its bar completes, and
    /// the total shrinks by its size instead of growing, so the rate shown is of bytes that
    /// really moved (a push that sends nothing shows 0 B, not the image's size in no time).
    fn skipped(&self, bar: &ProgressBar, size: u64) {
        bar.set_position(size);
        let total = self.total.length().unwrap_or(0);
        self.total.set_length(total.saturating_sub(size));
    }

    fn finish(&self) {
        self.total.finish_and_clear();
    }
}

/// What a transfer did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// Digest of the top manifest.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// Blobs the image references.
    pub blobs: usize,
    /// Blobs that moved.
    pub transferred: usize,
    /// Blobs the destination had already.
    pub skipped: usize,
    /// Blobs mounted across repositories (no bytes moved).
    pub mounted: usize,
    /// Bytes of the blobs that moved.
    pub bytes: u64,
}

/// An image's manifests (children first, the top last) and distinct blobs.
struct Tree {
    manifests: Vec<(Descriptor, Vec<u8>)>,
    blobs: Vec<Descriptor>,
}

fn descriptor(digest: &Digest, bytes: &[u8], media_type: &str) -> Descriptor {
    Descriptor {
        media_type: media_type.to_owned(),
        digest: digest.clone(),
        size: bytes.len() as u64,
        artifact_type: None,
        annotations: None,
        urls: None,
        platform: None,
    }
}

fn parse(bytes: &[u8], media_type: &str, what: &str) -> Result<manifest::ParsedManifest> {
    manifest::parse(bytes, Some(media_type)).map_err(|e| Error::Usage(format!("{what}: {e}")))
}

/// Walks a manifest tree, reading each manifest with `fetch`.
async fn walk<F, Fut>(root: Descriptor, root_bytes: Vec<u8>, platform: Option<&str>, fetch: F) -> Result<Tree>
where
    F: Fn(Descriptor) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<u8>>>,
{
    let parsed = parse(&root_bytes, &root.media_type, &format!("manifest {}", root.digest))?;
    let mut tree = Tree {
        manifests: Vec::new(),
        blobs: Vec::new(),
    };
    let add_blobs = |blobs: Vec<Descriptor>, tree: &mut Tree| {
        for b in blobs {
            if !tree.blobs.iter().any(|x| x.digest == b.digest) {
                tree.blobs.push(b);
            }
        }
    };
    if media::is_index(&parsed.media_type) {
        let children: Vec<Descriptor> = match platform {
            Some(p) => {
                let one = parsed
                    .manifests
                    .iter()
                    .find(|c| berth_oci::platform::matches(c, p))
                    .cloned()
                    .ok_or_else(|| {
                        Error::Usage(format!("the index {} has no manifest for platform {p}", root.digest))
                    })?;
                // Only the chosen platform moves: the top of the tree becomes that manifest.
                let bytes = fetch(one.clone()).await?;
                let child = parse(&bytes, &one.media_type, &format!("manifest {}", one.digest))?;
                add_blobs(child.blobs, &mut tree);
                tree.manifests.push((one, bytes));
                return Ok(tree);
            }
            None => parsed.manifests.clone(),
        };
        for c in children {
            let bytes = fetch(c.clone()).await?;
            let child = parse(&bytes, &c.media_type, &format!("manifest {}", c.digest))?;
            if media::is_index(&child.media_type) {
                return Err(Error::Usage(format!("nested index {} is not supported", c.digest)));
            }
            add_blobs(child.blobs, &mut tree);
            tree.manifests.push((c, bytes));
        }
    } else {
        add_blobs(parsed.blobs, &mut tree);
    }
    tree.manifests.push((root, root_bytes));
    Ok(tree)
}

fn top(tree: &Tree) -> &(Descriptor, Vec<u8>) {
    // `walk` always pushes at least the top manifest.
    &tree.manifests[tree.manifests.len() - 1]
}

/// Pushes the manifest tagged `tag` (or the only one) from `layout` to `dst` as `dst_ref`.
pub async fn push(
    layout: &Layout,
    tag: Option<&str>,
    dst: &Repo,
    dst_ref: &str,
    jobs: usize,
    show: Show,
) -> Result<Summary> {
    let root = layout.find(tag)?;
    let root_bytes = layout.read_blob(&root.digest)?;
    let tree = walk(root, root_bytes, None, |d| async move { layout.read_blob(&d.digest) }).await?;
    for b in &tree.blobs {
        if !layout.has_blob(&b.digest, b.size) {
            return Err(Error::local(
                layout.blob_path(&b.digest),
                format!("missing or of the wrong size (expected {} bytes)", b.size),
            ));
        }
    }
    // Blobs this registry has in another repository are mounted from there, not sent again.
    let locations = Locations::load();
    let counts = move_blobs(&tree.blobs, jobs, show, "pushed", |b, tick| {
        let from = locations.find(&dst.t.registry, &b.digest, &dst.name);
        async move {
            dst.upload(&b.digest, b.size, &layout.blob_path(&b.digest), from, &|n| tick.add(n))
                .await
        }
    })
    .await?;
    let summary = put_manifests(&tree, dst, dst_ref, counts).await?;
    remember(locations, dst, &tree);
    Ok(summary)
}

/// Records that `repo` now has the tree's blobs (see [`Locations`]).
fn remember(mut locations: Locations, repo: &Repo, tree: &Tree) {
    locations.record(&repo.t.registry, &repo.name, tree.blobs.iter().map(|b| &b.digest));
    locations.save();
}

/// Progress of one blob: its bar and the total.
#[derive(Clone)]
struct Tick {
    bar: ProgressBar,
    total: ProgressBar,
}

impl Tick {
    fn add(&self, n: u64) {
        self.bar.inc(n);
        self.total.inc(n);
    }
}

/// Moves `blobs` with `one` (at most `jobs` at a time), showing progress and counting what
/// existed, was mounted, or was sent (`sent_verb` in progress lines).
async fn move_blobs<'a, F, Fut>(
    blobs: &'a [Descriptor],
    jobs: usize,
    show: Show,
    sent_verb: &str,
    one: F,
) -> Result<Counts>
where
    F: Fn(&'a Descriptor, Tick) -> Fut,
    Fut: std::future::Future<Output = Result<Uploaded>>,
{
    let rep = Reporter::new(show, blobs.iter().map(|b| b.size).sum());
    let (sent, skipped, mounted) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0));
    let bytes = std::sync::atomic::AtomicU64::new(0);
    futures::stream::iter(blobs.iter().map(|b| {
        let bar = rep.blob(&b.digest, b.size);
        let tick = Tick {
            bar: bar.clone(),
            total: rep.total.clone(),
        };
        let work = one(b, tick.clone());
        let (rep, sent, skipped, mounted, bytes) = (&rep, &sent, &skipped, &mounted, &bytes);
        async move {
            let verb = match work.await? {
                Uploaded::Existed => {
                    skipped.fetch_add(1, Ordering::Relaxed);
                    "exists"
                }
                Uploaded::Mounted => {
                    mounted.fetch_add(1, Ordering::Relaxed);
                    "mounted"
                }
                Uploaded::Sent => {
                    sent.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(b.size, Ordering::Relaxed);
                    sent_verb
                }
            };
            if verb != sent_verb {
                rep.skipped(&bar, b.size);
            }
            rep.done(verb, &b.digest, b.size, &bar);
            Ok::<_, Error>(())
        }
    }))
    .buffer_unordered(jobs.max(1))
    .try_collect::<Vec<()>>()
    .await?;
    rep.finish();
    Ok(Counts {
        transferred: sent.into_inner(),
        skipped: skipped.into_inner(),
        mounted: mounted.into_inner(),
        bytes: bytes.into_inner(),
    })
}

/// What moved, for the summary.
struct Counts {
    transferred: usize,
    skipped: usize,
    mounted: usize,
    bytes: u64,
}

/// Stores the tree's manifests in `dst` once its blobs are there: children by digest, the top
/// as `dst_ref` last, so no manifest arrives before what it references.
async fn put_manifests(tree: &Tree, dst: &Repo, dst_ref: &str, c: Counts) -> Result<Summary> {
    let n = tree.manifests.len();
    for (i, (d, body)) in tree.manifests.iter().enumerate() {
        let reference = if i + 1 == n {
            dst_ref.to_owned()
        } else {
            d.digest.to_string()
        };
        dst.put_manifest(&reference, body, &d.media_type).await?;
    }
    let (root, _) = top(tree);
    Ok(Summary {
        digest: root.digest.to_string(),
        media_type: root.media_type.clone(),
        blobs: tree.blobs.len(),
        transferred: c.transferred,
        skipped: c.skipped,
        mounted: c.mounted,
        bytes: c.bytes,
    })
}

async fn fetch_top(src: &Repo, reference: &str) -> Result<(Descriptor, Vec<u8>)> {
    let m = src.manifest(reference).await?;
    Ok((descriptor(&m.digest, &m.bytes, &m.media_type), m.bytes))
}

/// Pulls `src_ref` from `src` into `layout`, listed as `tag`.
///
/// Blobs the layout has already are re-hashed, not trusted by name and size (see
/// [`Layout::has_verified_blob`]); the others are downloaded, each verified and synced before
/// its rename. When this returns, the blobs, the manifests and `index.json` are on disk, in
/// that order: after a crash `index.json` never lists what is missing.
pub async fn pull(
    src: &Repo,
    src_ref: &str,
    layout: &Layout,
    tag: &str,
    platform: Option<&str>,
    jobs: usize,
    show: Show,
) -> Result<Summary> {
    let (root, root_bytes) = fetch_top(src, src_ref).await?;
    let tree = walk(root, root_bytes, platform, |d| async move {
        Ok(src.manifest(&d.digest.to_string()).await?.bytes)
    })
    .await?;
    let rep = Reporter::new(show, tree.blobs.iter().map(|b| b.size).sum());
    let (sent, bytes) = (AtomicUsize::new(0), std::sync::atomic::AtomicU64::new(0));
    let downloaded = futures::stream::iter(tree.blobs.iter().map(|b| {
        let (rep, sent, bytes) = (&rep, &sent, &bytes);
        async move {
            let bar = rep.blob(&b.digest, b.size);
            let tick = |n: u64| {
                bar.inc(n);
                rep.total.inc(n);
            };
            if layout.has_verified_blob(&b.digest, b.size).await? {
                rep.skipped(&bar, b.size);
                rep.done("exists", &b.digest, b.size, &bar);
                return Ok(());
            }
            let n = src
                .download(
                    &b.digest,
                    &layout.temp_path(&b.digest),
                    &layout.blob_path(&b.digest),
                    &tick,
                )
                .await?;
            if n != b.size {
                let _ = std::fs::remove_file(layout.blob_path(&b.digest));
                return Err(Error::Usage(format!(
                    "blob {} has {n} bytes, the manifest says {}",
                    b.digest, b.size
                )));
            }
            sent.fetch_add(1, Ordering::Relaxed);
            bytes.fetch_add(n, Ordering::Relaxed);
            rep.done("pulled", &b.digest, b.size, &bar);
            Ok::<_, Error>(())
        }
    }))
    .buffer_unordered(jobs.max(1))
    .try_collect::<Vec<()>>()
    .await;
    rep.finish();
    // The first failure cancels the other downloads midway; each removes its partial file
    // when dropped.
    downloaded?;
    // Each blob's data was synced before its rename; now the renames, before the manifests
    // that list the blobs and index.json, which lists the manifests, are written (durably).
    if !tree.blobs.is_empty() {
        layout.sync_blobs(tree.blobs[0].digest.algorithm())?;
    }
    for (_, body) in &tree.manifests {
        layout.write_blob(body)?;
    }
    let (root, _) = top(&tree);
    layout.set_tag(root, tag)?;
    remember(Locations::load(), src, &tree);
    let transferred = sent.into_inner();
    Ok(Summary {
        digest: root.digest.to_string(),
        media_type: root.media_type.clone(),
        blobs: tree.blobs.len(),
        transferred,
        skipped: tree.blobs.len() - transferred,
        mounted: 0,
        bytes: bytes.into_inner(),
    })
}

/// Copies `src_ref` from `src` to `dst` as `dst_ref`. Within one registry blobs are mounted
/// (no bytes move); otherwise each goes through a verified temporary file in `tmp`.
#[allow(clippy::too_many_arguments)]
pub async fn copy(
    src: &Repo,
    src_ref: &str,
    dst: &Repo,
    dst_ref: &str,
    platform: Option<&str>,
    tmp: &std::path::Path,
    jobs: usize,
    show: Show,
) -> Result<Summary> {
    let (root, root_bytes) = fetch_top(src, src_ref).await?;
    let tree = walk(root, root_bytes, platform, |d| async move {
        Ok(src.manifest(&d.digest.to_string()).await?.bytes)
    })
    .await?;
    let same_registry = src.t.registry == dst.t.registry;
    let counts = move_blobs(&tree.blobs, jobs, show, "copied", |b, tick| async move {
        if dst.blob_size(&b.digest).await?.is_some() {
            return Ok(Uploaded::Existed);
        }
        if same_registry && dst.mount(&b.digest, &src.name).await? {
            return Ok(Uploaded::Mounted);
        }
        let file = tmp.join(b.digest.hex());
        let partial = tmp.join(format!("{}.partial", b.digest.hex()));
        // The bar follows the download; the upload is reported when done.
        // A stopover read back once and deleted: not worth a sync.
        src.download_with(&b.digest, &partial, &file, Durability::Temporary, &|n| tick.add(n))
            .await?;
        let result = dst.upload(&b.digest, b.size, &file, None, &|_| {}).await;
        let _ = std::fs::remove_file(&file);
        result?;
        Ok(Uploaded::Sent)
    })
    .await?;
    let summary = put_manifests(&tree, dst, dst_ref, counts).await?;
    remember(Locations::load(), dst, &tree);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{Options, Transport};
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A registry that serves one image read-only from memory and counts the GETs of each
    /// path: enough for `pull`, and the counts show what a pull fetched.
    struct Served {
        addr: String,
        gets: Arc<Mutex<HashMap<String, usize>>>,
    }

    async fn serve(repo: &str, manifest: Vec<u8>, blobs: Vec<Vec<u8>>) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let mut routes: HashMap<String, (Vec<u8>, &'static str)> = HashMap::new();
        let md = Digest::of(&manifest);
        for r in ["1".to_owned(), md.to_string()] {
            routes.insert(
                format!("/v2/{repo}/manifests/{r}"),
                (manifest.clone(), media::OCI_MANIFEST),
            );
        }
        for b in blobs {
            routes.insert(
                format!("/v2/{repo}/blobs/{}", Digest::of(&b)),
                (b, "application/octet-stream"),
            );
        }
        let gets = Arc::new(Mutex::new(HashMap::new()));
        let (routes, counted) = (Arc::new(routes), gets.clone());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (routes, counted) = (routes.clone(), counted.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).await.is_ok_and(|n| n == 1) {
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let mut words = head.split_whitespace();
                    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                    *counted.lock().expect("lock").entry(path.to_owned()).or_insert(0) += 1;
                    let (status, body, ct) = match routes.get(path) {
                        Some((b, ct)) => ("200 OK", b.clone(), *ct),
                        None if path == "/v2/" => ("200 OK", b"{}".to_vec(), "application/json"),
                        None => ("404 Not Found", b"{\"errors\":[]}".to_vec(), "application/json"),
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                    if method != "HEAD" {
                        let _ = conn.write_all(&body).await;
                    }
                    let _ = conn.shutdown().await;
                });
            }
        });
        Served { addr, gets }
    }

    fn desc(media_type: &str, bytes: &[u8]) -> serde_json::Value {
        serde_json::json!({"mediaType": media_type, "digest": Digest::of(bytes).to_string(), "size": bytes.len()})
    }

    #[tokio::test]
    async fn pull_checks_the_blobs_it_finds_and_replaces_torn_ones() {
        let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
        let layers: Vec<Vec<u8>> = (0..2u8).map(|i| vec![i + 1; (3 << 20) + 17]).collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
            "config": desc("application/vnd.oci.image.config.v1+json", &config),
            "layers": layers.iter().map(|l| desc("application/vnd.oci.image.layer.v1.tar", l)).collect::<Vec<_>>(),
        })
        .to_string()
        .into_bytes();
        let mut blobs = layers.clone();
        blobs.push(config.clone());
        let served = serve("test/img", manifest.clone(), blobs).await;
        let opts = Options {
            plain_http: true,
            insecure: false,
            retries: 1,
        };
        let t = Transport::new(&served.addr, &served.addr, true, None, &opts).expect("transport");
        let repo = Repo::new(Arc::new(t), "test/img");
        let dir = tempfile::tempdir().expect("tmp");
        let layout = Layout::create(dir.path()).expect("layout");
        let layer_gets = |i: usize| {
            let path = format!("/v2/test/img/blobs/{}", Digest::of(&layers[i]));
            served.gets.lock().expect("lock").get(&path).copied().unwrap_or(0)
        };

        let first = pull(&repo, "1", &layout, "1", None, 4, Show::Quiet)
            .await
            .expect("pull");
        assert_eq!((first.blobs, first.transferred, first.skipped), (3, 3, 0));
        assert_eq!((layer_gets(0), layer_gets(1)), (1, 1));
        assert_eq!(first.digest, Digest::of(&manifest).to_string());

        // A crash after a rename that came before the data reached the disk (another tool's,
        // or an older berth's) leaves the right name and size over zeros.
        let torn = layout.blob_path(&Digest::of(&layers[0]));
        std::fs::write(&torn, vec![0u8; layers[0].len()]).expect("tear");
        let again = pull(&repo, "1", &layout, "1", None, 4, Show::Quiet)
            .await
            .expect("pull again");
        assert_eq!(
            (again.transferred, again.skipped),
            (1, 2),
            "only the torn layer is fetched again"
        );
        assert_eq!((layer_gets(0), layer_gets(1)), (2, 1));
        assert_eq!(std::fs::read(&torn).expect("read"), layers[0]);
        assert_eq!(
            layout.find(Some("1")).expect("tagged").digest,
            Digest::of(&manifest),
            "index.json lists the pulled manifest"
        );
        let leftovers: Vec<String> = std::fs::read_dir(dir.path().join("blobs/sha256"))
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
}
