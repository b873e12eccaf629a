//! Reads image archives unpacked into a staging directory: `docker save` archives
//! (`manifest.json`) and OCI image layouts (`oci-layout` + `index.json`). Finds each image's
//! config, layer files and names; verifies OCI blob digests. Writes nothing.

use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use serde::Deserialize;

use super::reference::{check_digest, Reference};
use super::ImageError;

/// One image found in an archive, not yet stored.
#[derive(Debug)]
pub struct Found {
    pub names: Vec<String>,
    pub config: Vec<u8>,
    /// Layer tarballs (maybe compressed), bottom first.
    pub layers: Vec<PathBuf>,
}

/// The images in the archive unpacked at `staging`.
pub fn read(staging: &Path) -> Result<Vec<Found>, ImageError> {
    if staging.join("oci-layout").exists() {
        read_oci(staging)
    } else if staging.join("manifest.json").exists() {
        read_docker(staging)
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

fn read_docker(staging: &Path) -> Result<Vec<Found>, ImageError> {
    let manifest: Vec<DockerEntry> = read_json(&staging.join("manifest.json"))?;
    manifest
        .into_iter()
        .map(|e| {
            Ok(Found {
                names: e.repo_tags.unwrap_or_default(),
                config: read_file(&inside(staging, &e.config)?)?,
                layers: e.layers.iter().map(|l| inside(staging, l)).collect::<Result<_, _>>()?,
            })
        })
        .collect()
}

fn read_oci(staging: &Path) -> Result<Vec<Found>, ImageError> {
    let index: ImageIndex = read_json(&staging.join("index.json"))?;
    let mut out = Vec::new();
    for desc in index.manifests() {
        collect_oci(staging, desc, names_of(desc), &mut out)?;
    }
    Ok(out)
}

fn collect_oci(
    staging: &Path,
    desc: &Descriptor,
    names: Vec<String>,
    out: &mut Vec<Found>,
) -> Result<(), ImageError> {
    let media = desc.media_type().to_string();
    let bytes = blob(staging, desc.digest().as_ref())?;
    if media.contains("index") || media.contains("manifest.list") {
        let nested: ImageIndex = parse(&bytes, desc.digest().as_ref())?;
        let pick = nested.manifests().iter().find(|d| for_this_platform(d));
        let Some(d) = pick else {
            return Err(ImageError::UnknownArchive(format!(
                "index {} has no manifest for linux/{}",
                desc.digest(),
                super::go_arch()
            )));
        };
        return collect_oci(staging, d, names, out);
    }
    let manifest: ImageManifest = parse(&bytes, desc.digest().as_ref())?;
    let layers = manifest
        .layers()
        .iter()
        .map(|l| blob_path(staging, l.digest().as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    for l in &layers {
        verify_file(l)?;
    }
    out.push(Found { names, config: blob(staging, manifest.config().digest().as_ref())?, layers });
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

fn blob_path(staging: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    let hex = check_digest(digest)
        .ok_or_else(|| ImageError::UnknownArchive(format!("unsupported blob digest {digest}")))?;
    Ok(staging.join("blobs/sha256").join(hex))
}

/// Reads the blob named `digest` and checks its content matches the name.
fn blob(staging: &Path, digest: &str) -> Result<Vec<u8>, ImageError> {
    let path = blob_path(staging, digest)?;
    let bytes = read_file(&path)?;
    if super::layer::digest(&bytes) != digest {
        return Err(ImageError::DigestMismatch { what: path, expected: digest.to_string() });
    }
    Ok(bytes)
}

fn verify_file(path: &Path) -> Result<(), ImageError> {
    let want = format!("sha256:{}", path.file_name().unwrap_or_default().to_string_lossy());
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut f = std::fs::File::open(path).map_err(|e| ImageError::io("opening", path, e))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf)
            .map_err(|e| ImageError::io("reading", path, e))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    let got: String = ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
    if format!("sha256:{got}") != want {
        return Err(ImageError::DigestMismatch { what: path.to_path_buf(), expected: want });
    }
    Ok(())
}

/// `rel` joined under `staging`, refusing paths that climb out.
fn inside(staging: &Path, rel: &str) -> Result<PathBuf, ImageError> {
    let p = Path::new(rel);
    if p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(ImageError::UnknownArchive(format!("archive names a path outside it: {rel}")));
    }
    Ok(staging.join(p))
}

fn read_file(path: &Path) -> Result<Vec<u8>, ImageError> {
    std::fs::read(path).map_err(|e| ImageError::io("reading", path, e))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ImageError> {
    parse(&read_file(path)?, &path.display().to_string())
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ImageError::UnknownArchive(format!("{what} is not valid JSON of its kind: {e}"))
    })
}
