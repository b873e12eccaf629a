//! Owns the Raft task's loop: ticks, commands from handles, and each Ready in turn (persist,
//! send, apply, advance), plus the status it publishes. Never waits for the disk to sync: the
//! sync thread does that and reports back.

use std::time::Instant;

use raft::{SnapshotStatus, StateRole};
use tokio::sync::mpsc;

use super::requests::{deadline, no_leader};
use super::sync::{SyncJob, Synced};
use super::{Command, Driver, RaftStatus, BATCH, NO_LEADER_WAIT, READ_RETRY};
use crate::store::StoreError;

impl Driver {
    pub(super) async fn run(
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

    pub(super) fn handle(&mut self, cmd: Command) {
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

    pub(super) fn publish(&mut self) {
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
