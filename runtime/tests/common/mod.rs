//! Helpers for `berth-node`'s end-to-end tests: each test gets a root directory and a
//! `berth-registry` of its own (so tests run in parallel), images built here in Rust
//! (`berth_conformance::images`) and pushed with skopeo, and the real `berth-node` binary,
//! run with a timeout and reported in full (command, status, stdout, stderr, and the
//! registry's log) when something goes wrong.
//!
//! Whatever a test leaves behind — containers, their processes, mounts under its root — a
//! drop guard removes (`berth-node rm -f`, then SIGKILL to surviving container processes,
//! then lazy unmounts), so a failing test cannot wedge the next one or the machine.
//!
//! Prerequisites: root, overlayfs, skopeo, gzip, /bin/busybox (busybox-static) and a built
//! `berth-registry`. A missing one skips the test with a message on a developer's machine and
//! fails it under `CI=true`.
#![allow(dead_code)] // each test binary uses its own subset

pub use berth_conformance::images::{self, Image, NodeImages, APP_UID};
pub use berth_conformance::peers::{require, require_file, under_ci};
pub use berth_conformance::servers::{free_port, Server};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one `berth-node` command may take before the test kills it and fails.
pub const TIMEOUT: Duration = Duration::from_secs(120);

fn missing(what: &str, how: &str) -> bool {
    if under_ci() {
        panic!("{what} is required under CI=true but is missing; {how}");
    }
    eprintln!("SKIP: {what} missing: {how} (set CI=true to make this a failure)");
    false
}

/// Whether everything the node tests need is here (see the module doc).
pub fn prerequisites() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        return missing(
            "root",
            "berth-node mounts overlays and creates namespaces: run the tests as root",
        );
    }
    let overlay = std::fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("\toverlay"));
    if !overlay && !missing("overlayfs", "load the overlay module (modprobe overlay)") {
        return false;
    }
    if !(require("skopeo") && require("gzip") && require_file("/bin/busybox", "busybox-static")) {
        return false;
    }
    if let Err(e) = berth_conformance::servers::sibling_bin("berth-registry") {
        return missing(
            "berth-registry",
            &format!("{e:#} (or `cargo build -p berth-registry` for these tests)"),
        );
    }
    true
}

/// What a command did: everything a failure message needs.
pub struct Ran {
    /// The command line, as debug-printed by `Command`.
    pub cmd: String,
    /// How it ended.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// How long it took (start to exit).
    pub elapsed: Duration,
}

impl Ran {
    /// The exit code (`None` when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Everything, for an assertion message.
    pub fn show(&self) -> String {
        format!(
            "command: {}\nstatus: {} after {:.2?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmd, self.status, self.elapsed, self.stdout, self.stderr
        )
    }

    /// Standard output without trailing whitespace.
    pub fn out(&self) -> &str {
        self.stdout.trim_end()
    }

    /// The last non-empty line of standard output.
    pub fn last_line(&self) -> &str {
        self.stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
    }
}

fn reader(mut from: impl std::io::Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, std::thread::JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = Arc::clone(&buf);
    let h = std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = from.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(&chunk[..n]);
        }
    });
    (buf, h)
}

/// Runs `cmd` with `input` (if any) on its standard input, killing it after `timeout`; never
/// panics on the command's own failure, only when it cannot be run, hangs, or exits while
/// something it started still holds its standard output or error open (a `run -d` whose
/// supervisor kept the caller's pipes would hang every `$(berth-node run -d …)` in a shell).
pub fn run_cmd(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Ran {
    try_run_cmd(cmd, input, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// [`run_cmd`], answering what would have been its panic as an error instead: for the drop
/// guard, where a second panic would abort every test in the process.
pub fn try_run_cmd(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Result<Ran, String> {
    let shown = format!("{cmd:?}");
    let started = Instant::now();
    let mut child = cmd
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {shown}: {e}"))?;
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(format!("{shown}: no pipes"));
    };
    let (out, out_h) = reader(stdout);
    let (err, err_h) = reader(stderr);
    let text =
        |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for {shown}: {e}")),
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "timed out after {timeout:?}: {shown}\n--- stdout so far ---\n{}\n--- stderr so far ---\n{}",
                text(&out),
                text(&err)
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = started.elapsed();
    let grace = Instant::now() + Duration::from_secs(10);
    while !(out_h.is_finished() && err_h.is_finished()) {
        if Instant::now() > grace {
            return Err(format!(
                "{shown} exited ({status}) but its standard output or error is still open 10 s later: \
                 a process it started (supervisor, container) inherited them\n--- stdout ---\n{}\n--- stderr ---\n{}",
                text(&out),
                text(&err)
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = (out_h.join(), err_h.join());
    Ok(Ran {
        cmd: shown,
        status,
        stdout: text(&out),
        stderr: text(&err),
        elapsed,
    })
}

/// `berth-node` over one root directory. Dropping it removes what is left (see the module doc).
pub struct Node {
    /// `--root`.
    pub root: PathBuf,
    /// Global flags before the command (`--plain-http` by default).
    pub global: Vec<String>,
}

impl Node {
    /// A node over `root` (created), with `--plain-http`.
    pub fn new(root: &Path) -> Node {
        std::fs::create_dir_all(root).expect("node root");
        Node {
            root: root.to_owned(),
            global: vec!["--plain-http".to_owned()],
        }
    }

    /// `berth-node --root ROOT GLOBAL… ARGS…`, not yet run.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_berth-node"));
        c.arg("--root").arg(&self.root).args(&self.global).args(args);
        c.env_remove("BERTH_LOG").env("NO_COLOR", "1");
        c
    }

    /// Runs `berth-node ARGS…`, success or not.
    pub fn run(&self, args: &[&str]) -> Ran {
        run_cmd(&mut self.cmd(args), None, TIMEOUT)
    }

    /// Runs `berth-node ARGS…` with `input` on its standard input.
    pub fn run_with_input(&self, args: &[&str], input: &[u8]) -> Ran {
        run_cmd(&mut self.cmd(args), Some(input), TIMEOUT)
    }

    /// Runs `berth-node ARGS…`, which must succeed.
    pub fn ok(&self, args: &[&str]) -> Ran {
        let r = self.run(args);
        assert!(r.status.success(), "berth-node failed:\n{}", r.show());
        r
    }

    /// Runs `berth-node ARGS…`, which must exit with `code`.
    pub fn code(&self, args: &[&str], code: i32) -> Ran {
        let r = self.run(args);
        assert_eq!(
            r.code(),
            Some(code),
            "berth-node should have exited with {code}:\n{}",
            r.show()
        );
        r
    }

    /// Runs `berth-node ARGS…`, which must fail (any non-zero code).
    pub fn fails(&self, args: &[&str]) -> Ran {
        let r = self.run(args);
        assert!(
            !r.status.success() && r.code().is_some(),
            "berth-node should have failed:\n{}",
            r.show()
        );
        r
    }

    /// `run --rm [FLAGS…] IMAGE CMD…`: must succeed; answers its trimmed standard output.
    pub fn run_rm(&self, flags: &[&str], image: &str, cmd: &[&str]) -> String {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(flags);
        args.push(image);
        args.extend_from_slice(cmd);
        self.ok(&args).out().to_owned()
    }

    /// `run -d ARGS…`: must succeed and print a 64-hex container id (its last line), answered.
    pub fn run_d(&self, args: &[&str]) -> String {
        let mut all = vec!["run", "-d"];
        all.extend_from_slice(args);
        let r = self.ok(&all);
        let id = r.last_line().to_owned();
        assert!(
            id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "run -d should print a 64-hex container id:\n{}",
            r.show()
        );
        id
    }

    /// `inspect TARGET`, parsed; must succeed. A one-element array is unwrapped (docker
    /// prints arrays).
    pub fn inspect(&self, target: &str) -> serde_json::Value {
        let r = self.ok(&["inspect", target]);
        let v: serde_json::Value =
            serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("inspect printed no JSON ({e}):\n{}", r.show()));
        match v {
            serde_json::Value::Array(mut a) if a.len() == 1 => a.remove(0),
            v => v,
        }
    }

    /// The container ids `ps -a -q` lists (full or short, as printed).
    pub fn ps_all_ids(&self) -> Vec<String> {
        self.ok(&["ps", "-a", "-q"])
            .stdout
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Polls `logs CONTAINER` until its output (stdout and stderr) contains `want`, for up to
    /// `within`; answers the last `logs` run.
    pub fn logs_until(&self, container: &str, want: &str, within: Duration) -> Ran {
        let deadline = Instant::now() + within;
        loop {
            let r = self.run(&["logs", container]);
            if r.status.success() && (r.stdout.contains(want) || r.stderr.contains(want)) {
                return r;
            }
            if Instant::now() > deadline {
                panic!("logs never showed {want:?} within {within:?}:\n{}", r.show());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Mount points under the root, deepest last.
    pub fn mounts(&self) -> Vec<PathBuf> {
        mounts_under(&self.root)
    }

    /// Fails unless nothing is mounted under the root.
    pub fn assert_nothing_mounted(&self) {
        let m = self.mounts();
        assert!(m.is_empty(), "still mounted under {}: {m:#?}", self.root.display());
    }

    /// Removes everything a test left: containers (`rm -f`, and SIGKILL to any of their
    /// processes that survive it), then mounts under the root (lazily, deepest first).
    pub fn cleanup(&self) {
        let quick = Duration::from_secs(30);
        let run = |args: &[&str]| match try_run_cmd(&mut self.cmd(args), None, quick) {
            Ok(r) if r.status.success() => Some(r),
            Ok(r) => {
                eprintln!("cleanup: {}", r.show());
                None
            }
            Err(e) => {
                eprintln!("cleanup: {e}");
                None
            }
        };
        if let Some(ps) = run(&["ps", "-a", "-q"]) {
            for id in ps.stdout.split_whitespace() {
                let pid = run(&["inspect", id])
                    .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.stdout).ok())
                    .and_then(|v| {
                        let v = if v.is_array() { v[0].clone() } else { v };
                        v["State"]["Pid"].as_i64()
                    })
                    .filter(|&p| p > 1);
                let started = pid.and_then(start_time);
                run(&["rm", "-f", id]);
                if let (Some(pid), Some(started)) = (pid, started) {
                    if start_time(pid) == Some(started) {
                        eprintln!("cleanup: container process {pid} of {id} survived rm -f; killing it");
                        let _ =
                            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL);
                    }
                }
            }
        }
        for m in self.mounts().iter().rev() {
            if let Err(e) = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH) {
                eprintln!("cleanup: umount {}: {e}", m.display());
            }
        }
    }
}

/// The start time of process `pid` (field 22 of `/proc/PID/stat`, clock ticks since boot):
/// with the pid, it names one process, even if the pid is reused later.
fn start_time(pid: i64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.split_whitespace().nth(19)?.parse().ok()
}

impl Drop for Node {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Undoes `/proc/self/mountinfo`'s octal escapes (`\040` for a space, …).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or under `dir` in this process's mount namespace, in mount order.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape(m)))
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// Files, directories and links named `name` under `dir` (symlinks are not followed).
pub fn find_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_name() == name {
                found.push(p.clone());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    found
}

/// Bytes used by regular files under `dir` (each inode once), not following symlinks or
/// crossing into mounts' contents twice.
pub fn du(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(m) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() && seen.insert((m.dev(), m.ino())) {
                total += m.len();
            }
        }
    }
    total
}

/// A cgroup setting of process `pid`: `file` in the hierarchy of `controller` (cgroup v1) or
/// in its unified cgroup (v2), e.g. `("memory", "memory.limit_in_bytes")`. `None` when the
/// process or the file is not there.
pub fn cgroup_setting(pid: i64, controller: &str, file: &str) -> Option<String> {
    let table = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in table.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let dirs: Vec<String> = if controllers.is_empty() {
            vec!["/sys/fs/cgroup/unified".into(), "/sys/fs/cgroup".into()]
        } else if controllers.split(',').any(|c| c == controller) {
            vec![
                format!("/sys/fs/cgroup/{controllers}"),
                format!("/sys/fs/cgroup/{controller}"),
            ]
        } else {
            continue;
        };
        for d in dirs {
            let p = Path::new(&d).join(path.trim_start_matches('/')).join(file);
            if let Ok(v) = std::fs::read_to_string(&p) {
                return Some(v.trim().to_owned());
            }
        }
    }
    None
}

/// The images of [`images::node_layout`], pushed: references `ADDR/test/busybox:TAG`.
pub struct Refs {
    /// Tag `1` (root, `/srv`, `GREETING=from-image`, prints `hello from berth`).
    pub plain: String,
    /// Tag `user` (`User` app, `/home/app`).
    pub user: String,
    /// Tag `entry` (`Entrypoint` `echo entry:`, `Cmd` `default`).
    pub entry: String,
    /// The images as built.
    pub images: NodeImages,
}

/// One test's world: a node root, a registry, a temporary directory for everything else.
/// Fields drop in order: the node's guard runs before the registry stops and the directory
/// goes.
pub struct Fixture {
    /// `berth-node` over `tmp/root`.
    pub node: Node,
    /// `berth-registry` over `tmp/registry`.
    pub reg: Server,
    /// Everything else: image layouts, volumes.
    pub tmp: tempfile::TempDir,
}

impl Fixture {
    /// A fresh world, or `None` (the test skips) when a prerequisite is missing.
    pub fn new() -> Option<Fixture> {
        if !prerequisites() {
            return None;
        }
        let tmp = tempfile::Builder::new()
            .prefix("berth-node-test")
            .tempdir()
            .expect("tmp dir");
        let bin = berth_conformance::servers::sibling_bin("berth-registry").unwrap_or_else(|e| panic!("{e:#}"));
        let reg = Server::berth(&bin, &tmp.path().join("registry"), free_port().expect("a free port"))
            .unwrap_or_else(|e| panic!("{e:#}"));
        Some(Fixture {
            node: Node::new(&tmp.path().join("root")),
            reg,
            tmp,
        })
    }

    /// A directory of its own under the temporary directory.
    pub fn dir(&self, name: &str) -> PathBuf {
        let d = self.tmp.path().join(name);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    /// Pushes `image` to `repo` in this test's registry with skopeo, digests preserved;
    /// answers `ADDR/REPO:TAG`.
    pub fn push(&self, image: &Image, repo: &str) -> String {
        let dst = format!("{}/{repo}:{}", self.reg.addr, image.tag);
        let r = run_cmd(
            Command::new("skopeo")
                .args(["copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false"])
                .arg(image.oci_ref())
                .arg(format!("docker://{dst}")),
            None,
            TIMEOUT,
        );
        assert!(
            r.status.success(),
            "pushing the test image failed:\n{}\n--- registry log ---\n{}",
            r.show(),
            self.reg.log()
        );
        dst
    }

    /// Builds the busybox images ([`images::node_layout`]) and pushes them to `test/busybox`.
    pub fn busybox(&self) -> Refs {
        let images = images::node_layout(&self.dir("images")).unwrap_or_else(|e| panic!("{e:#}"));
        Refs {
            plain: self.push(&images.plain, "test/busybox"),
            user: self.push(&images.user, "test/busybox"),
            entry: self.push(&images.entry, "test/busybox"),
            images,
        }
    }

    /// Registry log lines of GETs of blob `digest` answered 200 (full downloads).
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.reg
            .log()
            .lines()
            .filter(|l| l.contains("method=GET") && l.contains(&format!("/blobs/{digest}")) && l.contains("status=200"))
            .count()
    }
}
