//! Retention (`[[retention]]`) against the real binary: `keep_last`, `pulled_within` (pulls
//! recorded in batches) and `untagged_after`; `retention run --dry-run` lists exactly what
//! the real run then removes; manifests pinned by hand (`berth-registry pin`) or reported in
//! use by a node (`PUT /berth/v1/nodes/<node>/in-use`) are kept past their age, by retention
//! and by garbage collection, until the pin goes or the node's window passes.

mod common;
mod govern;

use govern::*;
use reqwest::{Client, StatusCode};
use std::time::Duration;

const CONFIG: &str = "[governance]\npull_flush_secs = 1\nnode_report_window_secs = 3\nretention_interval_secs = 0\n\n\
[[retention]]\nrepos = [\"ci/**\"]\nkeep_last = 2\n\n\
[[retention]]\nrepos = [\"pulled/**\"]\npulled_within = \"3s\"\n\n\
[[retention]]\nrepos = [\"ci/**\", \"pulled/**\"]\nuntagged_after = \"2s\"\n";

async fn report(c: &Client, base: &str, node: &str, manifests: &[(&str, &str)]) {
    let body = serde_json::json!({
        "manifests": manifests.iter().map(|(r, d)| serde_json::json!({"repository": r, "digest": d})).collect::<Vec<_>>()
    });
    let r = c
        .put(format!("{base}/berth/v1/nodes/{node}/in-use"))
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("report");
    let s = r.status();
    assert_eq!(s, StatusCode::NO_CONTENT, "{}", r.text().await.unwrap_or_default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_what_policies_pins_and_nodes_say() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (reg, cfg) = start_config(tmp.path(), CONFIG);
    let base = reg.url();
    let c = Client::new();

    let mut b = Vec::new();
    for i in 1..=4 {
        b.push(push_image(&c, &base, "ci/app", &format!("b{i}"), i).await);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    push_image(&c, &base, "pulled/app", "p1", 11).await;
    push_image(&c, &base, "pulled/app", "p2", 12).await;
    // An untagged manifest, pushed by digest.
    let config = br#"{"architecture":"amd64","os":"linux","seed":51}"#.to_vec();
    let layer = data(1000, 51);
    for x in [&config, &layer] {
        assert_eq!(put_blob(&c, &base, "ci/app", x).await.0, StatusCode::CREATED);
    }
    let m = manifest(&config, &[&layer]);
    let u = digest(&m);
    assert_eq!(put_manifest(&c, &base, "ci/app", &u, &m).await.0, StatusCode::CREATED);

    // b1 pinned by hand, b2 in use on node n1.
    let out = stdout(&admin(&reg, &cfg, &["pin", "ci/app:b1"]));
    assert!(out.contains(&b[0]), "{out}");
    report(&c, &base, "n1", &[("ci/app", &b[1])]).await;
    let dry = stdout(&admin(&reg, &cfg, &["retention", "run", "--dry-run"]));
    assert!(
        !dry.contains("ci/app:b1") && !dry.contains("ci/app:b2") && !dry.contains("ci/app:b3"),
        "pinned and in-use tags are kept:\n{dry}"
    );

    // Past the node's window, with p1 pulled and the untagged manifest old enough.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(manifest_status(&c, &base, "pulled/app", "p1").await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let dry = stdout(&admin(&reg, &cfg, &["retention", "run", "--dry-run"]));
    assert!(
        dry.contains(&format!(
            "tag ci/app:b2 ({}): not among the 2 most recently pushed",
            b[1]
        )),
        "{dry}"
    );
    assert!(!dry.contains("ci/app:b1"), "pinned by hand:\n{dry}");
    assert!(
        dry.contains("tag pulled/app:p2 ") && dry.contains("not pulled within 3s"),
        "{dry}"
    );
    assert!(!dry.contains("pulled/app:p1"), "p1 was pulled:\n{dry}");
    assert!(
        dry.contains(&format!("manifest ci/app@{u}: untagged for more than 2s")),
        "{dry}"
    );
    let done = stdout(&admin(&reg, &cfg, &["retention", "run"]));
    assert_eq!(dry, done, "the dry run must list exactly what the run removes");
    assert_eq!(tags(&c, &base, "ci/app").await, ["b1", "b3", "b4"]);
    assert_eq!(tags(&c, &base, "pulled/app").await, ["p1"]);
    assert_eq!(manifest_status(&c, &base, "ci/app", &u).await, StatusCode::NOT_FOUND);

    // Garbage collection (no grace) keeps an untagged manifest a node reports, and takes it
    // once the window has passed.
    report(&c, &base, "n1", &[("ci/app", &b[1])]).await;
    admin(&reg, &cfg, &["gc", "--grace", "0"]);
    assert_eq!(
        manifest_status(&c, &base, "ci/app", &b[1]).await,
        StatusCode::OK,
        "{}",
        reg.log()
    );
    tokio::time::sleep(Duration::from_millis(3200)).await;
    admin(&reg, &cfg, &["gc", "--grace", "0"]);
    assert_eq!(manifest_status(&c, &base, "ci/app", &b[1]).await, StatusCode::NOT_FOUND);
    // The hand-made pin holds until removed, tag or no tag.
    let r = c
        .delete(format!("{base}/v2/ci/app/manifests/b1"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    admin(&reg, &cfg, &["gc", "--grace", "0"]);
    assert_eq!(manifest_status(&c, &base, "ci/app", &b[0]).await, StatusCode::OK);
    admin(&reg, &cfg, &["pin", "--remove", &format!("ci/app@{}", b[0])]);
    admin(&reg, &cfg, &["gc", "--grace", "0"]);
    assert_eq!(manifest_status(&c, &base, "ci/app", &b[0]).await, StatusCode::NOT_FOUND);
}
