//! Replicas share nothing but PostgreSQL and S3: registries over one database and one bucket,
//! each request of a chunked push sent to a different one (POST, PATCH, PATCH, PUT, manifest
//! PUT), then a pull through another. The chunks are big enough to make real S3 multipart
//! parts, so the multipart upload started on one replica is continued and completed on others
//! from what the database recorded.
//!
//! With token auth the replicas also share what auth needs: the signing key (a token minted by
//! one replica is honoured by all; replicas started at the same moment agree on one key) and
//! the failed-login counts (a lockout earned on one replica holds on every other).

mod common;

use common::*;
use reqwest::{Client, RequestBuilder, StatusCode};
use sha2::{Digest as _, Sha256};
use std::process::Command;

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

/// Registries over one fresh PostgreSQL database and one fresh S3 bucket.
struct Cluster {
    tmp: tempfile::TempDir,
    db: String,
    storage: String,
    s3: berth_storage::blob::StorageOptions,
    config: String,
    replicas: Vec<Server>,
}

impl Cluster {
    /// `None` (the test skips, or fails under CI=true) without PostgreSQL or moto.
    async fn new(extra_config: &str) -> Option<Cluster> {
        let db = berth_storage::testing::fresh_postgres().await?;
        let (storage, s3) = berth_storage::testing::fresh_s3()?;
        let tmp = tempfile::tempdir().expect("tmp");
        let config = tmp.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\npath_style = true\n{extra_config}",
                s3.s3.endpoint.as_deref().expect("endpoint")
            ),
        )
        .expect("config");
        std::env::set_var("AWS_ACCESS_KEY_ID", "berth-test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "berth-test");
        Some(Cluster {
            config: config.to_str().expect("utf-8").to_owned(),
            tmp,
            db,
            storage,
            s3,
            replicas: Vec::new(),
        })
    }

    fn args(&self) -> Vec<&str> {
        vec![
            "--database",
            &self.db,
            "--storage",
            &self.storage,
            "--config",
            &self.config,
        ]
    }

    /// Starts `n` replicas at the same moment (each with a data directory of its own: nothing
    /// is shared there), with `extra` flags.
    fn start(&mut self, n: usize, extra: &[&str]) {
        let mut args = self.args();
        args.extend_from_slice(extra);
        let dirs: Vec<_> = (0..n).map(|i| self.tmp.path().join(format!("replica{i}"))).collect();
        let started: Vec<Server> = std::thread::scope(|s| {
            let handles: Vec<_> = dirs.iter().map(|d| s.spawn(|| start_with(d, &args))).collect();
            handles.into_iter().map(|h| h.join().expect("replica start")).collect()
        });
        self.replicas = started;
    }

    fn url(&self, i: usize) -> String {
        self.replicas[i % self.replicas.len()].url()
    }

    /// `berth-registry user add NAME` on the shared database.
    fn user_add(&self, name: &str, password: &str) {
        run_with_stdin(
            Command::new(registry_bin())
                .args([
                    "user",
                    "add",
                    name,
                    "--password-stdin",
                    "--database",
                    &self.db,
                    "--data",
                ])
                .arg(self.tmp.path().join("admin")),
            &format!("{password}\n"),
        );
    }
}

/// Adds `Authorization` when there is a token.
fn authed(rb: RequestBuilder, token: Option<&str>) -> RequestBuilder {
    match token {
        Some(t) => rb.bearer_auth(t),
        None => rb,
    }
}

/// Pushes an image to `repo` with each request on another replica (POST 0, PATCH 1, PATCH 2,
/// PUT 0, config POST 2, manifest PUT 1), then pulls it whole through replica 3.
async fn push_spread_pull_elsewhere(cluster: &Cluster, repo: &str, token: Option<&str>) {
    let url = |i: usize| cluster.url(i);
    let c = Client::new();

    // A 13 MiB layer in chunks of 6 MiB, 6 MiB and 1 MiB: each of the first two makes an S3
    // part (5 MiB minimum), the last one is staged and becomes the final part.
    let layer: Vec<u8> = (0..13 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let d = digest(&layer);
    let r = authed(c.post(format!("{}/v2/{repo}/blobs/uploads/", url(0))), token)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
    let session = path_of(r.headers()["location"].to_str().expect("location"));
    let mut at = 0usize;
    for (i, n) in [6 * 1024 * 1024, 6 * 1024 * 1024].into_iter().enumerate() {
        let r = authed(c.patch(abs(&url(1 + i), &session)), token)
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
    for i in 0..cluster.replicas.len() {
        let r = authed(c.get(abs(&url(i), &session)), token)
            .send()
            .await
            .expect("status");
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()["range"], format!("0-{}", at - 1).as_str());
    }
    let sep = if session.contains('?') { '&' } else { '?' };
    let r = authed(c.put(format!("{}{sep}digest={d}", abs(&url(0), &session))), token)
        .header("Content-Type", "application/octet-stream")
        .header("Content-Range", format!("{at}-{}", layer.len() - 1))
        .body(layer[at..].to_vec())
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);

    let config_blob = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let r = authed(
        c.post(format!(
            "{}/v2/{repo}/blobs/uploads/?digest={}",
            url(2),
            digest(&config_blob)
        )),
        token,
    )
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
    let r = authed(c.put(format!("{}/v2/{repo}/manifests/v1", url(1))), token)
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .expect("manifest PUT");
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);

    // Pull through the fourth replica.
    let r = authed(c.get(format!("{}/v2/{repo}/manifests/v1", url(3))), token)
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("GET manifest");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.expect("body")[..], manifest.as_bytes()[..]);
    for (blob, d) in [(&layer, &d), (&config_blob, &digest(&config_blob))] {
        let r = authed(c.get(format!("{}/v2/{repo}/blobs/{d}", url(3))), token)
            .send()
            .await
            .expect("GET blob");
        assert_eq!(r.status(), StatusCode::OK);
        let got = r.bytes().await.expect("body");
        assert_eq!(digest(&got), *d);
        assert!(got[..] == blob[..], "blob {d} differs");
    }
    // Nothing staged is left in the bucket.
    let store = berth_storage::BlobStore::open(&cluster.storage, &cluster.s3).expect("s3 store");
    let left = store.list_upload_sessions().await.expect("list");
    assert!(left.is_empty(), "staged data left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_spread_over_replicas_pulls_whole_from_another() {
    let Some(mut cluster) = Cluster::new("").await else {
        return;
    };
    cluster.start(4, &[]);
    push_spread_pull_elsewhere(&cluster, "spread/app", None).await;
}

/// One request to `/token` on a replica: status and body.
async fn token_request(base: &str, user: &str, password: &str, scope: &str) -> (StatusCode, String) {
    let r = Client::new()
        .get(format!("{base}/token?service=berth&scope={scope}"))
        .basic_auth(user, Some(password))
        .send()
        .await
        .expect("GET /token");
    (r.status(), r.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn token_auth_and_lockouts_hold_across_replicas() {
    let Some(mut cluster) = Cluster::new("[auth]\nmax_failed_logins = 3\nlockout_secs = 60\n").await else {
        return;
    };
    for (name, pw) in [("alice", "alice-pw-1"), ("bob", "bob-pw-1"), ("carol", "carol-pw-1")] {
        cluster.user_add(name, pw);
    }
    // Started at the same moment, on an empty database: they must still agree on one key.
    cluster.start(4, &["--auth", "token"]);

    // A token minted by replica 0 carries the whole push on replicas 0..2 and the pull on 3.
    let scope = "repository:alice/app:pull,push";
    let (status, body) = token_request(&cluster.url(0), "alice", "alice-pw-1", scope).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("token JSON");
    let token = answer["token"].as_str().expect("token").to_owned();
    let r = Client::new()
        .get(format!("{}/v2/alice/app/tags/list", cluster.url(2)))
        .send()
        .await
        .expect("GET without a token");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "auth is on");
    push_spread_pull_elsewhere(&cluster, "alice/app", Some(&token)).await;
    // Each replica honours it, whichever minted it.
    for i in 0..4 {
        let (status, body) = token_request(&cluster.url(i), "alice", "alice-pw-1", "repository:alice/app:pull").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let t: serde_json::Value = serde_json::from_str(&body).expect("token JSON");
        for j in 0..4 {
            let r = Client::new()
                .get(format!("{}/v2/alice/app/manifests/v1", cluster.url(j)))
                .bearer_auth(t["token"].as_str().expect("token"))
                .header("Accept", "application/vnd.oci.image.manifest.v1+json")
                .send()
                .await
                .expect("GET manifest");
            assert_eq!(r.status(), StatusCode::OK, "token from replica {i} on replica {j}");
        }
    }

    // bob fails three times on replica 0: his right password is refused on 1 and 2.
    let scope = "repository:bob/app:pull";
    for _ in 0..3 {
        let (status, body) = token_request(&cluster.url(0), "bob", "wrong", scope).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    for i in [1, 2] {
        let (status, body) = token_request(&cluster.url(i), "bob", "bob-pw-1", scope).await;
        assert_eq!(
            status,
            StatusCode::TOO_MANY_REQUESTS,
            "a lockout earned on replica 0 holds on replica {i}: {body}"
        );
        assert!(body.contains("TOOMANYREQUESTS"), "{body}");
    }
    // carol fails once on each of three replicas: together that is a lockout, on the fourth too.
    let scope = "repository:carol/app:pull";
    for i in 0..3 {
        let (status, body) = token_request(&cluster.url(i), "carol", "wrong", scope).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    let (status, body) = token_request(&cluster.url(3), "carol", "carol-pw-1", scope).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "failures counted across replicas: {body}"
    );
    // alice, not locked out, still signs in anywhere.
    let (status, body) = token_request(&cluster.url(3), "alice", "alice-pw-1", scope).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
