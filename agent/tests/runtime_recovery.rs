//! An agent restart: the new runtime finds the containers of the old one, stops them and leaves
//! no runc state, mounts, cgroups or bundle directories behind. Needs root.

mod common;

use std::path::Path;

use common::*;
use shoal_agent::runtime::{rootfs, Runtime};

/// Starts tasks from a runtime living on its own tokio runtime, then drops both, as a crashed
/// agent would leave them. Returns the ids and the running task's pid.
fn leave_tasks_behind(dir: &Path, rootfs: &Path) -> (String, String, i32) {
    let (dir, rootfs) = (dir.to_path_buf(), rootfs.to_path_buf());
    std::thread::spawn(move || {
        let tokio = tokio::runtime::Runtime::new().unwrap();
        tokio.block_on(async {
            let rt = new_test_runtime(&dir);
            let running = task_id("left-running");
            rt.create(sh_task(&running, &rootfs, "sleep 1000")).await.unwrap();
            rt.start(&running).await.unwrap();
            let created = task_id("left-created");
            rt.create(sh_task(&created, &rootfs, "true")).await.unwrap();
            let pid = rt.runc().state(&running).await.unwrap().unwrap().pid;
            (running, created, pid)
        })
    })
    .join()
    .unwrap()
}

#[tokio::test]
async fn restart_cleans_up_the_previous_agents_containers() {
    if !have_root("restart_cleanup") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs_dir = busybox_rootfs(dir.path());
    let (running, created, pid) = leave_tasks_behind(dir.path(), &rootfs_dir);
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "the container outlives its agent");

    let rt = new_test_runtime(dir.path());
    let rec = rt.recover().await.unwrap();
    let mut want = vec![running.clone(), created.clone()];
    want.sort();
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    // A created, never started task has only a bundle: nothing to kill.
    assert_eq!(rec.killed, vec![running.clone()]);
    assert_eq!(sorted(rec.removed.clone()), want);

    for id in [&running, &created] {
        assert!(rt.runc().state(id).await.unwrap().is_none(), "runc state of {id} left");
        assert!(!rt.bundle_dir(id).exists(), "bundle of {id} left");
        assert!(!rootfs::is_mounted(&rt.bundle_dir(id).join("rootfs")), "rootfs of {id} mounted");
        assert!(
            rt.cgroup_layout().leftovers(&rt.cgroup_path(id)).is_empty(),
            "cgroups of {id} left"
        );
    }
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the old container process is gone");
    assert_eq!(rt.recover().await.unwrap(), Default::default(), "a second pass finds nothing");
}

#[tokio::test]
async fn recovery_leaves_this_runtimes_own_tasks_alone() {
    if !have_root("recovery_own_tasks") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs_dir = busybox_rootfs(dir.path());
    let rt = new_test_runtime(dir.path());
    let id = task_id("mine");
    rt.create(sh_task(&id, &rootfs_dir, "sleep 1000")).await.unwrap();
    rt.start(&id).await.unwrap();
    assert!(rt.recover().await.unwrap().removed.is_empty());
    assert_eq!(rt.runc().state(&id).await.unwrap().unwrap().status, "running");
    rt.delete(&id).await.unwrap();
}
