//! Mandatory access control on this host: what is available (SELinux, Landlock, AppArmor) and
//! the SELinux label applied to tasks when the node configures one. Reads only `/sys` and
//! `/proc`; Landlock is detected by asking the kernel for its ABI version.

use std::path::Path;

use super::error::{Result, RuntimeError};

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

/// What MAC this host offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacSupport {
    pub selinux: Selinux,
    /// The Landlock ABI version, `None` when the kernel has no Landlock.
    pub landlock_abi: Option<u32>,
    pub apparmor: bool,
}

impl MacSupport {
    /// Looks at the running kernel.
    pub fn detect() -> MacSupport {
        MacSupport { selinux: selinux(), landlock_abi: landlock_abi(), apparmor: apparmor() }
    }

    /// One line for `shoal info` and the agent's start-up log.
    pub fn describe(&self) -> String {
        let selinux = match self.selinux {
            Selinux::Absent => "selinux: not in this kernel",
            Selinux::Disabled => "selinux: compiled in, disabled (no labels applied)",
            Selinux::Permissive => "selinux: permissive (labels applied, not enforced)",
            Selinux::Enforcing => "selinux: enforcing (labels applied)",
        };
        let landlock = match self.landlock_abi {
            Some(v) => format!(
                "landlock: ABI v{v} available, not applied (runc cannot apply it to a container)"
            ),
            None => "landlock: not in this kernel".to_string(),
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

fn landlock_abi() -> Option<u32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_long = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag, the kernel only
    // returns the ABI version (or an error); no memory is read or written.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (v > 0).then_some(v as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_selinux_state() {
        let on = MacSupport { selinux: Selinux::Enforcing, landlock_abi: None, apparmor: false };
        assert_eq!(
            on.selinux_label(Some("system_u:system_r:container_t:s0")).unwrap().as_deref(),
            Some("system_u:system_r:container_t:s0")
        );
        let off = MacSupport { selinux: Selinux::Disabled, ..on };
        assert_eq!(off.selinux_label(None).unwrap(), None);
        assert!(off.selinux_label(Some("x")).unwrap_err().to_string().contains("Disabled"));
    }

    #[test]
    fn detection_reports_this_host() {
        let m = MacSupport::detect();
        let line = m.describe();
        assert!(line.contains("selinux:") && line.contains("landlock:"), "{line}");
        eprintln!("notice: {line}");
    }
}
