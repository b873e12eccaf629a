//! Owns the node's files under its data root: the identity (private key and certificate chain,
//! one 0600 file replaced atomically), the pinned root CA, and `state.json`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shoal_pki::files::{write_atomic, KEY_FILE_MODE};
use shoal_pki::{NodeKey, PkiError, Role};

/// Errors reading or writing node files.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Pki { path: String, source: PkiError },
    #[error("{path} is damaged: {reason}")]
    Damaged { path: String, reason: String },
}

/// What a node remembers between restarts.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeState {
    pub node_id: String,
    pub cluster_id: String,
    /// Stored as "worker" or "manager".
    pub role: Role,
    /// Whether this node runs the manager (the control plane store).
    pub runs_manager: bool,
    pub listen_addr: String,
    pub advertise_addr: String,
    pub manager_addrs: Vec<String>,
    /// Node IDs of the managers as last heard: a server outside this set is not taken for a
    /// manager, whatever its certificate says (empty: not known yet).
    #[serde(default)]
    pub manager_ids: Vec<String>,
}

/// The layout of a node's data root.
#[derive(Clone, Debug)]
pub struct NodeFiles {
    root: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FilesError + '_ {
    move |source| FilesError::Io { path: path.display().to_string(), source }
}

impl NodeFiles {
    /// The files of the data root `root`.
    pub fn new(root: impl Into<PathBuf>) -> NodeFiles {
        NodeFiles { root: root.into() }
    }

    /// The data root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn certs(&self) -> PathBuf {
        self.root.join("certificates")
    }

    /// The 0600 file holding this node's private key followed by its certificate chain.
    pub fn identity_path(&self) -> PathBuf {
        self.certs().join("node.pem")
    }

    /// A public copy of the certificate chain (for `--tlscert`).
    pub fn cert_path(&self) -> PathBuf {
        self.certs().join("node.crt")
    }

    /// The pinned root CA bundle.
    pub fn root_ca_path(&self) -> PathBuf {
        self.certs().join("root-ca.crt")
    }

    /// The node's state file.
    pub fn state_path(&self) -> PathBuf {
        self.root.join("state.json")
    }

    /// The manager's store directory.
    pub fn store_dir(&self) -> PathBuf {
        self.root.join("manager").join("store")
    }

    fn ensure_dirs(&self) -> Result<(), FilesError> {
        use std::os::unix::fs::DirBuilderExt;
        let certs = self.certs();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&certs)
            .map_err(io_err(&certs))
    }

    /// Writes key + chain in one atomic 0600 file, then the public copies.
    pub fn save_identity(
        &self,
        key: &NodeKey,
        chain_pem: &str,
        root_ca_pem: &str,
    ) -> Result<(), FilesError> {
        self.ensure_dirs()?;
        let identity = format!("{}\n{}", key.to_pem().trim_end(), chain_pem);
        let path = self.identity_path();
        write_atomic(&path, identity.as_bytes(), KEY_FILE_MODE).map_err(io_err(&path))?;
        let path = self.cert_path();
        write_atomic(&path, chain_pem.as_bytes(), 0o644).map_err(io_err(&path))?;
        let path = self.root_ca_path();
        write_atomic(&path, root_ca_pem.as_bytes(), 0o644).map_err(io_err(&path))
    }

    /// Replaces the trusted root bundle (a root rotation's step).
    pub fn save_root_ca(&self, root_ca_pem: &str) -> Result<(), FilesError> {
        self.ensure_dirs()?;
        let path = self.root_ca_path();
        write_atomic(&path, root_ca_pem.as_bytes(), 0o644).map_err(io_err(&path))
    }

    /// Reads key, chain and root CA back.
    pub fn load_identity(&self) -> Result<(NodeKey, String, String), FilesError> {
        let path = self.identity_path();
        let pem = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let damaged = |reason: &str| FilesError::Damaged {
            path: path.display().to_string(),
            reason: reason.into(),
        };
        let key = NodeKey::from_pem(&pem)
            .map_err(|source| FilesError::Pki { path: path.display().to_string(), source })?;
        let chain =
            shoal_pki::certificate_chain_pem(&pem).map_err(|_| damaged("no certificate"))?;
        let ca_path = self.root_ca_path();
        let root = std::fs::read_to_string(&ca_path).map_err(io_err(&ca_path))?;
        Ok((key, chain, root))
    }

    /// Saves the state file atomically.
    pub fn save_state(&self, state: &NodeState) -> Result<(), FilesError> {
        self.ensure_dirs()?;
        let path = self.state_path();
        let json = serde_json::to_vec_pretty(state).map_err(|e| FilesError::Damaged {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, &json, KEY_FILE_MODE).map_err(io_err(&path))
    }

    /// Loads the state file; `None` when this node is not part of a cluster.
    pub fn load_state(&self) -> Result<Option<NodeState>, FilesError> {
        let path = self.state_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                FilesError::Damaged { path: path.display().to_string(), reason: e.to_string() }
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Forgets the cluster: removes identity, state and the manager store.
    pub fn wipe(&self) -> Result<(), FilesError> {
        for dir in [self.certs(), self.root.join("manager")] {
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&dir)(e)),
                _ => {}
            }
        }
        match std::fs::remove_file(self.state_path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_err(&self.state_path())(e))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn identity_round_trips_and_stays_private() {
        let dir = tempfile::tempdir().unwrap();
        let files = NodeFiles::new(dir.path());
        let key = NodeKey::generate().unwrap();
        let chain = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        files.save_identity(&key, chain, "root").unwrap();
        let mode = std::fs::metadata(files.identity_path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (loaded, loaded_chain, root) = files.load_identity().unwrap();
        assert_eq!(loaded.to_pem(), key.to_pem());
        assert_eq!(loaded_chain, chain);
        assert_eq!(root, "root");
    }

    #[test]
    fn a_truncated_identity_is_reported_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let files = NodeFiles::new(dir.path());
        files.save_identity(&NodeKey::generate().unwrap(), "", "root").unwrap();
        let err = files.load_identity().unwrap_err();
        assert!(err.to_string().contains("no certificate"), "{err}");
    }

    #[test]
    fn state_round_trips_and_wipe_forgets_it() {
        let dir = tempfile::tempdir().unwrap();
        let files = NodeFiles::new(dir.path());
        assert_eq!(files.load_state().unwrap(), None);
        let state = NodeState { node_id: "n".into(), role: Role::Worker, ..Default::default() };
        files.save_state(&state).unwrap();
        assert_eq!(files.load_state().unwrap(), Some(state));
        files.wipe().unwrap();
        assert_eq!(files.load_state().unwrap(), None);
    }
}
