//! Which executor a daemon runs tasks with, built once: every agent a daemon starts (at init,
//! join, or resuming membership) drives the same containers through the same executor.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::executor::{ExecError, Executor};
#[cfg(any(test, feature = "test-util"))]
use super::fake::FakeExecutor;
use super::oci::OciExecutor;
use crate::image::ImageStore;
use crate::runtime::{NodePolicy, OciRuntime, RuntimeConfig};

/// The kind of executor, and the one built from it. Clones share the built executor.
#[derive(Clone)]
pub struct ExecutorChoice {
    kind: Kind,
    built: Arc<Mutex<Option<Arc<dyn Executor>>>>,
    /// Where real containers' missing images are pulled from; `None`: no pulls.
    registry: Option<shoal_registry::Client>,
}

#[derive(Clone, Debug)]
enum Kind {
    Runc(NodePolicy),
    #[cfg(any(test, feature = "test-util"))]
    Fake,
}

impl std::fmt::Debug for ExecutorChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ExecutorChoice").field(&self.kind).finish()
    }
}

/// An executor name other than `runc` or `fake`.
#[cfg(any(test, feature = "test-util"))]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown executor {0:?}: use runc or fake")]
pub struct UnknownExecutor(pub String);

impl ExecutorChoice {
    /// Real containers through runc, within `policy`.
    pub fn runc(policy: NodePolicy) -> ExecutorChoice {
        ExecutorChoice::of(Kind::Runc(policy))
    }

    /// The fake executor (tests, simulated nodes).
    #[cfg(any(test, feature = "test-util"))]
    pub fn fake() -> ExecutorChoice {
        ExecutorChoice::of(Kind::Fake)
    }

    /// `runc` or `fake` by name, as a test build's `shoald --executor` takes it.
    #[cfg(any(test, feature = "test-util"))]
    pub fn named(name: &str, policy: NodePolicy) -> Result<ExecutorChoice, UnknownExecutor> {
        match name {
            "runc" => Ok(ExecutorChoice::runc(policy)),
            "fake" => Ok(ExecutorChoice::fake()),
            other => Err(UnknownExecutor(other.to_string())),
        }
    }

    /// For in-process test clusters: the fake, unless `SHOAL_TEST_EXECUTOR=runc`.
    #[cfg(any(test, feature = "test-util"))]
    pub fn for_tests() -> ExecutorChoice {
        match std::env::var("SHOAL_TEST_EXECUTOR").as_deref() {
            Ok("runc") => ExecutorChoice::runc(NodePolicy::secure_default()),
            _ => ExecutorChoice::fake(),
        }
    }

    fn of(kind: Kind) -> ExecutorChoice {
        ExecutorChoice { kind, built: Arc::new(Mutex::new(None)), registry: None }
    }

    /// Real containers pull the images the node lacks with `client`.
    pub fn with_registry(mut self, client: shoal_registry::Client) -> ExecutorChoice {
        self.registry = Some(client);
        self
    }

    /// Creates the node's data root (or tightens an existing one) for root alone: 0700, or
    /// 0710 in the group of remapped container roots where the node remaps (runc's init, as
    /// that root, passes through it to a task's rootfs). No other host user reaches anything
    /// under it: task secrets, environments, logs, setuid files of images and tasks.
    pub fn prepare_data_root(&self, data_root: &Path) -> Result<(), ExecError> {
        let gid = match &self.kind {
            Kind::Runc(policy) => policy.remapped_root_gid(),
            #[cfg(any(test, feature = "test-util"))]
            Kind::Fake => None,
        };
        crate::runtime::rootfs::private_dir(data_root, gid)
            .map_err(|e| ExecError::Failed(format!("preparing the data root: {e}")))
    }

    /// The executor of a node whose data root is `data_root`, built on first use: runtime
    /// state under `<data_root>/runtime`, images from `<data_root>/images` (the store `shoal
    /// image` loads into).
    pub fn executor(&self, data_root: &Path, node: &str) -> Result<Arc<dyn Executor>, ExecError> {
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = built.as_ref() {
            return Ok(e.clone());
        }
        let exec: Arc<dyn Executor> = match &self.kind {
            #[cfg(any(test, feature = "test-util"))]
            Kind::Fake => Arc::new(FakeExecutor::new(node).with_logs(data_root.join("fake-logs"))),
            Kind::Runc(policy) => {
                let mut cfg = RuntimeConfig::new(data_root.join("runtime"));
                cfg.policy = policy.clone();
                let fail = |what: &str, e: &dyn std::fmt::Display| {
                    ExecError::Failed(format!("starting the container runtime: {what}: {e}"))
                };
                let runtime = OciRuntime::new(cfg).map_err(|e| fail("runtime", &e))?;
                let images = Arc::new(
                    ImageStore::attach(data_root.join("images"))
                        .map_err(|e| fail("image store", &e))?,
                );
                let net = crate::net::DataPlane::new(crate::net::NetConfig::new(data_root));
                let mut exec = OciExecutor::new(runtime, images.clone(), node).with_network(net);
                if let Some(client) = &self.registry {
                    exec = exec.with_puller(crate::image::Puller::new(client.clone(), images));
                }
                Arc::new(exec)
            }
        };
        *built = Some(exec.clone());
        Ok(exec)
    }
}
