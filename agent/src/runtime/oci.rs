//! Builds a task's OCI `config.json` from its `TaskSpec`: namespaces, capabilities, seccomp,
//! masked and read-only paths, cgroup limits, mounts, and the entry point (the Landlock helper
//! and the init, where they apply). Pure: it reads no files and runs nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxIdMappingBuilder,
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, LinuxSeccomp, Mount, MountBuilder, PosixRlimit,
    PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};

use super::caps;
use super::error::{Result, RuntimeError};
use super::policy::IdRange;
use super::spec::{HostNamespace, TaskSpec};

/// Paths hidden from every task (Docker's list plus powercap, which leaks energy counters).
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths every task sees read-only.
pub const READONLY_PATHS: [&str; 5] =
    ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Where the init binary appears inside a task that asked for one.
pub const INIT_PATH: &str = "/sbin/shoal-init";

/// Where the Landlock helper appears inside a task it applies to (in the task's own /dev).
pub const LANDLOCK_PATH: &str = shoal_landlock::PATH_IN_TASK;

/// Node-side inputs to the config that the task spec does not carry.
#[derive(Clone, Debug)]
pub struct ConfigInputs {
    /// cgroup path relative to each hierarchy's root, e.g. `/shoal/<id>`.
    pub cgroups_path: PathBuf,
    pub default_pids_limit: i64,
    /// The resolved seccomp filter, `None` for unconfined.
    pub seccomp: Option<LinuxSeccomp>,
    /// uid and gid ranges when the task is remapped.
    pub userns: Option<(IdRange, IdRange)>,
    /// Host path of the init binary, bound in when the task asked for an init.
    pub init_binary: Option<PathBuf>,
    /// Host path of the Landlock helper, bound in and made the entry point when Landlock
    /// applies to the task.
    pub landlock_helper: Option<PathBuf>,
    /// SELinux labels of the task's processes and files (only where SELinux is on).
    pub labels: Option<super::mac::TaskLabels>,
    /// AppArmor profile of the task's processes (only where the host has AppArmor).
    pub apparmor_profile: Option<String>,
    /// Host directory (a tmpfs) holding the task's secret and config files, `f0`, `f1`, …
    pub files_dir: PathBuf,
}

/// The complete OCI config for `spec`; the bundle's rootfs is the `rootfs` directory.
pub fn build(spec: &TaskSpec, inputs: &ConfigInputs) -> Result<Spec> {
    let caps = caps::effective(&spec.cap_add, &spec.cap_drop)?;
    let mut process = ProcessBuilder::default()
        .terminal(false)
        .args(process_args(spec, inputs))
        .env(spec.env.clone())
        .cwd(spec.workdir.clone().unwrap_or_else(|| "/".into()))
        .user(
            UserBuilder::default()
                .uid(spec.user.uid)
                .gid(spec.user.gid)
                .additional_gids(spec.user.additional_gids.clone())
                .build()?,
        )
        .capabilities(caps::to_oci(&caps)?)
        .rlimits(rlimits(spec)?)
        .no_new_privileges(!spec.allow_new_privileges)
        .build()?;
    process.set_selinux_label(inputs.labels.as_ref().map(|l| l.process.clone()));
    process.set_apparmor_profile(inputs.apparmor_profile.clone());
    let root = RootBuilder::default().path("rootfs").readonly(spec.read_only_rootfs).build()?;
    Ok(SpecBuilder::default()
        .version("1.0.2")
        .root(root)
        .process(process)
        .hostname(hostname(spec))
        .mounts(mounts(spec, inputs)?)
        .linux(linux(spec, inputs)?)
        .build()?)
}

/// The task's command, behind the init and then the Landlock helper where they apply. The
/// helper comes first so the init runs inside the task's Landlock domain too; both exec, never
/// fork, so the init is still pid 1.
fn process_args(spec: &TaskSpec, inputs: &ConfigInputs) -> Vec<String> {
    let command = match (&inputs.init_binary, spec.init) {
        (Some(_), true) => [INIT_PATH.to_string(), "--".to_string()]
            .into_iter()
            .chain(spec.args.iter().cloned())
            .collect(),
        _ => spec.args.clone(),
    };
    match inputs.landlock_helper {
        Some(_) => shoal_landlock::command_line(command),
        None => command,
    }
}

/// How commands exec'd into a task (health checks) start, read from the task's config: through
/// the Landlock helper wherever it is bound in (the task started through it), with the scopes
/// of the host namespaces the task shares (a signal scope under `pid=host`, an abstract-socket
/// one under `network=host`; the module doc of `shoal_landlock` says why no more); `None`
/// where the task runs without Landlock.
pub fn exec_landlock(config: &Spec) -> Option<shoal_landlock::Scopes> {
    let mounts = config.mounts().as_deref().unwrap_or_default();
    if !mounts.iter().any(|m| m.destination() == Path::new(LANDLOCK_PATH)) {
        return None;
    }
    let namespaces = config.linux().as_ref().and_then(|l| l.namespaces().as_deref());
    let shares = |typ| !namespaces.unwrap_or_default().iter().any(|n| n.typ() == typ);
    Some(shoal_landlock::Scopes {
        signal: shares(LinuxNamespaceType::Pid),
        abstract_unix_socket: shares(LinuxNamespaceType::Network),
    })
}

fn hostname(spec: &TaskSpec) -> String {
    spec.hostname.clone().unwrap_or_else(|| spec.id.chars().take(12).collect())
}

/// The OCI rlimit type for Docker's ulimit name (`nofile` → `RLIMIT_NOFILE`).
pub fn rlimit_type(name: &str) -> Result<PosixRlimitType> {
    let full = format!("RLIMIT_{}", name.to_ascii_uppercase());
    serde_json::from_value(serde_json::Value::String(full)).map_err(|_| {
        RuntimeError::InvalidSpec(format!("unknown ulimit {name:?}; use e.g. nofile, nproc, core"))
    })
}

fn rlimits(spec: &TaskSpec) -> Result<Vec<PosixRlimit>> {
    // Limits not given are inherited from the agent, as Docker's containers inherit dockerd's.
    let mut out: Vec<PosixRlimit> = Vec::new();
    for u in &spec.ulimits {
        let typ = rlimit_type(&u.name)?;
        out.push(PosixRlimitBuilder::default().typ(typ).soft(u.soft).hard(u.hard).build()?);
    }
    Ok(out)
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()?)
}

fn mounts(spec: &TaskSpec, inputs: &ConfigInputs) -> Result<Vec<Mount>> {
    let host_net = spec.host_namespaces.contains(&HostNamespace::Network);
    let mut v = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"])?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"])?,
    ];
    if (host_net || spec.netns.is_some()) && inputs.userns.is_some() {
        // sysfs cannot be mounted from a user namespace that does not own the network namespace.
        v.push(mount("/sys", "none", "/sys", &["rbind", "nosuid", "noexec", "nodev", "ro"])?);
    } else {
        v.push(mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"])?);
        v.push(mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        )?);
    }
    if let (Some(init), true) = (&inputs.init_binary, spec.init) {
        let src = init.to_string_lossy();
        v.push(mount(INIT_PATH, "bind", &src, &["bind", "ro", "nosuid", "nodev"])?);
    }
    if let Some(helper) = &inputs.landlock_helper {
        let src = helper.to_string_lossy();
        v.push(mount(LANDLOCK_PATH, "bind", &src, &["bind", "ro", "nosuid", "nodev"])?);
    }
    for (target, source) in &spec.etc_files {
        let src = source.to_string_lossy();
        v.push(mount(target, "bind", &src, &["bind", "nosuid", "nodev", "noexec"])?);
    }
    for m in &spec.mounts {
        let ro = if m.read_only { "ro" } else { "rw" };
        match &m.kind {
            super::TaskMountKind::Bind { source, propagation } => {
                let opts = ["rbind", ro, "nosuid", "nodev", propagation.as_str()];
                v.push(mount(&m.target, "bind", &source.to_string_lossy(), &opts)?);
            }
            super::TaskMountKind::Tmpfs { size, mode } => {
                let size = format!("size={size}");
                let mode = format!("mode={mode:o}");
                let mut opts = vec![ro, "nosuid", "nodev", "noexec", mode.as_str()];
                if !size.ends_with("=0") {
                    opts.push(&size);
                }
                v.push(mount(&m.target, "tmpfs", "tmpfs", &opts)?);
            }
        }
    }
    for (i, f) in spec.files.iter().enumerate() {
        let src = inputs.files_dir.join(format!("f{i}"));
        let opts = ["bind", "ro", "nosuid", "nodev", "noexec"];
        v.push(mount(&f.target, "bind", &src.to_string_lossy(), &opts)?);
    }
    Ok(v)
}

fn namespaces(spec: &TaskSpec, userns: bool) -> Result<Vec<LinuxNamespace>> {
    let wanted = [
        (LinuxNamespaceType::Pid, Some(HostNamespace::Pid)),
        (LinuxNamespaceType::Network, Some(HostNamespace::Network)),
        (LinuxNamespaceType::Ipc, Some(HostNamespace::Ipc)),
        (LinuxNamespaceType::Uts, Some(HostNamespace::Uts)),
        (LinuxNamespaceType::Mount, None),
    ];
    let mut v: Vec<LinuxNamespace> = Vec::new();
    for (typ, host) in wanted {
        if host.is_some_and(|h| spec.host_namespaces.contains(&h)) {
            continue;
        }
        let mut ns = LinuxNamespaceBuilder::default().typ(typ);
        if let (LinuxNamespaceType::Network, Some(path)) = (typ, &spec.netns) {
            ns = ns.path(path.clone());
        }
        v.push(ns.build()?);
    }
    if userns {
        v.push(LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::User).build()?);
    }
    Ok(v)
}

fn resources(spec: &TaskSpec, inputs: &ConfigInputs) -> Result<oci_spec::runtime::LinuxResources> {
    let deny_all = LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build()?;
    let pids = spec.resources.pids.unwrap_or(inputs.default_pids_limit);
    let mut b = LinuxResourcesBuilder::default()
        .devices(vec![deny_all])
        .pids(LinuxPidsBuilder::default().limit(pids).build()?);
    if let Some(limit) = spec.resources.memory_bytes {
        b = b.memory(LinuxMemoryBuilder::default().limit(limit).swap(limit).build()?);
    }
    if let Some(nano) = spec.resources.nano_cpus {
        const PERIOD: u64 = 100_000;
        let quota = (nano.saturating_mul(PERIOD) / 1_000_000_000).max(1000) as i64;
        b = b.cpu(LinuxCpuBuilder::default().period(PERIOD).quota(quota).build()?);
    }
    Ok(b.build()?)
}

fn linux(spec: &TaskSpec, inputs: &ConfigInputs) -> Result<oci_spec::runtime::Linux> {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let sysctl: HashMap<String, String> =
        spec.sysctls.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut b = LinuxBuilder::default()
        .namespaces(namespaces(spec, inputs.userns.is_some())?)
        .resources(resources(spec, inputs)?)
        .cgroups_path(inputs.cgroups_path.clone())
        .masked_paths(strings(&MASKED_PATHS))
        .readonly_paths(strings(&READONLY_PATHS))
        .sysctl(sysctl);
    if let Some(filter) = &inputs.seccomp {
        b = b.seccomp(filter.clone());
    }
    if let Some(labels) = &inputs.labels {
        b = b.mount_label(labels.file.clone());
    }
    if let Some((uids, gids)) = inputs.userns {
        b = b.uid_mappings(vec![id_map(uids)?]).gid_mappings(vec![id_map(gids)?]);
    }
    Ok(b.build()?)
}

fn id_map(r: IdRange) -> Result<oci_spec::runtime::LinuxIdMapping> {
    Ok(LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(r.host_start)
        .size(r.size)
        .build()?)
}

/// Writes `spec` as `config.json` in `bundle`, 0600: it holds the task's environment.
pub fn save(spec: &Spec, bundle: &Path) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = bundle.join("config.json");
    let fail = |e: std::io::Error| RuntimeError::Config(format!("writing {path:?}: {e}"));
    let json = serde_json::to_vec(spec).map_err(|e| fail(e.into()))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(fail)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    file.write_all(&json).map_err(fail)
}

#[cfg(test)]
mod tests;
