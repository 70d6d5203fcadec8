//! `berth-node` against hostile images, as root, with a real `berth-registry`: the holes found
//! when the node was tried as an attacker would, each shown closed by running the real binary.
//! - device nodes shipped in an image are unusable inside the container, on this host's
//!   cgroups (v1/hybrid) and on a cgroup v2 hierarchy mounted in a private mount namespace
//!   (`unshare -m`: the host's cgroup mounts are never touched);
//! - a sparse layer bomb stops at `--max-layer-size` with a one-line error.

// Tests unwrap what they built themselves; `common` serves several test binaries.
#![allow(clippy::unwrap_used, unused_imports)]

mod common;

use common::*;
use images::{busybox_rootfs, write_image, Layer, DEFAULT_PATH};
use serde_json::json;
use std::process::Command;

/// A tar (uncompressed layer) whose entries the test writes with the `tar` crate directly:
/// device nodes and symlink chains, which the shared image builder has no calls for.
struct RawTar(tar::Builder<Vec<u8>>);

impl RawTar {
    fn new() -> RawTar {
        RawTar(tar::Builder::new(Vec::new()))
    }

    fn header(kind: tar::EntryType, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(0);
        h
    }

    fn device(&mut self, path: &str, major: u32, minor: u32) -> &mut RawTar {
        let mut h = Self::header(tar::EntryType::Char, 0o666);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    /// An old-GNU sparse file of `real_size` bytes holding only `tail` at its end.
    fn sparse(&mut self, path: &str, real_size: u64, tail: &[u8]) -> &mut RawTar {
        fn octal(field: &mut [u8; 12], v: u64) {
            field.copy_from_slice(format!("{v:011o}\0").as_bytes());
        }
        let mut h = Self::header(tar::EntryType::GNUSparse, 0o644);
        h.set_size(tail.len() as u64);
        {
            let g = h.as_gnu_mut().unwrap();
            octal(&mut g.sparse[0].offset, real_size - tail.len() as u64);
            octal(&mut g.sparse[0].numbytes, tail.len() as u64);
            octal(&mut g.realsize, real_size);
        }
        self.0.append_data(&mut h, path, tail).unwrap();
        self
    }

    fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// `busybox_rootfs` plus `top` as a second layer, under `config`, pushed as `test/hostile:TAG`.
fn hostile(f: &Fixture, tag: &str, top: Vec<u8>, config: serde_json::Value) -> String {
    let base = Layer::gzip(&busybox_rootfs().unwrap().finish()).unwrap();
    let img = write_image(
        &f.dir("images").join("hostile"),
        tag,
        config,
        &[base, Layer::plain(top)],
    )
    .unwrap();
    f.push(&img, "test/hostile")
}

/// The image's devices: `/kmsg` (the host's kernel log, 1:11), `/mem` (1:1), and `/null2`
/// (1:3, /dev/null's numbers, which docker's list allows).
fn device_image(f: &Fixture) -> String {
    let mut t = RawTar::new();
    t.device("kmsg", 1, 11).device("mem", 1, 1).device("null2", 1, 3);
    hostile(f, "devices", t.finish(), json!({"Env": [DEFAULT_PATH]}))
}

/// What the container reports about each device: `kmsg:denied` when reading it fails, and so on.
const PROBE: &str =
    "for d in kmsg mem; do if head -c1 /$d >/dev/null 2>&1; then echo $d:read; else echo $d:denied; fi; done; \
                     if echo x > /null2; then echo null2:ok; else echo null2:denied; fi";

fn assert_devices_denied(r: &Ran) {
    assert!(r.status.success(), "the probe failed:\n{}", r.show());
    for want in ["kmsg:denied", "mem:denied", "null2:ok"] {
        assert!(r.stdout.contains(want), "expected {want}:\n{}", r.show());
    }
}

#[test]
fn image_device_nodes_are_unusable_on_cgroup_v1() {
    let Some(f) = Fixture::new() else { return };
    let img = device_image(&f);
    let r = f.node.ok(&["run", "--rm", &img, "sh", "-c", PROBE]);
    assert_devices_denied(&r);
}

#[test]
fn image_device_nodes_are_unusable_on_cgroup_v2() {
    let Some(f) = Fixture::new() else { return };
    if !require("unshare") {
        return;
    }
    let img = device_image(&f);
    f.node.ok(&["pull", &img]);
    // A private mount namespace in which /sys/fs/cgroup is a cgroup2 mount alone: berth-node
    // there sees a pure v2 host. The host's own mounts stay as they are.
    let script = "umount -l /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup && \
                  grep -q ' /sys/fs/cgroup cgroup2 ' /proc/self/mounts && exec \"$@\"";
    let run = |probe: &str| {
        let mut c = Command::new("unshare");
        c.args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
            .arg(env!("CARGO_BIN_EXE_berth-node"))
            .arg("--root")
            .arg(&f.node.root)
            .args(&f.node.global)
            .args(["run", "--rm", &img, "sh", "-c", probe]);
        c.env_remove("BERTH_LOG");
        run_cmd(&mut c, None, TIMEOUT)
    };
    // The container is in a v2 cgroup of berth's (its unified "0::" line names it).
    let r = run(&format!("cat /proc/self/cgroup; {PROBE}"));
    assert!(
        r.stdout.lines().any(|l| l.starts_with("0::/berth/")),
        "not in a berth cgroup v2:\n{}",
        r.show()
    );
    assert_devices_denied(&r);
}

#[test]
fn a_sparse_layer_bomb_stops_at_the_cap() {
    let Some(f) = Fixture::new() else { return };
    let mut t = RawTar::new();
    t.sparse("bomb", 4 << 30, b"tail");
    let top = t.finish();
    assert!(top.len() < 16 << 10, "the bomb is small: {} bytes", top.len());
    let img = hostile(&f, "bomb", top, json!({"Env": [DEFAULT_PATH]}));
    let r = f.node.code(&["--max-layer-size", "64m", "pull", &img], 125);
    assert!(r.stderr.contains("cap of 67108864 bytes"), "{}", r.show());
    assert_eq!(r.stderr.trim().lines().count(), 1, "one line:\n{}", r.show());
    let used = du(&f.node.root);
    assert!(used < 256 << 20, "{used} bytes are left under the node root");
    let images = f.node.ok(&["images"]);
    assert!(!images.stdout.contains("test/hostile"), "{}", images.show());
}
