//! cgroup v2 device rules: an eBPF program of type `BPF_PROG_TYPE_CGROUP_DEVICE` attached to
//! the container's cgroup, as runc and crun do (v2 has no `devices.allow`/`devices.deny`).
//!
//! The program is small and straight-line, so it is assembled here from the spec's rules
//! instead of pulling in a BPF toolchain crate (aya, libbpf-rs: large builds for twenty
//! instructions). For every device access the kernel calls it with a
//! `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`, where
//! `access_type = access << 16 | type`; it answers 1 (allow) or 0 (deny: `EPERM`).
//!
//! Semantics are v1's: rules apply in order, a later one overriding an earlier one, so they
//! are emitted last-first with the first match answering. Docker's list starts with "deny
//! everything", which then is the answer for whatever no later rule allows. A type `a` rule
//! matches every device (its numbers are ignored, as v1 ignores them).
//!
//! ```text
//!   r2 = ctx.access_type & 0xffff     type  (1 block, 2 char)
//!   r3 = ctx.access_type >> 16        access (1 mknod, 2 read, 4 write)
//!   r4 = ctx.major; r5 = ctx.minor
//!   per rule, last first:
//!     if r2 != TYPE goto next; if (r3 & ACCESS) != r3 goto next
//!     if r4 != MAJOR goto next; if r5 != MINOR goto next
//!     r0 = ALLOW; exit
//!   r0 = 1; exit                      (no rule matched: v1's initial allow-all)
//! ```

use crate::spec::DeviceRule;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// One eBPF instruction (`struct bpf_insn`): opcode, `dst | src << 4`, offset, immediate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const AND32_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const RSH32_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const MOV32_K: u8 = 0xb4; // BPF_ALU | BPF_MOV | BPF_K
const MOV32_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JNE_X: u8 = 0x5d; // BPF_JMP | BPF_JNE | BPF_X
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// `BPF_DEVCG_DEV_BLOCK` / `BPF_DEVCG_DEV_CHAR`.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
/// `BPF_DEVCG_ACC_MKNOD` / `_READ` / `_WRITE`.
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

/// The access bits of an `rwm` string (all three when absent or empty).
fn access_bits(access: Option<&str>) -> Result<i32, String> {
    let a = access.unwrap_or("rwm");
    if a.is_empty() {
        return Ok(ACC_MKNOD | ACC_READ | ACC_WRITE);
    }
    a.chars().try_fold(0, |bits, c| match c {
        'r' => Ok(bits | ACC_READ),
        'w' => Ok(bits | ACC_WRITE),
        'm' => Ok(bits | ACC_MKNOD),
        other => Err(format!("device rule access {a:?}: unknown {other:?}")),
    })
}

/// Assembles the program for `rules` (see the module doc).
pub fn program(rules: &[DeviceRule]) -> Result<Vec<Insn>, String> {
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(AND32_K, 2, 0, 0, 0xffff),
        insn(LDX_W, 3, 1, 0, 0),
        insn(RSH32_K, 3, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ];
    for r in rules.iter().rev() {
        let kind = match r.kind.as_deref().unwrap_or("a") {
            "a" => None,
            "c" => Some(DEV_CHAR),
            "b" => Some(DEV_BLOCK),
            other => return Err(format!("device rule type {other:?}: expected a, b or c")),
        };
        let access = access_bits(r.access.as_deref())?;
        let number = |n: Option<i64>, what: &str| -> Result<Option<i32>, String> {
            match n {
                None | Some(-1) => Ok(None),
                Some(v) => u32::try_from(v)
                    .map(|v| Some(v as i32))
                    .map_err(|_| format!("device rule {what} {v} is out of range")),
            }
        };
        // Conditions; each jump's offset is filled in once the block's length is known.
        let mut block: Vec<Insn> = Vec::new();
        let mut jumps: Vec<usize> = Vec::new();
        if let Some(t) = kind {
            jumps.push(block.len());
            block.push(insn(JNE_K, 2, 0, 0, t));
        }
        if access != ACC_MKNOD | ACC_READ | ACC_WRITE {
            block.push(insn(MOV32_X, 1, 3, 0, 0));
            block.push(insn(AND32_K, 1, 0, 0, access));
            jumps.push(block.len());
            block.push(insn(JNE_X, 1, 3, 0, 0));
        }
        if kind.is_some() {
            if let Some(m) = number(r.major, "major")? {
                jumps.push(block.len());
                block.push(insn(JNE_K, 4, 0, 0, m));
            }
            if let Some(m) = number(r.minor, "minor")? {
                jumps.push(block.len());
                block.push(insn(JNE_K, 5, 0, 0, m));
            }
        }
        block.push(insn(MOV32_K, 0, 0, 0, i32::from(r.allow)));
        block.push(insn(EXIT, 0, 0, 0, 0));
        let len = block.len();
        let unconditional = jumps.is_empty();
        for j in jumps {
            // Relative to the next instruction: skip the rest of the block.
            block[j].off = (len - j - 1) as i16;
        }
        p.extend(block);
        if unconditional {
            // Matches everything: what follows would be unreachable, which the verifier refuses.
            return Ok(p);
        }
    }
    p.push(insn(MOV32_K, 0, 0, 0, 1));
    p.push(insn(EXIT, 0, 0, 0, 0));
    Ok(p)
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
/// Other programs (systemd's, a parent's) stay attached beside ours; all must allow.
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The `BPF_PROG_LOAD` part of `union bpf_attr` (fields up to `expected_attach_type`), padded
/// with zeros: the kernel requires everything past what it knows to be zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    pad: [u64; 8],
}

/// The `BPF_PROG_ATTACH` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
    pad: [u32; 11],
}

/// `bpf(cmd, attr, sizeof attr)`.
#[allow(unsafe_code)]
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, fully initialised #[repr(C)] struct laid out as the kernel's
    // `union bpf_attr` member for `cmd`, and its size is passed with it; the kernel writes
    // nothing past that size. Pointers inside it (insns, license, log) outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Loads the program for `rules` and attaches it to the cgroup directory `dir`. The kernel
/// keeps it attached (the fds may close) until the cgroup is removed.
pub fn attach(dir: &Path, rules: &[DeviceRule]) -> io::Result<()> {
    let prog = program(rules).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let license = c"Apache";
    let mut log = vec![0u8; 16 << 10];
    let mut load = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..ProgLoad::default()
    };
    load.prog_name[..7].copy_from_slice(b"berthdv");
    let fd = bpf(BPF_PROG_LOAD, &mut load).map_err(|e| {
        let text = String::from_utf8_lossy(&log[..log.iter().position(|&b| b == 0).unwrap_or(0)]).into_owned();
        io::Error::new(
            e.kind(),
            format!(
                "loading the device filter (BPF_PROG_LOAD): {e}{}",
                if text.is_empty() {
                    String::new()
                } else {
                    format!(": {}", text.trim())
                }
            ),
        )
    })?;
    // SAFETY: a successful BPF_PROG_LOAD returns a new file descriptor that nothing else owns.
    #[allow(unsafe_code)]
    let prog_fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let cg = std::fs::File::open(dir)?;
    let mut at = ProgAttach {
        target_fd: cg.as_raw_fd() as u32,
        attach_bpf_fd: prog_fd.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..ProgAttach::default()
    };
    bpf(BPF_PROG_ATTACH, &mut at).map(drop).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "attaching the device filter to {} (BPF_PROG_ATTACH): {e}",
                dir.display()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `prog` the way the kernel would on a device access: a tiny interpreter of the
    /// instructions [`program`] emits, so the rule logic is checked without root.
    fn run(prog: &[Insn], kind: i32, access: i32, major: u32, minor: u32) -> i32 {
        let ctx = [((access << 16) | kind) as u32, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_W => r[dst] = u64::from(ctx[i.off as usize / 4]),
                AND32_K => r[dst] = (r[dst] as u32 & i.imm as u32) as u64,
                RSH32_K => r[dst] = ((r[dst] as u32) >> i.imm) as u64,
                MOV32_K => r[dst] = i.imm as u32 as u64,
                MOV32_X => r[dst] = r[src] as u32 as u64,
                JNE_K if r[dst] != i.imm as u32 as u64 => pc += i.off as usize,
                JNE_X if r[dst] != r[src] => pc += i.off as usize,
                JNE_K | JNE_X => {}
                EXIT => return r[0] as i32,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    fn rule(allow: bool, kind: &str, major: Option<i64>, minor: Option<i64>, access: &str) -> DeviceRule {
        DeviceRule {
            allow,
            kind: Some(kind.into()),
            major,
            minor,
            access: Some(access.into()),
        }
    }

    #[test]
    fn docker_default_list_allows_only_its_devices() {
        let rules = vec![
            rule(false, "a", None, None, "rwm"),
            rule(true, "c", None, None, "m"),
            rule(true, "b", None, None, "m"),
            rule(true, "c", Some(1), Some(3), "rwm"),
            rule(true, "c", Some(136), None, "rwm"),
        ];
        let p = program(&rules).unwrap();
        let (r, w, m) = (ACC_READ, ACC_WRITE, ACC_MKNOD);
        assert_eq!(run(&p, DEV_CHAR, r | w, 1, 3), 1, "/dev/null read-write");
        assert_eq!(run(&p, DEV_CHAR, r, 136, 7), 1, "any pty");
        assert_eq!(run(&p, DEV_CHAR, r, 1, 11), 0, "/dev/kmsg read");
        assert_eq!(run(&p, DEV_CHAR, m, 1, 11), 1, "mknod of any char device");
        assert_eq!(run(&p, DEV_BLOCK, m, 8, 0), 1, "mknod of any block device");
        assert_eq!(run(&p, DEV_BLOCK, r, 8, 0), 0, "reading a disk");
        assert_eq!(
            run(&p, DEV_BLOCK, r | w, 1, 3),
            0,
            "a block device with /dev/null's numbers"
        );
        assert_eq!(run(&p, DEV_CHAR, r | m, 1, 11), 0, "read+mknod needs both");
    }

    #[test]
    fn later_rules_override_earlier_ones() {
        let rules = vec![
            rule(true, "a", None, None, "rwm"),
            rule(false, "c", Some(1), Some(11), "w"),
        ];
        let p = program(&rules).unwrap();
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 1, 11), 1);
        assert_eq!(run(&p, DEV_CHAR, ACC_WRITE, 1, 11), 0);
        assert_eq!(run(&p, DEV_BLOCK, ACC_WRITE, 8, 1), 1);
        assert_eq!(
            run(&program(&[]).unwrap(), DEV_CHAR, ACC_READ, 1, 1),
            1,
            "no rules: v1's allow-all"
        );
        assert!(program(&[rule(true, "x", None, None, "r")]).is_err());
        assert!(program(&[rule(true, "c", None, None, "rq")]).is_err());
    }
}
