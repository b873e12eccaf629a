//! The agent's image store: content-addressed blobs (sha256), unpacked layers ready for
//! overlayfs, per-image metadata and name → image id tags, all under one directory.
//! Imports rootfs tarballs, loads `docker save` / OCI-layout archives and stores images pulled
//! from registries (the download itself is `shoal_registry`'s). Layers are kept twice, as
//! containerd keeps them: the blob as a registry carries it (what a push sends and a pull
//! shares between tasks) and unpacked for overlayfs. Synchronous: call it from a blocking task.

mod archive;
mod beneath;
pub mod layer;
pub mod merged;
mod pull;
mod pulled;
pub mod reference;
mod store;
mod stream;
mod task;
mod users;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use pull::{repository, PullError, Puller, PARALLEL_DOWNLOADS};
pub use pulled::{Lease, PruneReport, PullInput, PushPlan};
pub use reference::Reference;
pub use store::ImageStore;

/// What went wrong with an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("bad image reference {reference:?}: {reason}")]
    BadReference { reference: String, reason: String },
    /// The image is not on this node; a task that needs it must be REJECTED.
    #[error(
        "image {0} is not on this node; load it with `shoal image load` or `shoal image import`"
    )]
    NotFound(String),
    /// The name resolves, but to another image than the pinned digest.
    #[error("image {reference} on this node is {actual}, not the pinned {pinned}; load the pinned image")]
    PinMismatch { reference: String, pinned: String, actual: String },
    #[error("image {0} is used by a task on this node; remove the task first")]
    InUse(String),
    #[error("not an image archive: {0}")]
    UnknownArchive(String),
    #[error("{what:?} does not match its digest {expected}; the archive is corrupt")]
    DigestMismatch { what: PathBuf, expected: String },
    #[error("layer {index} of image {image} has diff id {actual}, its config says {expected}")]
    DiffIdMismatch { image: String, index: usize, expected: String, actual: String },
    /// A layer was refused or could not be unpacked; nothing of the image was stored.
    #[error("layer {layer}: {source}")]
    Layer { layer: String, source: layer::LayerError },
    /// A member of an image archive was refused; nothing of the archive was stored.
    #[error("refusing archive member {member:?}: it {reason}")]
    ArchiveMember { member: PathBuf, reason: String },
    /// The image archive itself is unreadable (truncated, huge headers).
    #[error("the image archive: {0}")]
    Archive(#[from] stream::TarError),
    /// A push of an image stored without its layer blobs.
    #[error(
        "image {0} was stored before Shoal kept layer blobs; load or pull it again to push it"
    )]
    NoBlobs(String),
    /// A layer in a format this node cannot unpack.
    #[error("layer {digest} is {media_type}; Shoal unpacks tar and gzip layers only")]
    LayerFormat { digest: String, media_type: String },
    #[error("{what} {path:?}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
}

impl ImageError {
    fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ImageError::Io { what, path: path.into(), source }
    }
}

/// One stored image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// `sha256:` digest of the image config: the id a service is pinned to.
    pub id: String,
    /// `name:tag` references pointing at it.
    pub names: Vec<String>,
    /// Layer diff ids, bottom first.
    pub layers: Vec<String>,
    pub config: RunConfig,
    /// Bytes of unpacked layers.
    pub size: u64,
    /// `repository@sha256:…`: the manifests (or indexes) registries know this image by, from
    /// pulls and pushes. A service pinned to one of them runs this image.
    #[serde(default)]
    pub repo_digests: Vec<String>,
    /// The layers as a registry carries them, bottom first, kept under `blobs/sha256`. Empty
    /// for images stored before blobs were kept (they cannot be pushed; load them again).
    #[serde(default)]
    pub blobs: Vec<Blob>,
}

/// A layer blob: compressed or not, as a registry or archive gave it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// OCI media types of what Shoal stores and pushes.
pub mod media {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
}

/// The parts of an image's config a task starts from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

impl RunConfig {
    /// The command a task runs: its own args replace CMD, ENTRYPOINT stays in front.
    pub fn command(&self, args: &[String]) -> Vec<String> {
        let tail = if args.is_empty() { &self.cmd } else { args };
        self.entrypoint.iter().chain(tail).cloned().collect()
    }
}

/// Go's name for this machine's architecture, as image configs use it.
pub fn go_arch() -> &'static str {
    crate::runtime::seccomp::native_arch()
}

#[cfg(test)]
mod hostile;
#[cfg(test)]
pub(crate) mod tests;
