//! The secrets and configs this node holds, in memory only: what the managers sent with the
//! assignments, forgotten when they say no task here uses them any more. A task gets files
//! only for the references in its own spec.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shoal_proto::{AssignmentsMessage, SecretKind, SecretReference, Task};

use crate::runtime::SecretFile;

type Key = (String, u64);

/// Secret data by (ID, version).
#[derive(Default)]
pub struct SecretStore {
    held: Mutex<HashMap<Key, Arc<Vec<u8>>>>,
}

/// A secret or config a task names that the managers have not sent to this node (yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} {name} (version {version}) was not delivered to this node", .kind.word())]
pub struct Undelivered {
    pub kind: SecretKind,
    pub name: String,
    pub version: u64,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore").field("held", &self.len()).finish()
    }
}

impl SecretStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<Vec<u8>>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many versions are held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the secrets of one assignments message (a complete one replaces everything).
    pub fn take(&self, msg: &mut AssignmentsMessage) {
        let mut held = self.lock();
        if msg.complete {
            held.clear();
        }
        for s in msg.secrets.drain(..) {
            held.insert((s.id, s.version), Arc::new(s.data));
        }
    }

    /// Forgets the versions a message says no task here uses (`<id>@<version>`).
    pub fn forget(&self, removed: &[String]) {
        let mut held = self.lock();
        for r in removed {
            if let Some((id, v)) = r.rsplit_once('@') {
                if let Ok(v) = v.parse() {
                    held.remove(&(id.to_string(), v));
                }
            }
        }
    }

    /// The files of `task`: one per secret and config its spec names, or why one is missing.
    pub fn files_for(&self, task: &Task) -> Result<Vec<SecretFile>, Undelivered> {
        let Some(c) = task.spec.as_ref().and_then(|s| s.container.as_ref()) else {
            return Ok(Vec::new());
        };
        let held = self.lock();
        let file =
            |kind: SecretKind, r: &SecretReference| -> Result<SecretFile, Undelivered> {
                let data = held.get(&(r.secret_id.clone(), r.version)).ok_or_else(|| {
                    Undelivered { kind, name: r.secret_name.clone(), version: r.version }
                })?;
                let target = match kind {
                    SecretKind::Secret => format!("/run/secrets/{}", r.target),
                    SecretKind::Config => r.target.clone(),
                };
                let mode = if r.mode == 0 { 0o444 } else { r.mode };
                Ok(SecretFile { target, uid: r.uid, gid: r.gid, mode, data: data.to_vec() })
            };
        let mut out = Vec::new();
        for r in &c.secrets {
            out.push(file(SecretKind::Secret, r)?);
        }
        for r in &c.configs {
            out.push(file(SecretKind::Config, r)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{ContainerSpec, SecretData, ServiceSpec};

    fn task(refs: &[(&str, u64, &str)]) -> Task {
        let secrets = refs
            .iter()
            .map(|(id, v, target)| SecretReference {
                secret_id: id.to_string(),
                secret_name: id.to_string(),
                version: *v,
                target: target.to_string(),
                ..Default::default()
            })
            .collect();
        Task {
            spec: Some(ServiceSpec {
                container: Some(ContainerSpec { secrets, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_task_gets_only_the_secrets_its_spec_names() {
        let store = SecretStore::default();
        let mut msg = AssignmentsMessage {
            complete: true,
            secrets: vec![
                SecretData {
                    id: "a".into(),
                    version: 1,
                    data: b"A".to_vec(),
                    ..Default::default()
                },
                SecretData {
                    id: "b".into(),
                    version: 1,
                    data: b"B".to_vec(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        store.take(&mut msg);
        let files = store.files_for(&task(&[("a", 1, "pw")])).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(
            (files[0].target.as_str(), files[0].data.as_slice(), files[0].mode),
            ("/run/secrets/pw", &b"A"[..], 0o444)
        );
        let err = store.files_for(&task(&[("a", 2, "pw")])).unwrap_err().to_string();
        assert!(err.contains("version 2") && err.contains("not delivered"), "{err}");
        store.forget(&["a@1".into()]);
        assert!(
            store.files_for(&task(&[("a", 1, "pw")])).is_err(),
            "forgotten when no task uses it"
        );
        assert_eq!(store.len(), 1);
        assert!(!format!("{store:?}").contains('B'));
    }
}
