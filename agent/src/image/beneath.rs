//! Filesystem changes confined to one directory. An image names paths; this module turns them
//! into changes beneath the image's own directory and nowhere else: names are split into plain
//! components (`..` refused), every directory on the way is opened relative to the one before
//! with `O_NOFOLLOW` (one `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` when it all exists),
//! and the change itself is an `*at` call on the final name in that directory. A symbolic
//! link met on the way is refused, never followed, so a link an image placed earlier cannot
//! carry a later change out of the directory.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{
    mkdirat, openat, openat2, statat, unlinkat, AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags,
};
use rustix::io::Errno;

/// Deeper names than this are refused: no real image nests so far, and removing a tree keeps
/// one open directory per level.
pub const MAX_DEPTH: usize = 256;

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    /// The image named something it may not: the text says what.
    #[error("{0}")]
    Refused(String),
    /// The filesystem failed.
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl Denied {
    pub fn io(what: &'static str) -> impl FnOnce(Errno) -> Denied {
        move |e| Denied::Io { what, source: e.into() }
    }
}

/// A path inside the directory: plain components only, at least one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Inside(Vec<OsString>);

impl Inside {
    /// `path` made relative (a leading `/` and `.` components dropped, as tar does); refuses
    /// `..` anywhere, an empty path and names deeper than [`MAX_DEPTH`].
    pub fn new(path: &Path) -> Result<Inside, Denied> {
        let mut parts = Vec::new();
        for c in path.components() {
            match c {
                Component::Normal(p) => parts.push(p.to_os_string()),
                Component::RootDir | Component::CurDir => {}
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(Denied::Refused("climbs out with \"..\"".into()))
                }
            }
        }
        if parts.len() > MAX_DEPTH {
            return Err(Denied::Refused(format!("is nested deeper than {MAX_DEPTH} directories")));
        }
        if parts.is_empty() {
            return Err(Denied::Refused("names the image's root directory".into()));
        }
        Ok(Inside(parts))
    }

    /// The last component.
    pub fn name(&self) -> &OsStr {
        self.0.last().map(OsString::as_os_str).unwrap_or_default()
    }

    /// The components before the last.
    pub fn parent(&self) -> &[OsString] {
        &self.0[..self.0.len().saturating_sub(1)]
    }

    /// The same directory with another last component.
    pub fn sibling(&self, name: &OsStr) -> Inside {
        let mut parts = self.parent().to_vec();
        parts.push(name.to_os_string());
        Inside(parts)
    }

    #[cfg(test)]
    pub fn to_path(&self) -> PathBuf {
        self.0.iter().collect()
    }
}

const DIR: OFlags =
    OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

/// A directory that changes stay beneath.
#[derive(Debug)]
pub struct Beneath {
    root: OwnedFd,
}

impl Beneath {
    /// Opens `dir` (trusted: the store made it) as the root of the changes.
    pub fn open(dir: &Path) -> Result<Beneath, Denied> {
        let root = openat(rustix::fs::CWD, dir, DIR, Mode::empty())
            .map_err(Denied::io("opening the image directory"))?;
        Ok(Beneath { root })
    }

    /// The directory `parts` names, opened without following any link. With `create`,
    /// missing directories are made (0755); a symbolic link or non-directory on the way is
    /// refused.
    pub fn dir(&self, parts: &[OsString], create: bool) -> Result<OwnedFd, Denied> {
        if parts.is_empty() {
            return rustix::io::fcntl_dupfd_cloexec(&self.root, 0)
                .map_err(Denied::io("opening the image directory"));
        }
        let path: PathBuf = parts.iter().collect();
        let how = ResolveFlags::BENEATH
            | ResolveFlags::NO_SYMLINKS
            | ResolveFlags::NO_MAGICLINKS
            | ResolveFlags::NO_XDEV;
        if let Ok(fd) = openat2(&self.root, &path, DIR, Mode::empty(), how) {
            return Ok(fd);
        }
        // Something is missing, or in the way: walk, to create or to say what is wrong.
        let mut cur = rustix::io::fcntl_dupfd_cloexec(&self.root, 0)
            .map_err(Denied::io("opening the image directory"))?;
        for (i, part) in parts.iter().enumerate() {
            cur = step(&cur, part, create, &parts[..=i])?;
        }
        Ok(cur)
    }
}

/// Opens the directory `name` in `dir`, making it if allowed and missing.
fn step(dir: &OwnedFd, name: &OsStr, create: bool, so_far: &[OsString]) -> Result<OwnedFd, Denied> {
    match openat(dir, name, DIR, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(Errno::NOENT) if create => {
            match mkdirat(dir, name, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(Denied::io("making a directory")(e)),
            }
            openat(dir, name, DIR, Mode::empty()).map_err(|e| in_the_way(dir, name, so_far, e))
        }
        Err(e) => Err(in_the_way(dir, name, so_far, e)),
    }
}

/// Explains why `name` in `dir` could not be opened as a directory.
fn in_the_way(dir: &OwnedFd, name: &OsStr, so_far: &[OsString], e: Errno) -> Denied {
    let shown: PathBuf = so_far.iter().collect();
    match kind_of(dir, name) {
        Ok(Some(FileType::Symlink)) => {
            Denied::Refused(format!("goes through the symbolic link {shown:?}"))
        }
        Ok(Some(FileType::Directory)) | Err(_) => Denied::io("opening a directory")(e),
        Ok(None) => Denied::Refused(format!("goes through {shown:?}, which does not exist")),
        Ok(Some(_)) => Denied::Refused(format!("goes through {shown:?}, which is not a directory")),
    }
}

/// The directory `name` in `dir`, opened without following a link.
pub fn subdir(dir: &impl AsFd, name: &OsStr) -> Result<OwnedFd, Denied> {
    openat(dir, name, DIR, Mode::empty()).map_err(Denied::io("opening a directory"))
}

/// What `name` in `dir` is, without following a link; `None` if nothing.
pub fn kind_of(dir: &impl AsFd, name: &OsStr) -> Result<Option<FileType>, Denied> {
    match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(Denied::io("looking at an entry")(e)),
    }
}

/// Removes `name` from `dir` if it is there: a directory with everything in it, anything else
/// by unlinking it. Never follows a link.
pub fn remove(dir: &impl AsFd, name: &OsStr) -> Result<(), Denied> {
    match kind_of(dir, name)? {
        None => Ok(()),
        Some(FileType::Directory) => remove_tree(dir, name, 0),
        Some(_) => unlinkat(dir, name, AtFlags::empty()).map_err(Denied::io("removing an entry")),
    }
}

fn remove_tree(dir: &impl AsFd, name: &OsStr, depth: usize) -> Result<(), Denied> {
    if depth > MAX_DEPTH {
        return Err(Denied::Refused(format!("holds directories deeper than {MAX_DEPTH}")));
    }
    let fd = openat(dir, name, DIR, Mode::empty()).map_err(Denied::io("opening a directory"))?;
    let mut names = Vec::new();
    for entry in Dir::read_from(&fd).map_err(Denied::io("listing a directory"))? {
        let entry = entry.map_err(Denied::io("listing a directory"))?;
        let n = entry.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    for n in names {
        match kind_of(&fd, &n)? {
            Some(FileType::Directory) => remove_tree(&fd, &n, depth + 1)?,
            Some(_) => {
                unlinkat(&fd, &n, AtFlags::empty()).map_err(Denied::io("removing an entry"))?
            }
            None => {}
        }
    }
    unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(Denied::io("removing a directory"))
}
