//! Owns a manager's data keys while it runs: wrapping them the way the cluster says (autolock
//! or a local key file) and rotating the data key without downtime. A rotation writes the key
//! file with the new key and the previous one, switches the sealer (seal with the new key, open
//! with either), seals every stored record again beside live writes, makes that durable, and
//! only then drops the previous key from the file. Interrupted, it is finished at the next start.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::raft::crypto::{CryptoError, DataKeys, Key, KeyFiles, Sealer};
use crate::raft::storage::{reseal_log, Syncer};
use crate::store::{Store, StoreError};

/// The data keys of a running manager.
pub(crate) struct DataKeyState {
    pub(crate) keys: Mutex<DataKeys>,
    pub(crate) files: KeyFiles,
    pub(crate) sealer: Arc<Sealer>,
    pub(crate) db: sled::Db,
    /// sled's directory (the mark file lives there).
    pub(crate) dir: PathBuf,
    pub(crate) syncer: Syncer,
    pub(crate) store: Arc<Store>,
    /// Held for a whole rotation: one at a time.
    pub(crate) rotation: Mutex<()>,
}

impl std::fmt::Debug for DataKeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKeyState").field("dir", &self.dir).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DataKeyState {
    /// The rotation epoch reached and whether a rotation is unfinished.
    pub(crate) fn status(&self) -> (u64, bool) {
        let keys = lock(&self.keys);
        (keys.epoch, keys.previous.is_some())
    }

    /// Wraps the keys with `unlock` (autolock on) or, when they are locked and `unlock` is
    /// `None`, with a fresh local key file (autolock off).
    pub(crate) fn wrap(&self, unlock: Option<&Key>) -> Result<(), CryptoError> {
        let keys = lock(&self.keys);
        match unlock {
            Some(k) => self.files.lock(&keys, k),
            None if self.files.is_locked() => self.files.unlock(&keys),
            None => Ok(()),
        }
    }

    /// Whether a rotation should run for the cluster's `epoch`.
    pub(crate) fn needs_rotation(&self, epoch: u64) -> bool {
        let (have, unfinished) = self.status();
        unfinished || have < epoch
    }

    /// Rotates to `epoch` (or finishes an interrupted rotation); `unlock` gives the cluster's
    /// unlock key at the time of each key-file write. Blocks: run it off the async threads.
    /// Returns how many records were sealed again.
    pub(crate) fn rotate(
        &self,
        epoch: u64,
        unlock: impl Fn() -> Option<Key>,
    ) -> Result<usize, StoreError> {
        let _one = lock(&self.rotation);
        {
            let mut keys = lock(&self.keys);
            if keys.previous.is_none() && keys.epoch < epoch {
                let next = DataKeys {
                    current: Key::generate()?,
                    previous: Some(keys.current.clone()),
                    epoch,
                };
                // On disk before any record is sealed with it.
                self.files.save(&next, unlock().as_ref())?;
                self.sealer.rotate_to(&next.current);
                *keys = next;
            }
            if keys.previous.is_none() {
                return Ok(0);
            }
        }
        // The switch waited for every write in flight (see `Sealer`), so each record sealed
        // with the old key is in the store now and one pass finds it; a record a writer
        // replaces meanwhile is sealed with the new key. A second pass checks that.
        let resealed = self.reseal_pass()?;
        let left = self.reseal_pass()?;
        if left != 0 {
            return Err(StoreError::Unavailable(format!(
                "data key rotation: {left} records were still sealed with the previous key \
                 after a full pass"
            )));
        }
        self.syncer.flush()?;
        let mut keys = lock(&self.keys);
        let done = DataKeys { previous: None, ..keys.clone() };
        self.files.save(&done, unlock().as_ref())?;
        self.sealer.forget_previous();
        *keys = done;
        tracing::info!(epoch = keys.epoch, resealed, "data key rotated; every record sealed again");
        Ok(resealed)
    }

    fn reseal_pass(&self) -> Result<usize, StoreError> {
        Ok(self.store.reseal()? + reseal_log(&self.db, &self.dir, &self.sealer)?)
    }
}
