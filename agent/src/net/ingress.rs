//! The routing mesh on a node: its leg on the ingress network (a veth from the node's
//! namespace onto that network's bridge, with the node's address there) and the table that
//! forwards published ports (`mesh`).

use super::gateway::accept_forward;
use super::names::{self, ip_of};
use super::{cmd, is_ingress, mac_of, mesh, short, DataPlane, Ingress, NetError, OVERLAY_MTU};

impl DataPlane {
    /// Brings the node's leg on the ingress network in line with the maps: made when the
    /// managers give this node an address there (kept if an earlier agent made it), removed
    /// with the network. Call with the plumbing lock held.
    pub(super) fn sync_ingress(&self) -> Result<(), NetError> {
        let (want, have) = {
            let inner = self.inner();
            let want = inner
                .maps
                .values()
                .find(|m| is_ingress(m) && !m.local_addr.is_empty())
                .and_then(|m| Some((m.network.clone()?, m.local_addr.clone())));
            (want, inner.ingress.clone())
        };
        let leg = format!("ig{}", short(&[&self.cfg.tag]));
        if let Some(h) = &have {
            let same = want.as_ref().is_some_and(|(n, a)| n.id == h.network_id && *a == h.addr);
            if same {
                return Ok(());
            }
            self.remove_ingress_leg(h);
        }
        let Some((network, addr)) = want else { return Ok(()) };
        let bad = |why: &str| NetError::Attachment { task: "ingress".into(), why: why.into() };
        let ip = ip_of(&addr).ok_or_else(|| bad("the node's address does not parse"))?;
        let sandbox = self.ensure_sandbox(&network)?;
        let existing = cmd::ip_out(None, &["-o", "addr", "show", "dev", &leg]).unwrap_or_default();
        if !existing.contains(&format!("inet {addr} ")) {
            let _ = cmd::ip(None, &[format!("link del {leg}")]);
            cmd::ip(
                None,
                &[format!(
                    "link add {leg} mtu {OVERLAY_MTU} type veth peer name node netns {sandbox}"
                )],
            )?;
            cmd::ip(
                Some(&sandbox),
                &["link set node master br0".to_string(), "link set node up".to_string()],
            )?;
            cmd::ip(
                None,
                &[
                    format!("link set {leg} address {}", mac_of(ip)),
                    format!("addr add {addr} dev {leg}"),
                    format!("link set {leg} up"),
                ],
            )?;
            tracing::info!(network = %network.id, addr = %addr, "joined the routing mesh");
        }
        // Forwarded to other nodes; the node's own connections to 127.0.0.1 too.
        for (path, value) in [
            ("/proc/sys/net/ipv4/ip_forward".to_string(), "1"),
            (format!("/proc/sys/net/ipv4/conf/{leg}/route_localnet"), "1"),
        ] {
            std::fs::write(&path, value)
                .map_err(|source| NetError::Io { path: path.into(), source })?;
        }
        accept_forward(&[
            &["-o", &leg, "-j", "ACCEPT"],
            &["-i", &leg, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"],
        ]);
        self.inner().ingress = Some(Ingress { network_id: network.id.clone(), addr, leg });
        Ok(())
    }

    /// Removes the node's leg on the ingress network, and its sandbox if no task uses it.
    pub(super) fn remove_ingress_leg(&self, h: &Ingress) {
        let _ = cmd::ip(None, &[format!("link del {}", h.leg)]);
        for rule in [
            &["-o", h.leg.as_str(), "-j", "ACCEPT"][..],
            &["-i", &h.leg, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"],
        ] {
            let mut delete = vec!["-D", "FORWARD"];
            delete.extend_from_slice(rule);
            let _ = cmd::iptables(&delete);
        }
        let sandbox = {
            let mut inner = self.inner();
            inner.ingress = None;
            let used = inner.tasks.values().any(|t| t.networks.contains(&h.network_id));
            if used {
                None
            } else {
                inner.sandboxes.remove(&h.network_id)
            }
        };
        if let Some(s) = sandbox {
            let _ = cmd::ip(None, &[format!("netns del {}", s.netns)]);
        }
        tracing::info!(network = %h.network_id, "left the routing mesh");
    }

    /// Rewrites the node's published-ports table if where its ports lead changed.
    pub(super) fn program_mesh(&self) -> Result<(), NetError> {
        let _one_at_a_time = self.mesh_lock.lock().unwrap_or_else(|p| p.into_inner());
        let ruleset = {
            let inner = self.inner();
            let mut forwards = Vec::new();
            let ingress = inner.ingress.as_ref();
            if let Some(m) = ingress.and_then(|i| inner.maps.get(&i.network_id)) {
                for s in &m.services {
                    let backends = names::ready_addrs(m, &s.id);
                    for p in s.ports.iter().filter(|p| p.publish_mode != "host") {
                        forwards.push(mesh::Forward {
                            protocol: p.protocol.clone(),
                            published: p.published_port,
                            target: p.target_port,
                            backends: backends.clone(),
                        });
                    }
                }
            }
            for t in inner.tasks.values() {
                let Some(gw) = t.gw else { continue };
                for p in &t.host_ports {
                    forwards.push(mesh::Forward {
                        protocol: p.protocol.clone(),
                        published: p.published_port,
                        target: p.target_port,
                        backends: vec![gw],
                    });
                }
            }
            forwards.sort();
            let ruleset = mesh::ruleset(ingress.map(|i| i.leg.as_str()), &forwards);
            if ruleset == inner.mesh {
                return Ok(());
            }
            ruleset
        };
        cmd::nft(None, &ruleset)?;
        self.inner().mesh = ruleset;
        Ok(())
    }
}
