//! Address management as pure functions: the next free block of the cluster's pool for a
//! network, a network's gateway, the next free host address, the next free VXLAN network
//! identifier. The store (see `alloc`) makes the choices stick; nothing here does IO.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The first VXLAN network identifier handed out (Docker's overlay starts there too).
pub const FIRST_VNI: u32 = 4096;
/// The largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// The first block of `size` bits in `pools` that overlaps none of `taken`.
pub fn next_subnet(pools: &[Ipv4Net], size: u8, taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    pools
        .iter()
        .filter_map(|pool| pool.subnets(size).ok())
        .flatten()
        .find(|block| !taken.iter().any(|t| overlaps(t, block)))
}

/// Whether two networks share an address.
pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(b) || b.contains(a)
}

/// The gateway of a subnet that names none: its first host address.
pub fn default_gateway(subnet: Ipv4Net) -> Ipv4Addr {
    subnet.hosts().next().unwrap_or(subnet.network())
}

/// The lowest host address of `subnet` that is neither the gateway nor in `taken`.
pub fn next_host(
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    taken: &BTreeSet<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    subnet.hosts().find(|ip| *ip != gateway && !taken.contains(ip))
}

/// The lowest VXLAN network identifier not in `taken`.
pub fn next_vni(taken: &BTreeSet<u32>) -> Option<u32> {
    (FIRST_VNI..=MAX_VNI).find(|v| !taken.contains(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn subnets_come_from_the_pool_in_order_around_what_is_taken() {
        let pool = [net("10.0.0.0/8")];
        assert_eq!(next_subnet(&pool, 24, &[]), Some(net("10.0.0.0/24")));
        assert_eq!(next_subnet(&pool, 24, &[net("10.0.0.0/24")]), Some(net("10.0.1.0/24")));
        // A user's /16 inside the pool takes all of its blocks.
        let taken = [net("10.0.0.0/16"), net("10.1.0.0/24")];
        assert_eq!(next_subnet(&pool, 24, &taken), Some(net("10.1.1.0/24")));
        let small = [net("192.168.0.0/23")];
        let full = [net("192.168.0.0/24"), net("192.168.1.0/24")];
        assert_eq!(next_subnet(&small, 24, &full), None);
        // The next pool is used when the first is full.
        let two = [net("192.168.0.0/24"), net("172.20.0.0/16")];
        assert_eq!(next_subnet(&two, 24, &[net("192.168.0.0/24")]), Some(net("172.20.0.0/24")));
    }

    #[test]
    fn hosts_skip_the_network_gateway_broadcast_and_taken() {
        let subnet = net("10.0.5.0/29");
        let gw = default_gateway(subnet);
        assert_eq!(gw, Ipv4Addr::new(10, 0, 5, 1));
        let mut taken = BTreeSet::new();
        let mut got = Vec::new();
        while let Some(ip) = next_host(subnet, gw, &taken) {
            taken.insert(ip);
            got.push(ip.octets()[3]);
        }
        assert_eq!(got, [2, 3, 4, 5, 6], "a /29 has five addresses for tasks and VIPs");
    }

    #[test]
    fn vnis_start_at_4096_and_fill_gaps() {
        assert_eq!(next_vni(&BTreeSet::new()), Some(4096));
        assert_eq!(next_vni(&BTreeSet::from([4096, 4098])), Some(4097));
    }
}
