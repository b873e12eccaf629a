//! The e2e benchmark's simulated agents: each a joined node ([`FakeWorker`]) with its own key,
//! certificate and connection, keeping a session, heartbeats and an assignments stream, and
//! reporting every task it is given ACCEPTED then RUNNING. No container runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use shoal_proto::dispatcher_client::DispatcherClient;
use shoal_proto::*;
use shoal_testkit::fake_worker::FakeWorker;
use shoal_testkit::managers::Managers;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::common::wait_for;
use crate::e2e::{ready_workers, SETUP_TIMEOUT};

/// What the simulated agents did, all together.
#[derive(Debug, Default)]
pub(crate) struct SimStats {
    pub(crate) sessions: AtomicUsize,
    /// Tasks first seen with desired state RUNNING.
    pub(crate) seen: AtomicUsize,
    pub(crate) reports: AtomicUsize,
    /// Assignment streams the manager ended and the agent reopened.
    pub(crate) reopened: AtomicUsize,
    pub(crate) errors: AtomicUsize,
    pub(crate) first_error: Mutex<Option<String>>,
}

impl SimStats {
    fn error(&self, e: &anyhow::Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert_with(|| format!("{e:#}"));
    }

    pub(crate) fn summary(&self) -> String {
        let first = self.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        format!(
            "{} sessions opened, {} assignment streams reopened, {} tasks started, {} \
             UpdateTaskStatus calls, {} errors{}",
            self.sessions.load(Ordering::Relaxed),
            self.reopened.load(Ordering::Relaxed),
            self.seen.load(Ordering::Relaxed),
            self.reports.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
            first.map(|e| format!(" (first: {e})")).unwrap_or_default()
        )
    }
}

/// The simulated agents, each a task of this process.
#[derive(Debug)]
pub(crate) struct SimAgents {
    pub(crate) stats: Arc<SimStats>,
    handles: Vec<JoinHandle<()>>,
}

impl SimAgents {
    /// Joins `n` agents with the worker token (`concurrency` at once), starts each one's
    /// session, and waits until the leader shows them all Ready.
    pub(crate) async fn start(
        cluster: &Managers,
        n: usize,
        concurrency: usize,
    ) -> Result<SimAgents> {
        let stats = Arc::new(SimStats::default());
        let addr = cluster.leader_addr()?;
        let gate = Arc::new(Semaphore::new(concurrency));
        let mut joins = Vec::with_capacity(n);
        for i in 0..n {
            let (token, addr, gate) = (cluster.worker_token.clone(), addr.clone(), gate.clone());
            joins.push(tokio::spawn(async move {
                let _permit = gate.acquire_owned().await?;
                let hostname = format!("sim-{i:04}");
                let worker = FakeWorker::join(&addr, &token, &hostname, "").await;
                worker.with_context(|| format!("agent {i} join"))
            }));
        }
        let mut handles = Vec::with_capacity(n);
        for (i, join) in joins.into_iter().enumerate() {
            let agent = SimAgent::new(format!("sim-{i:04}"), join.await??, stats.clone());
            handles.push(tokio::spawn(agent.run()));
        }
        let agents = SimAgents { stats, handles };
        wait_for("the agents to be Ready", SETUP_TIMEOUT, Duration::from_millis(50), || async {
            Ok((ready_workers(cluster)? >= n).then_some(()))
        })
        .await
        .with_context(|| agents.stats.summary())?;
        Ok(agents)
    }

    pub(crate) fn stop(&self) {
        for h in &self.handles {
            h.abort();
        }
    }
}

/// One simulated agent: a joined node's identity and what it has reported per task.
struct SimAgent {
    hostname: String,
    worker: FakeWorker,
    stats: Arc<SimStats>,
    /// Task ID -> the highest state this agent reported (or the manager showed).
    tasks: HashMap<String, i32>,
}

impl SimAgent {
    fn new(hostname: String, worker: FakeWorker, stats: Arc<SimStats>) -> SimAgent {
        SimAgent { hostname, worker, stats, tasks: HashMap::new() }
    }

    /// Keeps a session open, reopening it after a failure.
    async fn run(mut self) {
        loop {
            if let Err(e) = self.session().await {
                self.stats.error(&e);
            }
            let wait = rand::random::<u64>() % 500;
            tokio::time::sleep(Duration::from_millis(100 + wait)).await;
        }
    }

    async fn session(&mut self) -> Result<()> {
        let channel = self.worker.connect().await.map_err(anyhow::Error::msg)?;
        let mut client = DispatcherClient::new(channel);
        let request = SessionRequest {
            hostname: self.hostname.clone(),
            advertise_addr: String::new(),
            description: Some(NodeDescription {
                os: "linux".into(),
                arch: "x86_64".into(),
                nano_cpus: 4_000_000_000,
                memory_bytes: 8 << 30,
                ..Default::default()
            }),
            tunnel_keys: Vec::new(),
            cert_serial: String::new(),
        };
        let mut session = client.session(request).await?.into_inner();
        let first = session.message().await?.context("the manager closed the session")?;
        let session_id = first.session_id;
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        let mut period = Duration::from_millis(first.heartbeat_period_ms.max(50));
        let mut next_beat = tokio::time::Instant::now() + period;
        let req = AssignmentsRequest { session_id: session_id.clone() };
        let mut assignments = client.assignments(req.clone()).await?.into_inner();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next_beat) => {
                    let beat = HeartbeatRequest { session_id: session_id.clone(), ..Default::default() };
                    let resp = client.heartbeat(beat).await?.into_inner();
                    period = Duration::from_millis(resp.period_ms.max(50));
                    next_beat = tokio::time::Instant::now() + period;
                }
                msg = session.message() => {
                    if msg?.is_none() {
                        bail!("the manager closed the session");
                    }
                }
                msg = assignments.message() => match msg {
                    Ok(Some(m)) => self.on_assignments(&mut client, &session_id, m).await?,
                    // A stream the manager ended (it resyncs, or the node fell behind):
                    // reopen it; the full set comes again.
                    Ok(None) | Err(_) => {
                        self.stats.reopened.fetch_add(1, Ordering::Relaxed);
                        assignments = client.assignments(req.clone()).await?.into_inner();
                    }
                },
            }
        }
    }

    /// Starts every new task whose desired state is RUNNING (ACCEPTED, then RUNNING, each for
    /// the whole batch) and stops those whose desired state is past it.
    async fn on_assignments(
        &mut self,
        client: &mut DispatcherClient<Channel>,
        session_id: &str,
        msg: AssignmentsMessage,
    ) -> Result<()> {
        if msg.complete {
            let ids: std::collections::HashSet<&str> =
                msg.tasks.iter().map(|t| t.id.as_str()).collect();
            self.tasks.retain(|id, _| ids.contains(id.as_str()));
        }
        for id in &msg.removed {
            self.tasks.remove(id);
        }
        let (mut start, mut stop) = (Vec::new(), Vec::new());
        for t in &msg.tasks {
            let shown = t.status.as_ref().map(|s| s.state).unwrap_or(0);
            let known = self.tasks.entry(t.id.clone()).or_insert(shown);
            *known = (*known).max(shown);
            let desired = t.desired_state;
            if desired <= TaskState::Running as i32 && *known < TaskState::Accepted as i32 {
                start.push(t.id.clone());
            } else if desired >= TaskState::Shutdown as i32 && *known < TaskState::Complete as i32 {
                stop.push(t.id.clone());
            }
        }
        for id in &start {
            self.tasks.insert(id.clone(), TaskState::Running as i32);
        }
        for id in &stop {
            self.tasks.insert(id.clone(), TaskState::Shutdown as i32);
        }
        self.stats.seen.fetch_add(start.len(), Ordering::Relaxed);
        // Reports go out beside the loop, as a real agent's do, so heartbeats and further
        // assignments are never held up behind a status write.
        let (mut client, session_id, stats) =
            (client.clone(), session_id.to_string(), self.stats.clone());
        tokio::spawn(async move {
            let steps = [
                (&start, TaskState::Accepted),
                (&start, TaskState::Running),
                (&stop, TaskState::Shutdown),
            ];
            for (ids, state) in steps {
                if ids.is_empty() {
                    continue;
                }
                if let Err(e) = report(&mut client, &session_id, ids, state, &stats).await {
                    stats.error(&e);
                    return;
                }
            }
        });
        Ok(())
    }
}

/// Sends one UpdateTaskStatus with `state` for every task in `ids`.
async fn report(
    client: &mut DispatcherClient<Channel>,
    session_id: &str,
    ids: &[String],
    state: TaskState,
    stats: &SimStats,
) -> Result<()> {
    let now = shoal_proto::time::now_ms();
    let updates = ids
        .iter()
        .map(|id| TaskStatusUpdate {
            task_id: id.clone(),
            status: Some(TaskStatus {
                state: state as i32,
                timestamp_ms: now,
                ..Default::default()
            }),
        })
        .collect();
    let req = UpdateTaskStatusRequest { session_id: session_id.to_string(), updates };
    client.update_task_status(req).await.with_context(|| format!("UpdateTaskStatus {state:?}"))?;
    stats.reports.fetch_add(1, Ordering::Relaxed);
    Ok(())
}
