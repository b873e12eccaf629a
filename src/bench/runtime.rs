//! `shoal-bench runtime`: create→start→exit→delete of a trivial task with default isolation,
//! timed through Shoal's runtime and, in the same run, through bare `runc run` (and crun where
//! the host allows it) on the same bundle contents. Prints medians and p99s side by side.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use shoal_agent::runtime::error::{Result, RuntimeError};
use shoal_agent::runtime::spec::{RootfsSource, TaskSpec};
use shoal_agent::runtime::{oci, rootfs, OciRuntime, Runtime, RuntimeConfig};

/// What to benchmark.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Scratch directory (data root, bundles); removed contents are the caller's.
    pub work_dir: PathBuf,
    /// A rootfs directory containing `/bin/true`; see [`busybox_rootfs`].
    pub rootfs: PathBuf,
    pub runs: usize,
    pub runc: PathBuf,
    /// Also time this crun binary, if set.
    pub crun: Option<PathBuf>,
}

/// Median and p99 of one series.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    pub runs: usize,
    pub median: Duration,
    pub p99: Duration,
}

/// The results of one benchmark run.
#[derive(Clone, Debug)]
pub struct BenchReport {
    pub shoal: Stats,
    pub runc: Stats,
    /// crun's figures, or why it could not run here.
    pub crun: Option<std::result::Result<Stats, String>>,
}

impl Stats {
    /// Median and nearest-rank p99 of `samples`.
    pub fn of(samples: &mut [Duration]) -> Stats {
        samples.sort();
        let at = |q: f64| {
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1]
        };
        Stats { runs: samples.len(), median: at(0.5), p99: at(0.99) }
    }
}

/// A minimal rootfs for the benchmark: busybox-static and its `true`, `sh` applets.
pub fn busybox_rootfs(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("bench-rootfs");
    let io = |what, p: &Path, e| RuntimeError::io(what, p, e);
    std::fs::create_dir_all(root.join("bin")).map_err(|e| io("creating", &root, e))?;
    let busybox = root.join("bin/busybox");
    if !busybox.exists() {
        std::fs::copy("/bin/busybox", &busybox).map_err(|e| {
            io("copying /bin/busybox (apt-get install busybox-static) to", &busybox, e)
        })?;
    }
    for applet in ["true", "sh"] {
        let link = root.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link).map_err(|e| io("linking", &link, e))?;
        }
    }
    Ok(root)
}

/// Runs the benchmark, prints the table and returns the figures.
pub async fn bench_runtime(opts: BenchOptions) -> Result<BenchReport> {
    let mut cfg = RuntimeConfig::new(opts.work_dir.join("shoal"));
    cfg.runtime_binary = opts.runc.clone();
    let rt = OciRuntime::new(cfg)?;
    let bundle = BareBundle::prepare(&rt, &opts)?;
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    for i in 0..opts.runs {
        ours.push(time_shoal(&rt, &opts.rootfs, i).await?);
        bare.push(bundle.time_run(&opts.runc, i).await?);
    }
    let crun = match &opts.crun {
        Some(bin) => Some(bundle.time_series(bin, opts.runs).await),
        None => None,
    };
    drop(bundle);
    let report = BenchReport { shoal: Stats::of(&mut ours), runc: Stats::of(&mut bare), crun };
    print(&report);
    Ok(report)
}

async fn time_shoal(rt: &OciRuntime, rootfs: &Path, i: usize) -> Result<Duration> {
    let id = format!("bench-{}-{i}", std::process::id());
    let spec = TaskSpec::new(&id, RootfsSource::Dir(rootfs.into()), vec!["/bin/true".into()]);
    let t0 = Instant::now();
    rt.create(spec).await?;
    rt.start(&id).await?;
    let status = rt.wait(&id).await?;
    rt.delete(&id).await?;
    let took = t0.elapsed();
    if status.code != 0 {
        return Err(RuntimeError::InvalidSpec(format!("benchmark task exited with {status:?}")));
    }
    Ok(took)
}

/// A bundle with the same config Shoal generates, for the bare runtimes.
struct BareBundle {
    dir: PathBuf,
    state: PathBuf,
}

impl BareBundle {
    fn prepare(rt: &OciRuntime, opts: &BenchOptions) -> Result<BareBundle> {
        let dir = opts.work_dir.join("bare-bundle");
        let state = opts.work_dir.join("bare-state");
        rootfs::mkdir(&state)?;
        let spec = TaskSpec::new(
            "bench-bare",
            RootfsSource::Dir(opts.rootfs.clone()),
            vec!["/bin/true".into()],
        );
        rootfs::mount_rootfs(
            &rootfs::BundleDirs::new(dir.clone()),
            &spec.rootfs,
            None,
            true,
            None,
        )?;
        oci::save(&rt.oci_config(&spec)?, &dir)?;
        Ok(BareBundle { dir, state })
    }

    async fn time_run(&self, binary: &Path, i: usize) -> Result<Duration> {
        let id = format!("bench-bare-{}-{i}", std::process::id());
        let t0 = Instant::now();
        let status = tokio::process::Command::new(binary)
            .arg("--root")
            .arg(&self.state)
            .args(["run", "--bundle"])
            .arg(&self.dir)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|source| RuntimeError::Spawn {
                binary: binary.display().to_string(),
                source,
            })?;
        let took = t0.elapsed();
        if !status.status.success() {
            let message = String::from_utf8_lossy(&status.stderr).trim().to_string();
            return Err(RuntimeError::Oci {
                binary: binary.display().to_string(),
                action: "run",
                id,
                message,
            });
        }
        Ok(took)
    }

    async fn time_series(&self, binary: &Path, runs: usize) -> std::result::Result<Stats, String> {
        let mut v = Vec::with_capacity(runs);
        for i in 0..runs {
            v.push(self.time_run(binary, i).await.map_err(|e| e.to_string())?);
        }
        Ok(Stats::of(&mut v))
    }
}

impl Drop for BareBundle {
    fn drop(&mut self) {
        let dirs = rootfs::BundleDirs::new(self.dir.clone());
        let _ = rootfs::unmount_rootfs(&dirs);
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn print(r: &BenchReport) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "runtime benchmark: create→start→exit→delete of /bin/true, default isolation, {} runs",
        r.shoal.runs
    );
    println!("{:<12} {:>10} {:>10}", "", "median ms", "p99 ms");
    println!("{:<12} {:>10.1} {:>10.1}", "shoal", ms(r.shoal.median), ms(r.shoal.p99));
    println!("{:<12} {:>10.1} {:>10.1}", "runc run", ms(r.runc.median), ms(r.runc.p99));
    match &r.crun {
        Some(Ok(s)) => println!("{:<12} {:>10.1} {:>10.1}", "crun run", ms(s.median), ms(s.p99)),
        Some(Err(e)) => println!("crun run     not comparable here: {e}"),
        None => {}
    }
    let overhead = ms(r.shoal.median) - ms(r.runc.median);
    println!("overhead over bare runc: {overhead:+.1} ms median (goal ≤ 10 ms)");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_use_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let s = Stats::of(&mut v);
        assert_eq!(
            (s.median, s.p99, s.runs),
            (Duration::from_millis(50), Duration::from_millis(99), 100)
        );
    }
}
