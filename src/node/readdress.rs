//! Owns a node's addresses across restarts: which listen and advertise addresses a restarted
//! node uses (the saved ones, or those given to `shoald` after the host's address changed), and,
//! for a manager whose address changed, telling the other managers until they accept it. Never
//! chooses the addresses of `swarm init` or `swarm join`.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::{Context, Result};
use shoal_agent::NodeState;
use shoal_manager::Manager;
use tokio::task::JoinHandle;

use crate::node::daemon::{advertise_addr, normalize_listen, Daemon};

/// First wait between two attempts to tell the managers; it doubles up to [`RETRY_MAX`].
const RETRY_START: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Addresses given to `shoald` for a node that resumes its membership.
#[derive(Clone, Debug, Default)]
pub struct AddrOverrides {
    /// Where to listen for cluster traffic instead of the saved address.
    pub listen_addr: Option<String>,
    /// Where the other nodes reach this one, instead of the saved address.
    pub advertise_addr: Option<String>,
}

/// The state a resumed node runs with: `saved`, with the addresses `given` in place of the saved
/// ones. A new advertise address without a listen address also moves a listen address that was
/// pinned to the old advertised IP (it no longer exists on this host), keeping its port.
pub fn resumed_state(saved: &NodeState, given: &AddrOverrides) -> Result<NodeState> {
    let mut state = saved.clone();
    let old_listen = normalize_listen(&saved.listen_addr)?;
    let listen = match (&given.listen_addr, &given.advertise_addr) {
        (Some(listen), _) => normalize_listen(listen)?,
        (None, Some(advertise)) if pinned(&old_listen, &saved.advertise_addr) => {
            SocketAddr::new(ip_of(advertise)?, old_listen.port())
        }
        (None, _) => old_listen,
    };
    state.listen_addr = listen.to_string();
    if let Some(advertise) = &given.advertise_addr {
        state.advertise_addr = advertise_addr(advertise, &listen)?;
    }
    Ok(state)
}

/// Whether `listen` is bound to the IP of `advertised` (not to every interface).
fn pinned(listen: &SocketAddr, advertised: &str) -> bool {
    !listen.ip().is_unspecified() && ip_of(advertised).is_ok_and(|ip| ip == listen.ip())
}

fn ip_of(addr: &str) -> Result<IpAddr> {
    addr.parse::<IpAddr>()
        .or_else(|_| addr.parse::<SocketAddr>().map(|a| a.ip()))
        .with_context(|| format!("invalid advertise address {addr:?}: use IP or IP:PORT"))
}

/// Whether the managers must be told that this manager is at `state.advertise_addr`: it is not
/// the address this node saved, or not the one the member table holds.
pub fn must_announce(saved: &NodeState, state: &NodeState, manager: &Manager) -> bool {
    let listed = manager.member_addr();
    state.advertise_addr != saved.advertise_addr
        || listed.is_some_and(|listed| listed != state.advertise_addr)
}

/// A warning when the address this node advertises is not one of this host's: after the host's
/// address changed, nothing reaches it there (behind NAT this can be right).
pub fn foreign_advertise_addr(state: &NodeState) -> Option<String> {
    let ip = ip_of(&state.advertise_addr).ok()?;
    let local = if_addrs::get_if_addrs().ok()?;
    if ip.is_loopback() || local.iter().any(|i| i.ip() == ip) {
        return None;
    }
    Some(format!(
        "this node advertises {}, which is not an address of this host; if the host's address \
         changed, restart shoald with --advertise-addr NEW-IP",
        state.advertise_addr
    ))
}

/// Tells the managers a manager's new address, in the background, until they accept it; stops
/// when dropped. It never holds up the manager: it may be the one the others must reach.
#[derive(Debug)]
pub struct Announcer {
    task: JoinHandle<()>,
    pending: Arc<Mutex<Option<String>>>,
}

impl Announcer {
    /// Starts telling the managers (through the members `manager` knows, then `via`) that it is
    /// at `state.advertise_addr`; once accepted, `daemon` saves `state`'s addresses.
    pub fn start(daemon: Weak<Daemon>, manager: Manager, state: &NodeState) -> Announcer {
        let addr = state.advertise_addr.clone();
        let waiting = format!("telling the other managers that this manager moved to {addr}");
        let pending = Arc::new(Mutex::new(Some(waiting)));
        let task = tokio::spawn(announce(daemon, manager, state.clone(), pending.clone()));
        Announcer { task, pending }
    }

    /// What is still under way or went wrong, until the managers accept the address.
    pub fn pending(&self) -> Option<String> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn announce(
    daemon: Weak<Daemon>,
    manager: Manager,
    state: NodeState,
    pending: Arc<Mutex<Option<String>>>,
) {
    let addr = state.advertise_addr.clone();
    tracing::info!(%addr, "this manager's address changed; telling the other managers");
    let mut wait = RETRY_START;
    loop {
        match manager.announce_addr(&addr, &state.manager_addrs).await {
            Ok(()) => break,
            Err(e) => {
                let why = format!(
                    "the other managers do not know this manager's new address {addr} yet: {e}; \
                     retrying in {}s",
                    wait.as_secs()
                );
                tracing::warn!("{why}");
                *pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MAX);
    }
    tracing::info!(%addr, "the managers now reach this manager at its new address");
    let Some(daemon) = daemon.upgrade() else { return };
    match daemon.addresses_accepted(&state).await {
        Ok(()) => *pending.lock().unwrap_or_else(|p| p.into_inner()) = None,
        Err(e) => {
            let why = format!("could not save this node's new address {addr}: {e:#}");
            tracing::error!("{why}");
            *pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(listen: &str, advertise: &str) -> NodeState {
        NodeState {
            listen_addr: listen.into(),
            advertise_addr: advertise.into(),
            runs_manager: true,
            ..Default::default()
        }
    }

    fn given(listen: Option<&str>, advertise: Option<&str>) -> AddrOverrides {
        AddrOverrides {
            listen_addr: listen.map(String::from),
            advertise_addr: advertise.map(String::from),
        }
    }

    #[test]
    fn a_new_advertise_address_moves_a_listen_address_pinned_to_the_old_one() {
        let old = saved("10.0.0.3:4242", "10.0.0.3:4242");
        let s = resumed_state(&old, &given(None, Some("10.0.0.103"))).unwrap();
        assert_eq!(
            (s.listen_addr.as_str(), s.advertise_addr.as_str()),
            ("10.0.0.103:4242", "10.0.0.103:4242")
        );
        // Listening everywhere: only the advertised address changes.
        let old = saved("0.0.0.0:4242", "10.0.0.3:4242");
        let s = resumed_state(&old, &given(None, Some("10.0.0.103:5000"))).unwrap();
        assert_eq!(
            (s.listen_addr.as_str(), s.advertise_addr.as_str()),
            ("0.0.0.0:4242", "10.0.0.103:5000")
        );
    }

    #[test]
    fn given_addresses_win_and_nothing_given_keeps_the_saved_ones() {
        let old = saved("10.0.0.3:4242", "10.0.0.3:4242");
        assert_eq!(resumed_state(&old, &AddrOverrides::default()).unwrap(), old);
        let s = resumed_state(&old, &given(Some("0.0.0.0:4300"), Some("192.168.1.9"))).unwrap();
        assert_eq!(
            (s.listen_addr.as_str(), s.advertise_addr.as_str()),
            ("0.0.0.0:4300", "192.168.1.9:4300")
        );
        let s = resumed_state(&old, &given(Some("10.0.0.7"), None)).unwrap();
        assert_eq!(
            (s.listen_addr.as_str(), s.advertise_addr.as_str()),
            ("10.0.0.7:4242", "10.0.0.3:4242")
        );
        assert!(resumed_state(&old, &given(None, Some("not-an-ip"))).is_err());
    }
}
