//! The worker's side of one dispatcher session: the assignments stream in, task states out in
//! batches, log subscriptions served. Everything here lives as long as the session; the
//! worker and its unsent states outlive it.

use std::collections::HashMap;
use std::time::Duration;

use shoal_proto::dispatcher_client::DispatcherClient;
use shoal_proto::limits;
use shoal_proto::{
    AssignmentsRequest, ListenSubscriptionsRequest, TaskStatusUpdate, UpdateTaskStatusRequest,
};
use tokio::task::{AbortHandle, JoinSet};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::status::StatusQueue;
use super::Worker;
use crate::session::SessionError;

/// States are sent at most this often…
pub const REPORT_EVERY: Duration = Duration::from_millis(50);
/// …or as soon as this many wait, and never more than this many in one call.
pub const REPORT_BATCH: usize = 100;
/// A manager without the task RPCs (an older one) is asked again after this long.
const UNIMPLEMENTED_RETRY: Duration = Duration::from_secs(1);

/// The session's identity as the worker's loops need it.
#[derive(Clone, Debug)]
pub struct Link {
    pub client: DispatcherClient<Channel>,
    pub session_id: String,
    /// The manager's address, for error messages.
    pub manager: String,
}

impl Link {
    fn error(&self, s: Status) -> SessionError {
        SessionError::call(&self.manager, s)
    }
}

/// Runs the worker's part of a session until one of its streams breaks.
pub async fn serve(worker: &Worker, link: Link) -> Result<(), SessionError> {
    tokio::select! {
        r = assignments(worker, link.clone()) => r,
        r = report(worker.statuses(), link.clone()) => r,
        r = subscriptions(worker, link) => r,
    }
}

/// Applies the assignments stream to the worker: the complete set first, then changes.
async fn assignments(worker: &Worker, mut link: Link) -> Result<(), SessionError> {
    let req = AssignmentsRequest { session_id: link.session_id.clone() };
    let mut stream = match link.client.assignments(req).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == Code::Unimplemented => return std::future::pending().await,
        Err(s) => return Err(link.error(s)),
    };
    while let Some(msg) = stream.message().await.map_err(|s| link.error(s))? {
        tracing::debug!(
            complete = msg.complete,
            tasks = msg.tasks.len(),
            removed = msg.removed.len(),
            "assignments"
        );
        worker.apply(msg).await;
    }
    Err(SessionError::Closed { what: "assignments stream" })
}

/// A status report trimmed to what the managers accept (a long error, such as a health
/// check's output, loses its end rather than the whole batch being refused).
fn within_limits(u: &TaskStatusUpdate) -> TaskStatusUpdate {
    let mut u = u.clone();
    if let Some(s) = u.status.as_mut() {
        s.message = limits::trimmed(&s.message, limits::MESSAGE_BYTES).to_string();
        s.err = limits::trimmed(&s.err, limits::MESSAGE_BYTES).to_string();
    }
    u
}

/// Sends queued task states: gathered for up to `REPORT_EVERY`, at most `REPORT_BATCH` per
/// call. A batch that fails, or whose call the session's end cuts short, goes back to the
/// queue for the next session.
async fn report(queue: &StatusQueue, mut link: Link) -> Result<(), SessionError> {
    loop {
        if queue.is_empty() {
            queue.changed().await;
            continue;
        }
        let deadline = tokio::time::Instant::now() + REPORT_EVERY;
        while queue.len() < REPORT_BATCH {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = queue.changed() => {}
            }
        }
        let batch = queue.batch(REPORT_BATCH);
        if batch.updates().is_empty() {
            continue;
        }
        let updates = batch.updates().iter().map(within_limits).collect();
        let req = UpdateTaskStatusRequest { session_id: link.session_id.clone(), updates };
        match link.client.update_task_status(req).await {
            Ok(_) => batch.sent(),
            Err(s) => {
                drop(batch);
                if s.code() != Code::Unimplemented {
                    return Err(link.error(s));
                }
                tokio::time::sleep(UNIMPLEMENTED_RETRY).await;
            }
        }
    }
}

/// Serves the log subscriptions the managers send, one publisher each, until closed.
async fn subscriptions(worker: &Worker, mut link: Link) -> Result<(), SessionError> {
    let req = ListenSubscriptionsRequest { session_id: link.session_id.clone() };
    let mut stream = match link.client.listen_subscriptions(req).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == Code::Unimplemented => return std::future::pending().await,
        Err(s) => return Err(link.error(s)),
    };
    // Dropping the set (the session ends) stops every publisher.
    let mut publishers = JoinSet::new();
    let mut by_id: HashMap<String, AbortHandle> = HashMap::new();
    while let Some(sub) = stream.message().await.map_err(|s| link.error(s))? {
        while publishers.try_join_next().is_some() {}
        by_id.retain(|_, h| !h.is_finished());
        if sub.close {
            if let Some(h) = by_id.remove(&sub.id) {
                h.abort();
            }
            continue;
        }
        let id = sub.id.clone();
        let job =
            super::logs::publish(worker.clone(), link.client.clone(), link.session_id.clone(), sub);
        by_id.insert(id, publishers.spawn(job));
    }
    Err(SessionError::Closed { what: "log subscriptions stream" })
}

#[cfg(test)]
mod tests;
