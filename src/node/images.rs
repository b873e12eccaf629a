//! Owns the daemon side of `shoal image`: the node's image store (from the agent crate), run
//! off the async threads, pulls and pushes through this node's registry client (its certs.d
//! and insecure registries), and the answers in wire form.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use shoal_agent::image::{ImageError, ImageInfo, ImageStore, PullError, Puller};
use shoal_proto::{Image, ImageList, ImagePruneResponse, ImagePushResponse, RegistryAuth};
use shoal_registry::{Client, Credentials, ImageRef, RegistryError};
use tonic::Status;

/// The node's image store, opened on first use.
#[derive(Debug)]
pub struct Images {
    root: PathBuf,
    store: Mutex<Option<Arc<ImageStore>>>,
    registry: Client,
}

fn pull_status(e: PullError) -> Status {
    match e {
        PullError::Store(e) => status(e),
        PullError::Registry(e) => registry_status(e),
        other => Status::unavailable(other.to_string()),
    }
}

fn registry_status(e: RegistryError) -> Status {
    match e {
        RegistryError::Unauthorized { .. } => Status::permission_denied(e.to_string()),
        RegistryError::NotFound { .. } => Status::not_found(e.to_string()),
        RegistryError::BadReference { .. } => Status::invalid_argument(e.to_string()),
        other => Status::failed_precondition(other.to_string()),
    }
}

/// The login the CLI sent, if any.
fn credentials(auth: Option<RegistryAuth>) -> Option<Credentials> {
    auth.filter(|a| !a.username.is_empty() || !a.password.is_empty())
        .map(|a| Credentials { username: a.username, password: a.password })
}

fn parse(reference: &str) -> Result<ImageRef, Status> {
    ImageRef::parse(reference).map_err(|e| Status::invalid_argument(e.to_string()))
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
        .map(|i| Image {
            id: i.id,
            names: i.names,
            size: i.size,
            layers: i.layers.len() as u32,
            repo_digests: i.repo_digests,
        })
        .collect();
    ImageList { images }
}

impl Images {
    /// The store under `root` (not opened yet), reaching registries with `registry`.
    pub fn new(root: PathBuf, registry: Client) -> Images {
        Images { root, store: Mutex::new(None), registry }
    }

    fn puller(&self) -> Result<Puller, Status> {
        Ok(Puller::new(self.registry.clone(), self.store()?))
    }

    /// `image pull NAME[:TAG|@DIGEST]` into this node's store.
    pub async fn pull(
        &self,
        reference: String,
        auth: Option<RegistryAuth>,
    ) -> Result<ImageList, Status> {
        let r = parse(&reference)?;
        let info =
            self.puller()?.pull(&r, credentials(auth).as_ref()).await.map_err(pull_status)?;
        Ok(wire(vec![info]))
    }

    /// `image push NAME[:TAG]`: the stored image of that name, to the registry the name says.
    pub async fn push(
        &self,
        reference: String,
        auth: Option<RegistryAuth>,
    ) -> Result<ImagePushResponse, Status> {
        let r = parse(&reference)?;
        if r.digest.is_some() {
            return Err(Status::invalid_argument(format!(
                "push {reference}: push a name and tag, not a digest"
            )));
        }
        let (repo_digest, size) = self
            .puller()?
            .push(&reference, &r, credentials(auth).as_ref())
            .await
            .map_err(pull_status)?;
        Ok(ImagePushResponse { repo_digest, size })
    }

    /// `image tag SOURCE TARGET`.
    pub async fn tag(&self, source: String, target: String) -> Result<ImageList, Status> {
        self.run(move |s| s.tag(&source, &target)).await.map(|i| wire(vec![i]))
    }

    /// `image prune`: unnamed images no task runs, and layers and blobs no image uses.
    pub async fn prune(&self, in_use: Vec<String>) -> Result<ImagePruneResponse, Status> {
        let r = self.run(move |s| s.prune(&in_use)).await?;
        Ok(ImagePruneResponse {
            images: r.images,
            layers: r.layers as u64,
            blobs: r.blobs as u64,
            bytes: r.bytes,
        })
    }

    /// `login`: checks the credentials against the registry (with this node's TLS settings).
    pub async fn login(&self, auth: Option<RegistryAuth>) -> Result<(), Status> {
        let auth = auth.ok_or_else(|| Status::invalid_argument("login: no credentials"))?;
        let registry = auth.registry.clone();
        let creds = credentials(Some(auth))
            .ok_or_else(|| Status::invalid_argument("login: no user name or password"))?;
        self.registry.login(&registry, &creds).await.map_err(registry_status)
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

    /// Whether `user` exists in image `reference`; `false` if this node lacks the image.
    pub async fn check_user(&self, reference: String, user: String) -> Result<bool, Status> {
        let store = self.store()?;
        tokio::task::spawn_blocking(move || match store.resolve(&reference) {
            Err(ImageError::NotFound(_)) => Ok(false),
            Err(e) => Err(status(e)),
            Ok(image) => store
                .resolve_user(&image, &user)
                .map(|_| true)
                .map_err(|e| Status::invalid_argument(format!("{reference}: {e}"))),
        })
        .await
        .map_err(|e| Status::internal(format!("image task failed: {e}")))?
    }

    /// `image scan`: the image's installed packages against the node's vulnerability
    /// database (beside the image store); the report as JSON and how many advisories the
    /// database holds.
    pub async fn scan(&self, reference: String) -> Result<(Vec<u8>, u64), Status> {
        let store = self.store()?;
        let db_path = shoal_agent::scan::db_path(self.root.parent().unwrap_or(&self.root));
        tokio::task::spawn_blocking(move || {
            let image = store.resolve(&reference).map_err(status)?;
            let db = shoal_agent::scan::Database::load(&db_path).map_err(Status::internal)?;
            let shoal_agent::runtime::RootfsSource::Layers(layers) = store.rootfs(&image) else {
                return Err(Status::failed_precondition(format!("{reference} has no layers")));
            };
            let report = shoal_agent::scan::scan(&layers, &db)
                .map_err(|e| Status::failed_precondition(format!("{reference}: {e}")))?;
            let json = serde_json::to_vec(&report).map_err(|e| Status::internal(e.to_string()))?;
            Ok((json, db.advisories() as u64))
        })
        .await
        .map_err(|e| Status::internal(format!("scan task failed: {e}")))?
    }

    /// `trust cosign verify`: the image's cosign signature against `key_pem`.
    pub async fn verify_cosign(
        &self,
        reference: String,
        key_pem: String,
        auth: Option<RegistryAuth>,
    ) -> Result<shoal_proto::ImageVerifyCosignResponse, Status> {
        let r = parse(&reference)?;
        let key = shoal_pki::trust::PublicKey::from_spki_pem(&key_pem)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let scratch = self.root.join("tmp").join(format!("cosign-{}", std::process::id()));
        let v = shoal_agent::cosign::verify(
            &self.registry,
            &r,
            &key,
            credentials(auth).as_ref(),
            &scratch,
        )
        .await
        .map_err(Status::failed_precondition)?;
        Ok(shoal_proto::ImageVerifyCosignResponse {
            digest: v.digest,
            docker_reference: v.docker_reference,
            signatures: v.signatures as u32,
            key_id: key.id(),
        })
    }

    /// `scan db import PATH`: OSV files into the node's database; (read, now held).
    pub async fn import_advisories(&self, path: String) -> Result<(u64, u64), Status> {
        let db_path = shoal_agent::scan::db_path(self.root.parent().unwrap_or(&self.root));
        tokio::task::spawn_blocking(move || {
            let mut db = shoal_agent::scan::Database::load(&db_path).map_err(Status::internal)?;
            let n = db.import(std::path::Path::new(&path)).map_err(Status::invalid_argument)?;
            db.save(&db_path).map_err(Status::internal)?;
            tracing::info!(path = %path, imported = n, advisories = db.advisories(), "vulnerability database updated");
            Ok((n as u64, db.advisories() as u64))
        })
        .await
        .map_err(|e| Status::internal(format!("import task failed: {e}")))?
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
