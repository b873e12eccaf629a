//! Runtime conformance: the static probe runs inside real tasks and reports what it sees; each
//! isolation default is asserted, and each forbidden action must fail; Landlock, where the kernel
//! has it, is compared with the same task run without it, for the task and for the commands
//! exec'd into it. Needs root.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use shoal_agent::runtime::mac::MacSupport;
use shoal_agent::runtime::{HostNamespace, IdRange, Runtime, SeccompChoice, TaskSpec};

const DEFAULT_CAPS: &str = "00000000a80425fb";
const EPERM: &str = "errno:1";
const ESRCH: &str = "errno:3";
const EROFS: &str = "errno:30";
const ENOENT: &str = "errno:2";
const EACCES: &str = "errno:13";
const ECONNREFUSED: &str = "errno:111";

/// Runs the probe in a task shaped by `edit` and returns its report.
async fn probe(name: &str, edit: impl FnOnce(&mut TaskSpec)) -> HashMap<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    std::fs::copy(probe_binary(), rootfs.join("bin/shoal-probe")).unwrap();
    let mut rt_cfg_dir = dir.path().to_path_buf();
    rt_cfg_dir.push("rt");
    let rt = new_test_runtime_with(&rt_cfg_dir, |cfg| {
        let r = IdRange { host_start: 200_000, size: 65_536 };
        cfg.policy.userns_uids = Some(r);
        cfg.policy.userns_gids = Some(r);
        cfg.policy.allow_landlock_off = true;
        // containers-common's profile allows more than ours (keyctl, unshare): a node flag.
        cfg.policy.allow_custom_seccomp = true;
        cfg.policy.allowed_host_namespaces.extend([HostNamespace::Pid, HostNamespace::Network]);
    });
    let id = task_id(name);
    let host_pid = std::process::id().to_string();
    let args = vec!["/bin/shoal-probe".into(), host_pid];
    let mut spec = TaskSpec::new(&id, shoal_agent::runtime::RootfsSource::Dir(rootfs), args);
    edit(&mut spec);
    rt.create(spec).await.unwrap();
    rt.start(&id).await.unwrap();
    let status = rt.wait(&id).await.unwrap();
    let (out, err) = rt.log_paths(&id);
    let done = || std::fs::read_to_string(&out).is_ok_and(|s| s.contains("\ndone=1\n"));
    assert!(
        eventually(Duration::from_secs(5), done).await,
        "probe exited with {status:?}; stderr: {:?}",
        std::fs::read_to_string(&err)
    );
    let report = std::fs::read_to_string(&out).unwrap();
    rt.delete(&id).await.unwrap();
    report.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect()
}

fn host_ns(ns: &str) -> String {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(Path::new("/proc/self/ns").join(ns)).unwrap().ino().to_string()
}

fn assert_forbidden_blocked(r: &HashMap<String, String>) {
    let expect = [
        ("try.mount", EPERM),
        ("try.unshare_mnt", EPERM),
        ("try.unshare_user", EPERM),
        ("try.setns", EPERM),
        ("try.keyctl", EPERM),
        ("try.ptrace_host", ESRCH),
        ("try.init_module", EPERM),
        ("try.finit_module", EPERM),
        ("try.reboot", EPERM),
        ("try.clock_settime", EPERM),
        ("try.kexec_load", EPERM),
        ("try.iopl", EPERM),
    ];
    for (key, want) in expect {
        assert_eq!(r.get(key).map(String::as_str), Some(want), "{key} in {r:#?}");
    }
    // Read-only (or, for a remapped root, not its files); sysrq may be compiled out.
    assert!(matches!(r["try.write_proc_sys"].as_str(), EROFS | EACCES), "{r:#?}");
    assert!(matches!(r["try.write_sysrq"].as_str(), EROFS | EACCES | ENOENT), "{r:#?}");
    assert_eq!(r["try.unshare_user"], EPERM);
}

#[tokio::test]
async fn default_task_is_confined() {
    if !have_root("default_task_is_confined") {
        return;
    }
    let r = probe("conf-default", |_| {}).await;
    for key in ["cap.eff", "cap.prm", "cap.bnd"] {
        assert_eq!(r[key], DEFAULT_CAPS, "{key}");
    }
    assert_eq!(
        (r["cap.inh"].as_str(), r["cap.amb"].as_str()),
        ("0000000000000000", "0000000000000000")
    );
    assert_eq!(r["seccomp"], "2", "seccomp filter mode");
    assert_eq!(r["no_new_privs"], "1");
    for ns in ["pid", "net", "mnt", "ipc", "uts"] {
        assert_ne!(r[&format!("ns.{ns}")], host_ns(ns), "{ns} namespace must be private");
    }
    assert_eq!(r["ns.user"], host_ns("user"), "no user namespace unless remapped");
    assert_eq!(r["my_pid"], "1", "the probe is pid 1 of its own pid namespace");
    assert!(r["visible_pids"].parse::<u32>().unwrap() <= 2, "host pids are not visible");
    // Masked (reads nothing) where the kernel has it; some kernels have no /proc/kcore.
    assert!(matches!(r["kcore"].as_str(), "read:0" | ENOENT), "/proc/kcore: {}", r["kcore"]);
    assert_eq!(r["cgroup.pids_max"], "1024", "a pids limit is always set");
    assert_eq!(r["rootfs_readonly"], "false");
    assert_eq!(r["try.raw_socket"], "ok", "NET_RAW is in Docker's default set");
    assert_eq!(r["try.fork"], "ok");
    assert_eq!(
        (r["try.kill_outside"].as_str(), r["try.abstract_outside"].as_str()),
        (ESRCH, ECONNREFUSED),
        "the host's processes and abstract sockets are not even visible"
    );
    assert_forbidden_blocked(&r);
}

/// The kernel's Landlock ABI, `None` without Landlock (then tasks run without it).
fn landlock_abi() -> Option<u32> {
    let abi = MacSupport::detect().landlock_abi;
    eprintln!("notice: Landlock ABI of this kernel: {abi:?}");
    abi
}

#[tokio::test]
async fn landlock_keeps_device_nodes_in_dev_and_ordinary_work_going() {
    if !have_root("landlock_keeps_device_nodes_in_dev") {
        return;
    }
    let on = probe("conf-landlock", |_| {}).await;
    let off = probe("conf-landlock-off", |s| s.landlock = false).await;
    for r in [&on, &off] {
        for key in ["try.write_tmp", "try.write_rootfs", "try.exec", "try.fork", "try.mknod_dev"] {
            assert_eq!(r[key], "ok", "{key}: ordinary work goes on");
        }
        assert_eq!(r["cap.eff"], DEFAULT_CAPS, "CAP_MKNOD is among them");
    }
    assert_eq!(off["try.mknod_tmp"], "ok", "without Landlock, root with CAP_MKNOD makes the node");
    let want = if landlock_abi().is_some() { EACCES } else { "ok" };
    assert_eq!(on["try.mknod_tmp"], want, "Landlock refuses device nodes outside /dev");
    assert_forbidden_blocked(&on);
}

#[tokio::test]
async fn landlock_scopes_signals_and_abstract_sockets_to_the_task() {
    use std::os::linux::net::SocketAddrExt;
    if !have_root("landlock_scopes_signals_and_abstract_sockets") {
        return;
    }
    // Sharing the host's pid and network namespaces puts this process and its abstract socket
    // within reach; only Landlock's scopes (ABI 6) stand between the task and them.
    let name = format!("shoal-probe-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    let host =
        |s: &mut TaskSpec| s.host_namespaces = vec![HostNamespace::Pid, HostNamespace::Network];
    let on = probe("conf-scopes", host).await;
    let off = probe("conf-scopes-off", |s| {
        host(s);
        s.landlock = false;
    })
    .await;
    let outside = |r: &HashMap<String, String>| {
        (r["try.kill_outside"].clone(), r["try.abstract_outside"].clone())
    };
    let ok = ("ok".to_string(), "ok".to_string());
    assert_eq!(outside(&off), ok, "without Landlock both are reachable");
    let scoped = landlock_abi().is_some_and(|abi| abi >= 6);
    let want = if scoped { (EPERM.to_string(), EPERM.to_string()) } else { ok };
    assert_eq!(outside(&on), want, "signal 0 to the host process, connect to its abstract socket");
}

#[tokio::test]
async fn landlock_and_init_run_together_with_init_as_pid_1() {
    if !have_root("landlock_and_init_run_together") {
        return;
    }
    assert!(Path::new("/usr/bin/tini-static").exists(), "apt-get install tini");
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let rt = new_test_runtime(&dir.path().join("rt"));
    let id = task_id("conf-landlock-init");
    let script = "busybox mknod /tmp/node c 1 3 2>/dev/null; echo mknod=$?; \
                  busybox tr '\\0' ' ' < /proc/1/cmdline; echo";
    let mut spec = sh_task(&id, &rootfs, script);
    spec.init = true;
    rt.create(spec).await.unwrap();
    rt.start(&id).await.unwrap();
    assert_eq!(rt.wait(&id).await.unwrap().code, 0);
    let (out, err) = rt.log_paths(&id);
    let refused = if landlock_abi().is_some() { "mknod=1" } else { "mknod=0" };
    let want = format!("{refused}\n/sbin/shoal-init -- /bin/sh -c ");
    assert!(
        eventually(Duration::from_secs(5), || std::fs::read_to_string(&out)
            .is_ok_and(|s| s.starts_with(&want)))
        .await,
        "want {want:?}: stdout {:?} stderr {:?}",
        std::fs::read_to_string(&out),
        std::fs::read_to_string(&err)
    );
    rt.delete(&id).await.unwrap();
}

#[tokio::test]
async fn a_command_that_cannot_run_exits_127_saying_why() {
    if !have_root("a_command_that_cannot_run_exits_127") {
        return;
    }
    if landlock_abi().is_none() {
        return eprintln!("notice: without Landlock runc itself reports the missing command");
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let rt = new_test_runtime(&dir.path().join("rt"));
    let id = task_id("conf-landlock-127");
    let args = vec!["no-such-command".to_string()];
    let spec = TaskSpec::new(&id, shoal_agent::runtime::RootfsSource::Dir(rootfs), args);
    rt.create(spec).await.unwrap();
    rt.start(&id).await.unwrap();
    assert_eq!(rt.wait(&id).await.unwrap().code, 127);
    let (_, err) = rt.log_paths(&id);
    let want = "shoal-landlock: cannot run \"no-such-command\": No such file or directory";
    assert!(
        eventually(Duration::from_secs(5), || std::fs::read_to_string(&err)
            .is_ok_and(|s| s.starts_with(want)))
        .await,
        "stderr {:?}",
        std::fs::read_to_string(&err)
    );
    rt.delete(&id).await.unwrap();
}

/// Starts `sleep` in a task shaped by `edit`, on a runtime that allows `landlock=off` and
/// `pid=host`, and runs each script in it with `exec`: their exit codes and output.
async fn exec_in(
    name: &str,
    edit: impl FnOnce(&mut TaskSpec),
    scripts: &[&str],
) -> Vec<(i32, String)> {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let rt = new_test_runtime_with(&dir.path().join("rt"), |cfg| {
        cfg.policy.allow_landlock_off = true;
        cfg.policy.allowed_host_namespaces.insert(HostNamespace::Pid);
    });
    let id = task_id(name);
    let mut spec = sh_task(&id, &rootfs, "sleep 1000");
    edit(&mut spec);
    rt.create(spec).await.unwrap();
    rt.start(&id).await.unwrap();
    let mut outs = Vec::new();
    for script in scripts {
        let args = ["/bin/sh", "-c", script].map(String::from);
        let out = rt.exec(&id, &args, Duration::from_secs(5)).await.unwrap();
        outs.push((out.code, out.output));
    }
    rt.delete(&id).await.unwrap();
    outs
}

#[tokio::test]
async fn exec_d_commands_are_under_the_tasks_ruleset() {
    if !have_root("exec_d_commands_are_under_the_tasks_ruleset") {
        return;
    }
    // A health check is a command the task itself may have rewritten: it must not make device
    // nodes outside /dev either; it still reaches the task's own processes.
    let scripts = [
        "busybox mknod /tmp/node c 1 3",
        "busybox mknod /dev/node c 1 3",
        "kill -0 1 && echo signalled",
    ];
    let on = exec_in("conf-exec", |_| {}, &scripts).await;
    let off = exec_in("conf-exec-off", |s| s.landlock = false, &scripts).await;
    assert_eq!(off[0], (0, String::new()), "without Landlock, root with CAP_MKNOD makes it");
    if landlock_abi().is_some() {
        assert_eq!(on[0].0, 1, "refused: {:?}", on[0]);
        assert!(on[0].1.contains("Permission denied"), "{:?}", on[0]);
    } else {
        assert_eq!(on[0], (0, String::new()));
    }
    for r in [&on, &off] {
        assert_eq!(r[1], (0, String::new()), "device nodes in /dev are made");
        assert_eq!(r[2], (0, "signalled\n".to_string()), "the task's pid 1 is in reach");
    }
}

#[tokio::test]
async fn exec_d_commands_under_pid_host_cannot_signal_the_host() {
    if !have_root("exec_d_commands_under_pid_host") {
        return;
    }
    let script = format!("kill -0 {} && echo signalled", std::process::id());
    let pid_host = |s: &mut TaskSpec| s.host_namespaces = vec![HostNamespace::Pid];
    let on = exec_in("conf-exec-pid", pid_host, &[&script]).await;
    let off = exec_in(
        "conf-exec-pid-off",
        |s| {
            pid_host(s);
            s.landlock = false;
        },
        &[&script],
    )
    .await;
    assert_eq!(off[0], (0, "signalled\n".to_string()), "without Landlock the host is in reach");
    if landlock_abi().is_some_and(|abi| abi >= 6) {
        assert_eq!(on[0].0, 1, "{:?}", on[0]);
        assert!(on[0].1.contains("not permitted"), "EPERM from the signal scope: {:?}", on[0]);
    } else {
        assert_eq!(on[0], off[0], "no signal scoping before ABI 6");
    }
}

#[tokio::test]
async fn options_change_what_the_task_sees() {
    if !have_root("options_change_what_the_task_sees") {
        return;
    }
    let r = probe("conf-opts", |s| {
        s.cap_drop = vec!["NET_RAW".into()];
        s.read_only_rootfs = true;
        s.hostname = Some("probe-host".into());
        s.resources.memory_bytes = Some(64 << 20);
        s.resources.pids = Some(50);
    })
    .await;
    assert_eq!(r["try.raw_socket"], EPERM, "raw sockets need CAP_NET_RAW");
    assert_eq!(r["cap.eff"], "00000000a80405fb");
    assert_eq!(r["rootfs_readonly"], "true");
    assert_eq!(r["hostname"], "probe-host");
    assert_eq!(r["cgroup.memory_max"], (64u64 << 20).to_string());
    assert_eq!(r["cgroup.pids_max"], "50");
}

#[tokio::test]
async fn userns_maps_container_root_to_an_unprivileged_uid() {
    if !have_root("userns") {
        return;
    }
    let r = probe("conf-userns", |s| s.userns_remap = true).await;
    assert_eq!(r["uid_map"], "0 200000 65536");
    assert_eq!(r["gid_map"], "0 200000 65536");
    assert_ne!(r["ns.user"], host_ns("user"));
    assert_eq!(r["uid"], "0 0 0 0", "root inside");
    assert_forbidden_blocked(&r);
}

#[tokio::test]
async fn containers_common_profile_blocks_the_same_actions() {
    if !have_root("containers_common_profile") {
        return;
    }
    let path = Path::new("/usr/share/containers/seccomp.json");
    assert!(path.exists(), "apt-get install golang-github-containers-common");
    let ours = probe("conf-ours", |_| {}).await;
    let theirs = probe("conf-theirs", |s| s.seccomp = SeccompChoice::Profile(path.into())).await;
    assert_eq!(theirs["seccomp"], "2");
    // Known, deliberate differences: containers-common allows keyctl (keys are not namespaced)
    // and unprivileged user namespaces (unshare without CAP_SYS_ADMIN); Docker's profile and
    // ours block both. Every other action must be blocked, or allowed, alike.
    let differ = ["try.keyctl", "try.unshare_user"];
    assert_eq!((ours["try.keyctl"].as_str(), ours["try.unshare_user"].as_str()), (EPERM, EPERM));
    for (key, v) in
        ours.iter().filter(|(k, _)| k.starts_with("try.") && !differ.contains(&k.as_str()))
    {
        let blocked = |x: &str| x.starts_with("errno:");
        assert_eq!(
            blocked(v),
            blocked(&theirs[key]),
            "{key}: ours {v}, containers-common {}",
            theirs[key]
        );
    }
}
