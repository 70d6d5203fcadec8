//! Real peers the end-to-end tests need (docker, skopeo, umoci, docker-registry, busybox):
//! present, or skipped with a message on a developer's machine — and under `CI=true`, where
//! `.ci/run` installs them, a missing peer is a failure, never a silent skip.

use std::path::Path;
use std::process::{Command, Stdio};

/// Whether CI demands every prerequisite.
pub fn under_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

fn missing(what: &str, how: &str) -> bool {
    if under_ci() {
        panic!("{what} is required under CI=true but is missing; {how}");
    }
    eprintln!("SKIP: {what} missing: {how} (set CI=true to make this a failure)");
    false
}

/// Whether `tool` is on PATH.
pub fn require(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    found || missing(tool, ".ci/run installs it")
}

/// Whether `path` exists (e.g. `/bin/busybox` from Debian's `busybox-static`).
pub fn require_file(path: &str, package: &str) -> bool {
    Path::new(path).exists() || missing(path, &format!("install Debian's {package}"))
}

/// Whether the docker CLI is installed and a daemon answers.
pub fn require_docker() -> bool {
    if !require("docker") {
        return false;
    }
    let ok = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok || missing(
        "a docker daemon",
        "start dockerd --iptables=false --bridge=none (.ci/run does)",
    )
}
