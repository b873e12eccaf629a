//! Owns `shoal bench raft`: replicated writes through three real managers on loopback (mTLS,
//! fsync'd Raft log) beside a three-member etcd 3.4 cluster running the same workload on the same
//! machine, plus the time from killing the leader to the next committed write.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::Rng;
use shoal_agent::JoinParams;
use shoal_manager::{Identity, InitParams, Manager};
use shoal_pki::{NodeKey, ReloadableCert, Role};
use shoal_proto::Node;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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

/// `shoal bench raft`.
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

/// Runs `shoal bench raft`.
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
        for &n in &clients {
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
            if let Some(e) = &etcd {
                let s = drive(n, duration, e.writer(e.leader().await?).await?).await?;
                report_run(run, n, "etcd", &s, "");
                results.add(Sys::Etcd, n, s);
            }
        }
    }
    drop(shoal);
    drop(etcd);

    let mut shoal_failover = Vec::new();
    let mut etcd_failover = Vec::new();
    if !args.skip_failover {
        for trial in 0..FAILOVERS {
            let cluster = ShoalCluster::start().await?;
            let t = cluster.failover(&format!("fo{trial}")).await?;
            println!("failover {}: shoal leader killed -> next committed write {t:.3?}", trial + 1);
            shoal_failover.push(t);
            if !args.skip_etcd {
                let mut cluster = EtcdCluster::start(&args.etcd).await?;
                let t = cluster.failover().await?;
                println!(
                    "failover {}: etcd leader killed -> next committed write {t:.3?}",
                    trial + 1
                );
                etcd_failover.push(t);
            }
        }
    }

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

/// Sorted copy's `p` quantile (nearest rank); zero for no samples.
fn percentile(v: &[Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = v.to_vec();
    sorted.sort();
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
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

/// One manager with its cluster port, served the way the daemon serves it.
#[derive(Debug)]
struct ShoalMember {
    manager: Manager,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
    killed: bool,
    _dir: tempfile::TempDir,
}

impl ShoalMember {
    /// Stops the manager and its server at once (no draining).
    fn kill(&mut self) {
        if self.killed {
            return;
        }
        self.killed = true;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.manager.stop();
        self.server.abort();
    }
}

impl Drop for ShoalMember {
    fn drop(&mut self) {
        self.kill();
    }
}

fn serve(
    manager: &Manager,
    listener: TcpListener,
    cert: Arc<ReloadableCert>,
) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let m = manager.clone();
    let server = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        if let Err(e) = m.serve_tls(listener, cert, shutdown).await {
            tracing::error!(error = %e, "bench manager stopped serving");
        }
    });
    (stop, server)
}

pub(crate) fn temp_dir(prefix: &str) -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix(prefix).tempdir()?)
}

/// A bench manager before it serves: its store directory, its listener and address.
pub(crate) struct BenchManager {
    pub dir: tempfile::TempDir,
    pub listener: TcpListener,
    pub addr: String,
    pub manager: Manager,
    pub cert: Arc<ReloadableCert>,
}

/// `swarm init` of the first manager of a bench cluster on loopback; returns its identity too.
pub(crate) async fn init_manager(prefix: &str, hostname: &str) -> Result<(BenchManager, Identity)> {
    let dir = temp_dir(prefix)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let key = NodeKey::generate()?;
    let params = InitParams {
        hostname: hostname.into(),
        advertise_addr: addr.clone(),
        cert_expiry: shoal_pki::DEFAULT_CERT_EXPIRY,
        heartbeat: shoal_manager::manager::DEFAULT_HEARTBEAT,
        autolock: false,
        election_timeout: shoal_manager::manager::DEFAULT_ELECTION_TIMEOUT,
        default_addr_pool: Vec::new(),
        subnet_size: 0,
    };
    let (manager, id, _) = Manager::init(&dir.path().join("store"), params, &key).await?;
    let cert = id.cert.clone();
    Ok((BenchManager { dir, listener, addr, manager, cert }, id))
}

/// A manager that joined `first` with the manager `token`, ready to serve and then to join
/// the Raft group (`Manager::join_raft`) once it answers.
pub(crate) async fn join_manager(
    prefix: &str,
    hostname: &str,
    token: &str,
    first: &str,
) -> Result<BenchManager> {
    let dir = temp_dir(prefix)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let params = JoinParams {
        token: token.to_string(),
        remote_addr: first.to_string(),
        hostname: hostname.to_string(),
        advertise_addr: addr.clone(),
    };
    let joined = shoal_agent::join(&params).await.context("manager join")?;
    anyhow::ensure!(joined.role == Role::Manager, "the manager token made a worker");
    let cert = ReloadableCert::new(&joined.cert_chain_pem, &joined.key)?;
    let id = Identity {
        node_id: joined.node_id,
        cluster_id: joined.cluster_id,
        root_ca_pem: joined.root_ca_pem,
        cert: cert.clone(),
        election_timeout: shoal_manager::manager::DEFAULT_ELECTION_TIMEOUT,
    };
    let manager = Manager::prepare_join(&dir.path().join("store"), &id)?;
    Ok(BenchManager { dir, listener, addr, manager, cert })
}

/// Three managers: `swarm init` on the first, a manager-token join for the others.
#[derive(Debug)]
struct ShoalCluster {
    members: Vec<ShoalMember>,
}

impl ShoalCluster {
    async fn start() -> Result<ShoalCluster> {
        let mut cluster = ShoalCluster { members: Vec::new() };
        let (m, _) = init_manager("shoal-bench-raft-", "bench-manager-0").await?;
        let (first, token) = (m.addr.clone(), m.manager.join_token(Role::Manager)?);
        let (stop, server) = serve(&m.manager, m.listener, m.cert);
        let (manager, dir) = (m.manager, m.dir);
        cluster.members.push(ShoalMember {
            manager,
            stop: Some(stop),
            server,
            killed: false,
            _dir: dir,
        });
        for i in 1..MEMBERS {
            let hostname = format!("bench-manager-{i}");
            let m = join_manager("shoal-bench-raft-", &hostname, &token, &first).await?;
            let (stop, server) = serve(&m.manager, m.listener, m.cert);
            cluster.members.push(ShoalMember {
                manager: m.manager.clone(),
                stop: Some(stop),
                server,
                killed: false,
                _dir: m.dir,
            });
            m.manager.join_raft(&first, &m.addr).await.context("joining the raft group")?;
        }
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            let i = cluster.leader().await?;
            if cluster.members[i].manager.raft().status().voters.len() == MEMBERS {
                break;
            }
            if Instant::now() > deadline {
                bail!("the managers did not form a {MEMBERS}-voter group in time");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(cluster)
    }

    /// The index of the live leader (waits for one).
    async fn leader(&self) -> Result<usize> {
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            let found =
                self.members.iter().position(|m| !m.killed && m.manager.raft().status().is_leader);
            if let Some(i) = found {
                return Ok(i);
            }
            if Instant::now() > deadline {
                bail!("no shoal manager became leader");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The highest Raft term a live member knows.
    fn term(&self) -> u64 {
        let live = self.members.iter().filter(|m| !m.killed);
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
        self.members
            .iter()
            .enumerate()
            .position(|(i, m)| i != leader && !m.killed)
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
        let manager = self.members[i].manager.clone();
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
        let survivor = (0..self.members.len()).find(|i| *i != leader).context("no survivor")?;
        let write = self.writer(survivor, tag);
        let killed = Instant::now();
        self.members[leader].kill();
        first_commit_after(killed, "managers", write).await
    }
}

// ---------------------------------------------------------------------------------------------
// etcd: three processes, peer and client mTLS, and a hand-written KV.Put client

/// The few etcd v3 API messages the benchmark uses (field numbers as in etcd's rpc.proto).
mod etcdpb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResponseHeader {
        #[prost(uint64, tag = "1")]
        pub cluster_id: u64,
        #[prost(uint64, tag = "2")]
        pub member_id: u64,
        #[prost(int64, tag = "3")]
        pub revision: i64,
        #[prost(uint64, tag = "4")]
        pub raft_term: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatusRequest {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatusResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(string, tag = "2")]
        pub version: String,
        #[prost(uint64, tag = "4")]
        pub leader: u64,
    }
}

/// A gRPC client of etcd's `KV.Put` and `Maintenance.Status`.
#[derive(Clone, Debug)]
struct EtcdClient {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl EtcdClient {
    async fn connect(url: &str, tls: &EtcdTls) -> Result<EtcdClient> {
        let config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca))
            .identity(tonic::transport::Identity::from_pem(&tls.client_cert, &tls.client_key))
            .domain_name("localhost");
        let channel = tonic::transport::Endpoint::from_shared(url.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .tls_config(config)?
            .connect()
            .await
            .with_context(|| format!("connecting to etcd at {url}"))?;
        Ok(EtcdClient { grpc: tonic::client::Grpc::new(channel) })
    }

    async fn unary<Req, Resp>(&mut self, path: &'static str, req: Req) -> Result<Resp>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc.ready().await.map_err(|e| anyhow::anyhow!("etcd connection: {e}"))?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        let resp = self.grpc.unary(tonic::Request::new(req), path, codec).await?;
        Ok(resp.into_inner())
    }

    async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<etcdpb::PutResponse> {
        self.unary("/etcdserverpb.KV/Put", etcdpb::PutRequest { key, value }).await
    }

    async fn status(&mut self) -> Result<etcdpb::StatusResponse> {
        self.unary("/etcdserverpb.Maintenance/Status", etcdpb::StatusRequest {}).await
    }
}

/// PEM files of the etcd cluster's private CA.
#[derive(Debug, Clone)]
struct EtcdTls {
    ca: String,
    client_cert: String,
    client_key: String,
}

/// Makes a CA and one certificate (server and client use, SANs localhost and 127.0.0.1) for the
/// members, one for the benchmark's client, and writes them under `dir`.
fn make_etcd_certs(dir: &Path) -> Result<EtcdTls> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name.push(DnType::CommonName, "shoal bench etcd CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |cn: &str| -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (member_cert, member_key) = leaf("etcd-member")?;
    let (client_cert, client_key) = leaf("bench-client")?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    std::fs::write(dir.join("member.pem"), member_cert)?;
    std::fs::write(dir.join("member-key.pem"), member_key)?;
    Ok(EtcdTls { ca: ca_cert.pem(), client_cert, client_key })
}

#[derive(Debug)]
struct EtcdMember {
    client_url: String,
    child: Option<Child>,
    log: PathBuf,
}

/// Three etcd processes in one temp dir; killed (and the dir removed) when dropped.
#[derive(Debug)]
struct EtcdCluster {
    members: Vec<EtcdMember>,
    tls: EtcdTls,
    keys: Arc<AtomicU64>,
    _dir: tempfile::TempDir,
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Free loopback ports (held until all are chosen, so they differ).
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
    Ok(listeners.iter().map(|l| l.local_addr().map(|a| a.port())).collect::<Result<_, _>>()?)
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

impl EtcdCluster {
    async fn start(binary: &Path) -> Result<EtcdCluster> {
        let dir = temp_dir("shoal-bench-etcd-")?;
        let tls = make_etcd_certs(dir.path())?;
        let ports = free_ports(2 * MEMBERS)?;
        let peer_url = |i: usize| format!("https://127.0.0.1:{}", ports[2 * i + 1]);
        let initial: Vec<String> = (0..MEMBERS).map(|i| format!("m{i}={}", peer_url(i))).collect();
        let mut cluster =
            EtcdCluster { members: Vec::new(), tls, keys: Arc::new(AtomicU64::new(0)), _dir: dir };
        let root = cluster._dir.path().to_path_buf();
        let file = |name: &str| root.join(name).display().to_string();
        for i in 0..MEMBERS {
            let client_url = format!("https://127.0.0.1:{}", ports[2 * i]);
            let log = root.join(format!("m{i}.log"));
            let out = std::fs::File::create(&log)?;
            let child = Command::new(binary)
                .args(["--name", &format!("m{i}")])
                .args(["--data-dir", &file(&format!("m{i}.etcd"))])
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url(i)])
                .args(["--initial-advertise-peer-urls", &peer_url(i)])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "shoal-bench"])
                .args(["--cert-file", &file("member.pem"), "--key-file", &file("member-key.pem")])
                .args(["--trusted-ca-file", &file("ca.pem"), "--client-cert-auth"])
                .args(["--peer-cert-file", &file("member.pem")])
                .args(["--peer-key-file", &file("member-key.pem")])
                .args(["--peer-trusted-ca-file", &file("ca.pem"), "--peer-client-cert-auth"])
                .args(["--logger", "zap", "--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .with_context(|| {
                    format!(
                        "running {}: install Debian's etcd-server (apt-get install etcd-server) \
                         or pass --etcd PATH, or --skip-etcd",
                        binary.display()
                    )
                })?;
            cluster.members.push(EtcdMember { client_url, child: Some(child), log });
        }
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            for m in &mut cluster.members {
                if let Some(status) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    bail!("etcd exited ({status}): {}", log_tail(&m.log));
                }
            }
            if cluster.leader().await.is_ok() {
                return Ok(cluster);
            }
            if Instant::now() > deadline {
                let tails: Vec<String> = cluster.members.iter().map(|m| log_tail(&m.log)).collect();
                bail!("the etcd cluster did not elect a leader in time:\n{}", tails.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn version(&self) -> Result<String> {
        let mut c = EtcdClient::connect(&self.members[0].client_url, &self.tls).await?;
        Ok(c.status().await?.version)
    }

    /// The index of the member that is leader, as the live members report.
    async fn leader(&self) -> Result<usize> {
        let mut ids = Vec::new();
        let mut leader = 0;
        for m in &self.members {
            if m.child.is_none() {
                ids.push(None);
                continue;
            }
            let status = match EtcdClient::connect(&m.client_url, &self.tls).await {
                Ok(mut c) => tokio::time::timeout(Duration::from_secs(1), c.status()).await,
                Err(e) => return Err(e),
            };
            let status = status.context("etcd status timed out")??;
            ids.push(status.header.map(|h| h.member_id));
            leader = leader.max(status.leader);
        }
        if leader == 0 {
            bail!("etcd has no leader yet");
        }
        ids.iter().position(|id| *id == Some(leader)).context("the etcd leader is not known")
    }

    /// Puts 8-byte keys with {VALUE_BYTES}-byte values through member `i`, all clients sharing
    /// one connection.
    async fn writer(
        &self,
        i: usize,
    ) -> Result<
        impl Fn(usize, u64) -> std::pin::Pin<Box<dyn Future<Output = Result<String>> + Send>>
            + Send
            + Sync
            + 'static,
    > {
        let client = EtcdClient::connect(&self.members[i].client_url, &self.tls).await?;
        let keys = self.keys.clone();
        Ok(move |_c: usize, _seq: u64| {
            let mut client = client.clone();
            let key = format!("{:08x}", keys.fetch_add(1, Ordering::Relaxed));
            Box::pin(async move {
                client.put(key.clone().into_bytes(), random_value().into_bytes()).await?;
                Ok(key)
            }) as std::pin::Pin<Box<dyn Future<Output = Result<String>> + Send>>
        })
    }

    /// Kills the leader (SIGKILL) and returns the time until a survivor commits a Put.
    async fn failover(&mut self) -> Result<Duration> {
        let leader = self.leader().await?;
        drive(8, Duration::from_millis(500), self.writer(leader).await?).await?;
        let survivor = (0..self.members.len()).find(|i| *i != leader).context("no survivor")?;
        let write = self.writer(survivor).await?;
        let killed = Instant::now();
        if let Some(mut child) = self.members[leader].child.take() {
            child.kill()?;
            child.wait()?;
        }
        first_commit_after(killed, "etcd members", write).await
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
        for (i, m) in cluster.members.iter().enumerate() {
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
