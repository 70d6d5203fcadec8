use super::*;
use crate::spec::{Cpu, DeviceRule, Memory, Pids};
use std::fs;

/// This machine's shape: v1 controllers under /sys/fs/cgroup plus an empty unified mount.
const HYBRID: &str = "\
25 1 0:23 / / rw,relatime - overlay overlay rw,lowerdir=/a,upperdir=/b,workdir=/c
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
90 25 0:32 / /var/lib/berth/c1/rootfs/sys/fs/cgroup/memory ro - cgroup cgroup rw,memory
";

#[test]
fn detects_hybrid_v1_and_v2() {
    let root = Path::new("/sys/fs/cgroup");
    let l = detect(HYBRID, root).unwrap();
    assert_eq!(l.version, Version::Hybrid);
    assert_eq!(l.unified.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
    assert_eq!(
        l.hierarchies,
        vec![
            Hierarchy {
                controllers: vec!["cpu".into(), "cpuacct".into()],
                mount: "/sys/fs/cgroup/cpu,cpuacct".into()
            },
            Hierarchy {
                controllers: vec!["memory".into()],
                mount: "/sys/fs/cgroup/memory".into()
            },
            Hierarchy {
                controllers: vec!["pids".into()],
                mount: "/sys/fs/cgroup/pids".into()
            },
            Hierarchy {
                controllers: vec!["name=systemd".into()],
                mount: "/sys/fs/cgroup/systemd".into()
            },
        ]
    );

    let v1: String = HYBRID
        .lines()
        .filter(|l| !l.contains("cgroup2"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(detect(&v1, root).unwrap().version, Version::V1);

    let v2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
    let l = detect(v2, root).unwrap();
    assert_eq!(l.version, Version::V2);
    assert!(l.hierarchies.is_empty());
    assert_eq!(l.unified.as_deref(), Some(root));

    assert!(matches!(
        detect("25 1 0:23 / / rw - overlay overlay rw\n", root),
        Err(Error::NotMounted(_))
    ));
}

#[test]
fn mountinfo_escapes_are_undone() {
    let mi = "32 31 0:29 / /tmp/a\\040b/memory rw - cgroup cgroup rw,memory\n";
    let l = detect(mi, Path::new("/tmp/a b")).unwrap();
    assert_eq!(l.hierarchies[0].mount, Path::new("/tmp/a b/memory"));
}

#[test]
fn cgroups_path_is_checked() {
    assert_eq!(relative_path("/berth/c1").unwrap(), Path::new("berth/c1"));
    assert_eq!(relative_path("berth/c1").unwrap(), Path::new("berth/c1"));
    assert!(relative_path("../../etc").is_err());
    assert!(relative_path("/").is_err());
    assert!(relative_path("system.slice:berth:c1").is_err());
}

/// A temporary directory shaped like a v1 host, and the mountinfo describing it.
fn fake_v1(controllers: &[&str]) -> (tempfile::TempDir, String) {
    let d = tempfile::tempdir().unwrap();
    let mut mi = String::new();
    for (i, c) in controllers.iter().enumerate() {
        let mount = d.path().join(c);
        fs::create_dir(&mount).unwrap();
        mi.push_str(&format!(
            "{} 31 0:{i} / {} rw,relatime - cgroup cgroup rw,{c}\n",
            40 + i,
            mount.display()
        ));
    }
    (d, mi)
}

fn resources() -> Resources {
    Resources {
        memory: Some(Memory {
            limit: Some(64 << 20),
            swap: Some(128 << 20),
        }),
        cpu: Some(Cpu {
            shares: Some(1024),
            quota: Some(50_000),
            period: Some(100_000),
        }),
        pids: Some(Pids { limit: 10 }),
        devices: vec![
            DeviceRule {
                allow: false,
                kind: None,
                major: None,
                minor: None,
                access: None,
            },
            DeviceRule {
                allow: true,
                kind: Some("c".into()),
                major: Some(1),
                minor: Some(3),
                access: Some("rwm".into()),
            },
        ],
    }
}

fn read(p: impl AsRef<Path>) -> String {
    fs::read_to_string(p.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", p.as_ref().display()))
}

#[test]
fn v1_creates_applies_and_lists() {
    let (d, mi) = fake_v1(&["cpu,cpuacct", "memory", "pids", "devices", "cpuset", "freezer"]);
    let root = d.path();
    fs::write(root.join("cpuset/cpuset.cpus"), "0-1\n").unwrap();
    fs::write(root.join("cpuset/cpuset.mems"), "0\n").unwrap();
    let m = manager_for("/berth/c1", root, &mi).unwrap();
    assert_eq!(m.version(), Version::V1);
    m.create().unwrap();
    for c in ["cpu,cpuacct", "memory", "pids", "devices", "cpuset", "freezer"] {
        assert!(root.join(c).join("berth/c1").is_dir(), "{c}");
    }
    // cpuset levels inherit cpus and mems, so tasks may join.
    assert_eq!(read(root.join("cpuset/berth/cpuset.cpus")), "0-1");
    assert_eq!(read(root.join("cpuset/berth/c1/cpuset.mems")), "0");

    // Swap accounting present: memsw is written too (after the limit, as it shrinks here).
    fs::write(
        root.join("memory/berth/c1/memory.memsw.limit_in_bytes"),
        "9223372036854771712\n",
    )
    .unwrap();
    m.apply(&resources()).unwrap();
    let mem = root.join("memory/berth/c1");
    assert_eq!(read(mem.join("memory.limit_in_bytes")), "67108864");
    assert_eq!(read(mem.join("memory.memsw.limit_in_bytes")), "134217728");
    let cpu = root.join("cpu,cpuacct/berth/c1");
    assert_eq!(read(cpu.join("cpu.shares")), "1024");
    assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "50000");
    assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
    assert_eq!(read(root.join("pids/berth/c1/pids.max")), "10");
    assert_eq!(read(root.join("devices/berth/c1/devices.deny")), "a *:* rwm");
    assert_eq!(read(root.join("devices/berth/c1/devices.allow")), "c 1:3 rwm");

    m.add_task(4242).unwrap();
    assert_eq!(read(root.join("freezer/berth/c1/cgroup.procs")), "4242");
    assert_eq!(m.pids().unwrap(), vec![4242]);

    assert!(!m.oom_killed().unwrap());
    fs::write(
        mem.join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    )
    .unwrap();
    assert!(m.oom_killed().unwrap());

    let names: Vec<String> = m.dirs().into_iter().map(|d| d.name).collect();
    assert_eq!(names, ["cpu,cpuacct", "memory", "pids", "devices", "cpuset", "freezer"]);
}

#[test]
fn v1_without_swap_accounting_and_unlimited_values() {
    let (d, mi) = fake_v1(&["memory", "pids"]);
    let m = manager_for("c2", d.path(), &mi).unwrap();
    m.create().unwrap();
    m.apply(&Resources {
        memory: Some(Memory {
            limit: Some(-1),
            swap: Some(-1),
        }),
        pids: Some(Pids { limit: 0 }),
        ..Default::default()
    })
    .unwrap();
    let mem = d.path().join("memory/c2");
    assert_eq!(read(mem.join("memory.limit_in_bytes")), "-1");
    assert!(!mem.join("memory.memsw.limit_in_bytes").exists());
    assert_eq!(read(d.path().join("pids/c2/pids.max")), "max");
    // No cpu hierarchy: a cpu limit is an error that names the controller.
    let err = m
        .apply(&Resources {
            cpu: Some(Cpu {
                shares: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap_err();
    assert!(err.to_string().contains("cpu controller"), "{err}");
}

#[test]
fn v2_enables_controllers_and_converts_limits() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let mi = format!(
        "30 23 0:26 / {} rw shared:4 - cgroup2 cgroup2 rw,nsdelegate\n",
        root.display()
    );
    fs::write(root.join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
    // `berth` already exists and offers fewer controllers (as a parent may).
    fs::create_dir(root.join("berth")).unwrap();
    fs::write(root.join("berth/cgroup.controllers"), "cpu memory pids\n").unwrap();

    let m = manager_for("berth/c1", root, &mi).unwrap();
    assert_eq!(m.version(), Version::V2);
    m.create().unwrap();
    assert_eq!(
        read(root.join("cgroup.subtree_control")),
        "+cpuset +cpu +io +memory +pids"
    );
    assert_eq!(read(root.join("berth/cgroup.subtree_control")), "+cpu +memory +pids");
    let leaf = root.join("berth/c1");
    assert!(leaf.is_dir());
    assert!(!leaf.join("cgroup.subtree_control").exists());

    fs::write(leaf.join("memory.swap.max"), "max\n").unwrap();
    // Device rules on v2 are an eBPF program attached to the cgroup: on this fake directory
    // (not a cgroup) that must fail, never silently run without them.
    let e = m.apply(&resources()).unwrap_err().to_string();
    assert!(e.contains("enforce device rules"), "{e}");
    let mut no_devices = resources();
    no_devices.devices.clear();
    m.apply(&no_devices).unwrap();
    assert_eq!(read(leaf.join("memory.max")), "67108864");
    assert_eq!(read(leaf.join("memory.swap.max")), "67108864"); // 128 MiB memory+swap − 64 MiB
    assert_eq!(read(leaf.join("cpu.weight")), "39");
    assert_eq!(read(leaf.join("cpu.max")), "50000 100000");
    assert_eq!(read(leaf.join("pids.max")), "10");
    assert!(!leaf.join("devices.allow").exists());

    m.add_task(7).unwrap();
    assert_eq!(m.pids().unwrap(), vec![7]);
    assert!(!m.oom_killed().unwrap());
    fs::write(leaf.join("memory.events"), "low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n").unwrap();
    assert!(m.oom_killed().unwrap());
    assert_eq!(
        m.dirs(),
        vec![CgroupDir {
            name: String::new(),
            path: leaf
        }]
    );
}

#[test]
fn v2_conversions() {
    assert_eq!(v2::cpu_weight(0), None);
    assert_eq!(v2::cpu_weight(2), Some(1));
    assert_eq!(v2::cpu_weight(1024), Some(39));
    assert_eq!(v2::cpu_weight(262_144), Some(10_000));
    assert_eq!(v2::cpu_weight(1_000_000), Some(10_000));

    let mem = |limit, swap| Memory { limit, swap };
    assert_eq!(v2::swap_max(&mem(Some(100), None)).unwrap(), None);
    assert_eq!(v2::swap_max(&mem(Some(100), Some(-1))).unwrap().as_deref(), Some("max"));
    assert_eq!(v2::swap_max(&mem(Some(100), Some(100))).unwrap().as_deref(), Some("0"));
    assert_eq!(
        v2::swap_max(&mem(Some(100), Some(250))).unwrap().as_deref(),
        Some("150")
    );
    assert!(v2::swap_max(&mem(Some(100), Some(50))).is_err());
    assert!(v2::swap_max(&mem(None, Some(50))).is_err());

    let cpu = |quota, period| Cpu {
        shares: None,
        quota,
        period,
    };
    assert_eq!(v2::cpu_max(&cpu(None, None)), None);
    assert_eq!(v2::cpu_max(&cpu(Some(20_000), None)).as_deref(), Some("20000 100000"));
    assert_eq!(v2::cpu_max(&cpu(Some(-1), Some(50_000))).as_deref(), Some("max 50000"));
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A unique cgroup path for a real-host test, under a shared `berth-test` parent.
pub(crate) fn unique_path(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("berth-test/{tag}-{}-{nanos}", std::process::id())
}

/// The real cgroup filesystem of this host: a process joins, is listed, limited, killed, and
/// the cgroup is removed (retrying while the killed task is torn down).
#[test]
fn real_host_cgroup_lifecycle() {
    if !is_root() {
        assert!(
            !berth_conformance::peers::under_ci(),
            "cgroup tests need root under CI=true"
        );
        eprintln!("SKIP: real_host_cgroup_lifecycle needs root");
        return;
    }
    let mi = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = Path::new("/sys/fs/cgroup");
    let m = manager_for(&unique_path("lifecycle"), root, &mi).unwrap();
    m.create().unwrap();
    m.apply(&Resources {
        memory: Some(Memory {
            limit: Some(256 << 20),
            swap: None,
        }),
        pids: Some(Pids { limit: 16 }),
        ..Default::default()
    })
    .unwrap();
    let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
    let pid = child.id() as i32;
    m.add_task(pid).unwrap();
    assert_eq!(m.pids().unwrap(), vec![pid]);
    let own = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let dir = &m.dirs()[0].path;
    let rel = dir.strip_prefix(root).unwrap().iter().skip(1).collect::<PathBuf>();
    assert!(own.contains(&format!("/{}", rel.display())), "{own}");
    assert!(!m.oom_killed().unwrap());

    // Reap in the background so the killed child does not linger as our zombie.
    let reaper = std::thread::spawn(move || child.wait().unwrap());
    m.kill_all(Signal::SIGKILL).unwrap();
    let status = reaper.join().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
    assert!(m.pids().unwrap().is_empty());
    m.remove().unwrap();
    for d in m.dirs() {
        assert!(!d.path.exists(), "{}", d.path.display());
        let _ = fs::remove_dir(d.path.parent().unwrap());
    }
    m.remove().unwrap();
}
