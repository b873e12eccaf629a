//! `OciRuntime`: runs tasks as OCI bundles through runc. Owns the task table (one short sync
//! mutex, never held across an await), each task's bundle directory, log pumps and exit watcher.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::cgroup::Layout;
use super::error::{Result, RuntimeError};
use super::logs::{log_pipe, LogLimits};
use super::reap::{become_subreaper, ExitStatus, ExitWatch};
use super::rootfs::{self, BundleDirs};
use super::runc::{CreateIo, Runc};
use super::spec::TaskSpec;
use super::{caps, oci, seccomp, NodePolicy, Runtime, SeccompChoice};

/// How the node runs tasks.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// The OCI runtime binary (`runc`, or a path to crun or youki).
    pub runtime_binary: PathBuf,
    /// Task bundles go under `<data_root>/tasks`, the binary's state under `<data_root>/runc`.
    pub data_root: PathBuf,
    /// The pids limit of tasks that set none.
    pub default_pids_limit: i64,
    /// A static init (tini) bound into tasks that ask for one.
    pub init_binary: Option<PathBuf>,
    pub log_limits: LogLimits,
    /// Every task's cgroup is `/<cgroup_parent>/<task id>`.
    pub cgroup_parent: String,
    pub policy: NodePolicy,
}

impl RuntimeConfig {
    /// runc from `PATH`, Docker-like defaults, and the node's secure default policy.
    pub fn new(data_root: impl Into<PathBuf>) -> RuntimeConfig {
        let tini = Path::new("/usr/bin/tini-static");
        RuntimeConfig {
            runtime_binary: "runc".into(),
            data_root: data_root.into(),
            default_pids_limit: 1024,
            init_binary: tini.exists().then(|| tini.to_path_buf()),
            log_limits: LogLimits::default(),
            cgroup_parent: "shoal".into(),
            policy: NodePolicy::secure_default(),
        }
    }
}

#[derive(Debug)]
struct Task {
    dirs: BundleDirs,
    cgroup: PathBuf,
    stop_signal: i32,
    stop_grace: Duration,
    exit: watch::Receiver<Option<ExitStatus>>,
    pumps: Vec<JoinHandle<()>>,
}

/// Runs tasks through an OCI runtime binary.
#[derive(Debug)]
pub struct OciRuntime {
    cfg: RuntimeConfig,
    runc: Runc,
    layout: Layout,
    tasks: Mutex<HashMap<String, Arc<Task>>>,
}

impl OciRuntime {
    /// Prepares the data root and makes this process the reaper of its containers.
    pub fn new(cfg: RuntimeConfig) -> Result<OciRuntime> {
        for d in [cfg.data_root.clone(), cfg.data_root.join("tasks"), cfg.data_root.join("runc")] {
            rootfs::mkdir(&d)?;
            set_mode(&d, 0o711)?;
        }
        become_subreaper()?;
        let runc = Runc::new(&cfg.runtime_binary, cfg.data_root.join("runc"));
        Ok(OciRuntime { cfg, runc, layout: Layout::detect(), tasks: Mutex::new(HashMap::new()) })
    }

    /// The configuration this runtime runs with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.cfg
    }

    /// The OCI runtime binary driver (for inspection and benchmarks).
    pub fn runc(&self) -> &Runc {
        &self.runc
    }

    /// The bundle directory of task `id`.
    pub fn bundle_dir(&self, id: &str) -> PathBuf {
        self.cfg.data_root.join("tasks").join(id)
    }

    /// Where task `id`'s output goes: `(stdout.log, stderr.log)`.
    pub fn log_paths(&self, id: &str) -> (PathBuf, PathBuf) {
        let logs = BundleDirs::new(self.bundle_dir(id)).logs();
        (logs.join("stdout.log"), logs.join("stderr.log"))
    }

    /// The cgroup path of task `id`, relative to each hierarchy root.
    pub fn cgroup_path(&self, id: &str) -> PathBuf {
        PathBuf::from(format!("/{}/{id}", self.cfg.cgroup_parent))
    }

    /// The host's cgroup layout.
    pub fn cgroup_layout(&self) -> &Layout {
        &self.layout
    }

    fn task(&self, id: &str) -> Result<Arc<Task>> {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.get(id).cloned().ok_or_else(|| RuntimeError::UnknownTask(id.to_string()))
    }

    /// The OCI config for `spec` on this node, after the node's policy accepted it.
    pub fn oci_config(&self, spec: &TaskSpec) -> Result<oci_spec::runtime::Spec> {
        spec.validate()?;
        self.cfg.policy.check(spec)?;
        let set = caps::effective(&spec.cap_add, &spec.cap_drop)?;
        let filter = match &spec.seccomp {
            SeccompChoice::Unconfined => None,
            SeccompChoice::Default => Some(seccomp::builtin_profile()),
            SeccompChoice::Profile(p) => Some(seccomp::load_profile(p)?),
        };
        let inputs = oci::ConfigInputs {
            cgroups_path: self.cgroup_path(&spec.id),
            default_pids_limit: self.cfg.default_pids_limit,
            seccomp: filter.map(|f| seccomp::resolve(&f, &seccomp::Target::native(&set))),
            userns: self.userns(spec),
            init_binary: self.init_binary(spec)?,
        };
        oci::build(spec, &inputs)
    }

    fn userns(&self, spec: &TaskSpec) -> Option<(super::IdRange, super::IdRange)> {
        let p = &self.cfg.policy;
        spec.userns_remap.then_some((p.userns_uids?, p.userns_gids?))
    }

    fn init_binary(&self, spec: &TaskSpec) -> Result<Option<PathBuf>> {
        match (&self.cfg.init_binary, spec.init) {
            (_, false) => Ok(None),
            (Some(p), true) if p.exists() => Ok(Some(p.clone())),
            (p, true) => Err(RuntimeError::InvalidSpec(format!(
                "the task asks for an init but this node's init binary {p:?} is missing; apt-get install tini"
            ))),
        }
    }

    async fn create_task(&self, spec: TaskSpec) -> Result<()> {
        let config = self.oci_config(&spec)?;
        let dirs = BundleDirs::new(self.bundle_dir(&spec.id));
        if dirs.bundle.exists() || self.task(&spec.id).is_ok() {
            return Err(RuntimeError::Exists(spec.id.clone()));
        }
        rootfs::mkdir(&dirs.logs())?;
        let task = match self.prepare_and_create(&spec, &config, &dirs).await {
            Ok(t) => t,
            Err(e) => {
                let _ = self.runc.delete(&spec.id).await;
                let _ = rootfs::unmount_rootfs(&dirs);
                let _ = std::fs::remove_dir_all(&dirs.bundle);
                return Err(e);
            }
        };
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.insert(spec.id.clone(), Arc::new(task));
        Ok(())
    }

    async fn prepare_and_create(
        &self,
        spec: &TaskSpec,
        config: &oci_spec::runtime::Spec,
        dirs: &BundleDirs,
    ) -> Result<Task> {
        rootfs::mount_rootfs(dirs, &spec.rootfs, self.userns(spec))?;
        oci::save(config, &dirs.bundle)?;
        let (out_w, out_r) = log_pipe()?;
        let (err_w, err_r) = log_pipe()?;
        let (stdout_log, stderr_log) = self.log_paths(&spec.id);
        let pumps = vec![
            out_r.pump(&stdout_log, self.cfg.log_limits)?,
            err_r.pump(&stderr_log, self.cfg.log_limits)?,
        ];
        let pid_file = dirs.bundle.join("pid");
        let io = CreateIo { stdout: out_w.into(), stderr: err_w.into() };
        self.runc.create(&spec.id, &dirs.bundle, &pid_file, io).await?;
        let pid = read_pid(&pid_file)?;
        let cgroup = self.cgroup_path(&spec.id);
        let exit = self.watch_exit(pid, cgroup.clone())?;
        Ok(Task {
            dirs: dirs.clone(),
            cgroup,
            stop_signal: spec.stop_signal,
            stop_grace: spec.stop_grace,
            exit,
            pumps,
        })
    }

    fn watch_exit(&self, pid: i32, cgroup: PathBuf) -> Result<watch::Receiver<Option<ExitStatus>>> {
        let watcher = ExitWatch::open(pid)?;
        let (tx, rx) = watch::channel(None);
        let layout = self.layout.clone();
        tokio::spawn(async move {
            let (code, signal) = watcher.wait().await.unwrap_or((255, None));
            let oom_killed = layout.oom_killed(&cgroup);
            let _ = tx.send(Some(ExitStatus { code, signal, oom_killed }));
        });
        Ok(rx)
    }

    async fn wait_task(&self, id: &str) -> Result<ExitStatus> {
        let mut rx = self.task(id)?.exit.clone();
        let status = rx
            .wait_for(|s| s.is_some())
            .await
            .map_err(|_| RuntimeError::UnknownTask(format!("{id} (its exit watcher is gone)")))?;
        Ok(status.expect("waited for Some"))
    }

    async fn stop_task(&self, id: &str) -> Result<ExitStatus> {
        let task = self.task(id)?;
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
        self.runc.delete(id).await?;
        let _ = self.wait_task(id).await;
        for p in &task.pumps {
            p.abort();
        }
        self.remove_remains(&task.dirs, &task.cgroup)?;
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        Ok(())
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

    /// Ids of the tasks this runtime currently holds.
    pub fn task_ids(&self) -> Vec<String> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
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

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| RuntimeError::io("setting permissions of", path, e))
}

impl Runtime for OciRuntime {
    fn create(&self, spec: TaskSpec) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.create_task(spec))
    }
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.task(id)?;
            self.runc.start(id).await
        })
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
