//! `docker save` archives in, `docker load` archives out: `berth push --docker-archive` of what
//! docker saved, then docker pulls and runs it; `berth pull --docker-archive` of an image, then
//! docker loads and runs it.

mod common;

use common::*;
use std::process::Command;

/// Removes the docker images it names when dropped, also when the test fails.
struct Images(Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        for i in &self.0 {
            let _ = Command::new("docker").args(["rmi", "-f", i]).output();
        }
    }
}

#[test]
fn docker_save_and_load_round_trip() {
    if !(require_docker() && require("umoci") && require_file("/bin/busybox", "busybox-static")) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let reg = start_berth(&tmp.path().join("data"), &[]);
    let berth = Berth::new(&tmp.path().join("docker-config"));
    let layout = busybox_layout(tmp.path());
    let layout = layout.to_str().expect("utf-8 path");
    let (orig, saved_as, loaded) = (
        format!("{}/archive/orig:1", reg.addr),
        format!("{}/archive/from-save:1", reg.addr),
        format!("{}/archive/orig:1", reg.addr),
    );
    let _images = Images(vec![orig.clone(), saved_as.clone(), loaded.clone()]);

    // docker save → berth push --docker-archive → docker pull + run.
    run(berth.cmd(&["push", layout, &orig]).arg("--tag").arg("1"));
    run(Command::new("docker").args(["pull", &orig]));
    let saved = tmp.path().join("saved.tar");
    run(Command::new("docker").args(["save", &orig, "-o"]).arg(&saved));
    let saved_s = saved.to_str().expect("utf-8 path");
    berth.ok(&["push", "--docker-archive", saved_s, &saved_as]);
    run(Command::new("docker").args(["rmi", "-f", &orig]));
    run(Command::new("docker").args(["pull", &saved_as]));
    let out = stdout(&run(Command::new("docker").args([
        "run",
        "--rm",
        "--network",
        "none",
        &saved_as,
    ])));
    assert_eq!(out.trim(), "hello from berth");

    // berth pull --docker-archive → docker load + run.
    run(Command::new("docker").args(["rmi", "-f", &saved_as]));
    let archive = tmp.path().join("pulled.tar");
    run(berth.cmd(&["pull", &orig, "--docker-archive"]).arg(&archive));
    let load = stdout(&run(Command::new("docker").args(["load", "-i"]).arg(&archive)));
    assert!(load.contains(&loaded), "docker load named no {loaded}: {load}");
    let out = stdout(&run(Command::new("docker").args([
        "run",
        "--rm",
        "--network",
        "none",
        &loaded,
    ])));
    assert_eq!(out.trim(), "hello from berth");

    // An archive whose layer does not match the config's diff ID is refused.
    let bad = tmp.path().join("bad.tar");
    std::fs::write(&bad, b"not a tar").expect("write");
    let out = output(
        &mut berth.cmd(&["push", "--docker-archive", bad.to_str().expect("utf-8"), &saved_as]),
        None,
    );
    assert!(
        !out.status.success(),
        "a broken archive must be refused:\n{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("bad.tar"),
        "the error names the file: {}",
        stderr(&out)
    );
}
