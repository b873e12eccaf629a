//! Owns the Raft log on disk: entries, hard state, conf state and the compaction point in sled,
//! each record sealed with the manager's data key and bound to its index; an in-memory copy of
//! the log since the last compaction serves raft-rs. Snapshots are cut from the object store.
//! Never talks to the network.
//!
//! After every sync a small sealed mark file beside sled's data file records the term and
//! commit index that were durable. sled 0.34 reads a damaged record as the torn end of its log
//! and silently drops it and everything after it, so a damaged data file would otherwise come
//! back as an older state (and a member that forgot its votes). At open, a store behind its
//! mark is refused.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
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
/// The mark file, in sled's directory.
const MARK_FILE: &str = "raft.mark";
const MARK_AAD: &[u8] = b"raft-mark";
/// Plain bytes of one mark slot: sequence, term, commit.
const MARK_PLAIN: usize = 24;
/// Sealed bytes of one slot (nonce and tag added); the file holds two, written alternately so
/// a torn write leaves the other whole.
const MARK_SLOT: usize = MARK_PLAIN + 12 + 16;

/// The Raft log of one manager.
#[derive(Debug)]
pub struct LogStorage {
    log: sled::Tree,
    state: sled::Tree,
    sealer: Arc<Sealer>,
    store: Arc<Store>,
    /// What makes writes durable (shared with the Raft task's sync thread).
    syncer: Syncer,
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last entry folded into a snapshot or compaction.
    snap_meta: SnapshotMetadata,
    entries: VecDeque<Entry>,
    /// Deletes compacted entries from sled on its own thread (started at the first compaction).
    compactor: Option<std::sync::mpsc::Sender<Compacted>>,
}

/// Entries dropped by a compaction, for the compactor thread.
#[derive(Debug)]
struct Compacted {
    range: std::ops::RangeInclusive<u64>,
    entries: Vec<Entry>,
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
            syncer: Syncer {
                db: db.clone(),
                data_file: None,
                mark: None,
                sealer: sealer.clone(),
                seq: Arc::new(AtomicU64::new(0)),
            },
            sealer,
            store,
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            snap_meta: SnapshotMetadata::default(),
            entries: VecDeque::new(),
            compactor: None,
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
        let _gate = self.sealer.writing();
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
        {
            let _gate = self.sealer.writing();
            let sealed = self.sealer.seal(&state_aad(RAFT_ID), &id.to_be_bytes())?;
            self.state.insert(RAFT_ID, sealed)?;
        }
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

    /// Persists and keeps new entries, replacing any conflicting tail. Written record by record
    /// rather than as one sled batch (sled writes a batch out to disk on its own at once): sled
    /// recovers a prefix of its writes, so the conflicting tail is removed from its end first
    /// and the new entries are written in order, and a crash at any point leaves a prefix of
    /// the old log or of the new one, never a gap or an old entry after a new one.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        let Some(first) = entries.first() else { return Ok(()) };
        let old_last = self.last();
        let keep = first.index.saturating_sub(self.snap_meta.index + 1) as usize;
        self.entries.truncate(keep);
        for stale in (first.index..=old_last).rev() {
            self.log.remove(stale.to_be_bytes())?;
        }
        let _gate = self.sealer.writing();
        for e in entries {
            let bytes = e.write_to_bytes().map_err(|e| corrupt(e.to_string()))?;
            self.log.insert(e.index.to_be_bytes(), self.sealer.seal(&log_aad(e.index), &bytes)?)?;
            self.entries.push_back(e.clone());
        }
        Ok(())
    }

    /// Persists the hard state.
    pub fn set_hard_state(&mut self, hs: HardState) -> Result<(), StoreError> {
        self.write_state(HARD_STATE, &hs)?;
        self.hard_state = hs;
        Ok(())
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
        let first = self.snap_meta.index + 1;
        let n = self.entries.iter().take_while(|e| e.index <= index).count();
        let entries = self.entries.drain(..n).collect();
        self.snap_meta.index = index;
        self.snap_meta.term = term;
        self.write_state(SNAP_META, &self.snap_meta.clone())?;
        self.delete_compacted(Compacted { range: first..=index, entries })
    }

    /// Hands compacted entries to the compactor thread, which deletes them from sled and
    /// frees them: both took the Raft task 10–160 ms for a compaction of 10,000 entries.
    /// Nothing writes at or below the compaction point again, and what a crash leaves
    /// undeleted is skipped when the log is loaded.
    fn delete_compacted(&mut self, done: Compacted) -> Result<(), StoreError> {
        let done = match &self.compactor {
            Some(tx) => match tx.send(done) {
                Ok(()) => return Ok(()),
                Err(std::sync::mpsc::SendError(done)) => done,
            },
            None => done,
        };
        let (tx, rx) = std::sync::mpsc::channel::<Compacted>();
        let log = self.log.clone();
        std::thread::Builder::new()
            .name("raft-compact".into())
            .spawn(move || {
                for Compacted { range, entries } in rx {
                    drop(entries);
                    for index in range {
                        if let Err(e) = log.remove(index.to_be_bytes()) {
                            tracing::warn!(error = %e, "deleting compacted raft entries failed");
                            break;
                        }
                    }
                }
            })
            .map_err(|e| StoreError::Unavailable(format!("starting the compactor: {e}")))?;
        let _ = tx.send(done);
        self.compactor = Some(tx);
        Ok(())
    }

    /// Also fdatasyncs sled's data file in `dir` at every sync and keeps the durable mark
    /// beside it; refuses a store that is behind its mark (sled dropped durable records).
    pub fn with_data_file(mut self, dir: &Path) -> Result<LogStorage, StoreError> {
        let file = std::fs::File::open(dir.join("db")).map_err(|e| {
            StoreError::Unavailable(format!("opening {} for fsync: {e}", dir.join("db").display()))
        })?;
        self.syncer.data_file = Some(Arc::new(file));
        let mark_path = dir.join(MARK_FILE);
        if let Some((seq, term, commit)) = read_mark(&mark_path, &self.sealer)? {
            let (has_term, has_commit) = (self.hard_state.term, self.durable_commit());
            if has_term < term || has_commit < commit {
                return Err(StoreError::Unavailable(format!(
                    "the raft log is damaged: the store in {} holds term {has_term} and commit \
                     index {has_commit}, but term {term} and index {commit} were durably written \
                     (sled dropped records it could not read). Restore the data dir from a \
                     backup, or remove this manager ('shoal node rm --force' on another manager) \
                     and join it again",
                    dir.display()
                )));
            }
            self.syncer.seq.store(seq, Ordering::SeqCst);
        }
        self.syncer.mark = Some(Arc::new(MarkFile::new(mark_path)));
        Ok(self)
    }

    /// Makes the commit index cover what the object store has applied. Only committed entries
    /// are applied, but a store written before the hard state was saved ahead of the applied
    /// objects could, after a crash, hold objects past its commit index, and raft-rs refuses
    /// to start from that. A store ahead of the log itself is damaged.
    pub fn cover_applied(&mut self, applied: u64) -> Result<(), StoreError> {
        if applied <= self.durable_commit() {
            return Ok(());
        }
        if applied > self.last() {
            return Err(corrupt(format!(
                "the object store has applied entry {applied}, beyond the log's last entry {}",
                self.last()
            )));
        }
        self.set_hard_state(HardState { commit: applied, ..self.hard_state.clone() })?;
        self.sync()
    }

    /// The commit index that is on disk (a snapshot counts as committed).
    fn durable_commit(&self) -> u64 {
        self.hard_state.commit.max(self.snap_meta.index)
    }

    /// Makes everything written so far durable (sled's flush, then fdatasync, then the mark).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.syncer.sync(self.mark())
    }

    /// A handle that makes writes durable from another thread.
    pub fn syncer(&self) -> Syncer {
        self.syncer.clone()
    }

    /// The term and commit index written so far (what the next sync records in the mark).
    pub fn mark(&self) -> (u64, u64) {
        (self.hard_state.term, self.durable_commit())
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

/// Makes a manager's sled writes durable; cheap to clone and usable from any thread.
#[derive(Clone)]
pub struct Syncer {
    db: sled::Db,
    /// sled's data file: fdatasync'd after sled's own flush, which only issues
    /// sync_file_range and so would not reach the disk's cache.
    data_file: Option<Arc<std::fs::File>>,
    mark: Option<Arc<MarkFile>>,
    sealer: Arc<Sealer>,
    seq: Arc<AtomicU64>,
}

impl std::fmt::Debug for Syncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syncer").field("mark", &self.mark).finish_non_exhaustive()
    }
}

impl Syncer {
    /// Flushes sled and fdatasyncs its file.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        if let Some(f) = &self.data_file {
            f.sync_data().map_err(|e| io_failed("fsync of the raft store", &e))?;
        }
        Ok(())
    }

    /// Flushes sled, fdatasyncs its file, then records `(term, commit)` as durable.
    pub fn sync(&self, (term, commit): (u64, u64)) -> Result<(), StoreError> {
        self.flush()?;
        if let Some(mark) = &self.mark {
            let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
            mark.write(&self.sealer, seq, term, commit)?;
        }
        Ok(())
    }
}

/// Seals every record of `tree` that is not yet sealed with the current key again (data key
/// rotation). `aad` gives a record's associated data from its key, `None` for records that are
/// not sealed. Runs beside live writers: a record is replaced only if it did not change since
/// it was read (a changed one was written with the current key already). Returns how many were
/// sealed again.
pub(crate) fn reseal_tree(
    tree: &sled::Tree,
    sealer: &Sealer,
    aad: impl Fn(&[u8]) -> Option<Vec<u8>>,
) -> Result<usize, StoreError> {
    let mut resealed = 0;
    for kv in tree.iter() {
        let (k, v) = kv?;
        let Some(aad) = aad(&k) else { continue };
        if sealer.is_current(&aad, &v) {
            continue;
        }
        let plain =
            sealer.open(&aad, &v, || format!("record {:?}", String::from_utf8_lossy(&k)))?;
        let fresh = sealer.seal(&aad, &plain)?;
        if tree.compare_and_swap(&k, Some(&v), Some(fresh))?.is_ok() {
            resealed += 1;
        }
    }
    Ok(resealed)
}

/// Seals the Raft log, its state records and the mark file in `db` (directory `dir`) again
/// with the sealer's current key.
pub(crate) fn reseal_log(db: &sled::Db, dir: &Path, sealer: &Sealer) -> Result<usize, StoreError> {
    let log = db.open_tree("raft_log")?;
    let state = db.open_tree("raft_state")?;
    let mut n =
        reseal_tree(&log, sealer, |k| Some(log_aad(u64::from_be_bytes(k.try_into().ok()?))))?;
    n += reseal_tree(&state, sealer, |k| Some(state_aad(k)))?;
    let path = dir.join(MARK_FILE);
    if let Some((seq, term, commit)) = read_mark(&path, sealer)? {
        // Both slots, so no copy sealed with the old key remains.
        let mark = MarkFile::new(path);
        mark.write(sealer, seq, term, commit)?;
        mark.write(sealer, seq + 1, term, commit)?;
    }
    Ok(n)
}

/// An I/O error with what was being done; a full disk is named as such.
pub fn io_failed(what: &str, e: &std::io::Error) -> StoreError {
    if e.kind() == std::io::ErrorKind::StorageFull {
        StoreError::Unavailable(format!(
            "{what} failed: the disk is full (no space left on device); free space, then \
             restart shoald"
        ))
    } else {
        StoreError::Unavailable(format!("{what} failed: {e}"))
    }
}

/// The mark file, opened at its first write and kept open (it is written at every sync).
#[derive(Debug)]
struct MarkFile {
    path: PathBuf,
    file: std::sync::OnceLock<std::fs::File>,
}

impl MarkFile {
    fn new(path: PathBuf) -> MarkFile {
        MarkFile { path, file: std::sync::OnceLock::new() }
    }

    fn failed(&self, e: &std::io::Error) -> StoreError {
        io_failed(&format!("writing {}", self.path.display()), e)
    }

    /// Writes slot `seq % 2` (not fsynced: the mark only ever trails what is durable, so losing
    /// its latest write loses nothing but a little of its reach).
    fn write(&self, sealer: &Sealer, seq: u64, term: u64, commit: u64) -> Result<(), StoreError> {
        use std::os::unix::fs::{FileExt, OpenOptionsExt};
        let plain = [seq.to_be_bytes(), term.to_be_bytes(), commit.to_be_bytes()].concat();
        let _gate = sealer.writing();
        let sealed = sealer.seal(MARK_AAD, &plain)?;
        let file = match self.file.get() {
            Some(f) => f,
            None => {
                let opened = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .open(&self.path)
                    .map_err(|e| self.failed(&e))?;
                self.file.get_or_init(|| opened)
            }
        };
        file.write_all_at(&sealed, (seq % 2) * MARK_SLOT as u64).map_err(|e| self.failed(&e))
    }
}

/// The newest whole slot of the mark file: `(seq, term, commit)`; `None` when there is no
/// file (a store from before marks, or one never synced).
fn read_mark(path: &Path, sealer: &Sealer) -> Result<Option<(u64, u64, u64)>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_failed(&format!("reading {}", path.display()), &e)),
    };
    let best = bytes
        .chunks(MARK_SLOT)
        .filter_map(|slot| sealer.open(MARK_AAD, slot, || "raft mark".into()).ok())
        .filter(|plain| plain.len() == MARK_PLAIN)
        .map(|p| {
            let word =
                |i: usize| u64::from_be_bytes(p[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
            (word(0), word(1), word(2))
        })
        .max();
    match best {
        Some(mark) => Ok(Some(mark)),
        None => Err(StoreError::Unavailable(format!(
            "{} is damaged or sealed with another key: it records how far the raft log was \
             durably written, so the store cannot be checked against it",
            path.display()
        ))),
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
    fn compacted_entries_leave_sled_and_leftovers_are_skipped_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::generate().unwrap();
        let stale;
        {
            let mut s = open(dir.path(), &key);
            s.append(&(1..=100).map(|i| entry(i, 1)).collect::<Vec<_>>()).unwrap();
            stale = s.log.get(10u64.to_be_bytes()).unwrap().unwrap();
            s.compact(60).unwrap();
            s.sync().unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while s.log.iter().next().unwrap().unwrap().0.as_ref() != 61u64.to_be_bytes() {
                assert!(std::time::Instant::now() < deadline, "compacted entries stayed in sled");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            // What a crash before the compactor's deletes would leave behind.
            s.log.insert(10u64.to_be_bytes(), stale).unwrap();
            s.sync().unwrap();
        }
        let s = open(dir.path(), &key);
        assert_eq!(s.first_index().unwrap(), 61);
        assert_eq!(s.last_index().unwrap(), 100);
        assert_eq!(s.entries(61, 101, None, GetEntriesContext::empty(false)).unwrap().len(), 40);
    }

    #[test]
    fn a_commit_index_behind_the_applied_objects_is_raised_to_them() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::generate().unwrap();
        let mut s = open(dir.path(), &key);
        s.append(&(1..=10).map(|i| entry(i, 1)).collect::<Vec<_>>()).unwrap();
        s.set_hard_state(HardState { term: 1, commit: 5, ..Default::default() }).unwrap();
        s.cover_applied(8).unwrap();
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 8);
        s.cover_applied(3).unwrap();
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 8, "never lowered");
        let err = s.cover_applied(11).unwrap_err().to_string();
        assert!(err.contains("beyond the log's last entry 10"), "{err}");
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

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap().flatten() {
            let dest = to.join(e.file_name());
            if e.path().is_dir() {
                copy_dir(&e.path(), &dest);
            } else {
                std::fs::copy(e.path(), dest).unwrap();
            }
        }
    }

    fn open_checked(dir: &Path, key: &Key) -> Result<LogStorage, StoreError> {
        open(dir, key).with_data_file(dir)
    }

    #[test]
    fn a_store_behind_what_was_durably_written_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let (live, old) = (root.path().join("live"), root.path().join("old"));
        let key = Key::generate().unwrap();
        {
            let mut s = open_checked(&live, &key).unwrap();
            s.append(&[entry(1, 1), entry(2, 1)]).unwrap();
            s.set_hard_state(HardState { term: 1, commit: 1, ..Default::default() }).unwrap();
            s.sync().unwrap();
        }
        copy_dir(&live, &old);
        {
            let mut s = open_checked(&live, &key).unwrap();
            s.append(&[entry(3, 2)]).unwrap();
            s.set_hard_state(HardState { term: 2, commit: 3, ..Default::default() }).unwrap();
            s.sync().unwrap();
        }
        // A whole store reopens; one that lost what its mark says was durable (as sled does
        // with a damaged record) is refused, naming the problem.
        let s = open_checked(&live, &key).unwrap();
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 3);
        drop(s);
        std::fs::copy(live.join(MARK_FILE), old.join(MARK_FILE)).unwrap();
        let err = open_checked(&old, &key).unwrap_err().to_string();
        assert!(err.contains("the raft log is damaged") && err.contains("index 3"), "{err}");
        // A damaged mark is reported, not ignored.
        std::fs::write(live.join(MARK_FILE), [0u8; 2 * MARK_SLOT]).unwrap();
        let err = open_checked(&live, &key).unwrap_err().to_string();
        assert!(err.contains("raft.mark is damaged"), "{err}");
    }

    #[test]
    fn a_torn_mark_write_leaves_the_other_slot() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::new(&Key::generate().unwrap());
        let path = dir.path().join(MARK_FILE);
        let mark = MarkFile::new(path.clone());
        mark.write(&sealer, 1, 4, 10).unwrap();
        mark.write(&sealer, 2, 4, 12).unwrap();
        assert_eq!(read_mark(&path, &sealer).unwrap(), Some((2, 4, 12)));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 0xff; // slot 0 holds seq 2
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_mark(&path, &sealer).unwrap(), Some((1, 4, 10)));
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
