//! A node that comes back after its certificate expired: instead of giving up on it (Swarm
//! makes it leave and join again), it asks the managers for a new certificate with its old
//! identity, proving it still holds the old key, and resumes its membership once they grant
//! one (an operator's `shoal node approve`, or the cluster's re-attestation window).

use std::sync::Arc;
use std::time::Duration;

use shoal_agent::{JoinError, NodeState};

use super::{Daemon, Info};

/// First and longest pause between two requests.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Asks in the background until a new certificate comes, then resumes `state`.
pub(super) fn start(daemon: &Arc<Daemon>, state: NodeState) {
    let waiting =
        "this node's certificate expired while it was off; asking the managers for a new one";
    tracing::warn!("{waiting}");
    *daemon.reattesting.lock().unwrap_or_else(|p| p.into_inner()) =
        Some((state.clone(), waiting.to_string()));
    let weak = daemon.me.clone();
    tokio::spawn(async move {
        let mut pause = RETRY_FIRST;
        // One key for every attempt: an operator approves a request for this key.
        let new_key = match shoal_pki::NodeKey::generate() {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(error = %e, "could not make a key to ask for a new certificate");
                return;
            }
        };
        loop {
            let Some(daemon) = weak.upgrade() else { return };
            if !daemon.is_reattesting() {
                return;
            }
            match daemon.reattest_once(&state, &new_key).await {
                Ok(()) => break,
                Err(why) => {
                    let line = why.to_string();
                    let mut slot = daemon.reattesting.lock().unwrap_or_else(|p| p.into_inner());
                    if slot.as_ref().map(|(_, l)| l) != Some(&line) {
                        tracing::warn!(error = %line, "no new certificate yet; asking again");
                    }
                    *slot = Some((state.clone(), line));
                }
            }
            drop(daemon);
            let scaled = pause.div_f64(time_scale(&weak)).max(Duration::from_millis(200));
            tokio::time::sleep(scaled).await;
            pause = (pause * 2).min(RETRY_MAX);
        }
        let Some(daemon) = weak.upgrade() else { return };
        // Holding the membership lock: a leave meanwhile either came first (nothing to resume)
        // or waits for the resumed membership.
        let mut member = daemon.member.lock().await;
        if !daemon.is_reattesting() {
            return;
        }
        match daemon.resume(state.clone(), None).await {
            Ok(resumed) => {
                *member = Some(resumed);
                *daemon.reattesting.lock().unwrap_or_else(|p| p.into_inner()) = None;
                tracing::info!("new certificate in place; cluster membership resumed");
            }
            Err(e) => {
                let line = format!("the new certificate came, but resuming failed: {e:#}");
                tracing::error!("{line}");
                *daemon.reattesting.lock().unwrap_or_else(|p| p.into_inner()) = Some((state, line));
            }
        }
    });
}

fn time_scale(weak: &std::sync::Weak<Daemon>) -> f64 {
    weak.upgrade().map(|d| d.cfg.time_scale.max(1.0)).unwrap_or(1.0)
}

impl Daemon {
    pub(super) fn is_reattesting(&self) -> bool {
        self.reattesting.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Stops asking for a new certificate (the node leaves); true if it was asking.
    pub(super) fn stop_reattesting(&self) -> bool {
        self.reattesting.lock().unwrap_or_else(|p| p.into_inner()).take().is_some()
    }

    /// One request to the managers; on success the new identity is saved.
    async fn reattest_once(
        &self,
        state: &NodeState,
        new_key: &shoal_pki::NodeKey,
    ) -> Result<(), JoinError> {
        let (old_key, old_chain, root) = self.files.load_identity().map_err(|e| {
            JoinError::Unreachable(format!("this node's identity cannot be read: {e}"))
        })?;
        let chain = shoal_agent::join::reattest(&shoal_agent::join::Reattest {
            manager_addrs: &state.manager_addrs,
            manager_ids: &state.manager_ids,
            root_ca_pem: &root,
            old_key: &old_key,
            old_chain_pem: &old_chain,
            new_key,
        })
        .await?;
        self.files.save_identity(new_key, &chain, &root).map_err(|e| {
            JoinError::Unreachable(format!("the new certificate could not be saved: {e}"))
        })?;
        Ok(())
    }

    /// What `shoal info` shows while the node waits for a new certificate.
    pub(super) fn reattest_info(&self) -> Info {
        let slot = self.reattesting.lock().unwrap_or_else(|p| p.into_inner());
        let Some((state, line)) = slot.as_ref() else { return Info::default() };
        // The expired identity: `shoal info` shows the node pending, with why.
        let identity = self.files.load_identity().ok().and_then(|(key, chain, _)| {
            shoal_pki::ReloadableCert::new(&chain, &key).ok().map(|c| c.identity())
        });
        let mut info = Info { state: Some(state.clone()), identity, ..Default::default() };
        info.agent.error = Some(line.clone());
        info
    }
}
