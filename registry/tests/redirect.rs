//! Blob GETs answered with a redirect to a presigned URL of the object store (`[redirect]
//! enabled = true`), against moto: the registry checks access before it hands out a URL, a
//! client that follows the redirect gets the blob's exact bytes (whole and ranged), HEAD is
//! answered by the registry itself, and storage that cannot sign is refused at start.

mod common;

use common::*;
use reqwest::redirect::Policy;
use reqwest::{Client, StatusCode};
use sha2::{Digest as _, Sha256};
use std::process::Command;

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

#[tokio::test(flavor = "multi_thread")]
async fn blob_gets_redirect_to_the_store_after_the_access_check() {
    let Some((storage, opts)) = berth_storage::testing::fresh_s3() else {
        return;
    };
    let endpoint = opts.s3.endpoint.clone().expect("endpoint");
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("data");
    user_add(&data, "alice", "alice-pw-1");
    let config = tmp.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[s3]\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\npath_style = true\n\
             [auth]\nadmins = [\"alice\"]\n\
             [redirect]\nenabled = true\nexpiry_secs = 300\n"
        ),
    )
    .expect("config");
    std::env::set_var("AWS_ACCESS_KEY_ID", "berth-test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "berth-test");
    let reg = start_with(
        &data,
        &[
            "--storage",
            &storage,
            "--auth",
            "basic",
            "--config",
            config.to_str().expect("utf-8"),
        ],
    );
    let base = reg.url();

    // A 7 MiB blob (a multipart upload on S3) and an empty one.
    let blob: Vec<u8> = (0..7 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let d = digest(&blob);
    let follow = Client::new();
    for body in [&blob[..], &[][..]] {
        let r = follow
            .post(format!("{base}/v2/team/app/blobs/uploads/?digest={}", digest(body)))
            .basic_auth("alice", Some("alice-pw-1"))
            .header("Content-Type", "application/octet-stream")
            .body(body.to_vec())
            .send()
            .await
            .expect("push");
        assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    }

    let stay = Client::builder().redirect(Policy::none()).build().expect("client");
    let blob_url = format!("{base}/v2/team/app/blobs/{d}");
    // Access first: no credentials get a challenge, never the store's URL.
    let r = stay.get(&blob_url).send().await.expect("anonymous GET");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get("location").is_none());
    // A repository that does not link the blob: unknown, not redirected.
    let r = stay
        .get(format!("{base}/v2/team/other/blobs/{d}"))
        .basic_auth("alice", Some("alice-pw-1"))
        .send()
        .await
        .expect("GET elsewhere");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r.headers().get("location").is_none());

    // Allowed: a 307 to the store, carrying the digest.
    let r = stay
        .get(&blob_url)
        .basic_auth("alice", Some("alice-pw-1"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    let location = r.headers()["location"].to_str().expect("location").to_owned();
    assert!(
        location.starts_with(&endpoint) && location.contains("X-Amz-Signature="),
        "{location}"
    );
    // The URL alone is the access: any client can fetch it until it expires.
    let got = Client::new().get(&location).send().await.expect("presigned GET");
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(digest(&got.bytes().await.expect("body")), d);

    // A client that follows redirects (as docker, podman, skopeo and reqwest do) gets the
    // bytes, whole and ranged; its credentials are not sent on to the store.
    let r = follow
        .get(&blob_url)
        .basic_auth("alice", Some("alice-pw-1"))
        .send()
        .await
        .expect("GET, followed");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.url().as_str().starts_with(&endpoint), "ended at {}", r.url());
    let got = r.bytes().await.expect("body");
    assert!(got[..] == blob[..], "the redirected download differs");
    let r = follow
        .get(&blob_url)
        .basic_auth("alice", Some("alice-pw-1"))
        .header("Range", "bytes=1000-1999")
        .send()
        .await
        .expect("ranged GET");
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert!(r.bytes().await.expect("body")[..] == blob[1000..2000]);

    // HEAD needs no bytes: the registry answers it.
    let r = stay
        .head(&blob_url)
        .basic_auth("alice", Some("alice-pw-1"))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], blob.len().to_string().as_str());
    // The empty blob has nothing to fetch: answered directly.
    let r = stay
        .get(format!("{base}/v2/team/app/blobs/{}", digest(&[])))
        .basic_auth("alice", Some("alice-pw-1"))
        .send()
        .await
        .expect("GET empty");
    assert_eq!(r.status(), StatusCode::OK);

    // skopeo (containers/image, as podman and CRI-O) pulls a whole image through the redirects.
    if require("skopeo") && require("umoci") {
        let layout = busybox_layout(tmp.path());
        let image = format!("{}/team/busybox:1", reg.addr);
        let creds = "alice:alice-pw-1";
        run(Command::new("skopeo").args([
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            creds,
            &format!("oci:{}:1", layout.display()),
            &format!("docker://{image}"),
        ]));
        let pulled = tmp.path().join("pulled");
        run(Command::new("skopeo").args([
            "copy",
            "--src-tls-verify=false",
            "--src-creds",
            creds,
            &format!("docker://{image}"),
            &format!("oci:{}:1", pulled.display()),
        ]));
        // The pushed layout may hold more than the image (umoci keeps replaced blobs); the
        // pull must bring the image's manifest, config and layer, each intact.
        let (pushed, got) = (layout_blobs(&layout), layout_blobs(&pulled));
        assert!(got.len() >= 3, "a manifest, a config and a layer: {:?}", got.keys());
        for (name, bytes) in &got {
            assert_eq!(digest(bytes), format!("sha256:{name}"), "pulled blob {name} is damaged");
            assert!(
                pushed.contains_key(name),
                "skopeo pulled a blob it never pushed: {name}"
            );
        }
        let redirected = reg
            .log()
            .lines()
            .filter(|l| l.contains("repo=\"team/busybox\"") && l.contains("berth_registry::http: done status=307"))
            .count();
        assert!(
            redirected >= 2,
            "the config and the layer came through redirects:\n{}",
            reg.log()
        );
    }
}

#[test]
fn redirect_without_a_signing_store_is_refused_at_start() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = tmp.path().join("config.toml");
    std::fs::write(&config, "[redirect]\nenabled = true\n").expect("config");
    let out = run_fails(
        Command::new(registry_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--data")
            .arg(tmp.path().join("data")),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("redirect.enabled needs storage that signs URLs"),
        "{stderr}"
    );
}
