//! `shoal-bench e2e`: how fast services reach their replica count on three managers with 1,000
//! simulated agents that speak the real protocol (see [`crate::sim_agents`]), all in this
//! process.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shoal::cli::client;
use shoal_manager::Manager;
use shoal_proto::control_client::ControlClient;
use shoal_proto::*;
use shoal_testkit::managers::{Managers, Serve};
use tonic::transport::Channel;

use crate::common::{load_note, median, wait_for};
use crate::convergence::sleep_service;
use crate::sim_agents::{SimAgents, SimStats};

/// `shoal-bench e2e`.
#[derive(Debug, clap::Args)]
pub struct E2eArgs {
    /// Managers (in-process, mTLS on loopback)
    #[arg(long, default_value_t = 3)]
    pub managers: usize,
    /// Simulated agents (one process; each its own key, certificate and connection)
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    /// Services created at once
    #[arg(long, default_value_t = 100)]
    pub services: usize,
    /// Replicas of each service
    #[arg(long, default_value_t = 100)]
    pub replicas: u64,
    /// Runs; medians are reported
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Joins in flight at once while the agents join
    #[arg(long, default_value_t = 64)]
    pub join_concurrency: usize,
    /// Seconds one run may take before it is given up
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

/// Nomad's C1M (2016): one million containers on 5,000 hosts, ~3,750 placements/s. Published,
/// not run here.
const NOMAD_C1M_TASKS_PER_S: f64 = 3_750.0;
/// The goal for submit -> ASSIGNED.
const GOAL_TASKS_PER_S: f64 = 5_000.0;
/// How long the managers may take to form and the agents to join and open sessions.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(120);

/// Reads one milestone of a run.
type Milestone = fn(&E2eRun) -> Duration;

/// What one e2e run measured, from the first CreateService call.
#[derive(Debug, Clone, Copy)]
struct E2eRun {
    submitted: Duration,
    created: Duration,
    assigned: Duration,
    seen: Duration,
    running: Duration,
}

pub(crate) async fn e2e(args: E2eArgs) -> Result<()> {
    let total = args.services as u64 * args.replicas;
    anyhow::ensure!(args.managers >= 1 && args.agents >= 1 && total >= 1, "nothing to measure");
    if let Ok(filter) = std::env::var("RUST_LOG") {
        // The managers' own logs (elections, nodes marked down), for looking into odd numbers.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
    raise_nofile(2 * args.agents + 1024).await?;
    println!("starting {} managers (in-process, Raft over mTLS on loopback)...", args.managers);
    let cluster = Managers::start(args.managers, "bench-e2e", Serve::Full, SETUP_TIMEOUT)
        .await
        .context("starting the managers")?;
    let tracker = TaskTracker::spawn(observer(&cluster));
    let start = Instant::now();
    let agents = SimAgents::start(&cluster, args.agents, args.join_concurrency.max(1)).await?;
    println!(
        "{} simulated agents joined and in session in {:.2} s",
        args.agents,
        start.elapsed().as_secs_f64()
    );
    let mut control = cluster.control().await?;
    let limit = Duration::from_secs(args.timeout.max(10));
    let mut results = Vec::new();
    for run in 0..args.runs.max(1) {
        let (before, lagged) = (health(&cluster, &agents.stats), tracker.lagged());
        let r = e2e_run(&mut control, &tracker, &agents, &args, run, limit).await;
        health(&cluster, &agents.stats).note_changes(&before);
        if tracker.lagged() > lagged {
            println!(
                "  note: the leader's store change feed dropped events {} times during the run \
                 (seen by this bench's own watcher, which then rescanned the store)",
                tracker.lagged() - lagged
            );
        }
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                println!("run {}: failed: {e:#}", run + 1);
                println!("  agents: {}", agents.stats.summary());
                break;
            }
        };
        println!(
            "run {}: submitted {:.3} s; all {total} created {:.3} s; ASSIGNED {:.3} s ({:.0} \
             tasks/s); seen by agents {:.3} s; RUNNING {:.3} s ({:.0} tasks/s)",
            run + 1,
            r.submitted.as_secs_f64(),
            r.created.as_secs_f64(),
            r.assigned.as_secs_f64(),
            total as f64 / r.assigned.as_secs_f64(),
            r.seen.as_secs_f64(),
            r.running.as_secs_f64(),
            total as f64 / r.running.as_secs_f64(),
        );
        results.push(r);
        if let Err(e) = remove_run(&mut control, &tracker, &args, run, limit).await {
            println!("run {}: removing its services failed: {e:#}; no further runs", run + 1);
            break;
        }
    }
    agents.stop();
    print_e2e(&args, &results, &agents.stats);
    println!("  ({})", load_note());
    // Let the agents' connections close before the managers go, so the last reference to each
    // store is not dropped while the runtime shuts down (sled's flush on drop once hung there).
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(cluster);
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

fn run_prefix(run: usize) -> String {
    format!("e2e-r{run}-")
}

async fn e2e_run(
    control: &mut ControlClient<Channel>,
    tracker: &TaskTracker,
    agents: &SimAgents,
    args: &E2eArgs,
    run: usize,
    limit: Duration,
) -> Result<E2eRun> {
    let total = args.services as u64 * args.replicas;
    let seen_before = agents.stats.seen.load(Ordering::Relaxed) as u64;
    let start = Instant::now();
    let mut calls = Vec::with_capacity(args.services);
    for i in 0..args.services {
        let spec = sleep_service(&format!("{}s{i}", run_prefix(run)), "busybox:e2e", args.replicas);
        let mut control = control.clone();
        calls.push(tokio::spawn(async move {
            control
                .create_service(CreateServiceRequest { spec: Some(spec), ..Default::default() })
                .await
        }));
    }
    for call in calls {
        call.await?.map_err(client::status).context("CreateService")?;
    }
    let submitted = start.elapsed();
    // When all tasks were created (any state), ASSIGNED, seen by agents, and RUNNING.
    let mut at: [Option<Duration>; 4] = [None; 4];
    let deadline = start + limit;
    while at.iter().any(Option::is_none) {
        let c = tracker.counts(run);
        let seen = agents.stats.seen.load(Ordering::Relaxed) as u64 - seen_before;
        for (slot, count) in at.iter_mut().zip([c.created, c.assigned, seen, c.running]) {
            if count >= total && slot.is_none() {
                *slot = Some(start.elapsed());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "after {limit:?}: of {total} tasks, {} created, {} ASSIGNED, {seen} seen by \
                 agents, {} RUNNING",
                c.created,
                c.assigned,
                c.running
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let listed = control.list_services(ListServicesRequest {}).await.map_err(client::status)?;
    let prefix = run_prefix(run);
    let running_listed: u64 = listed
        .into_inner()
        .services
        .iter()
        .filter(|s| {
            s.service
                .as_ref()
                .is_some_and(|s| s.spec.as_ref().is_some_and(|p| p.name.starts_with(&prefix)))
        })
        .map(|s| s.running)
        .sum();
    if running_listed != total {
        println!("  note: ListServices reports {running_listed} of {total} running");
    }
    let [created, assigned, seen, running] = at.map(Option::unwrap_or_default);
    Ok(E2eRun { submitted, created, assigned, seen, running })
}

/// Removes the run's services and waits until their tasks are gone from the store.
async fn remove_run(
    control: &mut ControlClient<Channel>,
    tracker: &TaskTracker,
    args: &E2eArgs,
    run: usize,
    limit: Duration,
) -> Result<()> {
    let start = Instant::now();
    for i in 0..args.services {
        let reference = format!("{}s{i}", run_prefix(run));
        control.remove_service(RemoveServiceRequest { reference }).await.map_err(client::status)?;
    }
    wait_for("the removed services' tasks to go", limit, Duration::from_millis(20), || async {
        Ok((tracker.live(run) == 0).then_some(()))
    })
    .await?;
    println!(
        "  removed {} services and their tasks in {:.2} s",
        args.services,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn print_e2e(args: &E2eArgs, results: &[E2eRun], stats: &SimStats) {
    let total = args.services as u64 * args.replicas;
    println!();
    println!(
        "e2e: {} managers (in-process, Raft over gRPC mTLS on loopback, fsync on), {} simulated \
         agents in this process (each its own key, certificate and TLS connection; session, \
         heartbeats, assignments stream; reports ACCEPTED then RUNNING, batched per agent); {} \
         services x {} replicas = {total} tasks created at once through the Control API; medians \
         of {} runs; ASSIGNED and RUNNING are counted as the leader applies them (committed)",
        args.managers,
        args.agents,
        args.services,
        args.replicas,
        results.len()
    );
    if results.is_empty() {
        println!("  no run completed; agents: {}", stats.summary());
        return;
    }
    let med =
        |f: fn(&E2eRun) -> Duration| median(results.iter().map(|r| f(r).as_secs_f64()).collect());
    let rate = |s: f64| total as f64 / s;
    let assigned = med(|r| r.assigned);
    println!("  {:<44} {:>9} {:>12}", "", "seconds", "tasks/s");
    println!("  {:<44} {:>9.3}", "submit (all CreateService calls answered)", med(|r| r.submitted));
    let rows: [(&str, Milestone); 4] = [
        ("submit -> all tasks created (any state)", |r| r.created),
        ("submit -> all ASSIGNED (shoal)", |r| r.assigned),
        ("submit -> all seen by agents", |r| r.seen),
        ("submit -> all RUNNING", |r| r.running),
    ];
    for (what, f) in rows {
        println!("  {what:<44} {:>9.3} {:>12.0}", med(f), rate(med(f)));
    }
    println!(
        "  {:<44} {:>9} {:>12.0}",
        "Nomad C1M (published, not run here)", "", NOMAD_C1M_TASKS_PER_S
    );
    println!(
        "  shoal / Nomad C1M (to ASSIGNED): {:.2}x; goal >= {GOAL_TASKS_PER_S:.0} tasks/s: {}",
        rate(assigned) / NOMAD_C1M_TASKS_PER_S,
        if rate(assigned) >= GOAL_TASKS_PER_S { "met" } else { "NOT met" }
    );
    println!("  agents: {}", stats.summary());
}

/// Raises the soft open-files limit to the hard one (with util-linux `prlimit`) when below
/// `need`: every agent holds a connection, and the managers in this process hold the other end.
async fn raise_nofile(need: usize) -> Result<()> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap_or_default();
    let nums: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    let (soft, hard) = match nums.as_slice() {
        [soft, hard, ..] => (*soft, *hard),
        _ => return Ok(()),
    };
    if soft >= need as u64 {
        return Ok(());
    }
    if hard < need as u64 {
        bail!("this needs about {need} open files, the hard limit is {hard}: raise it (ulimit -Hn) or use fewer --agents");
    }
    let pid = std::process::id().to_string();
    let limit = format!("--nofile={hard}:{hard}");
    let ok = tokio::process::Command::new("prlimit").args(["--pid", &pid, &limit]).status().await;
    anyhow::ensure!(
        ok.is_ok_and(|s| s.success()),
        "the open-files limit is {soft} and prlimit could not raise it; run `ulimit -n {need}` first"
    );
    Ok(())
}

// --- the managers --------------------------------------------------------------------------------

/// The leader: its store applies an entry once a quorum has it, so what it shows is committed,
/// with no follower's lag added.
fn observer(cluster: &Managers) -> Manager {
    cluster.members[cluster.leader().unwrap_or(0)].manager.clone()
}

/// The Raft term, workers not Ready, and agent errors: what should not change under load.
fn health(cluster: &Managers, stats: &SimStats) -> Health {
    let term = cluster.members.iter().map(|m| m.manager.raft().status().term).max();
    let workers =
        cluster.leader().and_then(|l| cluster.members[l].manager.store().list::<Node>().ok());
    let not_ready = workers
        .unwrap_or_default()
        .iter()
        .filter(|n| n.role() == NodeRole::Worker && n.state() != NodeState::Ready)
        .count();
    Health {
        term: term.unwrap_or(0),
        not_ready,
        errors: stats.errors.load(Ordering::Relaxed),
        sessions: stats.sessions.load(Ordering::Relaxed),
    }
}

/// Workers the leader shows Ready.
pub(crate) fn ready_workers(cluster: &Managers) -> Result<usize> {
    let leader = cluster.leader().context("no manager is leader")?;
    let nodes = cluster.members[leader].manager.store().list::<Node>()?;
    Ok(nodes
        .iter()
        .filter(|n| n.role() == NodeRole::Worker && n.state() == NodeState::Ready)
        .count())
}

/// See [`health`].
#[derive(Debug, Clone, Copy)]
struct Health {
    term: u64,
    not_ready: usize,
    errors: usize,
    sessions: usize,
}

impl Health {
    /// Prints what changed since `before` (elections, nodes down, sessions reopened).
    fn note_changes(&self, before: &Health) {
        if self.term != before.term {
            println!("  note: elections during the run: term {} -> {}", before.term, self.term);
        }
        if self.not_ready > 0 {
            println!("  note: {} workers not Ready after the run", self.not_ready);
        }
        if self.errors != before.errors || self.sessions != before.sessions {
            println!(
                "  note: {} agent errors and {} sessions reopened during the run",
                self.errors - before.errors,
                self.sessions - before.sessions
            );
        }
    }
}

// --- counting committed task states ------------------------------------------------------------

#[derive(Debug, Default)]
struct Tracked {
    /// Task ID -> (run, highest state seen).
    tasks: HashMap<String, (usize, i32)>,
    /// Per run: tasks seen at all, at ASSIGNED or later, and at RUNNING or later.
    created: HashMap<usize, u64>,
    assigned: HashMap<usize, u64>,
    running: HashMap<usize, u64>,
    lagged: u64,
}

impl Tracked {
    fn apply(&mut self, task: &Task) {
        let Some(run) = task_run(task) else { return };
        let state = task.status.as_ref().map(|s| s.state).unwrap_or(0);
        let before = self.tasks.get(&task.id).map(|t| t.1).unwrap_or(-1);
        if state <= before {
            return;
        }
        self.tasks.insert(task.id.clone(), (run, state));
        if before < 0 {
            *self.created.entry(run).or_default() += 1;
        }
        let crossed = |level: TaskState| before < level as i32 && state >= level as i32;
        if crossed(TaskState::Assigned) {
            *self.assigned.entry(run).or_default() += 1;
        }
        if crossed(TaskState::Running) {
            *self.running.entry(run).or_default() += 1;
        }
    }
}

/// Tasks of one run that reached each point.
#[derive(Debug, Clone, Copy)]
struct Counts {
    created: u64,
    assigned: u64,
    running: u64,
}

/// The run a task belongs to, from its service's name.
fn task_run(task: &Task) -> Option<usize> {
    let rest = task.service_name.strip_prefix("e2e-r")?;
    rest.split('-').next()?.parse().ok()
}

/// Follows one manager's store and counts, per run, the tasks committed at ASSIGNED and at
/// RUNNING. Reads only what that manager has applied.
#[derive(Debug, Clone)]
struct TaskTracker {
    state: Arc<Mutex<Tracked>>,
}

impl TaskTracker {
    fn spawn(manager: Manager) -> TaskTracker {
        let state = Arc::new(Mutex::new(Tracked::default()));
        let weak = Arc::downgrade(&state);
        let mut events = manager.store().watch();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let event = events.recv().await;
                let Some(state) = weak.upgrade() else { return };
                match event {
                    Ok(e) if e.kind == "task" => {
                        let task = manager.store().get::<Task>(&e.id).ok().flatten();
                        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                        match task {
                            Some(t) if !e.deleted => s.apply(&t),
                            _ => {
                                s.tasks.remove(&e.id);
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => {
                        let all = manager.store().list::<Task>().unwrap_or_default();
                        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                        s.lagged += 1;
                        let ids: std::collections::HashSet<&str> =
                            all.iter().map(|t| t.id.as_str()).collect();
                        s.tasks.retain(|id, _| ids.contains(id.as_str()));
                        for t in &all {
                            s.apply(t);
                        }
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        TaskTracker { state }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tracked> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many of `run`'s tasks reached each point.
    fn counts(&self, run: usize) -> Counts {
        let s = self.lock();
        let get = |m: &HashMap<usize, u64>| m.get(&run).copied().unwrap_or(0);
        Counts { created: get(&s.created), assigned: get(&s.assigned), running: get(&s.running) }
    }

    /// How often the change feed dropped events for this watcher.
    fn lagged(&self) -> u64 {
        self.lock().lagged
    }

    /// Tasks of `run` still in the store.
    fn live(&self, run: usize) -> usize {
        self.lock().tasks.values().filter(|(r, _)| *r == run).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, service: &str, state: TaskState) -> Task {
        Task {
            id: id.into(),
            service_name: service.into(),
            status: Some(TaskStatus { state: state as i32, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn each_task_counts_once_per_milestone_of_its_run() {
        let mut t = Tracked::default();
        t.apply(&task("a", "e2e-r0-s1", TaskState::Assigned));
        t.apply(&task("a", "e2e-r0-s1", TaskState::Assigned));
        t.apply(&task("a", "e2e-r0-s1", TaskState::Running));
        t.apply(&task("a", "e2e-r0-s1", TaskState::Accepted));
        t.apply(&task("b", "e2e-r1-s0", TaskState::Running));
        t.apply(&task("c", "someone-else", TaskState::Running));
        assert_eq!((t.created[&0], t.assigned[&0], t.running[&0]), (1, 1, 1));
        assert_eq!((t.created[&1], t.assigned[&1], t.running[&1]), (1, 1, 1));
        assert_eq!(t.tasks.len(), 2, "tasks of other services are not tracked");
    }

    /// The whole e2e path at a small scale: managers, joined agents, services, every task
    /// reported RUNNING, and removal.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_cluster_runs_and_removes_every_task() {
        shoal_pki::install_crypto_provider();
        let args = E2eArgs {
            managers: 3,
            agents: 5,
            services: 2,
            replicas: 5,
            runs: 1,
            join_concurrency: 5,
            timeout: 60,
        };
        let cluster =
            Managers::start(args.managers, "bench-e2e", Serve::Full, SETUP_TIMEOUT).await.unwrap();
        let tracker = TaskTracker::spawn(observer(&cluster));
        let agents = SimAgents::start(&cluster, args.agents, args.join_concurrency).await.unwrap();
        let mut control = cluster.control().await.unwrap();
        let limit = Duration::from_secs(args.timeout);
        let r = e2e_run(&mut control, &tracker, &agents, &args, 0, limit).await.unwrap();
        assert!(r.assigned <= r.running, "{r:?}");
        assert_eq!(tracker.counts(0).running, 10);
        remove_run(&mut control, &tracker, &args, 0, limit).await.unwrap();
        assert_eq!(tracker.live(0), 0);
        agents.stop();
    }
}
