//! Mandatory access control on hosts that enforce it. Each test runs only where its LSM is
//! enforcing and prints why it skipped elsewhere (this project's own CI hosts have neither
//! SELinux nor AppArmor active; on a Fedora or Ubuntu runner these run). Needs root.
//!
//! - SELinux: two tasks get `container_t` with different category pairs, and a task that is
//!   shown the other's rootfs (bound into it) cannot read the files there, though it reads its
//!   own.
//! - AppArmor: a task runs under `shoal-default` in enforce mode (the kernel's own record of
//!   its confinement says so), and a write the profile denies fails (the runtime also mounts
//!   that file read-only: the profile is the second lock, the label the proof it is there).

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use shoal_agent::runtime::mac::Selinux;
use shoal_agent::runtime::{Relabel, RootfsSource, Runtime, TaskMount, TaskMountKind};

fn log(rt: &shoal_agent::runtime::OciRuntime, id: &str) -> String {
    std::fs::read_to_string(rt.log_paths(id).0).unwrap_or_default()
}

/// The SELinux context the task printed on the line starting `label=`.
fn printed_label(out: &str) -> Option<String> {
    out.lines().find_map(|l| l.strip_prefix("label=")).map(|l| l.trim_end_matches('\0').into())
}

#[tokio::test]
async fn selinux_tasks_get_their_own_categories_and_cannot_read_each_others_files() {
    let name = "selinux_tasks_get_their_own_categories_and_cannot_read_each_others_files";
    if !have_root(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rt = new_test_runtime_with(&dir.path().join("rt"), |cfg| {
        cfg.policy.allowed_bind_prefixes = vec![dir.path().to_path_buf()];
    });
    if rt.mac().selinux != Selinux::Enforcing {
        eprintln!("notice: {name} skipped: SELinux is not enforcing on this host");
        return;
    }
    let rootfs = busybox_rootfs(dir.path());
    let layers = RootfsSource::Layers(vec![rootfs.clone()]);
    let script = |who: &str| {
        format!(
            "echo {who}-private > /mine && echo label=$(cat /proc/self/attr/current) && \
             cat /mine && echo own-read; exec sleep 60"
        )
    };
    let a = task_id("mac-a");
    let mut spec = sh_task(&a, &rootfs, &script("a"));
    spec.rootfs = layers.clone();
    rt.create(spec).await.unwrap();
    rt.start(&a).await.unwrap();
    let read_a = || log(&rt, &a).contains("own-read");
    assert!(eventually(Duration::from_secs(10), read_a).await, "task a: {}", log(&rt, &a));

    // Task b sees task a's rootfs at /peer: a bind keeps a's file label.
    let b = task_id("mac-b");
    let mut spec = sh_task(
        &b,
        &rootfs,
        &format!(
            "{} ; cat /peer/mine && echo peer-read || echo peer-denied; exec sleep 60",
            script("b").trim_end_matches("; exec sleep 60")
        ),
    );
    spec.rootfs = layers;
    spec.mounts.push(TaskMount {
        target: "/peer".into(),
        read_only: true,
        kind: TaskMountKind::Bind {
            source: rt.bundle_dir(&a).join("rootfs"),
            propagation: "rprivate".into(),
        },
        relabel: Relabel::Keep,
    });
    rt.create(spec).await.unwrap();
    rt.start(&b).await.unwrap();
    let done = || {
        let out = log(&rt, &b);
        out.contains("peer-read") || out.contains("peer-denied")
    };
    assert!(eventually(Duration::from_secs(10), done).await, "task b: {}", log(&rt, &b));

    let (la, lb) = (printed_label(&log(&rt, &a)), printed_label(&log(&rt, &b)));
    let (la, lb) = (la.expect("task a printed its label"), lb.expect("task b printed its label"));
    for l in [&la, &lb] {
        assert!(l.starts_with("system_u:system_r:container_t:s0:c"), "{l}");
    }
    assert_ne!(la, lb, "two live tasks share a category pair");
    let out_b = log(&rt, &b);
    assert!(out_b.contains("own-read"), "task b could not read its own file: {out_b}");
    assert!(out_b.contains("peer-denied"), "task b read task a's file: {out_b}");
    let host_view = rt.bundle_dir(&a).join("rootfs/mine");
    assert_eq!(std::fs::read_to_string(&host_view).unwrap(), "a-private\n");

    for id in [&a, &b] {
        rt.delete(id).await.unwrap();
    }
    assert!(!Path::new(&rt.bundle_dir(&a)).exists());
}

#[tokio::test]
async fn apparmor_tasks_run_confined_by_shoal_default() {
    let name = "apparmor_tasks_run_confined_by_shoal_default";
    if !have_root(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rt = new_test_runtime_with(&dir.path().join("rt"), |_| {});
    if !rt.mac().layers().iter().any(|l| l == "apparmor") {
        eprintln!(
            "notice: {name} skipped: AppArmor is not enabled on this host ({})",
            rt.mac().describe()
        );
        return;
    }
    let rootfs = busybox_rootfs(dir.path());
    let id = task_id("mac-aa");
    let script = "echo label=$(cat /proc/self/attr/current); \
                  echo 1 > /proc/sysrq-trigger 2>/dev/null && echo sysrq-written || echo sysrq-denied; \
                  exec sleep 60";
    let mut spec = sh_task(&id, &rootfs, script);
    spec.rootfs = RootfsSource::Layers(vec![rootfs.clone()]);
    rt.create(spec).await.unwrap();
    rt.start(&id).await.unwrap();
    let done = || log(&rt, &id).contains("sysrq-");
    assert!(eventually(Duration::from_secs(10), done).await, "{}", log(&rt, &id));
    let out = log(&rt, &id);
    let label = printed_label(&out).unwrap_or_default();
    assert_eq!(label, "shoal-default (enforce)", "{out}");
    assert!(out.contains("sysrq-denied"), "{out}");
    rt.delete(&id).await.unwrap();
}
