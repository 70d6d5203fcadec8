//! Real clients against a real `berth-registry`: skopeo and docker push, pull and run an image
//! built here (busybox-static + umoci), and every byte comes back as it went in.

mod common;

use common::*;
use std::process::Command;

fn text(out: std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn skopeo_round_trip_is_byte_exact() {
    if !(require("skopeo") && require("umoci")) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let layout = busybox_layout(tmp.path());
    let reg = start(&tmp.path().join("data"));
    let dst = format!("docker://{}/team/app:1", reg.addr);
    run(Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:1", layout.display()))
        .arg(&dst));

    // The manifest comes back byte-exact.
    let raw = run(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", &dst])).stdout;
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json")).expect("json");
    let want = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "1")
        .and_then(|m| m["digest"].as_str())
        .expect("tag 1 in the layout")
        .to_owned();
    let src = layout_blobs(&layout);
    let want_hex = want.trim_start_matches("sha256:");
    assert_eq!(Some(&raw), src.get(want_hex), "manifest bytes differ");

    // Back to a fresh layout: every blob identical to the source's.
    let back = tmp.path().join("back");
    run(Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false", &dst])
        .arg(format!("oci:{}:1", back.display())));
    let got = layout_blobs(&back);
    assert!(
        got.len() >= 3,
        "manifest, config and layer expected, got {:?}",
        got.keys()
    );
    for (name, bytes) in &got {
        assert_eq!(Some(bytes), src.get(name), "blob {name} differs from the source");
    }

    // Registry to registry inside Berth (cross-repository mount), then list tags.
    let copy = format!("docker://{}/team/copy:1", reg.addr);
    run(Command::new("skopeo").args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false", &dst, &copy]));
    let tags = text(run(Command::new("skopeo").args([
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{}/team/copy", reg.addr),
    ])));
    assert!(tags.contains("\"1\""), "tags: {tags}");
    assert!(
        reg.log().contains("mounted blob"),
        "skopeo should have mounted, not re-uploaded"
    );
}

#[test]
fn docker_push_pull_run() {
    if !(require_docker() && require("skopeo") && require("umoci")) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let layout = busybox_layout(tmp.path());
    let reg = start(&tmp.path().join("data"));
    let first = format!("{}/team/app:1", reg.addr);
    let second = format!("{}/other/app:2", reg.addr);
    run(Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:1", layout.display()))
        .arg(format!("docker://{first}")));

    run(Command::new("docker").args(["pull", &first]));
    let out = text(run(Command::new("docker").args([
        "run",
        "--rm",
        "--network",
        "none",
        &first,
    ])));
    assert_eq!(out.trim(), "hello from berth");

    // docker push (gzip layers, Docker schema 2, a cross-repository mount) and back.
    run(Command::new("docker").args(["tag", &first, &second]));
    let push = text(run(Command::new("docker").args(["push", &second])));
    assert!(push.contains("digest: sha256:"), "docker push output: {push}");
    run(Command::new("docker").args(["rmi", &first, &second]));
    run(Command::new("docker").args(["pull", &second]));
    let out = text(run(Command::new("docker").args([
        "run",
        "--rm",
        "--network",
        "none",
        &second,
    ])));
    assert_eq!(out.trim(), "hello from berth");
    let _ = Command::new("docker").args(["rmi", &second]).output();
}
