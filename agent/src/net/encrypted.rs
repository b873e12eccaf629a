//! Encrypted overlays on this node: the glue between the managers' maps and the tunnel.
//!
//! An encrypted network is an overlay like any other (a sandbox with a bridge and a VXLAN
//! device) whose VXLAN device sends to another UDP port. The tunnel ([`super::tunnel`]) takes
//! every packet to that port into WireGuard sessions with the other nodes of the network, and
//! drops any that would leave, or arrive, another way. The maps of encrypted networks name
//! their nodes with their tunnel keys; the union of those, less this node, is the tunnel's
//! peer list. That list (public keys and addresses only) is kept in a file, so an agent that
//! restarts brings its running tasks' tunnels back before it reaches any manager.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_proto::{Network, NetworkMap, TunnelKey};

use super::keys::TunnelKeys;
use super::tunnel::{self, Peer, Tunnel, TunnelConfig, TUNNEL_OVERHEAD, TUNNEL_PORT};
use super::{DataPlane, NetError, OVERLAY_MTU};

/// The routing table encrypted VXLAN traffic is looked up in.
const TABLE: u32 = 51820;

/// What the node knows for its encrypted networks.
#[derive(Debug, Default)]
pub(super) struct Crypt {
    keys: Option<TunnelKeys>,
    /// This node's ID and data-plane address, from its session.
    node_id: String,
    node_addr: Option<Ipv4Addr>,
    tunnel: Option<(Arc<Tunnel>, TunnelConfig)>,
    /// The peer list last given to the tunnel, as saved.
    saved: Option<SavedPeers>,
}

/// The file that lets a restarted agent bring its tunnels back on its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SavedPeers {
    local_addr: Ipv4Addr,
    vxlan_port: u16,
    peers: Vec<SavedPeer>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SavedPeer {
    node_id: String,
    addr: Ipv4Addr,
    /// Public keys in hex, newest first.
    keys: Vec<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Whether network `n` is encrypted.
pub(super) fn is_encrypted(n: &Network) -> bool {
    n.spec.as_ref().is_some_and(|s| s.encrypted)
}

/// The inner MTU of a network's interfaces: the tunnel's header comes off encrypted ones.
pub(super) fn mtu_of(n: &Network) -> u32 {
    if is_encrypted(n) {
        OVERLAY_MTU - TUNNEL_OVERHEAD
    } else {
        OVERLAY_MTU
    }
}

/// The data-path port a network's VXLAN device uses.
pub(super) fn vxlan_port_of(n: &Network) -> u16 {
    let port = if n.data_port == 0 { 4789 } else { n.data_port as u16 };
    if is_encrypted(n) {
        tunnel::encrypted_vxlan_port(port)
    } else {
        port
    }
}

/// The peer list the maps give: every node named by an encrypted network's map, but `me`.
fn peers_of<'a>(maps: impl Iterator<Item = &'a NetworkMap>, me: &str) -> Vec<SavedPeer> {
    let mut by_node: BTreeMap<String, SavedPeer> = BTreeMap::new();
    for m in maps.filter(|m| m.network.as_ref().is_some_and(is_encrypted)) {
        for p in m.tunnel_peers.iter().filter(|p| p.node_id != me) {
            let Ok(addr) = p.addr.parse::<Ipv4Addr>() else { continue };
            let keys = p
                .keys
                .iter()
                .filter(|k| k.public_key.len() == 32)
                .map(|k| hex(&k.public_key))
                .collect();
            by_node.insert(p.node_id.clone(), SavedPeer { node_id: p.node_id.clone(), addr, keys });
        }
    }
    by_node.into_values().collect()
}

fn to_tunnel_peers(saved: &SavedPeers) -> Vec<Peer> {
    saved
        .peers
        .iter()
        .map(|p| Peer {
            node_id: p.node_id.clone(),
            addr: p.addr,
            endpoint: SocketAddr::from((p.addr, TUNNEL_PORT)),
            keys: p.keys.iter().filter_map(|k| unhex(k)).collect(),
        })
        .collect()
}

impl DataPlane {
    fn crypt(&self) -> std::sync::MutexGuard<'_, Crypt> {
        self.crypt.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn keys_path(&self) -> PathBuf {
        self.cfg.state_dir.join("tunnel-keys")
    }

    fn peers_path(&self) -> PathBuf {
        self.cfg.state_dir.join("tunnel-peers.json")
    }

    fn tunnel_config(&self, local_addr: Ipv4Addr, vxlan_port: u16) -> TunnelConfig {
        TunnelConfig {
            device: format!("swg{}", self.cfg.tag),
            listen_port: TUNNEL_PORT,
            local_addr,
            vxlan_port,
            table: TABLE,
        }
    }

    /// The node's tunnel public keys (made on first use), for the managers.
    pub fn tunnel_keys(&self) -> Vec<TunnelKey> {
        let mut c = self.crypt();
        if c.keys.is_none() {
            match TunnelKeys::load_or_create(&self.keys_path()) {
                Ok(k) => c.keys = Some(k),
                Err(e) => {
                    tracing::warn!(error = %e, "no tunnel key: this node cannot join encrypted networks");
                    return Vec::new();
                }
            }
        }
        c.keys.as_ref().map(TunnelKeys::public).unwrap_or_default()
    }

    /// Replaces the tunnel key when it is `period` old; the tunnel takes the new one at once
    /// and keeps answering with the old one until the next rotation.
    pub fn rotate_tunnel_key(&self, period: Duration) {
        let mut c = self.crypt();
        let Some(keys) = c.keys.as_mut() else { return };
        match keys.rotate_if_due(period) {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!("tunnel key rotated");
                let secrets = keys.secrets();
                if let Some((t, _)) = &c.tunnel {
                    t.set_keys(secrets);
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not rotate the tunnel key"),
        }
    }

    /// Who this node is, from its session: its ID and its address (`host:port`).
    pub fn set_node(&self, id: &str, addr: &str) {
        let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
        let mut c = self.crypt();
        c.node_id = id.to_string();
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse() {
            c.node_addr = Some(ip);
        }
    }

    /// Starts the tunnel (if it is not running) before an encrypted network's VXLAN device
    /// exists, so that device never has a way out but the tunnel.
    pub(super) fn ensure_tunnel(&self, network: &Network) -> Result<(), NetError> {
        let mut c = self.crypt();
        if c.tunnel.is_some() {
            return Ok(());
        }
        let Some(local) = c.saved.as_ref().map(|s| s.local_addr).or(c.node_addr) else {
            return Err(NetError::Tunnel(
                "this node's data-plane address is not known yet (no session with a manager)"
                    .into(),
            ));
        };
        let cfg = self.tunnel_config(local, vxlan_port_of(network));
        self.start_tunnel(&mut c, cfg)?;
        let peers = c.saved.as_ref().map(to_tunnel_peers).unwrap_or_default();
        if let Some((t, _)) = &c.tunnel {
            t.set_peers(peers);
        }
        Ok(())
    }

    fn start_tunnel(&self, c: &mut Crypt, cfg: TunnelConfig) -> Result<(), NetError> {
        if c.keys.is_none() {
            c.keys = Some(
                TunnelKeys::load_or_create(&self.keys_path())
                    .map_err(|e| NetError::Tunnel(format!("the tunnel key: {e}")))?,
            );
        }
        let secrets = c.keys.as_ref().map(TunnelKeys::secrets).unwrap_or_default();
        let t = Tunnel::start(cfg.clone(), secrets).map_err(|e| NetError::Tunnel(e.to_string()))?;
        tracing::info!(device = %cfg.device, port = cfg.listen_port, "encrypted overlay tunnel up");
        c.tunnel = Some((t, cfg));
        Ok(())
    }

    /// After a restart: the tunnel comes back with the peers it had, before any manager
    /// answers (the running tasks' traffic needs nothing else).
    pub(super) fn resume_tunnel(&self) {
        let Ok(text) = std::fs::read_to_string(self.peers_path()) else { return };
        let saved: SavedPeers = match serde_json::from_str(&text) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "the saved tunnel peers do not parse; waiting for the managers");
                return;
            }
        };
        let mut c = self.crypt();
        let cfg = self.tunnel_config(saved.local_addr, saved.vxlan_port);
        match self.start_tunnel(&mut c, cfg) {
            Ok(()) => {
                if let Some((t, _)) = &c.tunnel {
                    t.set_peers(to_tunnel_peers(&saved));
                }
                tracing::info!(
                    peers = saved.peers.len(),
                    "tunnel peers restored from the last run"
                );
                c.saved = Some(saved);
            }
            Err(e) => tracing::warn!(error = %e, "could not bring the tunnel back"),
        }
    }

    /// Follows the maps: the tunnel's peers are the other nodes of the encrypted networks
    /// this node is on; with none left, the tunnel and its rules go.
    pub(super) fn sync_tunnel(&self) {
        let me = self.crypt().node_id.clone();
        let (peers, port, any) = {
            let inner = self.inner();
            let encrypted: Vec<&NetworkMap> = inner
                .maps
                .values()
                .filter(|m| m.network.as_ref().is_some_and(is_encrypted))
                .collect();
            let port = encrypted.first().and_then(|m| m.network.as_ref()).map(vxlan_port_of);
            let used = inner.sandboxes.values().any(|s| s.encrypted);
            (peers_of(encrypted.into_iter(), &me), port, used)
        };
        let mut c = self.crypt();
        let Some(port) = port else {
            if !any {
                if let Some((t, cfg)) = c.tunnel.take() {
                    t.stop();
                    tunnel::remove(&cfg);
                    tracing::info!("no encrypted network left: tunnel removed");
                }
                c.saved = None;
                let _ = std::fs::remove_file(self.peers_path());
            }
            return;
        };
        let Some(local_addr) = c.node_addr.or(c.saved.as_ref().map(|s| s.local_addr)) else {
            return;
        };
        let saved = SavedPeers { local_addr, vxlan_port: port, peers };
        if c.saved.as_ref() == Some(&saved) && c.tunnel.is_some() {
            return;
        }
        if c.tunnel.as_ref().is_some_and(|(_, cfg)| cfg.local_addr != local_addr) {
            // The node moved: the tunnel starts again from its new address.
            if let Some((t, _)) = c.tunnel.take() {
                t.stop();
            }
        }
        if c.tunnel.is_none() {
            if let Err(e) = self.start_tunnel(&mut c, self.tunnel_config(local_addr, port)) {
                tracing::warn!(error = %e, "could not start the encrypted overlay tunnel");
                return;
            }
        }
        if let Some((t, _)) = &c.tunnel {
            t.set_peers(to_tunnel_peers(&saved));
        }
        match serde_json::to_vec_pretty(&saved) {
            Ok(bytes) => {
                if let Err(e) = shoal_pki::files::write_atomic(&self.peers_path(), &bytes, 0o600) {
                    tracing::warn!(error = %e, "could not save the tunnel peers");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not save the tunnel peers"),
        }
        c.saved = Some(saved);
    }

    /// The tunnel's figures (`None` when the node has no encrypted network).
    pub fn tunnel_stats(&self) -> Option<tunnel::TunnelStats> {
        self.crypt().tunnel.as_ref().map(|(t, _)| t.stats())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{NetworkSpec, TunnelPeer};

    fn map(id: &str, encrypted: bool, peers: &[(&str, &str, u8)]) -> NetworkMap {
        NetworkMap {
            network: Some(Network {
                id: id.into(),
                spec: Some(NetworkSpec { encrypted, ..Default::default() }),
                ..Default::default()
            }),
            tunnel_peers: peers
                .iter()
                .map(|(n, a, k)| TunnelPeer {
                    node_id: n.to_string(),
                    addr: a.to_string(),
                    keys: vec![TunnelKey { public_key: vec![*k; 32], created_ms: 1 }],
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn peers_are_the_other_nodes_of_encrypted_networks_only() {
        let maps = [
            map("a", true, &[("me", "10.0.0.1", 1), ("n2", "10.0.0.2", 2)]),
            map("b", true, &[("n2", "10.0.0.2", 2), ("n3", "10.0.0.3", 3)]),
            // A plain network names no peers; if it did, they would not count.
            map("c", false, &[("n4", "10.0.0.4", 4)]),
        ];
        let peers = peers_of(maps.iter(), "me");
        let ids: Vec<&str> = peers.iter().map(|p| p.node_id.as_str()).collect();
        assert_eq!(ids, ["n2", "n3"]);
        let saved = SavedPeers { local_addr: Ipv4Addr::new(10, 0, 0, 1), vxlan_port: 4790, peers };
        let tp = to_tunnel_peers(&saved);
        assert_eq!(tp[1].keys, vec![[3u8; 32]]);
        assert_eq!(tp[1].endpoint, "10.0.0.3:51820".parse().unwrap());
        // What a restarted agent reads back is what was saved.
        let text = serde_json::to_string(&saved).unwrap();
        assert_eq!(serde_json::from_str::<SavedPeers>(&text).unwrap(), saved);
    }

    #[test]
    fn encrypted_networks_lose_the_tunnel_header_from_their_mtu_and_use_their_own_port() {
        let mut n = Network { data_port: 4789, ..Default::default() };
        assert_eq!((mtu_of(&n), vxlan_port_of(&n)), (1450, 4789));
        n.spec = Some(NetworkSpec { encrypted: true, ..Default::default() });
        assert_eq!(mtu_of(&n), 1390);
        assert_ne!(vxlan_port_of(&n), 4789);
        assert_eq!(unhex(&hex(&[0xab; 32])), Some([0xab; 32]));
        assert_eq!(unhex("zz"), None);
    }
}
