//! The helper binary on this host, outside any container: exit codes and messages, what the
//! command keeps, and what the ruleset refuses. Needs a kernel with Landlock (device nodes also
//! need root); without one each test says so and passes.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const HELPER: &str = env!("CARGO_BIN_EXE_shoal-landlock");

fn landlock(test: &str) -> Option<u32> {
    let abi = shoal_landlock::kernel_abi();
    if abi.is_none() {
        eprintln!("notice: {test} skipped: this kernel has no Landlock");
    }
    abi
}

fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

fn helper(dir: &Path, args: &[&str]) -> Output {
    Command::new(HELPER).current_dir(dir).args(args).output().expect("the helper runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn failures_have_their_own_exit_codes_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let usage = helper(dir.path(), &["sh"]);
    assert_eq!(usage.status.code(), Some(125));
    assert!(stderr(&usage).contains("usage: shoal-landlock [--scopes="), "{}", stderr(&usage));
    if landlock("failures_have_their_own_exit_codes").is_none() {
        return;
    }
    let missing = helper(dir.path(), &["--", "/no/such/program"]);
    assert_eq!(missing.status.code(), Some(127));
    let want = "shoal-landlock: cannot run \"/no/such/program\": No such file or directory";
    assert!(stderr(&missing).starts_with(want), "{}", stderr(&missing));
    let not_executable = dir.path().join("data");
    std::fs::write(&not_executable, "just data").unwrap();
    std::fs::set_permissions(&not_executable, std::fs::Permissions::from_mode(0o644)).unwrap();
    let denied = helper(dir.path(), &["--", not_executable.to_str().unwrap()]);
    assert_eq!(denied.status.code(), Some(126), "{}", stderr(&denied));
    assert!(stderr(&denied).contains("Permission denied"), "{}", stderr(&denied));
}

#[test]
fn the_command_keeps_its_environment_directory_and_path_lookup() {
    if landlock("the_command_keeps_its_environment").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(HELPER)
        .current_dir(dir.path())
        .env("GREETING", "hi")
        .args(["--", "sh", "-c", "echo \"$GREETING\"; pwd; exit 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let cwd = dir.path().canonicalize().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("hi\n{}\n", cwd.display()));
}

#[test]
fn device_nodes_are_refused_outside_dev() {
    if landlock("device_nodes_are_refused_outside_dev").is_none() || !is_root() {
        eprintln!("notice: device_nodes_are_refused_outside_dev needs root and Landlock");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mknod = |name: &str| format!("mknod {name} c 1 3 && echo made");
    let plain = Command::new("sh").current_dir(dir.path()).args(["-c", &mknod("a")]).output();
    assert_eq!(String::from_utf8_lossy(&plain.unwrap().stdout), "made\n", "root may mknod");
    let confined = helper(dir.path(), &["--", "sh", "-c", &mknod("b")]);
    assert!(stderr(&confined).contains("Permission denied"), "{}", stderr(&confined));
    assert!(!dir.path().join("b").exists());
}

#[test]
fn signals_stop_at_the_tasks_domain() {
    match landlock("signals_stop_at_the_tasks_domain") {
        Some(abi) if abi >= shoal_landlock::SCOPES_ABI => {}
        Some(abi) => return eprintln!("notice: ABI v{abi} has no signal scoping"),
        None => return,
    }
    let dir = tempfile::tempdir().unwrap();
    let script = format!("kill -0 $$ && echo self; kill -0 {}", std::process::id());
    let out = helper(dir.path(), &["--", "sh", "-c", &script]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "self\n", "its own processes are in");
    assert!(stderr(&out).contains("Operation not permitted"), "{}", stderr(&out));
    // Without the signal scope (an exec'd command in a task's own pid namespace) the signal
    // goes out; the abstract-socket scope alone does not stop it.
    for scopes in ["--scopes=none", "--scopes=abstract-unix-socket"] {
        let out = helper(dir.path(), &[scopes, "--", "sh", "-c", &script]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "self\n", "{scopes}: {}", stderr(&out));
        assert!(out.status.success(), "{scopes}: {}", stderr(&out));
    }
    let out = helper(dir.path(), &["--scopes=signal", "--", "sh", "-c", &script]);
    assert!(stderr(&out).contains("Operation not permitted"), "{}", stderr(&out));
}
