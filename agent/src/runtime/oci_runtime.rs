//! `OciRuntime`: runs tasks as OCI bundles through runc. Owns the node's runtime config, the
//! task table (one short sync mutex, never held across an await) and each task's OCI config.
//! The lifecycle of one task lives in `lifecycle`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::cgroup::Layout;
use super::error::{Result, RuntimeError};
use super::lifecycle::Task;
use super::logs::LogLimits;
use super::mac::MacSupport;
use super::mcs::McsAllocator;
use super::reap::become_subreaper;
use super::rootfs::{self, BundleDirs};
use super::runc::Runc;
use super::spec::TaskSpec;
use super::{caps, oci, seccomp, NodePolicy, SeccompChoice};

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

/// Runs tasks through an OCI runtime binary.
#[derive(Debug)]
pub struct OciRuntime {
    pub(super) cfg: RuntimeConfig,
    pub(super) runc: Runc,
    pub(super) layout: Layout,
    mac: MacSupport,
    /// The SELinux category pairs of live tasks (used where SELinux is on).
    pub(super) mcs: McsAllocator,
    pub(super) tasks: Mutex<HashMap<String, Arc<Task>>>,
}

impl OciRuntime {
    /// Prepares the data root and makes this process the reaper of its containers.
    pub fn new(cfg: RuntimeConfig) -> Result<OciRuntime> {
        let search_gid = cfg.policy.remapped_root_gid();
        for d in [cfg.data_root.clone(), cfg.data_root.join("tasks"), cfg.data_root.join("runc")] {
            rootfs::private_dir(&d, search_gid)?;
        }
        let mac = MacSupport::detect()
            .with_landlock_helper(&cfg.data_root.join("bin"))
            .with_apparmor_profile(&cfg.data_root.join("apparmor"));
        tracing::info!(mac = %mac.describe(), "container runtime ready");
        become_subreaper()?;
        let runc = Runc::new(&cfg.runtime_binary, cfg.data_root.join("runc"));
        let tasks = Mutex::new(HashMap::new());
        let mcs = McsAllocator::default();
        Ok(OciRuntime { cfg, runc, layout: Layout::detect(), mac, mcs, tasks })
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

    /// The MAC this host offers (SELinux, Landlock, AppArmor).
    pub fn mac(&self) -> &MacSupport {
        &self.mac
    }

    /// The host's cgroup layout.
    pub fn cgroup_layout(&self) -> &Layout {
        &self.layout
    }

    pub(super) fn task(&self, id: &str) -> Result<Arc<Task>> {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.get(id).cloned().ok_or_else(|| RuntimeError::UnknownTask(id.to_string()))
    }

    /// The OCI config for `spec` on this node, after the node's policy accepted it. Where
    /// SELinux is on, the task holds a category pair from here on (freed when it is deleted).
    pub fn oci_config(&self, spec: &TaskSpec) -> Result<oci_spec::runtime::Spec> {
        spec.validate()?;
        self.cfg.policy.check(spec)?;
        let pair = if self.mac.needs_pair(&spec.selinux) {
            Some(
                self.mcs
                    .allocate(&spec.id)
                    .map_err(|e| RuntimeError::InvalidSpec(e.to_string()))?,
            )
        } else {
            None
        };
        let set = caps::effective(&spec.cap_add, &spec.cap_drop)?;
        let target = seccomp::Target::native(&set);
        let default = || seccomp::resolve(&seccomp::builtin_profile(), &target);
        let filter = match &spec.seccomp {
            SeccompChoice::Unconfined => None,
            SeccompChoice::Default => Some(default()),
            SeccompChoice::Profile(p) => {
                let custom = seccomp::resolve(&seccomp::load_profile(p)?, &target);
                self.cfg.policy.check_custom_seccomp(&custom, &default())?;
                Some(custom)
            }
        };
        let inputs = oci::ConfigInputs {
            cgroups_path: self.cgroup_path(&spec.id),
            default_pids_limit: self.cfg.default_pids_limit,
            seccomp: filter,
            userns: self.userns(spec),
            init_binary: self.init_binary(spec)?,
            landlock_helper: self.mac.landlock_helper_for(spec)?,
            labels: self.mac.task_labels(&spec.selinux, pair),
            apparmor_profile: self.mac.apparmor_for(&spec.apparmor)?,
            files_dir: super::secrets::dir(&super::rootfs::BundleDirs::new(
                self.bundle_dir(&spec.id),
            )),
        };
        oci::build(spec, &inputs)
    }

    pub(super) fn userns(&self, spec: &TaskSpec) -> Option<(super::IdRange, super::IdRange)> {
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

    /// Ids of the tasks this runtime currently holds.
    pub fn task_ids(&self) -> Vec<String> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }
}
