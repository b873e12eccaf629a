//! Unpacks one layer tarball (plain or gzip) into a directory overlayfs can use as a lower
//! layer: `.wh.NAME` whiteouts become 0/0 character devices and `.wh..wh..opq` marks its
//! directory opaque (`trusted.overlay.opaque=y`). Computes the layer's diff id on the way.

use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use rustix::fs::{mknodat, FileType, Mode, CWD};

use super::ImageError;

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// A reader that hashes (SHA-256) everything read through it.
struct Hashing<R> {
    inner: R,
    ctx: ring::digest::Context,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        Ok(n)
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A reader that transparently decompresses gzip input.
pub fn decompressed<'a, R: Read + 'a>(src: R) -> std::io::Result<Box<dyn Read + 'a>> {
    let mut buf = BufReader::new(src);
    let gz = buf.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    Ok(if gz { Box::new(GzDecoder::new(buf)) } else { Box::new(buf) })
}

/// Unpacks the layer in `src` into `dest` (which must exist) and returns its diff id, the
/// digest of the uncompressed tar stream.
pub fn unpack(src: impl Read, dest: &Path) -> Result<String, ImageError> {
    let err = |e: std::io::Error| ImageError::Layer { path: dest.to_path_buf(), source: e };
    let mut reader = Hashing {
        inner: decompressed(src).map_err(err)?,
        ctx: ring::digest::Context::new(&ring::digest::SHA256),
    };
    {
        let mut archive = tar::Archive::new(&mut reader);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_unpack_xattrs(true);
        archive.set_preserve_mtime(true);
        archive.set_overwrite(true);
        for entry in archive.entries().map_err(err)? {
            let mut entry = entry.map_err(err)?;
            let path = entry.path().map_err(err)?.into_owned();
            let Some(rel) = clean(&path) else {
                return Err(err(std::io::Error::other(format!("unsafe path {path:?} in layer"))));
            };
            match whiteout_of(&rel) {
                Some(Whiteout::Opaque(dir)) => mark_opaque(&dest.join(dir)).map_err(err)?,
                Some(Whiteout::File(file)) => make_whiteout(&dest.join(file)).map_err(err)?,
                None => {
                    entry.unpack_in(dest).map_err(err)?;
                }
            }
        }
    }
    std::io::copy(&mut reader, &mut std::io::sink()).map_err(err)?;
    Ok(format!("sha256:{}", hex(reader.ctx.finish().as_ref())))
}

/// The path made relative, or `None` if it climbs out with `..`.
fn clean(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

enum Whiteout {
    /// The directory whose lower contents are hidden.
    Opaque(PathBuf),
    /// The path that is deleted.
    File(PathBuf),
}

fn whiteout_of(rel: &Path) -> Option<Whiteout> {
    let name = rel.file_name()?.to_str()?;
    let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
    if name == OPAQUE {
        Some(Whiteout::Opaque(parent))
    } else {
        name.strip_prefix(WHITEOUT).map(|n| Whiteout::File(parent.join(n)))
    }
}

fn mark_opaque(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    rustix::fs::lsetxattr(dir, "trusted.overlay.opaque", b"y", rustix::fs::XattrFlags::empty())?;
    Ok(())
}

fn make_whiteout(path: &Path) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path)?,
        Ok(_) => std::fs::remove_file(path)?,
        Err(_) => {}
    }
    mknodat(CWD, path, FileType::CharacterDevice, Mode::empty(), 0)?;
    Ok(())
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
        assert!(clean(Path::new("../etc/passwd")).is_none());
        assert_eq!(clean(Path::new("/./a/b")).unwrap(), PathBuf::from("a/b"));
    }
}
