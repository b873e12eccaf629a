//! `OciExecutor`: runs tasks as real containers through the node's `OciRuntime`, from images in
//! its `ImageStore`. Keeps a finished task's logs (under `<runtime data root>/logs/<task>`)
//! until the managers forget the task, and custom seccomp profiles under `…/seccomp`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use shoal_pki::trust::{Envelope, Pins};
use shoal_proto::Task;

use super::executor::{ExecError, ExecOutput, Executor, ExitStatus};
use super::spec::{build, parse_signal, resolve_image, Built, TaskSpecError};
use crate::image::{ImageStore, Puller};
use crate::net::DataPlane;
use crate::runtime::{HostNamespace, OciRuntime, Runtime, RuntimeError};
use crate::volume::Volumes;

/// Real containers.
#[derive(Debug)]
pub struct OciExecutor {
    runtime: OciRuntime,
    images: Arc<ImageStore>,
    node: String,
    /// The image each prepared task runs (task id → image id).
    in_use: Mutex<HashMap<String, String>>,
    /// Interfaces, addresses, DNS and load balancing of tasks; `None`: tasks get loopback only.
    net: Option<Arc<DataPlane>>,
    /// Pulls images tasks need and the store lacks; `None`: images must be loaded by hand.
    puller: Option<Puller>,
    /// Named volumes, leased to the tasks that mount them.
    volumes: Arc<Volumes>,
    /// Held while the node's content-trust pins are read and written.
    trust: Mutex<()>,
    /// Scan reports by image, while the node's database is unchanged.
    scans: Arc<crate::scan::Cache>,
}

fn failed(e: RuntimeError) -> ExecError {
    match e {
        RuntimeError::UnknownTask(id) => ExecError::Unknown(id),
        other => ExecError::Failed(other.to_string()),
    }
}

impl OciExecutor {
    /// Runs tasks on `runtime` from `images`; `node` is the hostname rejections name.
    pub fn new(runtime: OciRuntime, images: Arc<ImageStore>, node: impl Into<String>) -> Self {
        let volumes = Arc::new(Volumes::open(runtime.config().data_root.join("volumes")));
        OciExecutor {
            volumes,
            trust: Mutex::new(()),
            scans: Default::default(),
            runtime,
            images,
            node: node.into(),
            in_use: Mutex::new(HashMap::new()),
            net: None,
            puller: None,
        }
    }

    /// Pulls missing images from registries with `puller` (which must use the same store).
    pub fn with_puller(mut self, puller: Puller) -> Self {
        self.puller = Some(puller);
        self
    }

    /// The reference to pull for a task whose image the store lacks: the pinned digest in
    /// the image's repository, or the image as named. `None` if nothing is missing or this
    /// executor does not pull.
    fn to_pull(&self, task: &Task) -> Option<shoal_registry::ImageRef> {
        self.puller.as_ref()?;
        let c = task.spec.as_ref()?.container.as_ref()?;
        match resolve_image(&self.images, c, &self.node) {
            Err(TaskSpecError::ImageMissing { .. }) => {}
            _ => return None,
        }
        let r = shoal_registry::ImageRef::parse(&c.image).ok()?;
        Some(if c.image_digest.is_empty() { r } else { r.with_digest(&c.image_digest) })
    }

    /// Checks the task's image against this node's content-trust pins, learning what the
    /// managers sent only as far as the pins allow (see `shoal_pki::trust::pins`). Runs before
    /// anything is pulled.
    fn check_trust(&self, task: &Task, envelope: Option<&Envelope>) -> Result<(), ExecError> {
        let Some(c) = task.spec.as_ref().and_then(|s| s.container.as_ref()) else {
            return Ok(());
        };
        let refuse =
            |why: String| ExecError::Rejected(format!("content trust on {}: {why}", self.node));
        let _held = self.trust.lock().unwrap_or_else(|p| p.into_inner());
        // Read each time: a join replaces the file (a new cluster's roots, none of the old's).
        let path = super::trust_pins_path(&self.node_root());
        let mut pins = Pins::load(&path).unwrap_or_else(|e| {
            // A damaged pins file must not make the node trust less: it is kept for the
            // operator and the node refuses tasks until it is fixed or removed.
            tracing::error!(error = %e, "the node's content-trust pins cannot be read; tasks needing them are refused");
            Pins { required: true, ..Default::default() }
        });
        let before = pins.clone();
        if let Some(e) = envelope {
            // What fails to be learnt here is refused by the check below where it matters.
            if let Some(k) = &e.timestamp_key {
                if let Err(err) = pins.learn_timestamp_key(k) {
                    tracing::warn!(error = %err, "content trust: a timestamp key not taken");
                }
            }
            if let Err(err) = pins.learn_policy(e.required, e.policy.as_ref()) {
                tracing::warn!(error = %err, "content trust: the managers' policy not taken");
            }
        }
        let result = (|| {
            let r = shoal_registry::ImageRef::parse(&c.image).map_err(|e| e.to_string())?;
            let repo = r.name();
            let pinned = (!c.image_digest.is_empty()).then_some(c.image_digest.as_str());
            let digest = pinned.or(r.digest.as_deref());
            let bundle = envelope.and_then(|e| e.bundle.as_ref());
            let verified = pins
                .check(&repo, r.tag.as_deref(), digest, bundle, shoal_pki::trust::now())
                .map_err(|e| e.to_string())?;
            if let Some(v) = verified {
                if digest != Some(v.digest.as_str()) {
                    return Err(format!(
                        "the task runs {}, not the signed {} of {repo}",
                        digest.unwrap_or("an unpinned image"),
                        v.digest
                    ));
                }
                tracing::info!(task = %task.id, %repo, digest = %v.digest, signer = %v.signer, "content trust: signed image");
            }
            Ok(())
        })();
        if pins != before {
            if let Err(e) = pins.save(&path) {
                tracing::warn!(error = %e, "could not save the node's content-trust pins");
            }
        }
        result.map_err(refuse)
    }

    /// The envelope the managers sent with the task (content trust, scan policy).
    fn envelope(&self, task: &Task) -> Result<Option<Envelope>, ExecError> {
        let c = task.spec.as_ref().and_then(|s| s.container.as_ref());
        match c.map(|c| c.trust.as_slice()).unwrap_or_default() {
            [] => Ok(None),
            bytes => Envelope::from_bytes(bytes)
                .map(Some)
                .map_err(|e| ExecError::Rejected(format!("content trust on {}: {e}", self.node))),
        }
    }

    /// Refuses a task whose image has known vulnerabilities at or above the cluster's scan
    /// policy, naming them. A node without a database cannot tell, and refuses too.
    async fn check_scan(&self, task: &Task, envelope: Option<&Envelope>) -> Result<(), ExecError> {
        let Some(level) = envelope.and_then(|e| e.scan_block.as_deref()) else { return Ok(()) };
        let refuse =
            |why: String| ExecError::Rejected(format!("scan policy on {}: {why}", self.node));
        let level = crate::scan::Severity::parse(level)
            .ok_or_else(|| refuse(format!("unknown severity {level:?}")))?;
        let Some(c) = task.spec.as_ref().and_then(|s| s.container.as_ref()) else {
            return Ok(());
        };
        let image =
            resolve_image(&self.images, c, &self.node).map_err(|e| refuse(e.to_string()))?;
        let (images, scans, node_root) =
            (self.images.clone(), self.scans.clone(), self.node_root());
        let report = tokio::task::spawn_blocking(move || scans.report(&images, &image, &node_root))
            .await
            .map_err(|e| refuse(format!("scanning failed: {e}")))?
            .map_err(refuse)?;
        match report.refusal(&c.image, level) {
            Some(why) => Err(refuse(why)),
            None => Ok(()),
        }
    }

    /// Pulls the task's image if the store lacks it. A failure rejects the task with the
    /// registry's words, and the store keeps nothing of it.
    async fn pull_for(&self, task: &Task) -> Result<(), ExecError> {
        let (Some(r), Some(puller)) = (self.to_pull(task), &self.puller) else { return Ok(()) };
        let c = task.spec.as_ref().and_then(|s| s.container.as_ref());
        let creds = c.and_then(|c| c.registry_auth.as_ref()).and_then(|a| {
            (a.registry == r.registry && !a.password.is_empty()).then(|| {
                shoal_registry::Credentials {
                    username: a.username.clone(),
                    password: a.password.clone(),
                }
            })
        });
        tracing::info!(task = %task.id, image = %r.familiar(), "pulling the task's image");
        puller.pull(&r, creds.as_ref()).await.map(drop).map_err(|e| {
            let image = c.map(|c| c.image.as_str()).unwrap_or_default();
            ExecError::Rejected(format!("pulling {image} on {}: {e}", self.node))
        })
    }

    /// Plumbs tasks into networks through `net`.
    pub fn with_network(mut self, net: Arc<DataPlane>) -> Self {
        self.net = Some(net);
        self
    }

    /// Runs `job` on the data plane off the async threads; `None` without a data plane.
    async fn on_net<T: Send + 'static>(
        &self,
        job: impl FnOnce(&DataPlane) -> T + Send + 'static,
    ) -> Option<T> {
        let net = self.net.clone()?;
        tokio::task::spawn_blocking(move || job(&net)).await.ok()
    }

    /// Prepares the task's network namespace, files and resolver, if it gets any.
    async fn plumb(
        &self,
        task: &Task,
        spec: &mut crate::runtime::TaskSpec,
    ) -> Result<(), ExecError> {
        let host = spec.host_namespaces.contains(&HostNamespace::Network);
        if self.net.is_none() || !DataPlane::wants(task, host) {
            return Ok(());
        }
        let hostname = spec.hostname.clone().unwrap_or_else(|| task.id.chars().take(12).collect());
        let t = task.clone();
        let plumbed = self
            .on_net(move |net| {
                let p = net.attach(&t, &hostname)?;
                let socket = net.resolver_socket(&t.id);
                if socket.is_err() {
                    net.detach(&t.id);
                }
                Ok::<_, crate::net::NetError>((p, socket?))
            })
            .await;
        let (p, socket) = match plumbed {
            Some(Ok(done)) => done,
            Some(Err(e)) => return Err(ExecError::Rejected(format!("network setup failed: {e}"))),
            None => return Err(ExecError::Rejected("network setup failed".into())),
        };
        if let Some(net) = &self.net {
            net.serve_resolver(&task.id, socket)
                .map_err(|e| ExecError::Rejected(format!("network setup failed: {e}")))?;
        }
        spec.netns = Some(p.netns);
        spec.etc_files = p.etc_files;
        Ok(())
    }

    async fn unplumb(&self, id: &str) {
        let id = id.to_string();
        self.on_net(move |net| net.detach(&id)).await;
    }

    /// The runtime underneath.
    pub fn runtime(&self) -> &OciRuntime {
        &self.runtime
    }

    fn kept_logs(&self, id: &str) -> PathBuf {
        self.runtime.config().data_root.join("logs").join(id)
    }

    fn seccomp_path(&self, id: &str) -> PathBuf {
        self.runtime.config().data_root.join("seccomp").join(format!("{id}.json"))
    }

    fn set_in_use(&self, id: &str, image: Option<String>) {
        let mut in_use = self.in_use.lock().unwrap_or_else(|p| p.into_inner());
        match image {
            Some(image) => in_use.insert(id.to_string(), image),
            None => in_use.remove(id),
        };
    }

    /// The node's data root: the runtime keeps its state in `<data root>/runtime`.
    fn node_root(&self) -> PathBuf {
        let runtime_root = &self.runtime.config().data_root;
        runtime_root.parent().unwrap_or(runtime_root).to_path_buf()
    }

    /// Resolves the image and builds the runtime spec, off the async threads.
    async fn build(&self, task: &Task) -> Result<Built, ExecError> {
        let (images, node, task) = (self.images.clone(), self.node.clone(), task.clone());
        let volumes = self.volumes.clone();
        let path = self.seccomp_path(&task.id);
        let (node_root, policy) = (self.node_root(), self.runtime.config().policy.clone());
        let job = move || {
            let c = task.spec.as_ref().and_then(|s| s.container.as_ref());
            let c = c.ok_or(TaskSpecError::NoContainer)?;
            let image = resolve_image(&images, c, &node)?;
            let mut built = build(&task, &image, &images, path)?;
            let at = super::mounts::MountPlaces {
                volumes: &volumes,
                data_root: &node_root,
                policy: &policy,
            };
            built.spec.mounts = super::mounts::resolve(&task.id, &c.mounts, &image, &images, &at)
                .map_err(TaskSpecError::Mount)?;
            if let Some(h) = built.spec.hostname.take() {
                built.spec.hostname = Some(super::spec::expand_template(&h, &task, &node)?);
            }
            if let Some((path, profile)) = &built.seccomp_profile {
                write_profile(path, profile)?;
            }
            Ok::<_, TaskSpecError>(built)
        };
        tokio::task::spawn_blocking(job)
            .await
            .map_err(|e| ExecError::Rejected(format!("preparing the task failed: {e}")))?
            .map_err(|e| ExecError::Rejected(e.to_string()))
    }

    async fn prepare_task(
        &self,
        task: &Task,
        files: Vec<crate::runtime::SecretFile>,
    ) -> Result<(), ExecError> {
        let envelope = self.envelope(task)?;
        self.check_trust(task, envelope.as_ref())?;
        self.pull_for(task).await?;
        self.check_scan(task, envelope.as_ref()).await?;
        let built = self.build(task).await;
        let mut built = built.inspect_err(|_| self.volumes.release(&task.id))?;
        built.spec.files = files;
        self.plumb(task, &mut built.spec).await.inspect_err(|_| self.volumes.release(&task.id))?;
        self.set_in_use(&task.id, Some(built.image_id));
        let created = self.runtime.create(built.spec).await;
        if created.is_err() {
            self.unplumb(&task.id).await;
            self.volumes.release(&task.id);
        }
        created.map_err(|e| ExecError::Rejected(e.to_string()))
    }

    /// Containers no worker drives: an earlier process's, and this runtime's own when a new
    /// agent replaces one in the same process (leave and join, a forced new cluster).
    async fn unclaimed(&self) -> Result<Vec<String>, ExecError> {
        let mut ids = self.runtime.leftovers().await.map_err(failed)?;
        ids.extend(self.runtime.task_ids());
        Ok(ids)
    }

    async fn adopt_task(&self, task: &Task) -> Result<(), ExecError> {
        if self.runtime.task_ids().contains(&task.id) {
            return Ok(());
        }
        let c = task.spec.as_ref().and_then(|s| s.container.as_ref());
        let signal = match c.map(|c| c.stop_signal.as_str()).unwrap_or("") {
            "" => rustix::process::Signal::TERM.as_raw(),
            name => parse_signal(name).map_err(|e| ExecError::Failed(e.to_string()))?,
        };
        let grace = match c.map(|c| c.stop_grace_ms).unwrap_or(0) {
            0 => Duration::from_secs(10),
            ms => Duration::from_millis(ms),
        };
        self.runtime.adopt(&task.id, signal, grace).await.map_err(failed)?;
        let t = task.clone();
        let adopted = self
            .on_net(move |net| match net.adopt(&t) {
                Ok(true) => net.resolver_socket(&t.id).map(Some),
                Ok(false) => Ok(None),
                Err(e) => Err(e),
            })
            .await;
        match (adopted, &self.net) {
            (Some(Ok(Some(socket))), Some(net)) => {
                if let Err(e) = net.serve_resolver(&task.id, socket) {
                    tracing::warn!(task = %task.id, error = %e, "could not serve the task's resolver");
                }
            }
            (Some(Err(e)), _) => {
                tracing::warn!(task = %task.id, error = %e, "could not take over the task's network")
            }
            _ => {}
        }
        if let Some(image) = c.and_then(|c| resolve_image(&self.images, c, &self.node).ok()) {
            self.set_in_use(&task.id, Some(image.id));
        }
        let named =
            c.iter().flat_map(|c| &c.mounts).filter(|m| matches!(m.r#type.as_str(), "" | "volume"));
        self.volumes.lease(&task.id, named.map(|m| m.source.clone()));
        Ok(())
    }

    async fn remove_task(&self, id: &str) -> Result<(), ExecError> {
        let result = self.runtime.delete_keeping_logs(id, &self.kept_logs(id)).await;
        self.unplumb(id).await;
        let _ = std::fs::remove_file(self.seccomp_path(id));
        self.set_in_use(id, None);
        self.volumes.release(id);
        result.map_err(failed)
    }

    async fn forget_task(&self, id: &str) {
        let held = self.runtime.task_ids().iter().any(|t| t == id);
        let left = self.runtime.bundle_dir(id).exists()
            || matches!(self.runtime.runc().state(id).await, Ok(Some(_)));
        let result = if held {
            self.runtime.delete(id).await
        } else if left {
            self.runtime.discard(id).await.map(|_| ())
        } else {
            Ok(())
        };
        if let Err(e) = result {
            tracing::warn!(task = %id, error = %e, "could not remove a task's container");
        }
        self.unplumb(id).await;
        let _ = std::fs::remove_dir_all(self.kept_logs(id));
        let _ = std::fs::remove_file(self.seccomp_path(id));
        self.set_in_use(id, None);
        self.volumes.release(id);
    }
}

fn write_profile(path: &Path, profile: &str) -> Result<(), TaskSpecError> {
    let fail = |source| TaskSpecError::Profile { path: path.to_path_buf(), source };
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        crate::runtime::rootfs::private_dir(dir, None).map_err(TaskSpecError::ProfileDir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    file.write_all(profile.as_bytes()).map_err(fail)
}

impl Executor for OciExecutor {
    fn prepare<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(self.prepare_task(task, Vec::new()))
    }

    fn must_pull(&self, task: &Task) -> Option<String> {
        self.to_pull(task).map(|r| r.familiar())
    }

    fn volumes(&self) -> Option<Arc<Volumes>> {
        Some(self.volumes.clone())
    }

    fn describe(&self) -> shoal_proto::NodeDescription {
        let policy = &self.runtime.config().policy;
        shoal_proto::NodeDescription {
            allowed_cap_add: policy
                .allowed_cap_add
                .iter()
                .filter_map(|c| crate::runtime::caps::normalize(c).ok())
                .map(String::from)
                .collect(),
            allows_binds: !policy.allowed_bind_prefixes.is_empty(),
            mac: self.runtime.mac().layers(),
            mac_detail: self.runtime.mac().describe(),
            allows_label_override: policy.allow_label_override,
            allowed_apparmor: policy.allowed_apparmor.iter().cloned().collect(),
            ..super::executor::describe_host()
        }
    }

    fn images_in_use(&self) -> Vec<String> {
        let in_use = self.in_use.lock().unwrap_or_else(|p| p.into_inner());
        let set: HashSet<&String> = in_use.values().collect();
        set.into_iter().cloned().collect()
    }

    fn prepare_with<'a>(
        &'a self,
        task: &'a Task,
        files: Vec<crate::runtime::SecretFile>,
    ) -> BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(self.prepare_task(task, files))
    }

    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(async move { self.runtime.start(id).await.map_err(failed) })
    }

    fn wait<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ExitStatus, ExecError>> {
        Box::pin(async move { self.runtime.wait(id).await.map_err(failed) })
    }

    fn stop<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ExitStatus, ExecError>> {
        Box::pin(async move { self.runtime.stop(id).await.map_err(failed) })
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(self.remove_task(id))
    }

    fn exec<'a>(
        &'a self,
        id: &'a str,
        argv: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ExecOutput, ExecError>> {
        Box::pin(async move { self.runtime.exec(id, argv, timeout).await.map_err(failed) })
    }

    fn leftovers(&self) -> BoxFuture<'_, Result<Vec<String>, ExecError>> {
        Box::pin(self.unclaimed())
    }

    fn adopt<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(self.adopt_task(task))
    }

    fn forget<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(self.forget_task(id))
    }

    fn tunnel_keys(&self) -> Vec<shoal_proto::TunnelKey> {
        self.net.as_ref().map(|n| n.tunnel_keys()).unwrap_or_default()
    }

    fn rotate_tunnel_key(&self, period: Duration) {
        if let Some(n) = &self.net {
            n.rotate_tunnel_key(period);
        }
    }

    fn node_known(&self, node: &shoal_proto::Node) {
        if let Some(n) = &self.net {
            n.set_node(&node.id, &node.addr);
        }
    }

    fn update_networks<'a>(
        &'a self,
        maps: Vec<shoal_proto::NetworkMap>,
        removed: &'a [String],
        complete: bool,
    ) -> BoxFuture<'a, ()> {
        let removed = removed.to_vec();
        Box::pin(async move {
            self.on_net(move |net| net.update(maps, &removed, complete)).await;
        })
    }

    fn retain_logs(&self, keep: &HashSet<String>) {
        let dir = self.runtime.config().data_root.join("logs");
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    fn log_paths(&self, id: &str) -> Option<(PathBuf, PathBuf)> {
        if self.runtime.bundle_dir(id).exists() {
            return Some(self.runtime.log_paths(id));
        }
        let kept = self.kept_logs(id);
        kept.exists().then(|| (kept.join("stdout.log"), kept.join("stderr.log")))
    }
}
