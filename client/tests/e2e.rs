//! `berth` end to end against real registries: round trips (push, pull, push again, tags,
//! digest, inspect, catalog) byte-exact against `berth-registry` — with one layer 6 MiB above
//! a 32 MiB chunk size (`BERTH_CHUNK_SIZE`), so that it goes up in chunks — and
//! against the reference registry (`docker-registry`, distribution 2.8); copies between the two
//! and within one registry (mounts); bad input.
//!
//! Images are built here, in Rust, as OCI layouts of uncompressed tar layers of generated data,
//! so every byte that comes back can be compared with what went out.

mod common;

use common::*;
use serde_json::json;
use std::path::Path;

/// The `--json` summary of a push or pull that references `img`'s blobs.
fn summary(img: &Image, transferred: usize, skipped: usize, mounted: usize, bytes: u64) -> serde_json::Value {
    json!({
        "digest": img.digest,
        "media_type": OCI_MANIFEST,
        "blobs": img.blob_count(),
        "transferred": transferred,
        "skipped": skipped,
        "mounted": mounted,
        "bytes": bytes,
    })
}

/// The `--json` entry of a copy from `source` to `destination` (full references).
fn copied(summary: serde_json::Value, source: &str, destination: &str) -> serde_json::Value {
    let mut v = summary;
    v["source"] = json!(source);
    v["destination"] = json!(destination);
    v
}

fn lines(out: &std::process::Output) -> Vec<String> {
    let mut v: Vec<String> = stdout(out).lines().map(str::to_owned).collect();
    v.sort();
    v
}

/// Push, pull (byte-exact), push again (nothing moves), pull again (nothing moves), a second
/// tag chosen with `--tag`, then tags, digest, inspect and catalog, all against `reg`.
fn round_trip(reg: &Server, tmp: &Path, layer_sizes: &[usize], seed: u64, chunk_size: Option<&str>) {
    let mut berth = Berth::new(&tmp.join("docker-config"));
    berth.chunk_size = chunk_size.map(str::to_owned);
    let img = write_image(&tmp.join("src"), "1", layer_sizes, seed);
    let src = img.layout.to_str().expect("utf-8 path");
    let repo = format!("{}/e2e/img", reg.addr);
    let n = img.blob_count();
    let total = img.blob_bytes();

    let pushed = berth.json(&["push", src, &format!("{repo}:1")]);
    assert_eq!(pushed, summary(&img, n, 0, 0, total), "first push");

    let dst = tmp.join("pulled");
    let dst_s = dst.to_str().expect("utf-8 path");
    let pulled = berth.json(&["pull", &format!("{repo}:1"), "--to", dst_s]);
    assert_eq!(pulled, summary(&img, n, 0, 0, total), "first pull");
    assert_same_blobs(&img.layout, &dst);
    let manifest_file = dst.join("blobs/sha256").join(&img.digest["sha256:".len()..]);
    assert!(
        std::fs::read(&manifest_file).ok().as_deref() == Some(&img.manifest[..]),
        "the pulled manifest is not the pushed one byte for byte"
    );
    let entry = index_entry(&dst, "1");
    assert_eq!(entry["digest"], json!(img.digest), "{entry}");
    assert_eq!(entry["mediaType"], json!(OCI_MANIFEST), "{entry}");
    assert_eq!(entry["size"], json!(img.manifest.len()), "{entry}");

    let again = berth.json(&["push", src, &format!("{repo}:1")]);
    assert_eq!(again, summary(&img, 0, n, 0, 0), "second push: everything exists");
    let again = berth.json(&["pull", &format!("{repo}:1"), "--to", dst_s]);
    assert_eq!(again, summary(&img, 0, n, 0, 0), "second pull: everything is local");
    assert_same_blobs(&img.layout, &dst);

    // Plain output: one line naming the digest.
    let out = berth.ok(&["push", src, &format!("{repo}:latest"), "--tag", "1"]);
    assert!(stdout(&out).contains(&img.digest), "push printed:\n{}", stdout(&out));

    let out = berth.ok(&["tags", &repo]);
    assert_eq!(lines(&out), ["1", "latest"], "berth tags");
    let mut tags = berth.json(&["tags", &repo]);
    tags.as_array_mut()
        .expect("tags --json is an array")
        .sort_by_key(|t| t.to_string());
    assert_eq!(tags, json!(["1", "latest"]));

    for r in [
        format!("{repo}:1"),
        format!("{repo}:latest"),
        format!("{repo}@{}", img.digest),
    ] {
        let out = berth.ok(&["digest", &r]);
        assert_eq!(stdout(&out).trim(), img.digest, "berth digest {r}");
    }
    assert_eq!(
        berth.json(&["digest", &format!("{repo}:1")]),
        json!({"digest": img.digest})
    );

    let inspect = berth.json(&["inspect", &format!("{repo}:1")]);
    let manifest: serde_json::Value = serde_json::from_slice(&img.manifest).expect("manifest JSON");
    let config: serde_json::Value = serde_json::from_slice(&img.config).expect("config JSON");
    assert_eq!(
        inspect,
        json!({"digest": img.digest, "mediaType": OCI_MANIFEST, "manifest": manifest, "config": config}),
        "berth inspect --json"
    );
    let out = berth.ok(&["inspect", &format!("{repo}:1")]);
    for (layer, _) in &img.layers {
        assert!(
            stdout(&out).contains(layer),
            "inspect does not list {layer}:\n{}",
            stdout(&out)
        );
    }

    let catalog = berth.json(&["catalog", &reg.addr]);
    assert!(
        catalog.as_array().is_some_and(|a| a.contains(&json!("e2e/img"))),
        "catalog: {catalog}"
    );
}

#[test]
fn round_trip_against_berth_with_a_chunked_layer() {
    let tmp = tempfile::tempdir().expect("tmp");
    let reg = start_berth(&tmp.path().join("data"), &[]);
    // One layer 6 MiB above the chunk size (set small with BERTH_CHUNK_SIZE, as a user would
    // for a proxy that caps request bodies), so that it goes up in two PATCHes (a full chunk
    // and the rest) and a final PUT; the others in one PUT each.
    let chunk = 32usize << 20;
    let big = chunk + (6 << 20);
    let started = std::time::Instant::now();
    round_trip(&reg, tmp.path(), &[300 << 10, big, 1 << 20], 1, Some("32M"));
    eprintln!("round trip with a {big}-byte layer: {:?}", started.elapsed());
    // The registry logs one line per request ("method=PATCH … done status=202").
    let log = reg.log();
    let patches = log
        .lines()
        .filter(|l| l.contains("method=PATCH") && l.contains("status=202"))
        .count();
    assert_eq!(
        patches, 2,
        "expected two accepted PATCH chunks in the registry log:\n{log}"
    );
}

#[test]
fn round_trip_against_the_reference_registry() {
    if !require("docker-registry") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let reg = start_reference(&tmp.path().join("data"));
    round_trip(&reg, tmp.path(), &[400 << 10, 2 << 20, 900 << 10], 2, None);
}

#[test]
fn copy_from_berth_to_the_reference_registry_and_back() {
    if !require("docker-registry") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let berth_reg = start_berth(&tmp.path().join("berth-data"), &[]);
    let reference = start_reference(&tmp.path().join("reference-data"));
    let berth = Berth::new(&tmp.path().join("docker-config"));
    let img = write_image(&tmp.path().join("src"), "1", &[600 << 10, 1 << 20, 300 << 10], 3);
    let src = img.layout.to_str().expect("utf-8 path");
    let n = img.blob_count();
    let total = img.blob_bytes();

    let a = format!("{}/team/app", berth_reg.addr);
    berth.json(&["push", src, &format!("{a}:1")]);
    berth.json(&["push", src, &format!("{a}:2"), "--tag", "1"]);

    let mid = format!("{}/mirror/app", reference.addr);
    let out = berth.json(&["copy", &format!("{a}:1"), &format!("{mid}:1")]);
    assert_eq!(
        out,
        json!([copied(
            summary(&img, n, 0, 0, total),
            &format!("{a}:1"),
            &format!("{mid}:1")
        )]),
        "Berth → reference"
    );

    let back = format!("{}/back/app", berth_reg.addr);
    let out = berth.json(&["copy", &format!("{mid}:1"), &format!("{back}:1")]);
    assert_eq!(
        out,
        json!([copied(
            summary(&img, n, 0, 0, total),
            &format!("{mid}:1"),
            &format!("{back}:1")
        )]),
        "reference → Berth"
    );

    for r in [format!("{a}:1"), format!("{mid}:1"), format!("{back}:1")] {
        assert_eq!(stdout(&berth.ok(&["digest", &r])).trim(), img.digest, "digest of {r}");
    }
    let dst = tmp.path().join("pulled");
    berth.json(&["pull", &format!("{back}:1"), "--to", dst.to_str().expect("utf-8 path")]);
    assert_same_blobs(&img.layout, &dst);

    // Every tag; the reference registry now has the blobs in another repository only, so
    // nothing can be skipped.
    let all = format!("{}/all/app", reference.addr);
    let out = berth.json(&["copy", "--all-tags", &a, &all]);
    let entries = out.as_array().expect("copy --json is an array");
    assert_eq!(entries.len(), 2, "{entries:?}");
    // Each entry names the tag it copied and the references it acted on.
    let mut tags: Vec<String> = Vec::new();
    for s in entries {
        let tag = s["tag"].as_str().expect("tag").to_owned();
        assert_eq!(s["digest"], json!(img.digest), "{s}");
        assert_eq!(s["blobs"], json!(n), "{s}");
        assert_eq!(s["source"], json!(format!("{a}:{tag}")), "{s}");
        assert_eq!(s["destination"], json!(format!("{all}:{tag}")), "{s}");
        tags.push(tag);
    }
    tags.sort();
    assert_eq!(tags, ["1", "2"]);
    assert_eq!(lines(&berth.ok(&["tags", &all])), ["1", "2"]);
}

#[test]
fn copy_within_berth_mounts_every_blob() {
    let tmp = tempfile::tempdir().expect("tmp");
    let reg = start_berth(&tmp.path().join("data"), &[]);
    let berth = Berth::new(&tmp.path().join("docker-config"));
    let img = write_image(&tmp.path().join("src"), "1", &[500 << 10, 250 << 10, 1 << 20], 4);
    let n = img.blob_count();
    let a = format!("{}/team/app:1", reg.addr);
    let b = format!("{}/team/mounted:1", reg.addr);
    berth.json(&["push", img.layout.to_str().expect("utf-8 path"), &a]);

    let out = berth.json(&["copy", &a, &b]);
    assert_eq!(
        out,
        json!([copied(summary(&img, 0, 0, n, 0), &a, &b)]),
        "every blob mounted, no bytes moved"
    );
    let again = berth.json(&["copy", &a, &b]);
    assert_eq!(
        again,
        json!([copied(summary(&img, 0, n, 0, 0), &a, &b)]),
        "second copy: everything exists"
    );

    let dst = tmp.path().join("pulled");
    berth.json(&["pull", &b, "--to", dst.to_str().expect("utf-8 path")]);
    assert_same_blobs(&img.layout, &dst);

    // Deleting the copy's tag leaves the source alone.
    let deleted = berth.json(&["delete", &b]);
    assert_eq!(deleted, json!({"deleted_tag": b, "digest": img.digest}));
    let out = berth.fails(&["digest", &b], 1);
    assert!(
        stderr(&out).contains("MANIFEST_UNKNOWN") || stderr(&out).contains("NOT_FOUND"),
        "digest of a deleted manifest:\n{}",
        stderr(&out)
    );
    assert_eq!(stdout(&berth.ok(&["digest", &a])).trim(), img.digest);
}

#[test]
fn bad_input_is_refused_with_one_line() {
    let tmp = tempfile::tempdir().expect("tmp");
    let berth = Berth::new(&tmp.path().join("docker-config"));

    // Upper case is not allowed in repository names: a usage error, before anything happens.
    let to = tmp.path().join("d");
    let (cmd, out) = berth.output(&["pull", "NOPE/x", "--to", to.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&cmd, &out));
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "not one line:\n{}", show(&cmd, &out));
    assert!(
        err.contains("NOPE/x"),
        "the error does not name the reference:\n{}",
        show(&cmd, &out)
    );
    assert!(stdout(&out).is_empty(), "{}", show(&cmd, &out));
    assert!(!to.exists(), "a refused pull created {}", to.display());

    let (cmd, out) = berth.output(&["push", "/nonexistent", "127.0.0.1:1/x:1"]);
    assert!(
        matches!(out.status.code(), Some(1 | 2)),
        "expected a clean failure:\n{}",
        show(&cmd, &out)
    );
    assert!(stderr(&out).contains("/nonexistent"), "{}", show(&cmd, &out));
    assert_eq!(stderr(&out).trim_end().lines().count(), 1, "{}", show(&cmd, &out));

    // Missing arguments are usage errors too.
    berth.fails(&["pull", "127.0.0.1:1/x:1"], 2);
    berth.fails(&["login", "127.0.0.1:1"], 2);
    berth.fails(&["frobnicate"], 2);
}
