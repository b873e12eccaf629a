//! Owns applying committed entries to the store: writes as one group per Ready, membership
//! changes (into raft's configuration and the store's member records), answering their callers
//! once applied, and compacting the log behind the applied index. Never sends messages.

use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, Entry, EntryType};
use shoal_proto::{Member, StoreBatch};

use super::{Driver, Reply};
use crate::store::{ApplyGroup, Outcome, StoreError};

/// Callers to answer once an applied group is in the store.
#[derive(Default)]
struct Answers {
    proposals: Vec<(Reply<Outcome>, Outcome)>,
    members: Vec<Reply<()>>,
}

impl Driver {
    /// Applies committed entries as one group (one sled write), then answers their callers:
    /// an answer never comes before the write is in the store.
    pub(super) fn apply(&mut self, entries: Vec<Entry>) -> Result<(), StoreError> {
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
}

impl Driver {
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

    pub(super) fn maybe_compact(&mut self) -> Result<(), StoreError> {
        let applied = self.store.version();
        let storage = self.raw.mut_store();
        if applied.saturating_sub(storage.compacted())
            > self.cfg.snapshot_interval + self.cfg.keep_entries
        {
            storage.compact(applied - self.cfg.keep_entries)?;
        }
        Ok(())
    }
}
