//! Owns the daemon side of `shoal image`: the node's image store (from the agent crate), run
//! off the async threads, and its answers in wire form.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use shoal_agent::image::{ImageError, ImageInfo, ImageStore};
use shoal_proto::{Image, ImageList};
use tonic::Status;

/// The node's image store, opened on first use.
#[derive(Debug)]
pub struct Images {
    root: PathBuf,
    store: Mutex<Option<Arc<ImageStore>>>,
}

fn status(e: ImageError) -> Status {
    match e {
        ImageError::NotFound { .. } => Status::not_found(e.to_string()),
        other => Status::failed_precondition(other.to_string()),
    }
}

fn wire(images: Vec<ImageInfo>) -> ImageList {
    let images = images
        .into_iter()
        .map(|i| Image { id: i.id, names: i.names, size: i.size, layers: i.layers.len() as u32 })
        .collect();
    ImageList { images }
}

impl Images {
    /// The store under `root` (not opened yet).
    pub fn new(root: PathBuf) -> Images {
        Images { root, store: Mutex::new(None) }
    }

    fn store(&self) -> Result<Arc<ImageStore>, Status> {
        let mut slot = self.store.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        let store = Arc::new(ImageStore::open(&self.root).map_err(status)?);
        *slot = Some(store.clone());
        Ok(store)
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ImageStore) -> Result<T, ImageError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.store()?;
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Status::internal(format!("image task failed: {e}")))?
            .map_err(status)
    }

    /// `image load -i FILE`: docker-archive or OCI-layout tarballs.
    pub async fn load(&self, path: String) -> Result<ImageList, Status> {
        self.run(move |s| s.load_archive(path.as_ref())).await.map(wire)
    }

    /// `image import ROOTFS.tar NAME:TAG`.
    pub async fn import(&self, path: String, reference: String) -> Result<ImageList, Status> {
        self.run(move |s| s.import(path.as_ref(), &reference)).await.map(|i| wire(vec![i]))
    }

    /// `image ls`.
    pub async fn list(&self) -> Result<ImageList, Status> {
        self.run(|s| s.list()).await.map(wire)
    }

    /// `image rm`, refused for an image a task of this node runs (`in_use`: image IDs).
    pub async fn remove(&self, reference: String, in_use: Vec<String>) -> Result<String, Status> {
        self.run(move |s| s.remove(&reference, &in_use)).await
    }
}
