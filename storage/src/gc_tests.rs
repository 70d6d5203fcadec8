//! The collector against every metadata backend (SQLite, PostgreSQL) and both kinds of object
//! store (memory, local directory).

use super::*;
use crate::meta::Reference;
use crate::upload::{ChunkCheck, Uploads};
use crate::Error;
use berth_oci::{manifest, Digest};
use bytes::Bytes;
use futures::TryStreamExt;
use std::path::PathBuf;
use std::sync::Arc;

struct Env {
    name: String,
    meta: Meta,
    blobs: BlobStore,
    uploads: Uploads,
    /// The directory of a local store.
    root: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

#[derive(Clone, Copy, PartialEq)]
enum Store {
    /// Memory, an object per chunk.
    Memory,
    /// A local directory.
    Local,
    /// Memory through its multipart API, with tiny parts.
    Multipart,
    /// S3 (moto), with S3's part sizes.
    S3,
}

/// Every metadata backend over memory stores (an object per chunk, and multipart) and a local
/// directory; S3 once, on PostgreSQL when there is one.
async fn envs() -> Vec<Env> {
    envs_of(&[Store::Memory, Store::Local, Store::Multipart, Store::S3]).await
}

async fn envs_of(stores: &[Store]) -> Vec<Env> {
    let mut out = Vec::new();
    for &store in stores {
        let mut metas = crate::testing::metas().await;
        if store == Store::S3 {
            metas = metas.into_iter().rev().take(1).collect();
        }
        for (db, meta) in metas {
            let (blobs, dir, what) = match store {
                Store::Local => {
                    let dir = tempfile::tempdir().expect("tempdir");
                    (BlobStore::local(dir.path()).expect("local store"), Some(dir), "local")
                }
                Store::Memory => (BlobStore::memory(), None, "memory"),
                Store::Multipart => (BlobStore::memory().with_part_sizes(4, 8), None, "multipart"),
                Store::S3 => match crate::testing::fresh_s3() {
                    Some((url, opts)) => (BlobStore::open(&url, &opts).expect("s3 store"), None, "s3"),
                    None => continue,
                },
            };
            let root = dir
                .as_ref()
                .map(|d| std::fs::canonicalize(d.path()).expect("canonical"));
            out.push(Env {
                name: format!("{db}+{what}"),
                uploads: Uploads::new(blobs.clone(), meta.clone()),
                meta,
                blobs,
                root,
                _dir: dir,
            });
        }
    }
    out
}

fn opts(grace: Duration, dry_run: bool) -> GcOptions {
    GcOptions {
        grace,
        upload_expiry: Duration::from_secs(3600),
        dry_run,
    }
}

fn body(data: &[u8]) -> futures::stream::Iter<std::vec::IntoIter<std::result::Result<Bytes, String>>> {
    futures::stream::iter(vec![Ok(Bytes::copy_from_slice(data))])
}

async fn push_blob(e: &Env, repo: &str, data: &[u8]) -> Result<Digest> {
    let d = Digest::of(data);
    let u = e.uploads.start(repo).await?;
    e.uploads
        .finish(repo, &u.id, &d, ChunkCheck::default(), Some(body(data)))
        .await?;
    Ok(d)
}

fn image(cfg: &Digest, layers: &[(&Digest, usize)], subject: Option<(&Digest, usize)>, note: &str) -> Vec<u8> {
    let layers: Vec<String> = layers
        .iter()
        .map(|(d, n)| format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{n}}}"#))
        .collect();
    let subject = subject
        .map(|(d, n)| {
            format!(
                r#","subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","size":{n}}}"#
            )
        })
        .unwrap_or_default();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cfg}","size":2}},"layers":[{}],"annotations":{{"note":"{note}"}}{subject}}}"#,
        layers.join(",")
    )
    .into_bytes()
}

fn index(children: &[(&Digest, usize)]) -> Vec<u8> {
    let m: Vec<String> = children
        .iter()
        .map(|(d, n)| {
            format!(r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","size":{n}}}"#)
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
        m.join(",")
    )
    .into_bytes()
}

async fn put(e: &Env, repo: &str, content: &[u8], tag: Option<&str>) -> Result<Digest> {
    let d = Digest::of(content);
    let parsed = manifest::parse(content, None).expect("test manifest parses");
    e.meta.put_manifest(repo, &d, &parsed, content, tag).await?;
    Ok(d)
}

async fn has_manifest(e: &Env, repo: &str, d: &Digest) -> bool {
    match e.meta.get_manifest(repo, Reference::Digest(d), false).await {
        Ok(_) => true,
        Err(Error::ManifestUnknown { .. }) => false,
        Err(err) => panic!("{}: {err}", e.name),
    }
}

async fn read(e: &Env, d: &Digest) -> Option<Vec<u8>> {
    e.blobs.stat(d).await.expect("stat")?;
    let r = e.blobs.get(d, None).await.expect("get");
    let parts: Vec<Bytes> = r.stream.try_collect().await.expect("read");
    Some(parts.concat())
}

/// Lets the clock pass the last reference, so a run without grace period sees it as old.
async fn tick() {
    tokio::time::sleep(Duration::from_millis(5)).await;
}

#[test]
fn plan_marks_from_tags_through_indexes_and_referrers() {
    let m = |repo: i64, d: &str, subject: Option<&str>, t: i64| crate::meta::GcManifest {
        repo_id: repo,
        digest: d.into(),
        subject: subject.map(Into::into),
        last_referenced: t,
        size: 10,
    };
    let g = GcGraph {
        manifests: vec![
            m(1, "idx", None, 0),
            m(1, "child", None, 0),
            m(1, "sig", Some("child"), 0),
            m(1, "old", None, 0),
            m(1, "oldsig", Some("old"), 0),
            m(1, "oldsigsig", Some("oldsig"), 0),
            m(1, "young", None, 100),
            m(2, "child", None, 0),
        ],
        tags: vec![(1, "idx".into())],
        refs: vec![
            (1, "idx".into(), "child".into()),
            (1, "child".into(), "b1".into()),
            (1, "old".into(), "b2".into()),
            (1, "young".into(), "b3".into()),
            (2, "child".into(), "b1".into()),
        ],
        links: vec![
            crate::meta::GcLink {
                repo_id: 1,
                digest: "b1".into(),
                last_referenced: 0,
            },
            crate::meta::GcLink {
                repo_id: 1,
                digest: "b2".into(),
                last_referenced: 0,
            },
            crate::meta::GcLink {
                repo_id: 2,
                digest: "b1".into(),
                last_referenced: 0,
            },
            crate::meta::GcLink {
                repo_id: 1,
                digest: "b3".into(),
                last_referenced: 0,
            },
            crate::meta::GcLink {
                repo_id: 1,
                digest: "fresh".into(),
                last_referenced: 100,
            },
        ],
        blobs: ["b1", "b2", "b3", "fresh", "lonely", "uploading", "new"]
            .iter()
            .map(|d| crate::meta::GcBlob {
                digest: (*d).into(),
                size: 1,
                last_referenced: if *d == "new" { 100 } else { 0 },
            })
            .collect(),
        uploads: vec![("u".into(), Some("uploading".into())), ("v".into(), None)],
        ..GcGraph::default()
    };
    let p = plan(&g, 50);
    let order: Vec<&str> = p.manifests.iter().map(|(_, d, _)| d.as_str()).collect();
    // Repository 2's "child" is not tagged in repository 2: tags are per repository.
    let mut set = order.clone();
    set.sort();
    assert_eq!(set, vec!["child", "old", "oldsig", "oldsigsig"], "{order:?}");
    let pos = |d: &str| order.iter().position(|x| *x == d).expect("planned");
    assert!(
        pos("old") < pos("oldsig") && pos("oldsig") < pos("oldsigsig"),
        "subjects first: {order:?}"
    );
    assert_eq!(p.links, vec![(1, "b2".to_string()), (2, "b1".to_string())]);
    assert_eq!(p.blobs, vec![("b2".to_string(), 1), ("lonely".to_string(), 1)]);
}

#[tokio::test]
async fn collects_garbage_and_keeps_what_is_referenced() {
    for e in envs().await {
        collects_garbage_and_keeps_what_is_referenced_on(&e).await;
    }
}

async fn collects_garbage_and_keeps_what_is_referenced_on(e: &Env) {
    let r = "t/app";
    let cfg = push_blob(e, r, b"{}").await.expect("cfg");
    let l1 = push_blob(e, r, b"layer-one").await.expect("l1");
    let l2 = push_blob(e, r, b"layer-two").await.expect("l2");
    let l3 = push_blob(e, r, b"layer-three").await.expect("l3");
    let l4 = push_blob(e, r, b"layer-four").await.expect("l4");
    let a_body = image(&cfg, &[(&l1, 9)], None, "a");
    let a = put(e, r, &a_body, Some("a")).await.expect("a");
    let b_body = image(&cfg, &[(&l2, 9)], None, "b");
    let b = put(e, r, &b_body, None).await.expect("b");
    let c_body = image(&cfg, &[(&l4, 10)], None, "c");
    let c = put(e, r, &c_body, None).await.expect("c");
    let i = put(e, r, &index(&[(&c, c_body.len())]), Some("multi"))
        .await
        .expect("index");
    let sig = put(e, r, &image(&cfg, &[], Some((&a, a_body.len())), "sig"), None)
        .await
        .expect("referrer of a");
    let bsig = put(e, r, &image(&cfg, &[], Some((&b, b_body.len())), "bsig"), None)
        .await
        .expect("referrer of b");
    assert!(e.meta.unlink_blob(r, &l3).await.expect("unlink"));
    let open = e.uploads.start(r).await.expect("open session");
    e.uploads
        .append(r, &open.id, ChunkCheck::default(), body(b"half"))
        .await
        .expect("chunk");
    tick().await;

    let expected = GcReport {
        manifests: 2,
        links: 1,
        blobs: 2,
        blob_bytes: 9 + 11,
        ..GcReport::default()
    };
    let dry = collect(&e.meta, &e.blobs, &opts(Duration::ZERO, true))
        .await
        .expect("dry run");
    assert_eq!(
        dry,
        GcReport {
            dry_run: true,
            ..expected.clone()
        },
        "{}",
        e.name
    );
    assert!(
        has_manifest(e, r, &b).await && has_manifest(e, r, &bsig).await,
        "{}",
        e.name
    );
    assert!(
        read(e, &l2).await.is_some() && read(e, &l3).await.is_some(),
        "{}",
        e.name
    );

    // With an hour of grace, everything is young.
    let kept = collect(&e.meta, &e.blobs, &opts(Duration::from_secs(3600), false))
        .await
        .expect("gc with grace");
    assert_eq!(kept, GcReport::default(), "{}", e.name);

    let done = collect(&e.meta, &e.blobs, &opts(Duration::ZERO, false))
        .await
        .expect("gc");
    assert_eq!(done, expected, "{}", e.name);
    for d in [&a, &c, &i, &sig] {
        assert!(has_manifest(e, r, d).await, "{}: {d} must stay", e.name);
    }
    for d in [&b, &bsig] {
        assert!(!has_manifest(e, r, d).await, "{}: {d} must go", e.name);
    }
    for (d, data) in [(&cfg, &b"{}"[..]), (&l1, b"layer-one"), (&l4, b"layer-four")] {
        assert_eq!(read(e, d).await.as_deref(), Some(data), "{}", e.name);
        assert!(e.meta.linked_blob(r, d).await.expect("link").is_some(), "{}", e.name);
    }
    for d in [&l2, &l3] {
        assert_eq!(read(e, d).await, None, "{}: bytes of {d} must go", e.name);
        assert_eq!(e.meta.linked_blob(r, d).await.expect("link"), None, "{}", e.name);
    }
    assert_eq!(e.uploads.status(r, &open.id).await.expect("open session").size, 4);
    let again = collect(&e.meta, &e.blobs, &opts(Duration::ZERO, false))
        .await
        .expect("gc again");
    assert_eq!(again, GcReport::default(), "{}: a second run finds nothing", e.name);
    // The open session still finishes.
    let whole = Digest::of(b"half and the rest");
    e.uploads
        .finish(r, &open.id, &whole, ChunkCheck::default(), Some(body(b" and the rest")))
        .await
        .expect("finish after gc");
}

#[tokio::test]
async fn shared_blobs_live_until_their_last_link_goes() {
    for e in envs().await {
        shared_blobs_live_until_their_last_link_goes_on(&e).await;
    }
}

async fn shared_blobs_live_until_their_last_link_goes_on(e: &Env) {
    let cfg = push_blob(e, "one", b"{}").await.expect("cfg");
    let l = push_blob(e, "one", b"shared layer").await.expect("layer");
    let body = image(&cfg, &[(&l, 12)], None, "shared");
    let m = put(e, "one", &body, Some("v1")).await.expect("put one");
    for d in [&cfg, &l] {
        e.meta
            .mount_blob("two", "one", d)
            .await
            .expect("mount")
            .expect("mountable");
    }
    put(e, "two", &body, Some("v1")).await.expect("put two");
    e.meta.delete_tag("one", "v1").await.expect("untag");
    tick().await;
    let r = collect(&e.meta, &e.blobs, &opts(Duration::ZERO, false))
        .await
        .expect("gc");
    assert_eq!((r.manifests, r.links, r.blobs), (1, 2, 0), "{}: {r}", e.name);
    assert!(!has_manifest(e, "one", &m).await);
    assert!(has_manifest(e, "two", &m).await);
    assert_eq!(read(e, &l).await.as_deref(), Some(&b"shared layer"[..]), "{}", e.name);
    e.meta.delete_manifest("two", &m).await.expect("delete");
    tick().await;
    let r = collect(&e.meta, &e.blobs, &opts(Duration::ZERO, false))
        .await
        .expect("gc");
    assert_eq!(
        (r.manifests, r.links, r.blobs, r.blob_bytes),
        (0, 2, 2, 14),
        "{}: {r}",
        e.name
    );
    assert_eq!(read(e, &l).await, None, "{}", e.name);
    assert_eq!(read(e, &cfg).await, None, "{}", e.name);
}

#[tokio::test]
async fn a_reference_made_after_the_mark_is_kept() {
    for e in envs().await {
        a_reference_made_after_the_mark_is_kept_on(&e).await;
    }
}

/// Replays the race by hand: mark, then a writer references a candidate, then the sweep.
/// With a cutoff in the far future the timestamps protect nothing: the re-check alone must.
async fn a_reference_made_after_the_mark_is_kept_on(e: &Env) {
    let r = "race";
    let cfg = push_blob(e, r, b"{}").await.expect("cfg");
    let x = push_blob(e, r, b"linked, then used").await.expect("x");
    let y = push_blob(e, r, b"unlinked, then uploaded again").await.expect("y");
    assert!(e.meta.unlink_blob(r, &y).await.expect("unlink"));
    let untagged = image(&cfg, &[], None, "untagged");
    let m = put(e, r, &untagged, None).await.expect("untagged");
    let future = i64::MAX;
    let p = plan(&e.meta.gc_graph().await.expect("graph"), future);
    assert!(p.links.iter().any(|(_, d)| *d == x.to_string()), "{p:?}");
    assert!(p.blobs.iter().any(|(d, _)| *d == y.to_string()), "{p:?}");
    assert!(p.manifests.iter().any(|(_, d, _)| *d == m.to_string()), "{p:?}");

    // After the mark: a manifest uses x, y is uploaded again, the untagged manifest is tagged.
    put(e, r, &image(&cfg, &[(&x, 17)], None, "uses x"), Some("x"))
        .await
        .expect("use x");
    push_blob(e, r, b"unlinked, then uploaded again")
        .await
        .expect("y again");
    put(e, r, &untagged, Some("now-tagged")).await.expect("tag");

    for (repo_id, d) in &p.links {
        if *d == x.to_string() {
            assert!(
                !e.meta.gc_delete_link(*repo_id, d, future).await.expect("link"),
                "{}",
                e.name
            );
        }
    }
    for (repo_id, d, _) in &p.manifests {
        assert!(
            !e.meta.gc_delete_manifest(*repo_id, d, future).await.expect("manifest"),
            "{}",
            e.name
        );
    }
    let deleted = e
        .meta
        .gc_delete_blob(&y.to_string(), future, || e.blobs.delete(&y))
        .await
        .expect("blob");
    assert!(!deleted, "{}: a blob linked again after the mark is kept", e.name);
    assert!(read(e, &y).await.is_some(), "{}", e.name);
    assert!(e.meta.linked_blob(r, &x).await.expect("x").is_some(), "{}", e.name);
    assert!(has_manifest(e, r, &m).await, "{}", e.name);

    // An upload being committed as a digest holds it too.
    let z = b"being committed";
    let zd = push_blob(e, r, z).await.expect("z");
    assert!(e.meta.unlink_blob(r, &zd).await.expect("unlink z"));
    let u = e.uploads.start(r).await.expect("session");
    e.uploads
        .append(r, &u.id, ChunkCheck::default(), body(z))
        .await
        .expect("chunk");
    assert!(e
        .meta
        .reserve_upload(&u.id, z.len() as u64, &zd)
        .await
        .expect("reserve"));
    let deleted = e
        .meta
        .gc_delete_blob(&zd.to_string(), future, || e.blobs.delete(&zd))
        .await
        .expect("blob");
    assert!(!deleted, "{}: a blob being committed is kept", e.name);
    // And bytes with a row are never taken for unrecorded ones.
    assert!(!e
        .meta
        .gc_delete_orphan(&zd.to_string(), || e.blobs.delete(&zd))
        .await
        .expect("orphan"));
    assert!(read(e, &zd).await.is_some(), "{}", e.name);
}

#[tokio::test]
async fn expired_sessions_and_staging_leftovers_are_purged() {
    for e in envs().await {
        expired_sessions_and_staging_leftovers_are_purged_on(&e).await;
    }
}

async fn expired_sessions_and_staging_leftovers_are_purged_on(e: &Env) {
    let r = "up";
    let old = e.uploads.start(r).await.expect("old session");
    e.uploads
        .append(r, &old.id, ChunkCheck::default(), body(b"stale"))
        .await
        .expect("chunk");
    e.meta.backdate_upload(&old.id, 1).await.expect("backdate");
    let live = e.uploads.start(r).await.expect("live session");
    e.uploads
        .append(r, &live.id, ChunkCheck::default(), body(b"fresh "))
        .await
        .expect("chunk");
    // A blob whose row is gone (as a crash between a collector's delete and its commit leaves
    // it), written straight into the store.
    let raw = b"bytes without a row";
    let orphan = Digest::of(raw);
    e.blobs
        .store
        .put(&crate::paths::blob(&orphan), Bytes::from_static(raw).into())
        .await
        .expect("orphan");
    // Staged data of a session that no longer exists.
    let gone = uuid::Uuid::new_v4().to_string();
    e.blobs
        .store
        .put(&crate::paths::upload_part(&gone, 0), Bytes::from_static(b"left").into())
        .await
        .expect("left part");
    // What the run must remove: the objects staged for sessions that are expired or gone
    // (multipart parts are not objects: aborting their upload removes them).
    let staged_keys = e
        .blobs
        .store
        .list(Some(&crate::paths::uploads_root()))
        .try_filter(|m| {
            futures::future::ready(crate::paths::session_of_upload(&m.location).as_deref() != Some(live.id.as_str()))
        })
        .try_collect::<Vec<_>>()
        .await
        .expect("list")
        .len() as u64;
    let mut local_leftovers = Vec::new();
    if let Some(root) = &e.root {
        // object_store's own staging files of interrupted writes (which its listings skip),
        // and a directory a rename left empty.
        let dir = root.join("uploads").join(&gone);
        std::fs::write(dir.join("000001-abc#1"), b"interrupted").expect("staging file");
        let empty = root.join("uploads").join(uuid::Uuid::new_v4().to_string());
        std::fs::create_dir_all(&empty).expect("empty dir");
        let hex = Digest::of(b"never finished").hex().to_owned();
        let bdir = root.join("blobs/sha256").join(&hex[..2]);
        std::fs::create_dir_all(&bdir).expect("fan-out dir");
        let staging = bdir.join(format!("{hex}#1"));
        std::fs::write(&staging, b"never fini").expect("blob staging file");
        local_leftovers = vec![dir, empty, staging];
    }
    tick().await;

    let dry = collect(
        &e.meta,
        &e.blobs,
        &GcOptions {
            grace: Duration::ZERO,
            upload_expiry: Duration::from_secs(3600),
            dry_run: true,
        },
    )
    .await
    .expect("dry run");
    assert_eq!(
        (dry.uploads_expired, dry.orphan_blobs, dry.orphan_bytes),
        (1, 1, raw.len() as u64),
        "{}: {dry}",
        e.name
    );
    for p in &local_leftovers {
        assert!(p.exists(), "{}: dry run removed {}", e.name, p.display());
    }
    assert!(e.uploads.status(r, &old.id).await.is_ok(), "{}", e.name);

    let done = collect(
        &e.meta,
        &e.blobs,
        &GcOptions {
            grace: Duration::ZERO,
            upload_expiry: Duration::from_secs(3600),
            dry_run: false,
        },
    )
    .await
    .expect("gc");
    assert_eq!(
        (done.uploads_expired, done.orphan_blobs, done.errors),
        (1, 1, 0),
        "{}: {done}",
        e.name
    );
    // On a local store also: the hidden staging file, the empty directory and the blob
    // staging file.
    let staged = staged_keys + if e.root.is_some() { 3 } else { 0 };
    assert_eq!(done.staged_removed, staged, "{}: {done}", e.name);
    assert!(matches!(
        e.uploads.status(r, &old.id).await,
        Err(Error::UploadUnknown { .. })
    ));
    assert_eq!(read(e, &orphan).await, None, "{}", e.name);
    for p in &local_leftovers {
        assert!(!p.exists(), "{}: {} left behind", e.name, p.display());
    }
    let left: Vec<_> = e
        .blobs
        .store
        .list(Some(&crate::paths::uploads_root()))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .expect("list");
    assert!(
        left.iter().all(|k| k.starts_with(&format!("uploads/{}/", live.id))),
        "{}: {left:?}",
        e.name
    );
    // The live session is untouched and finishes; its directory goes with it.
    let whole = Digest::of(b"fresh bytes");
    e.uploads
        .finish(r, &live.id, &whole, ChunkCheck::default(), Some(body(b"bytes")))
        .await
        .expect("finish");
    if let Some(root) = &e.root {
        let mut tries = 0;
        while root.join("uploads").join(&live.id).exists() && tries < 100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            tries += 1;
        }
        assert!(
            !root.join("uploads").join(&live.id).exists(),
            "{}: a finished session leaves no directory",
            e.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_racing_the_collector_stay_whole() {
    for e in envs().await {
        pushes_racing_the_collector_stay_whole_on(Arc::new(e)).await;
    }
}

/// A pushed image: tag, manifest digest, blobs with their bytes.
type Pushed = (String, Digest, Vec<(Digest, Vec<u8>)>);

/// Several pushers (shared config and base layer, a layer of their own, a tag each, every
/// other image untagged again) against a collector without grace period running in a loop.
/// Every image whose manifest put succeeded and that is still tagged must be whole; at the
/// end, everything else must be gone.
async fn pushes_racing_the_collector_stay_whole_on(e: Arc<Env>) {
    const PUSHERS: usize = 4;
    const IMAGES: usize = 12;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let collector = {
        let (e, stop) = (e.clone(), stop.clone());
        tokio::spawn(async move {
            let mut runs = 0u32;
            let mut total = GcReport::default();
            // Zero grace, except on S3: a push there (three blob uploads through moto, then
            // the manifest) can take longer than a collector run, and a collector without
            // grace would then take every push's blobs before its manifest arrives, forever.
            // A short grace keeps pushes winning sometimes while runs still race them.
            let grace = if e.name.contains("s3") {
                Duration::from_secs(2)
            } else {
                Duration::ZERO
            };
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = collect(&e.meta, &e.blobs, &opts(grace, false)).await.expect("gc run");
                assert_eq!(r.errors, 0, "{}: {r}", e.name);
                total.manifests += r.manifests;
                total.blobs += r.blobs;
                total.kept_on_recheck += r.kept_on_recheck;
                runs += 1;
            }
            (runs, total)
        })
    };
    let mut pushers = Vec::new();
    for p in 0..PUSHERS {
        let e = e.clone();
        pushers.push(tokio::spawn(async move {
            let repo = format!("stress/p{}", p % 2);
            let mut tagged: Vec<Pushed> = Vec::new();
            let mut retries = 0;
            for i in 0..IMAGES {
                let own = format!("layer of pusher {p} image {i}").into_bytes();
                let blobs = vec![
                    (Digest::of(b"{}"), b"{}".to_vec()),
                    (Digest::of(b"base layer"), b"base layer".to_vec()),
                    (Digest::of(&own), own.clone()),
                ];
                let tag = format!("p{p}-i{i}");
                loop {
                    // A collector without grace may take a link between upload and manifest:
                    // the put then fails cleanly and the push starts again, as a client would.
                    let mut ok = true;
                    for (_, data) in &blobs {
                        push_blob(&e, &repo, data).await.expect("blob upload");
                    }
                    let body = image(&blobs[0].0, &[(&blobs[1].0, 10), (&blobs[2].0, own.len())], None, &tag);
                    match put(&e, &repo, &body, Some(&tag)).await {
                        Ok(d) => {
                            tagged.push((tag.clone(), d, blobs.clone()));
                        }
                        Err(Error::ManifestBlobUnknown { .. }) => ok = false,
                        Err(err) => panic!("{}: push failed: {err}", e.name),
                    }
                    if ok {
                        break;
                    }
                    retries += 1;
                    assert!(retries < 200, "{}: pushes keep losing their blobs", e.name);
                }
                if i % 2 == 1 {
                    let (t, _, _) = tagged.pop().expect("just pushed");
                    e.meta.delete_tag(&repo, &t).await.expect("untag");
                }
            }
            (repo, tagged, retries)
        }));
    }
    let mut live = Vec::new();
    let mut retries = 0;
    for p in pushers {
        let (repo, tagged, r) = p.await.expect("pusher");
        retries += r;
        live.extend(tagged.into_iter().map(|t| (repo.clone(), t)));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (runs, total) = collector.await.expect("collector");
    eprintln!(
        "{}: {} images live, {retries} pushes retried, {runs} collections, {} manifests and {} blobs collected, {} kept on re-check",
        e.name,
        live.len(),
        total.manifests,
        total.blobs,
        total.kept_on_recheck
    );
    assert!(runs >= 2, "{}: the collector must have run during the pushes", e.name);

    let check = |e: Arc<Env>, live: Vec<(String, Pushed)>| async move {
        for (repo, (tag, digest, blobs)) in &live {
            let m = e
                .meta
                .get_manifest(repo, Reference::Tag(tag), true)
                .await
                .unwrap_or_else(|err| panic!("{}: {repo}:{tag}: {err}", e.name));
            assert_eq!(&m.digest, digest);
            for (d, data) in blobs {
                assert_eq!(
                    e.meta.linked_blob(repo, d).await.expect("link"),
                    Some(data.len() as u64),
                    "{}: {repo}:{tag} lost its link to {d}",
                    e.name
                );
                let got = read(&e, d)
                    .await
                    .unwrap_or_else(|| panic!("{}: bytes of {d} are gone", e.name));
                assert_eq!(Digest::of(&got), *d, "{}", e.name);
            }
        }
    };
    check(e.clone(), live.clone()).await;
    // Once more after a final collection, which must leave exactly the live content.
    tick().await;
    collect(&e.meta, &e.blobs, &opts(Duration::ZERO, false))
        .await
        .expect("final gc");
    check(e.clone(), live.clone()).await;
    let mut wanted: Vec<String> = live
        .iter()
        .flat_map(|(_, (_, _, blobs))| blobs.iter().map(|(d, _)| d.to_string()))
        .collect();
    wanted.sort();
    wanted.dedup();
    let mut stored: Vec<String> = e
        .blobs
        .list_blobs()
        .await
        .expect("list")
        .into_iter()
        .map(|(d, _)| d.to_string())
        .collect();
    stored.sort();
    assert_eq!(stored, wanted, "{}: only the live images' blobs remain", e.name);
}
