//! Upload sessions outlive the process: a chunked upload continues after a graceful restart
//! and after a crash in the middle of a chunk, and completes with the right digest.

mod common;

use bytes::Bytes;
use common::*;
use reqwest::{Client, StatusCode};
use sha2::{Digest as _, Sha256};
use std::time::Duration;

fn data(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

async fn patch(c: &Client, url: &str, start: usize, chunk: &[u8]) -> reqwest::Response {
    c.patch(url)
        .header("Content-Type", "application/octet-stream")
        .header("Content-Range", format!("{}-{}", start, start + chunk.len() - 1))
        .header("Content-Length", chunk.len())
        .body(chunk.to_vec())
        .send()
        .await
        .expect("PATCH")
}

fn location(base: &str, r: &reqwest::Response) -> String {
    let l = r.headers()["location"].to_str().expect("location").to_owned();
    if l.starts_with("http") {
        l
    } else {
        format!("{base}{l}")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_upload_continues_after_restart() {
    let tmp = tempfile::tempdir().expect("tmp");
    let blob = data(3 * 1024 * 1024 + 17, 7);
    let (a, rest) = blob.split_at(1024 * 1024);
    let (b, c) = rest.split_at(1024 * 1024 + 5);
    let client = Client::new();

    let mut reg = start(&tmp.path().join("data"));
    let r = client
        .post(format!("{}/v2/r/s/blobs/uploads/", reg.url()))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let path = r.headers()["location"].to_str().expect("location").to_owned();
    let r = patch(&client, &location(&reg.url(), &r), 0, a).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["range"], format!("0-{}", a.len() - 1).as_str());
    assert!(reg.stop().expect("stop").success(), "graceful stop:\n{}", reg.log());

    let reg = start(&tmp.path().join("data"));
    let url = format!("{}{path}", reg.url());
    let r = client.get(&url).send().await.expect("GET status");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["range"], format!("0-{}", a.len() - 1).as_str());
    let r = patch(&client, &url, a.len(), b).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
    let r = client
        .put(format!("{url}?digest={}", digest(&blob)))
        .header("Content-Range", format!("{}-{}", a.len() + b.len(), blob.len() - 1))
        .header("Content-Length", c.len())
        .body(c.to_vec())
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    assert_eq!(r.headers()["docker-content-digest"], digest(&blob).as_str());
    let got = client
        .get(format!("{}/v2/r/s/blobs/{}", reg.url(), digest(&blob)))
        .send()
        .await
        .expect("GET blob")
        .bytes()
        .await
        .expect("body");
    assert!(got[..] == blob[..], "blob differs after restart");
    // The saved hash state was used: nothing was re-read.
    assert!(!reg.log().contains("re-hashing"), "{}", reg.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_mid_chunk_keeps_what_was_committed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let blob = data(600_000, 11);
    let (a, b) = blob.split_at(200_000);
    let client = Client::new();
    let mut reg = start(&tmp.path().join("data"));
    let port = reg.port();
    let r = client
        .post(format!("{}/v2/r/c/blobs/uploads/", reg.url()))
        .send()
        .await
        .expect("POST");
    let url = location(&reg.url(), &r);
    assert_eq!(patch(&client, &url, 0, a).await.status(), StatusCode::ACCEPTED);

    // A chunk that stalls halfway: the registry dies while receiving it.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let stalled = client
        .patch(&url)
        .header("Content-Range", format!("{}-{}", a.len(), blob.len() - 1))
        .header("Content-Length", b.len())
        .body(reqwest::Body::wrap_stream(futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|x| (x, rx)) },
        )))
        .send();
    let pending = tokio::spawn(stalled);
    tx.send(Ok(Bytes::copy_from_slice(&b[..100_000])))
        .await
        .expect("send half");
    tokio::time::sleep(Duration::from_millis(300)).await;
    reg.crash();
    drop(tx);
    // The stalled request fails or not depending on timing; only the session state matters.
    let _ = pending.await;

    let reg = start_on(&tmp.path().join("data"), port);
    let r = client.get(&url).send().await.expect("status");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        r.headers()["range"],
        format!("0-{}", a.len() - 1).as_str(),
        "the half chunk must not count"
    );
    assert_eq!(patch(&client, &url, a.len(), b).await.status(), StatusCode::ACCEPTED);
    let r = client
        .put(format!("{url}?digest={}", digest(&blob)))
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    drop(reg);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_an_in_flight_upload_finish() {
    let tmp = tempfile::tempdir().expect("tmp");
    let blob = data(500_000, 3);
    let client = Client::new();
    let mut reg = start(&tmp.path().join("data"));
    let r = client
        .post(format!("{}/v2/r/g/blobs/uploads/", reg.url()))
        .send()
        .await
        .expect("POST");
    let url = location(&reg.url(), &r);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let req = client
        .put(format!("{url}?digest={}", digest(&blob)))
        .header("Content-Length", blob.len())
        .body(reqwest::Body::wrap_stream(futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|x| (x, rx)) },
        )))
        .send();
    let pending = tokio::spawn(req);
    tx.send(Ok(Bytes::copy_from_slice(&blob[..250_000])))
        .await
        .expect("first half");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid_stop = tokio::task::spawn_blocking(move || {
        let status = reg.stop().expect("stop");
        (status, reg)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.send(Ok(Bytes::copy_from_slice(&blob[250_000..])))
        .await
        .expect("second half");
    drop(tx);
    let resp = pending.await.expect("join").expect("in-flight request completes");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let (status, reg) = pid_stop.await.expect("join");
    assert!(
        status.success(),
        "exit after graceful shutdown: {status}\n{}",
        reg.log()
    );
}
