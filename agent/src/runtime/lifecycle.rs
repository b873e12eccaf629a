//! One task's life through the OCI runtime binary: prepare (rootfs, config, log fifos), run
//! (`runc run --detach`: create and start in one process start), watch its exit, run commands
//! in it (`runc exec`, through the Landlock helper where the task started through it), stop
//! with signal + grace + SIGKILL, delete; and adopting a container an earlier agent process
//! started. The order of `create` then `start` is kept for callers;
//! container set-up errors surface at `start`.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

use super::cgroup::Layout;
use super::error::{Result, RuntimeError};
use super::logs::{log_fifo, LogReader};
use super::oci_runtime::OciRuntime;
use super::reap::{ExitStatus, ExitWatch};
use super::rootfs::{self, BundleDirs};
use super::runc::{CreateIo, ExecOutput};
use super::spec::{Relabel, TaskMountKind, TaskSpec};
use super::{oci, Runtime};

/// The named pipes a task writes its output into, in its bundle.
const STDOUT_FIFO: &str = "stdout.fifo";
const STDERR_FIFO: &str = "stderr.fifo";
/// How long an ended task's log pumps get to copy what is still in the pipes.
const PUMP_DRAIN: Duration = Duration::from_secs(2);

/// A task the runtime holds.
#[derive(Debug)]
pub(super) struct Task {
    dirs: BundleDirs,
    cgroup: PathBuf,
    stop_signal: i32,
    stop_grace: Duration,
    /// The scopes commands exec'd into the task start under, through the Landlock helper;
    /// `None` where the task runs without Landlock.
    exec_landlock: Option<shoal_landlock::Scopes>,
    exit: watch::Receiver<Option<ExitStatus>>,
    /// Until start: the exit sender and the write ends of stdout and stderr.
    pending: Mutex<Option<Pending>>,
    /// Copy the task's output into its log files; the exit is published once they drained.
    pumps: Mutex<Vec<Pump>>,
}

/// One log pump: stopped on delete; `done` resolves (for any number of waiters) when it has
/// copied everything and every writer closed the pipe.
#[derive(Debug)]
struct Pump {
    abort: AbortHandle,
    done: Shared<BoxFuture<'static, ()>>,
}

impl Pump {
    fn new(handle: JoinHandle<()>) -> Pump {
        let abort = handle.abort_handle();
        let done: BoxFuture<'static, ()> = Box::pin(handle.map(|_| ()));
        Pump { abort, done: done.shared() }
    }
}

impl Task {
    /// Resolves when every pump has finished.
    fn drained(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let pumps = self.pumps.lock().unwrap_or_else(|p| p.into_inner());
        let done: Vec<_> = pumps.iter().map(|p| p.done.clone()).collect();
        futures::future::join_all(done).map(|_| ())
    }
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

/// Gives the named volumes a task mounts its file label: its own categories when it alone
/// holds the volume, the shared `s0` level when other tasks hold it too.
fn relabel_volumes(spec: &TaskSpec, file: &str) -> Result<()> {
    for m in &spec.mounts {
        let TaskMountKind::Bind { source, .. } = &m.kind else { continue };
        match m.relabel {
            Relabel::Keep => {}
            Relabel::Private => super::mac::relabel_tree(source, file)?,
            Relabel::Shared => {
                super::mac::relabel_tree(source, &super::mac::shared_file_label(file))?
            }
        }
    }
    Ok(())
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
                self.mcs.release(&spec.id);
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
        let remap = self.userns(spec);
        rootfs::private_dir(&dirs.bundle, remap.map(|(_, gids)| gids.host_start))?;
        rootfs::private_dir(&dirs.logs(), None)?;
        // The task's own files carry its SELinux file label, where SELinux is on.
        let label = config.linux().as_ref().and_then(|l| l.mount_label().clone());
        // A task that may gain privileges keeps its setuid files working; its bundle is 0700.
        let nosuid = !spec.allow_new_privileges;
        rootfs::mount_rootfs(dirs, &spec.rootfs, remap, nosuid, label.as_deref())?;
        if let Some(file) = &label {
            relabel_volumes(spec, file)?;
        }
        super::secrets::mount_files(dirs, &spec.files, self.userns(spec), label.as_deref())?;
        oci::save(config, &dirs.bundle)?;
        let (stdout, out_r) = log_fifo(&dirs.bundle.join(STDOUT_FIFO))?;
        let (stderr, err_r) = log_fifo(&dirs.bundle.join(STDERR_FIFO))?;
        let pumps = self.pump_logs(&spec.id, out_r, err_r)?;
        let (tx, rx) = watch::channel(None);
        Ok(Task {
            dirs: dirs.clone(),
            cgroup: self.cgroup_path(&spec.id),
            stop_signal: spec.stop_signal,
            stop_grace: spec.stop_grace,
            exec_landlock: oci::exec_landlock(config),
            exit: rx,
            pending: Mutex::new(Some(Pending { exit: tx, stdout, stderr })),
            pumps: Mutex::new(pumps),
        })
    }

    fn pump_logs(&self, id: &str, out: LogReader, err: LogReader) -> Result<Vec<Pump>> {
        let (stdout_log, stderr_log) = self.log_paths(id);
        Ok(vec![
            Pump::new(out.pump(&stdout_log, self.cfg.log_limits)?),
            Pump::new(err.pump(&stderr_log, self.cfg.log_limits)?),
        ])
    }

    /// Takes over a container an earlier agent process started: watches its exit (the status
    /// is collected only if the container's init is our child, else it is unknown) and pumps
    /// its output fifos again. Containers that never started are not adopted.
    pub(super) async fn adopt_task(
        &self,
        id: &str,
        stop_signal: i32,
        grace: Duration,
    ) -> Result<()> {
        if self.task(id).is_ok() {
            return Err(RuntimeError::Exists(id.to_string()));
        }
        let missing = |why: &str| RuntimeError::UnknownTask(format!("{id} ({why})"));
        let state = self.runc.state(id).await?.ok_or_else(|| missing("no container is left"))?;
        if state.status == "created" {
            return Err(missing("its container never started"));
        }
        let dirs = BundleDirs::new(self.bundle_dir(id));
        let cgroup = self.cgroup_path(id);
        let mut pumps = Vec::new();
        if dirs.bundle.join(STDOUT_FIFO).exists() {
            rootfs::private_dir(&dirs.logs(), None)?;
            let out = LogReader::open_fifo(&dirs.bundle.join(STDOUT_FIFO))?;
            let err = LogReader::open_fifo(&dirs.bundle.join(STDERR_FIFO))?;
            pumps = self.pump_logs(id, out, err)?;
        }
        let (tx, rx) = watch::channel(None);
        let exec_landlock = adopted_exec_landlock(&dirs.bundle);
        self.claim_adopted_categories(id, &dirs.bundle);
        let task = Task {
            dirs,
            cgroup: cgroup.clone(),
            stop_signal,
            stop_grace: grace,
            exec_landlock,
            exit: rx,
            pending: Mutex::new(None),
            pumps: Mutex::new(pumps),
        };
        match ExitWatch::open(state.pid) {
            Ok(w) if state.status != "stopped" => {
                watch_exit(w, tx, self.layout.clone(), cgroup, task.drained())
            }
            _ => {
                let oom_killed = self.layout.oom_killed(&cgroup);
                let _ = tx.send(Some(ExitStatus { oom_killed, ..ExitStatus::unknown() }));
            }
        }
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_string(), Arc::new(task));
        Ok(())
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
        watch_exit(watcher, p.exit, self.layout.clone(), task.cgroup.clone(), task.drained());
        Ok(())
    }

    async fn exec_task(&self, id: &str, args: &[String], timeout: Duration) -> Result<ExecOutput> {
        let task = self.task(id)?;
        if task.pending.lock().unwrap_or_else(|p| p.into_inner()).is_some()
            || task.exit.borrow().is_some()
        {
            return Err(RuntimeError::InvalidSpec(format!("task {id} is not running")));
        }
        let args = match task.exec_landlock {
            Some(scopes) => shoal_landlock::exec_command_line(scopes, args.iter().cloned()),
            None => args.to_vec(),
        };
        let pid_file = task.dirs.bundle.join(format!("exec-{:08x}.pid", rand::random::<u32>()));
        let out = self.runc.exec(id, &args, &pid_file, timeout).await;
        let _ = std::fs::remove_file(&pid_file);
        out
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

    /// Deletes task `id`; with `keep_logs`, its log directory is moved there first.
    pub(super) async fn delete_task(&self, id: &str, keep_logs: Option<&Path>) -> Result<()> {
        let task = self.task(id)?;
        let started = task.take_pending().is_none();
        let exited = task.exit.borrow().is_some();
        if started && !exited {
            self.runc.delete(id).await?;
            let _ = self.wait_task(id).await;
        } else if started {
            self.forget_stopped(id).await?;
        }
        drain(&task).await;
        if let Some(dest) = keep_logs {
            keep_dir(&task.dirs.logs(), dest)?;
        }
        self.remove_remains(&task.dirs, &task.cgroup)?;
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        self.mcs.release(id);
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
        super::secrets::unmount_files(dirs)?;
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

/// Publishes the exit of the process `watcher` watches, with whether the OOM killer ended it,
/// once its output is in the log files (`drained`, or after `PUMP_DRAIN`): whoever sees a task
/// end can read everything it wrote.
fn watch_exit(
    watcher: ExitWatch,
    exit: watch::Sender<Option<ExitStatus>>,
    layout: Layout,
    cgroup: PathBuf,
    drained: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::spawn(async move {
        let status = match watcher.wait().await {
            Some((code, signal)) => ExitStatus { code, signal, oom_killed: false },
            None => ExitStatus::unknown(),
        };
        if tokio::time::timeout(PUMP_DRAIN, drained).await.is_err() {
            tracing::debug!("a task's output pipe stayed open after it ended");
        }
        let oom_killed = layout.oom_killed(&cgroup);
        let _ = exit.send(Some(ExitStatus { oom_killed, ..status }));
    });
}

/// Lets the log pumps copy what the pipes still hold (every writer is gone), then stops them.
async fn drain(task: &Task) {
    if tokio::time::timeout(PUMP_DRAIN, task.drained()).await.is_err() {
        tracing::debug!("a task's output pipe stayed open after it ended; dropping the rest");
    }
    let pumps = std::mem::take(&mut *task.pumps.lock().unwrap_or_else(|p| p.into_inner()));
    for p in &pumps {
        p.abort.abort();
    }
}

/// Moves directory `from` to `to` (replacing it), creating `to`'s parent.
fn keep_dir(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        rootfs::private_dir(parent, None)?;
    }
    let _ = std::fs::remove_dir_all(to);
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RuntimeError::io("keeping the logs of", from, e)),
    }
}

impl OciRuntime {
    /// Takes back the SELinux category pair an adopted container runs with (from its saved
    /// config), so no new task is given it while the container lives.
    fn claim_adopted_categories(&self, id: &str, bundle: &Path) {
        let Ok(config) = oci_spec::runtime::Spec::load(bundle.join("config.json")) else { return };
        let label = config.process().as_ref().and_then(|p| p.selinux_label().clone());
        if let Some(pair) = label.as_deref().and_then(super::mcs::McsPair::from_label) {
            if !self.mcs.claim(id, pair) {
                tracing::warn!(task = id, categories = %pair, "an adopted task shares its SELinux categories with another");
            }
        }
    }
}

/// How commands exec'd into an adopted task start, from the config it was started with. An
/// unreadable config counts as Landlock with every scope: an exec'd command then fails rather
/// than run unconfined in a task that may be confined.
fn adopted_exec_landlock(bundle: &Path) -> Option<shoal_landlock::Scopes> {
    let path = bundle.join("config.json");
    match oci_spec::runtime::Spec::load(&path) {
        Ok(config) => oci::exec_landlock(&config),
        Err(e) => {
            tracing::warn!(config = ?path, error = %e, "an adopted task's config is unreadable; commands exec'd into it start under the full Landlock ruleset");
            Some(shoal_landlock::Scopes::ALL)
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
        Box::pin(self.delete_task(id, None))
    }
    fn exec<'a>(
        &'a self,
        id: &'a str,
        args: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ExecOutput>> {
        Box::pin(self.exec_task(id, args, timeout))
    }
}
