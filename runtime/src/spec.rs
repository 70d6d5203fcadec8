//! The OCI runtime spec (`config.json` in a bundle), as far as berth-node uses it.
//!
//! This is the one contract between the node and a runtime: the node writes it once per
//! container, and either the embedded runtime ([`crate::linux`]) or any OCI runtime binary
//! (`runc`) reads it. Field names follow opencontainers/runtime-spec `config.md` and
//! `config-linux.md` exactly, so `runc` accepts the file unchanged; fields we never set are
//! left out rather than modelled.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The runtime-spec version we write.
pub const OCI_VERSION: &str = "1.0.2";

/// A whole `config.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    /// Runtime-spec version.
    pub oci_version: String,
    /// The container's first process.
    pub process: Process,
    /// The root filesystem (already mounted by the node: a runtime only pivots into it).
    pub root: Root,
    /// Hostname inside the UTS namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Mounts made inside the container, in order, after the root.
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Linux specifics.
    pub linux: Linux,
    /// Free-form annotations (berth writes the image and container name here).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The process to run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    /// Attach a pseudo-terminal (the runtime makes it the controlling terminal).
    #[serde(default)]
    pub terminal: bool,
    /// Who runs it.
    pub user: User,
    /// argv; `args[0]` is looked up in the container's PATH when it has no `/`.
    pub args: Vec<String>,
    /// `KEY=value` pairs.
    #[serde(default)]
    pub env: Vec<String>,
    /// Absolute working directory inside the container.
    pub cwd: String,
    /// Capability sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    /// Resource limits (`RLIMIT_*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rlimits: Vec<Rlimit>,
    /// Set `PR_SET_NO_NEW_PRIVS` before exec.
    #[serde(default)]
    pub no_new_privileges: bool,
}

/// A user and its groups, numeric (names are resolved from the image's /etc files earlier).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_gids: Vec<u32>,
}

/// Capability sets, by name (`CAP_CHOWN`, …).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Bounding set.
    #[serde(default)]
    pub bounding: Vec<String>,
    /// Effective set.
    #[serde(default)]
    pub effective: Vec<String>,
    /// Inheritable set.
    #[serde(default)]
    pub inheritable: Vec<String>,
    /// Permitted set.
    #[serde(default)]
    pub permitted: Vec<String>,
    /// Ambient set.
    #[serde(default)]
    pub ambient: Vec<String>,
}

/// One `RLIMIT_*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rlimit {
    /// `RLIMIT_NOFILE`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// Hard limit.
    pub hard: u64,
    /// Soft limit.
    pub soft: u64,
}

/// The root filesystem.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Root {
    /// Path of the (mounted) root filesystem; relative paths are relative to the bundle.
    pub path: String,
    /// Remount it read-only inside the container.
    #[serde(default)]
    pub readonly: bool,
}

/// A mount inside the container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute path inside the container.
    pub destination: String,
    /// Filesystem type (`proc`, `tmpfs`, `bind`, …).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Source: a device, a host path for binds, or the filesystem name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// fstab-style options: flags (`nosuid`, `ro`, `bind`, `rbind`, `rprivate`, …) and data
    /// (`mode=755`, `size=65536k`, …).
    #[serde(default)]
    pub options: Vec<String>,
}

/// Linux specifics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    /// Namespaces to create (no `path`) or join (`path`).
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    /// cgroup limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// cgroup path: relative to the cgroup root (v2) or to each controller's mount (v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroups_path: Option<String>,
    /// Paths made inaccessible (a /dev/null bind for files, an empty read-only tmpfs for dirs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked_paths: Vec<String>,
    /// Paths remounted read-only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readonly_paths: Vec<String>,
    /// Devices to create in /dev.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
    /// Propagation of the root mount (`rprivate`, `rslave`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_propagation: Option<String>,
    /// The syscall filter installed just before exec (none: unconfined).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<Seccomp>,
}

/// `linux.seccomp`: libseccomp's terms, as docker's profile resolved for one container
/// (see [`crate::seccomp`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Seccomp {
    /// The action for syscalls no entry lists (`SCMP_ACT_ERRNO`, …).
    pub default_action: String,
    /// The errno of an `SCMP_ACT_ERRNO` default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    /// `SCMP_ARCH_X86_64`, … (the native one and its compatibility ABIs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    /// Entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub syscalls: Vec<SeccompSyscall>,
}

/// One `linux.seccomp.syscalls` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeccompSyscall {
    /// Syscall names.
    pub names: Vec<String>,
    /// `SCMP_ACT_ALLOW`, `SCMP_ACT_ERRNO`, …
    pub action: String,
    /// The errno of `SCMP_ACT_ERRNO`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    /// Argument conditions (ANDed; alternatives when all on one argument).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<SeccompArg>,
}

/// One argument condition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeccompArg {
    /// Argument number (0-5).
    pub index: u32,
    /// Compared value (the mask for `SCMP_CMP_MASKED_EQ`).
    pub value: u64,
    /// The expected value for `SCMP_CMP_MASKED_EQ`.
    #[serde(default)]
    pub value_two: u64,
    /// `SCMP_CMP_EQ`, `SCMP_CMP_NE`, `SCMP_CMP_LT`, `_LE`, `_GT`, `_GE`, `_MASKED_EQ`.
    pub op: String,
}

/// A namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Namespace {
    /// `pid`, `network`, `mount`, `ipc`, `uts`, `user`, `cgroup`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Join this namespace (a `/proc/<pid>/ns/…` path) instead of creating one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// A device node to create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// Path inside the container.
    pub path: String,
    /// `c`, `b`, `p`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Major number.
    pub major: i64,
    /// Minor number.
    pub minor: i64,
    /// Permission bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_mode: Option<u32>,
    /// Owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

/// cgroup limits, in runtime-spec units.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    /// Process count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<Pids>,
    /// Device access rules (v1 devices controller; v2 needs eBPF, which berth does not load).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceRule>,
}

/// Memory limits in bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Hard limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// Memory + swap limit (docker sets it to twice `limit` by default; -1 unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap: Option<i64>,
}

/// CPU limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    /// Relative weight (v1 `cpu.shares`; v2 `cpu.weight` is derived from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares: Option<u64>,
    /// Microseconds of CPU per `period`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<i64>,
    /// Period in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<u64>,
}

/// Process count limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Pids {
    /// Maximum number of tasks; 0 or negative means unlimited.
    pub limit: i64,
}

/// A device cgroup rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRule {
    /// Allow or deny.
    pub allow: bool,
    /// `a`, `c` or `b`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Major number (none: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<i64>,
    /// Minor number (none: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<i64>,
    /// `rwm` subset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<String>,
}

impl Spec {
    /// Reads `<bundle>/config.json`.
    pub fn load(bundle: &Path) -> std::io::Result<Spec> {
        let p = bundle.join("config.json");
        let bytes = std::fs::read(&p)?;
        serde_json::from_slice(&bytes).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not a runtime spec: {e}", p.display()),
            )
        })
    }

    /// Writes `<bundle>/config.json` (temp + rename, so a reader never sees half a file).
    pub fn save(&self, bundle: &Path) -> std::io::Result<()> {
        let p = bundle.join("config.json");
        let tmp = bundle.join(".config.json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &p)
    }

    /// The namespace of `kind`, if the spec asks for one.
    pub fn namespace(&self, kind: &str) -> Option<&Namespace> {
        self.linux.namespaces.iter().find(|n| n.kind == kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_runtime_spec_names() {
        let s = Spec {
            oci_version: OCI_VERSION.into(),
            process: Process {
                args: vec!["sh".into()],
                cwd: "/".into(),
                no_new_privileges: true,
                ..Default::default()
            },
            root: Root {
                path: "rootfs".into(),
                readonly: true,
            },
            linux: Linux {
                namespaces: vec![Namespace {
                    kind: "pid".into(),
                    path: None,
                }],
                cgroups_path: Some("berth/abc".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["ociVersion"], "1.0.2");
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(v["linux"]["namespaces"][0]["type"], "pid");
        assert_eq!(v["linux"]["cgroupsPath"], "berth/abc");
        assert_eq!(v["root"]["readonly"], true);
        let back: Spec = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }
}
