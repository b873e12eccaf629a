//! Owns ending a node's long-lived streams the moment the node leaves the cluster: its session,
//! assignments and log streams stop as soon as this manager applies the node's removal (or the
//! revocation of the certificate that opened them), on every manager, whichever one handled the
//! removal. Driven by the store's change feed, so it needs no word from the handling manager.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use shoal_pki::PeerIdentity;
use shoal_proto::Node;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, WatchStream};
use tokio_stream::Stream;
use tonic::Status;

use crate::manager::{Manager, Shared};

/// Bumped whenever a node may have been removed or a certificate revoked.
#[derive(Debug)]
pub(crate) struct Removals {
    changes: watch::Sender<u64>,
}

impl Default for Removals {
    fn default() -> Self {
        Removals { changes: watch::Sender::new(0) }
    }
}

impl Manager {
    /// Follows the store: each node deletion, cluster change (revocations live there) or missed
    /// stretch of changes makes every open node stream check that its node is still here.
    pub(crate) fn spawn_removal_watch(&self) {
        let weak = Arc::downgrade(&self.shared);
        let mut events = self.shared.store.watch();
        tokio::spawn(async move {
            loop {
                let relevant = match events.recv().await {
                    Ok(e) => (e.kind == "node" && e.deleted) || e.kind == "cluster",
                    Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let Some(shared) = weak.upgrade() else { return };
                if relevant {
                    shared.removals.changes.send_modify(|n| *n += 1);
                }
            }
        });
    }
}

impl Shared {
    /// Whether the node that presented `id` is gone: removed from the cluster, or its
    /// certificate revoked.
    fn is_gone(&self, id: &PeerIdentity) -> bool {
        self.revocations.is_revoked(id) || matches!(self.store.get::<Node>(&id.node_id), Ok(None))
    }

    /// The stream of `rx` for the node that presented `id`, ending with `PermissionDenied` the
    /// moment the node is gone: nothing more is sent to it, even what was already queued.
    pub(crate) fn until_removed<T>(
        self: &Arc<Self>,
        id: &PeerIdentity,
        rx: mpsc::Receiver<Result<T, Status>>,
    ) -> UntilRemoved<T> {
        UntilRemoved {
            shared: self.clone(),
            id: id.clone(),
            inner: ReceiverStream::new(rx),
            changes: WatchStream::new(self.removals.changes.subscribe()),
            done: false,
        }
    }

    /// Resolves once the node that presented `id` is gone (for loops that read from a node).
    pub(crate) async fn removed(self: &Arc<Self>, id: &PeerIdentity) {
        let mut changes = self.removals.changes.subscribe();
        loop {
            if self.is_gone(id) {
                return;
            }
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

/// What a removed node is told as its streams end.
pub(crate) fn removed_status(id: &PeerIdentity) -> Status {
    Status::permission_denied(format!(
        "node {} was removed from the cluster (or its certificate revoked); its streams are closed",
        id.node_id
    ))
}

/// A node's outbound stream that ends as soon as the node is gone (see
/// [`Shared::until_removed`]).
#[derive(Debug)]
pub struct UntilRemoved<T> {
    shared: Arc<Shared>,
    id: PeerIdentity,
    inner: ReceiverStream<Result<T, Status>>,
    changes: WatchStream<u64>,
    done: bool,
}

impl<T> UntilRemoved<T> {
    fn end(&mut self) -> Poll<Option<Result<T, Status>>> {
        self.done = true;
        tracing::info!(node = %self.id.node_id, "node removed: closing its stream");
        Poll::Ready(Some(Err(removed_status(&self.id))))
    }
}

impl<T> Stream for UntilRemoved<T> {
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        // A removal wakes the stream even while nothing is queued for the node.
        while let Poll::Ready(Some(_)) = Pin::new(&mut this.changes).poll_next(cx) {
            if this.shared.is_gone(&this.id) {
                return this.end();
            }
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            // Checked again per message: what was queued before the removal stays here.
            Poll::Ready(Some(_)) if this.shared.is_gone(&this.id) => this.end(),
            other => other,
        }
    }
}
