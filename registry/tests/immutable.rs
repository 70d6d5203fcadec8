//! Immutable tags (`[[immutable]]`) against the real binary: a push that would move such a
//! tag, and a DELETE of it or of its manifest, answer 403 DENIED with a message that says so,
//! through raw HTTP, skopeo and docker; re-pushing the same manifest is fine; mutable tags
//! still move; retention removes what its policy says except the immutable tags, without
//! immutability being lifted.

mod common;
mod govern;

use common::*;
use govern::*;
use reqwest::{Client, StatusCode};
use std::process::Command;

const CONFIG: &str = "[[immutable]]\nrepos = [\"team/**\"]\ntags = [\"v*\", \"release-*\"]\n\n\
[[retention]]\nrepos = [\"team/**\"]\nkeep_last = 1\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immutable_tags_refuse_moves_and_deletes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (reg, cfg) = start_config(tmp.path(), CONFIG);
    let base = reg.url();
    let c = Client::new();

    let first = push_image(&c, &base, "team/app", "v1", 1).await;
    // The same manifest again under the same tag: allowed (idempotent pushes must work).
    push_image(&c, &base, "team/app", "v1", 1).await;
    // Another manifest under it: refused, and the tag still names the first.
    let config = br#"{"architecture":"amd64","os":"linux","seed":2}"#.to_vec();
    let layer = data(1000, 2);
    for b in [&config, &layer] {
        assert_eq!(put_blob(&c, &base, "team/app", b).await.0, StatusCode::CREATED);
    }
    let (s, body) = put_manifest(&c, &base, "team/app", "v1", &manifest(&config, &[&layer])).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}\n{}", reg.log());
    let v: serde_json::Value = serde_json::from_str(&body).expect("error envelope");
    assert_eq!(v["errors"][0]["code"], "DENIED", "{body}");
    let msg = v["errors"][0]["message"].as_str().expect("message");
    assert!(
        msg.contains("tag v1 of team/app is immutable") && msg.contains(&first),
        "{msg}"
    );
    let r = c
        .get(format!("{base}/v2/team/app/manifests/v1"))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("GET");
    assert_eq!(r.headers()["docker-content-digest"].to_str().expect("digest"), first);

    // Neither the tag nor its manifest can be deleted.
    for reference in ["v1", first.as_str()] {
        let r = c
            .delete(format!("{base}/v2/team/app/manifests/{reference}"))
            .send()
            .await
            .expect("DELETE");
        let s = r.status();
        let body = r.text().await.expect("body");
        assert_eq!(s, StatusCode::FORBIDDEN, "DELETE {reference}: {body}");
        assert!(body.contains("DENIED") && body.contains("immutable"), "{body}");
    }
    // Mutable tags in the same repository, and other repositories, move freely.
    push_image(&c, &base, "team/app", "latest", 3).await;
    push_image(&c, &base, "team/app", "latest", 4).await;
    push_image(&c, &base, "other/app", "v1", 5).await;
    push_image(&c, &base, "other/app", "v1", 6).await;

    // skopeo sees the refusal, with the reason.
    if require("skopeo") && require("umoci") {
        let layout = busybox_layout(tmp.path());
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:1", layout.display()))
            .arg(format!("docker://{}/team/app:v1", reg.addr));
        let out = run_fails(&mut cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("immutable"),
            "skopeo should show why:\n{}",
            show(&cmd, &out)
        );
        // Under a new tag it is fine; then docker, pulling it, retagging it as v1 and pushing.
        run(Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:1", layout.display()))
            .arg(format!("docker://{}/team/busybox:release-1", reg.addr)));
        if require_docker() {
            let src = format!("{}/team/busybox:release-1", reg.addr);
            let dst = format!("{}/team/app:v1", reg.addr);
            run(Command::new("docker").args(["pull", &src]));
            run(Command::new("docker").args(["tag", &src, &dst]));
            let mut cmd = Command::new("docker");
            cmd.args(["push", &dst]);
            let out = run_fails(&mut cmd);
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let _ = Command::new("docker").args(["rmi", &src, &dst]).output();
            assert!(
                all.contains("immutable"),
                "docker push should show why:\n{}",
                show(&cmd, &out)
            );
        }
    }

    // Retention (keep_last = 1) removes older mutable tags only: v1 stays although it is not
    // the newest, with immutability still on.
    push_image(&c, &base, "team/app", "build-1", 7).await;
    std::thread::sleep(std::time::Duration::from_millis(1100));
    push_image(&c, &base, "team/app", "build-2", 8).await;
    let dry = stdout(&admin(&reg, &cfg, &["retention", "run", "--dry-run"]));
    assert!(
        !dry.contains(":v1 "),
        "retention must leave immutable tags alone:\n{dry}"
    );
    assert!(dry.contains("tag team/app:build-1 "), "{dry}");
    let done = stdout(&admin(&reg, &cfg, &["retention", "run"]));
    assert_eq!(dry, done, "the dry run must list exactly what the run removes");
    let left = tags(&c, &base, "team/app").await;
    assert!(
        left.contains(&"v1".to_owned()) && left.contains(&"build-2".to_owned()),
        "{left:?}"
    );
    assert!(!left.contains(&"build-1".to_owned()), "{left:?}");
    // And garbage collection keeps what the immutable tag names.
    admin(&reg, &cfg, &["gc", "--grace", "0"]);
    assert_eq!(manifest_status(&c, &base, "team/app", &first).await, StatusCode::OK);
}
