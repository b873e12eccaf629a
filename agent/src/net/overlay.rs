//! Overlay sandboxes: per network, a namespace holding a bridge and a VXLAN device whose
//! forwarding and neighbour tables follow the managers' maps (static entries, no learning).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use shoal_proto::Network;

use super::encrypted::{is_encrypted, mtu_of, vxlan_port_of};
use super::names::ip_of;
use super::{cmd, mac_of, DataPlane, NetError, Sandbox, NETNS_DIR};

impl DataPlane {
    /// The network's sandbox (bridge and VXLAN device), made if this node has none yet.
    pub(super) fn ensure_sandbox(&self, network: &Network) -> Result<String, NetError> {
        let sandbox = self.sandbox_netns(network.vni);
        if self.inner().sandboxes.contains_key(&network.id) {
            return Ok(sandbox);
        }
        let encrypted = is_encrypted(network);
        if encrypted {
            // The tunnel and its rules first: the VXLAN device never has another way out.
            self.ensure_tunnel(network)?;
        }
        if Path::new(NETNS_DIR).join(&sandbox).exists() {
            // Left by an earlier agent: adopted, its peers read back at the next map.
            self.inner().sandboxes.insert(
                network.id.clone(),
                Sandbox {
                    netns: sandbox.clone(),
                    vxlan: format!("vx{}", network.vni),
                    peers: BTreeMap::new(),
                    synced: false,
                    encrypted,
                },
            );
            return Ok(sandbox);
        }
        let vxlan = format!("vx{}", network.vni);
        let port = vxlan_port_of(network);
        let mtu = mtu_of(network);
        let made = (|| {
            cmd::ip(None, &[format!("netns add {sandbox}")])?;
            cmd::ip(
                Some(&sandbox),
                &[
                    "link set lo up".into(),
                    format!("link add br0 mtu {mtu} type bridge"),
                    "link set br0 up".into(),
                ],
            )?;
            let _ = cmd::ip(None, &[format!("link del {vxlan}")]);
            cmd::ip(
                None,
                &[
                    format!(
                        "link add {vxlan} mtu {mtu} type vxlan id {} dstport {port} proxy nolearning",
                        network.vni
                    ),
                    format!("link set {vxlan} netns {sandbox}"),
                ],
            )?;
            cmd::ip(
                Some(&sandbox),
                &[format!("link set {vxlan} master br0"), format!("link set {vxlan} up")],
            )
        })();
        if let Err(e) = made {
            let _ = cmd::ip(None, &[format!("netns del {sandbox}")]);
            let _ = cmd::ip(None, &[format!("link del {vxlan}")]);
            if e.to_string().contains("VNI already exists") {
                return Err(NetError::Tool {
                    tool: "ip".into(),
                    message: format!(
                        "VXLAN {} on UDP port {port} is already used by another overlay on this host \
                         (Docker Swarm uses 4789 too): give the swarm another data port \
                         (swarm init --data-path-port)",
                        network.vni
                    ),
                });
            }
            return Err(e);
        }
        tracing::info!(network = %network.id, vni = network.vni, "overlay sandbox created");
        self.inner().sandboxes.insert(
            network.id.clone(),
            Sandbox {
                netns: sandbox.clone(),
                vxlan,
                peers: BTreeMap::new(),
                synced: true,
                encrypted,
            },
        );
        // Peers already known go in now.
        self.sync_peers(&network.id)?;
        Ok(sandbox)
    }

    /// Brings the sandbox of network `id` in line with its map: one forwarding and one
    /// neighbour entry per task on another node, none for tasks gone.
    pub(super) fn sync_peers(&self, id: &str) -> Result<(), NetError> {
        let (netns, vxlan, have, synced, want) = {
            let inner = self.inner();
            let Some(s) = inner.sandboxes.get(id) else { return Ok(()) };
            let local: BTreeSet<&String> = inner.tasks.keys().collect();
            let want: BTreeMap<Ipv4Addr, Ipv4Addr> = inner
                .maps
                .get(id)
                .map(|m| {
                    m.endpoints
                        .iter()
                        .filter(|e| !local.contains(&e.task_id))
                        // This node's own leg on the ingress network.
                        .filter(|e| m.local_addr.is_empty() || e.addr != m.local_addr)
                        .filter_map(|e| Some((ip_of(&e.addr)?, e.node_addr.parse().ok()?)))
                        .collect()
                })
                .unwrap_or_default();
            (s.netns.clone(), s.vxlan.clone(), s.peers.clone(), s.synced, want)
        };
        let have = if synced { have } else { read_peers(&netns, &vxlan) };
        let mut fdb = Vec::new();
        let mut neigh = Vec::new();
        for (ip, node) in &have {
            if want.get(ip) != Some(node) {
                fdb.push(format!("fdb del {} dev {vxlan} dst {node} self", mac_of(*ip)));
                if !want.contains_key(ip) {
                    neigh.push(format!("neigh del {ip} dev {vxlan}"));
                }
            }
        }
        for (ip, node) in &want {
            if have.get(ip) != Some(node) {
                fdb.push(format!(
                    "fdb append {} dev {vxlan} dst {node} self permanent",
                    mac_of(*ip)
                ));
                neigh.push(format!(
                    "neigh replace {ip} lladdr {} dev {vxlan} nud permanent",
                    mac_of(*ip)
                ));
            }
        }
        // Deletions of entries already gone fail harmlessly; each line is tried on its own.
        for line in &fdb {
            if let Err(e) = cmd::bridge(&netns, std::slice::from_ref(line)) {
                if line.starts_with("fdb append") {
                    return Err(e);
                }
            }
        }
        for line in &neigh {
            if let Err(e) = cmd::ip(Some(&netns), std::slice::from_ref(line)) {
                if line.starts_with("neigh replace") {
                    return Err(e);
                }
            }
        }
        if let Some(s) = self.inner().sandboxes.get_mut(id) {
            s.peers = want;
            s.synced = true;
        }
        Ok(())
    }
}

/// The remote peers a sandbox's VXLAN device holds (an earlier agent's entries).
pub(super) fn read_peers(netns: &str, vxlan: &str) -> BTreeMap<Ipv4Addr, Ipv4Addr> {
    let out = cmd::bridge_out(netns, &["fdb", "show", "dev", vxlan]).unwrap_or_default();
    let mut peers = BTreeMap::new();
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (Some(mac), Some(i)) = (words.first(), words.iter().position(|w| *w == "dst")) else {
            continue;
        };
        let Some(node) = words.get(i + 1).and_then(|d| d.parse().ok()) else { continue };
        let b: Vec<u8> = mac.split(':').filter_map(|x| u8::from_str_radix(x, 16).ok()).collect();
        if b.len() == 6 && b[0] == 0x02 && b[1] == 0x42 {
            peers.insert(Ipv4Addr::new(b[2], b[3], b[4], b[5]), node);
        }
    }
    peers
}
