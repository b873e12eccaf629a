//! One task's life through the OCI runtime binary: prepare (rootfs, config, log pipes), run
//! (`runc run --detach`: create and start in one process start), watch its exit, stop with
//! signal + grace + SIGKILL, delete. The order of `create` then `start` is kept for callers;
//! container set-up errors surface at `start`.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::error::{Result, RuntimeError};
use super::logs::log_pipe;
use super::oci_runtime::OciRuntime;
use super::reap::{ExitStatus, ExitWatch};
use super::rootfs::{self, BundleDirs};
use super::runc::CreateIo;
use super::spec::TaskSpec;
use super::{oci, Runtime};

/// A task the runtime holds.
#[derive(Debug)]
pub(super) struct Task {
    dirs: BundleDirs,
    cgroup: PathBuf,
    stop_signal: i32,
    stop_grace: Duration,
    exit: watch::Receiver<Option<ExitStatus>>,
    /// Until start: the exit sender and the write ends of stdout and stderr.
    pending: Mutex<Option<Pending>>,
    pumps: Vec<JoinHandle<()>>,
}

#[derive(Debug)]
struct Pending {
    exit: watch::Sender<Option<ExitStatus>>,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

impl Task {
    fn take_pending(&self) -> Option<Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl OciRuntime {
    async fn create_task(&self, spec: TaskSpec) -> Result<()> {
        let config = self.oci_config(&spec)?;
        let dirs = BundleDirs::new(self.bundle_dir(&spec.id));
        if dirs.bundle.exists() || self.task(&spec.id).is_ok() {
            return Err(RuntimeError::Exists(spec.id.clone()));
        }
        let task = match self.prepare(&spec, &config, &dirs) {
            Ok(t) => t,
            Err(e) => {
                let _ = self.remove_remains(&dirs, &self.cgroup_path(&spec.id));
                return Err(e);
            }
        };
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.insert(spec.id.clone(), Arc::new(task));
        Ok(())
    }

    fn prepare(
        &self,
        spec: &TaskSpec,
        config: &oci_spec::runtime::Spec,
        dirs: &BundleDirs,
    ) -> Result<Task> {
        rootfs::mkdir(&dirs.logs())?;
        rootfs::mount_rootfs(dirs, &spec.rootfs, self.userns(spec))?;
        oci::save(config, &dirs.bundle)?;
        let (stdout, out_r) = log_pipe()?;
        let (stderr, err_r) = log_pipe()?;
        let (stdout_log, stderr_log) = self.log_paths(&spec.id);
        let pumps = vec![
            out_r.pump(&stdout_log, self.cfg.log_limits)?,
            err_r.pump(&stderr_log, self.cfg.log_limits)?,
        ];
        let (tx, rx) = watch::channel(None);
        Ok(Task {
            dirs: dirs.clone(),
            cgroup: self.cgroup_path(&spec.id),
            stop_signal: spec.stop_signal,
            stop_grace: spec.stop_grace,
            exit: rx,
            pending: Mutex::new(Some(Pending { exit: tx, stdout, stderr })),
            pumps,
        })
    }

    async fn start_task(&self, id: &str) -> Result<()> {
        let task = self.task(id)?;
        let Some(p) = task.take_pending() else {
            return Err(RuntimeError::InvalidSpec(format!("task {id} was already started")));
        };
        let pid_file = task.dirs.bundle.join("pid");
        let io = CreateIo { stdout: p.stdout.into(), stderr: p.stderr.into() };
        if let Err(e) = self.runc.run_detached(id, &task.dirs.bundle, &pid_file, io).await {
            let _ = p.exit.send(Some(ExitStatus { code: 127, signal: None, oom_killed: false }));
            return Err(e);
        }
        let watcher = ExitWatch::open(read_pid(&pid_file)?)?;
        let (layout, cgroup) = (self.layout.clone(), task.cgroup.clone());
        tokio::spawn(async move {
            let (code, signal) = watcher.wait().await.unwrap_or((255, None));
            let oom_killed = layout.oom_killed(&cgroup);
            let _ = p.exit.send(Some(ExitStatus { code, signal, oom_killed }));
        });
        Ok(())
    }

    async fn wait_task(&self, id: &str) -> Result<ExitStatus> {
        let mut rx = self.task(id)?.exit.clone();
        let gone = || RuntimeError::UnknownTask(format!("{id} (deleted while waited for)"));
        let status = rx.wait_for(|s| s.is_some()).await.map_err(|_| gone())?;
        Ok(status.expect("waited for Some"))
    }

    async fn stop_task(&self, id: &str) -> Result<ExitStatus> {
        let task = self.task(id)?;
        if let Some(p) = task.take_pending() {
            // Never started: nothing runs; report it as killed.
            let status = ExitStatus { code: 137, signal: Some(9), oom_killed: false };
            let _ = p.exit.send(Some(status));
            return Ok(status);
        }
        if let Some(done) = *task.exit.borrow() {
            return Ok(done);
        }
        // A container that exits between our check and the signal makes kill fail: harmless.
        let _ = self.runc.kill(id, task.stop_signal, false).await;
        if let Ok(status) = tokio::time::timeout(task.stop_grace, self.wait_task(id)).await {
            return status;
        }
        tracing::info!(task = id, grace = ?task.stop_grace, "task ignored its stop signal; killing it");
        let _ = self.runc.kill(id, rustix::process::Signal::KILL.as_raw(), true).await;
        self.wait_task(id).await
    }

    async fn delete_task(&self, id: &str) -> Result<()> {
        let task = self.task(id)?;
        let started = task.take_pending().is_none();
        let exited = task.exit.borrow().is_some();
        if started && !exited {
            self.runc.delete(id).await?;
            let _ = self.wait_task(id).await;
        } else if started {
            self.forget_stopped(id).await?;
        }
        for p in &task.pumps {
            p.abort();
        }
        self.remove_remains(&task.dirs, &task.cgroup)?;
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        Ok(())
    }

    /// Removes the runtime's state of a container whose process we saw exit. Its cgroups go
    /// in `remove_remains`; this is what `runc delete` does for a stopped container without
    /// hooks, minus a process start. Falls back to `runc delete` if the state will not go.
    async fn forget_stopped(&self, id: &str) -> Result<()> {
        match std::fs::remove_dir_all(self.runc.state_dir(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(_) => self.runc.delete(id).await,
        }
    }

    /// Unmounts the rootfs, removes leftover cgroups and the bundle directory.
    pub(crate) fn remove_remains(&self, dirs: &BundleDirs, cgroup: &Path) -> Result<()> {
        rootfs::unmount_rootfs(dirs)?;
        let stuck = self.layout.remove(cgroup);
        if !stuck.is_empty() {
            tracing::warn!(?stuck, "cgroups of a deleted task could not be removed");
        }
        match std::fs::remove_dir_all(&dirs.bundle) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RuntimeError::io("removing task bundle", &dirs.bundle, e)),
        }
    }
}

fn read_pid(path: &Path) -> Result<i32> {
    let text =
        std::fs::read_to_string(path).map_err(|e| RuntimeError::io("reading pid file", path, e))?;
    text.trim().parse().map_err(|_| {
        RuntimeError::io(
            "parsing pid file",
            path,
            std::io::Error::other(format!("{text:?} is not a pid")),
        )
    })
}

impl Runtime for OciRuntime {
    fn create(&self, spec: TaskSpec) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.create_task(spec))
    }
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.start_task(id))
    }
    fn wait<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ExitStatus>> {
        Box::pin(self.wait_task(id))
    }
    fn kill<'a>(&'a self, id: &'a str, signal: i32) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.task(id)?;
            self.runc.kill(id, signal, false).await
        })
    }
    fn stop<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ExitStatus>> {
        Box::pin(self.stop_task(id))
    }
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.delete_task(id))
    }
}
