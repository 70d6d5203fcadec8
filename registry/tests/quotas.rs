//! Quotas (`[[quotas]]`) against the real binary: a blob shared by repositories of one scope
//! counts once; uploads, mounts and manifest puts past the limit answer 403 DENIED naming the
//! quota, its usage and its limit (through raw HTTP, skopeo and docker); two pushers racing
//! past the limit never exceed it; after deletes and garbage collection the stored usage
//! equals a recomputation.

mod common;
mod govern;

use common::*;
use govern::*;
use reqwest::{Client, StatusCode};
use std::process::Command;

const LIMIT: u64 = 100_000;

/// The usage `quota ls` (or `recompute`) prints for `scope`.
fn usage(out: &str, scope: &str) -> u64 {
    out.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&scope)).then(|| f[1].parse().expect("usage number"))
        })
        .unwrap_or_else(|| panic!("no line for {scope} in:\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quotas_count_once_refuse_past_the_limit_and_stay_exact() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (reg, cfg) = start_config(
        tmp.path(),
        &format!(
            "[[quotas]]\nrepos = [\"team/**\"]\nbytes = {LIMIT}\n\n[[quotas]]\nrepos = [\"solo\"]\nbytes = \"1MiB\"\n"
        ),
    );
    let base = reg.url();
    let c = Client::new();

    // One blob in three repositories of the scope counts once: uploaded twice, mounted once.
    let shared = data(30_000, 1);
    for repo in ["team/a", "team/b"] {
        assert_eq!(put_blob(&c, &base, repo, &shared).await.0, StatusCode::CREATED);
    }
    let r = c
        .post(format!(
            "{base}/v2/team/c/blobs/uploads/?mount={}&from=team/a",
            digest(&shared)
        ))
        .send()
        .await
        .expect("mount");
    assert_eq!(r.status(), StatusCode::CREATED);
    let ls = stdout(&admin(&reg, &cfg, &["quota", "ls"]));
    assert_eq!(usage(&ls, "team/**"), 30_000, "{ls}");
    assert_eq!(usage(&ls, "solo"), 0, "{ls}");

    // Two pushers race distinct 10 000-byte blobs into two repositories of the scope: exactly
    // seven fit, whoever wins them.
    let mut tasks = Vec::new();
    for p in 0..2u64 {
        let (c, base) = (c.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            let mut refused = Vec::new();
            for i in 0..10 {
                let (s, body) = put_blob(&c, &base, &format!("team/r{p}"), &data(10_000, 100 + p * 10 + i)).await;
                match s {
                    StatusCode::CREATED => ok += 1,
                    StatusCode::FORBIDDEN => refused.push(body),
                    other => panic!("unexpected {other}: {body}"),
                }
            }
            (ok, refused)
        }));
    }
    let mut accepted = 0;
    let mut refusals = Vec::new();
    for t in tasks {
        let (ok, refused) = t.await.expect("pusher");
        accepted += ok;
        refusals.extend(refused);
    }
    assert_eq!(accepted, 7, "{refusals:?}\n{}", reg.log());
    let ls = stdout(&admin(&reg, &cfg, &["quota", "ls"]));
    assert_eq!(usage(&ls, "team/**"), LIMIT, "{ls}");
    let v: serde_json::Value = serde_json::from_str(&refusals[0]).expect("error envelope");
    assert_eq!(v["errors"][0]["code"], "DENIED");
    let msg = v["errors"][0]["message"].as_str().expect("message");
    assert!(
        msg.contains("quota team/** exceeded") && msg.contains(&LIMIT.to_string()) && msg.contains("10000"),
        "{msg}"
    );
    assert_eq!(v["errors"][0]["detail"]["usage"], LIMIT);
    assert_eq!(v["errors"][0]["detail"]["limit"], LIMIT);

    // A full scope refuses a mount of something new and a manifest put (its bytes count too);
    // outside the scope, pushes go on.
    let outside = data(5_000, 7);
    assert_eq!(put_blob(&c, &base, "pub/x", &outside).await.0, StatusCode::CREATED);
    let r = c
        .post(format!(
            "{base}/v2/team/a/blobs/uploads/?mount={}&from=pub/x",
            digest(&outside)
        ))
        .send()
        .await
        .expect("mount");
    let s = r.status();
    let body = r.text().await.expect("body");
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("quota team/** exceeded"), "{body}");
    let m = manifest(&shared, &[]);
    let (s, body) = put_manifest(&c, &base, "team/a", "t", &m).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("DENIED") && body.contains("quota team/**"), "{body}");

    // Real clients show the reason.
    if require("skopeo") && require("umoci") {
        let layout = busybox_layout(tmp.path());
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:1", layout.display()))
            .arg(format!("docker://{}/team/busybox:1", reg.addr));
        let out = run_fails(&mut cmd);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("quota team/** exceeded"),
            "{}",
            show(&cmd, &out)
        );
        run(Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:1", layout.display()))
            .arg(format!("docker://{}/pub/busybox:1", reg.addr)));
        if require_docker() {
            let src = format!("{}/pub/busybox:1", reg.addr);
            let dst = format!("{}/team/busybox:1", reg.addr);
            run(Command::new("docker").args(["pull", &src]));
            run(Command::new("docker").args(["tag", &src, &dst]));
            let mut cmd = Command::new("docker");
            cmd.args(["push", &dst]);
            let out = run_fails(&mut cmd);
            let _ = Command::new("docker").args(["rmi", &src, &dst]).output();
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(all.contains("quota team/** exceeded"), "{}", show(&cmd, &out));
        }
    }

    // Deletes free space at once: the shared blob only when its last repository lets go.
    for repo in ["team/a", "team/b"] {
        let r = c
            .delete(format!("{base}/v2/{repo}/blobs/{}", digest(&shared)))
            .send()
            .await
            .expect("DELETE");
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    let ls = stdout(&admin(&reg, &cfg, &["quota", "ls"]));
    assert_eq!(
        usage(&ls, "team/**"),
        LIMIT,
        "team/c still holds the shared blob:\n{ls}"
    );
    // An image fits again once something goes; then garbage collection (no grace) takes the
    // blobs no manifest needs, and usage follows.
    let r = c
        .delete(format!("{base}/v2/team/c/blobs/{}", digest(&shared)))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    push_image(&c, &base, "team/a", "kept", 9).await;
    admin(&reg, &cfg, &["gc", "--grace", "0"]);
    let ls = stdout(&admin(&reg, &cfg, &["quota", "ls"]));
    let recomputed = stdout(&admin(&reg, &cfg, &["quota", "recompute"]));
    assert_eq!(ls, recomputed, "stored usage must equal a recomputation");
    let m = manifest(br#"{"architecture":"amd64","os":"linux","seed":9}"#, &[&data(1000, 9)]);
    let expect = (br#"{"architecture":"amd64","os":"linux","seed":9}"#.len() + 1000 + m.len()) as u64;
    assert_eq!(usage(&ls, "team/**"), expect, "only the tagged image is left:\n{ls}");
}
