//! Users by name (`--user postgres`, compose `user: www-data:www-data`): resolved against the
//! image's own `/etc/passwd` and `/etc/group`, read from its unpacked layers, topmost first,
//! as the merged root filesystem would show them. Nothing is followed out of the layers: a
//! symbolic link where the files or `/etc` should be is refused, and so are files larger than
//! an account database has any reason to be.

use super::{ImageError, ImageInfo, ImageStore};
use crate::runtime::{RootfsSource, UserSpec};

/// The most bytes of `/etc/passwd` or `/etc/group` read.
const MAX_DB: u64 = 4 << 20;

fn refused(image: &str, user: &str, why: impl std::fmt::Display) -> ImageError {
    ImageError::UnknownArchive(format!("image {image}: user {user:?}: {why}"))
}

impl ImageStore {
    /// The uid, gid and supplementary groups `user` (`name|uid[:group|gid]`) stands for in
    /// `image`. Numeric ids need no entry (the gid is then the uid's, or the uid itself);
    /// names must be in the image's files.
    pub fn resolve_user(&self, image: &ImageInfo, user: &str) -> Result<UserSpec, ImageError> {
        let user = user.trim();
        if user.is_empty() {
            return Ok(UserSpec::default());
        }
        let RootfsSource::Layers(layers) = self.rootfs(image) else {
            return Err(refused(&image.id, user, "the image has no layers to read users from"));
        };
        let (u, g) = user.split_once(':').unwrap_or((user, ""));
        let read = |name: &str| read_db(&layers, name).map_err(|e| refused(&image.id, user, e));
        // Numbers need no files (an entry only adds the primary group and the supplementary
        // ones); names must be found, in files that can be read safely.
        let numeric = u.parse::<u32>().is_ok() && (g.is_empty() || g.parse::<u32>().is_ok());
        let read_as_needed = |name: &str| match read(name) {
            Ok(text) => Ok(text),
            Err(_) if numeric => Ok(None),
            Err(e) => Err(e),
        };
        let passwd = Some(read_as_needed("passwd")?.unwrap_or_default());
        let entry = |pred: &dyn Fn(&[&str]) -> bool| -> Option<(String, u32, u32)> {
            passwd.as_deref()?.lines().map(|l| l.split(':').collect::<Vec<_>>()).find_map(|f| {
                if f.len() < 4 || !pred(&f) {
                    return None;
                }
                Some((f[0].to_string(), f[2].parse().ok()?, f[3].parse().ok()?))
            })
        };
        let (name, uid, primary) = match u.parse::<u32>() {
            Ok(uid) => match entry(&|f| f[2] == u) {
                Some((n, _, gid)) => (Some(n), uid, gid),
                None => (None, uid, uid),
            },
            Err(_) if u == "root" && entry(&|f| f[0] == "root").is_none() => {
                (Some("root".into()), 0, 0)
            }
            Err(_) => match entry(&|f| f[0] == u) {
                Some((n, uid, gid)) => (Some(n), uid, gid),
                None => {
                    return Err(refused(
                        &image.id,
                        user,
                        format!("the image's /etc/passwd has no user {u}"),
                    ))
                }
            },
        };
        let group = if g.is_empty() && name.is_none() { None } else { read_as_needed("group")? };
        let groups: Vec<Vec<&str>> = group
            .as_deref()
            .unwrap_or("")
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .filter(|f| f.len() >= 3)
            .collect();
        let gid = match g {
            "" => primary,
            g => match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => groups
                    .iter()
                    .find(|f| f[0] == g)
                    .and_then(|f| f[2].parse().ok())
                    .ok_or_else(|| {
                        refused(&image.id, user, format!("the image's /etc/group has no group {g}"))
                    })?,
            },
        };
        // Supplementary groups: those that list the user as a member (only when the group was
        // not given explicitly, as Docker does).
        let mut additional_gids = Vec::new();
        if let (Some(n), "") = (&name, g) {
            for f in &groups {
                let members = f.get(3).copied().unwrap_or("");
                if members.split(',').any(|m| m.trim() == n) {
                    if let Ok(id) = f[2].parse::<u32>() {
                        if id != gid && !additional_gids.contains(&id) {
                            additional_gids.push(id);
                        }
                    }
                }
            }
        }
        Ok(UserSpec { uid, gid, additional_gids })
    }
}

/// `/etc/<name>` as the merged image shows it: from the topmost layer that has it, `None` if
/// none does or a layer above removed it. Refuses links.
fn read_db(layers: &[std::path::PathBuf], name: &str) -> Result<Option<String>, String> {
    let bytes = super::merged::read(layers, &["etc", name], MAX_DB)?;
    bytes
        .map(|b| String::from_utf8(b).map_err(|_| format!("the image's /etc/{name} is not UTF-8")))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::super::tests::tar_of;
    use super::*;

    const PASSWD: &[u8] = b"root:x:0:0:root:/root:/bin/sh\npostgres:x:70:70::/var/lib/postgresql:/bin/sh\nwww-data:x:33:33::/var/www:/bin/false\n";
    const GROUP: &[u8] = b"root:x:0:\npostgres:x:70:\nwww-data:x:33:\nssl-cert:x:101:postgres\naudio:x:29:www-data,postgres\n";

    fn image(files: &[(&str, &[u8])]) -> (tempfile::TempDir, ImageStore, ImageInfo) {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().join("images")).unwrap();
        let tar = dir.path().join("rootfs.tar");
        std::fs::write(&tar, tar_of(files)).unwrap();
        let info = store.import(&tar, "users:1").unwrap();
        (dir, store, info)
    }

    #[test]
    fn names_resolve_against_the_images_files() {
        let (_d, store, img) = image(&[("etc/passwd", PASSWD), ("etc/group", GROUP)]);
        let u = |s: &str| store.resolve_user(&img, s);
        assert_eq!(
            u("postgres").unwrap(),
            UserSpec { uid: 70, gid: 70, additional_gids: vec![101, 29] }
        );
        assert_eq!(
            u("www-data:www-data").unwrap(),
            UserSpec { uid: 33, gid: 33, additional_gids: vec![] }
        );
        assert_eq!(u("postgres:33").unwrap().gid, 33);
        assert_eq!(u("70").unwrap(), UserSpec { uid: 70, gid: 70, additional_gids: vec![101, 29] });
        assert_eq!(u("1234:5").unwrap(), UserSpec { uid: 1234, gid: 5, additional_gids: vec![] });
        assert_eq!(u("1234").unwrap().gid, 1234, "a uid the image does not list keeps its own gid");
        assert_eq!(u("root").unwrap(), UserSpec::default());
        let e = u("mysql").unwrap_err().to_string();
        assert!(e.contains("no user mysql"), "{e}");
        let e = u("postgres:wheel").unwrap_err().to_string();
        assert!(e.contains("no group wheel"), "{e}");
    }

    #[test]
    fn links_out_of_the_image_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().join("images")).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        b.append_link(&mut h, "etc/passwd", "/etc/passwd").unwrap();
        std::fs::write(dir.path().join("l.tar"), b.into_inner().unwrap()).unwrap();
        let img = store.import(&dir.path().join("l.tar"), "links:1").unwrap();
        let e = store.resolve_user(&img, "postgres").unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        // Numeric users need no files at all.
        assert_eq!(store.resolve_user(&img, "70:70").unwrap().uid, 70);
    }
}
