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

/// A custom profile judged against the default for a task with Docker's capabilities.
fn weaker(json: &str) -> Option<String> {
    let caps = default_caps();
    let t = Target { caps: &caps, arch: "amd64", kernel: (6, 1) };
    let custom: DockerProfile = serde_json::from_str(json).unwrap();
    weaker_than(&resolve(&custom, &t), &amd64(&caps))
}

#[test]
fn the_default_is_as_strict_as_itself() {
    let json = serde_json::to_string(&builtin_profile()).unwrap();
    assert_eq!(weaker(&json), None);
}

#[test]
fn a_strict_subset_of_the_default_is_as_strict() {
    let subset = r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
        {"names":["read","write","exit_group"],"action":"SCMP_ACT_ALLOW"},
        {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]},
        {"names":["unshare","keyctl"],"action":"SCMP_ACT_KILL_PROCESS"}]}"#;
    assert_eq!(weaker(subset), None);
    // an argument condition on a call the default allows outright only narrows it
    let narrowed = r#"{"defaultAction":"SCMP_ACT_KILL","syscalls":[
        {"names":["socket"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":40,"op":"SCMP_CMP_NE"}]},
        {"names":["read"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":3,"op":"SCMP_CMP_EQ"}]}]}"#;
    assert_eq!(weaker(narrowed), None);
}

#[test]
fn anything_the_default_refuses_makes_a_profile_weaker() {
    let cases = [
        (r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#, "SCMP_ACT_ALLOW"),
        (r#"{"defaultAction":"SCMP_ACT_LOG"}"#, "SCMP_ACT_LOG"),
        (r#"{"defaultAction":"SCMP_ACT_TRACE"}"#, "SCMP_ACT_TRACE"),
        (
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read","keyctl"],"action":"SCMP_ACT_ALLOW"}]}"#,
            "keyctl",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["io_uring_setup"],"action":"SCMP_ACT_LOG"}]}"#,
            "io_uring_setup",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["perf_event_open"],"action":"SCMP_ACT_NOTIFY"}]}"#,
            "perf_event_open",
        ),
        // the default allows clone only without namespace flags for this task
        (
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["clone"],"action":"SCMP_ACT_ALLOW"}]}"#,
            "clone",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":4194304,"op":"SCMP_CMP_EQ"}]}]}"#,
            "personality",
        ),
        // a capability condition the task meets is resolved away: unshare is allowed outright
        (
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["unshare"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_CHOWN"]}}]}"#,
            "unshare",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ERRNO","archMap":[{"architecture":"SCMP_ARCH_X86_64","subArchitectures":["SCMP_ARCH_MIPS"]}]}"#,
            "architecture",
        ),
    ];
    for (json, named) in cases {
        let why = weaker(json).unwrap_or_else(|| panic!("{json} passed as strict"));
        assert!(why.contains(named), "{json}: {why}");
    }
}

#[test]
fn rules_that_do_not_apply_to_the_task_do_not_count() {
    // unshare for holders of CAP_SYS_ADMIN only: this task holds none, so the rule is left out
    let json = r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["unshare"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_SYS_ADMIN"]}}]}"#;
    assert_eq!(weaker(json), None);
}
