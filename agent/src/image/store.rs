//! `ImageStore`: where images live on disk and how they get there.
//! Layout under the root: `blobs/sha256/<hex>` (configs and layer blobs as a registry carries
//! them), `layers/<hex>/` (unpacked layers, named by diff id), `images/<hex>.json` (metadata
//! incl. names and repository digests), `tmp/` (staging and downloads in progress).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;

use super::archive::{self, Found};
use super::layer::{self, digest};
use super::reference::{check_digest, Reference};
use super::{media, Blob, ImageError, ImageInfo, RunConfig};
use crate::runtime::RootfsSource;

/// The node's images.
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    /// Serializes writers: metadata and tag moves are read-modify-write.
    pub(super) lock: Mutex<()>,
}

#[derive(Deserialize)]
pub(super) struct RawConfig {
    #[serde(default)]
    config: Option<RawRun>,
    pub(super) rootfs: RawRootfs,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawRun {
    env: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RawRootfs {
    pub(super) diff_ids: Vec<String>,
}

impl ImageStore {
    /// Opens (creating) the store at `root` and clears leftovers of interrupted loads.
    pub fn open(root: impl Into<PathBuf>) -> Result<ImageStore, ImageError> {
        let root = root.into();
        let _ = std::fs::remove_dir_all(root.join("tmp"));
        ImageStore::attach(root)
    }

    /// Opens (creating) the store at `root` without touching its staging area: for a second
    /// user of a store another part of the process loads images into (the task executor).
    pub fn attach(root: impl Into<PathBuf>) -> Result<ImageStore, ImageError> {
        let root = root.into();
        for d in ["blobs/sha256", "layers", "images", "tmp"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(|e| ImageError::io("creating", &p, e))?;
        }
        // Root's alone: unpacked layers keep their setuid files and device nodes.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| ImageError::io("restricting", &root, e))?;
        Ok(ImageStore { root, lock: Mutex::new(()) })
    }

    /// Imports a rootfs tarball (plain or gzip) as a one-layer image named `reference`.
    /// All or nothing: a refused layer leaves the store as it was.
    pub fn import(&self, rootfs_tar: &Path, reference: &str) -> Result<ImageInfo, ImageError> {
        let name =
            Reference::parse(reference)?.tagged().ok_or_else(|| ImageError::BadReference {
                reference: reference.into(),
                reason: "import needs NAME[:TAG]".into(),
            })?;
        let work = self.tmp_dir()?;
        let result = self.import_staged(rootfs_tar, name, &work);
        let _ = std::fs::remove_dir_all(&work);
        result
    }

    fn import_staged(
        &self,
        rootfs_tar: &Path,
        name: String,
        work: &Path,
    ) -> Result<ImageInfo, ImageError> {
        let layer =
            unpack_file(rootfs_tar, &rootfs_tar.display().to_string(), work, "layer", false)?;
        let config = serde_json::json!({
            "architecture": super::go_arch(),
            "os": "linux",
            "config": {},
            "rootfs": { "type": "layers", "diff_ids": [layer.diff_id] },
        });
        let found =
            Found { names: vec![name], config: config.to_string().into_bytes(), layers: vec![] };
        let ready = prepare(found, vec![layer], Vec::new())?;
        let mut stored = self.commit(vec![ready])?;
        stored.pop().ok_or_else(|| ImageError::UnknownArchive("nothing imported".into()))
    }

    /// Loads every image of a `docker save` or OCI-layout archive (plain or gzip). All or
    /// nothing: a refused member or layer leaves the store as it was.
    pub fn load_archive(&self, path: &Path) -> Result<Vec<ImageInfo>, ImageError> {
        let work = self.tmp_dir()?;
        let result = self.load_staged(path, &work);
        let _ = std::fs::remove_dir_all(&work);
        result
    }

    fn load_staged(&self, path: &Path, work: &Path) -> Result<Vec<ImageInfo>, ImageError> {
        let file = std::fs::File::open(path).map_err(|e| ImageError::io("opening", path, e))?;
        let staged = archive::stage(file, &work.join("archive"))?;
        let mut ready = Vec::new();
        for (i, found) in archive::read(&staged)?.into_iter().enumerate() {
            let mut layers = Vec::new();
            for (j, l) in found.layers.iter().enumerate() {
                // The staged copy is ours: it becomes the layer's blob as it is.
                layers.push(unpack_file(&l.path, &l.name, work, &format!("layer-{i}-{j}"), true)?);
            }
            ready.push(prepare(found, layers, Vec::new())?);
        }
        self.commit(ready)
    }

    /// Moves checked images into the store: layers and blobs not stored yet, configs, metadata
    /// and names. Holds the writer lock throughout, so a removal cannot take a layer in between.
    pub(super) fn commit(&self, ready: Vec<Ready>) -> Result<Vec<ImageInfo>, ImageError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for r in ready {
            for l in &r.layers {
                if let Some(dir) = &l.dir {
                    let dest = self.layer_dir(&l.diff_id);
                    if !dest.exists() {
                        std::fs::rename(dir, &dest)
                            .map_err(|e| ImageError::io("storing a layer in", &dest, e))?;
                    }
                }
                if let Some(file) = &l.blob_file {
                    let dest = self.blob_path(&l.blob.digest);
                    if !dest.exists() {
                        std::fs::rename(file, &dest)
                            .map_err(|e| ImageError::io("storing a blob in", &dest, e))?;
                    }
                }
            }
            let diff_ids: Vec<String> = r.layers.iter().map(|l| l.diff_id.clone()).collect();
            let blobs: Vec<Blob> = r.layers.iter().map(|l| l.blob.clone()).collect();
            write(&self.blob_path(&r.id), &r.config)?;
            let mut info = self.read_meta(&r.id).unwrap_or(ImageInfo {
                id: r.id.clone(),
                names: Vec::new(),
                size: diff_ids.iter().map(|d| dir_size(&self.layer_dir(d))).sum(),
                layers: diff_ids,
                config: r.run,
                repo_digests: Vec::new(),
                blobs: Vec::new(),
            });
            if info.blobs.is_empty() {
                info.blobs = blobs;
            }
            for d in &r.repo_digests {
                add_repo_digest(&mut info, d);
            }
            for tagged in &r.names {
                self.untag_everywhere(tagged)?;
                if !info.names.contains(tagged) {
                    info.names.push(tagged.clone());
                }
            }
            self.write_meta(&info)?;
            out.push(info);
        }
        Ok(out)
    }

    /// Every stored image.
    pub fn list(&self) -> Result<Vec<ImageInfo>, ImageError> {
        let dir = self.root.join("images");
        let entries = std::fs::read_dir(&dir).map_err(|e| ImageError::io("listing", &dir, e))?;
        let mut out: Vec<ImageInfo> = entries
            .flatten()
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        out.sort_by(|a, b| a.names.cmp(&b.names).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The image `reference` names: `name:tag`, `name@sha256:..` (the pin must match) or an id.
    pub fn resolve(&self, reference: &str) -> Result<ImageInfo, ImageError> {
        let r = Reference::parse(reference)?;
        let by_name = match r.tagged() {
            Some(t) => self.list()?.into_iter().find(|i| i.names.contains(&t)),
            None => None,
        };
        let Some(pin) = r.digest else {
            return by_name.ok_or_else(|| ImageError::NotFound(reference.into()));
        };
        // A pin is an image id (a config digest) or a manifest digest a registry gave; the
        // image with that digest is the one to run, whatever the tag says now.
        let pinned = |i: &ImageInfo| {
            i.id == pin
                || i.repo_digests.iter().any(|d| {
                    d.rsplit_once('@').is_some_and(|(repo, dg)| {
                        dg == pin && r.name.as_deref().is_none_or(|n| n == repo)
                    })
                })
        };
        if let Some(i) = self.read_meta(&pin) {
            return Ok(i);
        }
        if let Some(i) = self.list()?.into_iter().find(pinned) {
            return Ok(i);
        }
        match by_name {
            Some(i) => Err(ImageError::PinMismatch {
                reference: reference.into(),
                pinned: pin,
                actual: i.id,
            }),
            None => Err(ImageError::NotFound(reference.into())),
        }
    }

    /// Removes a name; the image goes when its last name does (or when removed by id), and
    /// layers no other image uses go with it. Refuses images in `in_use` (ids). Returns the id.
    pub fn remove(&self, reference: &str, in_use: &[String]) -> Result<String, ImageError> {
        let info = self.resolve(reference)?;
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let by_id = Reference::parse(reference)?.name.is_none();
        let mut remaining = info.clone();
        if !by_id {
            let tagged = Reference::parse(reference)?.tagged();
            remaining.names.retain(|n| Some(n) != tagged.as_ref());
        }
        if !by_id && !remaining.names.is_empty() {
            self.write_meta(&remaining)?;
            return Ok(info.id);
        }
        if in_use.contains(&info.id) {
            return Err(ImageError::InUse(reference.into()));
        }
        let _ = std::fs::remove_file(self.meta_path(&info.id));
        let _ = std::fs::remove_file(self.blob_path(&info.id));
        let others = self.list()?;
        let kept: Vec<&String> = others.iter().flat_map(|i| &i.layers).collect();
        for l in info.layers.iter().filter(|l| !kept.contains(l)) {
            let _ = std::fs::remove_dir_all(self.layer_dir(l));
        }
        let kept: Vec<&String> =
            others.iter().flat_map(|i| i.blobs.iter().map(|b| &b.digest)).collect();
        for b in info.blobs.iter().filter(|b| !kept.contains(&&b.digest)) {
            let _ = std::fs::remove_file(self.blob_path(&b.digest));
        }
        Ok(info.id)
    }

    /// The rootfs source for a task of `image`: its layers, topmost first.
    pub fn rootfs(&self, image: &ImageInfo) -> RootfsSource {
        RootfsSource::Layers(image.layers.iter().rev().map(|l| self.layer_dir(l)).collect())
    }

    /// Where the layer with `diff_id` is unpacked.
    pub fn layer_dir(&self, diff_id: &str) -> PathBuf {
        self.root.join("layers").join(hex_of(diff_id))
    }

    pub(super) fn untag_everywhere(&self, tagged: &str) -> Result<(), ImageError> {
        for mut other in self.list()?.into_iter().filter(|i| i.names.iter().any(|n| n == tagged)) {
            other.names.retain(|n| n != tagged);
            self.write_meta(&other)?;
        }
        Ok(())
    }

    pub(super) fn tmp_dir(&self) -> Result<PathBuf, ImageError> {
        let p = self.root.join("tmp").join(format!("{:016x}", rand::random::<u64>()));
        std::fs::create_dir(&p).map_err(|e| ImageError::io("creating", &p, e))?;
        Ok(p)
    }

    pub(super) fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob (config or layer) with `digest` is kept.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex_of(digest))
    }

    pub(super) fn meta_path(&self, id: &str) -> PathBuf {
        self.root.join("images").join(format!("{}.json", hex_of(id)))
    }

    pub(super) fn read_meta(&self, id: &str) -> Option<ImageInfo> {
        check_digest(id)?;
        serde_json::from_slice(&std::fs::read(self.meta_path(id)).ok()?).ok()
    }

    pub(super) fn write_meta(&self, info: &ImageInfo) -> Result<(), ImageError> {
        let bytes = serde_json::to_vec_pretty(info).expect("image metadata serializes");
        write(&self.meta_path(&info.id), &bytes)
    }
}

/// A layer ready for the store: unpacked into the staging area (or already stored) and its
/// blob.
#[derive(Debug)]
pub(super) struct Unpacked {
    pub(super) diff_id: String,
    /// The unpacked tree in staging; `None` when the store has this layer already.
    pub(super) dir: Option<PathBuf>,
    pub(super) blob: Blob,
    /// The blob's file in staging; `None` when it is in `blobs/` already.
    pub(super) blob_file: Option<PathBuf>,
}

/// An image checked and ready to be stored.
#[derive(Debug)]
pub(super) struct Ready {
    id: String,
    config: Vec<u8>,
    run: RunConfig,
    /// `name:tag` references.
    names: Vec<String>,
    layers: Vec<Unpacked>,
    /// `repository@sha256:…` it was pulled by.
    repo_digests: Vec<String>,
}

/// Reads what passes through, hashing it: a layer blob's digest and size while it unpacks.
struct Hashing<R> {
    inner: R,
    hash: ring::digest::Context,
    size: u64,
}

impl<R: std::io::Read> std::io::Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// Unpacks the layer blob at `path` (`name` is its name in the archive, for messages) into
/// `work/<tag>` and hashes the blob as it goes. With `owned`, the file is staging's own and
/// becomes the blob as it is; otherwise it is copied into staging as `work/<tag>.blob`.
pub(super) fn unpack_file(
    path: &Path,
    name: &str,
    work: &Path,
    tag: &str,
    owned: bool,
) -> Result<Unpacked, ImageError> {
    let dir = work.join(tag);
    std::fs::create_dir(&dir).map_err(|e| ImageError::io("creating", &dir, e))?;
    let file = std::fs::File::open(path).map_err(|e| ImageError::io("opening", path, e))?;
    let mut src = Hashing {
        inner: std::io::BufReader::new(file),
        hash: ring::digest::Context::new(&ring::digest::SHA256),
        size: 0,
    };
    let diff_id = layer::unpack(&mut src, &dir)
        .map_err(|source| ImageError::Layer { layer: format!("{name:?}"), source })?;
    // What the tar reader left (gzip trailer, padding) is part of the blob too.
    std::io::copy(&mut src, &mut std::io::sink())
        .map_err(|e| ImageError::io("reading", path, e))?;
    let digest = format!("sha256:{}", layer::hex(src.hash.finish().as_ref()));
    let gzip = digest != diff_id;
    let blob = Blob {
        media_type: if gzip { media::OCI_LAYER_GZIP } else { media::OCI_LAYER }.to_string(),
        digest,
        size: src.size,
    };
    let blob_file = if owned {
        path.to_path_buf()
    } else {
        let copy = work.join(format!("{tag}.blob"));
        std::fs::copy(path, &copy).map_err(|e| ImageError::io("copying", path, e))?;
        copy
    };
    Ok(Unpacked { diff_id, dir: Some(dir), blob, blob_file: Some(blob_file) })
}

/// Checks a found image against its config: layers match the diff ids, names parse.
pub(super) fn prepare(
    found: Found,
    layers: Vec<Unpacked>,
    repo_digests: Vec<String>,
) -> Result<Ready, ImageError> {
    let id = digest(&found.config);
    let raw: RawConfig = serde_json::from_slice(&found.config)
        .map_err(|e| ImageError::UnknownArchive(format!("image config {id}: {e}")))?;
    let actual: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
    check_diff_ids(&id, &raw.rootfs.diff_ids, &actual)?;
    let run = raw.config.unwrap_or_default();
    let names = found
        .names
        .iter()
        .map(|n| Ok(Reference::parse(n)?.tagged().unwrap_or_else(|| n.clone())))
        .collect::<Result<_, ImageError>>()?;
    Ok(Ready {
        id,
        config: found.config,
        run: RunConfig {
            env: run.env.unwrap_or_default(),
            entrypoint: run.entrypoint.unwrap_or_default(),
            cmd: run.cmd.unwrap_or_default(),
            workdir: run.working_dir.filter(|w| !w.is_empty()),
            user: run.user.filter(|u| !u.is_empty()),
        },
        names,
        layers,
        repo_digests,
    })
}

/// Adds `repo@digest` to the image's repository digests, replacing an older digest of the
/// same repository (the newest push or pull is what the name points at there).
pub(super) fn add_repo_digest(info: &mut ImageInfo, repo_digest: &str) {
    let repo = repo_digest.rsplit_once('@').map_or(repo_digest, |(r, _)| r);
    info.repo_digests.retain(|d| d.rsplit_once('@').is_none_or(|(r, _)| r != repo));
    info.repo_digests.push(repo_digest.to_string());
}

fn check_diff_ids(id: &str, expected: &[String], actual: &[String]) -> Result<(), ImageError> {
    if expected.len() != actual.len() {
        return Err(ImageError::UnknownArchive(format!(
            "image {id} lists {} layers in its config but the archive has {}",
            expected.len(),
            actual.len()
        )));
    }
    match expected.iter().zip(actual).enumerate().find(|(_, (e, a))| e != a) {
        Some((index, (e, a))) => Err(ImageError::DiffIdMismatch {
            image: id.into(),
            index,
            expected: e.clone(),
            actual: a.clone(),
        }),
        None => Ok(()),
    }
}

pub(super) fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// Writes `bytes` to `path` atomically (temp file + rename).
pub(super) fn write(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| ImageError::io("writing", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ImageError::io("renaming into", path, e))
}

pub(super) fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}
