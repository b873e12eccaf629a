//! AppArmor for tasks where the host has it: the `shoal-default` profile, loaded by `shoald`
//! with `apparmor_parser` at start, that every task runs under unless the node allows it
//! another (`process.apparmorProfile`, which runc applies as the task's command starts).
//!
//! The profile's intent is that of Docker's `docker-default`, written for Shoal: tasks keep
//! ordinary file, network and capability use (the other layers — capabilities, seccomp,
//! Landlock, namespaces — bound those), but may not mount or pivot, may signal and trace only
//! processes under the same profile, may not write kernel tunables under `/proc/sys` or `/sys`,
//! and may not touch kernel memory, firmware or the LSM's own files.

use std::path::{Path, PathBuf};
use std::process::Command;

use shoal_proto::spec::mac::APPARMOR_DEFAULT;

/// The text of the `shoal-default` profile.
pub fn default_profile() -> String {
    format!(
        r#"# {name}: the AppArmor profile every Shoal task runs under (written by shoald).
profile {name} flags=(attach_disconnected,mediate_deleted) {{
  network,
  capability,
  file,
  umount,

  # Tasks signal and trace only processes under this profile; the host may signal them.
  signal (send,receive) peer={name},
  signal (receive) peer=unconfined,
  ptrace (trace,read,tracedby,readby) peer={name},

  # The task's filesystem tree is the runtime's to arrange, never the task's.
  deny mount,
  deny pivot_root,

  # Kernel tunables, kernel memory, firmware and the LSMs' files belong to the host.
  deny /proc/sys/** wklx,
  deny /proc/sysrq-trigger rwklx,
  deny /proc/kcore rwklx,
  deny /proc/kmem rwklx,
  deny /proc/mem rwklx,
  deny /dev/mem rwklx,
  deny /dev/kmem rwklx,
  deny /dev/port rwklx,
  deny /sys/firmware/** rwklx,
  deny /sys/kernel/security/** rwklx,
  deny /sys/[^f]*/** wklx,
  deny /sys/f[^s]*/** wklx,
  deny /sys/fs/[^c]*/** wklx,
  deny /sys/fs/c[^g]*/** wklx,
  deny /sys/fs/cg[^r]*/** wklx,
}}
"#,
        name = APPARMOR_DEFAULT
    )
}

/// Writes the profile to `dir/shoal-default` (0644, replaced atomically) and runs
/// `apparmor_parser` on it: loading it into the kernel (replacing an older copy), or with
/// `compile_only` just checking that it compiles (`--skip-kernel-load`).
pub fn write_and_load(parser: &Path, dir: &Path, compile_only: bool) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {dir:?}: {e}"))?;
    let path = dir.join(APPARMOR_DEFAULT);
    let staged = dir.join(format!(".{APPARMOR_DEFAULT}.{}", std::process::id()));
    std::fs::write(&staged, default_profile()).map_err(|e| format!("writing {staged:?}: {e}"))?;
    let _ = std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o644));
    std::fs::rename(&staged, &path).map_err(|e| format!("writing {path:?}: {e}"))?;
    let mut cmd = Command::new(parser);
    cmd.arg("--skip-cache");
    if compile_only {
        cmd.arg("--skip-kernel-load");
    } else {
        cmd.arg("--replace");
    }
    let out = cmd.arg(&path).output().map_err(|e| {
        format!("running {parser:?}: {e} (apt-get install apparmor provides apparmor_parser)")
    })?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{parser:?} refused {path:?}: {}", said.trim()));
    }
    Ok(path)
}

/// Whether the kernel has a profile called `name` loaded (its list under securityfs).
pub fn is_loaded(name: &str) -> bool {
    let list =
        std::fs::read_to_string("/sys/kernel/security/apparmor/profiles").unwrap_or_default();
    list.lines().any(|l| l.rsplit_once(" (").map(|(n, _)| n) == Some(name))
}

/// Where `apparmor_parser` is: `/sbin` or `/usr/sbin`, else from `PATH`.
pub fn parser() -> PathBuf {
    ["/usr/sbin/apparmor_parser", "/sbin/apparmor_parser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("apparmor_parser"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_denies_what_it_says() {
        let p = default_profile();
        assert!(p.contains("profile shoal-default flags=(attach_disconnected,mediate_deleted) {"));
        for rule in [
            "deny mount,",
            "deny /proc/sys/** wklx,",
            "ptrace (trace,read,tracedby,readby) peer=shoal-default,",
            "deny /sys/kernel/security/** rwklx,",
            "deny /proc/kcore rwklx,",
        ] {
            assert!(p.contains(rule), "{rule}");
        }
        assert_eq!(p.matches('{').count(), p.matches('}').count());
    }

    /// The profile compiles with the host's `apparmor_parser` (Debian's `apparmor` package;
    /// CI installs it). Compiling needs no AppArmor in the running kernel.
    #[test]
    fn the_profile_compiles_with_apparmor_parser() {
        let parser = parser();
        if Command::new(&parser).arg("--version").output().is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "apparmor_parser is missing; CI must apt-get install apparmor"
            );
            eprintln!("skipped: apparmor_parser is not installed (apt-get install apparmor)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = write_and_load(&parser, dir.path(), true).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), default_profile());
        // A broken profile is refused with the parser's words.
        let broken = dir.path().join("broken");
        std::fs::write(&broken, "profile x {\n  deny mount\n").unwrap();
        let out = Command::new(&parser)
            .args(["--skip-cache", "--skip-kernel-load"])
            .arg(&broken)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "the parser accepts a broken profile: the test proves nothing"
        );
    }
}
