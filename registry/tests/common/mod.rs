//! Helpers for the end-to-end tests: they run the real `berth-registry` binary and real peers
//! (docker, skopeo, umoci, the reference registry) and print everything on failure.
//!
//! A peer that is missing makes the test skip with a message on a developer's machine, and
//! fail under `CI=true`, where `.ci/run` is responsible for installing it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

#[allow(unused_imports)] // each test binary uses its own subset
pub use berth_conformance::peers::{require, require_docker};

/// Runs `cmd`; panics with the command, status, stdout and stderr when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "command failed: {cmd:?}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

pub use berth_conformance::servers::{free_port, Server};

/// Path of a binary built into the same target directory (e.g. `berth-conformance`).
pub fn sibling_bin(name: &str) -> PathBuf {
    berth_conformance::servers::sibling_bin(name).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Starts this package's `berth-registry` over `data` on a free port.
pub fn start(data: &Path) -> Server {
    start_on(data, free_port().expect("a free port"))
}

/// Starts it on a given port (to restart on the same address).
pub fn start_on(data: &Path, port: u16) -> Server {
    Server::berth(Path::new(env!("CARGO_BIN_EXE_berth-registry")), data, port).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The `berth-registry` binary under test.
pub fn registry_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_berth-registry"))
}

/// Starts it over `data` on a free loopback port with extra `serve` flags (`--auth token`,
/// `--config FILE`, `--tls self-signed`, …).
pub fn start_with(data: &Path, args: &[&str]) -> Server {
    start_on_host(data, "127.0.0.1", args)
}

/// Starts it on `host` (an IPv4 address of this machine) and a free port, with extra flags.
pub fn start_on_host(data: &Path, host: &str, args: &[&str]) -> Server {
    Server::berth_on(registry_bin(), data, host, free_port().expect("a free port"), args)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The command, its status, stdout and stderr, for a failure message.
pub fn show(cmd: &Command, out: &Output) -> String {
    format!(
        "command: {cmd:?}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` with `input` on its standard input and returns its output, success or not.
pub fn output_with_stdin(cmd: &mut Command, input: &str) -> Output {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("writing to the standard input of {cmd:?}: {e}"));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}"))
}

/// Runs `cmd` with `input` on its standard input; panics with everything when it fails.
pub fn run_with_stdin(cmd: &mut Command, input: &str) -> Output {
    let out = output_with_stdin(cmd, input);
    if !out.status.success() {
        panic!("command failed:\n{}", show(cmd, &out));
    }
    out
}

/// Runs `cmd`, which must fail; panics with its output when it succeeds. Returns the output,
/// so the caller can check the failure is the expected one.
pub fn run_fails(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    if out.status.success() {
        panic!("command succeeded but should have failed:\n{}", show(cmd, &out));
    }
    out
}

/// `berth-registry user add NAME --password-stdin --data DATA`.
pub fn user_add(data: &Path, name: &str, password: &str) {
    run_with_stdin(
        Command::new(registry_bin())
            .args(["user", "add", name, "--password-stdin", "--data"])
            .arg(data),
        &format!("{password}\n"),
    );
}

/// `berth-registry robot add NAME --repo GLOB… --action ACTIONS --data DATA`: the robot's
/// full name (`robot$NAME`) and its secret, as printed (name line, then secret line).
pub fn robot_add(data: &Path, name: &str, repos: &[&str], actions: &str) -> (String, String) {
    let mut cmd = Command::new(registry_bin());
    cmd.args(["robot", "add", name]);
    for r in repos {
        cmd.args(["--repo", r]);
    }
    cmd.args(["--action", actions, "--data"]).arg(data);
    let out = run(&mut cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = stdout.lines().collect();
    match lines[..] {
        [full, secret] if full == format!("robot${name}") && !secret.is_empty() => (full.to_owned(), secret.to_owned()),
        _ => panic!("robot add printed {stdout:?}, expected \"robot${name}\" and a secret on two lines"),
    }
}

/// Builds a busybox image as an OCI layout at `dir/oci` with tag `1` whose command prints
/// `hello from berth`: umoci + busybox-static, nothing pulled from anywhere.
pub fn busybox_layout(dir: &Path) -> PathBuf {
    berth_conformance::images::busybox_layout(dir).unwrap_or_else(|e| panic!("{e:#}"))
}

/// All files under `layout/blobs/sha256`, name → bytes.
pub fn layout_blobs(layout: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(layout.join("blobs/sha256")).expect("blobs dir") {
        let e = e.expect("entry");
        out.insert(
            e.file_name().to_string_lossy().into_owned(),
            std::fs::read(e.path()).expect("read blob"),
        );
    }
    out
}
