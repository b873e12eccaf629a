//! The runtime benchmark runs end to end (a few runs in the normal suite; the full 100 with
//! `cargo test -p shoal-bench runtime_smoke -- --ignored --nocapture`). Needs root.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::runtime::{bench_runtime, busybox_rootfs, BenchOptions};

/// Root and runc are here; under CI their absence is a failure, elsewhere a notice.
fn have_root(test: &str) -> bool {
    let euid = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX);
    if euid == 0 && Path::new("/usr/bin/runc").exists() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{test} needs root and runc under CI");
    eprintln!("notice: {test} skipped: needs root and runc");
    false
}

fn options(dir: &std::path::Path, runs: usize) -> BenchOptions {
    let crun = PathBuf::from("/usr/bin/crun");
    BenchOptions {
        work_dir: dir.to_path_buf(),
        rootfs: busybox_rootfs(dir).unwrap(),
        runs,
        runc: "/usr/bin/runc".into(),
        crun: crun.exists().then_some(crun),
    }
}

#[tokio::test]
async fn benchmark_runs_and_reports_both_runtimes() {
    if !have_root("benchmark_smoke") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let report = bench_runtime(options(dir.path(), 3)).await.unwrap();
    assert_eq!((report.shoal.runs, report.runc.runs), (3, 3));
    assert!(report.shoal.median > std::time::Duration::ZERO);
}

#[tokio::test]
#[ignore = "slow: the full 100-run benchmark"]
async fn benchmark_100_runs() {
    if !have_root("benchmark_100") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    bench_runtime(options(dir.path(), 100)).await.unwrap();
}
