//! The one place local files are made durable: what a 2xx promises survives a power cut.
//!
//! A file's bytes are durable after `fsync` (here `sync_data`, which also covers the size); a
//! new name for it (a create or a rename) only after the directory holding the name is synced
//! too, and a new directory only after its parent is. Staged bytes are therefore synced, then
//! given their final key (a hard link, or a rename), then the destination directory is synced, and only then may the
//! database row that makes them visible be written (containerd's content writer `Commit` is the
//! model). All functions block: call them from a blocking thread.

use std::fs::File;
use std::io;
use std::path::Path;

/// Syncs a directory, so that names created or renamed in it survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing ancestors below `root` (which must exist), syncing the parent
/// of each directory it creates.
pub fn create_dirs(root: &Path, dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let rel = dir.strip_prefix(root).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not under {}", dir.display(), root.display()),
        )
    })?;
    let mut at = root.to_path_buf();
    for part in rel.components() {
        let parent = at.clone();
        at.push(part);
        match std::fs::create_dir(&at) {
            Ok(()) => sync_dir(&parent)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Gives an already synced file the second name `to` (replacing a file of that name, which
/// must then be damaged: content addressing makes a whole one identical) and syncs the
/// directory of the new name; `to`'s directory is created (durably) below `root` first.
pub fn link_into(root: &Path, from: &Path, to: &Path) -> io::Result<()> {
    let dir = to
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{} has no parent", to.display())))?;
    create_dirs(root, dir)?;
    match std::fs::hard_link(from, to) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Replace atomically: link under a temporary name, then rename over.
            let tmp = dir.join(format!(
                ".{}.{}",
                to.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                std::process::id()
            ));
            let _ = std::fs::remove_file(&tmp);
            std::fs::hard_link(from, &tmp)?;
            std::fs::rename(&tmp, to)?;
        }
        Err(e) => return Err(e),
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_dirs_and_links_into_them() {
        let root = tempfile::tempdir().expect("tempdir");
        let staged = root.path().join("staged");
        std::fs::write(&staged, b"bytes").expect("write");
        File::open(&staged).expect("open").sync_all().expect("sync");
        let dest = root.path().join("a/b/c/blob");
        link_into(root.path(), &staged, &dest).expect("link");
        assert_eq!(std::fs::read(&dest).expect("read"), b"bytes");
        assert!(staged.exists(), "a second name, not a move");
        // A second name, also over a damaged file.
        let other = root.path().join("other");
        std::fs::write(&other, b"fresh").expect("write");
        link_into(root.path(), &other, &dest).expect("link over");
        assert_eq!(std::fs::read(&dest).expect("read"), b"fresh");
        assert!(other.exists());
        // Outside the root is refused.
        let outside = tempfile::tempdir().expect("tempdir");
        assert!(create_dirs(root.path(), &outside.path().join("x")).is_err());
    }
}
