//! Replicas share nothing but PostgreSQL and S3: three registries over one database and one
//! bucket, each request of a chunked push sent to a different one (POST, PATCH, PATCH, PUT,
//! manifest PUT), then a pull through a fourth. The chunks are big enough to make real S3
//! multipart parts, so the multipart upload started on one replica is continued and completed
//! on others from what the database recorded.

mod common;

use common::*;
use reqwest::{Client, StatusCode};
use sha2::{Digest as _, Sha256};

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn abs(base: &str, location: &str) -> String {
    if location.starts_with("http") {
        location.to_owned()
    } else {
        format!("{base}{location}")
    }
}

/// The part of a Location after the host: the same session on any replica.
fn path_of(location: &str) -> String {
    match location.find("/v2/") {
        Some(i) => location[i..].to_owned(),
        None => location.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_spread_over_replicas_pulls_whole_from_another() {
    let Some(db) = berth_storage::testing::fresh_postgres().await else {
        return;
    };
    let Some((storage, s3)) = berth_storage::testing::fresh_s3() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let config = tmp.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\npath_style = true\n",
            s3.endpoint.as_deref().expect("endpoint")
        ),
    )
    .expect("config");
    std::env::set_var("AWS_ACCESS_KEY_ID", "berth-test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "berth-test");
    let args = [
        "--database",
        db.as_str(),
        "--storage",
        storage.as_str(),
        "--config",
        config.to_str().expect("utf-8"),
    ];
    // Three replicas take the push (POST 0, PATCH 1, PATCH 2, PUT 0, manifest PUT 1); the
    // fourth serves the pull. Each has a data directory of its own: nothing is shared there.
    let replicas: Vec<Server> = (0..4)
        .map(|i| start_with(&tmp.path().join(format!("replica{i}")), &args))
        .collect();
    let url = |i: usize| replicas[i % replicas.len()].url();
    let c = Client::new();

    // A 13 MiB layer in chunks of 6 MiB, 6 MiB and 1 MiB: each of the first two makes an S3
    // part (5 MiB minimum), the last one is staged and becomes the final part.
    let layer: Vec<u8> = (0..13 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let d = digest(&layer);
    let r = c
        .post(format!("{}/v2/spread/app/blobs/uploads/", url(0)))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let session = path_of(r.headers()["location"].to_str().expect("location"));
    let mut at = 0usize;
    for (i, n) in [6 * 1024 * 1024, 6 * 1024 * 1024].into_iter().enumerate() {
        let r = c
            .patch(abs(&url(1 + i), &session))
            .header("Content-Type", "application/octet-stream")
            .header("Content-Range", format!("{at}-{}", at + n - 1))
            .body(layer[at..at + n].to_vec())
            .send()
            .await
            .expect("PATCH");
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
        assert_eq!(r.headers()["range"], format!("0-{}", at + n - 1).as_str());
        at += n;
    }
    // The session's progress is the same on every replica.
    for i in 0..4 {
        let r = c.get(abs(&url(i), &session)).send().await.expect("status");
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()["range"], format!("0-{}", at - 1).as_str());
    }
    let sep = if session.contains('?') { '&' } else { '?' };
    let r = c
        .put(format!("{}{sep}digest={d}", abs(&url(0), &session)))
        .header("Content-Type", "application/octet-stream")
        .header("Content-Range", format!("{at}-{}", layer.len() - 1))
        .body(layer[at..].to_vec())
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);

    let config_blob = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let r = c
        .post(format!(
            "{}/v2/spread/app/blobs/uploads/?digest={}",
            url(2),
            digest(&config_blob)
        ))
        .body(config_blob.clone())
        .send()
        .await
        .expect("config POST");
    assert_eq!(r.status(), StatusCode::CREATED);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{}}}]}}"#,
        digest(&config_blob),
        config_blob.len(),
        layer.len()
    );
    let r = c
        .put(format!("{}/v2/spread/app/manifests/v1", url(1)))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .expect("manifest PUT");
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);

    // Pull through the fourth replica.
    let r = c
        .get(format!("{}/v2/spread/app/manifests/v1", url(3)))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("GET manifest");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.expect("body")[..], manifest.as_bytes()[..]);
    for (blob, d) in [(&layer, &d), (&config_blob, &digest(&config_blob))] {
        let r = c
            .get(format!("{}/v2/spread/app/blobs/{d}", url(3)))
            .send()
            .await
            .expect("GET blob");
        assert_eq!(r.status(), StatusCode::OK);
        let got = r.bytes().await.expect("body");
        assert_eq!(digest(&got), *d);
        assert!(got[..] == blob[..], "blob {d} differs");
    }
    // Nothing staged is left in the bucket.
    let store = berth_storage::BlobStore::open(&storage, &s3).expect("s3 store");
    let left = store.list_upload_sessions().await.expect("list");
    assert!(left.is_empty(), "staged data left behind: {left:?}");
}
