//! Owns content trust: which image digests the holder of a repository's keys vouched for, in
//! documents that can be checked anywhere without trusting whoever delivered them.
//!
//! The roles follow TUF's (and Docker Content Trust's), in a format of Shoal's own — JSON
//! documents signed over a canonical form (see [`doc`]), not TUF's wire format:
//!
//! - **root** (per repository prefix, e.g. `reg:5000/team/`): the operator's offline key. A
//!   root document names the key; a new root for the same prefix must be signed by the old
//!   root's key as well as its own (a chain), and a root for a prefix a node does not know yet
//!   must be vouched for by a root it does.
//! - **delegations** (per repository): the signers (name and key) the root lets sign the
//!   repository's targets; signed by the root. `signer add/remove` makes a new version.
//! - **targets** (per repository): tag → manifest digest; signed by one delegated signer.
//!   `trust sign` adds a tag, `trust revoke` removes one (or all).
//! - **timestamp** (per repository): the managers' short-lived statement (14 days) of which
//!   delegations and targets are current, renewed automatically: a stale record cannot be
//!   passed off as current once it expires, and nodes refuse a targets version older than one
//!   they have seen.
//!
//! Nodes pin roots (see [`pins`]): what a manager sends them is checked against those pins, so
//! a compromised manager cannot make a node run an image no signer signed.

pub mod doc;
pub mod key;
pub mod pins;

pub use doc::{
    Bundle, Delegations, Envelope, Policy, Root, Signed, Target, Targets, Timestamp, Verified,
};
pub use key::{Algorithm, PublicKey, SigningKey};
pub use pins::Pins;

/// How long a timestamp lasts unless the cluster says otherwise.
pub const TIMESTAMP_LIFETIME: std::time::Duration = std::time::Duration::from_secs(14 * 86_400);
/// How long delegations and targets last when signed.
pub const TARGETS_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3 * 365 * 86_400);

/// Why trust data was refused. Every message says what is wrong in the operator's terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("{0}")]
    Key(String),
    #[error("malformed trust data: {0}")]
    Malformed(String),
    #[error("{0}")]
    Untrusted(String),
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether root prefix `prefix` covers repository `repo`: the same, or a path below it.
pub fn covers(prefix: &str, repo: &str) -> bool {
    let p = prefix.trim_end_matches('/');
    repo == p || repo.strip_prefix(p).is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests;
