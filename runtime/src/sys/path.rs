//! Paths inside a container's root, resolved the way the container will see them.
//!
//! A rootfs comes from an image, so any directory in it may be a symlink pointing anywhere
//! (`/etc -> /`, `volume -> ../../../host`). Creating a mount point by joining strings and
//! letting the kernel follow such links would let an image place host mounts outside its root.
//! [`secure_join`] resolves each link itself, clamped to the root (like Go's filepath-securejoin),
//! and the creation helpers never follow a final symlink. Nothing of the container runs yet while
//! these are used, so the resolved path cannot be swapped under us from inside.
//!
//! This is the crate's ONE resolver for paths taken from an image (working directory,
//! `/etc/passwd` and `/etc/group`, volume and mount targets, `/etc` files, `cp`): a second,
//! lenient copy is how escapes happen. It fails closed: a chain of more than 40 links is an
//! error (`ELOOP`, as the kernel answers), never "treat the last link as a directory".

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// How many symlinks one resolution may follow before giving up: Linux's own limit (40,
/// `ELOOP`), so a path the kernel would refuse inside the container is refused here too.
pub const MAX_LINKS: usize = 40;

/// Resolves `unsafe_path` (absolute or relative, as seen from inside the container) under
/// `root`, following symlinks as if `root` were `/`: `..` never climbs above `root` and an
/// absolute link target restarts at `root`. Missing components are kept as they are.
pub fn secure_join(root: &Path, unsafe_path: &Path) -> io::Result<PathBuf> {
    let mut pending: Vec<OsString> = Vec::new();
    push_front(&mut pending, unsafe_path);
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(name) = pending.pop() {
        match name.to_str() {
            Some("..") => {
                resolved.pop();
                continue;
            }
            Some(".") | Some("") => continue,
            _ => {}
        }
        let candidate = root.join(&resolved).join(&name);
        match fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "more than {MAX_LINKS} symlinks resolving {} in {}",
                            unsafe_path.display(),
                            root.display()
                        ),
                    ));
                }
                let target = fs::read_link(&candidate)?;
                if target.is_absolute() {
                    resolved.clear();
                }
                push_front(&mut pending, &target);
            }
            _ => resolved.push(&name),
        }
    }
    Ok(root.join(resolved))
}

/// Puts the components of `p` in front of the not-yet-resolved ones (`pending` is a stack:
/// its last element is the next to resolve).
fn push_front(pending: &mut Vec<OsString>, p: &Path) {
    let comps: Vec<OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => None,
        })
        .collect();
    pending.extend(comps.into_iter().rev());
}

/// Creates `path` (already resolved by [`secure_join`]) and its missing parents as
/// directories with `mode`, refusing to go through anything that is not a directory.
pub fn create_dir_all(path: &Path, mode: u32) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a directory", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(parent) = path.parent() {
        create_dir_all(parent, mode)?;
    }
    match fs::DirBuilder::new().mode(mode).create(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => Ok(()),
            _ => Err(e),
        },
        r => r,
    }
}

/// Creates an empty regular file at `path` (resolved by [`secure_join`]) to bind a file onto,
/// with its parents; an existing non-directory is reused, a final symlink is never followed.
pub fn create_file(path: &Path) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        create_dir_all(parent, 0o755)?;
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} is a directory; a file is needed to bind a file onto",
                path.display()
            ),
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map(drop),
        Err(e) => Err(e),
    }
}

/// Reads the regular file `unsafe_path` of the container's root (resolved by [`secure_join`]),
/// at most `limit` bytes: `None` when it does not exist. A final symlink is never followed and
/// anything but a regular file (a device node, a FIFO an image shipped as `/etc/passwd`) is
/// refused, so reading an image's file from the host can neither block nor read a host device.
pub fn read_in_root(root: &Path, unsafe_path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read as _;
    let p = secure_join(root, unsafe_path)?;
    let f = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&p)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", unsafe_path.display()),
        ));
    }
    if m.len() > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is larger than {limit} bytes", unsafe_path.display()),
        ));
    }
    let mut buf = Vec::with_capacity(m.len() as usize);
    f.take(limit).read_to_end(&mut buf)?;
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_stay_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        symlink("/", root.join("escape")).unwrap();
        symlink("../../../../..", root.join("usr/up")).unwrap();
        symlink("/usr/lib", root.join("lib")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();

        assert_eq!(secure_join(root, Path::new("/escape/etc")).unwrap(), root.join("etc"));
        assert_eq!(secure_join(root, Path::new("/usr/up/etc")).unwrap(), root.join("etc"));
        assert_eq!(secure_join(root, Path::new("../../x")).unwrap(), root.join("x"));
        assert_eq!(
            secure_join(root, Path::new("/lib/x/y")).unwrap(),
            root.join("usr/lib/x/y")
        );
        assert_eq!(secure_join(root, Path::new("/")).unwrap(), root.to_path_buf());
        assert!(secure_join(root, Path::new("/loop1/x")).is_err());
    }

    #[test]
    fn a_chain_of_more_than_40_links_fails_closed() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let outside = tempfile::tempdir().unwrap();
        // l0 -> l1 -> … -> l40 -> OUTSIDE: 41 links; the last would lead out if it were
        // taken as a plain directory.
        for i in 0..41 {
            symlink(format!("l{}", i + 1), root.join(format!("l{i}"))).unwrap();
        }
        symlink(outside.path(), root.join("l41")).unwrap();
        let e = secure_join(root, Path::new("/l0/work")).unwrap_err();
        assert!(e.to_string().contains("more than 40 symlinks"), "{e}");
        // Exactly 40 links resolve.
        fs::remove_file(root.join("l40")).unwrap();
        fs::create_dir(root.join("l40")).unwrap();
        assert_eq!(secure_join(root, Path::new("/l0/work")).unwrap(), root.join("l40/work"));
    }

    #[test]
    fn creates_mount_points_without_following_links() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let p = secure_join(root, Path::new("/a/b/c")).unwrap();
        create_dir_all(&p, 0o755).unwrap();
        assert!(root.join("a/b/c").is_dir());
        create_dir_all(&p, 0o755).unwrap();

        let f = secure_join(root, Path::new("/etc/hosts")).unwrap();
        create_file(&f).unwrap();
        assert!(root.join("etc/hosts").is_file());
        create_file(&f).unwrap();
        assert!(create_dir_all(&f, 0o755).is_err());
        assert!(create_file(&p).is_err());

        // A dangling final link (resolved by secure_join first) is created inside the root.
        symlink("/outside-file", root.join("etc/link")).unwrap();
        let l = secure_join(root, Path::new("/etc/link")).unwrap();
        assert_eq!(l, root.join("outside-file"));
        create_file(&l).unwrap();
        assert!(root.join("outside-file").is_file());
    }
}
