//! Unpacks one layer tarball (plain or gzip) into a directory overlayfs can use as a lower
//! layer: `.wh.NAME` whiteouts become 0/0 character devices and `.wh..wh..opq` marks its
//! directory opaque (`trusted.overlay.opaque=y`). Computes the layer's diff id on the way.
//!
//! A layer is untrusted input unpacked as root, so every name it holds is resolved beneath the
//! layer directory without following a link ([`super::beneath`]): a symbolic link the layer
//! made is data for the container, never a way out. Refused, failing the whole layer: names
//! that climb out with `..` or go through a link or a non-directory, hard links to anything
//! that is not already a file of this layer, character and block devices (a 0/0 device is how
//! this store writes a whiteout; any other is a host device), `trusted.*` extended attributes
//! (overlayfs takes orders from them). Kept: `user.*` attributes and `security.capability`
//! (file capabilities, as `setcap` leaves them); other `security.*` and `system.*` attributes
//! (host labels and ACLs) are dropped.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use rustix::fs::{
    chownat, fchmod, fchown, fsetxattr, linkat, mkdirat, mknodat, openat, symlinkat, utimensat,
    AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags,
};
use tar::EntryType;

use super::beneath::{self, Beneath, Denied, Inside};
use super::stream::{self, Member, TarError};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
/// AUFS bookkeeping (`.wh..wh.plnk` and the like): not part of the image, skipped as Docker does.
const AUFS_META: &str = ".wh..wh.";

/// Why a layer was not unpacked.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The layer names something it may not.
    #[error("refusing entry {entry:?}: it {reason}")]
    Refused { entry: PathBuf, reason: String },
    /// The filesystem failed while unpacking an entry.
    #[error("entry {entry:?}: {what}: {source}")]
    Io {
        entry: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tar(#[from] TarError),
}

impl LayerError {
    fn refused(entry: &Path, reason: impl Into<String>) -> LayerError {
        LayerError::Refused { entry: entry.to_path_buf(), reason: reason.into() }
    }

    fn at(entry: &Path) -> impl Fn(Denied) -> LayerError + '_ {
        move |d| match d {
            Denied::Refused(reason) => LayerError::refused(entry, reason),
            Denied::Io { what, source } => {
                LayerError::Io { entry: entry.to_path_buf(), what, source }
            }
        }
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref()))
}

pub(super) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A reader that transparently decompresses gzip input.
pub fn decompressed<'a, R: Read + 'a>(src: R) -> std::io::Result<Box<dyn Read + 'a>> {
    let mut buf = BufReader::new(src);
    let gz = buf.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    Ok(if gz { Box::new(GzDecoder::new(buf)) } else { Box::new(buf) })
}

/// Unpacks the layer in `src` into `dest` (which must exist and should be empty) and returns
/// its diff id, the digest of the uncompressed tar stream. On an error `dest` holds a part of
/// the layer and nothing outside it has changed: the caller throws `dest` away.
pub fn unpack(src: impl Read, dest: &Path) -> Result<String, LayerError> {
    let root = Beneath::open(dest).map_err(LayerError::at(Path::new(".")))?;
    stream::each_member(src, |entry| apply(&root, entry))
}

/// Owner, mode and time of an entry.
struct Meta {
    uid: Uid,
    gid: Gid,
    mode: Mode,
    mtime: Timespec,
}

fn apply(root: &Beneath, entry: &mut Member<'_, '_>) -> Result<(), LayerError> {
    let raw = entry.path().map_err(|e| LayerError::Tar(TarError::Read(e)))?.into_owned();
    let kind = match entry.header().entry_type() {
        // Old tars mark directories by a trailing slash on a regular member.
        EntryType::Regular if entry.path_bytes().ends_with(b"/") => EntryType::Directory,
        kind => kind,
    };
    if kind.is_pax_global_extensions() {
        return Ok(());
    }
    if is_root(&raw) {
        // The layer's root directory: the store owns it.
        return match kind {
            EntryType::Directory => Ok(()),
            _ => Err(LayerError::refused(&raw, "names the layer's root directory")),
        };
    }
    let at = LayerError::at(&raw);
    let path = Inside::new(&raw).map_err(&at)?;
    if let Some(done) = marker(root, &path, &raw) {
        return done;
    }
    let meta = meta_of(entry, &raw)?;
    let xattrs = xattrs_of(entry, &raw)?;
    match kind {
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            regular(root, &path, entry, &meta, &xattrs).map_err(&at)
        }
        EntryType::Directory => directory(root, &path, &meta, &xattrs).map_err(&at),
        EntryType::Symlink => symlink(root, &path, entry, &meta, &raw),
        EntryType::Link => hardlink(root, &path, entry, &raw),
        EntryType::Fifo => fifo(root, &path, &meta).map_err(&at),
        EntryType::Char => Err(LayerError::refused(
            &raw,
            "is a character device; images may not carry device nodes",
        )),
        EntryType::Block => {
            Err(LayerError::refused(&raw, "is a block device; images may not carry device nodes"))
        }
        other => Err(LayerError::refused(
            &raw,
            format!(
                "is a tar member of type {:?}, which layers do not hold",
                other.as_byte() as char
            ),
        )),
    }
}

fn is_root(raw: &Path) -> bool {
    raw.components().all(|c| matches!(c, Component::RootDir | Component::CurDir))
}

/// Applies a whiteout or opaque marker (or skips AUFS bookkeeping); `None` for other entries.
fn marker(root: &Beneath, path: &Inside, raw: &Path) -> Option<Result<(), LayerError>> {
    let at = LayerError::at(raw);
    let name = path.name().as_bytes();
    if name == OPAQUE.as_bytes() {
        return Some(opaque(root, path).map_err(&at));
    }
    if name.starts_with(AUFS_META.as_bytes()) {
        return Some(Ok(()));
    }
    let hidden = name.strip_prefix(WHITEOUT.as_bytes())?;
    if hidden.is_empty() || hidden == b"." || hidden == b".." {
        let shown = String::from_utf8_lossy(hidden);
        return Some(Err(LayerError::refused(
            raw,
            format!("whites out {shown:?}, which is not a name"),
        )));
    }
    Some(whiteout(root, &path.sibling(OsStr::from_bytes(hidden))).map_err(&at))
}

fn meta_of(entry: &Member<'_, '_>, raw: &Path) -> Result<Meta, LayerError> {
    let h = entry.header();
    let bad = |what: &str| LayerError::refused(raw, format!("has an unreadable {what}"));
    let id = |v: u64, what: &str| u32::try_from(v).map_err(|_| bad(what));
    let uid = id(h.uid().map_err(|_| bad("owner"))?, "owner")?;
    let gid = id(h.gid().map_err(|_| bad("group"))?, "group")?;
    let mode = h.mode().map_err(|_| bad("mode"))? & 0o7777;
    let secs = h.mtime().ok().and_then(|t| i64::try_from(t).ok()).unwrap_or(0);
    Ok(Meta {
        uid: Uid::from_raw(uid),
        gid: Gid::from_raw(gid),
        mode: Mode::from_raw_mode(mode),
        mtime: Timespec { tv_sec: secs, tv_nsec: 0 },
    })
}

/// An extended attribute to set: name, value.
type Xattr = (Vec<u8>, Vec<u8>);

/// What happens to an extended attribute an image carries.
#[derive(Debug, PartialEq, Eq)]
enum XattrRule {
    Keep,
    Drop,
    Refuse,
}

fn rule_for(name: &[u8]) -> XattrRule {
    if name.starts_with(b"trusted.") {
        XattrRule::Refuse
    } else if name.starts_with(b"user.") || name == b"security.capability" {
        XattrRule::Keep
    } else {
        XattrRule::Drop
    }
}

/// The extended attributes to set on the entry (PAX `SCHILY.xattr.*` records).
fn xattrs_of(entry: &mut Member<'_, '_>, raw: &Path) -> Result<Vec<Xattr>, LayerError> {
    let mut out = Vec::new();
    let Some(exts) = entry.pax_extensions().map_err(|e| LayerError::Tar(TarError::Read(e)))? else {
        return Ok(out);
    };
    for ext in exts {
        let ext = ext.map_err(|e| LayerError::Tar(TarError::Read(e)))?;
        let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else { continue };
        match rule_for(name) {
            XattrRule::Keep => out.push((name.to_vec(), ext.value_bytes().to_vec())),
            XattrRule::Drop => tracing::debug!(
                entry = %raw.display(),
                xattr = %String::from_utf8_lossy(name),
                "dropping an extended attribute the image carries"
            ),
            XattrRule::Refuse => {
                return Err(LayerError::refused(
                    raw,
                    format!(
                        "carries the extended attribute {:?}; overlayfs reads trusted.* \
                         attributes as orders, so images may not set them",
                        String::from_utf8_lossy(name)
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// Owner, mode, attributes, then times, on an open entry (chown clears set-id bits and file
/// capabilities, so it goes first).
fn finish(fd: impl AsFd, meta: &Meta, xattrs: &[Xattr]) -> Result<(), Denied> {
    fchown(&fd, Some(meta.uid), Some(meta.gid)).map_err(Denied::io("setting the owner"))?;
    fchmod(&fd, meta.mode).map_err(Denied::io("setting the mode"))?;
    for (name, value) in xattrs {
        let name = OsStr::from_bytes(name);
        match fsetxattr(&fd, name, value, XattrFlags::empty()) {
            // Not every filesystem keeps user attributes; Docker skips them there too.
            Ok(()) | Err(rustix::io::Errno::NOTSUP) => {}
            Err(e) => return Err(Denied::io("setting an extended attribute")(e)),
        }
    }
    let times = Timestamps { last_access: meta.mtime, last_modification: meta.mtime };
    rustix::fs::futimens(&fd, &times).map_err(Denied::io("setting the time"))
}

/// The directory an entry goes in (made if missing) with whatever held its name removed.
fn clear_spot(root: &Beneath, path: &Inside) -> Result<OwnedFd, Denied> {
    let dir = root.dir(path.parent(), true)?;
    beneath::remove(&dir, path.name())?;
    Ok(dir)
}

fn regular(
    root: &Beneath,
    path: &Inside,
    data: &mut impl Read,
    meta: &Meta,
    xattrs: &[Xattr],
) -> Result<(), Denied> {
    let dir = clear_spot(root, path)?;
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = openat(&dir, path.name(), flags, Mode::from_raw_mode(0o600))
        .map_err(Denied::io("creating a file"))?;
    let mut file = File::from(fd);
    std::io::copy(data, &mut file)
        .map_err(|source| Denied::Io { what: "writing a file", source })?;
    finish(&file, meta, xattrs)
}

fn directory(root: &Beneath, path: &Inside, meta: &Meta, xattrs: &[Xattr]) -> Result<(), Denied> {
    let parent = root.dir(path.parent(), true)?;
    if beneath::kind_of(&parent, path.name())? != Some(FileType::Directory) {
        beneath::remove(&parent, path.name())?;
        mkdirat(&parent, path.name(), Mode::from_raw_mode(0o700))
            .map_err(Denied::io("making a directory"))?;
    }
    finish(beneath::subdir(&parent, path.name())?, meta, xattrs)
}

fn symlink(
    root: &Beneath,
    path: &Inside,
    entry: &Member<'_, '_>,
    meta: &Meta,
    raw: &Path,
) -> Result<(), LayerError> {
    let at = LayerError::at(raw);
    let target = entry
        .link_name()
        .map_err(|e| LayerError::Tar(TarError::Read(e)))?
        .filter(|t| !t.as_os_str().is_empty())
        .ok_or_else(|| LayerError::refused(raw, "is a symbolic link without a target"))?;
    let dir = clear_spot(root, path).map_err(&at)?;
    // The target is the container's business: it is resolved inside the container's root.
    symlinkat(target.as_ref(), &dir, path.name())
        .map_err(Denied::io("making a symbolic link"))
        .map_err(&at)?;
    let nofollow = AtFlags::SYMLINK_NOFOLLOW;
    chownat(&dir, path.name(), Some(meta.uid), Some(meta.gid), nofollow)
        .map_err(Denied::io("setting the owner"))
        .map_err(&at)?;
    let times = Timestamps { last_access: meta.mtime, last_modification: meta.mtime };
    utimensat(&dir, path.name(), &times, nofollow)
        .map_err(Denied::io("setting the time"))
        .map_err(&at)
}

fn hardlink(
    root: &Beneath,
    path: &Inside,
    entry: &Member<'_, '_>,
    raw: &Path,
) -> Result<(), LayerError> {
    let at = LayerError::at(raw);
    let target = entry
        .link_name()
        .map_err(|e| LayerError::Tar(TarError::Read(e)))?
        .ok_or_else(|| LayerError::refused(raw, "is a hard link without a target"))?
        .into_owned();
    let link_refused = |why: String| {
        LayerError::refused(raw, format!("is a hard link to {target:?}, which {why}"))
    };
    let source = Inside::new(&target).map_err(|d| match d {
        Denied::Refused(why) => link_refused(why),
        io => at(io),
    })?;
    if source == *path {
        return Ok(());
    }
    let source_dir = root.dir(source.parent(), false).map_err(|d| match d {
        Denied::Refused(why) => link_refused(why),
        io => at(io),
    })?;
    match beneath::kind_of(&source_dir, source.name()).map_err(&at)? {
        None => return Err(link_refused("is not in this layer".into())),
        Some(FileType::Directory) => return Err(link_refused("is a directory".into())),
        // A link to a symbolic link names the link itself (linkat without AT_SYMLINK_FOLLOW).
        Some(_) => {}
    }
    let dir = clear_spot(root, path).map_err(&at)?;
    linkat(&source_dir, source.name(), &dir, path.name(), AtFlags::empty())
        .map_err(Denied::io("making a hard link"))
        .map_err(&at)
}

fn fifo(root: &Beneath, path: &Inside, meta: &Meta) -> Result<(), Denied> {
    let dir = clear_spot(root, path)?;
    mknodat(&dir, path.name(), FileType::Fifo, Mode::from_raw_mode(0o600), 0)
        .map_err(Denied::io("making a fifo"))?;
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd =
        openat(&dir, path.name(), flags, Mode::empty()).map_err(Denied::io("opening a fifo"))?;
    finish(&fd, meta, &[])
}

/// `.wh.NAME`: whatever this layer holds at NAME goes, and a 0/0 character device (overlayfs's
/// whiteout) hides what lower layers hold there.
fn whiteout(root: &Beneath, hidden: &Inside) -> Result<(), Denied> {
    let dir = clear_spot(root, hidden)?;
    mknodat(&dir, hidden.name(), FileType::CharacterDevice, Mode::empty(), 0)
        .map_err(Denied::io("making a whiteout"))
}

/// `DIR/.wh..wh..opq`: DIR hides what lower layers hold in it.
fn opaque(root: &Beneath, marker: &Inside) -> Result<(), Denied> {
    let dir = root.dir(marker.parent(), true)?;
    fsetxattr(&dir, "trusted.overlay.opaque", b"y", XattrFlags::empty())
        .map_err(Denied::io("marking a directory opaque"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::tests::tar_of;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn converts_whiteouts_and_computes_diff_id() {
        let dir = tempfile::tempdir().unwrap();
        let data =
            tar_of(&[("etc/hosts", b"x"), ("etc/.wh.passwd", b""), ("var/.wh..wh..opq", b"")]);
        let id = unpack(&data[..], dir.path()).unwrap();
        assert_eq!(id, digest(&data));
        assert_eq!(std::fs::read(dir.path().join("etc/hosts")).unwrap(), b"x");
        let wh = std::fs::symlink_metadata(dir.path().join("etc/passwd")).unwrap();
        assert!(wh.file_type().is_char_device());
        let opaque =
            rustix::fs::lgetxattr(dir.path().join("var"), "trusted.overlay.opaque", &mut [0u8; 4]);
        assert_eq!(opaque.ok(), Some(1));
    }

    #[test]
    fn gzip_layers_hash_the_uncompressed_stream() {
        use std::io::Write;
        let data = tar_of(&[("a", b"1")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(unpack(&gz.finish().unwrap()[..], dir.path()).unwrap(), digest(&data));
    }

    #[test]
    fn refuses_parent_dir_paths() {
        assert!(Inside::new(Path::new("../etc/passwd")).is_err());
        assert_eq!(Inside::new(Path::new("/./a/b")).unwrap().to_path(), PathBuf::from("a/b"));
    }

    #[test]
    fn only_user_attributes_and_file_capabilities_are_kept() {
        assert_eq!(rule_for(b"trusted.overlay.opaque"), XattrRule::Refuse);
        assert_eq!(rule_for(b"user.mime_type"), XattrRule::Keep);
        assert_eq!(rule_for(b"security.capability"), XattrRule::Keep);
        assert_eq!(rule_for(b"security.selinux"), XattrRule::Drop);
        assert_eq!(rule_for(b"system.posix_acl_access"), XattrRule::Drop);
    }
}
