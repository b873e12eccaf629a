//! Following `node promote` / `node demote`: the daemon notices its new role in the session,
//! waits for that role's certificate, then joins or leaves the managers' Raft group.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use shoal_pki::Role;

use super::{Daemon, Member};

/// How often the daemon checks whether the managers changed this node's role.
const ROLE_CHECK: Duration = Duration::from_millis(300);
/// How long a role change may wait for the certificate of the new role.
const ROLE_CERT_WAIT: Duration = Duration::from_secs(30);

/// Follows `node promote` / `node demote`: when the managers give this node another role, get
/// that role's certificate, then join or leave the managers' Raft group.
pub(super) async fn follow_role(daemon: std::sync::Weak<Daemon>) {
    loop {
        tokio::time::sleep(ROLE_CHECK).await;
        let Some(daemon) = daemon.upgrade() else { return };
        let mut member = daemon.member.lock().await;
        let Some(m) = member.as_mut() else { continue };
        daemon.keep_manager_addrs(m);
        let Some(wanted) = m.agent.status().role else { continue };
        if wanted == m.state.role {
            continue;
        }
        tracing::info!(from = %m.state.role, to = %wanted, "the managers changed this node's role");
        if let Err(e) = daemon.change_role(m, wanted).await {
            tracing::warn!(error = %format!("{e:#}"), "role change not finished; will retry");
        }
    }
}

impl Daemon {
    /// Saves the managers' addresses the agent last heard of, so that after a restart the node
    /// still finds the managers when every address it knew before has changed.
    fn keep_manager_addrs(&self, m: &mut Member) {
        let status = m.agent.status();
        let (heard, ids) = (status.manager_addrs, status.manager_ids);
        if heard.is_empty() || (heard == m.state.manager_addrs && ids == m.state.manager_ids) {
            return;
        }
        m.state.manager_addrs = heard.clone();
        m.state.manager_ids = ids.clone();
        let saved = match self.files.load_state() {
            Ok(Some(mut saved)) if saved.node_id == m.state.node_id => {
                saved.manager_addrs = heard;
                saved.manager_ids = ids;
                self.files.save_state(&saved)
            }
            _ => return,
        };
        if let Err(e) = saved {
            tracing::warn!(error = %e, "could not save the managers' addresses");
        }
    }

    async fn change_role(&self, m: &mut Member, wanted: Role) -> Result<()> {
        m.agent.renew_now();
        let deadline = tokio::time::Instant::now() + ROLE_CERT_WAIT;
        while m.cert.identity().role != wanted {
            if tokio::time::Instant::now() >= deadline {
                bail!("no {wanted} certificate yet");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut state = m.state.clone();
        state.role = wanted;
        if wanted == Role::Manager {
            let (_, _, root) = self.files.load_identity()?;
            let id = self.identity(&state, m.cert.clone(), &root);
            let remote =
                m.agent.status().manager.clone().or_else(|| state.manager_addrs.first().cloned());
            let remote = remote.context("no manager known to join through")?;
            let _ = std::fs::remove_dir_all(self.files.store_dir());
            state.runs_manager = true;
            m.manager = Some(self.join_managers(&id, &mut state, &remote).await?);
        } else if let Some(serving) = m.manager.take() {
            serving.shutdown().await;
            state.runs_manager = false;
            let _ = std::fs::remove_dir_all(self.files.store_dir());
        }
        self.files.save_state(&state)?;
        m.state = state;
        tracing::info!(role = %m.state.role, "role change done");
        Ok(())
    }
}
