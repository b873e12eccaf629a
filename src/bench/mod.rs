//! Owns `shoal bench`: measurements of Shoal's own figures, printed beside the targets and the
//! peers' figures in one run.

pub mod raft;
pub mod services;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Subcommand;
use shoal_agent::JoinParams;
use shoal_manager::{InitParams, Manager};
use shoal_pki::{NodeKey, ReloadableCert, Role};
use tokio::sync::Semaphore;

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// N nodes join one manager on loopback concurrently (CA pin, token, CSR, signature, commit)
    Joins {
        /// Nodes joining per run
        #[arg(long, default_value_t = 500)]
        nodes: usize,
        /// Joins in flight at once
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Runs; the median is reported
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Replicated writes through 3 managers (mTLS, fsync) beside a 3-member etcd 3.4 cluster
    Raft(crate::bench::raft::RaftBenchArgs),
    /// create -> start -> exit of a trivial task with default isolation, beside bare runc (root)
    Runtime {
        /// Runs of each
        #[arg(long, default_value_t = 100)]
        runs: usize,
        /// The runc binary
        #[arg(long, default_value = "runc")]
        runc: std::path::PathBuf,
        /// Also time crun (it refuses hybrid cgroup hosts; the table says so)
        #[arg(long)]
        crun: Option<std::path::PathBuf>,
    },
    /// Place tasks of many services on many fake nodes in-process (one thread)
    Scheduler {
        #[arg(long, default_value_t = 1_000)]
        nodes: usize,
        #[arg(long, default_value_t = 100_000)]
        tasks: usize,
        #[arg(long, default_value_t = 100)]
        services: usize,
    },
}

/// Runs a benchmark.
pub async fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Joins { nodes, concurrency, runs } => {
            joins(nodes, concurrency.max(1), runs.max(1)).await
        }
        BenchCmd::Raft(args) => crate::bench::raft::raft(args).await,
        BenchCmd::Runtime { runs, runc, crun } => runtime(runs.max(1), runc, crun).await,
        BenchCmd::Scheduler { nodes, tasks, services } => {
            let report = tokio::task::spawn_blocking(move || {
                shoal_manager::scheduler::bench(nodes.max(1), tasks, services.max(1))
            })
            .await?;
            println!("{report}");
            Ok(())
        }
    }
}

async fn runtime(
    runs: usize,
    runc: std::path::PathBuf,
    crun: Option<std::path::PathBuf>,
) -> Result<()> {
    use shoal_agent::runtime::bench::{bench_runtime, busybox_rootfs, BenchOptions};
    let dir = tempfile::tempdir()?;
    let rootfs = busybox_rootfs(dir.path())?;
    let opts = BenchOptions { work_dir: dir.path().to_path_buf(), rootfs, runs, runc, crun };
    bench_runtime(opts).await?;
    Ok(())
}

struct Bench {
    manager: Manager,
    addr: String,
    token: String,
    _dir: tempfile::TempDir,
}

async fn start_manager() -> Result<Bench> {
    let dir = tempfile::tempdir()?;
    let key = NodeKey::generate()?;
    let params = InitParams {
        hostname: "bench-manager".into(),
        advertise_addr: "127.0.0.1:0".into(),
        cert_expiry: shoal_pki::DEFAULT_CERT_EXPIRY,
        heartbeat: shoal_manager::manager::DEFAULT_HEARTBEAT,
        autolock: false,
        election_timeout: shoal_manager::manager::DEFAULT_ELECTION_TIMEOUT,
        default_addr_pool: Vec::new(),
        subnet_size: 0,
    };
    let (manager, _, issued) = Manager::init(&dir.path().join("store"), params, &key).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let cert = ReloadableCert::new(&issued.cert_pem, &key)?;
    let m = manager.clone();
    tokio::spawn(async move { m.serve_tls(listener, cert, std::future::pending()).await });
    let token = manager.join_token(Role::Worker)?;
    Ok(Bench { manager, addr, token, _dir: dir })
}

async fn one_join(b: &Bench, i: usize) -> Result<Duration> {
    let params = JoinParams {
        token: b.token.clone(),
        remote_addr: b.addr.clone(),
        hostname: format!("bench-{i}"),
        advertise_addr: String::new(),
    };
    let start = Instant::now();
    shoal_agent::join(&params).await.with_context(|| format!("join {i}"))?;
    Ok(start.elapsed())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn joins(nodes: usize, concurrency: usize, runs: usize) -> Result<()> {
    let mut rates = Vec::new();
    let mut sequential = Vec::new();
    let mut loaded = Vec::new();
    for run in 0..runs {
        let bench = Arc::new(start_manager().await?);
        for i in 0..20 {
            sequential.push(one_join(&bench, i).await?);
        }
        let gate = Arc::new(Semaphore::new(concurrency));
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(nodes);
        for i in 0..nodes {
            let (bench, gate) = (bench.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = gate.acquire_owned().await?;
                one_join(&bench, 1000 + i).await
            }));
        }
        for t in tasks {
            loaded.push(t.await??);
        }
        let elapsed = start.elapsed();
        let joined = bench.manager.store().list::<shoal_proto::Node>()?.len() - 1;
        anyhow::ensure!(
            joined == nodes + 20,
            "expected {} nodes in the store, found {joined}",
            nodes + 20
        );
        let rate = nodes as f64 / elapsed.as_secs_f64();
        println!(
            "run {}: {nodes} joins in {:.3}s = {rate:.0} joins/s",
            run + 1,
            elapsed.as_secs_f64()
        );
        rates.push(rate);
    }
    let one = percentile(&mut sequential, 0.5);
    let (p50, p99) = (percentile(&mut loaded, 0.5), percentile(&mut loaded, 0.99));
    println!();
    println!("joins/s: {nodes} nodes joining one manager on loopback, concurrency {concurrency}, median of {runs} runs");
    println!("  {:<34} {:>12} {:>16} {:>18}", "", "joins/s", "one join (idle)", "join under load");
    println!(
        "  {:<34} {:>12.0} {:>13.2} ms {:>9.1}/{:.1} ms",
        "shoal (mTLS, raft log fdatasync'd)",
        median(rates),
        one.as_secs_f64() * 1e3,
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
    );
    println!("  {:<34} {:>12}", "target", ">= 500");
    println!("  {:<34} {:>12} {:>16}", "Docker Swarm (swarmkit)", "unpublished", ">= 1 s poll");
    println!("  (join under load: p50/p99; swarmkit signs asynchronously and the joiner polls NodeCertificateStatus)");
    Ok(())
}
