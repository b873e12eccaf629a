//! Owns the manager's object store: versioned objects in sled, atomic transactions, and a watch
//! feed of committed changes. Never talks to the network; the Raft issue replaces the write path
//! underneath this interface without changing callers.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;
use shoal_proto::{Cluster, Meta, Node};
use tokio::sync::broadcast;

/// Errors of the object store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store at {path} could not be opened: {source}")]
    Open { path: String, source: sled::Error },
    #[error("store I/O failed: {0}")]
    Io(#[from] sled::Error),
    #[error("stored {kind} {id} is corrupt: {source}")]
    Corrupt { kind: &'static str, id: String, source: prost::DecodeError },
    #[error("{kind} {id} already exists")]
    Exists { kind: &'static str, id: String },
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} {id} was changed concurrently (version {expected} is stale); retry")]
    Conflict { kind: &'static str, id: String, expected: u64 },
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

/// One committed change, as seen by watchers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: &'static str,
    pub id: String,
    pub version: u64,
    pub deleted: bool,
}

/// The object store.
#[derive(Debug)]
pub struct Store {
    db: sled::Db,
    objects: sled::Tree,
    write_lock: Mutex<()>,
    version: AtomicU64,
    events: broadcast::Sender<Event>,
}

const VERSION_KEY: &[u8] = b"version";

fn key(kind: &str, id: &str) -> Vec<u8> {
    format!("{kind}/{id}").into_bytes()
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open { path: dir.display().to_string(), source };
        let db = sled::Config::new().path(dir).open().map_err(open_err)?;
        let objects = db.open_tree("objects").map_err(open_err)?;
        let version = match db.get(VERSION_KEY).map_err(open_err)? {
            Some(v) if v.len() == 8 => u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])),
            _ => 0,
        };
        let (events, _) = broadcast::channel(1024);
        Ok(Store {
            db,
            objects,
            write_lock: Mutex::new(()),
            version: AtomicU64::new(version),
            events,
        })
    }

    /// The version of the last committed change.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    /// Reads one object.
    pub fn get<T: Object>(&self, id: &str) -> Result<Option<T>, StoreError> {
        self.objects.get(key(T::KIND, id))?.map(|b| decode::<T>(id, &b)).transpose()
    }

    /// Lists every object of a kind.
    pub fn list<T: Object>(&self) -> Result<Vec<T>, StoreError> {
        let prefix = key(T::KIND, "");
        self.objects
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, v) = kv?;
                let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                decode::<T>(&id, &v)
            })
            .collect()
    }

    /// Subscribes to committed changes.
    pub fn watch(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Runs `f` as one atomic, durable transaction: either all its writes are committed and
    /// flushed to disk, or none are.
    pub async fn update<R, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        let (result, events) = self.apply(f)?;
        if !events.is_empty() {
            self.db.flush_async().await.map_err(StoreError::from)?;
            for e in events {
                let _ = self.events.send(e);
            }
        }
        Ok(result)
    }

    fn apply<R, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R, E>,
    ) -> Result<(R, Vec<Event>), E> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut tx = Tx { store: self, writes: BTreeMap::new(), events: Vec::new() };
        let result = f(&mut tx)?;
        if tx.writes.is_empty() {
            return Ok((result, Vec::new()));
        }
        let version = self.version() + 1;
        let mut batch = sled::Batch::default();
        for (k, v) in &tx.writes {
            match v {
                Some(bytes) => batch.insert(k.as_slice(), bytes.as_slice()),
                None => batch.remove(k.as_slice()),
            }
        }
        self.objects.apply_batch(batch).map_err(StoreError::from)?;
        self.db.insert(VERSION_KEY, &version.to_be_bytes()).map_err(StoreError::from)?;
        self.version.store(version, Ordering::SeqCst);
        let events = tx.events.into_iter().map(|mut e| {
            e.version = version;
            e
        });
        Ok((result, events.collect()))
    }
}

fn decode<T: Object>(id: &str, bytes: &[u8]) -> Result<T, StoreError> {
    T::decode(bytes).map_err(|source| StoreError::Corrupt {
        kind: T::KIND,
        id: id.to_string(),
        source,
    })
}

/// A transaction in progress: reads see its own writes; nothing is visible to others until the
/// closure passed to [`Store::update`] returns `Ok`.
#[derive(Debug)]
pub struct Tx<'a> {
    store: &'a Store,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    events: Vec<Event>,
}

impl Tx<'_> {
    /// Reads one object, including this transaction's own writes.
    pub fn get<T: Object>(&self, id: &str) -> Result<Option<T>, StoreError> {
        match self.writes.get(&key(T::KIND, id)) {
            Some(Some(bytes)) => decode(id, bytes).map(Some),
            Some(None) => Ok(None),
            None => self.store.get(id),
        }
    }

    /// Lists every object of a kind, including this transaction's own writes.
    pub fn list<T: Object>(&self) -> Result<Vec<T>, StoreError> {
        let mut all: BTreeMap<String, T> =
            self.store.list::<T>()?.into_iter().map(|o| (o.id().to_string(), o)).collect();
        let prefix = key(T::KIND, "");
        for (k, v) in
            self.writes.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix))
        {
            let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            match v {
                Some(bytes) => all.insert(id.clone(), decode(&id, bytes)?),
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
        *obj.meta_mut() =
            Meta { version: self.store.version() + 1, created_at_ms: now, updated_at_ms: now };
        self.put(obj);
        Ok(())
    }

    /// Replaces an object read earlier; fails with `Conflict` if it changed since it was read.
    pub fn update<T: Object>(&mut self, mut obj: T) -> Result<(), StoreError> {
        let current = self
            .get::<T>(obj.id())?
            .ok_or_else(|| StoreError::NotFound { kind: T::KIND, id: obj.id().to_string() })?;
        let (have, want) = (current.meta().map(|m| m.version), obj.meta().map(|m| m.version));
        if have != want {
            return Err(StoreError::Conflict {
                kind: T::KIND,
                id: obj.id().to_string(),
                expected: want.unwrap_or(0),
            });
        }
        let meta = obj.meta_mut();
        meta.version = self.store.version() + 1;
        meta.updated_at_ms = now_ms();
        self.put(obj);
        Ok(())
    }

    /// Deletes an object; fails if it does not exist.
    pub fn delete<T: Object>(&mut self, id: &str) -> Result<(), StoreError> {
        if self.get::<T>(id)?.is_none() {
            return Err(StoreError::NotFound { kind: T::KIND, id: id.to_string() });
        }
        self.writes.insert(key(T::KIND, id), None);
        self.events.push(Event { kind: T::KIND, id: id.to_string(), version: 0, deleted: true });
        Ok(())
    }

    fn put<T: Object>(&mut self, obj: T) {
        let id = obj.id().to_string();
        self.writes.insert(key(T::KIND, &id), Some(obj.encode_to_vec()));
        self.events.push(Event { kind: T::KIND, id, version: 0, deleted: false });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> Node {
        Node { id: id.into(), hostname: format!("host-{id}"), ..Default::default() }
    }

    #[tokio::test]
    async fn committed_objects_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.update(|tx| tx.create(node("a"))).await.unwrap();
            store.update(|tx| tx.create(node("b"))).await.unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let ids: Vec<_> = store.list::<Node>().unwrap().into_iter().map(|n| n.id).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(store.version(), 2);
        assert_eq!(store.get::<Node>("a").unwrap().unwrap().meta.unwrap().version, 1);
    }

    #[tokio::test]
    async fn a_failed_transaction_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
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

    #[tokio::test]
    async fn stale_updates_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.update(|tx| tx.create(node("a"))).await.unwrap();
        let stale = store.get::<Node>("a").unwrap().unwrap();
        let mut fresh = stale.clone();
        fresh.hostname = "renamed".into();
        store.update(|tx| tx.update(fresh)).await.unwrap();
        let err = store.update(|tx| tx.update(stale)).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
        assert_eq!(store.get::<Node>("a").unwrap().unwrap().hostname, "renamed");
    }

    #[tokio::test]
    async fn watchers_see_commits_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut watch = store.watch();
        store.update(|tx| tx.create(node("a"))).await.unwrap();
        store.update(|tx| tx.delete::<Node>("a")).await.unwrap();
        let first = watch.recv().await.unwrap();
        let second = watch.recv().await.unwrap();
        assert_eq!((first.id.as_str(), first.version, first.deleted), ("a", 1, false));
        assert_eq!((second.id.as_str(), second.version, second.deleted), ("a", 2, true));
    }

    #[tokio::test]
    async fn reads_inside_a_transaction_see_its_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
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
