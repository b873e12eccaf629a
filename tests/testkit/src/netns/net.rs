//! The network fixture: a bridge and hosts in network namespaces.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use super::process::{have, must, quiet};
use super::PORT;

/// A bridge and `count` hosts: network namespaces, each with a veth pair on the bridge, the
/// address 10.O.N.i/24 on its `eth0` (O and N chosen by the test), and `lo` up. One host at a
/// time or several can be cut off the bridge ([`Net::partition`]) and put back ([`Net::heal`]).
/// Dropping it heals every partition and tears everything down.
#[derive(Debug)]
pub struct Net {
    /// Tells the interfaces and namespaces of different test files apart.
    tag: String,
    /// The second octet of every address.
    octet: u8,
    pub subnet: u8,
    count: usize,
    bridge: String,
    iptables: bool,
    /// Hosts whose bridge port is down (see [`Net::partition`]).
    cut: Mutex<BTreeSet<usize>>,
}

impl Net {
    /// `count` hosts on 10.251.`subnet`.0/24, named `shoal-t<subnet>-n<i>`.
    pub fn new(subnet: u8, count: usize) -> Net {
        Net::with("t", 251, subnet, count)
    }

    /// `count` hosts on 10.`octet`.`subnet`.0/24; `tag` (one or two lowercase letters) keeps
    /// their interface and namespace names apart from other test files' (`shoal-<tag><subnet>-
    /// n<i>`, veths `sh<tag><subnet>n<i>`, bridge `sh<tag>br<subnet>`).
    pub fn with(tag: &str, octet: u8, subnet: u8, count: usize) -> Net {
        assert!(tag.len() <= 2 && count <= 99, "interface names are limited to 15 characters");
        let iptables = have("iptables");
        let net = Net {
            tag: tag.to_string(),
            octet,
            subnet,
            count,
            bridge: format!("sh{tag}br{subnet}"),
            iptables,
            cut: Mutex::new(BTreeSet::new()),
        };
        net.teardown(); // leftovers of an earlier run that died
        let br = net.bridge.as_str();
        must("ip", &["link", "add", br, "type", "bridge"]);
        must("ip", &["link", "set", br, "up"]);
        if net.iptables {
            // Where Docker runs, FORWARD's policy is DROP and bridged traffic goes through it.
            must("iptables", &["-I", "FORWARD", "-i", br, "-o", br, "-j", "ACCEPT"]);
        }
        for i in 1..=count {
            let ns = net.ns(i);
            let host_end = net.veth(i);
            let peer = format!("{host_end}p");
            must("ip", &["netns", "add", &ns]);
            must("ip", &["link", "add", &host_end, "type", "veth", "peer", "name", &peer]);
            must("ip", &["link", "set", &peer, "netns", &ns]);
            must("ip", &["link", "set", &host_end, "master", br]);
            must("ip", &["link", "set", &host_end, "up"]);
            must("ip", &["-n", &ns, "link", "set", &peer, "name", "eth0"]);
            must("ip", &["-n", &ns, "addr", "add", &format!("{}/24", net.ip(i)), "dev", "eth0"]);
            must("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
            must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    /// How many hosts there are (numbered from 1).
    pub fn count(&self) -> usize {
        self.count
    }

    pub fn ns(&self, i: usize) -> String {
        format!("shoal-{}{}-n{i}", self.tag, self.subnet)
    }

    /// The host end of host `i`'s veth pair (the one on the bridge).
    pub fn veth(&self, i: usize) -> String {
        format!("sh{}{}n{i}", self.tag, self.subnet)
    }

    pub fn ip(&self, i: usize) -> String {
        format!("10.{}.{}.{i}", self.octet, self.subnet)
    }

    /// Gives this machine's own namespace an address on the hosts' LAN (`.254`, on the bridge,
    /// gone with it) and returns it: a place outside every host, for servers the tests run.
    pub fn outside_ip(&self) -> String {
        let ip = self.ip(254);
        // Fails harmlessly when an earlier call added it.
        quiet("ip", &["addr", "add", &format!("{ip}/24"), "dev", &self.bridge]);
        ip
    }

    /// The hosts' /24, for messages.
    pub fn cidr(&self) -> String {
        format!("10.{}.{}.0/24", self.octet, self.subnet)
    }

    pub fn addr(&self, i: usize) -> String {
        format!("{}:{PORT}", self.ip(i))
    }

    /// Cuts host `i` off from all the others: its port on the bridge goes down, so nothing it
    /// sends reaches anyone and nothing reaches it (no reset, no error: silence, as when a
    /// cable is pulled). Its processes keep running and its unix sockets keep answering.
    pub fn partition(&self, i: usize) {
        assert!((1..=self.count).contains(&i), "no host {i}");
        self.cut.lock().unwrap().insert(i);
        must("ip", &["link", "set", &self.veth(i), "down"]);
    }

    /// Gives host `i` the address `ip` instead of the one it has (as when DHCP hands a host a
    /// new lease or a VM moves): the old address goes away, so nothing reaches it there.
    pub fn move_host(&self, i: usize, from: &str, ip: &str) {
        assert!((1..=self.count).contains(&i), "no host {i}");
        let ns = self.ns(i);
        must("ip", &["-n", &ns, "addr", "del", &format!("{from}/24"), "dev", "eth0"]);
        must("ip", &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    }

    /// An address on the hosts' /24 that no host has at first (host `i` moved).
    pub fn moved_ip(&self, i: usize) -> String {
        format!("10.{}.{}.{}", self.octet, self.subnet, 100 + i)
    }

    /// Undoes [`Net::partition`] for host `i`.
    pub fn heal(&self, i: usize) {
        must("ip", &["link", "set", &self.veth(i), "up"]);
        self.cut.lock().unwrap().remove(&i);
    }

    /// Heals every partitioned host, ignoring errors.
    pub fn heal_all(&self) {
        let cut = std::mem::take(&mut *self.cut.lock().unwrap_or_else(|p| p.into_inner()));
        for i in cut {
            quiet("ip", &["link", "set", &self.veth(i), "up"]);
        }
    }

    /// Removes everything this fixture creates, ignoring errors (so it also cleans up after a
    /// run that died half-way).
    pub fn teardown(&self) {
        self.heal_all();
        for i in 1..=self.count {
            let ns = self.ns(i);
            if Path::new("/run/netns").join(&ns).exists() {
                // Whatever still runs in our namespace is a shoald (or shoal) this test started.
                if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                        quiet("kill", &["-9", pid]);
                    }
                }
                quiet("ip", &["netns", "del", &ns]);
            }
            quiet("ip", &["link", "del", &self.veth(i)]);
        }
        quiet("ip", &["link", "del", &self.bridge]);
        if self.iptables {
            let br = self.bridge.as_str();
            while quiet("iptables", &["-D", "FORWARD", "-i", br, "-o", br, "-j", "ACCEPT"]) {}
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.heal_all();
        self.teardown();
    }
}
