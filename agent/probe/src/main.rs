//! shoal-probe: runs inside a Shoal task and prints, one `key=value` per line, the isolation it
//! sees (capabilities, seccomp, namespaces, mounts, id maps, cgroup limits) and the outcome of
//! actions a confined task must not be able to take. Built statically so any rootfs can run it.
//!
//! Usage: `shoal-probe [HOST_PID]`: HOST_PID is a host process the probe must not be able to see
//! or signal; it also listens on the abstract unix socket `shoal-probe-<HOST_PID>`, which the
//! probe must not reach under `network=host`. The probe refuses to try the forbidden actions (and
//! to make device nodes) unless it is pid 1 (of a container's pid namespace). Its last line is
//! `done=1`.
// The probe exists to make raw system calls; each is a single libc call on valid pointers.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;

fn main() {
    let host_pid: i32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1);
    report_status();
    report_namespaces();
    report_files();
    report_cgroups();
    report_pids();
    try_outside_the_task(host_pid);
    // The forbidden actions would change a host (mount over /tmp, ptrace pid 1): attempt them
    // only as pid 1 of a private pid namespace, which is where a task's probe runs.
    if std::process::id() != 1 {
        out("try.skipped", "not pid 1 of a container");
    } else {
        try_device_nodes();
        try_allowed();
        // Last: a profile that allows unshare(CLONE_NEWUSER) leaves the probe in a new user
        // namespace, where nothing else would be tried as the task.
        try_forbidden(host_pid);
    }
    out("done", 1);
}

fn out(key: &str, value: impl std::fmt::Display) {
    println!("{key}={value}");
}

/// Outcome of a call returning -1 on failure: `ok` or `errno:<n>`.
fn outcome(ret: i64) -> String {
    if ret >= 0 {
        "ok".into()
    } else {
        format!("errno:{}", std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

fn report_status() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    for line in status.lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        let key = match k {
            "CapInh" => "cap.inh",
            "CapPrm" => "cap.prm",
            "CapEff" => "cap.eff",
            "CapBnd" => "cap.bnd",
            "CapAmb" => "cap.amb",
            "Seccomp" => "seccomp",
            "NoNewPrivs" => "no_new_privs",
            "Uid" => "uid",
            _ => continue,
        };
        out(key, v.split_whitespace().collect::<Vec<_>>().join(" "));
    }
}

fn report_namespaces() {
    for ns in ["pid", "net", "mnt", "ipc", "uts", "user", "cgroup"] {
        let ino = std::fs::metadata(format!("/proc/self/ns/{ns}")).map(|m| m.ino()).unwrap_or(0);
        out(&format!("ns.{ns}"), ino);
    }
}

fn report_files() {
    let one_line = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|e| format!("error:{e}"))
    };
    out("uid_map", one_line("/proc/self/uid_map"));
    out("gid_map", one_line("/proc/self/gid_map"));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    out("mounts", mounts.lines().count());
    let ro_root = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(4) == Some(&"/") && f.get(5).is_some_and(|o| o.split(',').any(|x| x == "ro"))
    });
    out("rootfs_readonly", ro_root);
    out("hostname", one_line("/proc/sys/kernel/hostname"));
    let mut buf = [0u8; 16];
    let kcore = std::fs::File::open("/proc/kcore")
        .and_then(|mut f| std::io::Read::read(&mut f, &mut buf))
        .map(|n| format!("read:{n}"))
        .unwrap_or_else(|e| format!("errno:{}", e.raw_os_error().unwrap_or(0)));
    out("kcore", kcore);
}

fn report_cgroups() {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string()).ok();
    let pids = read("/sys/fs/cgroup/pids/pids.max").or_else(|| read("/sys/fs/cgroup/pids.max"));
    out("cgroup.pids_max", pids.unwrap_or_else(|| "unknown".into()));
    let mem = read("/sys/fs/cgroup/memory/memory.limit_in_bytes")
        .or_else(|| read("/sys/fs/cgroup/memory.max"));
    out("cgroup.memory_max", mem.unwrap_or_else(|| "unknown".into()));
}

fn report_pids() {
    let visible = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten().filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok()).count()
        })
        .unwrap_or(0);
    out("visible_pids", visible);
    out("my_pid", std::process::id());
}

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL in probe strings")
}

fn try_forbidden(host_pid: i32) {
    let (tmpfs, target) = (c("tmpfs"), c("/tmp"));
    // SAFETY: valid NUL-terminated strings; a null data pointer is allowed by mount(2).
    let r = unsafe {
        libc::mount(tmpfs.as_ptr(), target.as_ptr(), tmpfs.as_ptr(), 0, std::ptr::null())
    };
    out("try.mount", outcome(r as i64));
    // SAFETY: unshare takes only flags.
    out("try.unshare_mnt", outcome(unsafe { libc::unshare(libc::CLONE_NEWNS) } as i64));
    out("try.setns", try_setns());
    // SAFETY: KEYCTL_GET_KEYRING_ID (0) on the session keyring (-3), create=0: integer args.
    out("try.keyctl", outcome(unsafe { libc::syscall(libc::SYS_keyctl, 0, -3, 0) }));
    // SAFETY: PTRACE_ATTACH takes a pid and ignores the address and data pointers.
    let r = unsafe { libc::ptrace(libc::PTRACE_ATTACH, host_pid, 0usize, 0usize) };
    out("try.ptrace_host", outcome(r));
    let empty = c("");
    // SAFETY: a null image of length 0 with an empty parameter string.
    let r = unsafe {
        libc::syscall(libc::SYS_init_module, std::ptr::null::<u8>(), 0usize, empty.as_ptr())
    };
    out("try.init_module", outcome(r));
    // SAFETY: finit_module on an invalid fd with an empty parameter string.
    out(
        "try.finit_module",
        outcome(unsafe { libc::syscall(libc::SYS_finit_module, -1, empty.as_ptr(), 0) }),
    );
    // SAFETY: LINUX_REBOOT_CMD_CAD_OFF only disables Ctrl-Alt-Del handling even if it passes.
    out("try.reboot", outcome(unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_CAD_OFF) } as i64));
    // SAFETY: socket takes integers.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    out("try.raw_socket", outcome(raw as i64));
    out("try.write_proc_sys", open_write("/proc/sys/kernel/domainname"));
    out("try.write_sysrq", open_write("/proc/sysrq-trigger"));
    // An invalid time: EINVAL if the call reaches the kernel, EPERM if a filter stops it.
    let bad = libc::timespec { tv_sec: 0, tv_nsec: -1 };
    // SAFETY: a valid pointer to a timespec on our stack (raw call: libc would reject it early).
    let r = unsafe { libc::syscall(libc::SYS_clock_settime, libc::CLOCK_REALTIME, &bad) };
    out("try.clock_settime", outcome(r));
    // SAFETY: kexec_load with no segments; rejected before any use when not permitted.
    out("try.kexec_load", outcome(unsafe { libc::syscall(libc::SYS_kexec_load, 0, 0, 0, 0) }));
    // SAFETY: iopl takes an integer level.
    out("try.iopl", outcome(unsafe { libc::syscall(libc::SYS_iopl, 3) }));
    // Last: if it succeeds the probe is in a new user namespace from here on.
    // SAFETY: unshare takes only flags.
    out("try.unshare_user", outcome(unsafe { libc::unshare(libc::CLONE_NEWUSER) } as i64));
}

fn try_setns() -> String {
    let path = c("/proc/1/ns/mnt");
    // SAFETY: valid path string.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return outcome(-1);
    }
    // SAFETY: fd is an open namespace file.
    let r = outcome(unsafe { libc::setns(fd, 0) } as i64);
    // SAFETY: closing the fd we opened.
    unsafe { libc::close(fd) };
    r
}

fn open_write(p: &str) -> String {
    match std::fs::OpenOptions::new().write(true).open(p) {
        Ok(_) => "ok".into(),
        Err(e) => format!("errno:{}", e.raw_os_error().unwrap_or(0)),
    }
}

/// Signal 0 to the host process, and a connection to its abstract socket: both reachable only
/// when the task shares the host's pid or network namespace, and then refused by Landlock's
/// scopes (ABI 6).
fn try_outside_the_task(host_pid: i32) {
    use std::os::linux::net::SocketAddrExt;
    // SAFETY: kill with signal 0 only checks that the signal could be sent.
    out("try.kill_outside", outcome(unsafe { libc::kill(host_pid, 0) } as i64));
    let name = format!("shoal-probe-{host_pid}");
    let connect = std::os::unix::net::SocketAddr::from_abstract_name(name)
        .and_then(|a| std::os::unix::net::UnixStream::connect_addr(&a));
    out("try.abstract_outside", io_outcome(connect.map(drop)));
}

/// A character device node (/dev/null's numbers) in /tmp, which the task's Landlock ruleset
/// refuses although Docker's default capabilities include CAP_MKNOD, and in /dev, which it allows.
fn try_device_nodes() {
    for (key, path) in [("try.mknod_tmp", "/tmp/probe-node"), ("try.mknod_dev", "/dev/probe-node")]
    {
        let p = c(path);
        // SAFETY: a valid path string; mode and device are integers.
        let r = unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) };
        out(key, outcome(r as i64));
        let _ = std::fs::remove_file(path);
    }
}

fn io_outcome(r: std::io::Result<()>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => format!("errno:{}", e.raw_os_error().unwrap_or(0)),
    }
}

fn try_allowed() {
    // SAFETY: fork in a single-threaded process; the child only calls _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: exiting the child without running destructors.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid status pointer.
    let waited = if pid > 0 { unsafe { libc::waitpid(pid, &mut status, 0) } } else { -1 };
    out("try.fork", outcome(waited as i64));
    out("try.write_tmp", io_outcome(std::fs::write("/tmp/probe-file", "x")));
    out("try.write_rootfs", io_outcome(std::fs::write("/probe-file", "x")));
    let exec = match std::process::Command::new("/bin/true").status() {
        Ok(s) if s.success() => "ok".to_string(),
        Ok(s) => format!("failed:{s}"),
        Err(e) => format!("errno:{}", e.raw_os_error().unwrap_or(0)),
    };
    out("try.exec", exec);
    out("try.chroot_dir_listing", std::fs::read_dir("/").map(|_| "ok").unwrap_or("failed"));
}
