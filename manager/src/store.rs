//! Owns the manager's object store: versioned objects sealed at rest in sled, transactions that
//! commit through a [`Proposer`] (Raft) and apply only if what they read is unchanged, and a
//! watch feed of applied changes. Never talks to the network.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use prost::Message;
use shoal_proto::{
    AccessRole, Cluster, Grant, Member, Meta, NameClaim, Network, Node, Precondition, Secret,
    Service, SnapshotRecord, StoreBatch, StoreSnapshot, Task, Team, TrustRepo, TrustRoot,
    TrustTimestampKey, User, Write,
};
use tokio::sync::broadcast;

use crate::raft::crypto::{CryptoError, Sealer};

/// Attempts at a transaction that keeps conflicting with concurrent ones.
const MAX_ATTEMPTS: usize = 16;
const APPLIED_KEY: &[u8] = b"\0applied";

/// Errors of the object store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O failed: {0}")]
    Io(#[from] sled::Error),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("stored {kind} {id} is corrupt: {source}")]
    Corrupt { kind: String, id: String, source: prost::DecodeError },
    #[error("{kind} {id} already exists")]
    Exists { kind: &'static str, id: String },
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} {id} was changed concurrently (version {expected} is stale); retry")]
    Conflict { kind: &'static str, id: String, expected: u64 },
    #[error("the write kept conflicting with concurrent writes; retry")]
    Contended,
    #[error("{0}")]
    Unavailable(String),
}

/// A kind of stored object.
pub trait Object: Message + Default + Clone {
    /// Key prefix and name used in messages.
    const KIND: &'static str;
    /// The object's ID.
    fn id(&self) -> &str;
    /// Store bookkeeping of the object.
    fn meta(&self) -> Option<&Meta>;
    /// Mutable bookkeeping of the object.
    fn meta_mut(&mut self) -> &mut Meta;
}

macro_rules! impl_object {
    ($t:ty, $kind:literal) => {
        impl Object for $t {
            const KIND: &'static str = $kind;
            fn id(&self) -> &str {
                &self.id
            }
            fn meta(&self) -> Option<&Meta> {
                self.meta.as_ref()
            }
            fn meta_mut(&mut self) -> &mut Meta {
                self.meta.get_or_insert_with(Meta::default)
            }
        }
    };
}
impl_object!(Node, "node");
impl_object!(Cluster, "cluster");
impl_object!(Member, "member");
impl_object!(Service, "service");
impl_object!(Task, "task");
impl_object!(Secret, "secret");
impl_object!(NameClaim, "name");
impl_object!(Network, "network");
impl_object!(User, "user");
impl_object!(Team, "team");
impl_object!(AccessRole, "role");
impl_object!(Grant, "grant");
impl_object!(TrustRepo, "trust-repo");
impl_object!(TrustRoot, "trust-root");
impl_object!(TrustTimestampKey, "trust-key");

/// One applied change, as seen by watchers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: String,
    pub id: String,
    pub version: u64,
    pub deleted: bool,
}

/// Whether a replicated batch took effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Conflict,
}

/// Committed entries staged to be applied together (see [`Store::stage`]).
#[derive(Debug, Default)]
pub struct ApplyGroup {
    /// By key: the new version and value, or `None` for a deletion.
    writes: BTreeMap<Vec<u8>, Option<(u64, Vec<u8>)>>,
    events: Vec<Event>,
    last: Option<u64>,
}

impl ApplyGroup {
    /// Records that entries up to `index` are applied by this group.
    pub fn applied(&mut self, index: u64) {
        self.last = Some(index);
    }
}

/// A boxed future, for the proposer seam.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Replicates a batch and resolves once it is applied to this store (or refused).
pub trait Proposer: Send + Sync + std::fmt::Debug {
    /// Proposes an encoded [`StoreBatch`].
    fn propose(&self, batch: Vec<u8>) -> BoxFuture<'_, Result<Outcome, StoreError>>;
    /// Resolves once this store has applied everything committed before the call.
    fn barrier(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// The object store.
#[derive(Debug)]
pub struct Store {
    db: sled::Db,
    objects: sled::Tree,
    sealer: Arc<Sealer>,
    applied: AtomicU64,
    local_lock: Mutex<()>,
    proposer: OnceLock<Arc<dyn Proposer>>,
    events: broadcast::Sender<Event>,
}

fn key(kind: &str, id: &str) -> Vec<u8> {
    format!("{kind}/{id}").into_bytes()
}

fn split_key(k: &[u8]) -> (String, String) {
    let s = String::from_utf8_lossy(k);
    match s.split_once('/') {
        Some((kind, id)) => (kind.to_string(), id.to_string()),
        None => (s.to_string(), String::new()),
    }
}

pub(crate) use shoal_proto::time::now_ms;

fn aad(k: &[u8]) -> Vec<u8> {
    [b"obj:".as_slice(), k].concat()
}

impl Store {
    /// Opens the store kept in `db`, sealing records with `sealer`.
    pub fn open(db: &sled::Db, sealer: Arc<Sealer>) -> Result<Store, StoreError> {
        let objects = db.open_tree("objects")?;
        let applied = match objects.get(APPLIED_KEY)? {
            Some(v) => u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])),
            None => 0,
        };
        let (events, _) = broadcast::channel(65_536);
        Ok(Store {
            db: db.clone(),
            objects,
            sealer,
            applied: AtomicU64::new(applied),
            local_lock: Mutex::new(()),
            proposer: OnceLock::new(),
            events,
        })
    }

    /// Routes every commit through `proposer` from now on (once).
    pub fn set_proposer(&self, proposer: Arc<dyn Proposer>) {
        let _ = self.proposer.set(proposer);
    }

    /// The index of the last applied change (the store's version).
    pub fn version(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }

    fn read_raw(&self, k: &[u8]) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let Some(sealed) = self.objects.get(k)? else { return Ok(None) };
        let plain =
            self.sealer.open(&aad(k), &sealed, || String::from_utf8_lossy(k).into_owned())?;
        if plain.len() < 8 {
            return Err(
                CryptoError::Truncated { what: String::from_utf8_lossy(k).into_owned() }.into()
            );
        }
        let version = u64::from_be_bytes(plain[..8].try_into().unwrap_or([0; 8]));
        Ok(Some((version, plain[8..].to_vec())))
    }

    /// Reads one object (from this manager's applied state).
    pub fn get<T: Object>(&self, id: &str) -> Result<Option<T>, StoreError> {
        self.read_raw(&key(T::KIND, id))?.map(|(v, b)| decode::<T>(id, v, &b)).transpose()
    }

    /// Lists every object of a kind.
    pub fn list<T: Object>(&self) -> Result<Vec<T>, StoreError> {
        self.list_under("")
    }

    /// Lists the objects of a kind whose IDs start with `id_prefix`.
    pub fn list_under<T: Object>(&self, id_prefix: &str) -> Result<Vec<T>, StoreError> {
        let prefix = key(T::KIND, id_prefix);
        let kind_len = key(T::KIND, "").len();
        let mut out = Vec::new();
        for kv in self.objects.scan_prefix(&prefix) {
            let (k, _) = kv?;
            let id = String::from_utf8_lossy(&k[kind_len..]).into_owned();
            if let Some((v, b)) = self.read_raw(&k)? {
                out.push(decode::<T>(&id, v, &b)?);
            }
        }
        Ok(out)
    }

    /// Seals every stored object again with the sealer's current key (data key rotation);
    /// runs beside live writes. Returns how many were sealed again.
    pub fn reseal(&self) -> Result<usize, StoreError> {
        crate::raft::storage::reseal_tree(&self.objects, &self.sealer, |k| {
            (k != APPLIED_KEY).then(|| aad(k))
        })
    }

    /// Subscribes to applied changes.
    pub fn watch(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Waits until this manager has applied everything committed before now (linearizable reads).
    pub async fn barrier(&self) -> Result<(), StoreError> {
        match self.proposer.get() {
            Some(p) => p.barrier().await,
            None => Ok(()),
        }
    }

    /// Runs `f` as one atomic transaction, replicated before it returns. `f` may run again if a
    /// concurrent transaction changed what it read.
    ///
    /// A refusal (`f` fails) says as much about the state as a write does, so it is never given
    /// from a state the cluster has left: first this store catches up with everything
    /// committed so far (a barrier) and `f` runs again there. Without it a manager that lags,
    /// or is cut off, or whose Raft member stopped, answered "already exists" for a name
    /// removed elsewhere long before (found by the chaos runner); with no leader to confirm,
    /// the caller now hears that instead.
    pub async fn update<R, E: From<StoreError>>(
        &self,
        mut f: impl FnMut(&mut Tx<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut confirmed = self.proposer.get().is_none();
        for _ in 0..MAX_ATTEMPTS {
            let mut tx = Tx { store: self, reads: BTreeMap::new(), writes: BTreeMap::new() };
            let result = match f(&mut tx) {
                Ok(result) => result,
                Err(refused) if confirmed => return Err(refused),
                Err(_) => {
                    self.barrier().await?;
                    confirmed = true;
                    continue;
                }
            };
            if tx.writes.is_empty() {
                return Ok(result);
            }
            if self.commit(tx.into_batch()).await? == Outcome::Applied {
                return Ok(result);
            }
        }
        Err(StoreError::Contended.into())
    }

    async fn commit(&self, batch: StoreBatch) -> Result<Outcome, StoreError> {
        if let Some(p) = self.proposer.get() {
            return p.propose(batch.encode_to_vec()).await;
        }
        let outcome = {
            let _guard = self.local_lock.lock().unwrap_or_else(|p| p.into_inner());
            self.apply_batch(self.version() + 1, &batch)?
        };
        self.db.flush_async().await?;
        Ok(outcome)
    }

    /// Applies a committed batch at `index` on its own (one sled write).
    pub fn apply_batch(&self, index: u64, batch: &StoreBatch) -> Result<Outcome, StoreError> {
        let mut group = ApplyGroup::default();
        let outcome = self.stage(&mut group, index, batch)?;
        self.commit_group(group)?;
        Ok(outcome)
    }

    /// The version `k` has once `group` is applied (0: absent).
    fn staged_version(&self, group: &ApplyGroup, k: &[u8]) -> Result<u64, StoreError> {
        match group.writes.get(k) {
            Some(staged) => Ok(staged.as_ref().map_or(0, |(version, _)| *version)),
            None => Ok(self.read_raw(k)?.map_or(0, |(version, _)| version)),
        }
    }

    /// Adds the committed batch at `index` to `group` (called in log order by the Raft task):
    /// its preconditions are checked against the store as it will be with everything staged
    /// before it. Nothing is visible until [`Store::commit_group`].
    pub fn stage(
        &self,
        group: &mut ApplyGroup,
        index: u64,
        batch: &StoreBatch,
    ) -> Result<Outcome, StoreError> {
        group.applied(index);
        for pre in &batch.preconditions {
            if self.staged_version(group, &pre.key)? != pre.version {
                return Ok(Outcome::Conflict);
            }
        }
        for w in &batch.writes {
            let (kind, id) = split_key(&w.key);
            let staged = (!w.delete).then(|| (index, w.value.clone()));
            group.writes.insert(w.key.clone(), staged);
            group.events.push(Event { kind, id, version: index, deleted: w.delete });
        }
        Ok(Outcome::Applied)
    }

    /// Writes a group of applied entries to sled at once (atomically, with the applied index),
    /// then tells watchers. sled writes each batch out at once, so one per Raft Ready rather
    /// than one per entry is what keeps the disk from being the limit.
    pub fn commit_group(&self, group: ApplyGroup) -> Result<(), StoreError> {
        let Some(index) = group.last else { return Ok(()) };
        if group.writes.is_empty() {
            return self.set_applied(index);
        }
        let mut batch = sled::Batch::default();
        let gate = self.sealer.writing();
        for (k, staged) in &group.writes {
            match staged {
                None => batch.remove(k.as_slice()),
                Some((version, value)) => {
                    let plain = [version.to_be_bytes().as_slice(), value].concat();
                    batch.insert(k.as_slice(), self.sealer.seal(&aad(k), &plain)?);
                }
            }
        }
        batch.insert(APPLIED_KEY, &index.to_be_bytes());
        self.objects.apply_batch(batch)?;
        drop(gate);
        self.applied.store(index, Ordering::SeqCst);
        for e in group.events {
            let _ = self.events.send(e);
        }
        Ok(())
    }

    /// Records that `index` was applied without changing objects (empty or config entries).
    pub fn set_applied(&self, index: u64) -> Result<(), StoreError> {
        self.objects.insert(APPLIED_KEY, &index.to_be_bytes())?;
        self.applied.store(index, Ordering::SeqCst);
        Ok(())
    }

    /// The whole store, for a Raft snapshot.
    pub fn snapshot(&self) -> Result<(u64, Vec<u8>), StoreError> {
        let _guard = self.local_lock.lock().unwrap_or_else(|p| p.into_inner());
        let applied = self.version();
        let mut records = Vec::new();
        for kv in self.objects.iter() {
            let (k, _) = kv?;
            if k.as_ref() == APPLIED_KEY {
                continue;
            }
            if let Some((version, value)) = self.read_raw(&k)? {
                records.push(SnapshotRecord { key: k.to_vec(), version, value });
            }
        }
        Ok((applied, StoreSnapshot { records }.encode_to_vec()))
    }

    /// Replaces the whole store with a snapshot taken at `index`.
    pub fn restore(&self, index: u64, data: &[u8]) -> Result<(), StoreError> {
        let snap = StoreSnapshot::decode(data).map_err(|source| StoreError::Corrupt {
            kind: "snapshot".into(),
            id: index.to_string(),
            source,
        })?;
        self.objects.clear()?;
        let mut batch = sled::Batch::default();
        let gate = self.sealer.writing();
        for r in &snap.records {
            let plain = [r.version.to_be_bytes().as_slice(), &r.value].concat();
            batch.insert(r.key.as_slice(), self.sealer.seal(&aad(&r.key), &plain)?);
        }
        batch.insert(APPLIED_KEY, &index.to_be_bytes());
        self.objects.apply_batch(batch)?;
        drop(gate);
        self.applied.store(index, Ordering::SeqCst);
        for r in snap.records {
            let (kind, id) = split_key(&r.key);
            let _ = self.events.send(Event { kind, id, version: index, deleted: false });
        }
        Ok(())
    }
}

/// Opens a sled database, waiting out a previous opener of the same directory in this process
/// (sled releases its file lock from a background thread after the last handle drops).
pub fn open_db(path: &std::path::Path) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match sled::Config::new().path(path).open() {
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("lock") =>
            {
                if std::time::Instant::now() >= deadline {
                    return Err(sled::Error::Io(e));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn decode<T: Object>(id: &str, version: u64, bytes: &[u8]) -> Result<T, StoreError> {
    let mut obj = T::decode(bytes).map_err(|source| StoreError::Corrupt {
        kind: T::KIND.into(),
        id: id.to_string(),
        source,
    })?;
    obj.meta_mut().version = version;
    Ok(obj)
}

/// A transaction in progress: reads see its own writes; nothing is visible to others until the
/// closure passed to [`Store::update`] returns `Ok` and the batch is applied.
#[derive(Debug)]
pub struct Tx<'a> {
    store: &'a Store,
    /// Everything read, as first read: later reads in the transaction see the same value, and
    /// the versions become the batch's preconditions.
    reads: BTreeMap<Vec<u8>, Option<(u64, Vec<u8>)>>,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Tx<'_> {
    /// Reads one object, including this transaction's own writes.
    pub fn get<T: Object>(&mut self, id: &str) -> Result<Option<T>, StoreError> {
        let k = key(T::KIND, id);
        match self.writes.get(&k) {
            Some(Some(bytes)) => return decode(id, 0, bytes).map(Some),
            Some(None) => return Ok(None),
            None => {}
        }
        let raw = match self.reads.get(&k) {
            Some(cached) => cached.clone(),
            None => {
                let raw = self.store.read_raw(&k)?;
                self.reads.insert(k, raw.clone());
                raw
            }
        };
        raw.map(|(v, b)| decode(id, v, &b)).transpose()
    }

    /// Lists every object of a kind, including this transaction's own writes. (A list does not
    /// make the transaction conflict with later creations; read objects you depend on by ID.)
    pub fn list<T: Object>(&self) -> Result<Vec<T>, StoreError> {
        self.list_under("")
    }

    /// Lists the objects of a kind whose IDs start with `id_prefix`, with this transaction's
    /// own writes (the same caveat as [`Tx::list`]).
    pub fn list_under<T: Object>(&self, id_prefix: &str) -> Result<Vec<T>, StoreError> {
        let mut all: BTreeMap<String, T> = self
            .store
            .list_under::<T>(id_prefix)?
            .into_iter()
            .map(|o| (o.id().to_string(), o))
            .collect();
        let prefix = key(T::KIND, id_prefix);
        let kind_len = key(T::KIND, "").len();
        let mine = self.writes.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix));
        for (k, v) in mine {
            let id = String::from_utf8_lossy(&k[kind_len..]).into_owned();
            match v {
                Some(bytes) => all.insert(id.clone(), decode(&id, 0, bytes)?),
                None => all.remove(&id),
            };
        }
        Ok(all.into_values().collect())
    }

    /// Creates an object; fails if one with the same ID exists.
    pub fn create<T: Object>(&mut self, mut obj: T) -> Result<(), StoreError> {
        if self.get::<T>(obj.id())?.is_some() {
            return Err(StoreError::Exists { kind: T::KIND, id: obj.id().to_string() });
        }
        let now = now_ms();
        *obj.meta_mut() = Meta { version: 0, created_at_ms: now, updated_at_ms: now };
        self.put(obj);
        Ok(())
    }

    /// Replaces an object read earlier; fails with `Conflict` if it changed since it was read.
    pub fn update<T: Object>(&mut self, mut obj: T) -> Result<(), StoreError> {
        let current = self
            .get::<T>(obj.id())?
            .ok_or_else(|| StoreError::NotFound { kind: T::KIND, id: obj.id().to_string() })?;
        let (have, want) = (current.meta().map(|m| m.version), obj.meta().map(|m| m.version));
        let written_here = self.writes.contains_key(&key(T::KIND, obj.id()));
        if have != want && !written_here {
            let expected = want.unwrap_or(0);
            return Err(StoreError::Conflict { kind: T::KIND, id: obj.id().to_string(), expected });
        }
        obj.meta_mut().updated_at_ms = now_ms();
        self.put(obj);
        Ok(())
    }

    /// Reserves `name` among the objects of `kind` for the object `owner`: `Exists` if another
    /// holds it. Two transactions reserving the same name conflict (each read it absent), so
    /// only one commits; a listing of names alone would let both through.
    pub fn claim_name(&mut self, kind: &str, name: &str, owner: &str) -> Result<(), StoreError> {
        let claim =
            NameClaim { id: format!("{kind}/{name}"), owner: owner.into(), ..Default::default() };
        self.create(claim)
    }

    /// Gives up the name `name` among the objects of `kind`, if it was reserved (objects made
    /// before reservations existed hold none).
    pub fn release_name(&mut self, kind: &str, name: &str) -> Result<(), StoreError> {
        let id = format!("{kind}/{name}");
        if self.get::<NameClaim>(&id)?.is_some() {
            self.delete::<NameClaim>(&id)?;
        }
        Ok(())
    }

    /// Deletes an object; fails if it does not exist.
    pub fn delete<T: Object>(&mut self, id: &str) -> Result<(), StoreError> {
        if self.get::<T>(id)?.is_none() {
            return Err(StoreError::NotFound { kind: T::KIND, id: id.to_string() });
        }
        self.writes.insert(key(T::KIND, id), None);
        Ok(())
    }

    fn put<T: Object>(&mut self, obj: T) {
        self.writes.insert(key(T::KIND, obj.id()), Some(obj.encode_to_vec()));
    }

    fn into_batch(self) -> StoreBatch {
        // create/update/delete all read the key first, so every written key has its
        // precondition among the reads.
        debug_assert!(self.writes.keys().all(|k| self.reads.contains_key(k)));
        let preconditions: BTreeMap<Vec<u8>, u64> =
            self.reads.into_iter().map(|(k, raw)| (k, raw.map(|(v, _)| v).unwrap_or(0))).collect();
        StoreBatch {
            preconditions: preconditions
                .into_iter()
                .map(|(key, version)| Precondition { key, version })
                .collect(),
            writes: self
                .writes
                .into_iter()
                .map(|(key, v)| Write { key, delete: v.is_none(), value: v.unwrap_or_default() })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::crypto::Key;

    fn open(dir: &std::path::Path, key: &Key) -> Store {
        let db = open_db(dir).unwrap();
        Store::open(&db, Arc::new(Sealer::new(key))).unwrap()
    }

    fn node(id: &str) -> Node {
        Node { id: id.into(), hostname: format!("host-{id}"), ..Default::default() }
    }

    #[tokio::test]
    async fn committed_objects_survive_reopen_and_are_sealed_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::generate().unwrap();
        {
            let store = open(dir.path(), &key);
            store.update(|tx| tx.create(node("a"))).await.unwrap();
            let mut b = node("b");
            b.state_message = "needle-7f3a".into();
            store.update(|tx| tx.create(b.clone())).await.unwrap();
        }
        let store = open(dir.path(), &key);
        let ids: Vec<_> = store.list::<Node>().unwrap().into_iter().map(|n| n.id).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(store.version(), 2);
        assert_eq!(store.get::<Node>("a").unwrap().unwrap().meta.unwrap().version, 1);
        drop(store);
        let found = grep(dir.path(), b"needle-7f3a");
        assert!(found.is_empty(), "plaintext found in {found:?}");
        let wrong = open(dir.path(), &Key::generate().unwrap());
        assert!(matches!(wrong.get::<Node>("a"), Err(StoreError::Crypto(_))));
    }

    fn write(k: &str, value: &[u8]) -> Write {
        Write { key: k.as_bytes().to_vec(), value: value.to_vec(), delete: false }
    }

    fn checked(k: &str, version: u64, w: Write) -> StoreBatch {
        StoreBatch {
            preconditions: vec![Precondition { key: k.as_bytes().to_vec(), version }],
            writes: vec![w],
        }
    }

    #[test]
    fn a_group_of_entries_lands_at_once_and_each_sees_the_ones_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::generate().unwrap();
        let store = open(dir.path(), &key);
        let mut events = store.watch();
        let mut group = ApplyGroup::default();
        let plain = |w| StoreBatch { preconditions: vec![], writes: vec![w] };
        assert_eq!(
            store.stage(&mut group, 5, &plain(write("node/a", b"1"))).unwrap(),
            Outcome::Applied
        );
        // Entry 6 read node/a at the version entry 5 gave it: applies.
        let outcome = store.stage(&mut group, 6, &checked("node/a", 5, write("node/a", b"2")));
        assert_eq!(outcome.unwrap(), Outcome::Applied);
        // Entry 7 read it before entry 6 changed it: refused, and writes nothing.
        let outcome = store.stage(&mut group, 7, &checked("node/a", 5, write("node/b", b"x")));
        assert_eq!(outcome.unwrap(), Outcome::Conflict);
        group.applied(8);
        assert_eq!(store.version(), 0);
        assert!(store.read_raw(b"node/a").unwrap().is_none(), "visible before the commit");
        assert!(events.try_recv().is_err(), "watchers told before the commit");
        store.commit_group(group).unwrap();
        assert_eq!(store.version(), 8);
        assert_eq!(store.read_raw(b"node/a").unwrap(), Some((6, b"2".to_vec())));
        assert!(store.read_raw(b"node/b").unwrap().is_none());
        let seen: Vec<u64> =
            std::iter::from_fn(|| events.try_recv().ok()).map(|e| e.version).collect();
        assert_eq!(seen, [5, 6]);
        drop(store);
        let store = open(dir.path(), &key);
        assert_eq!(store.version(), 8);
        assert_eq!(store.read_raw(b"node/a").unwrap(), Some((6, b"2".to_vec())));
    }

    fn grep(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
        let mut hits = Vec::new();
        for entry in walk(dir) {
            let bytes = std::fs::read(&entry).unwrap_or_default();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(entry);
            }
        }
        hits
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[tokio::test]
    async fn a_failed_transaction_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), &Key::generate().unwrap());
        store.update(|tx| tx.create(node("a"))).await.unwrap();
        let err = store
            .update(|tx| {
                tx.create(node("b"))?;
                tx.create(node("a"))
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Exists { .. }), "{err}");
        assert!(store.get::<Node>("b").unwrap().is_none());
        assert_eq!(store.version(), 1);
    }

    /// A proposer in front of a store that lags: one committed batch (`behind`) is not applied
    /// yet; a barrier applies it, unless no leader can be reached.
    #[derive(Debug)]
    struct Lagging {
        store: std::sync::Weak<Store>,
        behind: std::sync::Mutex<Option<StoreBatch>>,
        leader: bool,
    }

    impl Proposer for Lagging {
        fn propose(&self, batch: Vec<u8>) -> BoxFuture<'_, Result<Outcome, StoreError>> {
            use prost::Message;
            let store = self.store.upgrade().unwrap();
            let batch = StoreBatch::decode(batch.as_slice()).unwrap();
            Box::pin(async move { store.apply_batch(store.version() + 1, &batch) })
        }

        fn barrier(&self) -> BoxFuture<'_, Result<(), StoreError>> {
            Box::pin(async move {
                if !self.leader {
                    return Err(StoreError::Unavailable("no leader".into()));
                }
                if let Some(batch) = self.behind.lock().unwrap().take() {
                    let store = self.store.upgrade().unwrap();
                    store.apply_batch(store.version() + 1, &batch)?;
                }
                Ok(())
            })
        }
    }

    /// A store holding node `a`, whose removal is committed but not yet applied here.
    async fn lagging(dir: &std::path::Path, leader: bool) -> Arc<Store> {
        let store = Arc::new(open(dir, &Key::generate().unwrap()));
        store.update(|tx| tx.create(node("a"))).await.unwrap();
        let removal = Write { key: b"node/a".to_vec(), value: vec![], delete: true };
        let behind = Some(StoreBatch { preconditions: vec![], writes: vec![removal] });
        let weak = Arc::downgrade(&store);
        store.set_proposer(Arc::new(Lagging { store: weak, behind: behind.into(), leader }));
        store
    }

    /// "Create `a` unless it exists", refusing as the control API does.
    fn create_a(tx: &mut Tx<'_>) -> Result<(), StoreError> {
        if tx.get::<Node>("a")?.is_some() {
            return Err(StoreError::Exists { kind: "node", id: "a".into() });
        }
        tx.create(node("a"))
    }

    #[tokio::test]
    async fn a_lagging_store_refuses_nothing_from_a_state_the_cluster_left() {
        let dir = tempfile::tempdir().unwrap();
        let store = lagging(dir.path(), true).await;
        // Locally `a` still exists; in the cluster it was removed: the create goes through.
        store.update(create_a).await.unwrap();
        assert!(store.get::<Node>("a").unwrap().is_some());
        // Now it really exists, and the refusal stands.
        let err = store.update(create_a).await.unwrap_err();
        assert!(matches!(err, StoreError::Exists { .. }), "{err}");
    }

    #[tokio::test]
    async fn with_no_leader_to_confirm_a_refusal_the_caller_hears_that() {
        let dir = tempfile::tempdir().unwrap();
        let store = lagging(dir.path(), false).await;
        let err = store.update(create_a).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    }

    #[tokio::test]
    async fn stale_updates_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), &Key::generate().unwrap());
        store.update(|tx| tx.create(node("a"))).await.unwrap();
        let stale = store.get::<Node>("a").unwrap().unwrap();
        let mut fresh = stale.clone();
        fresh.hostname = "renamed".into();
        store.update(|tx| tx.update(fresh.clone())).await.unwrap();
        let err = store.update(|tx| tx.update(stale.clone())).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
        assert_eq!(store.get::<Node>("a").unwrap().unwrap().hostname, "renamed");
    }

    #[tokio::test]
    async fn a_batch_whose_reads_changed_is_refused_at_apply() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), &Key::generate().unwrap());
        store.update(|tx| tx.create(node("a"))).await.unwrap();
        let stale = StoreBatch {
            preconditions: vec![Precondition { key: b"node/a".to_vec(), version: 0 }],
            writes: vec![Write { key: b"node/a".to_vec(), value: vec![], delete: true }],
        };
        assert_eq!(store.apply_batch(2, &stale).unwrap(), Outcome::Conflict);
        assert!(store.get::<Node>("a").unwrap().is_some());
    }

    #[tokio::test]
    async fn watchers_see_commits_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), &Key::generate().unwrap());
        let mut watch = store.watch();
        store.update(|tx| tx.create(node("a"))).await.unwrap();
        store.update(|tx| tx.delete::<Node>("a")).await.unwrap();
        let first = watch.recv().await.unwrap();
        let second = watch.recv().await.unwrap();
        assert_eq!((first.id.as_str(), first.version, first.deleted), ("a", 1, false));
        assert_eq!((second.id.as_str(), second.version, second.deleted), ("a", 2, true));
    }

    #[tokio::test]
    async fn snapshots_restore_the_same_objects() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = open(d1.path(), &Key::generate().unwrap());
        a.update(|tx| tx.create(node("x"))).await.unwrap();
        a.update(|tx| tx.create(node("y"))).await.unwrap();
        let (index, data) = a.snapshot().unwrap();
        let b = open(d2.path(), &Key::generate().unwrap());
        b.update(|tx| tx.create(node("stale"))).await.unwrap();
        b.restore(index, &data).unwrap();
        assert_eq!(b.list::<Node>().unwrap(), a.list::<Node>().unwrap());
        assert_eq!(b.version(), 2);
    }

    #[tokio::test]
    async fn reads_inside_a_transaction_see_its_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), &Key::generate().unwrap());
        store
            .update(|tx| {
                tx.create(node("a"))?;
                assert_eq!(tx.list::<Node>()?.len(), 1);
                tx.delete::<Node>("a")?;
                assert!(tx.get::<Node>("a")?.is_none());
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        assert!(store.list::<Node>().unwrap().is_empty());
    }
}
