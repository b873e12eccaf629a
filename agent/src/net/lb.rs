//! The load balancer of one task: an nftables table in the task's own network namespace
//! that rewrites each connection to a virtual IP to one of the service's ready tasks (chosen
//! at random per connection; conntrack keeps the choice for the connection's life), and
//! refuses connections to a virtual IP with no ready task at once. No IPVS needed.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::Ipv4Addr;

/// The table every task's balancer lives in.
pub const TABLE: &str = "shoal";

/// The whole table for these virtual IPs, replacing any earlier one in one transaction.
pub fn ruleset(vips: &BTreeMap<Ipv4Addr, Vec<Ipv4Addr>>) -> String {
    let mut out = String::new();
    // Create-then-delete makes the deletion safe on the first run; the rest is atomic.
    let _ = writeln!(out, "table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{");
    let _ = writeln!(out, "  chain vip {{\n    type nat hook output priority -100; policy accept;");
    for (vip, backends) in vips.iter().filter(|(_, b)| !b.is_empty()) {
        let _ =
            write!(out, "    ip daddr {vip} dnat to numgen random mod {} map {{ ", backends.len());
        let entries: Vec<String> =
            backends.iter().enumerate().map(|(i, b)| format!("{i} : {b}")).collect();
        let _ = writeln!(out, "{} }}", entries.join(", "));
    }
    let _ = writeln!(out, "  }}");
    let _ =
        writeln!(out, "  chain empty {{\n    type filter hook output priority 0; policy accept;");
    for vip in vips.iter().filter(|(_, b)| b.is_empty()).map(|(v, _)| v) {
        let _ = writeln!(out, "    ip daddr {vip} reject");
    }
    let _ = writeln!(out, "  }}\n}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_virtual_ip_maps_to_its_ready_tasks() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let mut vips = BTreeMap::new();
        vips.insert(ip("10.0.1.2"), vec![ip("10.0.1.3"), ip("10.0.1.4")]);
        vips.insert(ip("10.0.1.9"), vec![]);
        let r = ruleset(&vips);
        assert!(
            r.contains(
                "ip daddr 10.0.1.2 dnat to numgen random mod 2 map { 0 : 10.0.1.3, 1 : 10.0.1.4 }"
            ),
            "{r}"
        );
        assert!(r.contains("ip daddr 10.0.1.9 reject"), "{r}");
        assert!(!r.contains("10.0.1.9 dnat"), "{r}");
    }
}
