//! The Landlock ruleset every Shoal task runs under, and the command line that starts a task
//! through the `shoal-landlock` helper. runc cannot apply Landlock to a container, so on a
//! kernel with Landlock the helper is each task's entry point: it confines itself, then execs the
//! task's command, keeping its pid, environment, working directory and user. Owns the ruleset;
//! never decides which tasks get it (the agent's runtime does).
//!
//! # The ruleset, and why
//!
//! Ordinary containers write anywhere in their rootfs, /tmp, /run and volumes, read /proc and run
//! their own binaries, so no right those need is handled. What the ruleset restricts:
//!
//! - **Device nodes only in /dev** (`MAKE_CHAR`, `MAKE_BLOCK`; ABI 1). Docker's default
//!   capabilities include `CAP_MKNOD`. A node made in the rootfs, /tmp or a volume stays on the
//!   host's disk after the task and opens for whoever reaches it there, outside this task's device
//!   cgroup. /dev is the task's own tmpfs, gone with it, and its device cgroup still decides which
//!   nodes open; entry points that make `/dev/net/tun` or `/dev/fuse` keep working.
//! - **No signals to processes outside the task** (`SCOPE_SIGNAL`; ABI 6): the host's processes
//!   under `pid=host`, and commands run in the task with `exec` (they start outside its domain).
//!   Signals into the task (stop, kill, an exec'd `kill -HUP 1`) are unaffected.
//! - **No abstract unix sockets of processes outside the task** (`SCOPE_ABSTRACT_UNIX_SOCKET`;
//!   ABI 6): under `network=host`, the host's abstract sockets (X11, container shims) are out of
//!   reach. Path sockets bound into the task are unaffected.
//!
//! Left out on purpose: `IOCTL_DEV` (ABI 5): a task's only device nodes are null, zero, full,
//! random, urandom, tty and its ptys, whose ioctls are harmless or already need `CAP_SYS_ADMIN`;
//! handling it would need exceptions for ptys and would turn `isatty` on /dev/null into EACCES.
//! `REFER` would break renames across directories; `TRUNCATE` and the read, write and execute
//! rights would need a path list per image; the TCP rights would need each service's ports.
//!
//! Rights the running kernel does not know are dropped (best effort): ABI 1 to 5 get the device
//! rule only. A kernel that enforces nothing is an error: the helper fails rather than run the
//! task unconfined.

use std::ffi::OsString;

use landlock::{
    AccessFs, LandlockStatus, PathBeneath, PathFd, PathFdError, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetError, RulesetStatus, Scope,
};

/// Where the helper appears inside a task (bound read-only, nosuid, nodev): in its /dev, a tmpfs
/// the runtime makes, so no image file can clash with it, nothing is written to the rootfs, and
/// the mount point can be made under a remapped root too.
pub const PATH_IN_TASK: &str = "/dev/.shoal-landlock";

/// The one directory beneath which a task may still make device nodes: its own /dev tmpfs.
pub const DEVICE_DIR: &str = "/dev";

/// The first Landlock ABI with scopes (signals, abstract unix sockets).
pub const SCOPES_ABI: u32 = 6;

/// Exit status when the task could not be confined: its command did not run.
pub const EXIT_NOT_CONFINED: u8 = 125;
/// Exit status when the command was found but cannot be executed.
pub const EXIT_CANNOT_RUN: u8 = 126;
/// Exit status when the command was not found.
pub const EXIT_NOT_FOUND: u8 = 127;

/// The command line that runs `command` through the helper.
pub fn command_line(command: impl IntoIterator<Item = String>) -> Vec<String> {
    [PATH_IN_TASK.to_string(), "--".to_string()].into_iter().chain(command).collect()
}

/// The command the helper must run, from its arguments (without its own name):
/// `-- PROGRAM [ARG...]`.
pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Vec<OsString>, String> {
    let mut args = args.into_iter();
    let command: Vec<OsString> = match args.next() {
        Some(sep) if sep == "--" => args.collect(),
        _ => Vec::new(),
    };
    if command.is_empty() {
        return Err("usage: shoal-landlock -- PROGRAM [ARG...]".into());
    }
    Ok(command)
}

/// What the ruleset restricts on a kernel with Landlock ABI `abi`, for logs.
pub fn summary(abi: u32) -> &'static str {
    if abi >= SCOPES_ABI {
        "device nodes only in /dev; no signals to, nor abstract unix sockets of, processes outside the task"
    } else {
        "device nodes only in /dev; signals and abstract unix sockets unscoped (that needs ABI v6)"
    }
}

/// The running kernel's Landlock ABI version; `None` when Landlock is not built in or is off.
#[allow(unsafe_code)]
pub fn kernel_abi() -> Option<u32> {
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
    u32::try_from(v).ok().filter(|v| *v > 0)
}

/// Why the ruleset could not be applied.
#[derive(Debug)]
pub enum ConfineError {
    /// The device directory could not be opened.
    DeviceDir(PathFdError),
    /// Building or enforcing the ruleset failed.
    Ruleset(RulesetError),
    /// The kernel enforced nothing (no Landlock, or a seccomp filter hides its calls).
    NotEnforced(LandlockStatus),
}

impl std::fmt::Display for ConfineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfineError::DeviceDir(e) => write!(f, "{e}"),
            ConfineError::Ruleset(e) => write!(f, "{e}"),
            ConfineError::NotEnforced(s) => write!(
                f,
                "the kernel enforced no rule (Landlock: {s:?}); a custom seccomp profile must allow landlock_create_ruleset, landlock_add_rule and landlock_restrict_self"
            ),
        }
    }
}

impl std::error::Error for ConfineError {}

/// Confines the calling thread, and everything it execs or forks from now on, with the ruleset.
/// Sets no-new-privileges first, as Landlock requires of an unprivileged caller (the agent only
/// starts the helper in tasks that have it on already).
pub fn confine() -> Result<(), ConfineError> {
    let devices = AccessFs::MakeChar | AccessFs::MakeBlock;
    let dev = PathFd::new(DEVICE_DIR).map_err(ConfineError::DeviceDir)?;
    let status = Ruleset::default()
        .handle_access(devices)
        .and_then(|r| r.scope(Scope::Signal | Scope::AbstractUnixSocket))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rule(PathBeneath::new(dev, devices)))
        .and_then(|r| r.restrict_self())
        .map_err(ConfineError::Ruleset)?;
    match status.ruleset {
        RulesetStatus::NotEnforced => Err(ConfineError::NotEnforced(status.landlock)),
        RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_command_follows_a_double_dash() {
        assert_eq!(parse_args(os(&["--", "sh", "-c", "true"])).unwrap(), os(&["sh", "-c", "true"]));
        assert_eq!(parse_args(os(&["--", "--"])).unwrap(), os(&["--"]));
        for bad in [&[][..], &["--"], &["sh"], &["-x", "--", "sh"]] {
            assert!(parse_args(os(bad)).unwrap_err().starts_with("usage:"), "{bad:?}");
        }
    }

    #[test]
    fn command_lines_start_with_the_helper() {
        let line = command_line(["/bin/sh".to_string(), "-c".into(), "x".into()]);
        assert_eq!(line, [PATH_IN_TASK, "--", "/bin/sh", "-c", "x"]);
    }

    #[test]
    fn the_summary_mentions_scopes_only_where_the_abi_has_them() {
        assert!(summary(6).contains("no signals to"));
        assert!(summary(5).contains("needs ABI v6"));
        assert!(summary(1).starts_with("device nodes only in /dev"));
    }
}
