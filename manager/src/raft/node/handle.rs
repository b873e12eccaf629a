//! Owns [`RaftHandle`], the way every other task reaches the Raft task: commands go over a
//! channel and answers come back on oneshots; status is read from a watch. Never touches
//! `RawNode` or the log itself.

use std::time::Duration;

use raft::prelude::{ConfChange, Message};
use tokio::sync::{mpsc, oneshot, watch};

use super::{Command, RaftStatus, PROPOSAL_TIMEOUT};
use crate::store::{BoxFuture, Outcome, Proposer, StoreError};

/// A handle to the Raft task. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RaftHandle {
    pub(super) tx: mpsc::Sender<Command>,
    pub(super) status: watch::Receiver<RaftStatus>,
}

fn stopped() -> StoreError {
    StoreError::Unavailable("this manager's raft member has stopped".into())
}

impl RaftHandle {
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| self.stopped())?;
        match tokio::time::timeout(PROPOSAL_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.stopped()),
            Err(_) => Err(StoreError::Unavailable(
                "timed out waiting for the managers to commit; is a quorum of managers up?".into(),
            )),
        }
    }

    /// Why the member stopped: the error that stopped it, if one did.
    fn stopped(&self) -> StoreError {
        match &self.status.borrow().failed {
            Some(why) => StoreError::Unavailable(why.clone()),
            None => stopped(),
        }
    }

    /// Delivers a message from a peer.
    pub fn step(&self, msg: Message) {
        let _ = self.tx.try_send(Command::Step(Box::new(msg)));
    }

    /// Reports a peer that could not be reached.
    pub fn unreachable(&self, id: u64) {
        let _ = self.tx.try_send(Command::Unreachable(id));
    }

    /// Reports how sending a snapshot to a peer went.
    pub fn snapshot_sent(&self, id: u64, ok: bool) {
        let _ = self.tx.try_send(Command::Snapshot(id, ok));
    }

    /// Stops the member (its task ends and releases the store).
    pub fn stop(&self) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(Command::Stop).await;
        });
    }

    /// Starts an election now (a new single-member cluster).
    pub fn campaign(&self) {
        let _ = self.tx.try_send(Command::Campaign);
    }

    /// Adds or removes a member; resolves once the change is applied here.
    pub async fn change_member(&self, cc: ConfChange) -> Result<(), StoreError> {
        self.call(|reply| Command::ChangeMember { cc, reply }).await
    }

    /// The current status.
    pub fn status(&self) -> RaftStatus {
        self.status.borrow().clone()
    }

    /// A receiver of status changes.
    pub fn watch(&self) -> watch::Receiver<RaftStatus> {
        self.status.clone()
    }

    /// Waits until a leader is known (or `timeout`).
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64, StoreError> {
        let mut rx = self.status.clone();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|s| s.leader != 0)).await;
        match waited {
            Ok(Ok(s)) => Ok(s.leader),
            _ => Err(StoreError::Unavailable(
                "the swarm does not have a leader: too few managers may be online".into(),
            )),
        }
    }
}

impl Proposer for RaftHandle {
    fn propose(&self, batch: Vec<u8>) -> BoxFuture<'_, Result<Outcome, StoreError>> {
        Box::pin(self.call(|reply| Command::Propose { data: batch, reply }))
    }

    fn barrier(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let index = self.call(|reply| Command::ReadIndex { reply }).await?;
            let mut rx = self.status.clone();
            let reached = rx.wait_for(|s| s.applied >= index || s.failed.is_some());
            let ok = match tokio::time::timeout(PROPOSAL_TIMEOUT, reached).await {
                Ok(Ok(s)) => s.failed.is_none(),
                _ => false,
            };
            if ok {
                Ok(())
            } else {
                Err(self.stopped())
            }
        })
    }
}
