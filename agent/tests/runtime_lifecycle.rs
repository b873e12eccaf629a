//! Real containers through runc: exit codes, logs, stop with grace, OOM kill, pids limit,
//! cleanup. Needs root (fails under CI without it).

mod common;

use std::time::Duration;

use common::*;
use shoal_agent::runtime::{Runtime, RuntimeError};

#[tokio::test]
async fn runs_a_task_and_captures_its_output_and_exit_code() {
    if !have_root("runs_a_task") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let rt = new_test_runtime(dir.path());
    let id = task_id("hello");
    rt.create(sh_task(&id, &rootfs, "echo hello; echo oops >&2; exit 3")).await.unwrap();
    rt.start(&id).await.unwrap();
    let status = rt.wait(&id).await.unwrap();
    assert_eq!((status.code, status.signal, status.oom_killed), (3, None, false));
    let (out, err) = rt.log_paths(&id);
    assert!(
        eventually(Duration::from_secs(5), || {
            std::fs::read_to_string(&out).is_ok_and(|s| s == "hello\n")
                && std::fs::read_to_string(&err).is_ok_and(|s| s == "oops\n")
        })
        .await
    );
    rt.delete(&id).await.unwrap();
    assert!(!rt.bundle_dir(&id).exists());
    assert!(rt.cgroup_layout().leftovers(&rt.cgroup_path(&id)).is_empty());
}

#[tokio::test]
async fn stop_sends_signal_then_kills_after_grace() {
    if !have_root("stop_grace") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let rt = new_test_runtime(dir.path());

    let polite = task_id("polite");
    let script = "trap 'exit 0' TERM; echo trapped; while true; do sleep 0.1; done";
    rt.create(sh_task(&polite, &rootfs, script)).await.unwrap();
    rt.start(&polite).await.unwrap();
    trap_set(&rt.log_paths(&polite).0).await;
    let started = std::time::Instant::now();
    let status = rt.stop(&polite).await.unwrap();
    assert_eq!(status.code, 0, "a task that handles SIGTERM exits cleanly");
    assert!(started.elapsed() < Duration::from_secs(2));
    rt.delete(&polite).await.unwrap();

    let stubborn = task_id("stubborn");
    let script = "trap '' TERM; echo trapped; while true; do sleep 0.1; done";
    let mut spec = sh_task(&stubborn, &rootfs, script);
    spec.stop_grace = Duration::from_millis(500);
    rt.create(spec).await.unwrap();
    rt.start(&stubborn).await.unwrap();
    trap_set(&rt.log_paths(&stubborn).0).await;
    let started = std::time::Instant::now();
    let status = rt.stop(&stubborn).await.unwrap();
    assert_eq!((status.code, status.signal), (137, Some(9)), "ignored SIGTERM, so SIGKILL");
    assert!(started.elapsed() >= Duration::from_millis(500));
    rt.delete(&stubborn).await.unwrap();
}

#[tokio::test]
async fn memory_limit_reports_oom_kill() {
    if !have_root("oom") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let rt = new_test_runtime(dir.path());
    let id = task_id("oom");
    // busybox dd with a 64 MiB block size allocates a 64 MiB buffer; the limit is 16 MiB.
    let mut spec = sh_task(&id, &rootfs, "dd if=/dev/zero of=/dev/null bs=64M count=4");
    spec.resources.memory_bytes = Some(16 << 20);
    rt.create(spec).await.unwrap();
    rt.start(&id).await.unwrap();
    let status = rt.wait(&id).await.unwrap();
    assert!(status.oom_killed, "expected an OOM kill, got {status:?}");
    assert!(!status.success());
    rt.delete(&id).await.unwrap();
}

#[tokio::test]
async fn pids_limit_is_always_set_and_enforced() {
    if !have_root("pids") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let rt = new_test_runtime(dir.path());

    let id = task_id("pids-default");
    rt.create(sh_task(&id, &rootfs, "sleep 100")).await.unwrap();
    rt.start(&id).await.unwrap();
    assert_eq!(rt.cgroup_layout().pids_max(&rt.cgroup_path(&id)), Some(1024));
    rt.delete(&id).await.unwrap();

    // runc's own init (a Go program, several threads) runs inside the limit before the task
    // starts, so a limit of a handful of pids can kill it first; 16 leaves it room and the
    // script still asks for twice that.
    let id = task_id("pids-small");
    let script = "i=0; while [ $i -lt 32 ]; do sleep 5 & i=$((i+1)); done; wait; echo done";
    let mut spec = sh_task(&id, &rootfs, script);
    spec.resources.pids = Some(16);
    rt.create(spec).await.unwrap();
    rt.start(&id).await.unwrap();
    let _ = rt.stop(&id).await;
    let (_, err) = rt.log_paths(&id);
    let stderr = std::fs::read_to_string(err).unwrap_or_default();
    assert!(
        stderr.contains("can't fork") || stderr.contains("Resource temporarily unavailable"),
        "forks past the limit must fail; stderr was {stderr:?}"
    );
    rt.delete(&id).await.unwrap();
}

#[tokio::test]
async fn refused_options_reject_the_task_before_anything_runs() {
    if !have_root("refused") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let rt = new_test_runtime(dir.path());
    let id = task_id("greedy");
    let mut spec = sh_task(&id, &rootfs, "true");
    spec.cap_add = vec!["SYS_ADMIN".into()];
    match rt.create(spec).await {
        Err(RuntimeError::Refused { option, .. }) => assert_eq!(option, "cap-add CAP_SYS_ADMIN"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(!rt.bundle_dir(&id).exists());
}

#[tokio::test]
async fn per_task_options_reach_the_process() {
    if !have_root("per_task_options") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let rt = new_test_runtime(dir.path());
    let id = task_id("options");
    let script = "echo $GREETING; pwd; id -u; cat /proc/sys/net/ipv4/ip_forward; ulimit -n; \
                  tr '\\0' ' ' < /proc/1/cmdline; echo";
    let mut spec = sh_task(&id, &rootfs, script);
    spec.env.push("GREETING=hi".into());
    spec.workdir = Some("/tmp".into());
    spec.user.uid = 1000;
    spec.user.gid = 1000;
    spec.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
    spec.ulimits.push(shoal_agent::runtime::Ulimit { name: "nofile".into(), soft: 321, hard: 321 });
    spec.init = std::path::Path::new("/usr/bin/tini-static").exists();
    rt.create(spec.clone()).await.unwrap();
    rt.start(&id).await.unwrap();
    assert_eq!(rt.wait(&id).await.unwrap().code, 0);
    let (out, err) = rt.log_paths(&id);
    let want_init = if spec.init { "/sbin/shoal-init -- /bin/sh" } else { "/bin/sh" };
    assert!(
        eventually(Duration::from_secs(5), || std::fs::read_to_string(&out)
            .is_ok_and(|s| s.starts_with("hi\n/tmp\n1000\n1\n321\n") && s.contains(want_init)))
        .await,
        "stdout {:?} stderr {:?}",
        std::fs::read_to_string(&out),
        std::fs::read_to_string(&err)
    );
    rt.delete(&id).await.unwrap();
}

#[tokio::test]
async fn exec_runs_a_command_inside_and_kills_it_after_its_timeout() {
    if !have_root("exec") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let rt = new_test_runtime(dir.path());
    let id = task_id("exec");
    rt.create(sh_task(&id, &rootfs, "echo inside > /tmp/mark; sleep 1000")).await.unwrap();
    rt.start(&id).await.unwrap();
    let args = |s: &str| vec!["/bin/sh".to_string(), "-c".to_string(), s.to_string()];

    // Runs in the container: it sees the task's files and its pid namespace.
    let script = args("sleep 0.2; cat /tmp/mark; echo $$ >&2; exit 4");
    let out = rt.exec(&id, &script, Duration::from_secs(5)).await.unwrap();
    assert_eq!(out.code, 4);
    assert!(out.output.starts_with("inside\n"), "{:?}", out.output);
    assert!(!out.timed_out);

    let started = std::time::Instant::now();
    let sleeper = args("sleep 1000");
    let out = rt.exec(&id, &sleeper, Duration::from_millis(300)).await.unwrap();
    assert!(out.timed_out && out.code != 0, "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    let count = args("ps -o comm | grep -c sleep");
    let ps = rt.exec(&id, &count, Duration::from_secs(5)).await;
    assert_eq!(
        ps.unwrap().output.trim(),
        "1",
        "the timed-out command is gone, the task's sleep stays"
    );

    rt.delete(&id).await.unwrap();
    let gone = rt.exec(&id, &count, Duration::from_secs(1)).await;
    assert!(matches!(gone, Err(RuntimeError::UnknownTask(_))), "{gone:?}");
}
