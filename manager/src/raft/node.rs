//! Owns the Raft state machine driver: one task owns `RawNode` and runs tick, step, propose,
//! Ready → persist → send → apply → advance. Everyone else talks to it through [`RaftHandle`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, Entry, EntryType, Message};
use raft::{RawNode, SnapshotStatus, StateRole};
use shoal_proto::{Member, StoreBatch};
use tokio::sync::{mpsc, oneshot, watch};

use crate::raft::storage::LogStorage;
use crate::store::{BoxFuture, Outcome, Proposer, Store, StoreError};

/// How long a proposal may wait for its commit.
const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request waits for a leader to be elected before it is refused.
const NO_LEADER_WAIT: Duration = Duration::from_secs(3);
/// How long requests in flight during a leadership change may still wait.
const LEADER_CHANGE_GRACE: Duration = Duration::from_secs(2);
/// Commands handled per loop turn before the next Ready (batching).
const BATCH: usize = 4096;

/// Tunables of a Raft member.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    pub id: u64,
    pub tick: Duration,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Compact the log once this many entries are applied past the last compaction.
    pub snapshot_interval: u64,
    /// Entries kept behind the applied index for slow followers.
    pub keep_entries: u64,
}

impl RaftConfig {
    /// Defaults: 50 ms ticks, elections after 0.5–1 s of silence.
    pub fn new(id: u64) -> RaftConfig {
        RaftConfig {
            id,
            tick: Duration::from_millis(50),
            election_ticks: 10,
            heartbeat_ticks: 1,
            snapshot_interval: 10_000,
            keep_entries: 500,
        }
    }
}

/// Sends Raft messages to peers; never blocks.
pub trait Transport: Send + Sync + std::fmt::Debug {
    fn send(&self, msgs: Vec<Message>);
}

/// What a member currently knows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftStatus {
    pub id: u64,
    pub leader: u64,
    pub term: u64,
    pub applied: u64,
    pub is_leader: bool,
    pub voters: Vec<u64>,
    pub failed: Option<String>,
}

enum Command {
    Propose { data: Vec<u8>, reply: oneshot::Sender<Result<Outcome, StoreError>> },
    Step(Box<Message>),
    ReadIndex { reply: oneshot::Sender<Result<u64, StoreError>> },
    ChangeMember { cc: ConfChange, reply: oneshot::Sender<Result<(), StoreError>> },
    Unreachable(u64),
    Snapshot(u64, bool),
    Campaign,
    Stop,
}

/// A handle to the Raft task. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RaftHandle {
    tx: mpsc::Sender<Command>,
    status: watch::Receiver<RaftStatus>,
}

fn stopped() -> StoreError {
    StoreError::Unavailable("this manager's raft member has stopped".into())
}

impl RaftHandle {
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| stopped())?;
        match tokio::time::timeout(PROPOSAL_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(stopped()),
            Err(_) => Err(StoreError::Unavailable(
                "timed out waiting for the managers to commit; is a quorum of managers up?".into(),
            )),
        }
    }

    /// Delivers a message from a peer.
    pub fn step(&self, msg: Message) {
        let _ = self.tx.try_send(Command::Step(Box::new(msg)));
    }

    /// Reports a peer that could not be reached.
    pub fn unreachable(&self, id: u64) {
        let _ = self.tx.try_send(Command::Unreachable(id));
    }

    /// Reports how sending a snapshot to a peer went.
    pub fn snapshot_sent(&self, id: u64, ok: bool) {
        let _ = self.tx.try_send(Command::Snapshot(id, ok));
    }

    /// Stops the member (its task ends and releases the store).
    pub fn stop(&self) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(Command::Stop).await;
        });
    }

    /// Starts an election now (a new single-member cluster).
    pub fn campaign(&self) {
        let _ = self.tx.try_send(Command::Campaign);
    }

    /// Adds or removes a member; resolves once the change is applied here.
    pub async fn change_member(&self, cc: ConfChange) -> Result<(), StoreError> {
        self.call(|reply| Command::ChangeMember { cc, reply }).await
    }

    /// The current status.
    pub fn status(&self) -> RaftStatus {
        self.status.borrow().clone()
    }

    /// A receiver of status changes.
    pub fn watch(&self) -> watch::Receiver<RaftStatus> {
        self.status.clone()
    }

    /// Waits until a leader is known (or `timeout`).
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64, StoreError> {
        let mut rx = self.status.clone();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|s| s.leader != 0)).await;
        match waited {
            Ok(Ok(s)) => Ok(s.leader),
            _ => Err(StoreError::Unavailable(
                "the swarm does not have a leader: too few managers may be online".into(),
            )),
        }
    }
}

impl Proposer for RaftHandle {
    fn propose(&self, batch: Vec<u8>) -> BoxFuture<'_, Result<Outcome, StoreError>> {
        Box::pin(self.call(|reply| Command::Propose { data: batch, reply }))
    }

    fn barrier(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let index = self.call(|reply| Command::ReadIndex { reply }).await?;
            let mut rx = self.status.clone();
            let reached = rx.wait_for(|s| s.applied >= index || s.failed.is_some());
            let ok = match tokio::time::timeout(PROPOSAL_TIMEOUT, reached).await {
                Ok(Ok(s)) => s.failed.is_none(),
                _ => false,
            };
            if ok {
                Ok(())
            } else {
                Err(stopped())
            }
        })
    }
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

struct Driver {
    raw: RawNode<LogStorage>,
    store: Arc<Store>,
    transport: Arc<dyn Transport>,
    cfg: RaftConfig,
    /// Proposals in flight: deadline, who waits, and the batch (to propose again to a new
    /// leader; a batch's preconditions make a second copy a harmless no-op).
    proposals: HashMap<u64, (Instant, Reply<Outcome>, Vec<u8>)>,
    /// The term in which in-flight proposals were last (re)proposed.
    proposed_term: u64,
    reads: HashMap<u64, (Instant, Reply<u64>)>,
    members: HashMap<u64, (Instant, Reply<()>)>,
    /// Commands that need a leader, held while an election is under way.
    waiting: Vec<(Instant, Command)>,
    last_term: u64,
    status: watch::Sender<RaftStatus>,
}

/// Starts the Raft task for member `cfg.id` over `storage`, applying to `store`.
pub fn spawn(
    cfg: RaftConfig,
    storage: LogStorage,
    store: Arc<Store>,
    transport: Arc<dyn Transport>,
) -> Result<RaftHandle, StoreError> {
    let config = raft::Config {
        id: cfg.id,
        election_tick: cfg.election_ticks,
        heartbeat_tick: cfg.heartbeat_ticks,
        applied: store.version(),
        pre_vote: true,
        check_quorum: true,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        ..Default::default()
    };
    config
        .validate()
        .map_err(|e| StoreError::Unavailable(format!("invalid raft settings: {e}")))?;
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let raw = RawNode::new(&config, storage, &logger)
        .map_err(|e| StoreError::Unavailable(format!("raft: {e}")))?;
    let (tx, rx) = mpsc::channel(BATCH * 4);
    let (status_tx, status_rx) = watch::channel(RaftStatus { id: cfg.id, ..Default::default() });
    let cfg_id = cfg.id;
    let driver = Driver {
        raw,
        store,
        transport,
        cfg,
        proposals: HashMap::new(),
        proposed_term: 0,
        reads: HashMap::new(),
        members: HashMap::new(),
        waiting: Vec::new(),
        last_term: 0,
        status: status_tx,
    };
    let span = tracing::info_span!("raft", id = cfg_id);
    tokio::spawn(tracing::Instrument::instrument(driver.run(rx), span));
    Ok(RaftHandle { tx, status: status_rx })
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut ticker = tokio::time::interval(self.cfg.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    self.raw.tick();
                    self.expire();
                }
                cmd = rx.recv() => match cmd {
                    Some(Command::Stop) | None => {
                        tracing::info!("raft member stopped");
                        return;
                    }
                    Some(cmd) => self.handle(cmd),
                },
            }
            for _ in 0..BATCH {
                match rx.try_recv() {
                    Ok(Command::Stop) => return,
                    Ok(cmd) => self.handle(cmd),
                    Err(_) => break,
                }
            }
            if let Err(e) = self.on_ready() {
                tracing::error!(error = %e, "raft stopped");
                self.status.send_modify(|s| s.failed = Some(e.to_string()));
                return;
            }
        }
    }

    fn needs_leader(cmd: &Command) -> bool {
        matches!(
            cmd,
            Command::Propose { .. } | Command::ReadIndex { .. } | Command::ChangeMember { .. }
        )
    }

    fn handle(&mut self, cmd: Command) {
        if Self::needs_leader(&cmd) && self.raw.raft.leader_id == 0 {
            self.waiting.push((Instant::now() + NO_LEADER_WAIT, cmd));
            return;
        }
        match cmd {
            Command::Propose { data, reply } => {
                let id = rand::random::<u64>();
                match self.raw.propose(id.to_be_bytes().to_vec(), data.clone()) {
                    Ok(()) => {
                        self.proposed_term = self.raw.raft.term;
                        self.proposals.insert(id, (deadline(), reply, data));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(no_leader(e)));
                    }
                }
            }
            Command::Step(msg) => {
                if let Err(e) = self.raw.step(*msg) {
                    tracing::debug!(error = %e, "dropped a raft message");
                }
            }
            Command::ReadIndex { reply } => {
                let id = rand::random::<u64>();
                self.raw.read_index(id.to_be_bytes().to_vec());
                self.reads.insert(id, (deadline(), reply));
            }
            Command::ChangeMember { cc, reply } => {
                let node = cc.node_id;
                match self.raw.propose_conf_change(vec![], cc) {
                    Ok(()) => {
                        self.members.insert(node, (deadline(), reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(no_leader(e)));
                    }
                }
            }
            Command::Unreachable(id) => self.raw.report_unreachable(id),
            Command::Snapshot(id, ok) => {
                let status = if ok { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
                self.raw.report_snapshot(id, status);
            }
            Command::Stop => {}
            Command::Campaign => {
                if let Err(e) = self.raw.campaign() {
                    tracing::warn!(error = %e, "campaign failed");
                }
            }
        }
    }

    /// After a leadership change, proposes in-flight batches again: one forwarded to a leader
    /// that died is otherwise lost.
    fn repropose(&mut self) {
        let term = self.raw.raft.term;
        if self.raw.raft.leader_id == 0 || term == self.proposed_term {
            return;
        }
        self.proposed_term = term;
        // Reads waiting on the old leader's confirmation ask the new one.
        let reads: Vec<u64> = self.reads.keys().copied().collect();
        for id in reads {
            self.raw.read_index(id.to_be_bytes().to_vec());
        }
        let again: Vec<(u64, Vec<u8>)> =
            self.proposals.iter().map(|(id, (_, _, d))| (*id, d.clone())).collect();
        tracing::debug!(
            count = again.len(),
            term,
            "proposing in-flight writes again to the new leader"
        );
        for (id, data) in again {
            let _ = self.raw.propose(id.to_be_bytes().to_vec(), data);
        }
    }

    fn release_waiting(&mut self) {
        if self.raw.raft.leader_id == 0 || self.waiting.is_empty() {
            return;
        }
        for (_, cmd) in std::mem::take(&mut self.waiting) {
            self.handle(cmd);
        }
    }

    /// Answers requests that waited too long, and shortens the wait of those that were in
    /// flight when leadership changed (a proposal forwarded to a leader that died is lost).
    fn expire(&mut self) {
        let now = Instant::now();
        if self.raw.raft.term != self.last_term {
            self.last_term = self.raw.raft.term;
            let soon = now + LEADER_CHANGE_GRACE;
            self.members.values_mut().for_each(|(d, _)| *d = (*d).min(soon));
        }
        for (_, cmd) in self.waiting.extract_if(.., |(d, _)| *d <= now) {
            fail(cmd, no_leader_yet());
        }
        for (_, (_, reply, _)) in self.proposals.extract_if(|_, (d, _, _)| *d <= now) {
            let _ = reply.send(timed_out());
        }
        for (_, (_, reply)) in self.reads.extract_if(|_, (d, _)| *d <= now) {
            let _ = reply.send(Err(StoreError::Unavailable(
                "the read could not be confirmed with the leader in time; retry".into(),
            )));
        }
        for (_, (_, reply)) in self.members.extract_if(|_, (d, _)| *d <= now) {
            let _ = reply.send(timed_out());
        }
    }

    fn on_ready(&mut self) -> Result<(), StoreError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        self.transport.send(ready.take_messages());
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            self.raw.mut_store().apply_snapshot(&snap)?;
            tracing::info!(index = snap.get_metadata().index, "installed snapshot from the leader");
        }
        self.apply(ready.take_committed_entries())?;
        self.raw.mut_store().append(ready.entries())?;
        if let Some(hs) = ready.hs() {
            self.raw.mut_store().set_hard_state(hs.clone())?;
        }
        // Entries, votes and terms must be on disk before anyone hears of them; commit-index
        // moves and applied objects need not (they are replayed from the log).
        if ready.must_sync() || !ready.snapshot().is_empty() {
            let storage = self.raw.mut_store();
            blocking(|| storage.sync())?;
        }
        self.transport.send(ready.take_persisted_messages());
        for rs in ready.take_read_states() {
            let id = u64::from_be_bytes(rs.request_ctx.as_slice().try_into().unwrap_or([0; 8]));
            if let Some((_, reply)) = self.reads.remove(&id) {
                let _ = reply.send(Ok(rs.index));
            }
        }
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        self.transport.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.maybe_compact()?;
        self.publish();
        self.release_waiting();
        self.repropose();
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), StoreError> {
        for e in entries {
            match e.get_entry_type() {
                EntryType::EntryNormal => self.apply_normal(&e)?,
                EntryType::EntryConfChange => self.apply_conf_change(&e)?,
                EntryType::EntryConfChangeV2 => self.store.set_applied(e.index)?,
            }
        }
        Ok(())
    }

    fn apply_normal(&mut self, e: &Entry) -> Result<(), StoreError> {
        if e.data.is_empty() {
            return self.store.set_applied(e.index);
        }
        let outcome = match StoreBatch::decode(e.data.as_ref()) {
            Ok(batch) => self.store.apply_batch(e.index, &batch)?,
            Err(err) => {
                tracing::error!(index = e.index, error = %err, "skipping an undecodable entry");
                self.store.set_applied(e.index)?;
                Outcome::Conflict
            }
        };
        let id = u64::from_be_bytes(e.context.as_ref().try_into().unwrap_or([0; 8]));
        if let Some((_, reply, _)) = self.proposals.remove(&id) {
            let _ = reply.send(Ok(outcome));
        }
        Ok(())
    }

    fn apply_conf_change(&mut self, e: &Entry) -> Result<(), StoreError> {
        let cc = ConfChange::parse_from_bytes(&e.data).map_err(|err| {
            StoreError::Unavailable(format!("bad conf change at {}: {err}", e.index))
        })?;
        let cs = self
            .raw
            .apply_conf_change(&cc)
            .map_err(|err| StoreError::Unavailable(format!("conf change at {}: {err}", e.index)))?;
        self.raw.mut_store().set_conf_state(cs)?;
        let key = format!("member/{:016x}", cc.node_id).into_bytes();
        let write = match cc.get_change_type() {
            ConfChangeType::RemoveNode => {
                shoal_proto::Write { key: key.clone(), value: vec![], delete: true }
            }
            _ => {
                let mut member = Member::decode(cc.context.as_ref()).unwrap_or_default();
                member.id = format!("{:016x}", cc.node_id);
                member.raft_id = cc.node_id;
                shoal_proto::Write { key, value: member.encode_to_vec(), delete: false }
            }
        };
        self.store
            .apply_batch(e.index, &StoreBatch { preconditions: vec![], writes: vec![write] })?;
        tracing::info!(member = cc.node_id, change = ?cc.get_change_type(), "membership changed");
        if let Some((_, reply)) = self.members.remove(&cc.node_id) {
            let _ = reply.send(Ok(()));
        }
        Ok(())
    }

    fn maybe_compact(&mut self) -> Result<(), StoreError> {
        let applied = self.store.version();
        let storage = self.raw.mut_store();
        if applied.saturating_sub(storage.compacted())
            > self.cfg.snapshot_interval + self.cfg.keep_entries
        {
            storage.compact(applied - self.cfg.keep_entries)?;
        }
        Ok(())
    }

    fn publish(&mut self) {
        let raft = &self.raw.raft;
        let next = RaftStatus {
            id: self.cfg.id,
            leader: raft.leader_id,
            term: raft.term,
            applied: self.store.version(),
            is_leader: raft.state == StateRole::Leader,
            voters: raft.prs().conf().voters().ids().iter().collect(),
            failed: None,
        };
        self.status.send_if_modified(|s| {
            let changed = *s != next;
            if changed {
                *s = next;
            }
            changed
        });
    }
}

/// Runs a blocking disk call without stalling the other tasks of a multi-threaded runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Answers a command that needed a leader and got none.
fn fail(cmd: Command, err: StoreError) {
    match cmd {
        Command::Propose { reply, .. } => drop(reply.send(Err(err))),
        Command::ReadIndex { reply } => drop(reply.send(Err(err))),
        Command::ChangeMember { reply, .. } => drop(reply.send(Err(err))),
        _ => {}
    }
}

fn no_leader_yet() -> StoreError {
    StoreError::Unavailable(
        "the swarm does not have a leader: too few managers may be reachable from this one".into(),
    )
}

fn timed_out<T>() -> Result<T, StoreError> {
    Err(StoreError::Unavailable(
        "the write was not confirmed in time (leadership may have changed); it may not have been \
         applied: check and retry"
            .into(),
    ))
}

fn deadline() -> Instant {
    Instant::now() + PROPOSAL_TIMEOUT
}

fn no_leader(e: raft::Error) -> StoreError {
    match e {
        raft::Error::ProposalDropped => StoreError::Unavailable(
            "the swarm does not have a leader right now (an election may be under way); retry"
                .into(),
        ),
        other => StoreError::Unavailable(format!("raft refused the proposal: {other}")),
    }
}
