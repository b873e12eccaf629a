//! Owns what a node trusts of content trust on its own: the roots it pinned, the cluster's
//! timestamp key, whether the cluster requires signed images, and the newest targets version
//! it has seen per repository. Managers send trust data with every task; the node checks it
//! against these pins, so a manager can narrow what runs but never widen it:
//!
//! - A root for a prefix the node pinned is accepted only as a chain from the pinned version
//!   (each step signed by the old root). A root for a new prefix is accepted only when a
//!   pinned root vouches for it (signs it) — or when the node has pinned nothing yet: the
//!   roots a node first hears of (at join, or when the cluster first sets them up) are taken
//!   as it takes the cluster CA from its join token's managers.
//! - The timestamp key is pinned the first time; another is refused.
//! - Requiring trust sticks: the node lets it go only on a policy statement, newer than any it
//!   saw, signed by one of its pinned roots.
//! - A targets version older than one seen for the repository is a replay and refused.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::doc::{check_chain, Bundle, Policy, Root, Signed, Verified};
use super::key::PublicKey;
use super::{covers, TrustError};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pins {
    /// Prefix → the chain of roots the node holds, oldest first.
    pub roots: BTreeMap<String, Vec<Signed<Root>>>,
    pub timestamp_key: Option<PublicKey>,
    pub required: bool,
    pub policy_version: u64,
    /// Repository → the newest targets version this node accepted.
    pub seen: BTreeMap<String, u64>,
}

impl Pins {
    /// The pins saved at `path`; none yet if there is no file.
    pub fn load(path: &Path) -> Result<Pins, TrustError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                TrustError::Malformed(format!("the node's trust pins {}: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Pins::default()),
            Err(e) => Err(TrustError::Malformed(format!("reading {}: {e}", path.display()))),
        }
    }

    /// Saves the pins (0600, atomically).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let bytes = serde_json::to_vec_pretty(self).expect("pins serialize");
        crate::files::write_atomic(path, &bytes, 0o600)
    }

    /// The current pinned root whose prefix covers `repo` most closely.
    pub fn root_for(&self, repo: &str) -> Option<&Root> {
        self.roots
            .iter()
            .filter(|(prefix, _)| covers(prefix, repo))
            .max_by_key(|(prefix, _)| prefix.len())
            .and_then(|(_, chain)| chain.last())
            .map(|r| &r.signed)
    }

    /// Takes a root chain a manager sent; whether the pins changed.
    pub fn learn_roots(&mut self, chain: &[Signed<Root>]) -> Result<bool, TrustError> {
        if chain.is_empty() {
            return Ok(false);
        }
        let current = check_chain(chain)?;
        let prefix = current.signed.prefix.clone();
        if let Some(pinned) = self.roots.get(&prefix) {
            let have = pinned.last().map_or(0, |r| r.signed.version);
            if current.signed.version <= have {
                return Ok(false);
            }
            // The sent chain must contain the pinned root: the rest follows from it.
            let same = chain.get(have as usize - 1).is_some_and(|r| Some(r) == pinned.last());
            if !same {
                return Err(TrustError::Untrusted(format!(
                    "a root for {prefix} that does not descend from the root this node pinned"
                )));
            }
            self.roots.insert(prefix, chain.to_vec());
            return Ok(true);
        }
        if !self.roots.is_empty() {
            let first = &chain[0];
            let vouched = self
                .roots
                .values()
                .filter_map(|c| c.last())
                .any(|r| first.signed_by(&r.signed.key));
            if !vouched {
                return Err(TrustError::Untrusted(format!(
                    "a new root for {prefix} that none of this node's roots vouched for (trust root add --vouch-key)"
                )));
            }
        }
        self.roots.insert(prefix, chain.to_vec());
        Ok(true)
    }

    /// Takes the cluster's timestamp key: pinned the first time, refused if another.
    pub fn learn_timestamp_key(&mut self, key: &PublicKey) -> Result<bool, TrustError> {
        match &self.timestamp_key {
            Some(k) if k == key => Ok(false),
            Some(k) => Err(TrustError::Untrusted(format!(
                "the managers' timestamp key {} is not the one this node pinned ({})",
                key.short_id(),
                k.short_id()
            ))),
            None => {
                key.check()?;
                self.timestamp_key = Some(key.clone());
                Ok(true)
            }
        }
    }

    /// Takes what the managers say of the requirement: on sticks at once; off only with a
    /// newer statement signed by a pinned root. Whether the pins changed.
    pub fn learn_policy(
        &mut self,
        required: bool,
        statement: Option<&Signed<Policy>>,
    ) -> Result<bool, TrustError> {
        if required {
            let changed = !self.required;
            self.required = true;
            if let Some(s) = statement {
                self.policy_version = self.policy_version.max(s.signed.version);
            }
            return Ok(changed);
        }
        if !self.required {
            return Ok(false);
        }
        let Some(s) = statement else {
            return Err(TrustError::Untrusted(
                "the managers say content trust is off without a root's signed statement; this node keeps requiring it".into(),
            ));
        };
        let by_root =
            self.roots.values().filter_map(|c| c.last()).any(|r| s.signed_by(&r.signed.key));
        if s.signed.required || s.signed.version <= self.policy_version || !by_root {
            return Err(TrustError::Untrusted(
                "a statement turning content trust off that is not newer than the last one or not signed by a pinned root".into(),
            ));
        }
        self.required = false;
        self.policy_version = s.signed.version;
        Ok(true)
    }

    /// Checks image `repo` (`tag` and/or manifest `digest`) before a task runs it. `None`
    /// when trust is not required here; the signed digest when it is and the image passes.
    pub fn check(
        &mut self,
        repo: &str,
        tag: Option<&str>,
        digest: Option<&str>,
        bundle: Option<&Bundle>,
        now: u64,
    ) -> Result<Option<Verified>, TrustError> {
        if !self.required {
            return Ok(None);
        }
        let Some(bundle) = bundle else {
            return Err(TrustError::Untrusted(format!(
                "content trust is required and {repo} carries no signature"
            )));
        };
        self.learn_roots(&bundle.roots)?;
        let root = self.root_for(repo).cloned().ok_or_else(|| {
            TrustError::Untrusted(format!("no trust root this node pinned covers {repo}"))
        })?;
        let key = self.timestamp_key.clone().ok_or_else(|| {
            TrustError::Untrusted("this node has not pinned the managers' timestamp key".into())
        })?;
        let v = bundle.verify(&root, &key, repo, tag, digest, now)?;
        let seen = self.seen.get(repo).copied().unwrap_or(0);
        if v.targets_version < seen {
            return Err(TrustError::Untrusted(format!(
                "the targets of {repo} are version {}, older than version {seen} this node has seen (a replayed record)",
                v.targets_version
            )));
        }
        self.seen.insert(repo.to_string(), v.targets_version);
        Ok(Some(v))
    }
}
