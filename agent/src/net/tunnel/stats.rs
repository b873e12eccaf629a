//! The tunnel's counters and the snapshot [`TunnelStats`] made from them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::links::Registry;

/// Why a packet was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DropReason {
    /// Read from the device but not this node's encrypted VXLAN.
    NotVxlan,
    /// For an address no peer has.
    NoPeer,
    /// A datagram for a link index no peer has (a removed peer's, or forged).
    UnknownLink,
    /// Not a WireGuard message, or one that did not authenticate.
    Invalid,
    /// Decrypted, but not encrypted VXLAN from the peer's address to this node's.
    Cryptokey,
    /// Larger than the tunnel carries.
    Oversize,
    /// The network or the device would not take it.
    Io,
}

/// Counters the packet threads bump (relaxed atomics: they are only read for stats).
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub refused_handshakes: AtomicU64,
    drops: [AtomicU64; 7],
}

impl Counters {
    pub fn drop(&self, why: DropReason) {
        self.drops[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refuse(&self) {
        self.refused_handshakes.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self, why: DropReason) -> u64 {
        self.drops[why as usize].load(Ordering::Relaxed)
    }
}

/// Packets dropped, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drops {
    /// Read from the device but not this node's encrypted VXLAN.
    pub not_vxlan: u64,
    /// For an address no peer has.
    pub no_peer: u64,
    /// For a link no peer has (a removed peer's, or forged).
    pub unknown_link: u64,
    /// Not WireGuard, or not authentic.
    pub invalid: u64,
    /// Authentic, but not encrypted VXLAN from the peer to this node (cryptokey routing).
    pub cryptokey: u64,
    /// Too large.
    pub oversize: u64,
    /// Sending or writing failed.
    pub io: u64,
}

/// One link (a pair of keys) of a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkStats {
    /// Position of this node's key in its list (0 is the newest).
    pub local_key: usize,
    /// Position of the peer's key in its list.
    pub peer_key: usize,
    pub established: bool,
    pub last_handshake: Option<Duration>,
}

/// One peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStats {
    pub node_id: String,
    pub endpoint: SocketAddr,
    /// Whether some link has a session.
    pub established: bool,
    /// Age of the newest session.
    pub last_handshake: Option<Duration>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub links: Vec<LinkStats>,
}

/// What the tunnel has done.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TunnelStats {
    pub peers: Vec<PeerStats>,
    /// Handshakes from unknown keys (or to a key this node no longer has).
    pub refused_handshakes: u64,
    pub dropped: Drops,
}

pub(super) fn collect(registry: &Registry, counters: &Counters) -> TunnelStats {
    let peers = registry.peers.iter().map(|state| {
        let p = state.lock();
        let links: Vec<LinkStats> = p
            .links
            .iter()
            .map(|l| LinkStats {
                local_key: l.rank.0,
                peer_key: l.rank.1,
                established: l.established(),
                last_handshake: l.tunn.as_ref().and_then(|t| t.time_since_last_handshake()),
            })
            .collect();
        PeerStats {
            node_id: state.node_id.clone(),
            endpoint: SocketAddr::V4(p.endpoint),
            established: links.iter().any(|l| l.established),
            last_handshake: links.iter().filter_map(|l| l.last_handshake).min(),
            rx_bytes: p.rx_bytes,
            tx_bytes: p.tx_bytes,
            links,
        }
    });
    use DropReason::*;
    TunnelStats {
        peers: peers.collect(),
        refused_handshakes: counters.refused_handshakes.load(Ordering::Relaxed),
        dropped: Drops {
            not_vxlan: counters.get(NotVxlan),
            no_peer: counters.get(NoPeer),
            unknown_link: counters.get(UnknownLink),
            invalid: counters.get(Invalid),
            cryptokey: counters.get(Cryptokey),
            oversize: counters.get(Oversize),
            io: counters.get(Io),
        },
    }
}
