//! Pulls and pushes between the node's store and registries. The protocol is
//! `shoal_registry`'s; this side decides what to fetch (blobs the store lacks), fetches layers
//! a few at a time, shares one download among every pull that wants the same blob, keeps the
//! blobs from `image prune` while it works, and hands the verified blobs to the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};
use futures::StreamExt;
use shoal_registry::{Client, Credentials, Descriptor, ImageRef, Platform, RegistryError};

use super::{Blob, ImageError, ImageInfo, ImageStore, PullInput};

/// Layers fetched at once by one pull (Docker's default for max-concurrent-downloads).
pub const PARALLEL_DOWNLOADS: usize = 3;

/// Why a pull or push failed; the registry's own words are kept.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] ImageError),
    /// A download another pull shares failed; its error as text.
    #[error("{0}")]
    Shared(String),
    #[error("the image task failed: {0}")]
    Join(String),
}

type Download = Shared<BoxFuture<'static, Result<(), String>>>;

/// Pulls into and pushes from one image store.
#[derive(Clone)]
pub struct Puller {
    client: Client,
    store: Arc<ImageStore>,
    platform: Platform,
    /// Blob downloads in flight, by digest: a second pull of the same blob waits for the first.
    downloads: Arc<Mutex<HashMap<String, Download>>>,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller").field("platform", &self.platform).finish_non_exhaustive()
    }
}

impl Puller {
    pub fn new(client: Client, store: Arc<ImageStore>) -> Puller {
        Puller { client, store, platform: Platform::host(), downloads: Default::default() }
    }

    /// Pulls `r` (by tag or digest) for this node's platform: fetches the manifest, the blobs
    /// the store lacks (checked against their digests and sizes as they come), and stores the
    /// image under its name (a pull by tag) and `repository@digest`.
    pub async fn pull(
        &self,
        r: &ImageRef,
        creds: Option<&Credentials>,
    ) -> Result<ImageInfo, PullError> {
        let pulled = self.client.manifest(r, creds, &self.platform).await?;
        let mut wanted: Vec<&Descriptor> = vec![&pulled.config];
        wanted.extend(&pulled.layers);
        let _lease = self.store.lease(wanted.iter().map(|d| d.digest.clone()));
        let fetches = wanted
            .iter()
            .filter(|d| !self.store.has_blob(&d.digest))
            .map(|d| self.fetch_shared(r, d, creds))
            .collect::<Vec<_>>();
        let mut results = futures::stream::iter(fetches).buffer_unordered(PARALLEL_DOWNLOADS);
        while let Some(done) = results.next().await {
            done.map_err(PullError::Shared)?;
        }
        let repo = repository(r);
        let input = PullInput {
            name: r.tag.as_ref().filter(|_| r.digest.is_none()).map(|t| format!("{repo}:{t}")),
            repo_digest: format!("{repo}@{}", pulled.pinned),
            config_digest: pulled.config.digest.clone(),
            layers: pulled
                .layers
                .iter()
                .map(|d| Blob {
                    media_type: d.media_type.clone(),
                    digest: d.digest.clone(),
                    size: d.size,
                })
                .collect(),
        };
        let store = self.store.clone();
        let info = tokio::task::spawn_blocking(move || store.commit_pulled(&input))
            .await
            .map_err(|e| PullError::Join(e.to_string()))??;
        tracing::info!(image = %r.familiar(), id = %info.id, "pulled");
        Ok(info)
    }

    /// One download of blob `d`, shared with every pull that asks for it while it runs.
    fn fetch_shared(
        &self,
        r: &ImageRef,
        d: &Descriptor,
        creds: Option<&Credentials>,
    ) -> BoxFuture<'static, Result<(), String>> {
        let mut downloads = self.downloads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(running) = downloads.get(&d.digest) {
            return running.clone().boxed();
        }
        let (client, r, d, creds) = (self.client.clone(), r.clone(), d.clone(), creds.cloned());
        let dest = self.store.blob_path(&d.digest);
        let all = self.downloads.clone();
        let digest = d.digest.clone();
        let download: Download = async move {
            let done = client
                .fetch_blob(&r, &d, &dest, creds.as_ref(), &|_| {})
                .await
                .map_err(|e| e.to_string());
            all.lock().unwrap_or_else(|p| p.into_inner()).remove(&d.digest);
            done
        }
        .boxed()
        .shared();
        downloads.insert(digest, download.clone());
        download.boxed()
    }

    /// Pushes the stored image `local` (a name or id) as `r` (a tag): the blobs the registry
    /// lacks, then an OCI manifest of them. Returns `repository@digest` of the manifest and the
    /// bytes of the blobs.
    pub async fn push(
        &self,
        local: &str,
        r: &ImageRef,
        creds: Option<&Credentials>,
    ) -> Result<(String, u64), PullError> {
        let store = self.store.clone();
        let local = local.to_string();
        let plan = tokio::task::spawn_blocking(move || store.push_plan(&local))
            .await
            .map_err(|e| PullError::Join(e.to_string()))??;
        let blobs = std::iter::once(&plan.config).chain(&plan.layers);
        let mut size = 0;
        for (b, file) in blobs.zip(&plan.files) {
            let d = Descriptor {
                media_type: b.media_type.clone(),
                digest: b.digest.clone(),
                size: b.size,
            };
            self.client.push_blob(r, &d, file, creds).await?;
            size += b.size;
        }
        let digest =
            self.client.push_manifest(r, &plan.manifest_media_type, &plan.manifest, creds).await?;
        let repo_digest = format!("{}@{digest}", repository(r));
        let store = self.store.clone();
        let (id, rd) = (plan.id.clone(), repo_digest.clone());
        tokio::task::spawn_blocking(move || store.add_repo_digest(&id, &rd))
            .await
            .map_err(|e| PullError::Join(e.to_string()))??;
        tracing::info!(image = %r.familiar(), %digest, "pushed");
        Ok((repo_digest, size))
    }
}

/// The repository as users write it (`reg:5000/app`, `busybox`): how the store names images.
pub fn repository(r: &ImageRef) -> String {
    ImageRef { tag: None, digest: None, ..r.clone() }.familiar()
}
