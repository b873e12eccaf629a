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
//!   under `pid=host`, and commands run in the task with `exec` (they are outside its domain).
//!   Signals into the task from outside (stop, kill) are unaffected.
//! - **No abstract unix sockets of processes outside the task** (`SCOPE_ABSTRACT_UNIX_SOCKET`;
//!   ABI 6): under `network=host`, the host's abstract sockets (X11, container shims) are out of
//!   reach. Path sockets bound into the task are unaffected.
//!
//! # Commands run in a task (`exec`: health checks)
//!
//! runc starts them from the host, outside the task's domain, and a domain cannot be joined: so
//! they start through the helper too, each in a domain of its own beside the task's, with the
//! same device rule. Were they not confined, a task could rewrite its health-check command and
//! have it run without the ruleset. Scopes, though, would cut an exec'd command off from the
//! task's own processes (its domain is not the task's), breaking checks such as `kill -0 1`;
//! so the runtime asks for a scope only where the task shares the host's namespace it guards
//! (`--scopes=signal` under `pid=host`, `abstract-unix-socket` under `network=host`). In the
//! task's own pid and network namespaces every process and abstract socket an exec'd command
//! can reach is the task's, and there is nothing for a scope to keep out. Landlock's ptrace
//! rule holds regardless: an exec'd command cannot trace the task's processes nor read what
//! that needs in /proc (`/proc/1/environ`, `/proc/1/fd`); `/proc/1/stat` and `cmdline` stay.
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
    AccessFs, BitFlags, LandlockStatus, PathBeneath, PathFd, PathFdError, Ruleset, RulesetAttr,
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

const USAGE: &str =
    "usage: shoal-landlock [--scopes=signal,abstract-unix-socket|none] -- PROGRAM [ARG...]";

/// Which of the ruleset's scopes (ABI 6) to apply. A task's entry point gets both; a command
/// exec'd into a task only those its host namespaces call for (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scopes {
    pub signal: bool,
    pub abstract_unix_socket: bool,
}

impl Scopes {
    pub const ALL: Scopes = Scopes { signal: true, abstract_unix_socket: true };
    pub const NONE: Scopes = Scopes { signal: false, abstract_unix_socket: false };

    /// The helper's `--scopes=` argument for this set.
    pub fn to_arg(self) -> String {
        let names = self.names();
        format!("--scopes={}", if names.is_empty() { "none".to_string() } else { names.join(",") })
    }

    fn names(self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.signal {
            v.push("signal");
        }
        if self.abstract_unix_socket {
            v.push("abstract-unix-socket");
        }
        v
    }

    fn parse(list: &str) -> Result<Scopes, ArgsError> {
        let mut scopes = Scopes::NONE;
        for name in list.split(',').filter(|n| *n != "none") {
            match name {
                "signal" => scopes.signal = true,
                "abstract-unix-socket" => scopes.abstract_unix_socket = true,
                _ => return Err(ArgsError::UnknownScope(name.to_string())),
            }
        }
        Ok(scopes)
    }

    fn flags(self) -> BitFlags<Scope> {
        let mut flags = BitFlags::empty();
        if self.signal {
            flags |= Scope::Signal;
        }
        if self.abstract_unix_socket {
            flags |= Scope::AbstractUnixSocket;
        }
        flags
    }
}

/// The command line that runs `command` through the helper as a task's entry point (every
/// scope).
pub fn command_line(command: impl IntoIterator<Item = String>) -> Vec<String> {
    [PATH_IN_TASK.to_string(), "--".to_string()].into_iter().chain(command).collect()
}

/// The command line that runs `command` through the helper with only `scopes`: for commands
/// exec'd into a running task.
pub fn exec_command_line(scopes: Scopes, command: impl IntoIterator<Item = String>) -> Vec<String> {
    [PATH_IN_TASK.to_string(), scopes.to_arg(), "--".to_string()]
        .into_iter()
        .chain(command)
        .collect()
}

/// What the helper was asked to do: apply these scopes, then run this command.
#[derive(Debug, PartialEq, Eq)]
pub struct Invocation {
    pub scopes: Scopes,
    pub command: Vec<OsString>,
}

/// Why the helper's arguments were refused; each message ends with the usage line.
#[derive(Debug, PartialEq, Eq)]
pub enum ArgsError {
    /// `--scopes=` named a scope this helper does not know.
    UnknownScope(String),
    /// No `-- PROGRAM` (or something else before it).
    Usage,
}

impl std::fmt::Display for ArgsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArgsError::UnknownScope(name) => write!(f, "unknown scope {name:?}; {USAGE}"),
            ArgsError::Usage => f.write_str(USAGE),
        }
    }
}

impl std::error::Error for ArgsError {}

/// The helper's arguments (without its own name): `[--scopes=LIST] -- PROGRAM [ARG...]`;
/// without `--scopes`, every scope applies.
pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Invocation, ArgsError> {
    let mut args = args.into_iter().peekable();
    let mut scopes = Scopes::ALL;
    if let Some(list) = args.peek().and_then(|a| a.to_str()?.strip_prefix("--scopes=")) {
        scopes = Scopes::parse(list)?;
        args.next();
    }
    let command: Vec<OsString> = match args.next() {
        Some(sep) if sep == "--" => args.collect(),
        _ => Vec::new(),
    };
    if command.is_empty() {
        return Err(ArgsError::Usage);
    }
    Ok(Invocation { scopes, command })
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

/// Confines the calling thread, and everything it execs or forks from now on, with the ruleset
/// and `scopes`. Sets no-new-privileges first, as Landlock requires of an unprivileged caller
/// (the agent only starts the helper in tasks that have it on already).
pub fn confine(scopes: Scopes) -> Result<(), ConfineError> {
    let devices = AccessFs::MakeChar | AccessFs::MakeBlock;
    let dev = PathFd::new(DEVICE_DIR).map_err(ConfineError::DeviceDir)?;
    let mut ruleset = Ruleset::default().handle_access(devices);
    if !scopes.flags().is_empty() {
        ruleset = ruleset.and_then(|r| r.scope(scopes.flags()));
    }
    let status = ruleset
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

    fn command(args: &[&str]) -> Vec<OsString> {
        parse_args(os(args)).unwrap().command
    }

    #[test]
    fn the_command_follows_a_double_dash() {
        assert_eq!(command(&["--", "sh", "-c", "true"]), os(&["sh", "-c", "true"]));
        assert_eq!(command(&["--", "--"]), os(&["--"]));
        assert_eq!(command(&["--scopes=none", "--", "--scopes=x"]), os(&["--scopes=x"]));
        for bad in [&[][..], &["--"], &["sh"], &["-x", "--", "sh"], &["--scopes=none", "sh"]] {
            assert_eq!(parse_args(os(bad)), Err(ArgsError::Usage), "{bad:?}");
            assert!(ArgsError::Usage.to_string().starts_with("usage:"));
        }
    }

    #[test]
    fn scopes_are_all_unless_listed() {
        let scopes = |args: &[&str]| parse_args(os(args)).map(|i| i.scopes);
        assert_eq!(scopes(&["--", "sh"]), Ok(Scopes::ALL));
        assert_eq!(scopes(&["--scopes=none", "--", "sh"]), Ok(Scopes::NONE));
        let signal = Scopes { signal: true, abstract_unix_socket: false };
        assert_eq!(scopes(&["--scopes=signal", "--", "sh"]), Ok(signal));
        assert_eq!(scopes(&["--scopes=abstract-unix-socket,signal", "--", "sh"]), Ok(Scopes::ALL));
        let err = scopes(&["--scopes=ptrace", "--", "sh"]).unwrap_err().to_string();
        assert!(err.starts_with("unknown scope \"ptrace\"; usage:"), "{err}");
        for s in [Scopes::ALL, Scopes::NONE, signal] {
            assert_eq!(scopes(&[&s.to_arg(), "--", "sh"]), Ok(s), "{}", s.to_arg());
        }
    }

    #[test]
    fn command_lines_start_with_the_helper() {
        let line = command_line(["/bin/sh".to_string(), "-c".into(), "x".into()]);
        assert_eq!(line, [PATH_IN_TASK, "--", "/bin/sh", "-c", "x"]);
        let line = exec_command_line(Scopes::NONE, ["cat".to_string(), "/tmp/ok".into()]);
        assert_eq!(line, [PATH_IN_TASK, "--scopes=none", "--", "cat", "/tmp/ok"]);
    }

    #[test]
    fn the_summary_mentions_scopes_only_where_the_abi_has_them() {
        assert!(summary(6).contains("no signals to"));
        assert!(summary(5).contains("needs ABI v6"));
        assert!(summary(1).starts_with("device nodes only in /dev"));
    }
}
