//! Owns the Raft log on disk: entries, hard state, conf state and the compaction point in sled,
//! each record sealed with the manager's data key and bound to its index; an in-memory copy of
//! the log since the last compaction serves raft-rs. Snapshots are cut from the object store.
//! Never talks to the network.

use std::collections::VecDeque;
use std::sync::Arc;

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::raft::crypto::Sealer;
use crate::store::{Store, StoreError};

const HARD_STATE: &[u8] = b"hard_state";
const CONF_STATE: &[u8] = b"conf_state";
const SNAP_META: &[u8] = b"snap_meta";
const RAFT_ID: &[u8] = b"raft_id";

/// The Raft log of one manager.
#[derive(Debug)]
pub struct LogStorage {
    log: sled::Tree,
    state: sled::Tree,
    db: sled::Db,
    sealer: Arc<Sealer>,
    store: Arc<Store>,
    /// sled's data file: fdatasync'd after sled's own flush, which only issues
    /// sync_file_range and so would not reach the disk's cache.
    data_file: Option<std::fs::File>,
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last entry folded into a snapshot or compaction.
    snap_meta: SnapshotMetadata,
    entries: VecDeque<Entry>,
}

fn log_aad(index: u64) -> Vec<u8> {
    [b"raft-log:".as_slice(), &index.to_be_bytes()].concat()
}

fn state_aad(name: &[u8]) -> Vec<u8> {
    [b"raft-state:".as_slice(), name].concat()
}

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Unavailable(format!("the raft log is damaged: {}", what.into()))
}

impl LogStorage {
    /// Opens the log in `db`, reading everything back and checking it is whole.
    pub fn open(
        db: &sled::Db,
        sealer: Arc<Sealer>,
        store: Arc<Store>,
    ) -> Result<LogStorage, StoreError> {
        let mut s = LogStorage {
            log: db.open_tree("raft_log")?,
            state: db.open_tree("raft_state")?,
            db: db.clone(),
            sealer,
            store,
            data_file: None,
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            snap_meta: SnapshotMetadata::default(),
            entries: VecDeque::new(),
        };
        s.hard_state = s.read_state(HARD_STATE)?.unwrap_or_default();
        s.conf_state = s.read_state(CONF_STATE)?.unwrap_or_default();
        s.snap_meta = s.read_state(SNAP_META)?.unwrap_or_default();
        s.load_entries()?;
        Ok(s)
    }

    fn read_state<M: protobuf::Message>(&self, name: &[u8]) -> Result<Option<M>, StoreError> {
        let Some(sealed) = self.state.get(name)? else { return Ok(None) };
        let plain =
            self.sealer.open(&state_aad(name), &sealed, || String::from_utf8_lossy(name).into())?;
        M::parse_from_bytes(&plain)
            .map(Some)
            .map_err(|e| corrupt(format!("{}: {e}", String::from_utf8_lossy(name))))
    }

    fn write_state(&self, name: &[u8], m: &impl protobuf::Message) -> Result<(), StoreError> {
        let bytes = m.write_to_bytes().map_err(|e| corrupt(e.to_string()))?;
        self.state.insert(name, self.sealer.seal(&state_aad(name), &bytes)?)?;
        Ok(())
    }

    fn load_entries(&mut self) -> Result<(), StoreError> {
        let mut expected = self.snap_meta.index + 1;
        for kv in self.log.iter() {
            let (k, v) = kv?;
            let index = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| corrupt("bad key"))?);
            if index < expected {
                continue; // compacted, deletion not yet flushed
            }
            if index != expected {
                return Err(corrupt(format!("entry {expected} is missing (found {index})")));
            }
            let plain = self.sealer.open(&log_aad(index), &v, || format!("raft entry {index}"))?;
            let e = Entry::parse_from_bytes(&plain)
                .map_err(|e| corrupt(format!("entry {index}: {e}")))?;
            self.entries.push_back(e);
            expected += 1;
        }
        Ok(())
    }

    /// This member's Raft ID, once assigned.
    pub fn raft_id(&self) -> Result<Option<u64>, StoreError> {
        let Some(sealed) = self.state.get(RAFT_ID)? else { return Ok(None) };
        let plain = self.sealer.open(&state_aad(RAFT_ID), &sealed, || "raft id".into())?;
        let id = plain.as_slice().try_into().map_err(|_| corrupt("raft id"))?;
        Ok(Some(u64::from_be_bytes(id)))
    }

    /// Records this member's Raft ID (durably).
    pub fn set_raft_id(&mut self, id: u64) -> Result<(), StoreError> {
        self.state.insert(RAFT_ID, self.sealer.seal(&state_aad(RAFT_ID), &id.to_be_bytes())?)?;
        self.sync()
    }

    /// Starts a new one-member group: the log begins after a virtual snapshot at index 1 that
    /// holds the membership, so members that join later receive it by snapshot.
    pub fn bootstrap(&mut self, id: u64) -> Result<(), StoreError> {
        self.set_conf_state(ConfState::from((vec![id], vec![])))?;
        self.set_hard_state(HardState { term: 1, commit: 1, ..Default::default() })?;
        self.snap_meta = SnapshotMetadata { index: 1, term: 1, ..Default::default() };
        self.write_state(SNAP_META, &self.snap_meta.clone())?;
        self.store.set_applied(1)?;
        self.sync()
    }

    /// Recovery after quorum loss: keeps everything committed, drops what was not, and makes
    /// this member the only voter, so it can elect itself and others can join it afresh.
    pub fn force_new_cluster(&mut self, id: u64) -> Result<(), StoreError> {
        let commit = self.hard_state.commit.max(self.snap_meta.index);
        let old_last = self.last();
        self.entries.truncate(commit.saturating_sub(self.snap_meta.index) as usize);
        let mut batch = sled::Batch::default();
        for stale in commit + 1..=old_last {
            batch.remove(&stale.to_be_bytes());
        }
        self.log.apply_batch(batch)?;
        self.set_conf_state(ConfState::from((vec![id], vec![])))?;
        let hs = HardState { term: self.hard_state.term, vote: 0, commit, ..Default::default() };
        self.set_hard_state(hs)?;
        self.sync()
    }

    /// Whether this manager has ever been part of a Raft group.
    pub fn is_initialized(&self) -> bool {
        !self.conf_state.voters.is_empty() || self.snap_meta.index > 0 || !self.entries.is_empty()
    }

    /// Persists and keeps new entries, replacing any conflicting tail.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        let Some(first) = entries.first() else { return Ok(()) };
        let old_last = self.last();
        let keep = first.index.saturating_sub(self.snap_meta.index + 1) as usize;
        self.entries.truncate(keep);
        let mut batch = sled::Batch::default();
        for e in entries {
            let bytes = e.write_to_bytes().map_err(|e| corrupt(e.to_string()))?;
            batch.insert(&e.index.to_be_bytes(), self.sealer.seal(&log_aad(e.index), &bytes)?);
            self.entries.push_back(e.clone());
        }
        for stale in self.last() + 1..=old_last {
            batch.remove(&stale.to_be_bytes());
        }
        self.log.apply_batch(batch)?;
        Ok(())
    }

    /// Persists the hard state.
    pub fn set_hard_state(&mut self, hs: HardState) -> Result<(), StoreError> {
        self.write_state(HARD_STATE, &hs)?;
        self.hard_state = hs;
        Ok(())
    }

    /// Persists the commit index.
    pub fn set_commit(&mut self, commit: u64) -> Result<(), StoreError> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(hs)
    }

    /// Persists the membership.
    pub fn set_conf_state(&mut self, cs: ConfState) -> Result<(), StoreError> {
        self.write_state(CONF_STATE, &cs)?;
        self.conf_state = cs;
        Ok(())
    }

    /// Installs a snapshot from the leader: the object store, membership and log position.
    pub fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<(), StoreError> {
        let meta = snap.get_metadata();
        self.store.restore(meta.index, &snap.data)?;
        self.set_conf_state(meta.get_conf_state().clone())?;
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        self.set_hard_state(hs)?;
        self.entries.clear();
        self.log.clear()?;
        self.snap_meta = meta.clone();
        self.write_state(SNAP_META, &self.snap_meta.clone())
    }

    /// Drops entries up to and including `index` (already applied and snapshotted).
    pub fn compact(&mut self, index: u64) -> Result<(), StoreError> {
        if index <= self.snap_meta.index || index > self.last() {
            return Ok(());
        }
        let term = raft::Storage::term(self, index).map_err(|e| corrupt(e.to_string()))?;
        let mut batch = sled::Batch::default();
        while self.entries.front().is_some_and(|e| e.index <= index) {
            if let Some(e) = self.entries.pop_front() {
                batch.remove(&e.index.to_be_bytes());
            }
        }
        self.snap_meta.index = index;
        self.snap_meta.term = term;
        self.write_state(SNAP_META, &self.snap_meta.clone())?;
        self.log.apply_batch(batch)?;
        Ok(())
    }

    /// Also fdatasyncs sled's data file in `dir` at every [`LogStorage::sync`].
    pub fn with_data_file(mut self, dir: &std::path::Path) -> Result<LogStorage, StoreError> {
        let file = std::fs::File::open(dir.join("db")).map_err(|e| {
            StoreError::Unavailable(format!("opening {} for fsync: {e}", dir.join("db").display()))
        })?;
        self.data_file = Some(file);
        Ok(self)
    }

    /// Makes everything written so far durable (sled's flush, then fdatasync).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        if let Some(f) = &self.data_file {
            f.sync_data().map_err(|e| StoreError::Unavailable(format!("fsync failed: {e}")))?;
        }
        Ok(())
    }

    /// Index of the last entry.
    pub fn last(&self) -> u64 {
        self.snap_meta.index + self.entries.len() as u64
    }

    /// Index of the last compaction point.
    pub fn compacted(&self) -> u64 {
        self.snap_meta.index
    }
}

impl raft::Storage for LogStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState { hard_state: self.hard_state.clone(), conf_state: self.conf_state.clone() })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snap_meta.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let offset = self.snap_meta.index + 1;
        let mut out: Vec<Entry> = self
            .entries
            .range((low - offset) as usize..(high - offset) as usize)
            .cloned()
            .collect();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snap_meta.index {
            return Ok(self.snap_meta.term);
        }
        if idx < self.snap_meta.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let offset = self.snap_meta.index + 1;
        match self.entries.get((idx - offset) as usize) {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snap_meta.index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let (applied, data) = self
            .store
            .snapshot()
            .map_err(|e| raft::Error::Store(StorageError::Other(Box::new(e))))?;
        if applied < request_index {
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        let mut snap = Snapshot { data: data.into(), ..Default::default() };
        let meta = snap.mut_metadata();
        meta.index = applied;
        meta.term = self.term(applied).unwrap_or(self.hard_state.term);
        meta.set_conf_state(self.conf_state.clone());
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::crypto::Key;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("payload-{index}").into_bytes().into(),
            ..Default::default()
        }
    }

    fn open(dir: &std::path::Path, key: &Key) -> LogStorage {
        let db = crate::store::open_db(dir).unwrap();
        let sealer = Arc::new(Sealer::new(key));
        let store = Arc::new(Store::open(&db, sealer.clone()).unwrap());
        LogStorage::open(&db, sealer, store).unwrap()
    }

    #[test]
    fn the_log_survives_reopen_with_conflicting_tails_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::generate().unwrap();
        {
            let mut s = open(dir.path(), &key);
            s.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]).unwrap();
            s.append(&[entry(2, 2)]).unwrap();
            s.set_hard_state(HardState { term: 2, commit: 2, ..Default::default() }).unwrap();
            s.sync().unwrap();
        }
        let s = open(dir.path(), &key);
        assert_eq!(s.last_index().unwrap(), 2);
        assert_eq!(s.term(2).unwrap(), 2);
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 2);
        let got = s.entries(1, 3, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(got.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(), [(1, 1), (2, 2)]);
    }

    #[test]
    fn compaction_keeps_the_boundary_term() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::generate().unwrap();
        {
            let mut s = open(dir.path(), &key);
            s.append(&[entry(1, 1), entry(2, 1), entry(3, 2)]).unwrap();
            s.compact(2).unwrap();
            s.sync().unwrap();
        }
        let s = open(dir.path(), &key);
        assert_eq!(s.first_index().unwrap(), 3);
        assert_eq!(s.term(2).unwrap(), 1);
        assert!(matches!(
            s.entries(1, 3, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
    }

    #[test]
    fn a_damaged_entry_is_reported_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::generate().unwrap();
        {
            let mut s = open(dir.path(), &key);
            s.append(&[entry(1, 1), entry(2, 1)]).unwrap();
            let mut bad = s.log.get(2u64.to_be_bytes()).unwrap().unwrap().to_vec();
            bad[15] ^= 0xff;
            s.log.insert(2u64.to_be_bytes(), bad).unwrap();
            s.sync().unwrap();
        }
        let db = crate::store::open_db(dir.path()).unwrap();
        let sealer = Arc::new(Sealer::new(&key));
        let store = Arc::new(Store::open(&db, sealer.clone()).unwrap());
        let err = LogStorage::open(&db, sealer, store).unwrap_err().to_string();
        assert!(err.contains("raft entry 2"), "{err}");
    }

    #[test]
    fn nothing_is_readable_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = open(dir.path(), &Key::generate().unwrap());
            s.append(&[entry(1, 1)]).unwrap();
            s.sync().unwrap();
        }
        for e in std::fs::read_dir(dir.path()).unwrap().flatten() {
            if e.path().is_file() {
                let bytes = std::fs::read(e.path()).unwrap();
                assert!(!bytes.windows(9).any(|w| w == b"payload-1"), "{:?}", e.path());
            }
        }
    }
}
