//! What a newcomer meets in their first hour with `berth`, against the real `berth-registry`:
//! deletes that take only what was named, errors that name the real cause (refused
//! connections, unknown hosts, TLS spoken to plain HTTP and back, a rule that refuses a
//! signed-in robot), pushes that mount across repositories, and `--json` outputs that name the
//! references they acted on.

mod common;

use common::*;
use serde_json::json;
use std::path::Path;

/// Adds to `img`'s layout an index tagged `tag` that lists `img`'s manifest as linux/amd64,
/// and returns the index's digest.
fn add_index(img: &Image, tag: &str) -> String {
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": img.digest,
            "size": img.manifest.len(),
            "platform": {"os": "linux", "architecture": "amd64"},
        }],
    }))
    .expect("index JSON");
    let digest = sha256(&index);
    std::fs::write(img.layout.join("blobs/sha256").join(&digest["sha256:".len()..]), &index).expect("index blob");
    let path = img.layout.join("index.json");
    let mut top: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("index.json")).expect("index.json is JSON");
    top["manifests"].as_array_mut().expect("manifests").push(json!({
        "mediaType": OCI_INDEX,
        "digest": digest,
        "size": index.len(),
        "annotations": {REF_NAME: tag},
    }));
    std::fs::write(&path, top.to_string()).expect("index.json");
    digest
}

fn utf8(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn delete_by_tag_keeps_the_sibling_tag_and_the_index_and_by_digest_refuses_without_force() {
    let tmp = tempfile::tempdir().expect("tmp");
    let reg = start_berth(&tmp.path().join("data"), &[]);
    let berth = Berth::new(&tmp.path().join("docker-config"));
    let img = write_image(&tmp.path().join("src"), "1", &[200 << 10, 100 << 10], 11);
    let index = add_index(&img, "multi");
    let repo = format!("{}/team/app", reg.addr);
    let src = utf8(&img.layout);
    berth.json(&["push", src, &format!("{repo}:1"), "--tag", "1"]);
    berth.json(&["push", src, &format!("{repo}:latest"), "--tag", "1"]);
    berth.json(&["push", src, &format!("{repo}:multi"), "--tag", "multi"]);

    // By tag: only that tag goes.
    let deleted = berth.json(&["delete", &format!("{repo}:1")]);
    assert_eq!(
        deleted,
        json!({"deleted_tag": format!("{repo}:1"), "digest": img.digest}),
        "delete by tag"
    );
    let out = berth.fails(&["digest", &format!("{repo}:1")], 1);
    assert!(stderr(&out).contains("MANIFEST_UNKNOWN"), "{}", stderr(&out));
    assert_eq!(
        stdout(&berth.ok(&["digest", &format!("{repo}:latest")])).trim(),
        img.digest
    );
    assert_eq!(
        stdout(&berth.ok(&["digest", &format!("{repo}@{}", img.digest)])).trim(),
        img.digest
    );
    // The index still pulls whole: its platform manifest is there.
    let pulled = tmp.path().join("pulled");
    berth.json(&["pull", &format!("{repo}:multi"), "--to", utf8(&pulled)]);
    assert_same_blobs(&img.layout, &pulled);

    // By digest while a tag and an index refer to it: refused, naming both; nothing deleted.
    let by_digest = format!("{repo}@{}", img.digest);
    let out = berth.fails(&["delete", &by_digest], 2);
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "not one line:\n{err}");
    for needle in ["latest", index.as_str(), "multi", "--force"] {
        assert!(err.contains(needle), "the refusal does not name {needle}:\n{err}");
    }
    assert_eq!(
        stdout(&berth.ok(&["digest", &format!("{repo}:latest")])).trim(),
        img.digest
    );

    // With --force it goes, and the output names what went with it.
    let deleted = berth.json(&["delete", "--force", &by_digest]);
    assert_eq!(
        deleted,
        json!({
            "deleted": by_digest,
            "digest": img.digest,
            "tags": ["latest"],
            "indexes_left_listing_it": [index],
        }),
        "delete --force by digest"
    );
    berth.fails(&["digest", &format!("{repo}:latest")], 1);
    berth.fails(&["digest", &by_digest], 1);

    // A manifest nothing refers to goes without --force.
    berth.json(&["push", src, &format!("{repo}:2"), "--tag", "1"]);
    berth.json(&["delete", &format!("{repo}:2")]);
    berth.json(&["delete", &format!("{repo}:multi")]);
    let out = berth.ok(&["delete", &by_digest]);
    assert!(
        stdout(&out).contains(&format!("deleted the manifest {by_digest}")),
        "{}",
        stdout(&out)
    );
}
