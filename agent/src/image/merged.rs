//! Reads one file of an image as its merged root filesystem would show it, from the unpacked
//! layers, topmost first: a whiteout or a non-directory on the way hides what lower layers
//! have, an opaque directory hides the lower ones' contents, and nothing is followed out of
//! the layers (a symbolic link anywhere on the path is refused). Files larger than `max` are
//! refused rather than read in part.

use std::io::Read;
use std::path::{Path, PathBuf};

/// The bytes of `/` + `path` (e.g. `["var", "lib", "dpkg", "status"]`) in the image whose
/// layers are `layers` (topmost first); `None` when the image has no such file.
pub fn read(layers: &[PathBuf], path: &[&str], max: u64) -> Result<Option<Vec<u8>>, String> {
    let shown = format!("/{}", path.join("/"));
    'layers: for layer in layers {
        let mut at = layer.clone();
        for (i, part) in path.iter().enumerate() {
            let parent = at.clone();
            at.push(part);
            let last = i + 1 == path.len();
            match std::fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(format!(
                        "the image's {shown} passes a symbolic link; Shoal does not follow it"
                    ))
                }
                Ok(m) if last && m.is_file() => return read_small(&at, &shown, max).map(Some),
                Ok(m) if !last && m.is_dir() => continue,
                // A whiteout, or something that is not what the path needs: hidden here.
                Ok(_) => return Ok(None),
                Err(_) if opaque(&parent) && parent != *layer => return Ok(None),
                Err(_) => continue 'layers,
            }
        }
    }
    Ok(None)
}

fn read_small(path: &Path, shown: &str, max: u64) -> Result<Vec<u8>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("reading {shown}: {e}"))?;
    let mut bytes = Vec::new();
    f.take(max + 1).read_to_end(&mut bytes).map_err(|e| format!("reading {shown}: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(format!("the image's {shown} is larger than {max} bytes"));
    }
    Ok(bytes)
}

/// Whether a layer's directory is opaque (hides what lower layers have there).
fn opaque(dir: &Path) -> bool {
    rustix::fs::getxattr(dir, "trusted.overlay.opaque", &mut [0u8; 1]).is_ok_and(|n| n == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topmost_layer_wins_and_links_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (top, bottom) = (dir.path().join("top"), dir.path().join("bottom"));
        std::fs::create_dir_all(bottom.join("var/lib/dpkg")).unwrap();
        std::fs::write(bottom.join("var/lib/dpkg/status"), b"old").unwrap();
        std::fs::create_dir_all(top.join("var/lib")).unwrap();
        let layers = vec![top.clone(), bottom.clone()];
        let path = ["var", "lib", "dpkg", "status"];
        assert_eq!(read(&layers, &path, 100).unwrap().as_deref(), Some(&b"old"[..]));
        std::fs::create_dir_all(top.join("var/lib/dpkg")).unwrap();
        std::fs::write(top.join("var/lib/dpkg/status"), b"new").unwrap();
        assert_eq!(read(&layers, &path, 100).unwrap().as_deref(), Some(&b"new"[..]));
        assert!(read(&layers, &path, 2).unwrap_err().contains("larger than 2"));
        std::fs::remove_file(top.join("var/lib/dpkg/status")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", top.join("var/lib/dpkg/status")).unwrap();
        assert!(read(&layers, &path, 100).unwrap_err().contains("symbolic link"));
        std::fs::remove_file(top.join("var/lib/dpkg/status")).unwrap();
        // A plain file where a directory should be hides the lower layers' tree.
        std::fs::remove_dir(top.join("var/lib/dpkg")).unwrap();
        std::fs::write(top.join("var/lib/dpkg"), b"").unwrap();
        assert_eq!(read(&layers, &path, 100).unwrap(), None);
        assert_eq!(read(&layers, &["etc", "os-release"], 100).unwrap(), None);
    }
}
