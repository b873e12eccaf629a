//! Owns durability of the log: the sync thread that flushes what the Raft task wrote, as one
//! sync for every Ready queued behind a running one, and the messages that must wait for it.
//! Never writes entries itself (the Raft task does, before handing a Ready over).

use raft::prelude::Message;
use tokio::sync::mpsc;

use super::Driver;
use crate::raft::storage::Syncer;
use crate::store::StoreError;

/// A Ready whose writes must be durable before its messages leave.
pub(super) struct SyncJob {
    pub number: u64,
    pub must_sync: bool,
    pub messages: Vec<Message>,
    /// Term and commit index written with it (recorded in the durable mark).
    pub mark: (u64, u64),
}

/// What the sync thread reports: every job up to `number` is durable (or the sync failed).
pub(super) struct Synced {
    number: u64,
    jobs: usize,
    messages: Vec<Message>,
    result: Result<(), StoreError>,
}

/// The sync thread: takes every job queued, makes them durable with one sync, reports.
pub(super) fn run_syncer(
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

impl Driver {
    /// A sync finished: its Readies' messages may leave, and raft learns they are durable.
    pub(super) fn on_synced(&mut self, done: Synced) -> Result<(), StoreError> {
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
}
