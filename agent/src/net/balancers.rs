//! Keeping every task's balancer in line with the maps: written when a task is plumbed, and
//! after map changes by a thread of its own that coalesces bursts.

use std::path::Path;
use std::sync::Weak;

use super::{cmd, lb, names, task_maps, DataPlane, NetError, NETNS_DIR};

impl DataPlane {
    /// Rewrites task `id`'s balancer if what its networks' virtual IPs lead to changed.
    pub(super) fn program_lb(&self, id: &str) -> Result<(), NetError> {
        let _one_at_a_time = self.lb_lock.lock().unwrap_or_else(|p| p.into_inner());
        let (netns, ruleset) = {
            let inner = self.inner();
            let Some(t) = inner.tasks.get(id) else { return Ok(()) };
            let ruleset = lb::ruleset(&names::balanced(&task_maps(&inner, t)));
            if ruleset == t.lb {
                return Ok(());
            }
            (t.netns.clone(), ruleset)
        };
        let path = Path::new(NETNS_DIR).join(&netns);
        cmd::nft(Some(&path.to_string_lossy()), &ruleset)?;
        if let Some(t) = self.inner().tasks.get_mut(id) {
            t.lb = ruleset;
        }
        Ok(())
    }
}

/// Rewrites the balancers marked dirty, from the maps as they are when each is written, until
/// the data plane is dropped.
pub(super) fn balancer_loop(weak: Weak<DataPlane>) {
    loop {
        let Some(plane) = weak.upgrade() else { return };
        let batch = {
            let mut inner = plane.inner();
            if inner.lb_dirty.is_empty() {
                let waited = plane
                    .lb_wake
                    .wait_timeout(inner, std::time::Duration::from_millis(500))
                    .unwrap_or_else(|p| p.into_inner());
                inner = waited.0;
            }
            std::mem::take(&mut inner.lb_dirty)
        };
        for id in batch {
            if let Err(e) = plane.program_lb(&id) {
                if plane.inner().tasks.contains_key(&id) {
                    tracing::warn!(task = %id, error = %e, "could not program the task's load balancer");
                }
            }
        }
    }
}
