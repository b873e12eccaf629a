//! Files a task reads from memory — secrets and configs: a per-task tmpfs in the bundle
//! (nodev, nosuid, noexec), each file written with its owner and mode, then the tmpfs made
//! read-only; the runtime binds each file into the container. Nothing touches a disk, and the
//! tmpfs goes away with the task. The tmpfs root is 0700, owned by the task's root (the
//! remapped one under a user namespace): no other host user reaches a file, whatever the mode
//! the task asked for inside the container.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::mount::{mount, mount_remount, unmount, MountFlags, UnmountFlags};

use super::error::{Result, RuntimeError};
use super::policy::IdRange;
use super::rootfs::BundleDirs;

/// One file of a task's secrets or configs.
#[derive(Clone)]
pub struct SecretFile {
    /// Absolute path inside the container (`/run/secrets/<name>` for secrets).
    pub target: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretFile")
            .field("target", &self.target)
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("mode", &format_args!("{:o}", self.mode))
            .field("data", &format_args!("<redacted {} bytes>", self.data.len()))
            .finish()
    }
}

/// Where the task's tmpfs is mounted.
pub fn dir(dirs: &BundleDirs) -> PathBuf {
    dirs.bundle.join("secrets")
}

/// The host path of the `i`th file.
pub fn source(dirs: &BundleDirs, i: usize) -> PathBuf {
    dir(dirs).join(format!("f{i}"))
}

fn io(what: &'static str, path: &Path, e: impl Into<std::io::Error>) -> RuntimeError {
    RuntimeError::io(what, path, e.into())
}

/// Mounts the task's tmpfs and writes its files; with a user-namespace remap, owners are
/// shifted into the task's host id range (so container uid 0 reads a file of uid 0).
pub fn mount_files(
    dirs: &BundleDirs,
    files: &[SecretFile],
    remap: Option<(IdRange, IdRange)>,
    label: Option<&str>,
) -> Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    let d = dir(dirs);
    super::rootfs::private_dir(&d, None)?;
    let size: usize = files.iter().map(|f| f.data.len() + 4096).sum::<usize>() + 65536;
    let (uid, gid) = remap.map_or((0, 0), |(u, g)| (u.host_start, g.host_start));
    let mut opts = format!("mode=0700,uid={uid},gid={gid},size={size}");
    if let Some(label) = label {
        opts.push(',');
        opts.push_str(&super::mac::context_option(label));
    }
    let opts = std::ffi::CString::new(opts)
        .map_err(|_| RuntimeError::InvalidSpec("bad tmpfs options".into()))?;
    let flags = MountFlags::NODEV | MountFlags::NOSUID | MountFlags::NOEXEC;
    mount("tmpfs", &d, "tmpfs", flags, Some(opts.as_c_str()))
        .map_err(|e| io("mounting the secrets tmpfs at", &d, e))?;
    let written = write_all(dirs, files, remap);
    let sealed = written.and_then(|()| {
        mount_remount(&d, flags | MountFlags::RDONLY, c"")
            .map_err(|e| io("making the secrets tmpfs read-only at", &d, e))
    });
    if sealed.is_err() {
        let _ = unmount_files(dirs);
    }
    sealed
}

fn write_all(
    dirs: &BundleDirs,
    files: &[SecretFile],
    remap: Option<(IdRange, IdRange)>,
) -> Result<()> {
    for (i, f) in files.iter().enumerate() {
        let path = source(dirs, i);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io("writing a secret file", &path, e))?;
        file.write_all(&f.data).map_err(|e| io("writing a secret file", &path, e))?;
        let (uid, gid) = match remap {
            Some((u, g)) => {
                (u.host_start.saturating_add(f.uid), g.host_start.saturating_add(f.gid))
            }
            None => (f.uid, f.gid),
        };
        rustix::fs::chown(
            &path,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )
        .map_err(|e| io("setting a secret file's owner", &path, e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode & 0o777))
            .map_err(|e| io("setting a secret file's mode", &path, e))?;
    }
    Ok(())
}

/// Unmounts the task's tmpfs if it is mounted (its files vanish with it).
pub fn unmount_files(dirs: &BundleDirs) -> Result<()> {
    let d = dir(dirs);
    match unmount(&d, UnmountFlags::DETACH) {
        Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(io("unmounting the secrets tmpfs", &d, e)),
    }
}
