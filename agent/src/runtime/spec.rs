//! What one task asks of the runtime: plain Rust, no IO. The daemon fills it from the task's
//! container spec and the image's config; `NodePolicy` decides whether the node allows it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::error::{Result, RuntimeError};

/// Where a task's root filesystem comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootfsSource {
    /// Image layers, topmost first, mounted read-only under a per-task overlay.
    Layers(Vec<PathBuf>),
    /// A prepared directory used as the rootfs as it is (tests and benchmarks).
    Dir(PathBuf),
}

/// Which seccomp filter a task runs under.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SeccompChoice {
    /// Shoal's built-in profile, equivalent in effect to Docker's default.
    #[default]
    Default,
    /// No filter at all (needs the node's permission).
    Unconfined,
    /// A Docker-format JSON profile read from this path.
    Profile(PathBuf),
}

/// The SELinux label a task asks for (applied only where the node has SELinux on).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SelinuxChoice {
    /// `container_t` with a category pair of its own (the default).
    #[default]
    Default,
    /// No label: the task runs in the runtime's own domain (needs the node's permission).
    Disable,
    /// Another type and/or level (needs the node's permission).
    Custom { kind: Option<String>, level: Option<String> },
}

impl SelinuxChoice {
    /// How the user wrote it, for refusals.
    pub fn option_name(&self) -> String {
        match self {
            SelinuxChoice::Default => "label=default".into(),
            SelinuxChoice::Disable => "label=disable".into(),
            SelinuxChoice::Custom { kind, level } => {
                let mut v = Vec::new();
                if let Some(t) = kind {
                    v.push(format!("label=type:{t}"));
                }
                if let Some(l) = level {
                    v.push(format!("label=level:{l}"));
                }
                v.join(", ")
            }
        }
    }
}

/// The AppArmor profile a task asks for (applied only where the node has AppArmor).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AppArmorChoice {
    /// The node's `shoal-default`.
    #[default]
    Default,
    /// None at all (needs the node's permission).
    Unconfined,
    /// Another profile loaded on the node (needs the node's permission).
    Profile(String),
}

impl AppArmorChoice {
    /// The profile's name as `--security-opt apparmor=` and `--task-allow-apparmor` spell it.
    pub fn name(&self) -> &str {
        match self {
            AppArmorChoice::Default => shoal_proto::spec::mac::APPARMOR_DEFAULT,
            AppArmorChoice::Unconfined => "unconfined",
            AppArmorChoice::Profile(p) => p,
        }
    }
}

/// A namespace a task may share with the host instead of getting its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostNamespace {
    Network,
    Pid,
    Ipc,
    Uts,
}

impl HostNamespace {
    /// The option's name as the user writes it.
    pub fn option_name(self) -> &'static str {
        match self {
            HostNamespace::Network => "network=host",
            HostNamespace::Pid => "pid=host",
            HostNamespace::Ipc => "ipc=host",
            HostNamespace::Uts => "uts=host",
        }
    }
}

/// cgroup limits; `None` means unlimited (pids always gets a limit).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// Memory limit in bytes (swap is limited to the same value).
    pub memory_bytes: Option<i64>,
    /// CPU limit in billionths of a CPU (Docker's NanoCPUs).
    pub nano_cpus: Option<u64>,
    /// Maximum number of processes; the runtime's default applies when `None`.
    pub pids: Option<i64>,
}

/// One POSIX resource limit, by Docker's name (`nofile`, `nproc`, `core`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ulimit {
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

/// The user a task's process runs as.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserSpec {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// Everything the runtime needs to run one task.
#[derive(Clone, Debug)]
pub struct TaskSpec {
    /// Task id; also the OCI container id (letters, digits, `-`, `_`, `.`).
    pub id: String,
    pub rootfs: RootfsSource,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: UserSpec,
    pub hostname: Option<String>,
    pub resources: Resources,
    pub read_only_rootfs: bool,
    /// Capabilities added to Docker's default set (`CAP_NET_ADMIN` or `NET_ADMIN`, or `ALL`).
    pub cap_add: Vec<String>,
    /// Capabilities removed from the set (`ALL` drops every one).
    pub cap_drop: Vec<String>,
    pub seccomp: SeccompChoice,
    /// Run with container root mapped to the node's unprivileged subordinate id range.
    pub userns_remap: bool,
    pub host_namespaces: Vec<HostNamespace>,
    pub sysctls: BTreeMap<String, String>,
    pub ulimits: Vec<Ulimit>,
    /// Signal sent first on stop (default SIGTERM).
    pub stop_signal: i32,
    /// How long to wait after the stop signal before SIGKILL (default 10 s).
    pub stop_grace: Duration,
    /// Run a minimal init (tini) as pid 1 that reaps zombies and forwards signals.
    pub init: bool,
    /// Let the task's processes gain privileges through setuid binaries (no-new-privileges
    /// off; needs the node's permission).
    pub allow_new_privileges: bool,
    /// Secrets and configs, from memory onto a per-task read-only tmpfs.
    pub files: Vec<super::SecretFile>,
    /// Start through the Landlock helper where the kernel has Landlock (the default); off
    /// needs the node's permission. Tasks with no-new-privileges off run without it.
    pub landlock: bool,
    /// A network namespace the node prepared (interfaces, addresses, routes) for the task to
    /// join; `None`: a fresh one with loopback only (or the host's, with `network=host`).
    pub netns: Option<PathBuf>,
    /// Files bound over paths of the task's root (`/etc/resolv.conf`, `/etc/hosts`,
    /// `/etc/hostname`): (path in the task, file on the node).
    pub etc_files: Vec<(String, PathBuf)>,
    /// Volumes, binds and tmpfs mounts the node has checked against its policy.
    pub mounts: Vec<TaskMount>,
    /// The SELinux label asked for (`--security-opt label=`).
    pub selinux: SelinuxChoice,
    /// The AppArmor profile asked for (`--security-opt apparmor=`).
    pub apparmor: AppArmorChoice,
}

/// One mount of a task, checked: a directory of the node (a volume's or an allowed bind
/// source) or a fresh tmpfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskMount {
    pub target: String,
    pub read_only: bool,
    pub kind: TaskMountKind,
    /// How the source is labelled where SELinux labels tasks (named volumes only).
    pub relabel: Relabel,
}

/// Whether a bound directory takes the task's SELinux file label before the task starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Relabel {
    /// Left as it is (bind mounts: the host's files keep the host's labels).
    #[default]
    Keep,
    /// The task's own file label, categories included: no other task can read it.
    Private,
    /// The file type at `s0`, which every task can read: a volume several tasks mount.
    Shared,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskMountKind {
    /// Bound from this node path, `nosuid,nodev`, with this propagation (`rprivate`...).
    Bind { source: PathBuf, propagation: String },
    /// A tmpfs of at most this many bytes (0: the kernel's default).
    /// `mode`: the tmpfs root's mode bits (1777 unless the mount says).
    Tmpfs { size: u64, mode: u32 },
}

impl TaskSpec {
    /// A task with Docker's defaults running `args` in `rootfs`.
    pub fn new(id: impl Into<String>, rootfs: RootfsSource, args: Vec<String>) -> TaskSpec {
        TaskSpec {
            id: id.into(),
            rootfs,
            args,
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            workdir: None,
            user: UserSpec::default(),
            hostname: None,
            resources: Resources::default(),
            read_only_rootfs: false,
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            seccomp: SeccompChoice::Default,
            userns_remap: false,
            host_namespaces: Vec::new(),
            sysctls: BTreeMap::new(),
            ulimits: Vec::new(),
            stop_signal: libc_sigterm(),
            stop_grace: Duration::from_secs(10),
            init: false,
            allow_new_privileges: false,
            files: Vec::new(),
            landlock: true,
            netns: None,
            etc_files: Vec::new(),
            mounts: Vec::new(),
            selinux: SelinuxChoice::Default,
            apparmor: AppArmorChoice::Default,
        }
    }

    /// Checks what can be checked without the node: id, args, sysctls, ulimits.
    pub fn validate(&self) -> Result<()> {
        validate_id(&self.id)?;
        if self.args.is_empty() {
            return Err(RuntimeError::InvalidSpec(
                "no command: set args or the image's CMD".into(),
            ));
        }
        for key in self.sysctls.keys() {
            validate_sysctl(key, &self.host_namespaces)?;
        }
        for u in &self.ulimits {
            super::oci::rlimit_type(&u.name)?;
            if u.soft > u.hard {
                return Err(RuntimeError::InvalidSpec(format!(
                    "ulimit {}: soft limit {} is above hard limit {}",
                    u.name, u.soft, u.hard
                )));
            }
        }
        Ok(())
    }
}

fn libc_sigterm() -> i32 {
    rustix::process::Signal::TERM.as_raw()
}

/// A container id runc accepts and that is safe as a path component.
pub fn validate_id(id: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if id.is_empty() || id.len() > 128 || id.starts_with('.') || !id.chars().all(ok_char) {
        return Err(RuntimeError::InvalidSpec(format!(
            "task id {id:?} must be 1-128 letters, digits, '-', '_' or '.', not starting with '.'"
        )));
    }
    Ok(())
}

/// Only namespaced sysctls can be set, and `net.*` only with a private network namespace.
fn validate_sysctl(key: &str, host_ns: &[HostNamespace]) -> Result<()> {
    const IPC: [&str; 7] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
    ];
    let (allowed, shared) = if key.starts_with("net.") {
        (true, host_ns.contains(&HostNamespace::Network))
    } else if IPC.contains(&key) || key == "kernel.shm_rmid_forced" || key.starts_with("fs.mqueue.")
    {
        (true, host_ns.contains(&HostNamespace::Ipc))
    } else {
        (false, false)
    };
    if !allowed {
        return Err(RuntimeError::InvalidSpec(format!(
            "sysctl {key} is not namespaced; only net.*, kernel.shm*, kernel.msg*, kernel.sem and fs.mqueue.* can be set per task"
        )));
    }
    if shared {
        return Err(RuntimeError::InvalidSpec(format!(
            "sysctl {key} would change the host because the task shares the host's namespace"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TaskSpec {
        TaskSpec::new("t1", RootfsSource::Dir("/tmp".into()), vec!["/bin/true".into()])
    }

    #[test]
    fn ids_are_checked() {
        assert!(validate_id("abc-1_2.3").is_ok());
        for bad in ["", ".x", "a/b", "a b", "../x"] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sysctls_must_be_namespaced() {
        let mut s = spec();
        s.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
        assert!(s.validate().is_ok());
        s.sysctls.insert("kernel.panic".into(), "1".into());
        assert!(s.validate().unwrap_err().to_string().contains("kernel.panic"));
    }

    #[test]
    fn net_sysctl_refused_with_host_network() {
        let mut s = spec();
        s.host_namespaces.push(HostNamespace::Network);
        s.sysctls.insert("net.core.somaxconn".into(), "1024".into());
        assert!(s.validate().unwrap_err().to_string().contains("host"));
    }

    #[test]
    fn ulimits_are_checked() {
        let mut s = spec();
        s.ulimits.push(Ulimit { name: "nofile".into(), soft: 10, hard: 20 });
        assert!(s.validate().is_ok());
        s.ulimits.push(Ulimit { name: "bogus".into(), soft: 1, hard: 1 });
        assert!(s.validate().is_err());
    }
}
