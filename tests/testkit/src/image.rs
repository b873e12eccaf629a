//! Images for tests and benchmarks: a busybox-static rootfs as a tarball `shoal image import`
//! takes.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Writes `<dir>/rootfs/` with `/bin/busybox` (and a symlink to it for each of `applets`) and
/// packs it as `<dir>/busybox.tar`; returns the tarball's path.
pub fn busybox_tar(dir: &Path, applets: &[&str]) -> Result<PathBuf, String> {
    let root = dir.join("rootfs");
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| format!("creating {}: {e}", bin.display()))?;
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .map_err(|e| format!("copying /bin/busybox (apt-get install busybox-static): {e}"))?;
    for applet in applets {
        std::os::unix::fs::symlink("busybox", bin.join(applet))
            .map_err(|e| format!("linking {applet}: {e}"))?;
    }
    let tar = dir.join("busybox.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .map_err(|e| format!("running tar: {e}"))?;
    if !status.success() {
        return Err(format!("tar failed ({status})"));
    }
    Ok(tar)
}
