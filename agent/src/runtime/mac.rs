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

use super::error::{Result, RuntimeError};
use super::spec::TaskSpec;

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

/// What MAC this host offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MacSupport {
    pub selinux: Selinux,
    /// The Landlock ABI version, `None` when the kernel has no Landlock.
    pub landlock_abi: Option<u32>,
    pub apparmor: bool,
    /// The helper that applies Landlock to tasks; used only where the kernel has Landlock.
    pub landlock_helper: LandlockHelper,
}

impl MacSupport {
    /// Looks at the running kernel; the Landlock helper is not installed yet.
    pub fn detect() -> MacSupport {
        MacSupport {
            selinux: selinux(),
            landlock_abi: shoal_landlock::kernel_abi(),
            apparmor: apparmor(),
            landlock_helper: LandlockHelper::Missing("its helper was never installed".into()),
        }
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
            Selinux::Permissive => "selinux: permissive (labels applied, not enforced)",
            Selinux::Enforcing => "selinux: enforcing (labels applied)",
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
        let apparmor = if self.apparmor { "apparmor: enabled" } else { "apparmor: not enabled" };
        format!("{selinux}; {landlock}; {apparmor}")
    }

    /// The label to put on tasks: the configured one where SELinux is on, nothing where it is
    /// off; a label configured on a host without SELinux is a configuration error.
    pub fn selinux_label(&self, configured: Option<&str>) -> Result<Option<String>> {
        match (configured, self.selinux) {
            (None, _) => Ok(None),
            (Some(l), Selinux::Enforcing | Selinux::Permissive) => Ok(Some(l.to_string())),
            (Some(l), state) => Err(RuntimeError::InvalidSpec(format!(
                "the node config sets SELinux label {l:?} but SELinux is {state:?} on this host; remove the label or enable SELinux"
            ))),
        }
    }
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
    fn labels_follow_selinux_state() {
        let on = MacSupport { selinux: Selinux::Enforcing, ..without_landlock() };
        assert_eq!(
            on.selinux_label(Some("system_u:system_r:container_t:s0")).unwrap().as_deref(),
            Some("system_u:system_r:container_t:s0")
        );
        let off = MacSupport { selinux: Selinux::Disabled, ..on };
        assert_eq!(off.selinux_label(None).unwrap(), None);
        assert!(off.selinux_label(Some("x")).unwrap_err().to_string().contains("Disabled"));
    }

    fn without_landlock() -> MacSupport {
        MacSupport {
            selinux: Selinux::Absent,
            landlock_abi: None,
            apparmor: false,
            landlock_helper: LandlockHelper::Missing("never installed".into()),
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
