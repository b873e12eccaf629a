//! The node's named volumes, Docker's `local` driver: each is a directory
//! `<runtime data root>/volumes/<name>/_data` with a small `volume.json` beside it (when it was
//! made, its labels). A volume is made by `shoal volume create` or by the first task that uses
//! it, filled then from the image's files at the mount target (owner, mode and contents, as
//! Docker's copy-up does, unless the mount says `volume-nocopy`), and kept when its tasks end.
//!
//! Tasks lease the volumes they mount, and removal is refused while a lease is held, under the
//! same lock that hands them out, so a volume cannot vanish under a task being started.
//!
//! The image's layers are untrusted: the copy walks them without following any link (links are
//! copied as links), and takes only directories, regular files and links.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

pub use shoal_proto::spec::service::ANONYMOUS_VOLUME as ANONYMOUS;

/// Why a volume request was refused.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(
        "volume name {0:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit"
    )]
    BadName(String),
    #[error("no such volume: {0}")]
    NotFound(String),
    #[error("volume {name} is in use by task {}; remove the service first", .tasks.join(", "))]
    InUse { name: String, tasks: Vec<String> },
    #[error("volume {name}: {what}: {source}")]
    Io { name: String, what: &'static str, source: std::io::Error },
}

fn io<'a>(name: &'a str, what: &'static str) -> impl FnOnce(std::io::Error) -> VolumeError + 'a {
    move |source| VolumeError::Io { name: name.to_string(), what, source }
}

/// What `volume ls` and `volume inspect` show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    pub mountpoint: PathBuf,
    pub created_at_unix: i64,
    pub labels: BTreeMap<String, String>,
    /// This node's tasks that hold it.
    pub tasks: Vec<String>,
    /// Bytes held, when asked for.
    pub size: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Meta {
    created_at_unix: i64,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// Where a new volume's first files come from: the image's layers (topmost first) and the
/// mount's target in it.
#[derive(Debug, Clone, Copy)]
pub struct Fill<'a> {
    pub layers: &'a [PathBuf],
    pub target: &'a str,
    /// Only the target's owner and mode, not its files (`volume-nocopy`).
    pub no_copy: bool,
}

/// A volume name: letters, digits, `_`, `.`, `-`, starting with a letter or digit.
pub fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The node's volumes and the tasks that hold them.
#[derive(Debug)]
pub struct Volumes {
    root: PathBuf,
    /// volume name → IDs of the tasks holding it.
    leases: Mutex<BTreeMap<String, BTreeSet<String>>>,
}

impl Volumes {
    /// The volumes under `root` (made when the first volume is).
    pub fn open(root: impl Into<PathBuf>) -> Volumes {
        Volumes { root: root.into(), leases: Mutex::default() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, BTreeSet<String>>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn data(&self, name: &str) -> PathBuf {
        self.root.join(name).join("_data")
    }

    fn checked(name: &str) -> Result<(), VolumeError> {
        if name_ok(name) {
            Ok(())
        } else {
            Err(VolumeError::BadName(name.to_string()))
        }
    }

    /// Makes volume `name` (empty, root's, 0755) unless it exists; an existing one is returned
    /// as it is, labels unchanged (as `docker volume create` does).
    pub fn create(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<VolumeInfo, VolumeError> {
        Self::checked(name)?;
        let _leases = self.leases();
        if !self.data(name).is_dir() {
            self.make(name, labels, None)?;
        }
        self.info(name, &_leases, false)
    }

    /// Makes the volume's directory in one step: staged beside it, then renamed into place.
    fn make(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        fill: Option<Fill<'_>>,
    ) -> Result<(), VolumeError> {
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir).map_err(io(name, "creating its directory"))?;
        let meta_path = dir.join("volume.json");
        if !meta_path.exists() {
            let meta = Meta { created_at_unix: now_unix(), labels };
            let text = serde_json::to_vec_pretty(&meta).expect("plain data serializes");
            let tmp = dir.join("volume.json.new");
            std::fs::write(&tmp, text).map_err(io(name, "writing its metadata"))?;
            std::fs::rename(&tmp, &meta_path).map_err(io(name, "writing its metadata"))?;
        }
        let staging = dir.join("_data.new");
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir(&staging).map_err(io(name, "creating its data directory"))?;
        if let Some(fill) = fill {
            fill_from_image(&staging, fill).map_err(io(name, "copying the image's files"))?;
        }
        // Replaces an empty `_data` (a volume made by `volume create`, unused so far).
        std::fs::rename(&staging, self.data(name)).map_err(io(name, "creating its data"))?;
        tracing::info!(volume = name, "volume created");
        Ok(())
    }

    /// Hands task `task` the directory of volume `name`, making it on first use (filled from
    /// `fill`) or filling it if it is still empty and no other task holds it.
    pub fn attach(
        &self,
        task: &str,
        name: &str,
        labels: BTreeMap<String, String>,
        fill: Fill<'_>,
    ) -> Result<PathBuf, VolumeError> {
        Self::checked(name)?;
        let mut leases = self.leases();
        let data = self.data(name);
        let held = leases.get(name).is_some_and(|t| t.iter().any(|t| t != task));
        let empty = std::fs::read_dir(&data).map(|mut d| d.next().is_none()).unwrap_or(true);
        if !data.is_dir() || (empty && !held) {
            self.make(name, labels, Some(fill))?;
        }
        leases.entry(name.to_string()).or_default().insert(task.to_string());
        Ok(data)
    }

    /// Records that `task` holds `names` (a task taken over after a restart).
    pub fn lease(&self, task: &str, names: impl IntoIterator<Item = String>) {
        let mut leases = self.leases();
        for n in names {
            leases.entry(n).or_default().insert(task.to_string());
        }
    }

    /// How many tasks hold volume `name`.
    pub fn holders(&self, name: &str) -> usize {
        self.leases().get(name).map_or(0, BTreeSet::len)
    }

    /// Drops every volume lease of `task`.
    pub fn release(&self, task: &str) {
        let mut leases = self.leases();
        leases.values_mut().for_each(|t| {
            t.remove(task);
        });
        leases.retain(|_, t| !t.is_empty());
    }

    fn info(
        &self,
        name: &str,
        leases: &BTreeMap<String, BTreeSet<String>>,
        size: bool,
    ) -> Result<VolumeInfo, VolumeError> {
        let data = self.data(name);
        let stat = std::fs::metadata(&data).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => VolumeError::NotFound(name.to_string()),
            _ => VolumeError::Io { name: name.to_string(), what: "reading it", source: e },
        })?;
        let meta: Meta = std::fs::read(self.root.join(name).join("volume.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Meta { created_at_unix: stat.ctime(), labels: BTreeMap::new() });
        Ok(VolumeInfo {
            name: name.to_string(),
            mountpoint: data.clone(),
            created_at_unix: meta.created_at_unix,
            labels: meta.labels,
            tasks: leases.get(name).map(|t| t.iter().cloned().collect()).unwrap_or_default(),
            size: size.then(|| disk_usage(&data)),
        })
    }

    fn names(&self) -> Result<Vec<String>, VolumeError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("(all)", "listing volumes")(e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| name_ok(n) && self.data(n).is_dir())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Every volume of the node, by name.
    pub fn list(&self) -> Result<Vec<VolumeInfo>, VolumeError> {
        let leases = self.leases();
        self.names()?.iter().map(|n| self.info(n, &leases, false)).collect()
    }

    /// One volume, with the bytes it holds when `size`.
    pub fn inspect(&self, name: &str, size: bool) -> Result<VolumeInfo, VolumeError> {
        Self::checked(name)?;
        let leases = self.leases();
        self.info(name, &leases, size)
    }

    /// Removes volume `name` and its data, unless a task holds it.
    pub fn remove(&self, name: &str) -> Result<(), VolumeError> {
        Self::checked(name)?;
        let leases = self.leases();
        self.remove_locked(name, &leases).map(|_| ())
    }

    /// Removes `name` if free; returns the bytes it held.
    fn remove_locked(
        &self,
        name: &str,
        leases: &BTreeMap<String, BTreeSet<String>>,
    ) -> Result<u64, VolumeError> {
        let info = self.info(name, leases, false)?;
        if !info.tasks.is_empty() {
            return Err(VolumeError::InUse { name: name.to_string(), tasks: info.tasks });
        }
        let bytes = disk_usage(&info.mountpoint);
        // Out of sight first (one rename), then deleted: a crash leaves no half volume.
        let gone = self.root.join(format!(".removing-{name}-{:08x}", rand::random::<u32>()));
        std::fs::rename(self.root.join(name), &gone).map_err(io(name, "removing it"))?;
        std::fs::remove_dir_all(&gone).map_err(io(name, "removing its data"))?;
        tracing::info!(volume = name, "volume removed");
        Ok(bytes)
    }

    /// Removes the volumes no task holds: anonymous ones only unless `all`, and only those
    /// with every label of `filters` (`key` or `key=value`). Returns their names and bytes.
    pub fn prune(&self, all: bool, filters: &[String]) -> Result<(Vec<String>, u64), VolumeError> {
        let leases = self.leases();
        let (mut removed, mut bytes) = (Vec::new(), 0);
        for name in self.names()? {
            let info = self.info(&name, &leases, false)?;
            let labelled = |f: &String| match f.split_once('=') {
                Some((k, v)) => info.labels.get(k).is_some_and(|x| x == v),
                None => info.labels.contains_key(f),
            };
            let anonymous = info.labels.contains_key(ANONYMOUS);
            if !info.tasks.is_empty() || !(all || anonymous) || !filters.iter().all(labelled) {
                continue;
            }
            bytes += self.remove_locked(&name, &leases)?;
            removed.push(name);
        }
        // Leftovers of removals a crash cut short.
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(".removing-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok((removed, bytes))
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Bytes of the regular files under `dir` (links not followed).
fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) if m.is_file() => total += m.len(),
                _ => {}
            }
        }
    }
    total
}

// ---------------------------------------------------------------------------------------------
// Copy-up: the image's merged view at the target, read straight from the layer directories.

/// A whiteout in an unpacked layer: a 0/0 character device.
fn is_whiteout(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    m.file_type().is_char_device() && m.rdev() == 0
}

fn is_opaque(dir: &Path) -> bool {
    let mut buf = [0u8; 4];
    matches!(rustix::fs::lgetxattr(dir, "trusted.overlay.opaque", &mut buf), Ok(1) if buf[0] == b'y')
}

/// What the merged image has at one path: the layer entries that make it up, topmost first
/// (several only for a directory that lower layers add to).
enum Merged {
    Missing,
    Dir(Vec<PathBuf>),
    Other(PathBuf, std::fs::Metadata),
}

/// Looks `name` up in the directories `dirs` (topmost first) of one merged directory.
fn lookup(dirs: &[PathBuf], name: &std::ffi::OsStr) -> Merged {
    let mut found = Vec::new();
    for d in dirs {
        let p = d.join(name);
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        if is_whiteout(&m) {
            break;
        }
        if !m.is_dir() {
            if found.is_empty() {
                return Merged::Other(p, m);
            }
            break;
        }
        let opaque = is_opaque(&p);
        found.push(p);
        if opaque {
            break;
        }
    }
    if found.is_empty() {
        Merged::Missing
    } else {
        Merged::Dir(found)
    }
}

/// Fills `dest` (a new, empty directory) as the image has `fill.target`: its owner and mode
/// and, unless `no_copy`, everything under it. A target the image lacks leaves it as it is.
fn fill_from_image(dest: &Path, fill: Fill<'_>) -> std::io::Result<()> {
    let mut dirs: Vec<PathBuf> = fill.layers.to_vec();
    for part in Path::new(fill.target).components() {
        let std::path::Component::Normal(name) = part else { continue };
        match lookup(&dirs, name) {
            Merged::Dir(d) => dirs = d,
            // A file, a link (not followed: it could lead anywhere) or nothing.
            _ => return Ok(()),
        }
    }
    let top = std::fs::symlink_metadata(&dirs[0])?;
    copy_owner_mode(dest, &top)?;
    if !fill.no_copy {
        copy_dir(&dirs, dest)?;
    }
    Ok(())
}

fn copy_owner_mode(dest: &Path, m: &std::fs::Metadata) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dest, Some(m.uid()), Some(m.gid()))?;
    if !m.file_type().is_symlink() {
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
    }
    Ok(())
}

/// Copies the merged directory made of `dirs` (topmost first) into `dest`.
fn copy_dir(dirs: &[PathBuf], dest: &Path) -> std::io::Result<()> {
    let mut seen = BTreeSet::new();
    for d in dirs {
        for e in std::fs::read_dir(d)? {
            seen.insert(e?.file_name());
        }
    }
    for name in seen {
        let to = dest.join(&name);
        match lookup(dirs, &name) {
            Merged::Missing => {}
            Merged::Dir(sub) => {
                std::fs::create_dir(&to)?;
                copy_dir(&sub, &to)?;
                copy_owner_mode(&to, &std::fs::symlink_metadata(&sub[0])?)?;
            }
            Merged::Other(from, m) if m.file_type().is_symlink() => {
                std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
                copy_owner_mode(&to, &m)?;
            }
            Merged::Other(from, m) if m.is_file() => {
                use std::os::unix::fs::OpenOptionsExt;
                let mut src = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .open(&from)?;
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&to)?;
                std::io::copy(&mut src, &mut out)?;
                copy_owner_mode(&to, &m)?;
            }
            // Fifos and sockets are not copied (layers hold no devices but whiteouts).
            Merged::Other(..) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(root: &Path, files: &[(&str, &str)]) -> PathBuf {
        let dir = root.join(format!("l{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        for (path, body) in files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            match *body {
                "<dir>" => std::fs::create_dir_all(&p).unwrap(),
                "<whiteout>" => rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &p,
                    rustix::fs::FileType::CharacterDevice,
                    rustix::fs::Mode::empty(),
                    0,
                )
                .unwrap(),
                b if b.starts_with("->") => std::os::unix::fs::symlink(&b[2..], &p).unwrap(),
                b => std::fs::write(&p, b).unwrap(),
            }
        }
        dir
    }

    fn tree(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                let m = e.path().symlink_metadata().unwrap();
                if m.is_dir() {
                    stack.push(e.path());
                    out.push(format!("{rel}/"));
                } else if m.file_type().is_symlink() {
                    out.push(format!("{rel}->{}", std::fs::read_link(e.path()).unwrap().display()));
                } else {
                    out.push(format!("{rel}={}", std::fs::read_to_string(e.path()).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_new_volume_holds_the_images_merged_files_at_the_target() {
        let tmp = tempfile::tempdir().unwrap();
        let base = layer(
            tmp.path(),
            &[
                ("srv/www/index.html", "old"),
                ("srv/www/gone.html", "x"),
                ("srv/www/sub/a", "a"),
                ("srv/www/hidden/b", "b"),
                ("srv/other", "not copied"),
            ],
        );
        let top = layer(
            tmp.path(),
            &[
                ("srv/www/index.html", "new"),
                ("srv/www/gone.html", "<whiteout>"),
                ("srv/www/link", "->/etc/shadow"),
                ("srv/www/hidden", "<dir>"),
            ],
        );
        if rustix::fs::lsetxattr(
            top.join("srv/www/hidden"),
            "trusted.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .is_err()
        {
            return; // trusted.* needs CAP_SYS_ADMIN; CI runs as root
        }
        let v = Volumes::open(tmp.path().join("volumes"));
        let fill = Fill { layers: &[top, base], target: "/srv/www", no_copy: false };
        let data = v.attach("t1", "site", BTreeMap::new(), fill).unwrap();
        assert_eq!(
            tree(&data),
            ["hidden/", "index.html=new", "link->/etc/shadow", "sub/", "sub/a=a"],
            "upper files win, whiteouts and opaque directories hide lower ones, links stay links"
        );
        std::fs::write(data.join("index.html"), "edited").unwrap();
        v.release("t1");
        let again = v.attach("t2", "site", BTreeMap::new(), fill).unwrap();
        assert_eq!(std::fs::read_to_string(again.join("index.html")).unwrap(), "edited");
    }

    #[test]
    fn a_volume_in_use_is_not_removed_and_prune_keeps_named_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let v = Volumes::open(tmp.path().join("volumes"));
        let none: &[PathBuf] = &[];
        let fill = Fill { layers: none, target: "/data", no_copy: false };
        let labels = BTreeMap::from([(ANONYMOUS.to_string(), String::new())]);
        v.create("named", BTreeMap::from([("team".into(), "db".into())])).unwrap();
        v.attach("t1", "named", BTreeMap::new(), fill).unwrap();
        v.attach("t1", "anon", labels.clone(), fill).unwrap();
        v.create("spare-anon", labels).unwrap();
        let e = v.remove("named").unwrap_err();
        assert!(matches!(&e, VolumeError::InUse { tasks, .. } if tasks == &["t1"]), "{e}");
        assert!(e.to_string().contains("in use by task t1"), "{e}");
        assert_eq!(v.prune(true, &[]).unwrap().0, ["spare-anon"], "held volumes survive prune");
        v.release("t1");
        let listed: Vec<String> = v.list().unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(listed, ["anon", "named"]);
        assert_eq!(v.inspect("named", false).unwrap().labels["team"], "db");
        assert_eq!(v.prune(false, &[]).unwrap().0, ["anon"], "without --all only anonymous ones");
        assert_eq!(v.prune(true, &["team=web".into()]).unwrap().0, Vec::<String>::new());
        v.remove("named").unwrap();
        assert!(matches!(v.inspect("named", false), Err(VolumeError::NotFound(_))));
        assert!(matches!(v.remove("../x"), Err(VolumeError::BadName(_))));
        assert!(std::fs::read_dir(tmp.path().join("volumes")).unwrap().next().is_none());
    }
}
