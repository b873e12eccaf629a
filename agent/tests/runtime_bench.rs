//! The runtime benchmark runs end to end (a few runs in the normal suite; the full 100 with
//! `cargo test -p shoal-agent --test runtime_bench -- --ignored --nocapture`). Needs root.

mod common;

use std::path::PathBuf;

use common::*;
use shoal_agent::runtime::bench::{bench_runtime, busybox_rootfs, BenchOptions};

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
