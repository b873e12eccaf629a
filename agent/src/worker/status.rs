//! Owns the task states waiting to be reported: the latest status per task, and the highest
//! state reported (or queued) for each, so a report never goes backwards. One short sync mutex;
//! the session's reporter takes batches and puts back the ones it could not send.

use std::collections::HashMap;
use std::sync::Mutex;

use shoal_proto::{TaskState, TaskStatus, TaskStatusUpdate};
use tokio::sync::Notify;

/// Task statuses on their way to the managers.
#[derive(Debug, Default)]
pub struct StatusQueue {
    state: Mutex<Queue>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct Queue {
    /// Tasks being reported on, with the last status queued for each: never go below it.
    floors: HashMap<String, Floor>,
    pending: HashMap<String, TaskStatus>,
}

#[derive(Debug)]
struct Floor {
    state: i32,
    health: String,
}

impl StatusQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts reporting on task `id`, whose state the managers know to be `known`.
    pub fn track(&self, id: &str, known: TaskState) {
        let mut q = self.lock();
        let floor = q.floors.entry(id.to_string()).or_insert(Floor { state: 0, health: "".into() });
        floor.state = floor.state.max(known as i32);
    }

    /// Stops reporting on task `id` and drops what was waiting for it.
    pub fn untrack(&self, id: &str) {
        let mut q = self.lock();
        q.floors.remove(id);
        q.pending.remove(id);
    }

    /// Queues `status` for task `id`, replacing any waiting one. Returns false (and queues
    /// nothing) when the task is not tracked, the state is below the last one, or it repeats
    /// the last state and health.
    pub fn push(&self, id: &str, status: TaskStatus) -> bool {
        let mut q = self.lock();
        let Some(floor) = q.floors.get_mut(id) else { return false };
        let same = status.state == floor.state && status.health == floor.health;
        if status.state < floor.state || same {
            return false;
        }
        floor.state = status.state;
        floor.health.clone_from(&status.health);
        q.pending.insert(id.to_string(), status);
        drop(q);
        self.changed.notify_one();
        true
    }

    /// Takes up to `max` waiting updates.
    pub fn take(&self, max: usize) -> Vec<TaskStatusUpdate> {
        let mut q = self.lock();
        let ids: Vec<String> = q.pending.keys().take(max).cloned().collect();
        ids.into_iter()
            .filter_map(|id| {
                let status = q.pending.remove(&id)?;
                Some(TaskStatusUpdate { task_id: id, status: Some(status) })
            })
            .collect()
    }

    /// Takes up to `max` waiting updates as a batch that puts itself back unless marked sent,
    /// so a send cut short (the session ends mid-call) loses nothing.
    pub fn batch(&self, max: usize) -> Batch<'_> {
        Batch { queue: self, updates: self.take(max) }
    }

    /// Puts back updates that could not be sent, unless a newer one is waiting.
    pub fn restore(&self, batch: Vec<TaskStatusUpdate>) {
        let mut q = self.lock();
        for u in batch {
            if q.floors.contains_key(&u.task_id) && !q.pending.contains_key(&u.task_id) {
                if let Some(status) = u.status {
                    q.pending.insert(u.task_id, status);
                }
            }
        }
        drop(q);
        self.changed.notify_one();
    }

    /// How many updates are waiting.
    pub fn len(&self) -> usize {
        self.lock().pending.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The highest state queued for task `id`, if it is tracked.
    pub fn last_state(&self, id: &str) -> Option<i32> {
        self.lock().floors.get(id).map(|f| f.state)
    }

    /// Returns after the next push (or at once if one happened since the last call).
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

/// Updates on their way out; see [`StatusQueue::batch`].
#[derive(Debug)]
pub struct Batch<'a> {
    queue: &'a StatusQueue,
    updates: Vec<TaskStatusUpdate>,
}

impl Batch<'_> {
    /// The updates to send.
    pub fn updates(&self) -> &[TaskStatusUpdate] {
        &self.updates
    }

    /// The managers have them.
    pub fn sent(mut self) {
        self.updates.clear();
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if !self.updates.is_empty() {
            self.queue.restore(std::mem::take(&mut self.updates));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: TaskState, health: &str) -> TaskStatus {
        TaskStatus { state: state as i32, health: health.into(), ..Default::default() }
    }

    #[test]
    fn states_only_move_forward() {
        let q = StatusQueue::default();
        assert!(!q.push("t", status(TaskState::Accepted, "")), "untracked tasks are not reported");
        q.track("t", TaskState::Assigned);
        assert!(q.push("t", status(TaskState::Running, "")));
        assert!(!q.push("t", status(TaskState::Preparing, "")));
        assert!(!q.push("t", status(TaskState::Running, "")), "a repeat is dropped");
        assert!(q.push("t", status(TaskState::Running, "healthy")), "a health change is news");
        assert_eq!(q.take(10).len(), 1, "only the latest status per task waits");
    }

    #[test]
    fn the_managers_state_is_a_floor() {
        let q = StatusQueue::default();
        q.track("t", TaskState::Running);
        assert!(!q.push("t", status(TaskState::Starting, "")));
        assert!(q.push("t", status(TaskState::Failed, "")));
    }

    #[test]
    fn a_batch_cut_short_comes_back() {
        let q = StatusQueue::default();
        for id in ["a", "b"] {
            q.track(id, TaskState::Assigned);
            q.push(id, status(TaskState::Running, ""));
        }
        let cut_short = q.batch(10);
        assert_eq!(cut_short.updates().len(), 2);
        drop(cut_short);
        assert_eq!(q.len(), 2, "a batch not marked sent comes back");
        q.batch(10).sent();
        assert!(q.is_empty());
    }

    #[test]
    fn unsent_updates_come_back_unless_newer_ones_wait() {
        let q = StatusQueue::default();
        for id in ["a", "b"] {
            q.track(id, TaskState::Assigned);
            q.push(id, status(TaskState::Running, ""));
        }
        let batch = q.take(10);
        assert_eq!(batch.len(), 2);
        q.push("a", status(TaskState::Complete, ""));
        q.restore(batch);
        let mut back: Vec<(String, i32)> =
            q.take(10).into_iter().map(|u| (u.task_id, u.status.unwrap().state)).collect();
        back.sort();
        let want =
            vec![("a".into(), TaskState::Complete as i32), ("b".into(), TaskState::Running as i32)];
        assert_eq!(back, want);
        q.untrack("a");
        q.restore(vec![TaskStatusUpdate {
            task_id: "a".into(),
            status: Some(status(TaskState::Failed, "")),
        }]);
        assert!(q.is_empty(), "forgotten tasks are not reported");
    }
}
