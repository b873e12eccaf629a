//! Published ports on a node: an nftables table in the node's own namespace that sends
//! connections to a published port on any of the node's addresses on to a task.
//! - ingress mode (the routing mesh): to a ready task of the service anywhere in the cluster,
//!   at its address on the ingress network, out of the node's leg on that network; what
//!   leaves the leg is masqueraded to the node's ingress address so replies come back here.
//! - host mode: straight to the node's own task, at its address on the gateway bridge.
//!
//! Connections from the node itself (to its own addresses, loopback included) are sent on
//! the same way.

use std::fmt::Write;
use std::net::Ipv4Addr;

/// The node's table for published ports.
pub const TABLE: &str = "shoal-mesh";

/// One published port and where its connections go.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Forward {
    /// `tcp` or `udp`.
    pub protocol: String,
    pub published: u32,
    pub target: u32,
    /// Addresses to spread connections over (none: the port is refused).
    pub backends: Vec<Ipv4Addr>,
}

/// The whole table, replacing any earlier one in one transaction; `leg` is the node's
/// interface on the ingress network, if it has one. With nothing to do, the table is removed.
pub fn ruleset(leg: Option<&str>, forwards: &[Forward]) -> String {
    let mut out = String::new();
    // Create-then-delete makes the deletion safe on the first run; the rest is atomic.
    let _ = writeln!(out, "table ip {TABLE}\ndelete table ip {TABLE}");
    if leg.is_none() && forwards.is_empty() {
        return out;
    }
    let mut dnat = String::new();
    let mut refuse = String::new();
    for f in forwards {
        let (proto, port) = (&f.protocol, f.published);
        let matched = format!("{proto} dport {port} fib daddr type local");
        match f.backends.as_slice() {
            [] => {
                let how = if proto == "tcp" { "reject with tcp reset" } else { "reject" };
                let _ = writeln!(refuse, "    {matched} {how}");
            }
            [one] => {
                let _ = writeln!(dnat, "    {matched} dnat to {one}:{}", f.target);
            }
            many => {
                let entries: Vec<String> =
                    many.iter().enumerate().map(|(i, b)| format!("{i} : {b}")).collect();
                let _ = writeln!(
                    dnat,
                    "    {matched} dnat to numgen random mod {} map {{ {} }}:{}",
                    many.len(),
                    entries.join(", "),
                    f.target
                );
            }
        }
    }
    let _ = writeln!(out, "table ip {TABLE} {{");
    for (chain, hook) in [("pre", "prerouting"), ("out", "output")] {
        let _ = writeln!(
            out,
            "  chain {chain} {{\n    type nat hook {hook} priority -100; policy accept;\n{dnat}  }}"
        );
    }
    for (chain, hook) in [("pre_refuse", "prerouting"), ("out_refuse", "output")] {
        let _ = writeln!(
            out,
            "  chain {chain} {{\n    type filter hook {hook} priority -150; policy accept;\n{refuse}  }}"
        );
    }
    let _ = writeln!(
        out,
        "  chain post {{\n    type nat hook postrouting priority 100; policy accept;"
    );
    if let Some(leg) = leg {
        let _ = writeln!(out, "    oifname \"{leg}\" masquerade");
    }
    let _ = writeln!(out, "  }}\n}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(protocol: &str, published: u32, target: u32, backends: &[&str]) -> Forward {
        Forward {
            protocol: protocol.into(),
            published,
            target,
            backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn published_ports_spread_over_their_backends_and_refuse_without_one() {
        let r = ruleset(
            Some("ig0"),
            &[
                fwd("tcp", 8080, 80, &["10.255.0.5", "10.255.0.6"]),
                fwd("udp", 5353, 53, &["172.31.0.4"]),
                fwd("tcp", 9000, 90, &[]),
            ],
        );
        assert!(
            r.contains(
                "tcp dport 8080 fib daddr type local dnat to numgen random mod 2 \
                 map { 0 : 10.255.0.5, 1 : 10.255.0.6 }:80"
            ),
            "{r}"
        );
        assert!(r.contains("udp dport 5353 fib daddr type local dnat to 172.31.0.4:53"), "{r}");
        assert!(r.contains("tcp dport 9000 fib daddr type local reject with tcp reset"), "{r}");
        assert!(r.contains("oifname \"ig0\" masquerade"), "{r}");
        // Both the traffic arriving and the node's own connections.
        assert_eq!(r.matches("dport 8080").count(), 2, "{r}");
    }

    #[test]
    fn nothing_published_and_no_leg_removes_the_table() {
        let r = ruleset(None, &[]);
        assert_eq!(r, format!("table ip {TABLE}\ndelete table ip {TABLE}\n"));
    }
}
