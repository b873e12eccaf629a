//! Start-up recovery: the containers an earlier agent process left. The agent adopts those its
//! managers still want running ([`OciRuntime::adopt`]: their output fifos are pumped again;
//! their exit status is known only if they are still our children) and discards the rest with
//! everything they left: runc state, rootfs mounts, cgroups and bundle directories.
//! [`OciRuntime::recover`] discards them all, as Docker does without live-restore.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use super::error::Result;
use super::oci_runtime::OciRuntime;
use super::reap::ExitWatch;
use super::rootfs::BundleDirs;

/// How long a killed container gets to die before recovery moves on.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// What recovery found and removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Tasks that were still running and were killed.
    pub killed: Vec<String>,
    /// Every task id whose remains were removed (running or not).
    pub removed: Vec<String>,
}

impl OciRuntime {
    /// Stops and removes every container and bundle this runtime does not hold: the leftovers
    /// of an earlier agent process. Call once at start-up, before accepting tasks.
    pub async fn recover(&self) -> Result<Recovered> {
        let mut out = Recovered::default();
        for id in self.leftovers().await? {
            if self.discard(&id).await? {
                out.killed.push(id.clone());
            }
            out.removed.push(id);
        }
        if !out.removed.is_empty() {
            tracing::info!(killed = ?out.killed, removed = ?out.removed, "cleaned up tasks of a previous agent");
        }
        Ok(out)
    }

    /// Ids of the containers and bundles this runtime does not hold: an earlier agent's.
    pub async fn leftovers(&self) -> Result<Vec<String>> {
        let held: BTreeSet<String> = self.task_ids().into_iter().collect();
        let mut ids: BTreeSet<String> = self.leftover_bundles().into_iter().collect();
        ids.extend(self.runc().list().await?.into_iter().map(|s| s.id));
        Ok(ids.into_iter().filter(|id| !held.contains(id)).collect())
    }

    /// Takes over leftover container `id` so that `wait`, `stop`, `exec` and `delete` work on
    /// it, stopping it with `stop_signal` and `grace`. Fails if it never started or is gone.
    pub async fn adopt(&self, id: &str, stop_signal: i32, grace: Duration) -> Result<()> {
        self.adopt_task(id, stop_signal, grace).await
    }

    /// Kills leftover `id` if it runs and removes all it left; true if it was running.
    pub async fn discard(&self, id: &str) -> Result<bool> {
        let killed = self.kill_leftover(id).await?;
        if let Err(e) = self.runc().delete(id).await {
            tracing::debug!(task = %id, error = %e, "runc had no state for a leftover task");
        }
        let dirs = BundleDirs::new(self.bundle_dir(id));
        self.remove_remains(&dirs, &self.cgroup_path(id))?;
        Ok(killed)
    }

    /// Deletes task `id` like `Runtime::delete`, first moving its log directory (the files
    /// of [`OciRuntime::log_paths`] and their rotations) to `keep_logs`.
    pub async fn delete_keeping_logs(&self, id: &str, keep_logs: &Path) -> Result<()> {
        self.delete_task(id, Some(keep_logs)).await
    }

    /// Kills a leftover container if it runs and waits (bounded) until its init is gone.
    async fn kill_leftover(&self, id: &str) -> Result<bool> {
        let Some(state) = self.runc().state(id).await? else { return Ok(false) };
        if state.status != "running" && state.status != "created" && state.status != "paused" {
            return Ok(false);
        }
        let watch = ExitWatch::open(state.pid).ok();
        let _ = self.runc().kill(id, rustix::process::Signal::KILL.as_raw(), true).await;
        if let Some(w) = watch {
            if tokio::time::timeout(KILL_WAIT, w.wait()).await.is_err() {
                tracing::warn!(
                    task = id,
                    pid = state.pid,
                    "leftover container did not die after SIGKILL"
                );
            }
        }
        Ok(true)
    }

    fn leftover_bundles(&self) -> Vec<String> {
        let dir = self.config().data_root.join("tasks");
        names_in(&dir)
    }
}

/// Names of the sub-directories of `dir`.
fn names_in(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}
