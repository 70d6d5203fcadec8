//! Credentials shared with docker's own CLI, against `berth-registry` in basic and in token
//! mode: `berth login` then `docker pull` (and run) of an image berth pushed; `docker login`
//! then `berth push`/`pull` with what docker stored (in token mode an `identitytoken`, which
//! berth must exchange at the token service); `berth logout` removes either entry; a wrong
//! password is refused as UNAUTHORIZED and stores nothing.
//!
//! Each client gets a config directory of its own in the test's temporary directory
//! (`DOCKER_CONFIG` for berth, `docker --config` for docker), so `~/.docker` is never touched.
//! The images docker pulls are removed when the test ends, also when it fails.

mod common;

use base64::Engine as _;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

const ALICE_PW: &str = "alice-e2e-pw-Zq81mTn4";
const WRONG_PW: &str = "wrong-e2e-pw-Kd30vXe7";

/// The docker CLI with a config directory of its own; removes the images it pulled when dropped.
struct Docker {
    config: PathBuf,
    images: Mutex<Vec<String>>,
}

impl Docker {
    fn new(config: &Path) -> Docker {
        std::fs::create_dir_all(config).expect("docker config dir");
        Docker {
            config: config.to_owned(),
            images: Mutex::new(Vec::new()),
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("docker");
        c.arg("--config").arg(&self.config);
        c
    }

    fn login(&self, addr: &str, password: &str) {
        run_with_stdin(
            self.cmd().args(["login", addr, "-u", "alice", "--password-stdin"]),
            &format!("{password}\n"),
        );
    }

    fn pull(&self, image: &str) {
        if let Ok(mut i) = self.images.lock() {
            i.push(image.to_owned());
        }
        run(self.cmd().args(["pull", image]));
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        for image in self.images.lock().map(|i| i.clone()).unwrap_or_default() {
            let _ = self.cmd().args(["rmi", "-f", &image]).output();
        }
    }
}

/// `auths[addr]` of a docker config file, or null.
fn entry(config: &serde_json::Value, addr: &str) -> serde_json::Value {
    config["auths"][addr].clone()
}

fn login_interop(mode: &str) {
    if !(require_docker() && require("umoci") && require_file("/bin/busybox", "busybox-static")) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    user_add(&data, "alice", ALICE_PW);
    let reg = start_berth(&data, &["--auth", mode]);
    let addr = reg.addr.clone();
    let layout = busybox_layout(tmp.path());
    let layout = layout.to_str().expect("utf-8 path");
    let login = ["login", addr.as_str(), "-u", "alice", "--password-stdin"];

    // A wrong password: refused, named, nothing stored.
    let berth = Berth::new(&tmp.path().join("berth-config"));
    let (cmd, out) = berth.output_with_stdin(&login, &format!("{WRONG_PW}\n"));
    assert_eq!(
        out.status.code(),
        Some(1),
        "login with a wrong password:\n{}",
        show(&cmd, &out)
    );
    assert!(stderr(&out).contains("UNAUTHORIZED"), "{}", show(&cmd, &out));
    assert!(
        entry(&berth.config_json(), &addr).is_null(),
        "a refused login stored credentials: {}",
        berth.config_json()
    );

    // berth login → docker pull of an image berth pushed.
    let (cmd, out) = berth.output_with_stdin(&login, &format!("{ALICE_PW}\n"));
    assert!(out.status.success(), "berth login:\n{}", show(&cmd, &out));
    assert!(stdout(&out).contains("Login Succeeded"), "{}", show(&cmd, &out));
    let stored = entry(&berth.config_json(), &addr);
    assert_eq!(
        stored["auth"],
        serde_json::json!(base64::engine::general_purpose::STANDARD.encode(format!("alice:{ALICE_PW}"))),
        "berth login stored {stored}"
    );
    let image = format!("{addr}/alice/img:1");
    let pushed = berth.json(&["push", layout, &image, "--tag", "1"]);
    let digest = pushed["digest"].as_str().expect("push --json digest").to_owned();

    let docker = Docker::new(&berth.docker_config);
    docker.pull(&image);
    let out = run(docker
        .cmd()
        .args(["image", "inspect", "--format", "{{json .RepoDigests}}", &image]));
    assert!(
        stdout(&out).contains(&format!("{addr}/alice/img@{digest}")),
        "docker pulled another image than berth pushed ({digest}): {}",
        stdout(&out)
    );
    let out = run(docker.cmd().args(["run", "--rm", "--network", "none", &image]));
    assert_eq!(stdout(&out).trim(), "hello from berth");

    // docker login → berth push and pull with what docker stored.
    let theirs = Berth::new(&tmp.path().join("docker-config"));
    let docker2 = Docker::new(&theirs.docker_config);
    docker2.login(&addr, ALICE_PW);
    let stored = entry(&theirs.config_json(), &addr);
    if mode == "token" {
        assert!(
            stored["identitytoken"].as_str().is_some_and(|t| !t.is_empty()),
            "docker kept no identity token after a token-mode login: {stored}"
        );
    } else {
        assert!(stored["auth"].is_string(), "docker stored {stored}");
    }
    let other = format!("{addr}/alice/other:1");
    let pushed = theirs.json(&["push", layout, &other, "--tag", "1"]);
    assert_eq!(pushed["digest"], serde_json::json!(digest), "{pushed}");
    let to = tmp.path().join("pulled");
    let pulled = theirs.json(&["pull", &image, "--to", to.to_str().expect("utf-8 path")]);
    assert_eq!(pulled["digest"], serde_json::json!(digest), "{pulled}");
    assert_eq!(index_entry(&to, "1")["digest"], serde_json::json!(digest));

    // berth logout removes the entry, whoever wrote it; afterwards the registry refuses berth.
    for b in [&berth, &theirs] {
        let out = b.ok(&["logout", &addr]);
        assert!(stdout(&out).contains("Removed"), "logout printed: {}", stdout(&out));
        assert!(
            entry(&b.config_json(), &addr).is_null(),
            "credentials left after berth logout: {}",
            b.config_json()
        );
    }
    let out = berth.fails(&["digest", &image], 1);
    assert!(
        stderr(&out).contains("UNAUTHORIZED") || stderr(&out).contains("DENIED"),
        "logged out, berth should be refused:\n{}",
        stderr(&out)
    );
}

#[test]
fn docker_and_berth_share_logins_basic_auth() {
    login_interop("basic");
}

#[test]
fn docker_and_berth_share_logins_token_auth() {
    login_interop("token");
}
