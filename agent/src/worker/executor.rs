//! The seam between the worker and whatever runs containers: the `Executor` trait, its errors,
//! and the node description every executor reports. No IO here beyond reading /proc/meminfo.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use shoal_proto::{NodeDescription, Task};

pub use crate::runtime::{ExecOutput, ExitStatus};

/// Why an executor could not do what the worker asked.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The task cannot run on this node (missing image, refused option): REJECT it.
    #[error("{0}")]
    Rejected(String),
    /// Something failed once the task was set up: FAIL it.
    #[error("{0}")]
    Failed(String),
    /// This node holds no container for the task.
    #[error("no container for task {0} on this node")]
    Unknown(String),
}

/// Runs the containers of the tasks assigned to this node. Object-safe: the worker holds an
/// `Arc<dyn Executor>`; the container ID is always the task ID.
pub trait Executor: Send + Sync + std::fmt::Debug {
    /// Resolves the task's image and sets its container up without starting it. Any error
    /// means the task is REJECTED with its message.
    fn prepare<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<(), ExecError>>;
    /// Like `prepare`, with the task's secret and config files (from memory). An executor
    /// that runs no real containers may ignore them.
    fn prepare_with<'a>(
        &'a self,
        task: &'a Task,
        files: Vec<crate::runtime::SecretFile>,
    ) -> BoxFuture<'a, Result<(), ExecError>> {
        drop(files);
        self.prepare(task)
    }
    /// Starts a prepared container; an error means the task FAILED.
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), ExecError>>;
    /// Waits until the container's process exits (at once if it has).
    fn wait<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ExitStatus, ExecError>>;
    /// Stops the container with its spec's stop signal and grace period, then SIGKILL.
    fn stop<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ExitStatus, ExecError>>;
    /// Deletes the container and everything it holds on the node except its logs.
    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), ExecError>>;
    /// Runs `argv` inside the running container, killed after `timeout` (health checks).
    fn exec<'a>(
        &'a self,
        id: &'a str,
        argv: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ExecOutput, ExecError>>;
    /// IDs of the containers an earlier agent process left on this node. Asked once, before
    /// the first complete set of assignments is applied.
    fn leftovers(&self) -> BoxFuture<'_, Result<Vec<String>, ExecError>>;
    /// Takes over leftover container `task.id` so `wait`, `stop`, `exec` and `remove` work on
    /// it. Fails if it is gone or never started.
    fn adopt<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<(), ExecError>>;
    /// Removes all trace of task `id`: its container if any (held or leftover) and its logs.
    fn forget<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ()>;
    /// Deletes the kept logs of every task not in `keep` (tasks the managers no longer know).
    fn retain_logs(&self, keep: &HashSet<String>);
    /// The task's `(stdout, stderr)` log files, if it has any on this node. Rotated files are
    /// beside them as `<file>.1` (newest) to `<file>.N`.
    fn log_paths(&self, id: &str) -> Option<(PathBuf, PathBuf)>;
    /// The image to pull before task `task` can be prepared, if the node lacks it and pulls
    /// (what `service ps` shows while PREPARING). Preparing the task pulls it.
    fn must_pull(&self, _task: &Task) -> Option<String> {
        None
    }
    /// The node's named volumes (none for an executor without them).
    fn volumes(&self) -> Option<std::sync::Arc<crate::volume::Volumes>> {
        None
    }
    /// IDs of the images this node's tasks run (none for an executor without images).
    fn images_in_use(&self) -> Vec<String> {
        Vec::new()
    }
    /// Takes the maps of the networks this node's tasks are on (all of them when `complete`)
    /// and forgets the `removed` ones. An executor without a data plane ignores them.
    fn update_networks<'a>(
        &'a self,
        maps: Vec<shoal_proto::NetworkMap>,
        removed: &'a [String],
        complete: bool,
    ) -> BoxFuture<'a, ()> {
        drop((maps, removed, complete));
        Box::pin(async {})
    }
    /// What this node offers, sent to the managers when a session opens.
    fn describe(&self) -> NodeDescription {
        describe_host()
    }
    /// The node's encrypted-overlay public keys, newest first (none without a data plane).
    fn tunnel_keys(&self) -> Vec<shoal_proto::TunnelKey> {
        Vec::new()
    }
    /// Replaces the node's tunnel key when it is `period` old.
    fn rotate_tunnel_key(&self, _period: Duration) {}
    /// The node's own record, as its session reports it (its ID and data-plane address).
    fn node_known(&self, _node: &shoal_proto::Node) {}
}

/// This host's OS, architecture, CPUs (in billionths) and memory.
pub fn describe_host() -> NodeDescription {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as i64;
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    NodeDescription {
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        nano_cpus: cpus * 1_000_000_000,
        memory_bytes: mem_total(&meminfo).unwrap_or(0),
        ..Default::default()
    }
}

/// `MemTotal` of a /proc/meminfo text, in bytes.
fn mem_total(meminfo: &str) -> Option<i64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_described() {
        let d = describe_host();
        assert_eq!(d.os, "linux");
        assert!(!d.arch.is_empty());
        assert!(d.nano_cpus >= 1_000_000_000 && d.nano_cpus % 1_000_000_000 == 0);
        assert!(d.memory_bytes > 0);
        assert_eq!(mem_total("MemFree: 1 kB\nMemTotal:   2048 kB\n"), Some(2 << 20));
    }
}
