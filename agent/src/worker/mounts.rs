//! A task's mounts, checked against the node before anything is mounted. Named volumes are
//! node-local directories (`<runtime data root>/volumes/<name>/_data`), made on first use with
//! the owner and mode the image gives the target (so `postgres` can write its data
//! directory), and kept when the task ends (Docker's `local` driver). Binds widen the task's
//! reach, so they follow the node's policy: a source must resolve (links followed) inside a
//! prefix the node allows (`shoald --task-allow-bind`), never the node's data root, `/`,
//! `/proc`, `/sys`, `/dev` or a socket, and is mounted `nosuid,nodev`.

use std::path::{Component, Path, PathBuf};

use shoal_proto::Mount;

use crate::image::{ImageInfo, ImageStore};
use crate::runtime::{NodePolicy, Relabel, RootfsSource, TaskMount, TaskMountKind};
use crate::volume::{Fill, Volumes};

/// Host paths no bind may reach, whatever the node allows.
const NEVER: &[&str] = &["/proc", "/sys", "/dev"];

const PROPAGATIONS: &[&str] = &["rprivate", "private", "rshared", "shared", "rslave", "slave"];

/// Where a node keeps its task-facing state, for the checks.
#[derive(Debug)]
pub struct MountPlaces<'a> {
    pub volumes: &'a Volumes,
    /// The node's data root: never bound.
    pub data_root: &'a Path,
    pub policy: &'a NodePolicy,
}

fn target_ok(target: &str) -> Result<(), String> {
    let p = Path::new(target);
    if !p.is_absolute() || target == "/" {
        return Err(format!("mount target {target:?} must be an absolute path other than /"));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("mount target {target:?} may not contain .."));
    }
    Ok(())
}

/// Checks and prepares `mounts` for a task of `image`.
/// Named volumes are leased to `task` (see [`Volumes::attach`]).
pub fn resolve(
    task: &str,
    mounts: &[Mount],
    image: &ImageInfo,
    store: &ImageStore,
    at: &MountPlaces<'_>,
) -> Result<Vec<TaskMount>, String> {
    let layers = match store.rootfs(image) {
        RootfsSource::Layers(layers) => layers,
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    let mut targets = std::collections::BTreeSet::new();
    for m in mounts {
        target_ok(&m.target)?;
        if !targets.insert(m.target.trim_end_matches('/').to_string()) {
            return Err(format!("two mounts have the target {}", m.target));
        }
        let mut relabel = Relabel::Keep;
        let kind = match m.r#type.as_str() {
            "" | "volume" => {
                let labels = m.volume_labels.clone().into_iter().collect();
                let fill = Fill { layers: &layers, target: &m.target, no_copy: m.no_copy };
                let source =
                    at.volumes.attach(task, &m.source, labels, fill).map_err(|e| e.to_string())?;
                relabel = match at.volumes.holders(&m.source) {
                    0 | 1 => Relabel::Private,
                    _ => Relabel::Shared,
                };
                TaskMountKind::Bind { source, propagation: "rprivate".into() }
            }
            "bind" => TaskMountKind::Bind {
                source: bind_source(&m.source, at)?,
                propagation: match m.bind_propagation.as_str() {
                    "" => "rprivate".into(),
                    p if PROPAGATIONS.contains(&p) => p.into(),
                    p => {
                        return Err(format!(
                            "bind propagation {p:?} is not one of {}",
                            PROPAGATIONS.join(", ")
                        ))
                    }
                },
            },
            "tmpfs" if m.tmpfs_mode > 0o7777 => {
                return Err(format!("tmpfs mode {:o} is not a file mode", m.tmpfs_mode))
            }
            "tmpfs" => TaskMountKind::Tmpfs {
                size: m.tmpfs_size,
                mode: if m.tmpfs_mode == 0 { 0o1777 } else { m.tmpfs_mode },
            },
            t => return Err(format!("mount type {t:?}: use volume, bind or tmpfs")),
        };
        out.push(TaskMount { target: m.target.clone(), read_only: m.read_only, kind, relabel });
    }
    Ok(out)
}

/// A bind source the node allows, resolved (links followed).
fn bind_source(source: &str, at: &MountPlaces<'_>) -> Result<PathBuf, String> {
    if !Path::new(source).is_absolute() {
        return Err(format!("bind source {source:?} must be an absolute path on the node"));
    }
    let real = std::fs::canonicalize(source)
        .map_err(|e| format!("bind source {source} does not exist on this node ({e})"))?;
    let refused = |why: &str| Err(format!("bind source {source} is refused: {why}"));
    if real == Path::new("/") {
        return refused("it is the node's root");
    }
    if NEVER.iter().any(|n| real.starts_with(n)) {
        return refused("it is inside /proc, /sys or /dev");
    }
    let data_root =
        std::fs::canonicalize(at.data_root).unwrap_or_else(|_| at.data_root.to_path_buf());
    if real.starts_with(&data_root) || data_root.starts_with(&real) {
        return refused("it holds the node's data root (keys, secrets, images)");
    }
    let meta = std::fs::metadata(&real).map_err(|e| format!("bind source {source}: {e}"))?;
    use std::os::unix::fs::FileTypeExt;
    if meta.file_type().is_socket() {
        return refused("it is a socket (a daemon's API is no task's business)");
    }
    let allowed = at.policy.allowed_bind_prefixes.iter().any(|p| {
        let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        real.starts_with(&p)
    });
    if !allowed {
        return Err(format!(
            "bind source {source} is outside what this node lets tasks bind; allow its directory with shoald --task-allow-bind"
        ));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mount(t: &str, source: &str, target: &str) -> Mount {
        Mount {
            r#type: t.into(),
            source: source.into(),
            target: target.into(),
            ..Default::default()
        }
    }

    fn setup() -> (tempfile::TempDir, ImageStore, ImageInfo) {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().join("images")).unwrap();
        let tar = dir.path().join("rootfs.tar");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(0o700);
        h.set_uid(70);
        h.set_gid(70);
        h.set_mtime(0);
        b.append_data(&mut h, "var/lib/db/", std::io::empty()).unwrap();
        std::fs::write(&tar, b.into_inner().unwrap()).unwrap();
        let info = store.import(&tar, "db:1").unwrap();
        (dir, store, info)
    }

    #[test]
    fn volumes_are_made_once_like_the_images_directory() {
        if !rustix::process::geteuid().is_root() {
            return; // the image's owners need root to unpack and to copy
        }
        let (dir, store, img) = setup();
        let volumes = Volumes::open(dir.path().join("volumes"));
        let policy = NodePolicy::secure_default();
        let at =
            MountPlaces { volumes: &volumes, data_root: &dir.path().join("root"), policy: &policy };
        let got =
            resolve("t1", &[mount("volume", "pgdata", "/var/lib/db")], &img, &store, &at).unwrap();
        let data = dir.path().join("volumes/pgdata/_data");
        assert_eq!(
            got[0].kind,
            TaskMountKind::Bind { source: data.clone(), propagation: "rprivate".into() }
        );
        let meta = std::fs::metadata(&data).unwrap();
        assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (70, 70, 0o700));
        std::fs::write(data.join("kept"), b"1").unwrap();
        resolve("t1", &[mount("volume", "pgdata", "/var/lib/db")], &img, &store, &at).unwrap();
        assert!(data.join("kept").exists(), "a volume is kept and reused");
        assert_eq!(got[0].relabel, Relabel::Private, "one holder: the task's own label");
        let second =
            resolve("t2", &[mount("volume", "pgdata", "/var/lib/db")], &img, &store, &at).unwrap();
        assert_eq!(second[0].relabel, Relabel::Shared, "two holders: the shared level");
        for bad in ["", "../x", "a/b", "-x"] {
            assert!(
                resolve("t1", &[mount("volume", bad, "/d")], &img, &store, &at).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn binds_follow_the_node_policy() {
        let (dir, store, img) = setup();
        let allowed = dir.path().join("srv");
        std::fs::create_dir_all(allowed.join("conf")).unwrap();
        std::fs::write(allowed.join("conf/app.yml"), b"x").unwrap();
        let outside = dir.path().join("elsewhere");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, allowed.join("sneaky")).unwrap();
        let data_root = dir.path().join("root");
        std::fs::create_dir_all(&data_root).unwrap();
        let policy =
            NodePolicy { allowed_bind_prefixes: vec![allowed.clone()], ..Default::default() };
        let volumes = Volumes::open(dir.path().join("v"));
        let at = MountPlaces { volumes: &volumes, data_root: &data_root, policy: &policy };
        let ok = resolve(
            "t1",
            &[mount("bind", &allowed.join("conf/app.yml").to_string_lossy(), "/etc/app.yml")],
            &img,
            &store,
            &at,
        );
        assert_eq!(ok.as_ref().unwrap()[0].relabel, Relabel::Keep, "the host's files keep theirs");
        let s = |p: &Path| p.to_string_lossy().into_owned();
        for (source, why) in [
            (s(&outside), "task-allow-bind"),
            (s(&allowed.join("sneaky")), "task-allow-bind"),
            (s(&allowed.join("missing")), "does not exist"),
            ("/".into(), "root"),
            ("/proc".into(), "/proc"),
            (s(&data_root), "data root"),
            ("relative/path".into(), "absolute"),
        ] {
            let e =
                resolve("t1", &[mount("bind", &source, "/mnt")], &img, &store, &at).unwrap_err();
            assert!(e.contains(why), "{source}: {e}");
        }
        let wide = NodePolicy { allowed_bind_prefixes: vec!["/".into()], ..Default::default() };
        let at = MountPlaces { policy: &wide, ..at };
        let e =
            resolve("t1", &[mount("bind", &s(&data_root), "/mnt")], &img, &store, &at).unwrap_err();
        assert!(e.contains("data root"), "allowing / still keeps the data root out: {e}");
        let e =
            resolve("t1", &[mount("bind", "/dev/null", "/mnt")], &img, &store, &at).unwrap_err();
        assert!(e.contains("/dev"), "{e}");
        let e = resolve("t1", &[mount("tmpfs", "", "../x")], &img, &store, &at).unwrap_err();
        assert!(e.contains("absolute"), "{e}");
    }
}
