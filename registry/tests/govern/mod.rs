//! Helpers shared by the governance tests (quotas, immutable tags, retention): a registry
//! started with a config file, and images pushed over plain HTTP with exact sizes.
#![allow(dead_code)]

use crate::common::*;
use reqwest::{Client, StatusCode};
use sha2::{Digest as _, Sha256};
use std::path::Path;
use std::process::{Command, Output};

pub fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// Deterministic bytes, different for every seed.
pub fn data(n: usize, seed: u64) -> Vec<u8> {
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

/// Writes `config` as `dir/berth.toml` and starts the registry with it.
pub fn start_config(dir: &Path, config: &str) -> (Server, std::path::PathBuf) {
    let file = dir.join("berth.toml");
    std::fs::write(&file, config).expect("write config");
    let reg = start_with(&dir.join("data"), &["--config", file.to_str().expect("utf-8 path")]);
    (reg, file)
}

/// Runs `berth-registry ARGS --data DATA --config FILE`; panics on failure.
pub fn admin(reg: &Server, config: &Path, args: &[&str]) -> Output {
    run(Command::new(registry_bin())
        .args(args)
        .arg("--data")
        .arg(&reg.data)
        .arg("--config")
        .arg(config))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Monolithic blob upload; returns the status and the body.
pub async fn put_blob(c: &Client, base: &str, repo: &str, blob: &[u8]) -> (StatusCode, String) {
    let d = digest(blob);
    let r = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
        .header("Content-Type", "application/octet-stream")
        .body(blob.to_vec())
        .send()
        .await
        .expect("POST");
    let s = r.status();
    (s, r.text().await.unwrap_or_default())
}

/// A manifest over `config` and `layers` (bytes already pushed).
pub fn manifest(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let l: Vec<String> = layers
        .iter()
        .map(|b| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}"#,
                digest(b),
                b.len()
            )
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{}]}}"#,
        digest(config),
        config.len(),
        l.join(",")
    )
    .into_bytes()
}

pub async fn put_manifest(c: &Client, base: &str, repo: &str, reference: &str, body: &[u8]) -> (StatusCode, String) {
    let r = c
        .put(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(body.to_vec())
        .send()
        .await
        .expect("PUT manifest");
    let s = r.status();
    (s, r.text().await.unwrap_or_default())
}

/// Pushes a small image (config + one layer made from `seed`) as `repo:tag`; returns the
/// manifest's digest.
pub async fn push_image(c: &Client, base: &str, repo: &str, tag: &str, seed: u64) -> String {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes();
    let layer = data(1000, seed);
    for b in [&config, &layer] {
        let (s, body) = put_blob(c, base, repo, b).await;
        assert_eq!(s, StatusCode::CREATED, "blob upload: {body}");
    }
    let m = manifest(&config, &[&layer]);
    let (s, body) = put_manifest(c, base, repo, tag, &m).await;
    assert_eq!(s, StatusCode::CREATED, "manifest put: {body}");
    digest(&m)
}

pub async fn tags(c: &Client, base: &str, repo: &str) -> Vec<String> {
    let r = c.get(format!("{base}/v2/{repo}/tags/list")).send().await.expect("tags");
    let v: serde_json::Value = serde_json::from_str(&r.text().await.expect("body")).expect("json");
    let mut t: Vec<String> = v["tags"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    t.sort();
    t
}

pub async fn manifest_status(c: &Client, base: &str, repo: &str, reference: &str) -> StatusCode {
    c.get(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("GET manifest")
        .status()
}
