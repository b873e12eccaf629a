//! An agent restart: the new runtime finds the containers of the old one, adopts a running one
//! (its output keeps flowing) or stops them and leaves no runc state, mounts, cgroups or bundle
//! directories behind. Needs root.

mod common;

use std::path::Path;
use std::time::Duration;

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

#[tokio::test]
async fn a_restarted_agent_adopts_a_running_container_with_its_output() {
    if !have_root("adopt") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs_dir = busybox_rootfs(dir.path());
    let script =
        "i=0; while [ ! -e /tmp/stop ]; do echo tick $i; i=$((i+1)); sleep 0.1; done; exit 7";
    let (id, pid) = {
        let (dir, rootfs) = (dir.path().to_path_buf(), rootfs_dir.clone());
        std::thread::spawn(move || {
            let tokio = tokio::runtime::Runtime::new().unwrap();
            tokio.block_on(async {
                let rt = new_test_runtime(&dir);
                let id = task_id("adopted");
                rt.create(sh_task(&id, &rootfs, script)).await.unwrap();
                rt.start(&id).await.unwrap();
                let pid = rt.runc().state(&id).await.unwrap().unwrap().pid;
                (id, pid)
            })
        })
        .join()
        .unwrap()
    };

    let rt = new_test_runtime(dir.path());
    assert_eq!(rt.leftovers().await.unwrap(), vec![id.clone()]);
    rt.adopt(&id, 15, Duration::from_secs(2)).await.unwrap();
    assert!(rt.leftovers().await.unwrap().is_empty(), "an adopted task is held");
    assert_eq!(rt.runc().state(&id).await.unwrap().unwrap().pid, pid, "the same process");
    let (out, _) = rt.log_paths(&id);
    let ticks = || std::fs::read_to_string(&out).unwrap_or_default().lines().count();
    let before = ticks();
    assert!(
        eventually(Duration::from_secs(5), || ticks() > before + 3).await,
        "output flows again"
    );

    // Commands exec'd into it keep its Landlock ruleset, read back from its config.
    let mknod = ["/bin/sh", "-c", "busybox mknod /tmp/node c 1 3"].map(String::from);
    let landlock = shoal_agent::runtime::mac::MacSupport::detect().landlock_abi.is_some();
    let code = rt.exec(&id, &mknod, Duration::from_secs(5)).await.unwrap().code;
    assert_eq!(code, if landlock { 1 } else { 0 }, "mknod in /tmp from an exec'd command");
    let stop = vec!["/bin/sh".to_string(), "-c".to_string(), "touch /tmp/stop".to_string()];
    assert_eq!(rt.exec(&id, &stop, Duration::from_secs(5)).await.unwrap().code, 0);
    let exit = tokio::time::timeout(Duration::from_secs(5), rt.wait(&id)).await.unwrap().unwrap();
    assert_eq!(exit.code, 7, "our own child: its exit status is collected");
    rt.delete(&id).await.unwrap();
    assert!(!rt.bundle_dir(&id).exists());
    assert!(rt.cgroup_layout().leftovers(&rt.cgroup_path(&id)).is_empty());
}
