//! Owns the Raft state machine driver: one task owns `RawNode` and runs tick, step, propose,
//! Ready → persist → send → apply → advance. Everyone else talks to it through [`RaftHandle`].
//!
//! Persistence is asynchronous (raft-rs's `advance_append_async`): a Ready's entries and hard
//! state are written to sled by the task, and a dedicated thread makes them durable (flush,
//! fdatasync) while the task goes on stepping messages and taking proposals. Messages that
//! promise durability (a follower's append responses, votes) leave only after that thread
//! reports the Ready synced; the leader's appends leave at once (Raft thesis 10.2.1). Syncs
//! that queue up behind a running one are done as one.
//!
//! This module owns the member's settings, its state and starting it; the parts of the task
//! live in submodules: `driver` (the loop and each Ready), `requests` (callers waiting on
//! proposals, reads and a leader), `apply` (committed entries and membership into the store),
//! `sync` (the sync thread) and `handle` (what other tasks hold).

mod apply;
mod driver;
mod handle;
mod requests;
mod sync;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::prelude::{ConfChange, Message};
use raft::RawNode;
use tokio::sync::{mpsc, oneshot, watch};

pub use self::handle::RaftHandle;
use self::sync::{run_syncer, SyncJob};
use crate::raft::storage::LogStorage;
use crate::store::{Outcome, Store, StoreError};

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
    /// The manager's node ID, for its log lines (the raft span's `node` field).
    pub node: String,
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
            node: format!("{id:016x}"),
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

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// The Raft task's state: the `RawNode` and everyone waiting on it. Owned by the task alone.
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
    let logger = crate::raft::logging::raft_logger();
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
    let span = tracing::info_span!("raft", node = %driver.cfg.node);
    tokio::spawn(tracing::Instrument::instrument(driver.run(rx, synced_rx), span));
    Ok(RaftHandle { tx, status: status_rx })
}
