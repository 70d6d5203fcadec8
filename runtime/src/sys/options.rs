//! fstab-style mount options (`ro`, `nosuid`, `rbind`, `rslave`, `mode=755`) turned into the
//! three things `mount(2)` wants: flags, a propagation change, and a data string.

use nix::mount::MsFlags;

/// Mount options split the way the kernel takes them.
///
/// Propagation (`rprivate`, `rslave`, …) is kept apart from `flags` because the kernel only
/// accepts it in a separate `mount(2)` call on an existing mount point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags to set (`MS_RDONLY`, `MS_NOSUID`, `MS_BIND`, `MS_REC`, …).
    pub flags: MsFlags,
    /// Propagation to apply afterwards (`MS_PRIVATE | MS_REC`, …); empty when none asked.
    pub propagation: MsFlags,
    /// Filesystem-specific options (`mode=755`, `size=65536k`, `newinstance`, …), in order.
    pub data: Vec<String>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            flags: MsFlags::empty(),
            propagation: MsFlags::empty(),
            data: Vec::new(),
        }
    }
}

/// Options that mean nothing to the kernel and are dropped: `tmpcopyup` is runc's (copy the
/// image's files into a tmpfs), `defaults` is fstab's placeholder.
const IGNORED: &[&str] = &["defaults", "tmpcopyup"];

impl MountOptions {
    /// Parses options in order: a later `rw` undoes an earlier `ro`, as with mount(8).
    pub fn parse<S: AsRef<str>>(options: &[S]) -> MountOptions {
        let mut out = MountOptions::default();
        for o in options {
            let o = o.as_ref();
            if IGNORED.contains(&o) {
                continue;
            }
            if let Some(p) = propagation(o) {
                out.propagation = p;
            } else if let Some((set, flag)) = flag(o) {
                if set {
                    out.flags.insert(flag);
                } else {
                    out.flags.remove(flag);
                }
            } else {
                out.data.push(o.to_string());
            }
        }
        out
    }

    /// The data argument for `mount(2)`: the filesystem options joined by commas, or none.
    pub fn data_string(&self) -> Option<String> {
        (!self.data.is_empty()).then(|| self.data.join(","))
    }

    /// Whether this asks for a bind mount (`bind` or `rbind`).
    pub fn is_bind(&self) -> bool {
        self.flags.contains(MsFlags::MS_BIND)
    }

    /// Per-mount flags that a bind mount only takes on a second, remounting call
    /// (`MS_BIND|MS_REMOUNT|…`): the kernel ignores them on the bind itself.
    pub fn bind_remount_flags(&self) -> MsFlags {
        self.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT)
    }
}

/// `(set, flag)`: whether the option sets or clears the flag.
fn flag(o: &str) -> Option<(bool, MsFlags)> {
    use MsFlags as F;
    Some(match o {
        "ro" => (true, F::MS_RDONLY),
        "rw" => (false, F::MS_RDONLY),
        "nosuid" => (true, F::MS_NOSUID),
        "suid" => (false, F::MS_NOSUID),
        "nodev" => (true, F::MS_NODEV),
        "dev" => (false, F::MS_NODEV),
        "noexec" => (true, F::MS_NOEXEC),
        "exec" => (false, F::MS_NOEXEC),
        "sync" => (true, F::MS_SYNCHRONOUS),
        "async" => (false, F::MS_SYNCHRONOUS),
        "dirsync" => (true, F::MS_DIRSYNC),
        "remount" => (true, F::MS_REMOUNT),
        "mand" => (true, F::MS_MANDLOCK),
        "nomand" => (false, F::MS_MANDLOCK),
        "noatime" => (true, F::MS_NOATIME),
        "atime" => (false, F::MS_NOATIME),
        "nodiratime" => (true, F::MS_NODIRATIME),
        "diratime" => (false, F::MS_NODIRATIME),
        "relatime" => (true, F::MS_RELATIME),
        "norelatime" => (false, F::MS_RELATIME),
        "strictatime" => (true, F::MS_STRICTATIME),
        "nostrictatime" => (false, F::MS_STRICTATIME),
        "silent" => (true, F::MS_SILENT),
        "loud" => (false, F::MS_SILENT),
        "bind" => (true, F::MS_BIND),
        "rbind" => (true, F::MS_BIND | F::MS_REC),
        _ => return None,
    })
}

fn propagation(o: &str) -> Option<MsFlags> {
    use MsFlags as F;
    Some(match o {
        "private" => F::MS_PRIVATE,
        "rprivate" => F::MS_PRIVATE | F::MS_REC,
        "shared" => F::MS_SHARED,
        "rshared" => F::MS_SHARED | F::MS_REC,
        "slave" => F::MS_SLAVE,
        "rslave" => F::MS_SLAVE | F::MS_REC,
        "unbindable" => F::MS_UNBINDABLE,
        "runbindable" => F::MS_UNBINDABLE | F::MS_REC,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_flags_propagation_and_data() {
        let o = MountOptions::parse(&["nosuid", "rbind", "ro", "rslave", "mode=755", "size=64k", "tmpcopyup"]);
        assert_eq!(
            o.flags,
            MsFlags::MS_NOSUID | MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY
        );
        assert_eq!(o.propagation, MsFlags::MS_SLAVE | MsFlags::MS_REC);
        assert_eq!(o.data_string().as_deref(), Some("mode=755,size=64k"));
        assert!(o.is_bind());
        assert_eq!(o.bind_remount_flags(), MsFlags::MS_NOSUID | MsFlags::MS_RDONLY);
    }

    #[test]
    fn later_options_win() {
        let o = MountOptions::parse(&["ro", "rw", "noexec", "exec", "nodev"]);
        assert_eq!(o.flags, MsFlags::MS_NODEV);
        assert_eq!(o.data_string(), None);
        assert!(!o.is_bind());
    }
}
