//! Atomic, permission-safe file writes for keys and certificates.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Permission bits for private key files: owner read/write only.
pub const KEY_FILE_MODE: u32 = 0o600;

/// Atomically replaces `path` with `data`, with permission bits `mode`.
///
/// The bytes go to a temporary file in the same directory that is created
/// with `mode` from the start (so they are never readable by others, even
/// briefly), which is fsynced and renamed over `path`; then the directory is
/// fsynced so the rename survives a crash. On error the temporary file is removed.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_dir(path);
    let tmp = temp_path(path)?;
    let result = write_temp(&tmp, data, mode).and_then(|()| fs::rename(&tmp, path));
    if let Err(err) = result {
        let _ = fs::remove_file(&tmp);
        return Err(err);
    }
    File::open(dir)?.sync_all()
}

fn write_temp(tmp: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(tmp)?;
    // The umask may have removed bits; set exactly what was asked for.
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(data)?;
    file.sync_all()
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}-{:016x}", std::process::id(), rand::random::<u64>()));
    Ok(parent_dir(path).join(tmp_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_with_key_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.key");
        write_atomic(&path, b"secret", KEY_FILE_MODE).expect("write");
        assert_eq!(fs::read(&path).expect("read"), b"secret");
        assert_eq!(mode_of(&path), 0o600);
    }

    #[test]
    fn replaces_content_and_mode_without_leftovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.crt");
        fs::write(&path, b"old old old").expect("seed");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        write_atomic(&path, b"new", KEY_FILE_MODE).expect("write");
        assert_eq!(fs::read(&path).expect("read"), b"new");
        assert_eq!(mode_of(&path), 0o600);
        write_atomic(&path, b"public", 0o644).expect("write again");
        assert_eq!(mode_of(&path), 0o644);
        assert_eq!(entries(dir.path()), vec!["node.crt".to_string()]);
    }

    #[test]
    fn failure_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("is-a-dir");
        fs::create_dir(&target).expect("mkdir");
        fs::write(target.join("inside"), b"x").expect("fill");
        assert!(write_atomic(&target, b"data", KEY_FILE_MODE).is_err());
        assert_eq!(entries(dir.path()), vec!["is-a-dir".to_string()]);
    }

    #[test]
    fn rejects_paths_without_file_name() {
        assert!(write_atomic(Path::new("/"), b"x", KEY_FILE_MODE).is_err());
    }
}
