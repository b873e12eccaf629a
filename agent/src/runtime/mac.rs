//! Mandatory access control on this host: what is available (SELinux, Landlock, AppArmor), the
//! SELinux label applied to tasks when the node configures one, and the Landlock helper tasks
//! start through. Detection reads only `/sys` and `/proc` and asks the kernel for its Landlock
//! ABI; the one write is the helper, installed under the runtime's data root.
//!
//! Landlock: runc cannot apply it, so where the kernel has it every task's entry point is the
//! static `shoal-landlock` helper built into this binary (bound read-only at
//! `oci::LANDLOCK_PATH`), which confines itself and execs the task's command. The ruleset and
//! the reasons for it are documented in that crate: device nodes only in /dev; from ABI 6, no
//! signals to, nor abstract unix sockets of, processes outside the task. Exceptions: a task with
//! no-new-privileges off runs without it (Landlock needs no-new-privileges, and the node already
//! had to allow that), and so does one with `landlock=off`, if the node's policy allows it. Where
//! the helper is missing, tasks are REJECTED saying so, never run unconfined. Commands run with
//! `exec` (health checks) in such a task start through the helper too, in a domain of their own
//! (runc starts them from the host, and a domain cannot be joined).

use std::path::{Path, PathBuf};

use shoal_proto::spec::mac::{APPARMOR_DEFAULT, SELINUX_FILE_TYPE, SELINUX_PROCESS_TYPE};

use super::error::{Result, RuntimeError};
use super::mcs::McsPair;
use super::spec::{AppArmorChoice, SelinuxChoice, TaskSpec};

/// The Landlock helper's file name under the directory it is installed in.
const HELPER_NAME: &str = "shoal-landlock";

/// The state of SELinux on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selinux {
    /// The kernel has no SELinux filesystem: not compiled in or not registered.
    Absent,
    /// Compiled in but not enabled (selinuxfs known, not mounted).
    Disabled,
    Permissive,
    Enforcing,
}

/// Where the Landlock helper is on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LandlockHelper {
    /// Installed at this path.
    At(PathBuf),
    /// Not installed, and why.
    Missing(String),
}

/// Whether `shoal-default` is loaded, where the host has AppArmor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppArmorProfile {
    /// Loaded: tasks run under it.
    Loaded,
    /// Not loaded, and why: tasks that would run under it are REJECTED, never run unconfined.
    Failed(String),
}

/// What MAC this host offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MacSupport {
    pub selinux: Selinux,
    /// The Landlock ABI version, `None` when the kernel has no Landlock.
    pub landlock_abi: Option<u32>,
    pub apparmor: bool,
    /// The helper that applies Landlock to tasks; used only where the kernel has Landlock.
    pub landlock_helper: LandlockHelper,
    /// The state of `shoal-default`; used only where the host has AppArmor.
    pub apparmor_profile: AppArmorProfile,
}

/// The SELinux labels of one task: its processes' and its files'.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskLabels {
    /// `process.selinuxLabel`, e.g. `system_u:system_r:container_t:s0:c1,c2`.
    pub process: String,
    /// `linux.mountLabel` and the label of the task's rootfs, secrets and volumes, e.g.
    /// `system_u:object_r:container_file_t:s0:c1,c2`.
    pub file: String,
}

impl MacSupport {
    /// Looks at the running kernel; the Landlock helper is not installed yet.
    pub fn detect() -> MacSupport {
        MacSupport {
            selinux: selinux(),
            landlock_abi: shoal_landlock::kernel_abi(),
            apparmor: apparmor(),
            landlock_helper: LandlockHelper::Missing("its helper was never installed".into()),
            apparmor_profile: AppArmorProfile::Failed("shoal-default was never loaded".into()),
        }
    }

    /// Where the host has AppArmor, writes `shoal-default` to `dir` and loads it.
    pub fn with_apparmor_profile(mut self, dir: &Path) -> MacSupport {
        if self.apparmor {
            self.apparmor_profile =
                match super::apparmor::write_and_load(&super::apparmor::parser(), dir, false) {
                    Ok(_) => AppArmorProfile::Loaded,
                    Err(why) => AppArmorProfile::Failed(why),
                };
        }
        self
    }

    /// Whether tasks get SELinux labels here: SELinux enforcing or permissive.
    pub fn labels_tasks(&self) -> bool {
        matches!(self.selinux, Selinux::Enforcing | Selinux::Permissive)
    }

    /// The labels of a task asking for `choice`, holding `pair` (its categories, from the
    /// node's allocator, unless the task names a level); `None` where SELinux is off here or
    /// the task disables labelling.
    pub fn task_labels(&self, choice: &SelinuxChoice, pair: Option<McsPair>) -> Option<TaskLabels> {
        if !self.labels_tasks() {
            return None;
        }
        let (kind, level) = match choice {
            SelinuxChoice::Disable => return None,
            SelinuxChoice::Default => (None, None),
            SelinuxChoice::Custom { kind, level } => (kind.clone(), level.clone()),
        };
        let level = level.or_else(|| pair.map(McsPair::level)).unwrap_or_else(|| "s0".into());
        let kind = kind.unwrap_or_else(|| SELINUX_PROCESS_TYPE.to_string());
        Some(TaskLabels {
            process: format!("system_u:system_r:{kind}:{level}"),
            file: format!("system_u:object_r:{SELINUX_FILE_TYPE}:{level}"),
        })
    }

    /// Whether a task asking for `choice` needs a category pair from the allocator.
    pub fn needs_pair(&self, choice: &SelinuxChoice) -> bool {
        self.labels_tasks()
            && match choice {
                SelinuxChoice::Default => true,
                SelinuxChoice::Disable => false,
                SelinuxChoice::Custom { level, .. } => level.is_none(),
            }
    }

    /// The AppArmor profile a task asking for `choice` runs under: none where the host has no
    /// AppArmor; an error (the task is REJECTED) where its profile is not loaded.
    pub fn apparmor_for(&self, choice: &AppArmorChoice) -> Result<Option<String>> {
        if !self.apparmor {
            return Ok(None);
        }
        match choice {
            AppArmorChoice::Unconfined => Ok(Some("unconfined".into())),
            AppArmorChoice::Default => match &self.apparmor_profile {
                AppArmorProfile::Loaded => Ok(Some(APPARMOR_DEFAULT.into())),
                AppArmorProfile::Failed(why) => Err(RuntimeError::InvalidSpec(format!(
                    "this node runs every task under AppArmor profile {APPARMOR_DEFAULT}, which is not loaded: {why}"
                ))),
            },
            AppArmorChoice::Profile(name) if super::apparmor::is_loaded(name) => {
                Ok(Some(name.clone()))
            }
            AppArmorChoice::Profile(name) => Err(RuntimeError::InvalidSpec(format!(
                "AppArmor profile {name} is not loaded on this node; load it with apparmor_parser -r"
            ))),
        }
    }

    /// The MAC layers applied to every task here (`node.platform.mac`): Landlock where its
    /// helper is installed, SELinux where it enforces, AppArmor where `shoal-default` loaded.
    pub fn layers(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.landlock_abi.is_some() && matches!(self.landlock_helper, LandlockHelper::At(_)) {
            v.push("landlock".to_string());
        }
        if self.selinux == Selinux::Enforcing {
            v.push("selinux".to_string());
        }
        if self.apparmor && self.apparmor_profile == AppArmorProfile::Loaded {
            v.push("apparmor".to_string());
        }
        v
    }

    /// Where the kernel has Landlock, installs the helper built into this binary in `dir`.
    pub fn with_landlock_helper(mut self, dir: &Path) -> MacSupport {
        if self.landlock_abi.is_some() {
            self.landlock_helper = match install_helper(dir) {
                Ok(path) => LandlockHelper::At(path),
                Err(e) => {
                    LandlockHelper::Missing(format!("installing its helper in {dir:?} failed: {e}"))
                }
            };
        }
        self
    }

    /// The host path of the helper `spec` starts through: none where the kernel has no
    /// Landlock or the task runs without it; an error (the task is REJECTED) where the helper
    /// is missing.
    pub fn landlock_helper_for(&self, spec: &TaskSpec) -> Result<Option<PathBuf>> {
        if self.landlock_abi.is_none() || !spec.landlock || spec.allow_new_privileges {
            return Ok(None);
        }
        match &self.landlock_helper {
            LandlockHelper::At(path) if path.exists() => Ok(Some(path.clone())),
            LandlockHelper::At(path) => {
                Err(RuntimeError::LandlockHelper(format!("its helper {path:?} is missing")))
            }
            LandlockHelper::Missing(why) => Err(RuntimeError::LandlockHelper(why.clone())),
        }
    }

    /// One line for `shoal info` and the agent's start-up log.
    pub fn describe(&self) -> String {
        let selinux = match self.selinux {
            Selinux::Absent => "selinux: not in this kernel",
            Selinux::Disabled => "selinux: compiled in, disabled (no labels applied)",
            Selinux::Permissive => {
                "selinux: permissive (container_t labels with a category pair per task, not enforced)"
            }
            Selinux::Enforcing => "selinux: enforcing (container_t with a category pair per task)",
        };
        let landlock = match (self.landlock_abi, &self.landlock_helper) {
            (None, _) => "landlock: not in this kernel (tasks run without it)".to_string(),
            (Some(v), LandlockHelper::At(_)) => format!(
                "landlock: ABI v{v}, applied to every task ({}); not to those the node allows landlock=off or no-new-privileges=false",
                shoal_landlock::summary(v)
            ),
            (Some(v), LandlockHelper::Missing(why)) => {
                format!("landlock: ABI v{v}, but tasks are REJECTED: {why}")
            }
        };
        let apparmor = match (self.apparmor, &self.apparmor_profile) {
            (false, _) => "apparmor: not enabled".to_string(),
            (true, AppArmorProfile::Loaded) => {
                format!("apparmor: every task under {APPARMOR_DEFAULT}")
            }
            (true, AppArmorProfile::Failed(why)) => {
                format!("apparmor: enabled, but tasks are REJECTED: {why}")
            }
        };
        format!("{selinux}; {landlock}; {apparmor}")
    }
}

/// The mount option that gives every file of a new mount (an overlay, a tmpfs) `label`.
pub fn context_option(label: &str) -> String {
    format!("context=\"{label}\"")
}

/// The label of a volume several tasks share: the file type at level `s0`, which every
/// task's categories dominate (Docker's `:z` rather than `:Z`).
pub fn shared_file_label(file: &str) -> String {
    let mut parts = file.splitn(4, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(u), Some(r), Some(t)) => format!("{u}:{r}:{t}:s0"),
        _ => file.to_string(),
    }
}

/// Gives `dir` and everything below it the SELinux label `label`, never following a symbolic
/// link (a link is labelled itself) and never leaving the tree. Walks with its own stack, so a
/// deep volume cannot exhaust this thread's.
pub fn relabel_tree(dir: &Path, label: &str) -> Result<()> {
    const XATTR: &str = "security.selinux";
    let set = |p: &Path| {
        rustix::fs::lsetxattr(p, XATTR, label.as_bytes(), rustix::fs::XattrFlags::empty())
            .map_err(|e| RuntimeError::io("labelling for SELinux", p, e.into()))
    };
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        set(&d)?;
        let entries =
            std::fs::read_dir(&d).map_err(|e| RuntimeError::io("labelling for SELinux", &d, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| RuntimeError::io("labelling for SELinux", &d, e))?;
            let kind =
                entry.file_type().map_err(|e| RuntimeError::io("labelling for SELinux", &d, e))?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else {
                set(&entry.path())?;
            }
        }
    }
    Ok(())
}

fn selinux() -> Selinux {
    match std::fs::read_to_string("/sys/fs/selinux/enforce").map(|s| s.trim().to_string()) {
        Ok(v) if v == "1" => Selinux::Enforcing,
        Ok(_) => Selinux::Permissive,
        Err(_) => {
            let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
            if fs.lines().any(|l| l.trim_end().ends_with("selinuxfs")) {
                Selinux::Disabled
            } else {
                Selinux::Absent
            }
        }
    }
}

fn apparmor() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y")
        && Path::new("/sys/kernel/security/apparmor").exists()
}

/// Writes the helper built into this binary to `dir/shoal-landlock`, mode 0555, and renames it
/// into place: tasks already running keep the copy they started with.
fn install_helper(dir: &Path) -> std::io::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
    let path = dir.join(HELPER_NAME);
    let staged = dir.join(format!(".{HELPER_NAME}.{}", std::process::id()));
    let _ = std::fs::remove_file(&staged);
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o555).open(&staged)?;
    f.write_all(shoal_landlock_static::HELPER)?;
    drop(f);
    std::fs::rename(&staged, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_are_relabelled_without_following_links() {
        let file = "system_u:object_r:container_file_t:s0:c7,c300";
        assert_eq!(shared_file_label(file), "system_u:object_r:container_file_t:s0");
        if !rustix::process::geteuid().is_root() {
            return; // security.* attributes need CAP_SYS_ADMIN where no LSM owns them
        }
        let dir = tempfile::tempdir().unwrap();
        let (vol, outside) = (dir.path().join("vol"), dir.path().join("outside"));
        std::fs::create_dir_all(vol.join("a/b/c")).unwrap();
        std::fs::write(vol.join("a/b/c/data"), b"x").unwrap();
        std::fs::write(&outside, b"host").unwrap();
        std::os::unix::fs::symlink(&outside, vol.join("a/link")).unwrap();
        relabel_tree(&vol, file).unwrap();
        let label = |p: &Path| {
            let mut buf = [0u8; 256];
            rustix::fs::lgetxattr(p, "security.selinux", &mut buf)
                .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
                .unwrap_or_default()
        };
        for p in ["", "a", "a/b/c", "a/b/c/data", "a/link"] {
            assert_eq!(label(&vol.join(p)), file, "{p}");
        }
        assert_eq!(label(&outside), "", "a link's target outside the volume keeps its label");
        relabel_tree(&vol, &shared_file_label(file)).unwrap();
        assert_eq!(label(&vol.join("a/b/c/data")), "system_u:object_r:container_file_t:s0");
    }

    #[test]
    fn labels_follow_selinux_state_and_the_tasks_choice() {
        let on = MacSupport { selinux: Selinux::Enforcing, ..without_landlock() };
        let pair = McsPair::new(7, 300);
        let l = on.task_labels(&SelinuxChoice::Default, pair).unwrap();
        assert_eq!(l.process, "system_u:system_r:container_t:s0:c7,c300");
        assert_eq!(l.file, "system_u:object_r:container_file_t:s0:c7,c300");
        assert!(on.needs_pair(&SelinuxChoice::Default));
        let custom = SelinuxChoice::Custom { kind: Some("spc_t".into()), level: None };
        assert_eq!(
            on.task_labels(&custom, pair).unwrap().process,
            "system_u:system_r:spc_t:s0:c7,c300"
        );
        let level = SelinuxChoice::Custom { kind: None, level: Some("s0:c1,c2".into()) };
        assert!(!on.needs_pair(&level));
        assert_eq!(
            on.task_labels(&level, None).unwrap().file,
            "system_u:object_r:container_file_t:s0:c1,c2"
        );
        assert_eq!(on.task_labels(&SelinuxChoice::Disable, pair), None);
        assert!(!on.needs_pair(&SelinuxChoice::Disable));
        let permissive = MacSupport { selinux: Selinux::Permissive, ..on.clone() };
        assert!(permissive.task_labels(&SelinuxChoice::Default, pair).is_some());
        assert_eq!(permissive.layers(), Vec::<String>::new(), "permissive enforces nothing");
        for off in [Selinux::Disabled, Selinux::Absent] {
            let off = MacSupport { selinux: off, ..on.clone() };
            assert_eq!(off.task_labels(&SelinuxChoice::Default, pair), None);
            assert!(!off.needs_pair(&SelinuxChoice::Default));
        }
        assert_eq!(on.layers(), ["selinux"]);
    }

    #[test]
    fn apparmor_profiles_follow_the_host_and_the_loaded_profile() {
        let none = without_landlock();
        assert_eq!(none.apparmor_for(&AppArmorChoice::Default).unwrap(), None);
        assert_eq!(none.apparmor_for(&AppArmorChoice::Unconfined).unwrap(), None);
        let loaded = MacSupport {
            apparmor: true,
            apparmor_profile: AppArmorProfile::Loaded,
            ..without_landlock()
        };
        assert_eq!(
            loaded.apparmor_for(&AppArmorChoice::Default).unwrap().as_deref(),
            Some("shoal-default")
        );
        assert_eq!(
            loaded.apparmor_for(&AppArmorChoice::Unconfined).unwrap().as_deref(),
            Some("unconfined")
        );
        let e = loaded.apparmor_for(&AppArmorChoice::Profile("nosuch-xyz".into())).unwrap_err();
        assert!(e.to_string().contains("nosuch-xyz is not loaded on this node"), "{e}");
        assert_eq!(loaded.layers(), ["apparmor"]);
        assert!(loaded.describe().contains("apparmor: every task under shoal-default"));
        let failed = MacSupport {
            apparmor_profile: AppArmorProfile::Failed("apparmor_parser refused it".into()),
            ..loaded
        };
        let e = failed.apparmor_for(&AppArmorChoice::Default).unwrap_err().to_string();
        assert!(e.contains("not loaded: apparmor_parser refused it"), "{e}");
        assert!(failed.layers().is_empty());
        assert!(failed.describe().contains("tasks are REJECTED"));
    }

    fn without_landlock() -> MacSupport {
        MacSupport {
            selinux: Selinux::Absent,
            landlock_abi: None,
            apparmor: false,
            landlock_helper: LandlockHelper::Missing("never installed".into()),
            apparmor_profile: AppArmorProfile::Failed("never loaded".into()),
        }
    }

    fn task() -> TaskSpec {
        let rootfs = crate::runtime::RootfsSource::Dir("/x".into());
        TaskSpec::new("t", rootfs, vec!["/bin/true".into()])
    }

    #[test]
    fn landlock_is_described_as_the_node_applies_it() {
        let none = without_landlock();
        assert!(none.describe().contains("landlock: not in this kernel (tasks run without it)"));
        let applied = MacSupport {
            landlock_abi: Some(6),
            landlock_helper: LandlockHelper::At("/d/shoal-landlock".into()),
            ..without_landlock()
        };
        let line = applied.describe();
        assert!(line.contains("landlock: ABI v6, applied to every task (device nodes only in /dev; no signals to, nor abstract unix sockets of, processes outside the task)"), "{line}");
        let old = MacSupport { landlock_abi: Some(4), ..applied };
        assert!(old.describe().contains("ABI v4, applied to every task (device nodes only in /dev; signals and abstract unix sockets unscoped"));
        let missing = MacSupport {
            landlock_helper: LandlockHelper::Missing(
                "installing its helper in \"/d\" failed: disk full".into(),
            ),
            ..old
        };
        let line = missing.describe();
        assert!(
            line.contains("landlock: ABI v4, but tasks are REJECTED: installing its helper"),
            "{line}"
        );
    }

    #[test]
    fn a_missing_helper_rejects_the_tasks_landlock_applies_to() {
        let gone = MacSupport {
            landlock_abi: Some(6),
            landlock_helper: LandlockHelper::At("/no/such/dir/shoal-landlock".into()),
            ..without_landlock()
        };
        let err = gone.landlock_helper_for(&task()).unwrap_err().to_string();
        assert_eq!(
            err,
            "this node applies Landlock to every task but its helper \"/no/such/dir/shoal-landlock\" is missing; restart shoald, which reinstalls its Landlock helper under its data root (it must be writable)"
        );
        // Tasks Landlock does not apply to run as before.
        let mut relaxed = task();
        relaxed.landlock = false;
        assert_eq!(gone.landlock_helper_for(&relaxed).unwrap(), None);
        let mut setuid = task();
        setuid.allow_new_privileges = true;
        assert_eq!(gone.landlock_helper_for(&setuid).unwrap(), None);
        assert_eq!(without_landlock().landlock_helper_for(&task()).unwrap(), None);
    }

    #[test]
    fn the_helper_is_installed_executable_and_replaced_in_place() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let kernel = MacSupport { landlock_abi: Some(1), ..without_landlock() };
        for _ in 0..2 {
            let mac = kernel.clone().with_landlock_helper(&bin);
            let path = bin.join("shoal-landlock");
            assert_eq!(mac.landlock_helper, LandlockHelper::At(path.clone()));
            assert_eq!(std::fs::read(&path).unwrap(), shoal_landlock_static::HELPER);
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o555);
            assert_eq!(mac.landlock_helper_for(&task()).unwrap(), Some(path));
        }
        assert_eq!(std::fs::read_dir(&bin).unwrap().count(), 1, "no staged copy is left");
        let blocked = dir.path().join("file");
        std::fs::write(&blocked, "").unwrap();
        let mac = kernel.with_landlock_helper(&blocked);
        let err = mac.landlock_helper_for(&task()).unwrap_err().to_string();
        assert!(
            err.contains("installing its helper in") && err.contains("restart shoald"),
            "{err}"
        );
    }

    #[test]
    fn detection_reports_this_host() {
        let dir = tempfile::tempdir().unwrap();
        let m = MacSupport::detect().with_landlock_helper(dir.path());
        let line = m.describe();
        assert!(line.contains("selinux:") && line.contains("landlock:"), "{line}");
        let landlock = if m.landlock_abi.is_some() { "applied to every task" } else { "not in" };
        assert!(line.contains(landlock), "{line}");
        eprintln!("notice: {line}");
    }
}
