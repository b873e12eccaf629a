//! The node's gateway bridge: outbound NAT for tasks, their addresses on it (leases kept in a
//! file across agent restarts), and the FORWARD rules that let its traffic through where
//! Docker set the policy to DROP.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use super::{cmd, DataPlane, NetError, GW_BRIDGE};

impl DataPlane {
    pub(super) fn gateway_ip(&self) -> Ipv4Addr {
        self.cfg.gw_subnet.hosts().next().unwrap_or(self.cfg.gw_subnet.network())
    }

    /// The gateway bridge with its address and outbound NAT (idempotent; set up once per
    /// agent, again after a task's leg could not join it).
    pub(super) fn ensure_gateway(&self) -> Result<(), NetError> {
        let subnet = self.cfg.gw_subnet;
        if self.inner().gateway_ready {
            return Ok(());
        }
        // Asked of the node's namespace (/sys may be another namespace's mount).
        let exists = cmd::ip_out(None, &["link", "show", GW_BRIDGE]).is_ok();
        if !exists {
            cmd::ip(
                None,
                &[
                    format!("link add {GW_BRIDGE} type bridge"),
                    format!(
                        "addr add {}/{} dev {GW_BRIDGE}",
                        self.gateway_ip(),
                        subnet.prefix_len()
                    ),
                    format!("link set {GW_BRIDGE} up"),
                ],
            )?;
        }
        let forward = "/proc/sys/net/ipv4/ip_forward";
        std::fs::write(forward, "1")
            .map_err(|source| NetError::Io { path: forward.into(), source })?;
        let nat = format!(
            "table ip shoal-gw\ndelete table ip shoal-gw\ntable ip shoal-gw {{\n  chain post {{\n    \
             type nat hook postrouting priority 100; policy accept;\n    \
             ip saddr {subnet} oifname != \"{GW_BRIDGE}\" masquerade\n  }}\n}}\n"
        );
        cmd::nft(None, &nat)?;
        // Where Docker runs, FORWARD drops what it does not know: let the bridge's traffic out,
        // its replies back in, and connections to ports published in host mode through.
        accept_forward(&[
            &["-i", GW_BRIDGE, "!", "-o", GW_BRIDGE, "-j", "ACCEPT"],
            &[
                "-o",
                GW_BRIDGE,
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED",
                "-j",
                "ACCEPT",
            ],
            &["-o", GW_BRIDGE, "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT"],
        ]);
        self.inner().gateway_ready = true;
        Ok(())
    }

    /// The task's address on the gateway bridge (kept across agent restarts).
    pub(super) fn lease(&self, task_id: &str) -> Result<Ipv4Addr, NetError> {
        let mut inner = self.inner();
        if let Some(ip) = inner.leases.get(task_id) {
            return Ok(*ip);
        }
        let taken: BTreeSet<Ipv4Addr> = inner.leases.values().copied().collect();
        let gw = self.gateway_ip();
        let ip = self
            .cfg
            .gw_subnet
            .hosts()
            .find(|ip| *ip != gw && !taken.contains(ip))
            .ok_or(NetError::GatewayFull)?;
        inner.leases.insert(task_id.to_string(), ip);
        write_leases(&self.cfg.state_dir, &inner.leases)?;
        Ok(ip)
    }
}

/// Puts ACCEPT rules at the head of iptables' FORWARD chain, each once: where Docker runs,
/// its policy drops what it does not know.
pub(super) fn accept_forward(rules: &[&[&str]]) {
    if !cmd::have_iptables() {
        return;
    }
    for rule in rules {
        let mut check = vec!["-C", "FORWARD"];
        check.extend_from_slice(rule);
        if cmd::iptables(&check).is_err() {
            let mut insert = vec!["-I", "FORWARD"];
            insert.extend_from_slice(rule);
            let _ = cmd::iptables(&insert);
        }
    }
}

pub(super) fn read_leases(path: &Path) -> BTreeMap<String, Ipv4Addr> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (task, ip) = l.split_once(' ')?;
            Some((task.to_string(), ip.parse().ok()?))
        })
        .collect()
}

/// Writes the gateway leases atomically (a temporary file renamed over the old one).
pub(super) fn write_leases(
    dir: &Path,
    leases: &BTreeMap<String, Ipv4Addr>,
) -> Result<(), NetError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| NetError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let text: String = leases.iter().map(|(t, ip)| format!("{t} {ip}\n")).collect();
    let tmp = dir.join("gw-leases.tmp");
    std::fs::write(&tmp, text).map_err(io(&tmp))?;
    std::fs::rename(&tmp, dir.join("gw-leases")).map_err(io(dir))
}
