//! The store's side of registries: storing an image whose blobs a pull has put in `blobs/`,
//! planning a push from the blobs kept, tags, and pruning what no image uses.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use super::archive::Found;
use super::reference::Reference;
use super::store::{add_repo_digest, dir_size, hex_of, prepare, RawConfig, Unpacked};
use super::{media, Blob, ImageError, ImageInfo, ImageStore};

/// An image whose config and layer blobs a pull has verified and put at
/// [`ImageStore::blob_path`].
#[derive(Clone, Debug)]
pub struct PullInput {
    /// `name:tag` to point at it (none for a pull by digest alone).
    pub name: Option<String>,
    /// `repository@sha256:…` it was pulled by: what the service is pinned to.
    pub repo_digest: String,
    pub config_digest: String,
    /// Layer blobs, bottom first.
    pub layers: Vec<Blob>,
}

/// What a push sends: blobs (config and layers, with their files) and the manifest.
#[derive(Clone, Debug)]
pub struct PushPlan {
    pub id: String,
    pub config: Blob,
    pub layers: Vec<Blob>,
    /// Files of `config` and `layers`, in that order.
    pub files: Vec<PathBuf>,
    pub manifest_media_type: String,
    pub manifest: Vec<u8>,
}

/// What `image prune` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Ids of images without names that no task used.
    pub images: Vec<String>,
    pub layers: usize,
    pub blobs: usize,
    /// Bytes given back (unpacked layers and blobs).
    pub bytes: u64,
}

/// Blobs a pull in this process is fetching or about to store (digest → holders): `prune`
/// leaves them alone. Process-wide, as a node's daemon and executor each open the store.
static LEASES: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());

/// Keeps blobs from `prune` while a pull works with them; they are free again when dropped.
#[derive(Debug)]
pub struct Lease(Vec<String>);

impl Drop for Lease {
    fn drop(&mut self) {
        let mut leases = LEASES.lock().unwrap_or_else(|p| p.into_inner());
        for d in &self.0 {
            if let Some(n) = leases.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    leases.remove(d);
                }
            }
        }
    }
}

fn leased(digest: &str) -> bool {
    LEASES.lock().unwrap_or_else(|p| p.into_inner()).contains_key(digest)
}

impl ImageStore {
    /// Keeps the blobs `digests` from [`ImageStore::prune`] until the lease is dropped.
    pub fn lease(&self, digests: impl IntoIterator<Item = String>) -> Lease {
        let digests: Vec<String> = digests.into_iter().collect();
        let mut leases = LEASES.lock().unwrap_or_else(|p| p.into_inner());
        for d in &digests {
            *leases.entry(d.clone()).or_default() += 1;
        }
        Lease(digests)
    }

    /// True if the blob `digest` is stored (a pull need not fetch it).
    pub fn has_blob(&self, digest: &str) -> bool {
        super::reference::check_digest(digest).is_some() && self.blob_path(digest).is_file()
    }

    /// True if the layer with `diff_id` is unpacked in the store.
    pub fn has_layer(&self, diff_id: &str) -> bool {
        super::reference::check_digest(diff_id).is_some() && self.layer_dir(diff_id).is_dir()
    }

    /// Stores a pulled image: unpacks the layers the store lacks (checking each against the
    /// config's diff ids), records the name and the repository digest. All or nothing.
    pub fn commit_pulled(&self, p: &PullInput) -> Result<ImageInfo, ImageError> {
        let config_path = self.blob_path(&p.config_digest);
        let config = std::fs::read(&config_path)
            .map_err(|e| ImageError::io("reading the config", &config_path, e))?;
        let raw: RawConfig = serde_json::from_slice(&config).map_err(|e| {
            ImageError::UnknownArchive(format!("image config {}: {e}", p.config_digest))
        })?;
        if raw.rootfs.diff_ids.len() != p.layers.len() {
            return Err(ImageError::UnknownArchive(format!(
                "image config {} lists {} layers but its manifest has {}",
                p.config_digest,
                raw.rootfs.diff_ids.len(),
                p.layers.len()
            )));
        }
        let work = self.tmp_dir()?;
        let result = (|| {
            let mut layers = Vec::new();
            for (i, (blob, diff_id)) in p.layers.iter().zip(&raw.rootfs.diff_ids).enumerate() {
                if !matches!(
                    blob.media_type.as_str(),
                    media::OCI_LAYER
                        | media::OCI_LAYER_GZIP
                        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
                        | "application/vnd.docker.image.rootfs.diff.tar"
                ) {
                    return Err(ImageError::LayerFormat {
                        digest: blob.digest.clone(),
                        media_type: blob.media_type.clone(),
                    });
                }
                if self.has_layer(diff_id) {
                    layers.push(Unpacked {
                        diff_id: diff_id.clone(),
                        dir: None,
                        blob: blob.clone(),
                        blob_file: None,
                    });
                    continue;
                }
                let path = self.blob_path(&blob.digest);
                let mut u = super::store::unpack_file(
                    &path,
                    &blob.digest,
                    &work,
                    &format!("layer-{i}"),
                    true,
                )?;
                // The blob stays where the pull put it; its digest was checked as it came.
                u.blob_file = None;
                u.blob = blob.clone();
                layers.push(u);
            }
            let found = Found {
                names: p.name.iter().cloned().collect(),
                config: config.clone(),
                layers: Vec::new(),
            };
            let ready = prepare(found, layers, vec![p.repo_digest.clone()])?;
            self.commit(vec![ready])
        })();
        let _ = std::fs::remove_dir_all(&work);
        result?.pop().ok_or_else(|| ImageError::UnknownArchive("nothing stored".into()))
    }

    /// Gives the image `source` the name `target` (`name[:tag]`), taking it from any other.
    pub fn tag(&self, source: &str, target: &str) -> Result<ImageInfo, ImageError> {
        let info = self.resolve(source)?;
        let tagged =
            Reference::parse(target)?.tagged().ok_or_else(|| ImageError::BadReference {
                reference: target.into(),
                reason: "a tag is NAME[:TAG]".into(),
            })?;
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.untag_everywhere(&tagged)?;
        let mut info = self.read_meta(&info.id).unwrap_or(info);
        if !info.names.contains(&tagged) {
            info.names.push(tagged);
        }
        self.write_meta(&info)?;
        Ok(info)
    }

    /// What pushing the image `reference` sends: its config and layer blobs and an OCI
    /// manifest of them.
    pub fn push_plan(&self, reference: &str) -> Result<PushPlan, ImageError> {
        let info = self.resolve(reference)?;
        if info.blobs.len() != info.layers.len() || info.layers.is_empty() {
            return Err(ImageError::NoBlobs(reference.into()));
        }
        let config_path = self.blob_path(&info.id);
        let size = std::fs::metadata(&config_path)
            .map_err(|e| ImageError::io("reading the config", &config_path, e))?
            .len();
        let config = Blob { media_type: media::OCI_CONFIG.into(), digest: info.id.clone(), size };
        let mut files = vec![config_path];
        for b in &info.blobs {
            let f = self.blob_path(&b.digest);
            if !f.is_file() {
                return Err(ImageError::NoBlobs(reference.into()));
            }
            files.push(f);
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": descriptor(&config),
            "layers": info.blobs.iter().map(descriptor).collect::<Vec<_>>(),
        });
        Ok(PushPlan {
            id: info.id.clone(),
            config,
            layers: info.blobs.clone(),
            files,
            manifest_media_type: media::OCI_MANIFEST.into(),
            manifest: serde_json::to_vec(&manifest).expect("a manifest serializes"),
        })
    }

    /// Records that the image `id` is `repo@digest` in a registry (after a push).
    pub fn add_repo_digest(&self, id: &str, repo_digest: &str) -> Result<ImageInfo, ImageError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut info = self.read_meta(id).ok_or_else(|| ImageError::NotFound(id.into()))?;
        add_repo_digest(&mut info, repo_digest);
        self.write_meta(&info)?;
        Ok(info)
    }

    /// Removes images without names that no task uses (`in_use`: ids), then every layer and
    /// blob no image uses, and staging left over by interrupted work.
    pub fn prune(&self, in_use: &[String]) -> Result<PruneReport, ImageError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut report = PruneReport::default();
        for i in self.list()? {
            if i.names.is_empty() && !in_use.contains(&i.id) {
                let _ = std::fs::remove_file(self.meta_path(&i.id));
                report.images.push(i.id);
            }
        }
        let images = self.list()?;
        let mut used_blobs: Vec<String> =
            images.iter().map(|i| hex_of(&i.id).to_string()).collect();
        used_blobs.extend(images.iter().flat_map(|i| &i.blobs).map(|b| hex_of(&b.digest).into()));
        let used_layers: Vec<&str> =
            images.iter().flat_map(|i| &i.layers).map(|l| hex_of(l)).collect();
        let root = self.root().join("blobs/sha256");
        for e in
            std::fs::read_dir(&root).map_err(|e| ImageError::io("listing", &root, e))?.flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            // A download in progress is `.HEX.partial` beside where its blob will be.
            let hex = name.trim_start_matches('.').trim_end_matches(".partial").to_string();
            if !used_blobs.contains(&name) && !leased(&format!("sha256:{hex}")) {
                report.bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                if std::fs::remove_file(e.path()).is_ok() {
                    report.blobs += 1;
                }
            }
        }
        let layers = self.root().join("layers");
        for e in
            std::fs::read_dir(&layers).map_err(|e| ImageError::io("listing", &layers, e))?.flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !used_layers.contains(&name.as_str()) {
                report.bytes += dir_size(&e.path());
                if std::fs::remove_dir_all(e.path()).is_ok() {
                    report.layers += 1;
                }
            }
        }
        Ok(report)
    }
}

fn descriptor(b: &Blob) -> serde_json::Value {
    serde_json::json!({ "mediaType": b.media_type, "digest": b.digest, "size": b.size })
}
