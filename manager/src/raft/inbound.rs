//! Owns what a manager lets into memory from its inbound Raft streams: who may open one (the
//! node of a current Raft member, checked before any chunk is read) and how many bytes of
//! unfinished messages each peer may hold here at once, across all its streams.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tonic::Status;

use crate::manager::Shared;

/// The bytes of unfinished messages one peer may hold on this manager: one message as large as
/// protobuf can encode (2 GiB), which a snapshot of the whole store must fit in anyway. A peer
/// that opens more streams shares the same allowance, so it cannot multiply it.
pub const PEER_LIMIT: usize = 2 << 30;

/// Bytes held per peer (by node ID), and the limit.
#[derive(Debug)]
pub(crate) struct Inbound {
    limit: AtomicUsize,
    held: Mutex<HashMap<String, usize>>,
}

impl Default for Inbound {
    fn default() -> Self {
        Inbound { limit: AtomicUsize::new(PEER_LIMIT), held: Mutex::default() }
    }
}

impl Inbound {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the per-peer limit (tests, and operators who know their store is small).
    pub fn set_limit(&self, bytes: usize) {
        self.limit.store(bytes, Ordering::Relaxed);
    }

    /// An empty account for one stream of `node_id`.
    pub fn account(self: &Arc<Self>, node_id: &str) -> Held {
        Held { inbound: self.clone(), node_id: node_id.to_string(), bytes: 0 }
    }
}

/// The bytes one stream holds for its unfinished message; given back when the message is
/// complete or the stream ends.
#[derive(Debug)]
pub(crate) struct Held {
    inbound: Arc<Inbound>,
    node_id: String,
    bytes: usize,
}

impl Held {
    /// Counts `more` bytes against the peer's allowance, or refuses them (the stream is cut).
    pub fn take(&mut self, more: usize) -> Result<(), Status> {
        let limit = self.inbound.limit.load(Ordering::Relaxed);
        let mut held = self.inbound.lock();
        let peer = held.entry(self.node_id.clone()).or_default();
        if peer.saturating_add(more) > limit {
            let total = *peer;
            drop(held);
            tracing::warn!(node = %self.node_id, held = total, limit, "raft stream cut: too many bytes in flight");
            return Err(Status::resource_exhausted(format!(
                "raft peer {} would hold {} bytes of unfinished messages on this manager, more \
                 than the {limit} a peer may; the stream is cut",
                self.node_id,
                total.saturating_add(more)
            )));
        }
        *peer += more;
        self.bytes += more;
        Ok(())
    }

    /// The message is complete: its bytes no longer count.
    pub fn release(&mut self) {
        let mut held = self.inbound.lock();
        if let Some(peer) = held.get_mut(&self.node_id) {
            *peer = peer.saturating_sub(self.bytes);
            if *peer == 0 {
                held.remove(&self.node_id);
            }
        }
        self.bytes = 0;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release();
    }
}

/// Refuses a Raft stream from a node that is not a current member, before anything is read.
/// A manager that has not received the cluster's state yet (it is joining) has no member table
/// to check against; it takes the leader's messages from any manager of the cluster, as the
/// per-message check in the service does, within the same byte allowance.
pub(crate) fn check_member(shared: &Shared, node_id: &str) -> Result<(), Status> {
    if shared.members()?.iter().any(|m| m.node_id == node_id) || shared.cluster().is_err() {
        return Ok(());
    }
    tracing::warn!(node = %node_id, "raft stream refused: the sender is not a raft member");
    Err(Status::permission_denied(format!(
        "node {node_id} is not a raft member of this cluster; only the managers' raft members \
         may send raft messages"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_shares_one_allowance_across_its_streams_and_gets_it_back() {
        let inbound = Arc::new(Inbound::default());
        inbound.set_limit(10);
        let (mut a, mut b) = (inbound.account("m1"), inbound.account("m1"));
        a.take(6).unwrap();
        let err = b.take(5).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("11 bytes"), "{}", err.message());
        // Another peer has its own allowance.
        inbound.account("m2").take(10).unwrap();
        a.release();
        b.take(10).unwrap();
        drop(b);
        assert!(inbound.lock().is_empty(), "every byte was given back");
    }
}
