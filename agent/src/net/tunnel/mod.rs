//! The encrypted overlay's data plane: a userspace WireGuard-protocol tunnel (boringtun's
//! `noise` state machines) between this node and its peers, through a TUN device.
//!
//! Owns, in the node's network namespace: the TUN device, one UDP socket, a policy rule and
//! routing table that send every UDP packet to the encrypted VXLAN port into the device (and
//! black-hole them when the device is gone: fail closed), an nftables table that lets packets
//! to that port in and out only through the device, and the threads that move packets between
//! the device and the socket. Never creates VXLAN devices or decides who the peers are: the
//! caller says which keys and peers there are ([`Tunnel::set_keys`], [`Tunnel::set_peers`]).
//!
//! Each (local key, peer key) pair is a *link*, one boringtun `Tunn` with its own 24-bit
//! index; a node has one or two local keys and a peer one or two public keys during a
//! rotation, so a peer has at most four links, the newest pair preferred (see `links`).
//!
//! Three threads move the packets (`engine`): one reads the device (with offloads, Linux
//! 6.17+, TCP over VXLAN comes as one 64 KiB packet, cut up in `segment`), seals and sends
//! in batches (`sendmmsg`, equal datagrams to one peer as one UDP GSO send); one receives in
//! batches (`recvmmsg` with UDP GRO), opens, checks (WireGuard's cryptokey routing,
//! `receive`) and writes runs of one flow as one GSO packet (`coalesce`, `merge`);
//! one runs boringtun's timers. No allocation per packet; a peer's lock is held for one
//! packet's crypto. Key material is never logged nor shown by `Debug`.

mod coalesce;
mod device;
mod engine;
mod links;
mod merge;
mod packet;
mod plumbing;
mod receive;
mod segment;
mod stats;
mod udp;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use boringtun::x25519::StaticSecret;

use super::NetError;
use engine::Shared;
use links::{Control, LocalKey};
pub use stats::{Drops, LinkStats, PeerStats, TunnelStats};

/// The UDP port the tunnel listens on unless told otherwise (WireGuard's).
pub const TUNNEL_PORT: u16 = 51820;
/// Bytes the tunnel adds to each packet: outer IPv4 20 + UDP 8 + WireGuard 32.
pub const TUNNEL_OVERHEAD: u32 = 60;
/// The TUN device's MTU: a 1500-byte underlay less the tunnel's overhead.
pub const TUNNEL_MTU: u32 = 1500 - TUNNEL_OVERHEAD;
/// Preference of the policy rule sending encrypted VXLAN into the routing table; the rule one
/// above it black-holes what that table does not route (so a flushed table fails closed too).
pub const RULE_PREF: u32 = 1100;

/// The UDP port encrypted VXLAN uses, derived from the cluster's data-path port (data_port+1;
/// data_port-1 for 65535).
pub fn encrypted_vxlan_port(data_port: u16) -> u16 {
    data_port.checked_add(1).unwrap_or(data_port - 1)
}

/// Where and how the tunnel runs on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelConfig {
    /// The TUN device's name (at most 15 characters).
    pub device: String,
    /// The UDP port of the tunnel's socket (on every address).
    pub listen_port: u16,
    /// This node's data-plane address: the source of its VXLAN packets, and the only
    /// destination that decrypted packets may have.
    pub local_addr: Ipv4Addr,
    /// The UDP port of encrypted VXLAN (see [`encrypted_vxlan_port`]).
    pub vxlan_port: u16,
    /// The routing table encrypted VXLAN is routed by.
    pub table: u32,
}

impl TunnelConfig {
    fn validate(&self) -> Result<(), TunnelError> {
        let d = &self.device;
        let name_ok = !d.is_empty()
            && d.len() <= 15
            && d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        let why = if !name_ok {
            "the device name must be 1-15 letters, digits, '-', '_' or '.'"
        } else if self.vxlan_port == 0 || self.listen_port == 0 {
            "ports must not be 0"
        } else if self.vxlan_port == self.listen_port {
            "the tunnel's port and the encrypted VXLAN port must differ"
        } else if matches!(self.table, 0 | 253..=255) {
            "the routing table must not be 0 or a reserved one (default, main, local)"
        } else if self.local_addr.is_unspecified() {
            "the local address must be set"
        } else {
            return Ok(());
        };
        Err(TunnelError::Config(why.to_string()))
    }
}

/// A node the tunnel exchanges packets with.
#[derive(Clone, PartialEq, Eq)]
pub struct Peer {
    pub node_id: String,
    /// The peer's data-plane address: where this node's VXLAN packets to it are addressed,
    /// and the only source its decrypted packets may have.
    pub addr: Ipv4Addr,
    /// Where its tunnel listens (IPv4); follows the peer when it roams.
    pub endpoint: SocketAddr,
    /// Its static public keys, newest first (two during a rotation).
    pub keys: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("node_id", &self.node_id)
            .field("addr", &self.addr)
            .field("endpoint", &self.endpoint)
            .field("keys", &format_args!("<{} redacted>", self.keys.len()))
            .finish()
    }
}

/// Why the tunnel could not start.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The configuration cannot work.
    #[error("invalid tunnel configuration: {0}")]
    Config(String),
    /// The TUN device could not be created or configured.
    #[error("creating the TUN device {device}: {source}")]
    Device { device: String, source: std::io::Error },
    /// The UDP socket could not be opened.
    #[error("opening the tunnel's UDP socket on port {port}: {source}")]
    Socket { port: u16, source: std::io::Error },
    /// Rules, routes, nftables or sysctls could not be set.
    #[error("setting up the tunnel's routing and filtering: {0}")]
    Plumbing(#[source] NetError),
    /// A packet thread could not be started.
    #[error("starting the tunnel's threads: {0}")]
    Thread(#[source] std::io::Error),
}

/// A running tunnel. Dropping it stops it (as [`Tunnel::stop`]).
pub struct Tunnel {
    shared: Arc<Shared>,
    control: Mutex<Control>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel").field("cfg", &self.shared.cfg).finish_non_exhaustive()
    }
}

impl Tunnel {
    /// Creates (or re-creates after a restart; idempotent) the TUN device, rules, table and
    /// nft table, binds the socket, starts the threads. Everything happens in the calling
    /// thread's network namespace.
    pub fn start(cfg: TunnelConfig, keys: Vec<StaticSecret>) -> Result<Arc<Tunnel>, TunnelError> {
        cfg.validate()?;
        // The guards first: from here on, encrypted VXLAN leaves only through the device.
        plumbing::install_guards(&cfg).map_err(TunnelError::Plumbing)?;
        let (tun, hdr) = device::open(&cfg.device)
            .map_err(|source| TunnelError::Device { device: cfg.device.clone(), source })?;
        plumbing::route_through_device(&cfg).map_err(TunnelError::Plumbing)?;
        let (socket, gso) = udp::bind(cfg.listen_port)
            .map_err(|source| TunnelError::Socket { port: cfg.listen_port, source })?;
        let shared = Arc::new(Shared::new(cfg));
        let tunnel = Tunnel {
            shared: shared.clone(),
            control: Mutex::new(Control::default()),
            threads: Mutex::new(Vec::new()),
        };
        tunnel.set_keys(keys);
        let threads = engine::spawn(shared, engine::Io { tun, hdr, socket, gso })
            .map_err(TunnelError::Thread)?;
        *tunnel.threads() = threads;
        tracing::info!(device = %tunnel.shared.cfg.device, port = tunnel.shared.cfg.listen_port, "tunnel started");
        Ok(Arc::new(tunnel))
    }

    /// This node's static keys, newest first (the older one is kept during a rotation's
    /// overlap). Links of keys no longer given are dropped at once.
    pub fn set_keys(&self, keys: Vec<StaticSecret>) {
        let mut control = self.control();
        let keys = keys.into_iter().map(|k| control.local_key(k)).collect::<Vec<Arc<LocalKey>>>();
        control.keys = keys;
        self.publish(&mut control);
    }

    /// The nodes to exchange packets with. Links of peers or keys no longer given are dropped
    /// at once (their handshakes are refused from then on).
    pub fn set_peers(&self, peers: Vec<Peer>) {
        let mut control = self.control();
        let mut wanted = BTreeMap::new();
        for p in peers {
            if !p.endpoint.is_ipv4() {
                tracing::warn!(node = %p.node_id, endpoint = %p.endpoint, "peer skipped: the tunnel reaches IPv4 endpoints only");
                continue;
            }
            wanted.insert(p.node_id.clone(), p);
        }
        control.set_peers(wanted);
        self.publish(&mut control);
    }

    /// What the tunnel has done so far.
    pub fn stats(&self) -> TunnelStats {
        let registry = self.shared.registry();
        stats::collect(&registry, &self.shared.counters)
    }

    /// Stops the threads and closes the device; the fail-closed routing stays.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        let threads = std::mem::take(&mut *self.threads());
        for t in &threads {
            t.thread().unpark();
        }
        let stopped = !threads.is_empty();
        for t in threads {
            if t.join().is_err() {
                tracing::error!("a tunnel thread panicked");
            }
        }
        if stopped {
            tracing::info!(device = %self.shared.cfg.device, "tunnel stopped");
        }
    }

    fn publish(&self, control: &mut Control) {
        let registry = control.rebuild();
        self.shared.publish(registry);
    }

    fn control(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn threads(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.threads.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Removes everything [`Tunnel::start`] installed (rules, table, nft table, device): when the
/// node has no encrypted network left. Safe to repeat.
pub fn remove(cfg: &TunnelConfig) {
    plumbing::remove(cfg);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encrypted_port_is_next_to_the_data_port() {
        assert_eq!(encrypted_vxlan_port(4789), 4790);
        assert_eq!(encrypted_vxlan_port(1), 2);
        assert_eq!(encrypted_vxlan_port(65535), 65534);
        assert_eq!(TUNNEL_MTU, 1440);
    }

    fn cfg() -> TunnelConfig {
        TunnelConfig {
            device: "shoal-tun".into(),
            listen_port: TUNNEL_PORT,
            local_addr: Ipv4Addr::new(10, 0, 0, 1),
            vxlan_port: 4790,
            table: 4790,
        }
    }

    #[test]
    fn configurations_that_cannot_work_are_refused() {
        assert!(cfg().validate().is_ok());
        let bad = [
            TunnelConfig { device: "a-name-far-too-long".into(), ..cfg() },
            TunnelConfig { device: "tun\"; flush ruleset".into(), ..cfg() },
            TunnelConfig { device: String::new(), ..cfg() },
            TunnelConfig { vxlan_port: TUNNEL_PORT, ..cfg() },
            TunnelConfig { vxlan_port: 0, ..cfg() },
            TunnelConfig { table: 254, ..cfg() },
            TunnelConfig { local_addr: Ipv4Addr::UNSPECIFIED, ..cfg() },
        ];
        for c in bad {
            assert!(matches!(c.validate(), Err(TunnelError::Config(_))), "{c:?}");
        }
    }

    #[test]
    fn a_peer_never_shows_its_keys() {
        let p = Peer {
            node_id: "n1".into(),
            addr: Ipv4Addr::new(10, 0, 0, 2),
            endpoint: "10.0.0.2:51820".parse().unwrap(),
            keys: vec![[0xab; 32]],
        };
        let shown = format!("{p:?}");
        assert!(!shown.contains("171") && !shown.contains("ab"), "{shown}");
        assert!(shown.contains("<1 redacted>"), "{shown}");
    }
}
