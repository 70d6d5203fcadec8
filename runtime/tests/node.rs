//! `berth-node` end to end, as root, against a real `berth-registry`: images built by the test
//! (busybox-static in a gzip layer; whiteouts; 131 layers; hostile layers), pushed with
//! skopeo, then pulled and run by the real binary, the way a user would, checking what the
//! container sees (output, exit codes, env, user, workdir, hostname, namespaces, limits,
//! read-only root, volumes) and the lifecycle around it (detached containers, logs, stop,
//! kill, wait, exec, rm, images, rmi, prune).
//!
//! Each test has its own registry and node root (see `common`), so they run in parallel; a
//! drop guard removes containers and mounts a failing test leaves behind.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// `reclaimed N bytes` → N.
fn reclaimed(r: &Ran) -> u64 {
    let words: Vec<&str> = r.stdout.split_whitespace().collect();
    words
        .iter()
        .position(|w| *w == "reclaimed")
        .and_then(|i| words.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("prune should print \"reclaimed N bytes\":\n{}", r.show()))
}

/// Whether `ps -a -q` still lists container `id` (full or short form).
fn listed(node: &Node, id: &str) -> bool {
    node.ps_all_ids()
        .iter()
        .any(|i| !i.is_empty() && (id.starts_with(i.as_str()) || i.starts_with(id)))
}

/// Waits up to `within` for `/proc/PID` to disappear; answers whether it did.
fn gone(pid: i64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The container's host pid from `inspect`.
fn pid_of(node: &Node, container: &str) -> i64 {
    let v = node.inspect(container);
    v["State"]["Pid"]
        .as_i64()
        .filter(|&p| p > 0)
        .unwrap_or_else(|| panic!("inspect {container} shows no State.Pid: {v:#}"))
}

/// The interface names of a `/proc/net/dev`.
fn interfaces(net_dev: &str) -> Vec<String> {
    let mut v: Vec<String> = net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|s| s.trim().to_owned())
        .collect();
    v.sort();
    v
}

/// The `CapEff` mask of a `/proc/PID/status`.
fn cap_eff(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no CapEff in:\n{status}"))
}

/// Docker's default capability set: CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID,
/// SETPCAP, NET_BIND_SERVICE, NET_RAW, SYS_CHROOT, MKNOD, AUDIT_WRITE, SETFCAP.
const DOCKER_CAPS: u64 = 0xa80425fb;

#[test]
fn runs_a_command_with_its_output_exit_code_and_stdin() {
    let Some(f) = Fixture::new() else { return };
    let img = f.busybox();
    let n = &f.node;

    let pulled = n.ok(&["pull", &img.plain]);
    assert_eq!(
        pulled.last_line(),
        img.images.plain.digest,
        "pull prints the manifest digest last:\n{}",
        pulled.show()
    );
    assert_eq!(n.run_rm(&[], &img.plain, &["echo", "hello"]), "hello");
    assert_eq!(n.run_rm(&[], &img.plain, &[]), "hello from berth", "the image's Cmd");
    n.code(&["run", "--rm", &img.plain, "sh", "-c", "exit 3"], 3);

    let r = n.ok(&["run", "--rm", &img.plain, "sh", "-c", "echo out; echo err >&2"]);
    assert_eq!(r.stdout, "out\n", "stdout alone on stdout:\n{}", r.show());
    assert!(r.stderr.contains("err"), "stderr on stderr:\n{}", r.show());

    let r = n.run_with_input(&["run", "--rm", "-i", &img.plain, "cat"], b"piped in\n");
    assert_eq!(r.stdout, "piped in\n", "-i attaches stdin:\n{}", r.show());

    // `tty` fails ("not a tty") unless its stdin is a terminal; the name may be /dev/pts/N or
    // /dev/console (runc's choice for a container's terminal).
    let r = n.ok(&["run", "--rm", "-t", &img.plain, "tty"]);
    assert!(r.out().starts_with("/dev/"), "-t gives a terminal:\n{}", r.show());

    // Docker's codes: 127 not found, 126 not executable, 125 the node's own failure.
    n.code(&["run", "--rm", &img.plain, "no-such-command"], 127);
    n.code(&["run", "--rm", &img.plain, "/etc/passwd"], 126);
    let absent = format!("{}/test/absent:1", f.reg.addr);
    n.code(&["run", "--rm", "--pull", "never", &absent, "true"], 125);
    n.code(&["run", "--rm", &absent, "true"], 125);

    // Entrypoint and Cmd: arguments replace Cmd, --entrypoint replaces Entrypoint.
    assert_eq!(n.run_rm(&[], &img.entry, &[]), "entry: default");
    assert_eq!(n.run_rm(&[], &img.entry, &["x", "y"]), "entry: x y");
    assert_eq!(
        n.run_rm(&["--entrypoint", "printf"], &img.entry, &["%s-%s", "a", "b"]),
        "a-b"
    );

    // --init: still the command's status and output; orphans are reaped, no zombie stays.
    let r = n.code(
        &[
            "run",
            "--rm",
            "--init",
            &img.plain,
            "sh",
            "-c",
            "sh -c 'sleep 0.1 &'; sleep 1; cat /proc/[0-9]*/stat; exit 7",
        ],
        7,
    );
    assert!(!r.stdout.contains(") Z "), "a zombie under --init:\n{}", r.show());

    assert!(
        n.ps_all_ids().is_empty(),
        "--rm leaves no container: {:?}",
        n.ps_all_ids()
    );
    n.assert_nothing_mounted();
}

#[test]
fn sets_environment_user_workdir_and_hostname() {
    let Some(f) = Fixture::new() else { return };
    let img = f.busybox();
    let n = &f.node;
    let path = images::DEFAULT_PATH.trim_start_matches("PATH=");

    assert_eq!(
        n.run_rm(
            &["-e", "FOO=bar"],
            &img.plain,
            &["sh", "-c", "echo $FOO $GREETING $PATH"]
        ),
        format!("bar from-image {path}"),
        "-e, then the image's Env"
    );
    assert_eq!(
        n.run_rm(
            &["-e", "GREETING=overridden"],
            &img.plain,
            &["sh", "-c", "echo $GREETING"]
        ),
        "overridden",
        "-e wins over the image's Env"
    );
    let env_file = f.dir("env").join("list");
    std::fs::write(&env_file, "# a comment\nA=1\nB=two words\n").expect("env file");
    assert_eq!(
        n.run_rm(
            &["--env-file", env_file.to_str().expect("utf-8")],
            &img.plain,
            &["sh", "-c", "echo \"$A|$B\""]
        ),
        "1|two words"
    );

    assert_eq!(n.run_rm(&[], &img.plain, &["id", "-u"]), "0");
    assert_eq!(n.run_rm(&["-u", "app"], &img.plain, &["id", "-u"]), APP_UID.to_string());
    assert_eq!(
        n.run_rm(&["-u", "app"], &img.plain, &["id", "-g"]),
        APP_UID.to_string(),
        "the primary group from /etc/passwd"
    );
    assert_eq!(
        n.run_rm(
            &["-u", "1234:5678"],
            &img.plain,
            &["sh", "-c", "echo $(id -u):$(id -g)"]
        ),
        "1234:5678"
    );
    assert_eq!(n.run_rm(&[], &img.user, &["id", "-un"]), "app", "the image's User");
    assert_eq!(
        n.run_rm(&["-u", "root"], &img.user, &["id", "-u"]),
        "0",
        "-u wins over User"
    );
    n.code(&["run", "--rm", "-u", "nosuchuser", &img.plain, "true"], 125);

    assert_eq!(n.run_rm(&[], &img.plain, &["pwd"]), "/srv", "the image's WorkingDir");
    assert_eq!(n.run_rm(&[], &img.user, &["pwd"]), "/home/app");
    assert_eq!(n.run_rm(&["-w", "/tmp"], &img.plain, &["pwd"]), "/tmp");

    assert_eq!(n.run_rm(&["-h", "berth-test"], &img.plain, &["hostname"]), "berth-test");
    let hosts = n.run_rm(&["-h", "berth-test"], &img.plain, &["cat", "/etc/hosts"]);
    assert!(hosts.contains("localhost"), "/etc/hosts names localhost:\n{hosts}");
    n.ok(&["run", "--rm", &img.plain, "cat", "/etc/resolv.conf"]);
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    assert_ne!(
        n.run_rm(&[], &img.plain, &["hostname"]),
        host_name.trim(),
        "a container has a hostname of its own"
    );
}

#[test]
fn namespaces_and_capabilities_isolate_the_container() {
    let Some(f) = Fixture::new() else { return };
    let img = f.busybox();
    let n = &f.node;

    // PID namespace: the shell is 1, `ls` another; none of the host's hundreds of processes.
    let procs = n.run_rm(&[], &img.plain, &["sh", "-c", "ls /proc; true"]);
    let pids: Vec<u64> = procs.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert!(
        pids.contains(&1) && pids.len() <= 3,
        "the container sees host pids: {pids:?}"
    );
    let ps = n.run_rm(&[], &img.plain, &["ps"]);
    assert!(ps.lines().count() <= 3, "ps inside lists host processes:\n{ps}");

    // Network: none has loopback alone; host shares the host's interfaces.
    let none = n.run_rm(&["--network", "none"], &img.plain, &["cat", "/proc/net/dev"]);
    assert_eq!(interfaces(&none), ["lo"], "--network none:\n{none}");
    let host = std::fs::read_to_string("/proc/net/dev").expect("/proc/net/dev");
    let shared = n.run_rm(&["--network", "host"], &img.plain, &["cat", "/proc/net/dev"]);
    assert_eq!(interfaces(&shared), interfaces(&host), "--network host");

    // Capabilities: docker's 14 by default, adjusted by --cap-add/--cap-drop; all with
    // --privileged.
    let status = |flags: &[&str]| n.run_rm(flags, &img.plain, &["cat", "/proc/self/status"]);
    assert_eq!(cap_eff(&status(&[])), DOCKER_CAPS, "default capabilities");
    assert_eq!(
        cap_eff(&status(&["--cap-drop", "CHOWN", "--cap-add", "NET_ADMIN"])),
        (DOCKER_CAPS & !1) | (1 << 12),
        "--cap-drop CHOWN --cap-add NET_ADMIN"
    );
    assert_eq!(cap_eff(&status(&["--cap-drop", "ALL"])), 0, "--cap-drop ALL");
    let ours = std::fs::read_to_string("/proc/self/status").expect("status");
    assert_eq!(cap_eff(&status(&["--privileged"])), cap_eff(&ours), "--privileged");
    assert_eq!(
        n.run_rm(
            &["-u", "app"],
            &img.plain,
            &["sh", "-c", "grep CapEff /proc/self/status"]
        ),
        "CapEff:\t0000000000000000",
        "a non-root user has no effective capabilities"
    );

    // Masked and read-only kernel paths (docker's defaults; /proc/kcore, the usual example,
    // is not built into every kernel, /proc/timer_list and /proc/keys are).
    for masked in ["/proc/timer_list", "/proc/keys"] {
        let host = std::fs::read(masked).map(|b| b.len()).unwrap_or(0);
        if host > 0 {
            assert_eq!(
                n.run_rm(&[], &img.plain, &["sh", "-c", &format!("wc -c < {masked}")]),
                "0",
                "{masked} is masked"
            );
        }
    }
    let r = n.run(&[
        "run",
        "--rm",
        &img.plain,
        "sh",
        "-c",
        "echo x > /proc/sys/kernel/domainname",
    ]);
    assert!(!r.status.success(), "/proc/sys is writable:\n{}", r.show());
    let r = n.run(&[
        "run",
        "--rm",
        &img.plain,
        "sh",
        "-c",
        "echo x > /sys/kernel/uevent_helper",
    ]);
    assert!(!r.status.success(), "/sys is writable:\n{}", r.show());
}

#[test]
fn memory_limit_kills_with_137() {
    let Some(f) = Fixture::new() else { return };
    let img = f.busybox();
    let n = &f.node;
    // busybox `tail` keeps everything it reads while looking for newlines: /dev/zero has none.
    let started = Instant::now();
    let r = n.run(&["run", "--rm", "--memory", "32m", &img.plain, "tail", "/dev/zero"]);
    assert_eq!(r.code(), Some(137), "the OOM killer should end it:\n{}", r.show());
    assert!(started.elapsed() < Duration::from_secs(60));
    // Within the limit, the same kind of work finishes.
    assert_eq!(
        n.run_rm(
            &["--memory", "64m"],
            &img.plain,
            &["sh", "-c", "x=$(head -c 8000000 /dev/zero | tr '\\0' a); echo ${#x}"]
        ),
        "8000000"
    );
    n.assert_nothing_mounted();
}

#[test]
fn pids_limit_stops_a_fork_loop() {
    let Some(f) = Fixture::new() else { return };
    let img = f.busybox();
    let n = &f.node;
    let script = "i=0; while [ $i -lt 30 ]; do sleep 3 & i=$((i+1)); done; echo spawned $i";
    let r = n.run(&["run", "--rm", "--pids-limit", "10", &img.plain, "sh", "-c", script]);
    assert!(
        !r.status.success() && r.stderr.contains("fork") && !r.stdout.contains("spawned"),
        "30 processes under --pids-limit 10:\n{}",
        r.show()
    );
    assert_eq!(
        n.run_rm(&["--pids-limit", "100"], &img.plain, &["sh", "-c", script]),
        "spawned 30"
    );
}

#[test]
fn cgroup_limits_are_written_and_removed_with_the_container() {
    let Some(f) = Fixture::new() else { return };
    let img = f.busybox();
    let n = &f.node;
    let id = n.run_d(&[
        "--memory",
        "64m",
        "--cpus",
        "0.5",
        "--cpu-shares",
        "512",
        "--pids-limit",
        "20",
        &img.plain,
        "sleep",
        "1000",
    ]);
    let pid = pid_of(n, &id);
    let table = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup table");
    let v2 = table.lines().all(|l| l.starts_with("0::"));
    let get = |c: &str, file: &str| {
        cgroup_setting(pid, c, file).unwrap_or_else(|| panic!("no {file} for pid {pid}; /proc/{pid}/cgroup:\n{table}"))
    };
    if v2 {
        assert_eq!(get("memory", "memory.max"), "67108864");
        assert_eq!(get("cpu", "cpu.max"), "50000 100000");
        assert_eq!(get("pids", "pids.max"), "20");
        // runc's conversion of 512 shares to a weight.
        assert_eq!(get("cpu", "cpu.weight"), (1 + (512 - 2) * 9999 / 262142).to_string());
    } else {
        assert_eq!(get("memory", "memory.limit_in_bytes"), "67108864");
        assert_eq!(get("cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(get("cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(get("cpu", "cpu.shares"), "512");
        assert_eq!(get("pids", "pids.max"), "20");
    }
    // The container's cgroup directories, to check they go with it.
    let dirs: Vec<std::path::PathBuf> = table
        .lines()
        .filter_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, ctl, path) = (p.next()?, p.next()?, p.next()?);
            let base = match ctl {
                "" if v2 => "/sys/fs/cgroup".to_owned(),
                "memory" | "pids" => format!("/sys/fs/cgroup/{ctl}"),
                _ => return None,
            };
            (path != "/").then(|| std::path::Path::new(&base).join(path.trim_start_matches('/')))
        })
        .filter(|d| d.is_dir())
        .collect();
    assert!(!dirs.is_empty(), "the container has no cgroup of its own:\n{table}");
    n.ok(&["rm", "-f", &id]);
    assert!(gone(pid, Duration::from_secs(10)), "rm -f left pid {pid} running");
    let deadline = Instant::now() + Duration::from_secs(5);
    while dirs.iter().any(|d| d.exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<_> = dirs.iter().filter(|d| d.exists()).collect();
    assert!(left.is_empty(), "rm -f left cgroups behind: {left:?}");
    n.assert_nothing_mounted();
}

#[test]
fn read_only_root_and_tmpfs() {
    let Some(f) = Fixture::new() else { return };
    let img = f.busybox();
    let n = &f.node;
    let r = n.run(&["run", "--rm", "--read-only", &img.plain, "touch", "/x"]);
    assert!(
        !r.status.success() && r.stderr.contains("Read-only file system"),
        "--read-only root accepted a write:\n{}",
        r.show()
    );
    assert_eq!(
        n.run_rm(
            &["--read-only", "--tmpfs", "/tmp"],
            &img.plain,
            &["sh", "-c", "touch /tmp/x && grep ' /tmp ' /proc/mounts"]
        )
        .split_whitespace()
        .next(),
        Some("tmpfs"),
        "--tmpfs /tmp is a writable tmpfs"
    );
    // --tmpfs options reach the mount: a 1 MiB tmpfs holds at most 1 MiB.
    let kept = n.run_rm(
        &["--tmpfs", "/scratch:size=1m"],
        &img.plain,
        &["sh", "-c", "head -c 2000000 /dev/zero > /scratch/f; wc -c < /scratch/f"],
    );
    assert!(
        kept.parse::<u64>().is_ok_and(|k| k <= 1 << 20),
        "--tmpfs /scratch:size=1m took {kept} bytes"
    );
    assert_eq!(
        n.run_rm(
            &["--read-only"],
            &img.plain,
            &["sh", "-c", "touch /dev/shm/x && echo ok"]
        ),
        "ok",
        "/dev/shm stays writable under --read-only, as with docker"
    );
    // Without --read-only the root is writable, and each container writes to its own layer.
    assert_eq!(
        n.run_rm(&[], &img.plain, &["sh", "-c", "echo mine > /persist && cat /persist"]),
        "mine"
    );
    let r = n.run(&["run", "--rm", &img.plain, "cat", "/persist"]);
    assert!(!r.status.success(), "a container saw another's write:\n{}", r.show());
    n.assert_nothing_mounted();
}

#[test]
fn bind_volumes_read_write_and_read_only() {
    let Some(f) = Fixture::new() else { return };
    let img = f.busybox();
    let n = &f.node;
    let vol = f.dir("volume");
    std::fs::write(vol.join("host.txt"), "from host\n").expect("host file");
    let v = vol.to_str().expect("utf-8");

    assert_eq!(
        n.run_rm(
            &["-v", &format!("{v}:/data")],
            &img.plain,
            &["sh", "-c", "cat /data/host.txt; echo from container > /data/ctr.txt"]
        ),
        "from host"
    );
    assert_eq!(
        std::fs::read_to_string(vol.join("ctr.txt")).ok().as_deref(),
        Some("from container\n"),
        "a write to a bind volume reaches the host"
    );

    let r = n.run(&[
        "run",
        "--rm",
        "-v",
        &format!("{v}:/data:ro"),
        &img.plain,
        "sh",
        "-c",
        "echo no > /data/ctr.txt",
    ]);
    assert!(
        !r.status.success() && r.stderr.contains("Read-only"),
        ":ro accepted a write:\n{}",
        r.show()
    );
    assert_eq!(
        std::fs::read_to_string(vol.join("ctr.txt")).ok().as_deref(),
        Some("from container\n")
    );

    // A mount point the image lacks is made; the volume outlives the container.
    assert_eq!(
        n.run_rm(
            &["-v", &format!("{v}:/new/mnt")],
            &img.plain,
            &["cat", "/new/mnt/host.txt"]
        ),
        "from host"
    );
    assert!(vol.join("host.txt").is_file() && vol.join("ctr.txt").is_file());
    n.assert_nothing_mounted();
}

#[test]
fn whiteouts_delete_files_and_opaque_directories_hide_lower_content() {
    let Some(f) = Fixture::new() else { return };
    let image = images::whiteout_layout(&f.dir("images")).unwrap_or_else(|e| panic!("{e:#}"));
    let img = f.push(&image, "test/whiteout");
    let n = &f.node;
    assert_eq!(
        n.run_rm(&[], &img, &["ls", "-a", "/data"]),
        ".\n..\nb",
        "/data/a was deleted"
    );
    assert_eq!(n.run_rm(&[], &img, &["ls", "-a", "/opq"]), ".\n..\ny", "/opq is opaque");
    assert_eq!(n.run_rm(&[], &img, &["cat", "/data/b", "/opq/y"]), "b\ny");
    let r = n.run(&["run", "--rm", &img, "cat", "/data/a"]);
    assert!(!r.status.success(), "/data/a should be gone:\n{}", r.show());

    // Stored as overlay whiteouts: no OCI marker file remains in any snapshot, and the
    // deletion is a 0/0 character device.
    for marker in [".wh.a", ".wh..wh..opq"] {
        let found = find_named(&n.root, marker);
        assert!(found.is_empty(), "OCI whiteouts stored as files: {found:?}");
    }
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    let devices: Vec<_> = find_named(&n.root, "a")
        .into_iter()
        .filter(|p| p.parent().is_some_and(|d| d.ends_with("data")))
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0))
        .collect();
    assert_eq!(
        devices.len(),
        1,
        "one overlay whiteout (char 0/0) for data/a: {devices:?}"
    );
    n.assert_nothing_mounted();
}

#[test]
fn an_image_of_131_layers_runs() {
    let Some(f) = Fixture::new() else { return };
    let image = images::many_layers_layout(&f.dir("images"), 130).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(image.layers.len(), 131);
    let img = f.push(&image, "test/many");
    let n = &f.node;
    assert_eq!(
        n.run_rm(
            &[],
            &img,
            &["sh", "-c", "ls /layers | wc -l; cat /layers/000 /layers/129"]
        ),
        "130\nlayer 0\nlayer 129"
    );
    let id = n.run_d(&[&img, "sleep", "1000"]);
    assert_eq!(n.ok(&["exec", &id, "cat", "/layers/064"]).out(), "layer 64");
    n.ok(&["rm", "-f", &id]);
    n.assert_nothing_mounted();
}

#[test]
fn hostile_layers_are_refused() {
    let Some(f) = Fixture::new() else { return };
    let marker = format!("{}-{}", std::process::id(), f.reg.port());
    let h = images::hostile_layout(&f.dir("images"), &marker).unwrap_or_else(|e| panic!("{e:#}"));
    let dotdot = f.push(&h.dotdot, "test/hostile");
    let symlink = f.push(&h.symlink, "test/hostile");
    let n = &f.node;
    for (img, entry, short) in [(&dotdot, &h.entries[0], "escape"), (&symlink, &h.entries[1], "evil")] {
        let r = n.fails(&["pull", img]);
        assert!(
            r.stderr.contains(entry.as_str()) || r.stderr.contains(short),
            "the error should name the entry {entry:?}:\n{}",
            r.show()
        );
        n.code(&["run", "--rm", img, "true"], 125);
        let images = n.ok(&["images"]);
        assert!(
            !images.stdout.contains("test/hostile"),
            "a refused image is listed:\n{}",
            images.show()
        );
        n.assert_nothing_mounted();
    }
    for escaped in [
        std::path::PathBuf::from(format!("/tmp/pwned-{marker}")),
        std::path::PathBuf::from(format!("/tmp/escape-{marker}")),
        std::path::PathBuf::from(format!("/escape-{marker}")),
    ] {
        assert!(!escaped.exists(), "a hostile entry escaped to {}", escaped.display());
    }
    for name in [format!("escape-{marker}"), format!("pwned-{marker}")] {
        let found = find_named(f.tmp.path(), &name);
        assert!(found.is_empty(), "a hostile entry was written: {found:?}");
    }
    // The refusal leaves the node usable.
    let img = f.busybox();
    assert_eq!(n.run_rm(&[], &img.plain, &["echo", "fine"]), "fine");
}

#[test]
fn detached_container_logs_stop_and_rm() {
    let Some(f) = Fixture::new() else { return };
    let img = f.busybox();
    let n = &f.node;
    let id = n.run_d(&[
        "--name",
        "web",
        &img.plain,
        "sh",
        "-c",
        "echo started; echo oops >&2; sleep 1000",
    ]);
    let logs = n.logs_until("web", "started", Duration::from_secs(15));
    let both = format!("{}{}", logs.stdout, logs.stderr);
    assert!(both.contains("oops"), "stderr goes to the log too:\n{}", logs.show());

    let ps = n.ok(&["ps"]);
    assert!(
        ps.stdout.contains("web") && ps.stdout.contains(&id[..12]),
        "ps lists the running container:\n{}",
        ps.show()
    );
    let q = n.ok(&["ps", "-q"]);
    assert!(
        q.stdout
            .lines()
            .any(|l| id.starts_with(l.trim()) && !l.trim().is_empty()),
        "{}",
        q.show()
    );
    let json = n.ok(&["ps", "--json"]);
    assert!(
        serde_json::from_str::<serde_json::Value>(&json.stdout).is_ok() && json.stdout.contains(&id[..12]),
        "ps --json:\n{}",
        json.show()
    );
    let state = n.inspect("web");
    assert_eq!(state["Id"], id, "{state:#}");
    assert_eq!(state["Name"].as_str().map(|s| s.trim_start_matches('/')), Some("web"));
    assert_eq!(state["State"]["Status"], "running", "{state:#}");
    let pid = pid_of(n, "web");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(!state["Snapshot"].is_null(), "inspect shows the snapshot: {state:#}");

    // sh as PID 1 ignores SIGTERM: stop waits -t seconds, then SIGKILL.
    let stop = n.ok(&["stop", "-t", "2", "web"]);
    assert!(
        stop.elapsed >= Duration::from_millis(1500) && stop.elapsed < Duration::from_secs(10),
        "stop -t 2 of a process that ignores SIGTERM took {:?}: it should wait ~2 s, then SIGKILL",
        stop.elapsed
    );
    assert!(gone(pid, Duration::from_secs(5)), "pid {pid} survived stop");
    let waited = n.ok(&["wait", "web"]);
    assert!(
        ["137", "143"].contains(&waited.last_line()),
        "wait after stop:\n{}",
        waited.show()
    );
    assert!(!n.ok(&["ps"]).stdout.contains("web"), "ps lists a stopped container");
    assert!(
        n.ok(&["ps", "-a"]).stdout.contains("web"),
        "ps -a forgets a stopped container"
    );
    let state = n.inspect("web");
    assert_eq!(state["State"]["Status"], "exited", "{state:#}");
    assert!(
        [137, 143].contains(&state["State"]["ExitCode"].as_i64().unwrap_or(-1)),
        "{state:#}"
    );
    // Logs outlive the process.
    assert!(n.ok(&["logs", "web"]).stdout.contains("started"));

    n.ok(&["rm", "web"]);
    assert!(!listed(n, &id), "rm left it in ps -a");
    assert!(!n.ok(&["ps", "-a"]).stdout.contains("web"));
    n.fails(&["inspect", "web"]);
    n.assert_nothing_mounted();
}

#[test]
fn logs_tail_timestamps_and_follow() {
    let Some(f) = Fixture::new() else { return };
    let img = f.busybox();
    let n = &f.node;
    let id = n.run_d(&[
        &img.plain,
        "sh",
        "-c",
        "echo one; echo two; echo three; sleep 2; echo four",
    ]);
    n.logs_until(&id, "three", Duration::from_secs(15));
    let tail = n.ok(&["logs", "--tail", "2", &id]);
    assert_eq!(tail.stdout, "two\nthree\n", "logs --tail 2:\n{}", tail.show());
    let stamped = n.ok(&["logs", "-t", &id]);
    for line in stamped.stdout.lines() {
        assert!(
            line.len() > 20 && line.starts_with("20") && line.as_bytes()[4] == b'-',
            "logs -t: a line without an RFC 3339 time:\n{}",
            stamped.show()
        );
    }
    // -f follows until the container exits.
    let follow = n.ok(&["logs", "-f", &id]);
    assert_eq!(follow.stdout, "one\ntwo\nthree\nfour\n", "logs -f:\n{}", follow.show());
    assert_eq!(n.ok(&["wait", &id]).last_line(), "0");
    n.ok(&["rm", &id]);
    n.assert_nothing_mounted();
}

#[test]
fn exec_runs_in_the_container_namespaces() {
    let Some(f) = Fixture::new() else { return };
    let img = f.busybox();
    let n = &f.node;
    n.run_d(&["--name", "box", "-h", "boxhost", &img.plain, "sleep", "1000"]);
    let pid = pid_of(n, "box");
    assert_eq!(n.ok(&["exec", "box", "echo", "inside"]).out(), "inside");
    assert_eq!(
        n.ok(&["exec", "box", "hostname"]).out(),
        "boxhost",
        "same UTS namespace"
    );
    assert!(
        n.ok(&["exec", "box", "cat", "/proc/1/cmdline"])
            .stdout
            .contains("sleep"),
        "same PID namespace: PID 1 is the container's sleep"
    );
    n.ok(&["exec", "box", "sh", "-c", "echo shared > /tmp/f"]);
    assert_eq!(n.ok(&["exec", "box", "cat", "/tmp/f"]).out(), "shared", "same root");
    assert_eq!(
        n.ok(&["exec", "-e", "X=1", "box", "sh", "-c", "echo $X $GREETING"])
            .out(),
        "1 from-image"
    );
    assert_eq!(n.ok(&["exec", "-w", "/tmp", "box", "pwd"]).out(), "/tmp");
    assert_eq!(
        n.ok(&["exec", "-u", "app", "box", "id", "-u"]).out(),
        APP_UID.to_string()
    );
    let r = n.run_with_input(&["exec", "-i", "box", "cat"], b"via exec\n");
    assert_eq!(r.stdout, "via exec\n", "exec -i:\n{}", r.show());
    n.code(&["exec", "box", "sh", "-c", "exit 5"], 5);
    n.code(&["exec", "box", "no-such-command"], 127);
    let caps = n.ok(&["exec", "box", "cat", "/proc/self/status"]);
    assert_eq!(
        cap_eff(&caps.stdout),
        DOCKER_CAPS,
        "exec gets the container's capabilities"
    );

    n.ok(&["rm", "-f", "box"]);
    assert!(gone(pid, Duration::from_secs(10)), "rm -f left pid {pid}");
    n.fails(&["exec", "box", "true"]);
    n.assert_nothing_mounted();
}

#[test]
fn kill_wait_and_rm() {
    let Some(f) = Fixture::new() else { return };
    let img = f.busybox();
    let n = &f.node;
    let a = n.run_d(&[&img.plain, "sleep", "1000"]);
    let b = n.run_d(&[&img.plain, "sh", "-c", "exit 7"]);
    n.ok(&["kill", &a]);
    let w = n.ok(&["wait", &a, &b]);
    assert_eq!(
        w.stdout.lines().map(str::trim).collect::<Vec<_>>(),
        ["137", "7"],
        "wait prints each exit code:\n{}",
        w.show()
    );
    let c = n.run_d(&[
        &img.plain,
        "sh",
        "-c",
        "trap 'exit 42' USR1; echo ready; while true; do sleep 0.1; done",
    ]);
    n.logs_until(&c, "ready", Duration::from_secs(15));
    n.ok(&["kill", "-s", "USR1", &c]);
    assert_eq!(n.ok(&["wait", &c]).last_line(), "42", "kill -s USR1 reaches the trap");

    // stop sends SIGTERM first: a process that handles it exits with its own status, at once.
    let e = n.run_d(&[
        &img.plain,
        "sh",
        "-c",
        "trap 'exit 0' TERM; echo ready; while true; do sleep 0.1; done",
    ]);
    n.logs_until(&e, "ready", Duration::from_secs(15));
    let stop = n.ok(&["stop", "-t", "30", &e]);
    assert!(
        stop.elapsed < Duration::from_secs(10),
        "stop ignored the TERM handler:\n{}",
        stop.show()
    );
    assert_eq!(n.ok(&["wait", &e]).last_line(), "0", "exited through its TERM trap");
    n.ok(&["rm", &e]);

    let d = n.run_d(&[&img.plain, "sleep", "1000"]);
    let r = n.run(&["rm", &d]);
    assert!(
        !r.status.success(),
        "rm of a running container without -f:\n{}",
        r.show()
    );
    assert!(listed(n, &d));
    n.ok(&["rm", "-f", &d]);
    n.ok(&["rm", &a, &b, &c]);
    assert!(n.ps_all_ids().is_empty(), "{:?}", n.ps_all_ids());
    n.assert_nothing_mounted();
}

#[test]
fn rm_flag_and_names() {
    let Some(f) = Fixture::new() else { return };
    let img = f.busybox();
    let n = &f.node;
    n.ok(&["run", "--rm", "--name", "gone", &img.plain, "true"]);
    n.code(&["run", "--name", "kept", &img.plain, "sh", "-c", "exit 2"], 2);
    let all = n.ok(&["ps", "-a"]);
    assert!(
        all.stdout.contains("kept") && !all.stdout.contains("gone"),
        "--rm removes, its absence keeps:\n{}",
        all.show()
    );
    let state = n.inspect("kept");
    assert_eq!(state["State"]["Status"], "exited", "{state:#}");
    assert_eq!(state["State"]["ExitCode"], 2, "{state:#}");
    n.code(&["run", "--name", "kept", &img.plain, "true"], 125);

    // -d --rm: removed once it exits.
    let id = n.run_d(&["--rm", &img.plain, "true"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while listed(n, &id) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!listed(n, &id), "run -d --rm left the container after it exited");
    n.ok(&["rm", "kept"]);
    n.assert_nothing_mounted();
}

#[test]
fn runc_runs_the_same_image() {
    let Some(f) = Fixture::new() else { return };
    if !require("runc") {
        return;
    }
    let img = f.busybox();
    let n = &f.node;
    let r = n.ok(&[
        "--runtime",
        "runc",
        "run",
        "--rm",
        "-e",
        "FOO=bar",
        "-h",
        "viarunc",
        "-u",
        "app",
        &img.plain,
        "sh",
        "-c",
        "echo $FOO $(hostname) $(id -u) $(pwd) $GREETING",
    ]);
    assert_eq!(r.out(), "bar viarunc 1000 /srv from-image", "{}", r.show());
    n.code(
        &["--runtime", "runc", "run", "--rm", &img.plain, "sh", "-c", "exit 4"],
        4,
    );
    let r = n.run(&[
        "--runtime",
        "runc",
        "run",
        "--rm",
        "--memory",
        "32m",
        &img.plain,
        "tail",
        "/dev/zero",
    ]);
    assert_eq!(r.code(), Some(137), "{}", r.show());
    let status = n.ok(&[
        "--runtime",
        "runc",
        "run",
        "--rm",
        &img.plain,
        "cat",
        "/proc/self/status",
    ]);
    assert_eq!(cap_eff(&status.stdout), DOCKER_CAPS, "the same spec through runc");

    let r = n.ok(&[
        "--runtime",
        "runc",
        "run",
        "-d",
        &img.plain,
        "sh",
        "-c",
        "echo via runc; sleep 1000",
    ]);
    let id = r.last_line().to_owned();
    n.logs_until(&id, "via runc", Duration::from_secs(15));
    let stop = n.ok(&["stop", "-t", "1", &id]);
    assert!(stop.elapsed < Duration::from_secs(10), "{}", stop.show());
    n.ok(&["rm", &id]);
    n.assert_nothing_mounted();
}

#[test]
fn prune_frees_what_no_image_or_container_uses() {
    let Some(f) = Fixture::new() else { return };
    let img = f.busybox();
    let whiteout = images::whiteout_layout(&f.dir("images")).unwrap_or_else(|e| panic!("{e:#}"));
    let wimg = f.push(&whiteout, "test/whiteout");
    let n = &f.node;
    n.ok(&["pull", &img.plain]);
    n.ok(&["pull", &wimg]);
    let listing = n.ok(&["images"]);
    for want in ["test/busybox", "test/whiteout"] {
        assert!(
            listing.stdout.contains(want),
            "images should list {want}:\n{}",
            listing.show()
        );
    }
    // The manifest digest, or docker's IMAGE ID (the config digest).
    assert!(
        listing.stdout.contains(&img.images.plain.digest[7..19])
            || listing.stdout.contains(&img.images.plain.config_digest[7..19]),
        "images should identify the image by digest:\n{}",
        listing.show()
    );
    let json = n.ok(&["images", "--json"]);
    assert!(
        serde_json::from_str::<serde_json::Value>(&json.stdout).is_ok()
            && json.stdout.contains(&img.images.plain.digest),
        "images --json:\n{}",
        json.show()
    );
    let inspected = n.ok(&["inspect", &img.plain]);
    assert!(
        inspected.stdout.contains(&img.images.plain.digest),
        "{}",
        inspected.show()
    );

    // Everything in use: prune keeps what runs.
    n.ok(&["run", "--name", "keep", &wimg, "true"]);
    n.ok(&["prune"]);
    n.ok(&["run", "--rm", "--pull", "never", &img.plain, "true"]);
    n.ok(&["run", "--rm", "--pull", "never", &wimg, "true"]);

    // The busybox layer is shared: removing one image frees its manifest and config only.
    n.ok(&["rmi", &img.plain]);
    assert!(!n.ok(&["images"]).stdout.contains("test/busybox"), "rmi left it listed");
    let freed = reclaimed(&n.ok(&["prune"]));
    assert!(freed > 0, "prune after rmi reclaimed nothing");
    assert_eq!(n.run_rm(&["--pull", "never"], &wimg, &["cat", "/data/b"]), "b");

    // An image removed while a container uses its layers: prune must keep the snapshots.
    let rmi = n.run(&["rmi", &wimg]);
    let _ = reclaimed(&n.ok(&["prune"]));
    assert!(
        !find_named(&n.root, "busybox").is_empty(),
        "prune removed snapshots a container uses (rmi said: {})",
        rmi.show()
    );
    n.ok(&["inspect", "keep"]);

    n.ok(&["rm", "keep"]);
    if !rmi.status.success() {
        n.ok(&["rmi", &wimg]);
    }
    let before = du(&n.root);
    let freed = reclaimed(&n.ok(&["prune"]));
    let after = du(&n.root);
    assert!(
        freed >= 1_000_000,
        "prune of a busybox snapshot and its blob reclaimed only {freed} bytes"
    );
    assert!(
        after + 1_000_000 <= before,
        "the root shrank only from {before} to {after} bytes"
    );
    for name in ["busybox", "busybox.link", "motd"] {
        let left = find_named(&n.root, name);
        assert!(left.is_empty(), "snapshot files survived prune: {left:?}");
    }
    for (digest, _) in whiteout.layers.iter().chain(&img.images.plain.layers) {
        let left = find_named(&n.root, &digest[7..]);
        assert!(left.is_empty(), "content blob {digest} survived prune: {left:?}");
    }
    let listing = n.ok(&["images"]);
    assert!(!listing.stdout.contains("test/"), "{}", listing.show());
    n.assert_nothing_mounted();
}

#[test]
fn pulls_reuse_layers_already_present() {
    let Some(f) = Fixture::new() else { return };
    let img = f.busybox();
    let whiteout = images::whiteout_layout(&f.dir("images")).unwrap_or_else(|e| panic!("{e:#}"));
    let wimg = f.push(&whiteout, "test/whiteout");
    // No --plain-http: plain HTTP on loopback is found without it.
    let mut n = Node::new(&f.tmp.path().join("root-no-flag"));
    n.global.clear();
    let base = &img.images.plain.layers[0].0;
    assert_eq!(base, &whiteout.layers[0].0, "the two images share the busybox layer");

    let first = n.ok(&["pull", &img.plain]);
    assert_eq!(first.last_line(), img.images.plain.digest);
    assert_eq!(f.blob_gets(base), 1, "registry log:\n{}", f.reg.log());
    let again = n.ok(&["pull", &img.plain]);
    assert_eq!(again.last_line(), img.images.plain.digest);
    n.ok(&["pull", &img.user]);
    n.ok(&["pull", &wimg]);
    assert_eq!(
        f.blob_gets(base),
        1,
        "the shared layer was downloaded again; registry log:\n{}",
        f.reg.log()
    );
    for (d, _) in &whiteout.layers[1..] {
        assert_eq!(f.blob_gets(d), 1, "layer {d}");
    }
    assert_eq!(n.run_rm(&["--pull", "never"], &img.user, &["id", "-un"]), "app");
    assert_eq!(n.run_rm(&["--pull", "never"], &wimg, &["ls", "/opq"]), "y");
    // --pull always checks the registry again, still without downloading a known layer.
    n.ok(&["run", "--rm", "--pull", "always", &img.plain, "true"]);
    assert_eq!(f.blob_gets(base), 1);
    n.assert_nothing_mounted();
}
