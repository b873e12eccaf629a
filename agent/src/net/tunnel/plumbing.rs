//! The routing and filtering around the TUN device, set with `ip` and `nft` (in the calling
//! thread's network namespace: the tools are forked from it).
//!
//! Encrypted VXLAN (UDP to the VXLAN port) is routed by a policy rule into its own table,
//! whose default route is the device. Three layers keep it from leaving in the clear: a
//! black-hole default route in that table (it takes over when the device, and with it its
//! route, is gone), a black-hole rule right after the table's (should the table be flushed),
//! and an nftables table that drops the port on every other interface, both ways.

use std::path::PathBuf;

use super::super::{cmd, NetError};
use super::{TunnelConfig, RULE_PREF, TUNNEL_MTU};

/// The nftables table guarding the encrypted VXLAN port.
pub(super) const NFT_TABLE: &str = "shoal-tunnel";
/// Packets the device queues for the sealing thread. The kernel splits a 64 KiB GSO burst of
/// the VXLAN device into ~45 packets at once, and the device drops what does not fit (it
/// never pushes back): at the default 500, a busy moment cost TCP 4% of its packets.
const TX_QUEUE: u32 = 2000;
/// Metric of the black-hole default route (the device's route has metric 0).
const BLACKHOLE_METRIC: u32 = 4096;

/// The nftables table: the VXLAN port only through the device, and nothing else through it.
pub(super) fn ruleset(cfg: &TunnelConfig) -> String {
    let (dev, port) = (&cfg.device, cfg.vxlan_port);
    format!(
        "table inet {NFT_TABLE}
delete table inet {NFT_TABLE}
table inet {NFT_TABLE} {{
  chain input {{
    type filter hook input priority -10; policy accept;
    iifname != \"{dev}\" udp dport {port} counter drop
    iifname \"{dev}\" udp dport != {port} counter drop
    iifname \"{dev}\" meta l4proto != udp counter drop
  }}
  chain forward {{
    type filter hook forward priority -10; policy accept;
    iifname \"{dev}\" counter drop
    oifname \"{dev}\" counter drop
  }}
  chain postrouting {{
    type filter hook postrouting priority 100; policy accept;
    oifname != \"{dev}\" udp dport {port} counter drop
    oifname \"{dev}\" udp dport != {port} counter drop
    oifname \"{dev}\" meta l4proto != udp counter drop
  }}
}}
"
    )
}

/// Everything that keeps encrypted VXLAN from leaving in the clear, set before the device
/// exists: the nftables table, the black-hole route, the rules.
pub(super) fn install_guards(cfg: &TunnelConfig) -> Result<(), NetError> {
    cmd::nft(None, &ruleset(cfg))?;
    let table = cfg.table;
    cmd::ip(
        None,
        &[format!("route replace blackhole default metric {BLACKHOLE_METRIC} table {table}")],
    )?;
    let selector = format!("ipproto udp dport {}", cfg.vxlan_port);
    // The black-hole rule first: while the table's rule is replaced, it catches.
    replace_rule(RULE_PREF + 1, &format!("{selector} blackhole"))?;
    replace_rule(RULE_PREF, &format!("{selector} table {table}"))?;
    // The reverse-path check of a decrypted packet looks its source up with the ports
    // swapped: from the VXLAN port. Routed by the table too, that lookup finds the device the
    // packet came in on, so even strict mode (rp_filter=1) passes it. Nothing sends from the
    // VXLAN port (VXLAN picks source ports from the ephemeral range).
    replace_rule(RULE_PREF - 1, &format!("ipproto udp sport {} table {table}", cfg.vxlan_port))
}

/// Brings the device up and routes encrypted VXLAN through it.
pub(super) fn route_through_device(cfg: &TunnelConfig) -> Result<(), NetError> {
    let dev = &cfg.device;
    // Decrypted packets come from peers' underlay addresses, which the main table routes
    // elsewhere: the reverse-path check must be loose on the device (max(all, dev) applies),
    // and loose mode still refuses every packet arriving on a device without an address.
    // So the device gets this node's address too (as a /32 of global scope: a host-scoped
    // one does not pass the check); the kernel then has it twice, which routes nothing new.
    write_sysctl(&format!("net/ipv4/conf/{dev}/rp_filter"), "2")?;
    // No IPv6 link-local chatter into the tunnel (absent when IPv6 is off).
    let _ = write_sysctl(&format!("net/ipv6/conf/{dev}/disable_ipv6"), "1");
    cmd::ip(
        None,
        &[
            format!("link set dev {dev} mtu {TUNNEL_MTU} txqueuelen {TX_QUEUE} up"),
            format!("addr replace {}/32 dev {dev}", cfg.local_addr),
            format!("route replace default dev {dev} src {} table {}", cfg.local_addr, cfg.table),
        ],
    )
}

/// Removes the rules, the table's routes, the nftables table and the device.
pub(super) fn remove(cfg: &TunnelConfig) {
    delete_rules(RULE_PREF - 1);
    delete_rules(RULE_PREF);
    delete_rules(RULE_PREF + 1);
    let steps = [
        cmd::ip(None, &[format!("route flush table {}", cfg.table)]),
        cmd::nft(None, &format!("table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n")),
    ];
    for e in steps.into_iter().filter_map(Result::err) {
        tracing::warn!(error = %e, "removing the tunnel's routing and filtering");
    }
    if cmd::ip_out(None, &["link", "show", "dev", &cfg.device]).is_ok() {
        if let Err(e) = cmd::ip(None, &[format!("link del dev {}", cfg.device)]) {
            tracing::warn!(error = %e, "removing the tunnel's device");
        }
    }
}

/// Makes `selector` the only rule at `pref`.
fn replace_rule(pref: u32, selector: &str) -> Result<(), NetError> {
    delete_rules(pref);
    cmd::ip(None, &[format!("rule add pref {pref} {selector}")])
}

/// Deletes every rule at `pref` (one per `ip rule del`, until none is left).
fn delete_rules(pref: u32) {
    for _ in 0..32 {
        if cmd::ip(None, &[format!("rule del pref {pref}")]).is_err() {
            return;
        }
    }
}

/// Writes `value` to /proc/sys/`key` (of the calling thread's network namespace).
fn write_sysctl(key: &str, value: &str) -> Result<(), NetError> {
    let path = PathBuf::from("/proc/sys").join(key);
    std::fs::write(&path, value).map_err(|source| NetError::Io { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn the_port_passes_only_through_the_device() {
        let cfg = TunnelConfig {
            device: "shtun0".into(),
            listen_port: 51820,
            local_addr: Ipv4Addr::new(10, 0, 0, 1),
            vxlan_port: 4790,
            table: 4790,
        };
        let r = ruleset(&cfg);
        assert!(r.starts_with("table inet shoal-tunnel\ndelete table inet shoal-tunnel\n"), "{r}");
        assert!(r.contains("iifname != \"shtun0\" udp dport 4790 counter drop"), "{r}");
        assert!(r.contains("oifname != \"shtun0\" udp dport 4790 counter drop"), "{r}");
        assert!(r.contains("oifname \"shtun0\" counter drop"), "{r}");
    }
}
