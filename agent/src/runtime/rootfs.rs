//! Mounts and unmounts a task's root filesystem inside its bundle: image layers under a per-task
//! overlay (writes go to the task's own upper directory), or a prepared directory bound in.
//! Both are mounted `nodev` and (unless the task may gain privileges) `nosuid`, so a device node
//! or setuid file an image or a task put there gives nothing to whoever reaches it from the host.
//! Also owns the modes of the runtime's directories ([`private_dir`]): no host user but root
//! passes through them.

use std::path::{Path, PathBuf};

use rustix::mount::{mount, mount_bind, mount_remount, unmount, MountFlags, UnmountFlags};

use super::error::{Result, RuntimeError};
use super::policy::IdRange;
use super::spec::RootfsSource;

/// The directories of one task's bundle.
#[derive(Clone, Debug)]
pub struct BundleDirs {
    pub bundle: PathBuf,
}

impl BundleDirs {
    pub fn new(bundle: PathBuf) -> BundleDirs {
        BundleDirs { bundle }
    }
    pub fn rootfs(&self) -> PathBuf {
        self.bundle.join("rootfs")
    }
    /// The overlay's own directories, root's alone (0700): the overlay reaches them with the
    /// credentials of its mounter, the task only through the mounted rootfs.
    fn overlay(&self) -> PathBuf {
        self.bundle.join("overlay")
    }
    fn upper(&self) -> PathBuf {
        self.overlay().join("upper")
    }
    fn work(&self) -> PathBuf {
        self.overlay().join("work")
    }
    pub fn logs(&self) -> PathBuf {
        self.bundle.join("logs")
    }
}

/// Mounts the rootfs for `source`, `nodev` and, with `nosuid`, `nosuid`; with `owner`, the
/// writable layer's root belongs to the remapped container root; with `label` (SELinux on),
/// an image's overlay carries the task's file label (`context=`).
pub fn mount_rootfs(
    dirs: &BundleDirs,
    source: &RootfsSource,
    owner: Option<(IdRange, IdRange)>,
    nosuid: bool,
    label: Option<&str>,
) -> Result<()> {
    let rootfs = dirs.rootfs();
    private_dir(&rootfs, None)?;
    let flags = if nosuid { MountFlags::NOSUID | MountFlags::NODEV } else { MountFlags::NODEV };
    match source {
        RootfsSource::Dir(dir) => {
            mount_bind(dir, &rootfs)
                .map_err(|e| RuntimeError::io("bind-mounting rootfs from", dir, e.into()))?;
            // A bind takes its flags from a remount of its own.
            mount_remount(&rootfs, MountFlags::BIND | flags, c"").map_err(|e| {
                RuntimeError::io("making the rootfs nosuid,nodev at", &rootfs, e.into())
            })
        }
        RootfsSource::Layers(layers) => mount_overlay(dirs, layers, owner, flags, label),
    }
}

fn mount_overlay(
    dirs: &BundleDirs,
    layers: &[PathBuf],
    owner: Option<(IdRange, IdRange)>,
    flags: MountFlags,
    label: Option<&str>,
) -> Result<()> {
    if layers.is_empty() {
        return Err(RuntimeError::InvalidSpec("the image has no layers".into()));
    }
    let (upper, work) = (dirs.upper(), dirs.work());
    private_dir(&dirs.overlay(), None)?;
    // The upper root is the task's `/`: searchable by every user of the task.
    mkdir(&upper)?;
    private_dir(&work, None)?;
    if let Some((uids, gids)) = owner {
        let (u, g) = (
            rustix::fs::Uid::from_raw(uids.host_start),
            rustix::fs::Gid::from_raw(gids.host_start),
        );
        rustix::fs::chown(&upper, Some(u), Some(g)).map_err(|e| {
            RuntimeError::io("handing the writable layer to the remapped root", &upper, e.into())
        })?;
    }
    let lower: Vec<String> = layers.iter().map(|l| escape(l)).collect();
    let mut data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        escape(&upper),
        escape(&work)
    );
    if let Some(label) = label {
        data.push(',');
        data.push_str(&super::mac::context_option(label));
    }
    if data.len() >= 4096 {
        return Err(RuntimeError::InvalidSpec(format!(
            "the image has too many layers ({}) for one overlay mount; flatten it",
            layers.len()
        )));
    }
    let data = std::ffi::CString::new(data)
        .map_err(|_| RuntimeError::InvalidSpec("a layer path contains a NUL byte".into()))?;
    mount("overlay", dirs.rootfs(), "overlay", flags, Some(data.as_c_str()))
        .map_err(|e| RuntimeError::io("mounting overlay rootfs at", dirs.rootfs(), e.into()))
}

/// Overlay's option syntax needs `,`, `:` and `\` escaped in paths.
fn escape(p: &Path) -> String {
    let s = p.to_string_lossy();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, ',' | ':' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Unmounts the rootfs if it is mounted; a missing mount is not an error.
pub fn unmount_rootfs(dirs: &BundleDirs) -> Result<()> {
    let rootfs = dirs.rootfs();
    match unmount(&rootfs, UnmountFlags::DETACH) {
        Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(RuntimeError::io("unmounting rootfs", rootfs, e.into())),
    }
}

/// Whether `path` is a mount point according to this process's mount table.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = path.to_string_lossy();
    table.lines().any(|l| l.split_whitespace().nth(4).is_some_and(|m| unescape_octal(m) == want))
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Creates `dir` (and parents) searchable by everyone: mode 0711. Only for the root of a task's
/// writable layer, which is the task's `/`.
pub fn mkdir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(dir)
        .map_err(|e| RuntimeError::io("creating directory", dir, e))
}

/// Creates `dir` (and missing parents, 0700) for the daemon's user alone (root, wherever tasks
/// run in containers): mode 0700, owned by that user. With
/// `search_gid`, the group of remapped container roots, the directory is 0710 in that group
/// instead: runc's init, running as the remapped root inside the task's user namespace, must
/// pass through every directory on the way to the task's rootfs; other host users still cannot.
/// An existing directory gets the same mode and group.
pub fn private_dir(dir: &Path, search_gid: Option<u32>) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let err = |what, e| RuntimeError::io(what, dir, e);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| err("creating directory", e))?;
    let owner = std::fs::metadata(dir).map_err(|e| err("reading", e))?;
    // The daemon's own user (root wherever tasks run in containers).
    let uid = rustix::process::geteuid();
    let gid = search_gid.map(rustix::fs::Gid::from_raw).unwrap_or_else(rustix::process::getegid);
    if (owner.uid(), owner.gid()) != (uid.as_raw(), gid.as_raw()) {
        rustix::fs::chown(dir, Some(uid), Some(gid))
            .map_err(|e| err("setting the owner of", e.into()))?;
    }
    let mode = if search_gid.is_some() { 0o710 } else { 0o700 };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| err("setting the mode of", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_overlay_separators() {
        assert_eq!(escape(Path::new("/a,b:c\\d")), "/a\\,b\\:c\\\\d");
    }

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape_octal("/a\\040b"), "/a b");
        assert_eq!(unescape_octal("/plain"), "/plain");
    }

    #[test]
    fn root_is_mounted_and_tmp_dir_is_not() {
        assert!(is_mounted(Path::new("/")));
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mounted(dir.path()));
    }
}
