//! Seccomp: docker's profiles, resolved to the runtime spec's `linux.seccomp`, and that
//! compiled to BPF for the embedded runtime.
//!
//! Two steps, as in docker:
//! 1. [`Profile`] is docker's JSON format (`--security-opt seccomp=FILE`, and the default,
//!    moby's `profiles/seccomp/default.json` embedded as data): an allow-list whose entries may
//!    depend on the architecture, the container's capabilities and the kernel version.
//!    [`Profile::resolve`] picks the entries that apply to one container and gives the
//!    runtime spec's [`Seccomp`] (written to `config.json`, so `runc` gets it too).
//! 2. [`compile`] turns a [`Seccomp`] into BPF programs (with `seccompiler`, pure Rust: no C
//!    library to build or link), which the embedded runtime installs as the last step before
//!    `execve` ([`crate::sys::Syscall::seccomp`]).
//!
//! `seccompiler` gives each program one "match" action. A profile has an allow-list plus a
//! few entries with other actions (`clone3` → `ENOSYS` without `CAP_SYS_ADMIN`), so it becomes
//! a stack of programs: the first matches every listed syscall (with its argument filters) to
//! allow and answers the default action for the rest; one more per other action matches its
//! syscalls to that action and allows everything else. The kernel runs every installed program
//! and keeps the most restrictive answer, the latest-installed among equals, which gives
//! libseccomp's meaning: a listed syscall gets its entry's action, any other the default.
//!
//! Only the native architecture's syscalls are filtered (x86_64 or aarch64): a call made
//! through a compatibility ABI (i386 `int 0x80`, arm32) is killed by the program's architecture
//! check, which is stricter than docker (whose list also allows the i386 and x32 numbers).

mod syscalls;

use crate::spec::{Seccomp, SeccompArg, SeccompSyscall};
use serde::Deserialize;
use std::collections::BTreeMap;

/// moby's default profile (moby/profiles `seccomp/default.json`, Apache-2.0), verbatim.
pub const DEFAULT_PROFILE: &str = include_str!("default.json");

/// Why a profile cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The profile is not docker's seccomp JSON.
    #[error("seccomp profile: {0}")]
    Parse(String),
    /// The profile asks for something this runtime cannot do.
    #[error("seccomp profile: {0}")]
    Unsupported(String),
    /// The filter could not be built.
    #[error("seccomp: {0}")]
    Compile(String),
}

/// `null` read as the empty value: docker's files write `"subArchitectures": null`.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// docker's profile format.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// `SCMP_ACT_ERRNO`, `SCMP_ACT_ALLOW`, …
    pub default_action: String,
    /// The errno of an `SCMP_ACT_ERRNO` default (EPERM when absent).
    #[serde(default)]
    pub default_errno_ret: Option<u32>,
    /// Native architecture → the sub-architectures filtered with it.
    #[serde(default, deserialize_with = "null_as_default")]
    pub arch_map: Vec<ArchMap>,
    /// Old format: the architectures, flat.
    #[serde(default, deserialize_with = "null_as_default")]
    pub architectures: Vec<String>,
    /// Entries.
    #[serde(default, deserialize_with = "null_as_default")]
    pub syscalls: Vec<Entry>,
}

/// One `archMap` element.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchMap {
    /// `SCMP_ARCH_X86_64`, …
    pub architecture: String,
    /// Filtered along with it.
    #[serde(default, deserialize_with = "null_as_default")]
    pub sub_architectures: Vec<String>,
}

/// One `syscalls` element.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// Syscall names.
    #[serde(default, deserialize_with = "null_as_default")]
    pub names: Vec<String>,
    /// Old format: one name.
    #[serde(default)]
    pub name: Option<String>,
    /// What happens on a match.
    pub action: String,
    /// The errno of `SCMP_ACT_ERRNO`.
    #[serde(default)]
    pub errno_ret: Option<u32>,
    /// Argument conditions.
    #[serde(default)]
    pub args: Option<Vec<SeccompArg>>,
    /// Applies only where all of these hold.
    #[serde(default)]
    pub includes: Filter,
    /// Applies nowhere any of these holds.
    #[serde(default)]
    pub excludes: Filter,
}

/// `includes` / `excludes`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    /// Go architecture names (`amd64`, `arm64`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub arches: Vec<String>,
    /// Capabilities (`CAP_SYS_ADMIN`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub caps: Vec<String>,
    /// Kernel version (`4.8`).
    #[serde(default)]
    pub min_kernel: Option<String>,
}

/// The native architecture as docker names it (Go's `GOARCH`) and as libseccomp does.
pub fn native_arch() -> (&'static str, &'static str) {
    match std::env::consts::ARCH {
        "x86_64" => ("amd64", "SCMP_ARCH_X86_64"),
        "aarch64" => ("arm64", "SCMP_ARCH_AARCH64"),
        "riscv64" => ("riscv64", "SCMP_ARCH_RISCV64"),
        other => (other, "SCMP_ARCH_NATIVE"),
    }
}

/// The running kernel's `(major, minor)`.
pub fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    parse_version(release.trim()).unwrap_or((0, 0))
}

fn parse_version(s: &str) -> Option<(u32, u32)> {
    let mut it = s.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next().unwrap_or("0").parse().unwrap_or(0)))
}

impl Profile {
    /// Parses docker's JSON.
    pub fn parse(json: &str) -> Result<Profile, Error> {
        serde_json::from_str(json).map_err(|e| Error::Parse(e.to_string()))
    }

    /// moby's default profile.
    pub fn docker_default() -> Profile {
        // The embedded file is checked by a unit test; a failure here is a build defect.
        Profile::parse(DEFAULT_PROFILE).unwrap_or_else(|e| panic!("the embedded default profile: {e}"))
    }

    /// The entries that apply to a container with capabilities `caps` on architecture `arch`
    /// (Go's name) under kernel `kernel`, as the runtime spec's `linux.seccomp` (docker's
    /// `setupSeccomp`).
    pub fn resolve(&self, arch: &str, caps: &[String], kernel: (u32, u32)) -> Seccomp {
        let native = native_arch().1;
        let architectures = if self.arch_map.is_empty() {
            self.architectures.clone()
        } else {
            self.arch_map
                .iter()
                .filter(|m| m.architecture == native)
                .flat_map(|m| std::iter::once(m.architecture.clone()).chain(m.sub_architectures.iter().cloned()))
                .collect()
        };
        let has = |c: &String| caps.iter().any(|x| x.eq_ignore_ascii_case(c));
        let applies = |e: &Entry| {
            if !e.includes.arches.is_empty() && !e.includes.arches.iter().any(|a| a == arch) {
                return false;
            }
            if !e.includes.caps.iter().all(has) {
                return false;
            }
            if let Some(min) = e.includes.min_kernel.as_deref().and_then(parse_version) {
                if kernel < min {
                    return false;
                }
            }
            !(e.excludes.arches.iter().any(|a| a == arch) || e.excludes.caps.iter().any(has))
        };
        let syscalls = self
            .syscalls
            .iter()
            .filter(|e| applies(e))
            .map(|e| SeccompSyscall {
                names: if e.names.is_empty() {
                    e.name.iter().cloned().collect()
                } else {
                    e.names.clone()
                },
                action: e.action.clone(),
                errno_ret: e.errno_ret,
                args: e.args.clone().unwrap_or_default(),
            })
            .collect();
        Seccomp {
            default_action: self.default_action.clone(),
            default_errno_ret: self.default_errno_ret,
            architectures,
            syscalls,
        }
    }
}

/// `EPERM`: what an `SCMP_ACT_ERRNO` without a number answers (docker's and runc's default).
const EPERM: u32 = libc::EPERM as u32;

fn action(name: &str, errno: Option<u32>) -> Result<seccompiler::SeccompAction, Error> {
    use seccompiler::SeccompAction as A;
    Ok(match name {
        "SCMP_ACT_ALLOW" => A::Allow,
        "SCMP_ACT_ERRNO" => A::Errno(errno.unwrap_or(EPERM)),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => A::KillThread,
        "SCMP_ACT_KILL_PROCESS" => A::KillProcess,
        "SCMP_ACT_TRAP" => A::Trap,
        "SCMP_ACT_LOG" => A::Log,
        "SCMP_ACT_TRACE" => A::Trace(errno.unwrap_or(EPERM)),
        other => return Err(Error::Unsupported(format!("action {other:?}"))),
    })
}

fn condition(a: &SeccompArg) -> Result<seccompiler::SeccompCondition, Error> {
    use seccompiler::{SeccompCmpArgLen, SeccompCmpOp as Op};
    let (op, value) = match a.op.as_str() {
        "SCMP_CMP_EQ" => (Op::Eq, a.value),
        "SCMP_CMP_NE" => (Op::Ne, a.value),
        "SCMP_CMP_LT" => (Op::Lt, a.value),
        "SCMP_CMP_LE" => (Op::Le, a.value),
        "SCMP_CMP_GT" => (Op::Gt, a.value),
        "SCMP_CMP_GE" => (Op::Ge, a.value),
        // libseccomp's masked compare: (arg & value) == valueTwo.
        "SCMP_CMP_MASKED_EQ" => (Op::MaskedEq(a.value), a.value_two),
        other => return Err(Error::Unsupported(format!("argument operator {other:?}"))),
    };
    let index = u8::try_from(a.index).map_err(|_| Error::Unsupported(format!("argument index {}", a.index)))?;
    seccompiler::SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| Error::Compile(format!("argument {index}: {e}")))
}

/// The entry's argument conditions as seccompiler rules (ORed): one rule with all conditions
/// (ANDed), except that several conditions on one and the same argument are alternatives, as
/// runc reads them (docker's `personality` entries, a profile's `ioctl` requests).
fn rules(args: &[SeccompArg]) -> Result<Vec<seccompiler::SeccompRule>, Error> {
    let mk = |conds: Vec<seccompiler::SeccompCondition>| {
        seccompiler::SeccompRule::new(conds).map_err(|e| Error::Compile(e.to_string()))
    };
    if args.is_empty() {
        return Ok(Vec::new());
    }
    if args.len() > 1 && args.iter().all(|a| a.index == args[0].index) {
        return args.iter().map(|a| mk(vec![condition(a)?])).collect();
    }
    Ok(vec![mk(args.iter().map(condition).collect::<Result<_, _>>()?)?])
}

/// The syscall table of the native architecture.
/// `(name, number)` pairs of one architecture, sorted by name.
type Table = &'static [(&'static str, i64)];

fn table() -> Result<(Table, seccompiler::TargetArch), Error> {
    match std::env::consts::ARCH {
        "x86_64" => Ok((syscalls::X86_64, seccompiler::TargetArch::x86_64)),
        "aarch64" => Ok((syscalls::AARCH64, seccompiler::TargetArch::aarch64)),
        other => Err(Error::Unsupported(format!("no syscall table for architecture {other}"))),
    }
}

fn number(table: &[(&str, i64)], name: &str) -> Option<i64> {
    table.binary_search_by(|(n, _)| n.cmp(&name)).ok().map(|i| table[i].1)
}

/// One BPF program (classic BPF, as `seccomp(2)` takes it).
pub type Program = seccompiler::BpfProgram;

/// Compiles `s` into the programs to install, in order (see the module doc). Names the
/// architecture does not have are skipped, as libseccomp skips them.
pub fn compile(s: &Seccomp) -> Result<Vec<Program>, Error> {
    let (table, arch) = table()?;
    let default = action(&s.default_action, s.default_errno_ret)?;
    let allow = seccompiler::SeccompAction::Allow;
    // Every listed syscall → its rules, for the first program; and per other action.
    let mut listed: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = BTreeMap::new();
    let mut others: Vec<(seccompiler::SeccompAction, BTreeMap<i64, Vec<seccompiler::SeccompRule>>)> = Vec::new();
    for e in &s.syscalls {
        let act = action(&e.action, e.errno_ret)?;
        let rs = rules(&e.args)?;
        for n in e.names.iter().filter_map(|n| number(table, n)) {
            add(&mut listed, n, &rs);
            if act != allow {
                match others.iter_mut().find(|(a, _)| *a == act) {
                    Some((_, m)) => add(m, n, &rs),
                    None => {
                        let mut m = BTreeMap::new();
                        add(&mut m, n, &rs);
                        others.push((act.clone(), m));
                    }
                }
            }
        }
    }
    let mut programs = Vec::new();
    let build = |rules, mismatch, matched| -> Result<Program, Error> {
        seccompiler::SeccompFilter::new(rules, mismatch, matched, arch)
            .and_then(Program::try_from)
            .map_err(|e| Error::Compile(e.to_string()))
    };
    if default != allow {
        programs.push(build(listed, default.clone(), allow.clone())?);
    }
    for (act, m) in others {
        if act != default {
            programs.push(build(m, allow.clone(), act)?);
        }
    }
    Ok(programs)
}

/// Adds `rules` for syscall `n`: an unconditional entry (no rules) matches every call, so
/// it wins over conditional ones.
fn add(map: &mut BTreeMap<i64, Vec<seccompiler::SeccompRule>>, n: i64, rules: &[seccompiler::SeccompRule]) {
    match map.get_mut(&n) {
        Some(existing) if existing.is_empty() => {}
        Some(_) if rules.is_empty() => {
            map.insert(n, Vec::new());
        }
        Some(existing) => existing.extend(rules.iter().cloned()),
        None => {
            map.insert(n, rules.to_vec());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_default_profile_resolves_like_docker() {
        let p = Profile::docker_default();
        assert_eq!(p.default_action, "SCMP_ACT_ERRNO");
        let s = p.resolve("amd64", &caps(&["CAP_CHOWN", "CAP_KILL"]), (6, 1));
        let names: Vec<&str> = s
            .syscalls
            .iter()
            .flat_map(|e| e.names.iter().map(String::as_str))
            .collect();
        for allowed in ["read", "execve", "clone", "arch_prctl", "personality"] {
            assert!(names.contains(&allowed), "{allowed} should be listed");
        }
        for denied in [
            "unshare",
            "mount",
            "keyctl",
            "kexec_load",
            "bpf",
            "reboot",
            "init_module",
        ] {
            assert!(
                !names.contains(&denied),
                "{denied} should not be listed without its capability"
            );
        }
        // clone is allowed only without namespace flags; clone3 answers ENOSYS (glibc falls back).
        let clone = s.syscalls.iter().find(|e| e.names == ["clone"]).unwrap();
        assert_eq!(clone.args[0].op, "SCMP_CMP_MASKED_EQ");
        let clone3 = s.syscalls.iter().find(|e| e.names == ["clone3"]).unwrap();
        assert_eq!((clone3.action.as_str(), clone3.errno_ret), ("SCMP_ACT_ERRNO", Some(38)));
        if std::env::consts::ARCH == "x86_64" {
            assert_eq!(s.architectures, ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]);
        }

        // With CAP_SYS_ADMIN: mount and unshare are allowed, clone is not filtered.
        let admin = p.resolve("amd64", &caps(&["CAP_SYS_ADMIN"]), (6, 1));
        let names: Vec<&str> = admin
            .syscalls
            .iter()
            .flat_map(|e| e.names.iter().map(String::as_str))
            .collect();
        assert!(names.contains(&"mount") && names.contains(&"unshare"));
        assert!(!admin
            .syscalls
            .iter()
            .any(|e| e.names == ["clone"] && !e.args.is_empty()));
        // minKernel: ptrace is allowed from Linux 4.8 on (seccomp bypass fixed there).
        assert!(names.contains(&"ptrace"));
        let old = p.resolve("amd64", &caps(&[]), (4, 4));
        assert!(!old.syscalls.iter().any(|e| e.names.iter().any(|n| n == "ptrace")));
    }

    #[test]
    fn the_default_profile_compiles_for_this_architecture() {
        let p = Profile::docker_default().resolve(native_arch().0, &caps(&["CAP_CHOWN"]), kernel_version());
        let progs = compile(&p).unwrap();
        assert_eq!(progs.len(), 2, "the allow-list, then clone3's ENOSYS");
        assert!(progs.iter().all(|p| !p.is_empty() && p.len() < 4096), "BPF_MAXINSNS");
        // Unconfined: nothing to install.
        let unconfined = Seccomp {
            default_action: "SCMP_ACT_ALLOW".into(),
            ..Seccomp::default()
        };
        assert!(compile(&unconfined).unwrap().is_empty());
    }

    #[test]
    fn the_syscall_tables_are_sorted_and_known_names_resolve() {
        for t in [syscalls::X86_64, syscalls::AARCH64] {
            assert!(t.windows(2).all(|w| w[0].0 < w[1].0), "sorted by name");
        }
        assert_eq!(number(syscalls::X86_64, "read"), Some(0));
        assert_eq!(number(syscalls::X86_64, "unshare"), Some(272));
        assert_eq!(number(syscalls::AARCH64, "unshare"), Some(97));
        assert_eq!(number(syscalls::X86_64, "_llseek"), None, "i386 only");
    }

    #[test]
    fn profiles_in_docker_format_parse_and_bad_ones_are_refused() {
        let p = Profile::parse(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
        )
        .unwrap();
        let s = p.resolve("amd64", &[], (6, 1));
        let progs = compile(&s).unwrap();
        assert_eq!(progs.len(), 1, "a deny-list is one program");
        assert!(Profile::parse("{").is_err());
        let bad = Profile::parse(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#).unwrap();
        assert!(compile(&bad.resolve("amd64", &[], (6, 1))).is_err());
    }
}
