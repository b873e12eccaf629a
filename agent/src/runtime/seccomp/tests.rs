use std::collections::BTreeSet;
use std::path::Path;

use super::*;
use crate::runtime::caps;

fn amd64(caps: &BTreeSet<&'static str>) -> LinuxSeccomp {
    resolve(&builtin_profile(), &Target { caps, arch: "amd64", kernel: (6, 1) })
}

fn default_caps() -> BTreeSet<&'static str> {
    caps::effective(&[], &[]).unwrap()
}

#[test]
fn ordinary_calls_allowed_dangerous_denied_with_eperm() {
    let f = amd64(&default_caps());
    for name in ["read", "openat", "execve", "arch_prctl", "chroot", "ptrace"] {
        assert_eq!(decide(&f, name, [0; 6]), Decision::Allow, "{name}");
    }
    for name in
        ["mount", "unshare", "setns", "keyctl", "init_module", "reboot", "kexec_load", "bpf"]
    {
        assert_eq!(decide(&f, name, [0; 6]), Decision::Errno(1), "{name}");
    }
}

#[test]
fn clone_with_namespace_flags_needs_sys_admin() {
    let f = amd64(&default_caps());
    assert_eq!(decide(&f, "clone", [0x11, 0, 0, 0, 0, 0]), Decision::Allow);
    assert_eq!(decide(&f, "clone", [0x2000_0000, 0, 0, 0, 0, 0]), Decision::Errno(1));
    assert_eq!(decide(&f, "clone3", [0; 6]), Decision::Errno(38));
    let admin = caps::effective(&["SYS_ADMIN".into()], &[]).unwrap();
    let f = amd64(&admin);
    assert_eq!(decide(&f, "clone", [0x2000_0000, 0, 0, 0, 0, 0]), Decision::Allow);
    assert_eq!(decide(&f, "mount", [0; 6]), Decision::Allow);
}

#[test]
fn personality_only_for_known_domains() {
    let f = amd64(&default_caps());
    assert_eq!(decide(&f, "personality", [0x8, 0, 0, 0, 0, 0]), Decision::Allow);
    assert_eq!(decide(&f, "personality", [0x0040_0000, 0, 0, 0, 0, 0]), Decision::Errno(1));
}

#[test]
fn arch_rules_follow_the_target() {
    let caps = default_caps();
    let arm = resolve(&builtin_profile(), &Target { caps: &caps, arch: "arm64", kernel: (6, 1) });
    assert_eq!(decide(&arm, "arch_prctl", [0; 6]), Decision::Errno(1));
    assert_eq!(decide(&arm, "set_tls", [0; 6]), Decision::Allow);
    assert_eq!(arm.architectures().as_ref().unwrap(), &[Arch::ScmpArchAarch64, Arch::ScmpArchArm]);
}

#[test]
fn profile_round_trips_through_docker_json() {
    let json = serde_json::to_string(&builtin_profile()).unwrap();
    let back: DockerProfile = serde_json::from_str(&json).unwrap();
    let caps = default_caps();
    let t = Target { caps: &caps, arch: "amd64", kernel: (6, 1) };
    assert_eq!(resolve(&back, &t), resolve(&builtin_profile(), &t));
}

/// Calls on which our profile and containers-common's must agree for a default task.
pub const COMPARED: &[&str] = &[
    "read",
    "write",
    "openat",
    "execve",
    "fork",
    "vfork",
    "socketpair",
    "chroot",
    "arch_prctl",
    "modify_ldt",
    "prctl",
    "seccomp",
    "name_to_handle_at",
    "open_by_handle_at",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "bpf",
    "perf_event_open",
    "acct",
    "swapon",
    "swapoff",
    "iopl",
    "ioperm",
    "settimeofday",
    "clock_settime",
    "vhangup",
    "quotactl",
    "lookup_dcookie",
    "sethostname",
    "setdomainname",
    "fanotify_init",
    "kcmp",
    "process_madvise",
    "userfaultfd",
    "nfsservctl",
    "uselib",
    "ustat",
    "sysfs",
    "vm86",
    "ptrace",
    "landlock_create_ruleset",
    "memfd_create",
    "pidfd_open",
    "io_setup",
    "sched_setattr",
];

/// Where Debian's containers-common profile is knowingly more permissive than Docker's (it
/// relies on capabilities alone), or stricter; the conformance test checks these are blocked
/// in effect under both.
pub const KNOWN_DIFFERENCES: &[&str] = &[
    "keyctl",
    "mount",
    "umount2",
    "unshare",
    "setns",
    "pivot_root",
    "reboot",
    "syslog",
    "clone3",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "mbind",
    "set_mempolicy",
    "get_mempolicy",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "io_pgetevents",
    "vmsplice",
];

pub const CONTAINERS_COMMON: &str = "/usr/share/containers/seccomp.json";

#[test]
fn agrees_with_containers_common_profile() {
    let path = Path::new(CONTAINERS_COMMON);
    if !path.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{CONTAINERS_COMMON} missing: apt-get install golang-github-containers-common"
        );
        eprintln!("notice: {CONTAINERS_COMMON} missing; comparison skipped");
        return;
    }
    let caps = default_caps();
    let t = Target { caps: &caps, arch: "amd64", kernel: running_kernel() };
    let theirs = resolve(&load_profile(path).unwrap(), &t);
    let ours = resolve(&builtin_profile(), &t);
    let mut diff = Vec::new();
    for name in COMPARED {
        let (a, b) = (decide(&ours, name, [0; 6]), decide(&theirs, name, [0; 6]));
        if a.allowed() != b.allowed() {
            diff.push(format!("{name}: ours {a:?}, containers-common {b:?}"));
        }
    }
    assert!(diff.is_empty(), "profiles disagree:\n{}", diff.join("\n"));
    // and the difference list is honest: each really differs
    for name in KNOWN_DIFFERENCES {
        let (a, b) = (decide(&ours, name, [0; 6]), decide(&theirs, name, [0; 6]));
        assert_ne!(a.allowed(), b.allowed(), "{name} no longer differs; move it to COMPARED");
    }
}
