//! Images the end-to-end tests build themselves, so nothing is pulled from the internet.

use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

fn umoci(args: &[&str], extra: Option<&Path>) -> Result<()> {
    let mut c = Command::new("umoci");
    c.args(args);
    if let Some(p) = extra {
        c.arg(p);
    }
    let out = c
        .output()
        .with_context(|| format!("running umoci {args:?} (Debian package umoci)"))?;
    if !out.status.success() {
        bail!(
            "umoci {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Builds a busybox image as an OCI layout at `dir/oci`, tagged `1`, whose command prints
/// `hello from berth`: umoci and /bin/busybox from busybox-static.
pub fn busybox_layout(dir: &Path) -> Result<PathBuf> {
    let layout = dir.join("oci");
    let bundle = dir.join("bundle");
    let base = format!("{}:base", layout.display());
    umoci(&["init", "--layout"], Some(&layout))?;
    umoci(&["new", "--image", &base], None)?;
    umoci(&["unpack", "--image", &base], Some(&bundle))?;
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .context("copying /bin/busybox (Debian package busybox-static)")?;
    std::os::unix::fs::symlink("busybox", bin.join("sh"))?;
    umoci(&["repack", "--image", &base], Some(&bundle))?;
    umoci(
        &[
            "config",
            "--image",
            &base,
            "--tag",
            "1",
            "--config.env",
            "PATH=/bin",
            "--config.cmd",
            "/bin/sh",
            "--config.cmd",
            "-c",
            "--config.cmd",
            "echo hello from berth",
        ],
        None,
    )?;
    Ok(layout)
}
