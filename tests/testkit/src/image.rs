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

/// Packs `<dir>/rootfs/` (as [`busybox_tar`] left it, with whatever a test added) again as
/// `<dir>/image.tar`; returns the tarball's path.
pub fn repack(dir: &Path) -> String {
    let tar = dir.join("image.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(dir.join("rootfs"))
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("running tar");
    assert!(status.success(), "tar failed ({status})");
    tar.display().to_string()
}

/// A busybox rootfs tarball whose `/etc/app-version` says `version`: each version is an image
/// with other bytes, so another digest.
pub fn versioned_tar(dir: &Path, version: &str, applets: &[&str]) -> String {
    let d = dir.join(format!("app-{version}"));
    std::fs::create_dir_all(&d).unwrap();
    busybox_tar(&d, applets).unwrap();
    let etc = d.join("rootfs/etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("app-version"), version).unwrap();
    repack(&d)
}

/// `sha256:<hex>` of a file (an imported rootfs tarball is one uncompressed layer: its blob).
pub fn sha256_file(path: &str) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("running sha256sum");
    let hex = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string();
    format!("sha256:{hex}")
}
