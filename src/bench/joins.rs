//! `shoal-bench joins`: N nodes join one manager on loopback concurrently (CA pin, token, CSR,
//! signature, commit).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use shoal_agent::JoinParams;
use shoal_testkit::managers::{Managers, Serve};
use tokio::sync::Semaphore;

use crate::common::{median, percentile};

/// One manager serving its cluster port alone.
async fn start_manager() -> Result<Managers> {
    Managers::start(1, "bench-joins", Serve::PortOnly, Duration::from_secs(30)).await
}

async fn one_join(b: &Managers, i: usize) -> Result<Duration> {
    let params = JoinParams {
        token: b.worker_token.clone(),
        remote_addr: b.members[0].addr.clone(),
        hostname: format!("bench-{i}"),
        advertise_addr: String::new(),
    };
    let start = Instant::now();
    shoal_agent::join(&params).await.with_context(|| format!("join {i}"))?;
    Ok(start.elapsed())
}

pub async fn joins(nodes: usize, concurrency: usize, runs: usize) -> Result<()> {
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
        let joined = bench.members[0].manager.store().list::<shoal_proto::Node>()?.len() - 1;
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
    let one = percentile(&sequential, 0.5);
    let (p50, p99) = (percentile(&loaded, 0.5), percentile(&loaded, 0.99));
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
