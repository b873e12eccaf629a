//! Owns a manager's data dir as it is opened: the sealed database, the store and Raft log
//! storage over it, and the data key (from its key file, or with the unlock key when the
//! manager is locked).

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::manager::ManagerError;
use crate::raft::crypto::{DataKeys, KeyFiles, Sealer};
use crate::raft::rotation::DataKeyState;
use crate::raft::storage::LogStorage;
use crate::store::Store;

/// The parts a manager is built from, before its Raft member runs.
pub(crate) struct Parts {
    pub store: Arc<Store>,
    pub storage: LogStorage,
    pub data_keys: Arc<DataKeyState>,
    pub audit: Arc<crate::access::Audit>,
}

pub(crate) fn open_parts(store_dir: &Path, keys: DataKeys) -> Result<Parts, ManagerError> {
    let path = store_dir.join("db");
    let db = crate::store::open_db(&path)
        .map_err(|source| ManagerError::OpenDb { path: path.display().to_string(), source })?;
    let sealer = Arc::new(Sealer::for_keys(&keys));
    let store = Arc::new(Store::open(&db, sealer.clone())?);
    let storage = LogStorage::open(&db, sealer.clone(), store.clone())?.with_data_file(&path)?;
    let syncer = storage.syncer();
    let data_keys = Arc::new(DataKeyState {
        keys: Mutex::new(keys),
        files: key_files(store_dir),
        sealer,
        db,
        dir: path,
        syncer,
        store: store.clone(),
        rotation: Mutex::new(()),
    });
    let audit = Arc::new(crate::access::Audit::open(store_dir.join("audit.log")));
    Ok(Parts { store, storage, data_keys, audit })
}

pub(crate) fn key_files(store_dir: &Path) -> KeyFiles {
    KeyFiles::new(store_dir.join("keys"))
}

/// Loads a manager's data key: from its key file, or with the operator's unlock key when the
/// manager is locked.
pub(crate) fn load_dek(store_dir: &Path, unlock: Option<&str>) -> Result<DataKeys, ManagerError> {
    let keys = key_files(store_dir);
    match unlock {
        Some(text) => Ok(keys.load_with(&crate::raft::crypto::parse_unlock_key(text)?)?),
        None => Ok(keys.load()?),
    }
}
