//! Owns `shoal-bench raft`: replicated writes through three real managers on loopback (mTLS,
//! fsync'd Raft log) beside a three-member etcd 3.4 cluster running the same workload on the same
//! machine, plus the time from killing the leader to the next committed write.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::Rng;
use shoal_proto::Node;
use shoal_testkit::managers::{Managers, Serve};

use etcd::EtcdCluster;

use crate::common::{median, percentile};

mod etcd;

/// Bytes of every written value.
const VALUE_BYTES: usize = 256;
/// Members of each cluster.
const MEMBERS: usize = 3;
/// Leader kills measured per system.
const FAILOVERS: usize = 3;
/// How long one write may take during a failover before the writer tries again (the
/// resolution of the measurement: a write sent to the dead leader is otherwise waited out).
const FAILOVER_ATTEMPT: Duration = Duration::from_millis(200);
/// How long a cluster may take to form.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// `shoal-bench raft`.
#[derive(Debug, clap::Args)]
pub struct RaftBenchArgs {
    /// Seconds of load per run and client count
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Runs; medians are reported
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Concurrent clients, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "1,64,256")]
    pub clients: Vec<usize>,
    /// The etcd binary (Debian's etcd-server package installs /usr/bin/etcd)
    #[arg(long, default_value = "etcd")]
    pub etcd: PathBuf,
    /// Measure Shoal only
    #[arg(long)]
    pub skip_etcd: bool,
    /// Skip the writes through a follower
    #[arg(long)]
    pub skip_follower: bool,
    /// Skip the leader-kill measurement
    #[arg(long)]
    pub skip_failover: bool,
}

/// Runs `shoal-bench raft`.
pub async fn raft(args: RaftBenchArgs) -> Result<()> {
    if let Ok(filter) = std::env::var("RUST_LOG") {
        // Managers' own logs (elections, snapshots), for looking into odd numbers.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
    let duration = Duration::from_secs(args.seconds.max(1));
    let runs = args.runs.max(1);
    let clients: Vec<usize> = args.clients.iter().map(|c| (*c).max(1)).collect();
    if clients.is_empty() {
        bail!("--clients needs at least one count");
    }
    let mut results = Results::default();

    println!("starting 3 shoal managers (mTLS on loopback, one data dir each)...");
    let shoal = ShoalCluster::start().await.context("starting the shoal managers")?;
    let etcd = if args.skip_etcd {
        None
    } else {
        println!("starting 3 etcd members ({})...", args.etcd.display());
        Some(EtcdCluster::start(&args.etcd).await.context("starting the etcd cluster")?)
    };
    let etcd_version = match &etcd {
        Some(e) => Some(e.version().await?),
        None => None,
    };

    // Warm both up (connections, allocators, sled/bbolt files), then measure.
    let warm = Duration::from_secs(1);
    drive(16, warm, shoal.writer(shoal.leader().await?, "warm")).await?;
    if let Some(e) = &etcd {
        drive(16, warm, e.writer(e.leader().await?).await?).await?;
    }

    for run in 0..runs {
        throughput_round(&args, run, &clients, duration, &shoal, etcd.as_ref(), &mut results)
            .await?;
    }
    drop(shoal);
    drop(etcd);
    let (shoal_failover, etcd_failover) = failovers(&args).await?;

    print_table(&args, duration, runs, &clients, &results, etcd_version.as_deref());
    print_failover(
        "shoal",
        &shoal_failover,
        "election after 0.5-1 s of silence (50 ms ticks x 10)",
    );
    if !args.skip_etcd {
        print_failover("etcd", &etcd_failover, "defaults: 100 ms heartbeat, 1 s election timeout");
    }
    Ok(())
}

/// One round of writes at each client count: Shoal through the leader, through a follower,
/// and etcd.
async fn throughput_round(
    args: &RaftBenchArgs,
    run: usize,
    clients: &[usize],
    duration: Duration,
    shoal: &ShoalCluster,
    etcd: Option<&EtcdCluster>,
    results: &mut Results,
) -> Result<()> {
    for &n in clients {
        let tag = format!("r{run}c{n}");
        let leader = shoal.leader().await?;
        let term = shoal.term();
        let s = drive(n, duration, shoal.writer(leader, &format!("{tag}l"))).await?;
        report_run(run, n, "shoal (leader)", &s, &shoal.term_note(term));
        results.add(Sys::ShoalLeader, n, s);
        if !args.skip_follower {
            let follower = shoal.follower().await?;
            let term = shoal.term();
            let s = drive(n, duration, shoal.writer(follower, &format!("{tag}f"))).await?;
            report_run(run, n, "shoal (via follower)", &s, &shoal.term_note(term));
            results.add(Sys::ShoalFollower, n, s);
        }
        if let Some(e) = etcd {
            let s = drive(n, duration, e.writer(e.leader().await?).await?).await?;
            report_run(run, n, "etcd", &s, "");
            results.add(Sys::Etcd, n, s);
        }
    }
    Ok(())
}

/// Kills the leader of fresh clusters and times the next committed write (Shoal, then etcd).
async fn failovers(args: &RaftBenchArgs) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let mut shoal_failover = Vec::new();
    let mut etcd_failover = Vec::new();
    if args.skip_failover {
        return Ok((shoal_failover, etcd_failover));
    }
    for trial in 0..FAILOVERS {
        let cluster = ShoalCluster::start().await?;
        let t = cluster.failover(&format!("fo{trial}")).await?;
        println!("failover {}: shoal leader killed -> next committed write {t:.3?}", trial + 1);
        shoal_failover.push(t);
        if !args.skip_etcd {
            let mut cluster = EtcdCluster::start(&args.etcd).await?;
            let t = cluster.failover().await?;
            println!("failover {}: etcd leader killed -> next committed write {t:.3?}", trial + 1);
            etcd_failover.push(t);
        }
    }
    Ok((shoal_failover, etcd_failover))
}

// ---------------------------------------------------------------------------------------------
// Load and statistics

/// What one load run measured.
#[derive(Debug, Default)]
struct RunStats {
    writes: usize,
    errors: usize,
    first_error: Option<String>,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// The keys or IDs of acknowledged writes.
    acked: Vec<String>,
}

impl RunStats {
    fn rate(&self) -> f64 {
        self.writes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn percentile(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }
}

/// Runs `clients` concurrent clients, each writing sequentially with `op(client, seq)` until
/// `duration` has passed; `op` resolves to the acknowledged key.
async fn drive<F, Fut>(clients: usize, duration: Duration, op: F) -> Result<RunStats>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String>> + Send + 'static,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = RunStats::default();
            let mut seq = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                match op(c, seq).await {
                    Ok(key) => {
                        s.latencies.push(t.elapsed());
                        s.acked.push(key);
                        s.writes += 1;
                    }
                    Err(e) => {
                        s.errors += 1;
                        s.first_error.get_or_insert_with(|| format!("{e:#}"));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                seq += 1;
            }
            s
        }));
    }
    let mut all = RunStats::default();
    for t in tasks {
        let s = t.await?;
        all.writes += s.writes;
        all.errors += s.errors;
        if all.first_error.is_none() {
            all.first_error = s.first_error;
        }
        all.latencies.extend(s.latencies);
        all.acked.extend(s.acked);
    }
    all.elapsed = start.elapsed();
    Ok(all)
}

fn random_value() -> String {
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(VALUE_BYTES)
        .map(char::from)
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report_run(run: usize, clients: usize, what: &str, s: &RunStats, note: &str) {
    let errors = match (&s.first_error, s.errors) {
        (Some(e), n) => format!("  ({n} errors, first: {e})"),
        (None, _) => String::new(),
    };
    println!(
        "run {} clients {clients:>3} {what:<21} {:>8.0} writes/s  p50 {:>7.2} ms  p99 {:>7.2} ms{note}{errors}",
        run + 1,
        s.rate(),
        ms(s.percentile(0.5)),
        ms(s.percentile(0.99)),
    );
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sys {
    ShoalLeader,
    ShoalFollower,
    Etcd,
}

#[derive(Debug, Default)]
struct Results {
    /// (system, clients) → per-run (writes/s, p50 ms, p99 ms, errors).
    runs: Vec<(Sys, usize, f64, f64, f64, usize)>,
}

#[derive(Debug, Clone, Copy)]
struct Summary {
    rate: f64,
    p50: f64,
    p99: f64,
    errors: usize,
    runs: usize,
}

impl Results {
    fn add(&mut self, sys: Sys, clients: usize, s: RunStats) {
        let (p50, p99) = (ms(s.percentile(0.5)), ms(s.percentile(0.99)));
        self.runs.push((sys, clients, s.rate(), p50, p99, s.errors));
    }

    fn summary(&self, sys: Sys, clients: usize) -> Option<Summary> {
        let mine: Vec<_> =
            self.runs.iter().filter(|r| r.0 == sys && r.1 == clients).copied().collect();
        if mine.is_empty() {
            return None;
        }
        Some(Summary {
            rate: median(mine.iter().map(|r| r.2).collect()),
            p50: median(mine.iter().map(|r| r.3).collect()),
            p99: median(mine.iter().map(|r| r.4).collect()),
            errors: mine.iter().map(|r| r.5).sum(),
            runs: mine.len(),
        })
    }
}

fn print_table(
    args: &RaftBenchArgs,
    duration: Duration,
    runs: usize,
    clients: &[usize],
    results: &Results,
    etcd_version: Option<&str>,
) {
    println!();
    println!(
        "raft writes: 3 members on loopback, fsync on, {VALUE_BYTES}-byte values, {} s per run, \
         median of {runs} runs (writes/s, p50, p99 each the median over runs)",
        duration.as_secs()
    );
    println!(
        "  shoal: 3 in-process managers, raft over gRPC mTLS; each client calls store.update on \
         that manager (in-process, no client RPC); durability: sled flush plus fdatasync of its \
         data file for every Raft Ready that carries entries or a term/vote change"
    );
    if let Some(v) = etcd_version {
        println!(
            "  etcd {v}: 3 processes ({}), peer and client mTLS; clients send KV.Put over gRPC TLS \
             on one HTTP/2 connection to the leader; durability: fdatasync of its WAL",
            args.etcd.display()
        );
    }
    println!(
        "  {:>7}  {:<21} {:>10} {:>9} {:>9} {:>11} {:>7}",
        "clients", "system", "writes/s", "p50 ms", "p99 ms", "vs etcd w/s", "errors"
    );
    for &n in clients {
        let etcd = results.summary(Sys::Etcd, n);
        for (sys, name) in [
            (Sys::ShoalLeader, "shoal (leader)"),
            (Sys::ShoalFollower, "shoal (via follower)"),
            (Sys::Etcd, "etcd"),
        ] {
            let Some(s) = results.summary(sys, n) else { continue };
            let ratio = match (sys, etcd) {
                (Sys::Etcd, _) | (_, None) => String::new(),
                (_, Some(e)) => format!("{:.2}x", s.rate / e.rate),
            };
            println!(
                "  {:>7}  {name:<21} {:>10.0} {:>9.2} {:>9.2} {ratio:>11} {:>7}",
                n, s.rate, s.p50, s.p99, s.errors
            );
            debug_assert_eq!(s.runs, runs);
        }
    }
    if etcd_version.is_some() {
        println!("  goal (issue 3): shoal >= 2x etcd writes/s at 64+ clients, with p99 no worse");
        for &n in clients.iter().filter(|n| **n >= 64) {
            if let (Some(s), Some(e)) =
                (results.summary(Sys::ShoalLeader, n), results.summary(Sys::Etcd, n))
            {
                let met = s.rate >= 2.0 * e.rate && s.p99 <= e.p99;
                println!(
                    "    {n:>3} clients: {:.2}x writes/s, p99 {:.2} vs {:.2} ms: {}",
                    s.rate / e.rate,
                    s.p99,
                    e.p99,
                    if met { "met" } else { "NOT met" }
                );
            }
        }
    }
}

fn print_failover(what: &str, times: &[Duration], note: &str) {
    if times.is_empty() {
        return;
    }
    let each: Vec<String> = times.iter().map(|t| format!("{:.0} ms", ms(*t))).collect();
    println!(
        "  leader killed -> next committed write, {what}: {:.0} ms median of {} ({}); {note}",
        median(times.iter().map(|t| ms(*t)).collect()),
        times.len(),
        each.join(", ")
    );
}

// ---------------------------------------------------------------------------------------------
// Shoal: three real managers

/// Three managers serving their cluster ports alone: no orchestrator or monitor reacts to the
/// writes, which are all they do.
#[derive(Debug)]
struct ShoalCluster {
    managers: Managers,
}

impl ShoalCluster {
    async fn start() -> Result<ShoalCluster> {
        let managers =
            Managers::start(MEMBERS, "bench-raft", Serve::PortOnly, FORM_TIMEOUT).await?;
        Ok(ShoalCluster { managers })
    }

    /// The index of the live leader (waits for one).
    async fn leader(&self) -> Result<usize> {
        self.managers.wait_leader(FORM_TIMEOUT).await
    }

    /// The highest Raft term a live member knows.
    fn term(&self) -> u64 {
        let live = self.managers.members.iter().filter(|m| m.live());
        live.map(|m| m.manager.raft().status().term).max().unwrap_or(0)
    }

    /// Notes elections since `before` (there should be none under load).
    fn term_note(&self, before: u64) -> String {
        match self.term() {
            now if now != before => format!("  (elections: term {before} -> {now})"),
            _ => String::new(),
        }
    }

    /// A live member that is not the leader.
    async fn follower(&self) -> Result<usize> {
        let leader = self.leader().await?;
        self.managers
            .members
            .iter()
            .enumerate()
            .position(|(i, m)| i != leader && m.live())
            .context("no live follower")
    }

    /// Writes new nodes through member `i`'s store; IDs carry `tag`, the client and sequence.
    fn writer(
        &self,
        i: usize,
        tag: &str,
    ) -> impl Fn(usize, u64) -> std::pin::Pin<Box<dyn Future<Output = Result<String>> + Send>>
           + Send
           + Sync
           + 'static {
        let manager = self.managers.members[i].manager.clone();
        let tag = tag.to_string();
        move |c, seq| {
            let manager = manager.clone();
            let id = format!("{tag}-{c}-{seq}");
            Box::pin(async move {
                let node = Node { id: id.clone(), hostname: random_value(), ..Default::default() };
                manager.store().update(|tx| tx.create(node.clone())).await?;
                Ok(id)
            })
        }
    }

    /// Kills the leader and returns the time until a survivor commits a write.
    async fn failover(mut self, tag: &str) -> Result<Duration> {
        let leader = self.leader().await?;
        drive(8, Duration::from_millis(500), self.writer(leader, &format!("{tag}w"))).await?;
        let survivor =
            (0..self.managers.members.len()).find(|i| *i != leader).context("no survivor")?;
        let write = self.writer(survivor, tag);
        let killed = Instant::now();
        self.managers.members[leader].kill();
        first_commit_after(killed, "managers", write).await
    }
}

/// Retries single writes (each given up after `FAILOVER_ATTEMPT`) until one commits; returns the
/// time since `killed`.
async fn first_commit_after<F>(killed: Instant, who: &str, write: F) -> Result<Duration>
where
    F: Fn(usize, u64) -> std::pin::Pin<Box<dyn Future<Output = Result<String>> + Send>>,
{
    let mut seq = 0;
    loop {
        seq += 1;
        if let Ok(Ok(_)) = tokio::time::timeout(FAILOVER_ATTEMPT, write(0, seq)).await {
            return Ok(killed.elapsed());
        }
        if killed.elapsed() > FORM_TIMEOUT {
            bail!("the surviving {who} committed nothing within {FORM_TIMEOUT:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Correctness only (no timing): writes through the leader are acknowledged, and every
    /// acknowledged write is readable on all three managers afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shoal_side_acknowledged_writes_are_on_every_manager() {
        shoal_pki::install_crypto_provider();
        let cluster = ShoalCluster::start().await.expect("three managers");
        let leader = cluster.leader().await.unwrap();
        let stats = drive(1, Duration::from_secs(1), cluster.writer(leader, "test")).await.unwrap();
        assert!(stats.writes > 0, "no write succeeded: {:?}", stats.first_error);
        assert_eq!(stats.acked.len(), stats.writes);
        for (i, m) in cluster.managers.members.iter().enumerate() {
            let store = m.manager.store();
            store.barrier().await.unwrap();
            for id in &stats.acked {
                let node = store.get::<Node>(id).unwrap();
                let node = node.unwrap_or_else(|| panic!("manager {i} lacks acknowledged {id}"));
                assert_eq!(node.hostname.len(), VALUE_BYTES);
            }
        }
    }
}
