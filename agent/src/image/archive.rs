//! Reads image archives: `docker save` archives (`manifest.json`) and OCI image layouts
//! (`oci-layout` + `index.json`). Finds each image's config, layer files and names; verifies
//! OCI blob digests.
//!
//! The archive is untrusted. [`stage`] copies each regular member into the staging directory
//! under a number of its own and keeps the member names in memory, so no name from the archive
//! ever becomes a host path: links between members (`docker save` links identical layers) are
//! followed in that table, never on disk. Refused: members named with `..` or an absolute path,
//! links that leave the archive, devices and fifos, more than [`MAX_MEMBERS`] members, and JSON
//! documents larger than [`MAX_JSON`].

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use serde::Deserialize;
use tar::EntryType;

use super::reference::{check_digest, Reference};
use super::stream::{self, Member};
use super::ImageError;

/// Members an archive may hold: a `docker save` of one image has four per layer.
pub const MAX_MEMBERS: usize = 50_000;
/// Bytes a manifest, index or config may have.
pub const MAX_JSON: u64 = 8 << 20;
/// Bytes of one member name or link target (Linux's PATH_MAX).
const MAX_NAME: usize = 4096;
/// Bytes of all member names and link targets together, which are kept in memory.
const MAX_NAMES_TOTAL: usize = 16 << 20;
/// Links followed from one name before giving up.
const MAX_LINK_HOPS: usize = 16;
/// Nested indexes followed from `index.json`.
const MAX_INDEX_DEPTH: usize = 4;

/// One image found in an archive, not yet stored.
#[derive(Debug)]
pub struct Found {
    pub names: Vec<String>,
    pub config: Vec<u8>,
    /// Layer tarballs (maybe compressed), bottom first.
    pub layers: Vec<LayerFile>,
}

/// A layer tarball of an archive: its name there and its staged copy.
#[derive(Debug)]
pub struct LayerFile {
    pub name: String,
    pub path: PathBuf,
}

#[derive(Debug)]
enum Staged {
    /// A regular member, copied to this file.
    File(PathBuf),
    /// A symbolic or hard link to this member name.
    Link(PathBuf),
}

/// An archive's regular members copied out of it, found by their names in the archive.
#[derive(Debug)]
pub struct Archive {
    dir: PathBuf,
    members: BTreeMap<PathBuf, Staged>,
    /// Bytes of names and link targets kept so far.
    name_bytes: usize,
}

/// Copies the archive in `src` (plain or gzip) into `dir`, which is made and must not exist.
pub fn stage(src: impl Read, dir: &Path) -> Result<Archive, ImageError> {
    std::fs::create_dir(dir).map_err(|e| ImageError::io("creating", dir, e))?;
    let mut archive = Archive { dir: dir.to_path_buf(), members: BTreeMap::new(), name_bytes: 0 };
    let mut count = 0usize;
    stream::each_member(src, |member| {
        count += 1;
        if count > MAX_MEMBERS {
            return Err(ImageError::UnknownArchive(format!(
                "the archive has more than {MAX_MEMBERS} members; no image archive has so many"
            )));
        }
        archive.add(member, count)
    })?;
    Ok(archive)
}

impl Archive {
    fn add(&mut self, member: &mut Member<'_, '_>, number: usize) -> Result<(), ImageError> {
        let raw =
            member.path().map_err(|e| ImageError::io("reading", "the archive", e))?.into_owned();
        let refuse = |reason: String| ImageError::ArchiveMember { member: raw.clone(), reason };
        let kind = member.header().entry_type();
        let name = name_in_archive(&raw).map_err(|why| refuse(why.to_string()))?;
        let link_len = member.link_name_bytes().map_or(0, |l| l.len());
        if raw.as_os_str().len() > MAX_NAME || link_len > MAX_NAME {
            return Err(refuse(format!("has a name or link longer than {MAX_NAME} bytes")));
        }
        self.name_bytes += raw.as_os_str().len() + link_len;
        if self.name_bytes > MAX_NAMES_TOTAL {
            return Err(ImageError::UnknownArchive(format!(
                "the archive's member names add up to more than {} MiB",
                MAX_NAMES_TOTAL >> 20
            )));
        }
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let file = self.dir.join(number.to_string());
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&file)
                    .map_err(|e| ImageError::io("creating", &file, e))?;
                std::io::copy(member, &mut out).map_err(|e| ImageError::io("staging", &raw, e))?;
                self.members.insert(name, Staged::File(file));
            }
            EntryType::Directory | EntryType::XGlobalHeader => {}
            EntryType::Symlink => {
                let target = link_name(member, &raw)?;
                let parent = name.parent().unwrap_or(Path::new(""));
                let resolved = resolve_link(parent, &target).ok_or_else(|| {
                    refuse(format!("is a symbolic link to {target:?}, outside the archive"))
                })?;
                self.members.insert(name, Staged::Link(resolved));
            }
            EntryType::Link => {
                let target = link_name(member, &raw)?;
                let resolved = name_in_archive(&target)
                    .map_err(|why| refuse(format!("is a hard link to {target:?}, which {why}")))?;
                self.members.insert(name, Staged::Link(resolved));
            }
            EntryType::Char | EntryType::Block => {
                return Err(refuse("is a device; an image archive holds files and links".into()))
            }
            other => {
                return Err(refuse(format!(
                    "is a tar member of type {:?}; an image archive holds files and links",
                    other.as_byte() as char
                )))
            }
        }
        Ok(())
    }

    /// Whether a member `name` (maybe through links) is a file.
    fn has(&self, name: &str) -> bool {
        self.path_of(name).is_ok()
    }

    /// The staged copy of the member `name`, following links between members.
    pub fn path_of(&self, name: &str) -> Result<PathBuf, ImageError> {
        let missing = || ImageError::UnknownArchive(format!("the archive has no file {name:?}"));
        let mut key = name_in_archive(Path::new(name)).map_err(|why| {
            ImageError::UnknownArchive(format!("the archive names {name:?}, which {why}"))
        })?;
        for _ in 0..MAX_LINK_HOPS {
            match self.members.get(&key) {
                None => return Err(missing()),
                Some(Staged::File(p)) => return Ok(p.clone()),
                Some(Staged::Link(to)) => key = to.clone(),
            }
        }
        Err(ImageError::UnknownArchive(format!(
            "{name:?} is a chain of more than {MAX_LINK_HOPS} links"
        )))
    }

    /// The member `name`, refused if larger than [`MAX_JSON`].
    fn read_small(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        let path = self.path_of(name)?;
        let file = std::fs::File::open(&path).map_err(|e| ImageError::io("opening", &path, e))?;
        let mut bytes = Vec::new();
        file.take(MAX_JSON + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ImageError::io("reading", &path, e))?;
        if bytes.len() as u64 > MAX_JSON {
            return Err(ImageError::UnknownArchive(format!(
                "{name} is larger than {} MiB; no image document is so large",
                MAX_JSON >> 20
            )));
        }
        Ok(bytes)
    }
}

fn link_name(member: &Member<'_, '_>, raw: &Path) -> Result<PathBuf, ImageError> {
    member
        .link_name()
        .map_err(|e| ImageError::io("reading", "the archive", e))?
        .map(|l| l.into_owned())
        .ok_or_else(|| ImageError::ArchiveMember {
            member: raw.to_path_buf(),
            reason: "is a link without a target".into(),
        })
}

/// A member name as a plain relative path; `..` and absolute names are refused.
fn name_in_archive(raw: &Path) -> Result<PathBuf, UnsafeName> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err(UnsafeName::Absolute),
            Component::ParentDir => return Err(UnsafeName::Climbs),
        }
    }
    Ok(out)
}

/// Why a member name would land outside the staged archive; reads after the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum UnsafeName {
    #[error("has an absolute name")]
    Absolute,
    #[error("climbs out with \"..\"")]
    Climbs,
}

/// The member a symbolic link in `parent` to `target` names, if it stays inside the archive.
fn resolve_link(parent: &Path, target: &Path) -> Option<PathBuf> {
    let mut out: Vec<&std::ffi::OsStr> = parent.iter().collect();
    for c in target.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out.iter().collect())
}

/// The images in the staged `archive`.
pub fn read(archive: &Archive) -> Result<Vec<Found>, ImageError> {
    if archive.has("oci-layout") {
        read_oci(archive)
    } else if archive.has("manifest.json") {
        read_docker(archive)
    } else {
        Err(ImageError::UnknownArchive(
            "neither manifest.json (docker save) nor oci-layout (OCI image layout) found".into(),
        ))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn read_docker(archive: &Archive) -> Result<Vec<Found>, ImageError> {
    let manifest: Vec<DockerEntry> = parse(&archive.read_small("manifest.json")?, "manifest.json")?;
    manifest
        .into_iter()
        .map(|e| {
            Ok(Found {
                names: e.repo_tags.unwrap_or_default(),
                config: archive.read_small(&e.config)?,
                layers: e
                    .layers
                    .iter()
                    .map(|l| Ok(LayerFile { name: l.clone(), path: archive.path_of(l)? }))
                    .collect::<Result<_, ImageError>>()?,
            })
        })
        .collect()
}

fn read_oci(archive: &Archive) -> Result<Vec<Found>, ImageError> {
    let index: ImageIndex = parse(&archive.read_small("index.json")?, "index.json")?;
    let mut out = Vec::new();
    for desc in index.manifests() {
        collect_oci(archive, desc, names_of(desc), 0, &mut out)?;
    }
    Ok(out)
}

fn collect_oci(
    archive: &Archive,
    desc: &Descriptor,
    names: Vec<String>,
    depth: usize,
    out: &mut Vec<Found>,
) -> Result<(), ImageError> {
    let media = desc.media_type().to_string();
    let bytes = blob(archive, desc.digest().as_ref())?;
    if media.contains("index") || media.contains("manifest.list") {
        if depth >= MAX_INDEX_DEPTH {
            return Err(ImageError::UnknownArchive(format!(
                "index {} nests indexes deeper than {MAX_INDEX_DEPTH}",
                desc.digest()
            )));
        }
        let nested: ImageIndex = parse(&bytes, desc.digest().as_ref())?;
        let pick = nested.manifests().iter().find(|d| for_this_platform(d));
        let Some(d) = pick else {
            return Err(ImageError::UnknownArchive(format!(
                "index {} has no manifest for linux/{}",
                desc.digest(),
                super::go_arch()
            )));
        };
        return collect_oci(archive, d, names, depth + 1, out);
    }
    let manifest: ImageManifest = parse(&bytes, desc.digest().as_ref())?;
    let mut layers = Vec::new();
    for l in manifest.layers() {
        let digest = l.digest().to_string();
        let name = blob_name(&digest)?;
        let path = archive.path_of(&name)?;
        verify_file(&path, &name, &digest)?;
        layers.push(LayerFile { name, path });
    }
    out.push(Found { names, config: blob(archive, manifest.config().digest().as_ref())?, layers });
    Ok(())
}

fn for_this_platform(d: &Descriptor) -> bool {
    d.platform().as_ref().is_none_or(|p| {
        p.os().to_string() == "linux" && p.architecture().to_string() == super::go_arch()
    })
}

/// Full references named by a descriptor's annotations.
fn names_of(desc: &Descriptor) -> Vec<String> {
    let Some(ann) = desc.annotations() else { return Vec::new() };
    ["io.containerd.image.name", "org.opencontainers.image.ref.name"]
        .iter()
        .filter_map(|k| ann.get(*k))
        .filter(|n| n.contains(':') || n.contains('/'))
        .filter(|n| Reference::parse(n).is_ok())
        .take(1)
        .cloned()
        .collect()
}

fn blob_name(digest: &str) -> Result<String, ImageError> {
    let hex = check_digest(digest)
        .ok_or_else(|| ImageError::UnknownArchive(format!("unsupported blob digest {digest}")))?;
    Ok(format!("blobs/sha256/{hex}"))
}

/// Reads the (small) blob named `digest` and checks its content matches the name.
fn blob(archive: &Archive, digest: &str) -> Result<Vec<u8>, ImageError> {
    let name = blob_name(digest)?;
    let bytes = archive.read_small(&name)?;
    if super::layer::digest(&bytes) != digest {
        return Err(ImageError::DigestMismatch { what: name.into(), expected: digest.to_string() });
    }
    Ok(bytes)
}

fn verify_file(path: &Path, name: &str, want: &str) -> Result<(), ImageError> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut f = std::fs::File::open(path).map_err(|e| ImageError::io("opening", path, e))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| ImageError::io("reading", path, e))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    if format!("sha256:{}", super::layer::hex(ctx.finish().as_ref())) != want {
        return Err(ImageError::DigestMismatch { what: name.into(), expected: want.to_string() });
    }
    Ok(())
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ImageError::UnknownArchive(format!("{what} is not valid JSON of its kind: {e}"))
    })
}
