//! Owns the Raft state machine driver: one task owns `RawNode` and runs tick, step, propose,
//! Ready → persist → send → apply → advance. Everyone else talks to it through [`RaftHandle`].
//!
//! Persistence is asynchronous (raft-rs's `advance_append_async`): a Ready's entries and hard
//! state are written to sled by the task, and a dedicated thread makes them durable (flush,
//! fdatasync) while the task goes on stepping messages and taking proposals. Messages that
//! promise durability (a follower's append responses, votes) leave only after that thread
//! reports the Ready synced; the leader's appends leave at once (Raft thesis 10.2.1). Syncs
//! that queue up behind a running one are done as one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, Entry, EntryType, Message};
use raft::{RawNode, SnapshotStatus, StateRole};
use shoal_proto::{Member, StoreBatch};
use tokio::sync::{mpsc, oneshot, watch};

use crate::raft::storage::{LogStorage, Syncer};
use crate::store::{ApplyGroup, BoxFuture, Outcome, Proposer, Store, StoreError};

/// How long a proposal may wait for its commit.
const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request waits for a leader to be elected before it is refused.
const NO_LEADER_WAIT: Duration = Duration::from_secs(3);
/// How long requests in flight during a leadership change may still wait.
const LEADER_CHANGE_GRACE: Duration = Duration::from_secs(2);
/// How long a read waits for the leader's confirmation before it is asked again.
const READ_RETRY: Duration = Duration::from_millis(300);
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
    /// On the leader: voters it has not heard from for an election timeout.
    pub unreachable: Vec<u64>,
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
        self.tx.send(make(reply)).await.map_err(|_| self.stopped())?;
        match tokio::time::timeout(PROPOSAL_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.stopped()),
            Err(_) => Err(StoreError::Unavailable(
                "timed out waiting for the managers to commit; is a quorum of managers up?".into(),
            )),
        }
    }

    /// Why the member stopped: the error that stopped it, if one did.
    fn stopped(&self) -> StoreError {
        match &self.status.borrow().failed {
            Some(why) => StoreError::Unavailable(why.clone()),
            None => stopped(),
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
                Err(self.stopped())
            }
        })
    }
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// Callers to answer once an applied group is in the store.
#[derive(Default)]
struct Answers {
    proposals: Vec<(Reply<Outcome>, Outcome)>,
    members: Vec<Reply<()>>,
}

struct Driver {
    raw: RawNode<LogStorage>,
    store: Arc<Store>,
    transport: Arc<dyn Transport>,
    cfg: RaftConfig,
    /// Proposals in flight: deadline, who waits, and the batch (to propose again to a new
    /// leader; a batch's preconditions make a second copy a harmless no-op).
    proposals: HashMap<u64, (Instant, Reply<Outcome>, Vec<u8>)>,
    /// Proposals received in this loop turn, proposed together as one Raft message so that
    /// followers get one append (and answer once) per turn instead of once per write.
    batch: Vec<(Vec<u8>, Reply<Outcome>)>,
    /// The term in which in-flight proposals were last (re)proposed.
    proposed_term: u64,
    /// Reads waiting for the leader's confirmation: deadline, who waits, when to ask again (a
    /// leader that has not yet committed in its term drops read requests without an answer).
    reads: HashMap<u64, (Instant, Reply<u64>, Instant)>,
    /// The term in which waiting reads were last asked again of this member as a new leader.
    reads_reissued_term: u64,
    members: HashMap<u64, (Instant, Reply<()>)>,
    /// Commands that need a leader, held while an election is under way.
    waiting: Vec<(Instant, Command)>,
    last_term: u64,
    status: watch::Sender<RaftStatus>,
    /// Readies handed to the sync thread and not yet reported durable.
    syncing: usize,
    /// A received snapshot's Ready number and index: counted as applied once durable.
    snapshot_to_apply: Option<(u64, u64)>,
    /// When each peer was last heard from (any Raft message), for reachability.
    heard: HashMap<u64, Instant>,
    /// The term this member leads in and since when (peers get that long to be heard).
    leading: Option<(u64, Instant)>,
    sync_jobs: std::sync::mpsc::Sender<SyncJob>,
}

/// A Ready whose writes must be durable before its messages leave.
struct SyncJob {
    number: u64,
    must_sync: bool,
    messages: Vec<Message>,
    /// Term and commit index written with it (recorded in the durable mark).
    mark: (u64, u64),
}

/// What the sync thread reports: every job up to `number` is durable (or the sync failed).
struct Synced {
    number: u64,
    jobs: usize,
    messages: Vec<Message>,
    result: Result<(), StoreError>,
}

/// The sync thread: takes every job queued, makes them durable with one sync, reports.
fn run_syncer(
    syncer: Syncer,
    jobs: std::sync::mpsc::Receiver<SyncJob>,
    done: mpsc::UnboundedSender<Synced>,
) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        batch.extend(jobs.try_iter());
        let must_sync = batch.iter().any(|j| j.must_sync);
        let (number, mark) = batch.last().map(|j| (j.number, j.mark)).unwrap_or_default();
        let result = if must_sync { syncer.sync(mark) } else { Ok(()) };
        let failed = result.is_err();
        let synced = Synced {
            number,
            jobs: batch.len(),
            messages: batch.into_iter().flat_map(|j| j.messages).collect(),
            result,
        };
        if done.send(synced).is_err() || failed {
            return;
        }
    }
}

/// Starts the Raft task for member `cfg.id` over `storage`, applying to `store`.
pub fn spawn(
    cfg: RaftConfig,
    mut storage: LogStorage,
    store: Arc<Store>,
    transport: Arc<dyn Transport>,
) -> Result<RaftHandle, StoreError> {
    storage.cover_applied(store.version())?;
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
    let (sync_jobs, jobs_rx) = std::sync::mpsc::channel();
    let (synced_tx, synced_rx) = mpsc::unbounded_channel();
    let syncer = raw.store().syncer();
    std::thread::Builder::new()
        .name(format!("raft-sync-{:x}", cfg_id & 0xffff))
        .spawn(move || run_syncer(syncer, jobs_rx, synced_tx))
        .map_err(|e| StoreError::Unavailable(format!("starting the raft sync thread: {e}")))?;
    let driver = Driver {
        raw,
        store,
        transport,
        cfg,
        proposals: HashMap::new(),
        batch: Vec::new(),
        proposed_term: 0,
        reads: HashMap::new(),
        reads_reissued_term: 0,
        members: HashMap::new(),
        waiting: Vec::new(),
        last_term: 0,
        status: status_tx,
        syncing: 0,
        snapshot_to_apply: None,
        heard: HashMap::new(),
        leading: None,
        sync_jobs,
    };
    let span = tracing::info_span!("raft", id = cfg_id);
    tokio::spawn(tracing::Instrument::instrument(driver.run(rx, synced_rx), span));
    Ok(RaftHandle { tx, status: status_rx })
}

impl Driver {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut synced: mpsc::UnboundedReceiver<Synced>,
    ) {
        let mut ticker = tokio::time::interval(self.cfg.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    self.raw.tick();
                    self.expire();
                    self.publish();
                }
                Some(done) = synced.recv() => {
                    if let Err(e) = self.on_synced(done) {
                        self.fail_all(e);
                        return;
                    }
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
            self.propose_batch();
            if let Err(e) = self.on_ready() {
                self.fail_all(e);
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
            Command::Propose { data, reply } => self.batch.push((data, reply)),
            Command::Step(msg) => {
                self.heard.insert(msg.from, Instant::now());
                if let Err(e) = self.raw.step(*msg) {
                    tracing::debug!(error = %e, "dropped a raft message");
                }
            }
            Command::ReadIndex { reply } => {
                let id = rand::random::<u64>();
                self.raw.read_index(id.to_be_bytes().to_vec());
                self.reads.insert(id, (deadline(), reply, Instant::now() + READ_RETRY));
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
        if again.is_empty() {
            return;
        }
        let entries = again.into_iter().map(|(id, data)| entry(id, data)).collect();
        let _ = self.raw.step(propose_message(self.cfg.id, entries));
    }

    /// Proposes this turn's writes as one message: each becomes its own entry, carrying its
    /// proposal ID as context.
    fn propose_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        let ids: Vec<u64> = batch.iter().map(|_| rand::random::<u64>()).collect();
        let entries =
            ids.iter().zip(&batch).map(|(id, (data, _))| entry(*id, data.clone())).collect();
        match self.raw.step(propose_message(self.cfg.id, entries)) {
            Ok(()) => {
                self.proposed_term = self.raw.raft.term;
                for (id, (data, reply)) in ids.into_iter().zip(batch) {
                    self.proposals.insert(id, (deadline(), reply, data));
                }
            }
            Err(e) => {
                let err = no_leader(e);
                for (_, reply) in batch {
                    let _ = reply.send(Err(clone_err(&err)));
                }
            }
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
        let retry: Vec<u64> = self
            .reads
            .iter_mut()
            .filter(|(_, (_, _, at))| *at <= now)
            .map(|(id, (_, _, at))| {
                *at = now + READ_RETRY;
                *id
            })
            .collect();
        if self.raw.raft.leader_id != 0 {
            for id in retry {
                self.raw.read_index(id.to_be_bytes().to_vec());
            }
        }
        for (_, (_, reply, _)) in self.reads.extract_if(|_, (d, _, _)| *d <= now) {
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
        let has_snapshot = !ready.snapshot().is_empty();
        let mut snapshot_index = None;
        if has_snapshot {
            let snap = ready.snapshot().clone();
            snapshot_index = Some(snap.get_metadata().index);
            self.raw.mut_store().apply_snapshot(&snap)?;
            tracing::info!(index = snap.get_metadata().index, "installed snapshot from the leader");
        }
        self.raw.mut_store().append(ready.entries())?;
        if let Some(hs) = ready.hs() {
            self.raw.mut_store().set_hard_state(hs.clone())?;
        }
        // Committed entries in a Ready are already durable here (raft-rs hands out only
        // entries up to what was reported persisted). They are applied after the hard state
        // is written: sled recovers a prefix of its writes, so after a crash the applied index
        // is never beyond the commit index (raft-rs refuses to start from such a state).
        let committed = ready.take_committed_entries();
        let applied = committed.last().map(|e| e.index);
        self.apply(committed)?;
        for rs in ready.take_read_states() {
            let id = u64::from_be_bytes(rs.request_ctx.as_slice().try_into().unwrap_or([0; 8]));
            if let Some((_, reply, _)) = self.reads.remove(&id) {
                let _ = reply.send(Ok(rs.index));
            }
        }
        let messages = ready.take_persisted_messages();
        // Entries, votes and terms must be on disk before anyone hears of them; commit-index
        // moves and applied objects need not (they are replayed from the log).
        let must_sync = ready.must_sync() || has_snapshot;
        let number = ready.number();
        self.raw.advance_append_async(ready);
        // Raft may count a snapshot as applied only once it is durable.
        if let Some(index) = snapshot_index {
            self.snapshot_to_apply = Some((number, index));
        }
        if let Some(index) = applied {
            self.raw.advance_apply_to(index);
        }
        if must_sync || self.syncing > 0 {
            // Behind a sync in progress even when this Ready needs none: its messages must
            // not overtake the durable ones queued before it.
            let job = SyncJob { number, must_sync, messages, mark: self.raw.store().mark() };
            self.sync_jobs
                .send(job)
                .map_err(|_| StoreError::Unavailable("the raft sync thread stopped".into()))?;
            self.syncing += 1;
        } else {
            self.transport.send(messages);
            self.raw.on_persist_ready(number);
        }
        self.maybe_compact()?;
        self.publish();
        self.release_waiting();
        self.propose_batch();
        self.repropose();
        self.reissue_reads();
        Ok(())
    }

    /// A new leader answers reads only once it has committed an entry in its term and drops
    /// earlier ones: asks again for the waiting reads as soon as it has.
    fn reissue_reads(&mut self) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader
            || raft.term == self.reads_reissued_term
            || !raft.commit_to_current_term()
        {
            return;
        }
        self.reads_reissued_term = raft.term;
        let waiting: Vec<u64> = self.reads.keys().copied().collect();
        for id in waiting {
            self.raw.read_index(id.to_be_bytes().to_vec());
        }
    }

    /// A sync finished: its Readies' messages may leave, and raft learns they are durable.
    fn on_synced(&mut self, done: Synced) -> Result<(), StoreError> {
        done.result?;
        self.syncing -= done.jobs;
        self.transport.send(done.messages);
        self.raw.on_persist_ready(done.number);
        if let Some((number, index)) = self.snapshot_to_apply {
            if number <= done.number {
                self.snapshot_to_apply = None;
                self.raw.advance_apply_to(index);
            }
        }
        Ok(())
    }

    /// The member cannot go on (its disk failed): says why to everyone waiting and to status.
    fn fail_all(&mut self, e: StoreError) {
        let mut why = format!("this manager's raft member stopped: {e}");
        if why.contains("No space left on device") && !why.contains("disk is full") {
            why.push_str(" (the disk is full: free space, then restart shoald)");
        }
        why.push_str("; writes in flight may or may not have been applied");
        tracing::error!(error = %why, "raft stopped: this manager can no longer take part");
        self.status.send_modify(|s| s.failed = Some(why.clone()));
        let err = || StoreError::Unavailable(why.clone());
        for (_, (_, reply, _)) in self.proposals.drain() {
            let _ = reply.send(Err(err()));
        }
        for (_, reply) in self.batch.drain(..) {
            let _ = reply.send(Err(err()));
        }
        for (_, (_, reply, _)) in self.reads.drain() {
            let _ = reply.send(Err(err()));
        }
        for (_, (_, reply)) in self.members.drain() {
            let _ = reply.send(Err(err()));
        }
        for (_, cmd) in self.waiting.drain(..) {
            fail(cmd, err());
        }
    }

    /// Applies committed entries as one group (one sled write), then answers their callers:
    /// an answer never comes before the write is in the store.
    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), StoreError> {
        let mut group = ApplyGroup::default();
        let mut answers = Answers::default();
        for e in entries {
            match e.get_entry_type() {
                EntryType::EntryNormal => self.apply_normal(&e, &mut group, &mut answers)?,
                EntryType::EntryConfChange => {
                    self.apply_conf_change(&e, &mut group, &mut answers)?
                }
                EntryType::EntryConfChangeV2 => group.applied(e.index),
            }
        }
        self.store.commit_group(group)?;
        for (reply, outcome) in answers.proposals {
            let _ = reply.send(Ok(outcome));
        }
        for reply in answers.members {
            let _ = reply.send(Ok(()));
        }
        Ok(())
    }

    fn apply_normal(
        &mut self,
        e: &Entry,
        group: &mut ApplyGroup,
        answers: &mut Answers,
    ) -> Result<(), StoreError> {
        if e.data.is_empty() {
            group.applied(e.index);
            return Ok(());
        }
        let outcome = match StoreBatch::decode(e.data.as_ref()) {
            Ok(batch) => self.store.stage(group, e.index, &batch)?,
            Err(err) => {
                tracing::error!(index = e.index, error = %err, "skipping an undecodable entry");
                group.applied(e.index);
                Outcome::Conflict
            }
        };
        let id = u64::from_be_bytes(e.context.as_ref().try_into().unwrap_or([0; 8]));
        if let Some((_, reply, _)) = self.proposals.remove(&id) {
            answers.proposals.push((reply, outcome));
        }
        Ok(())
    }

    fn apply_conf_change(
        &mut self,
        e: &Entry,
        group: &mut ApplyGroup,
        answers: &mut Answers,
    ) -> Result<(), StoreError> {
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
        let batch = StoreBatch { preconditions: vec![], writes: vec![write] };
        self.store.stage(group, e.index, &batch)?;
        tracing::info!(member = cc.node_id, change = ?cc.get_change_type(), "membership changed");
        if let Some((_, reply)) = self.members.remove(&cc.node_id) {
            answers.members.push(reply);
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

    /// Voters the leader has not heard from for an election timeout (empty on a follower,
    /// which hears from the leader alone).
    fn unreachable(&mut self) -> Vec<u64> {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            self.leading = None;
            return Vec::new();
        }
        let now = Instant::now();
        let since = match self.leading {
            Some((term, since)) if term == raft.term => since,
            _ => self.leading.insert((raft.term, now)).1,
        };
        let timeout = self.cfg.tick * self.cfg.election_ticks as u32;
        let mut ids: Vec<u64> = raft
            .prs()
            .conf()
            .voters()
            .ids()
            .iter()
            .filter(|id| *id != self.cfg.id)
            .filter(|id| {
                let last = self.heard.get(id).copied().unwrap_or(since).max(since);
                now.duration_since(last) > timeout
            })
            .collect();
        ids.sort_unstable();
        ids
    }

    fn publish(&mut self) {
        let unreachable = self.unreachable();
        let raft = &self.raw.raft;
        let next = RaftStatus {
            id: self.cfg.id,
            leader: raft.leader_id,
            term: raft.term,
            applied: self.store.version(),
            is_leader: raft.state == StateRole::Leader,
            voters: raft.prs().conf().voters().ids().iter().collect(),
            unreachable,
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

/// A normal entry for proposal `id`.
fn entry(id: u64, data: Vec<u8>) -> Entry {
    Entry { data: data.into(), context: id.to_be_bytes().to_vec().into(), ..Default::default() }
}

/// A local proposal of `entries` (what `RawNode::propose` builds, for many entries at once).
fn propose_message(from: u64, entries: Vec<Entry>) -> Message {
    let mut m = Message { from, entries: entries.into(), ..Default::default() };
    m.set_msg_type(raft::prelude::MessageType::MsgPropose);
    m
}

fn clone_err(e: &StoreError) -> StoreError {
    StoreError::Unavailable(e.to_string())
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
