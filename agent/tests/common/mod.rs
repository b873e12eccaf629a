//! Shared fixtures of the runtime tests: root checks, busybox rootfs, runtimes on temp dirs,
//! and the static probe binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use shoal_agent::runtime::{OciRuntime, RootfsSource, RuntimeConfig, TaskSpec};

/// True when the test can run. Without root it fails under CI and is skipped elsewhere.
pub fn have_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() && Path::new("/usr/bin/runc").exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs root and runc (apt-get install runc busybox-static) under CI"
    );
    eprintln!("notice: {test} skipped: needs root and runc");
    false
}

/// A rootfs with busybox and its applets as symlinks.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "cat", "sleep", "true", "ls", "id", "head", "dd", "ps", "grep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
    root
}

/// A runtime whose data root is under `dir`.
pub fn new_test_runtime(dir: &Path) -> OciRuntime {
    new_test_runtime_with(dir, |_| {})
}

/// A runtime whose data root is under `dir`, its config adjusted by `edit`. `dir` and its
/// parents are made searchable so remapped roots can reach their bundles.
pub fn new_test_runtime_with(dir: &Path, edit: impl FnOnce(&mut RuntimeConfig)) -> OciRuntime {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    for d in dir
        .ancestors()
        .filter(|d| d.starts_with(std::env::temp_dir()) && *d != std::env::temp_dir())
    {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let mut cfg = RuntimeConfig::new(dir.join("data"));
    cfg.runtime_binary = "/usr/bin/runc".into();
    edit(&mut cfg);
    OciRuntime::new(cfg).expect("runtime starts")
}

/// A task running `sh -c script` in `rootfs`.
pub fn sh_task(id: &str, rootfs: &Path, script: &str) -> TaskSpec {
    let args = vec!["/bin/sh".into(), "-c".into(), script.into()];
    let mut spec = TaskSpec::new(id, RootfsSource::Dir(rootfs.to_path_buf()), args);
    spec.stop_grace = Duration::from_secs(2);
    spec
}

/// A unique task id for this test process.
pub fn task_id(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// The probe binary, built statically (glibc static-pie) once per test process.
pub fn probe_binary() -> &'static Path {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE.get_or_init(build_probe)
}

fn build_probe() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let target = workspace.join("target/probe");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(&workspace)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target)
        .args(["build", "-q", "-p", "shoal-probe", "--target", "x86_64-unknown-linux-gnu"])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the static probe failed");
    target.join("x86_64-unknown-linux-gnu/debug/shoal-probe")
}

/// A tarball of the directory `root` (symlinks kept as symlinks).
pub fn tar_dir(root: &Path, out: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    b.follow_symlinks(false);
    b.append_dir_all(".", root).unwrap();
    b.finish().unwrap();
}

/// Waits until a task's standard output (the file `stdout`) says `trapped`: a task that must
/// be signalled prints it once its trap is set, as a signal that comes earlier is lost (the
/// shell is the container's init, which ignores signals it has no handler for).
#[allow(dead_code)]
pub async fn trap_set(stdout: &Path) {
    let what = format!("{} says its trap is set", stdout.display());
    poll::assert_eventually(&what, std::time::Duration::from_secs(30), || {
        std::fs::read_to_string(stdout).unwrap_or_default() == "trapped\n"
    })
    .await;
}

pub mod dispatcher;
pub mod poll;

// Not every test file waits for something.
#[allow(unused_imports)]
pub use poll::eventually;
