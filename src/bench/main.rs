//! `shoal-bench`: measurements of Shoal's own figures, printed beside the targets and the peers'
//! figures in one run. A binary of its own (package `shoal-bench`), so nothing of it is compiled
//! into `shoal` or `shoald`: `cargo run --release -p shoal-bench -- <bench> [options]`.

mod common;
mod convergence;
mod e2e;
mod joins;
mod network;
mod pull;
mod raft;
mod runtime;
#[cfg(test)]
mod runtime_smoke;
mod scheduler;
mod sim_agents;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// mimalloc in its secure mode, the allocator `shoal` and `shoald` run with: the in-process
/// managers are measured with the product's allocator.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Measure Shoal against its targets
#[derive(Debug, Parser)]
#[command(name = "shoal-bench")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
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
    Raft(raft::RaftBenchArgs),
    /// create -> start -> exit of a trivial task with default isolation, beside bare runc (root)
    Runtime {
        /// Runs of each
        #[arg(long, default_value_t = 100)]
        runs: usize,
        /// The runc binary
        #[arg(long, default_value = "runc")]
        runc: PathBuf,
        /// Also time crun (it refuses hybrid cgroup hosts; the table says so)
        #[arg(long)]
        crun: Option<PathBuf>,
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
    /// service create --replicas N -> N tasks running on one node, beside Docker Swarm (root)
    Convergence(convergence::ConvergenceArgs),
    /// 3 managers, 1,000 simulated agents, 100 services x 100 replicas: tasks/s to ASSIGNED
    E2e(e2e::E2eArgs),
    /// Overlay throughput, latency, lookups and VIP removal across two netns hosts, beside
    /// Docker Swarm's overlay and the bare veth path (root)
    Network(network::NetworkArgs),
    /// A cold pull of a ~100 MB image from a local registry, one node and three at once,
    /// beside docker pull from the same registry (root)
    Pull(pull::PullArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    shoal_pki::install_crypto_provider();
    match run(Cli::parse().bench).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a benchmark.
async fn run(bench: Bench) -> Result<()> {
    match bench {
        Bench::Joins { nodes, concurrency, runs } => {
            joins::joins(nodes, concurrency.max(1), runs.max(1)).await
        }
        Bench::Raft(args) => raft::raft(args).await,
        Bench::Runtime { runs, runc, crun } => runtime(runs.max(1), runc, crun).await,
        Bench::Scheduler { nodes, tasks, services } => {
            let report = tokio::task::spawn_blocking(move || {
                scheduler::bench(nodes.max(1), tasks, services.max(1))
            })
            .await?;
            println!("{report}");
            Ok(())
        }
        Bench::Convergence(args) => convergence::convergence(args).await,
        Bench::E2e(args) => e2e::e2e(args).await,
        Bench::Network(args) => network::network(args).await,
        Bench::Pull(args) => pull::pull(args).await,
    }
}

async fn runtime(runs: usize, runc: PathBuf, crun: Option<PathBuf>) -> Result<()> {
    use runtime::{bench_runtime, busybox_rootfs, BenchOptions};
    let dir = tempfile::tempdir()?;
    let rootfs = busybox_rootfs(dir.path())?;
    let opts = BenchOptions { work_dir: dir.path().to_path_buf(), rootfs, runs, runc, crun };
    bench_runtime(opts).await?;
    Ok(())
}
