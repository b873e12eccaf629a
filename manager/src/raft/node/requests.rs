//! Owns the callers waiting on the Raft task: proposals (batched per turn, proposed again to
//! a new leader), linearizable reads, commands held while there is no leader, and their
//! deadlines. Never applies anything: answers to proposals come from applying their entries.

use std::time::Instant;

use raft::prelude::{Entry, Message};
use raft::StateRole;

use super::{Command, Driver, LEADER_CHANGE_GRACE, PROPOSAL_TIMEOUT, READ_RETRY};
use crate::store::StoreError;

impl Driver {
    /// After a leadership change, proposes in-flight batches again: one forwarded to a leader
    /// that died is otherwise lost.
    pub(super) fn repropose(&mut self) {
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
    pub(super) fn propose_batch(&mut self) {
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

    pub(super) fn release_waiting(&mut self) {
        if self.raw.raft.leader_id == 0 || self.waiting.is_empty() {
            return;
        }
        for (_, cmd) in std::mem::take(&mut self.waiting) {
            self.handle(cmd);
        }
    }

    /// Answers requests that waited too long, and shortens the wait of those that were in
    /// flight when leadership changed (a proposal forwarded to a leader that died is lost).
    pub(super) fn expire(&mut self) {
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

    /// A new leader answers reads only once it has committed an entry in its term and drops
    /// earlier ones: asks again for the waiting reads as soon as it has.
    pub(super) fn reissue_reads(&mut self) {
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

    /// The member cannot go on (its disk failed): says why to everyone waiting and to status.
    pub(super) fn fail_all(&mut self, e: StoreError) {
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

pub(super) fn deadline() -> Instant {
    Instant::now() + PROPOSAL_TIMEOUT
}

pub(super) fn no_leader(e: raft::Error) -> StoreError {
    match e {
        raft::Error::ProposalDropped => StoreError::Unavailable(
            "the swarm does not have a leader right now (an election may be under way); retry"
                .into(),
        ),
        other => StoreError::Unavailable(format!("raft refused the proposal: {other}")),
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
