//! The container runtime: builds OCI bundles and drives an OCI runtime binary (runc) to run
//! tasks as isolated containers. The only module of the agent that makes privileged system
//! calls; it never talks to the network or the managers.
// Privileged calls go through rustix's safe wrappers; the few raw calls that have none are
// allowed one by one (`#[allow(unsafe_code)]` on the item), each with its own SAFETY comment.

pub mod apparmor;
pub mod caps;
pub mod cgroup;
pub mod error;
mod lifecycle;
pub mod logs;
pub mod mac;
pub mod mcs;
pub mod oci;
pub mod oci_runtime;
pub mod policy;
pub mod reap;
pub mod recover;
pub mod rootfs;
pub mod runc;
pub mod seccomp;
pub mod secrets;
pub mod spec;

use std::time::Duration;

use futures::future::BoxFuture;

pub use error::{Result, RuntimeError};
pub use logs::LogLimits;
pub use oci_runtime::{OciRuntime, RuntimeConfig};
pub use policy::{IdRange, NodePolicy};
pub use reap::ExitStatus;
pub use recover::Recovered;
pub use runc::ExecOutput;
pub use secrets::SecretFile;
pub use spec::{
    AppArmorChoice, HostNamespace, Relabel, Resources, RootfsSource, SeccompChoice, SelinuxChoice,
    TaskMount, TaskMountKind, TaskSpec, Ulimit, UserSpec,
};

/// What the agent's task controllers need from a container runtime. Object-safe, so the worker
/// can hold a `Arc<dyn Runtime>` and tests can use a fake.
pub trait Runtime: Send + Sync {
    /// Checks `spec` against the node's policy and prepares its bundle (rootfs, OCI config, log
    /// pipes). A refused option fails with `RuntimeError::Refused`: REJECT the task.
    fn create(&self, spec: TaskSpec) -> BoxFuture<'_, Result<()>>;
    /// Creates the container and runs its process (one `runc run --detach`); container set-up
    /// errors (bad binary, mount failure) surface here: FAIL the task.
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Waits for the task's process to exit (returns at once if it has).
    fn wait<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ExitStatus>>;
    /// Sends `signal` to the task's init process.
    fn kill<'a>(&'a self, id: &'a str, signal: i32) -> BoxFuture<'a, Result<()>>;
    /// Sends the task's stop signal, waits its grace period, then SIGKILLs; returns how it ended.
    fn stop<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ExitStatus>>;
    /// Removes the container, its rootfs mount, cgroups and bundle (killing it if running).
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Runs `args` inside the running task with its process settings (`runc exec`); kills it
    /// after `timeout`. A health check is one.
    fn exec<'a>(
        &'a self,
        id: &'a str,
        args: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ExecOutput>>;
}
