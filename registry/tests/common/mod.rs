//! Helpers for the end-to-end tests: they run the real `berth-registry` binary and real peers
//! (docker, skopeo, umoci, the reference registry) and print everything on failure.
//!
//! A peer that is missing makes the test skip with a message on a developer's machine, and
//! fail under `CI=true`, where `.ci/run` is responsible for installing it.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Whether `tool` is on PATH; under CI a missing tool is a failure, never a silent skip.
pub fn require(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{tool} is required under CI=true but is not installed; .ci/run installs it");
        }
        eprintln!("SKIP: {tool} not installed (set CI=true to make this a failure)");
    }
    found
}

/// Whether a docker daemon answers.
pub fn require_docker() -> bool {
    if !require("docker") {
        return false;
    }
    let ok = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("no docker daemon answers under CI=true; .ci/run starts dockerd");
        }
        eprintln!("SKIP: no docker daemon (start dockerd --iptables=false --bridge=none)");
    }
    ok
}

/// Runs `cmd`; panics with the command, status, stdout and stderr when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
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

/// A free loopback port (bound and released; the registry binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// Path of a binary built next to the test executable's directory (target/<profile>/NAME).
pub fn sibling_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built; run `cargo build --workspace --bins` (with the same profile) first",
        p.display()
    );
    p
}

/// A running `berth-registry`.
pub struct Registry {
    child: Option<Child>,
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// Its data directory.
    pub data: PathBuf,
    log: PathBuf,
}

impl Registry {
    /// Starts the registry on a free port over `data`, waiting until `/v2/` answers.
    pub fn start(data: &Path) -> Registry {
        Self::start_on(data, free_port())
    }

    /// Starts it on a given port (to restart on the same address).
    pub fn start_on(data: &Path, port: u16) -> Registry {
        let addr = format!("127.0.0.1:{port}");
        std::fs::create_dir_all(data).expect("data dir");
        let log = data.with_extension(format!("{port}.log"));
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_berth-registry"))
            .args(["serve", "--listen", &addr, "--data"])
            .arg(data)
            .env("RUST_LOG", "info,sqlx=warn")
            .env("NO_COLOR", "1")
            .stdout(logf.try_clone().expect("log"))
            .stderr(logf)
            .spawn()
            .expect("start berth-registry");
        let mut r = Registry {
            child: Some(child),
            addr,
            data: data.to_owned(),
            log,
        };
        r.wait_ready();
        r
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(&self.addr).is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("berth-registry exited with {status}\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "berth-registry did not listen on {} within 20 s\n{}",
            self.addr,
            self.log()
        );
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait for a clean exit (graceful shutdown).
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        run(Command::new("kill").args(["-TERM", &child.id().to_string()]));
        child.wait().expect("wait for berth-registry")
    }

    /// SIGKILL: a crash.
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.crash();
        if std::thread::panicking() {
            eprintln!(
                "--- berth-registry log ({}) ---\n{}",
                self.log.display(),
                self.log()
            );
        }
    }
}

/// Builds a busybox image as an OCI layout at `dir/oci` with tag `1` whose command prints
/// `hello from berth`: umoci + busybox-static, nothing pulled from anywhere.
pub fn busybox_layout(dir: &Path) -> PathBuf {
    let layout = dir.join("oci");
    let bundle = dir.join("bundle");
    let img = |tag: &str| format!("{}:{tag}", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &img("base")]));
    run(Command::new("umoci")
        .args(["unpack", "--image", &img("base")])
        .arg(&bundle));
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin).expect("rootfs/bin");
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("copy /bin/busybox (busybox-static)");
    std::os::unix::fs::symlink("busybox", bin.join("sh")).expect("symlink sh");
    run(Command::new("umoci")
        .args(["repack", "--image", &img("base")])
        .arg(&bundle));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &img("base"),
        "--tag",
        "1",
        "--config.env",
        "PATH=/bin",
        "--config.cmd",
        "/bin/sh",
        "--config.cmd",
        "-c",
        "--config.cmd",
        "echo hello from berth",
    ]));
    layout
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
