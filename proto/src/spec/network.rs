//! The rules of network specs: names, the driver, subnet and gateway, the cluster's default
//! address pool, and a service's network attachments. Pure; the managers enforce them, the CLI
//! and the stack deployer check before sending.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::SpecError;
use crate::{NetworkAttachmentConfig, NetworkSpec};

/// Longest network name.
pub const MAX_NAME: usize = 63;
/// The only driver of a swarm-scoped network.
pub const OVERLAY: &str = "overlay";
/// Names Docker keeps for its own networks (the routing mesh and the local ones).
pub const RESERVED: [&str; 4] = ["ingress", "bridge", "host", "none"];
/// The pool networks take their subnets from when none is given (Swarm's default).
pub const DEFAULT_POOL: &str = "10.0.0.0/8";
/// Prefix length of each network's block of the default pool (Swarm's default).
pub const DEFAULT_SUBNET_SIZE: u8 = 24;
/// The smallest subnet: a network address, a gateway, a virtual IP, a task and a broadcast.
pub const MAX_PREFIX: u8 = 29;
/// The largest subnet (a /8, like the whole default pool).
pub const MIN_PREFIX: u8 = 8;
/// Longest network alias (a DNS label set).
pub const MAX_ALIAS: usize = 253;
/// The network a service names to have no network at all (loopback only).
pub const NONE: &str = "none";
/// The overlay data plane's UDP port when `swarm init` gives none (VXLAN's IANA port).
pub const DEFAULT_DATA_PORT: u16 = 4789;

/// The data-path port `swarm init --data-path-port` asks for (0: the default), checked.
pub fn data_path_port(port: u32) -> Result<u16, SpecError> {
    match port {
        0 => Ok(DEFAULT_DATA_PORT),
        1024..=49151 => Ok(port as u16),
        _ => Err(SpecError::DataPathPort(port)),
    }
}

/// Checks a network name against Docker's rule for names.
pub fn validate_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok {
        return Err(SpecError::NetworkName(name.to_string()));
    }
    if RESERVED.contains(&name) {
        return Err(SpecError::ReservedNetworkName(name.to_string()));
    }
    Ok(())
}

/// Parses an IPv4 subnet in CIDR form with no host bits set, within the sizes the overlay uses.
pub fn parse_subnet(value: &str) -> Result<Ipv4Net, SpecError> {
    let bad = |why| SpecError::Subnet { value: value.to_string(), why };
    let net: Ipv4Net =
        value.parse().map_err(|_| bad("use an IPv4 network in CIDR form, like 10.20.0.0/24"))?;
    if net.trunc() != net {
        return Err(bad("host bits are set; give the network address, like 10.20.0.0/24"));
    }
    if !(MIN_PREFIX..=MAX_PREFIX).contains(&net.prefix_len()) {
        return Err(bad("the prefix length must be between /8 and /29"));
    }
    Ok(net)
}

/// Checks that `gateway` is a host address of `subnet` (not its network or broadcast address).
pub fn parse_gateway(value: &str, subnet: Ipv4Net) -> Result<Ipv4Addr, SpecError> {
    let bad = |why| SpecError::Gateway { value: value.to_string(), why };
    let ip: Ipv4Addr = value.parse().map_err(|_| bad("use an IPv4 address, like 10.20.0.1"))?;
    if !subnet.contains(&ip) {
        return Err(bad("it is outside the subnet"));
    }
    if ip == subnet.network() || ip == subnet.broadcast() {
        return Err(bad("it is the subnet's network or broadcast address"));
    }
    Ok(ip)
}

/// Fills in defaults (the overlay driver) and checks a network spec.
pub fn normalize(spec: &mut NetworkSpec) -> Result<(), SpecError> {
    validate_name(&spec.name)?;
    if spec.driver.is_empty() {
        spec.driver = OVERLAY.to_string();
    }
    if spec.driver != OVERLAY {
        return Err(SpecError::NetworkDriver(spec.driver.clone()));
    }
    let ipam = spec.ipam.get_or_insert_with(Default::default);
    if ipam.subnet.is_empty() {
        if !ipam.gateway.is_empty() {
            return Err(SpecError::Gateway {
                value: ipam.gateway.clone(),
                why: "a gateway needs a subnet (--subnet)",
            });
        }
        return Ok(());
    }
    let subnet = parse_subnet(&ipam.subnet)?;
    if !ipam.gateway.is_empty() {
        parse_gateway(&ipam.gateway, subnet)?;
    }
    Ok(())
}

/// The cluster's default address pool as `swarm init` gives it: CIDRs (none: 10.0.0.0/8) cut
/// into blocks of `size` bits (0: /24).
pub fn address_pool(pools: &[String], size: u32) -> Result<(Vec<Ipv4Net>, u8), SpecError> {
    let size = if size == 0 { DEFAULT_SUBNET_SIZE } else { size.min(255) as u8 };
    let given: Vec<&str> = if pools.is_empty() {
        vec![DEFAULT_POOL]
    } else {
        pools.iter().map(String::as_str).collect()
    };
    let mut out: Vec<Ipv4Net> = Vec::new();
    for value in given {
        let bad = |why: String| SpecError::AddrPool { value: value.to_string(), why };
        let net: Ipv4Net =
            value.parse().map_err(|_| bad("use IPv4 CIDRs, like 10.0.0.0/8".into()))?;
        if net.trunc() != net {
            return Err(bad("host bits are set; give the network address".into()));
        }
        if !(MIN_PREFIX..=MAX_PREFIX).contains(&size) || size < net.prefix_len() {
            return Err(bad(format!(
                "the block size /{size} must be between the pool's /{} and /{MAX_PREFIX}",
                net.prefix_len()
            )));
        }
        if let Some(other) = out.iter().find(|o| o.contains(&net) || net.contains(*o)) {
            return Err(bad(format!("it overlaps {other}")));
        }
        out.push(net);
    }
    Ok((out, size))
}

/// The range the managers choose published ports from when a service gives none (Swarm's).
pub const AUTO_PORTS: std::ops::RangeInclusive<u32> = 30000..=32767;

/// Fills the defaults of a service's published ports (tcp, ingress) and refuses what cannot
/// be published: a bad protocol or mode, a port outside 1-65535, host mode without a
/// published port, the same published port twice.
pub fn normalize_ports(ports: &mut [crate::PortConfig]) -> Result<(), SpecError> {
    let mut seen = std::collections::BTreeSet::new();
    for p in ports.iter_mut() {
        let value = format!("{}:{}/{}", p.published_port, p.target_port, p.protocol);
        let bad = |why: &str| SpecError::Port { value: value.clone(), why: why.to_string() };
        if p.protocol.is_empty() {
            p.protocol = "tcp".into();
        }
        if p.publish_mode.is_empty() {
            p.publish_mode = "ingress".into();
        }
        if !matches!(p.protocol.as_str(), "tcp" | "udp") {
            return Err(bad("the protocol must be tcp or udp"));
        }
        if !matches!(p.publish_mode.as_str(), "ingress" | "host") {
            return Err(bad("the mode must be ingress or host"));
        }
        if !(1..=65535).contains(&p.target_port) || p.published_port > 65535 {
            return Err(bad("ports are numbers from 1 to 65535"));
        }
        if p.publish_mode == "host" && p.published_port == 0 {
            return Err(bad("host mode needs a published port (published=PORT)"));
        }
        if p.published_port != 0 && !seen.insert((p.published_port, p.protocol.clone())) {
            return Err(bad("the service publishes this port twice"));
        }
    }
    Ok(())
}

/// Checks a service's network attachments: each names a network once, aliases are names.
pub fn validate_attachments(list: &[NetworkAttachmentConfig]) -> Result<(), SpecError> {
    if list.len() > 1 && list.iter().any(|a| a.target == NONE) {
        return Err(SpecError::NoneWithOthers);
    }
    let mut seen = std::collections::BTreeSet::new();
    for a in list {
        if a.target.is_empty() || !seen.insert(a.target.as_str()) {
            return Err(SpecError::SameNetwork(a.target.clone()));
        }
        for alias in &a.aliases {
            let ok = !alias.is_empty()
                && alias.len() <= MAX_ALIAS
                && alias.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !ok {
                return Err(SpecError::NetworkAlias(alias.clone()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IpamConfig;

    fn spec(name: &str, subnet: &str, gateway: &str) -> NetworkSpec {
        NetworkSpec {
            name: name.into(),
            ipam: Some(IpamConfig { subnet: subnet.into(), gateway: gateway.into() }),
            ..Default::default()
        }
    }

    #[test]
    fn a_plain_spec_becomes_an_overlay() {
        let mut s = spec("backend", "", "");
        normalize(&mut s).unwrap();
        assert_eq!(s.driver, "overlay");
        let mut s = spec("backend", "10.20.0.0/16", "10.20.0.254");
        normalize(&mut s).unwrap();
    }

    #[test]
    fn bad_specs_are_refused_with_the_field_named() {
        let cases = [
            (spec("", "", ""), "invalid network name"),
            (spec("-x", "", ""), "invalid network name"),
            (spec("ingress", "", ""), "reserved"),
            (spec("a", "10.20.0.1/24", ""), "host bits"),
            (spec("a", "10.20.0.0/30", ""), "between /8 and /29"),
            (spec("a", "fd00::/64", ""), "IPv4 network"),
            (spec("a", "10.20.0.0/24", "10.21.0.1"), "outside the subnet"),
            (spec("a", "10.20.0.0/24", "10.20.0.255"), "broadcast"),
            (spec("a", "", "10.20.0.1"), "needs a subnet"),
        ];
        for (mut s, want) in cases {
            let err = normalize(&mut s).unwrap_err().to_string();
            assert!(err.contains(want), "{s:?}: {err}");
        }
        let mut bridge = spec("a", "", "");
        bridge.driver = "bridge".into();
        assert!(normalize(&mut bridge).unwrap_err().to_string().contains("overlay"));
    }

    #[test]
    fn the_data_path_port_is_a_user_port_and_none_stands_alone() {
        assert_eq!(data_path_port(0).unwrap(), 4789);
        assert_eq!(data_path_port(7789).unwrap(), 7789);
        for bad in [53, 1023, 49152, 70000] {
            assert!(data_path_port(bad).unwrap_err().to_string().contains("1024 to 49151"));
        }
        let att = |t: &str| NetworkAttachmentConfig { target: t.into(), ..Default::default() };
        validate_attachments(&[att(NONE)]).unwrap();
        let err = validate_attachments(&[att(NONE), att("backend")]).unwrap_err();
        assert!(err.to_string().contains("cannot be combined"), "{err}");
    }

    #[test]
    fn an_encrypted_network_keeps_its_option() {
        let mut spec = NetworkSpec { name: "secure".into(), encrypted: true, ..Default::default() };
        normalize(&mut spec).unwrap();
        assert!(spec.encrypted);
    }

    #[test]
    fn published_ports_default_to_tcp_on_the_routing_mesh() {
        use crate::PortConfig;
        let port = |published, target, protocol: &str, mode: &str| PortConfig {
            published_port: published,
            target_port: target,
            protocol: protocol.into(),
            publish_mode: mode.into(),
            ..Default::default()
        };
        let mut ok =
            vec![port(8080, 80, "", ""), port(0, 53, "udp", ""), port(9000, 90, "tcp", "host")];
        normalize_ports(&mut ok).unwrap();
        assert_eq!((ok[0].protocol.as_str(), ok[0].publish_mode.as_str()), ("tcp", "ingress"));
        let cases = [
            (vec![port(80, 80, "sctp", "")], "tcp or udp"),
            (vec![port(80, 80, "", "bridge")], "ingress or host"),
            (vec![port(80, 0, "", "")], "1 to 65535"),
            (vec![port(70000, 80, "", "")], "1 to 65535"),
            (vec![port(0, 80, "", "host")], "host mode needs"),
            (vec![port(80, 80, "", ""), port(80, 81, "tcp", "")], "twice"),
        ];
        for (mut ports, want) in cases {
            let err = normalize_ports(&mut ports).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
        // The same number over tcp and udp is two ports.
        normalize_ports(&mut [port(53, 53, "tcp", ""), port(53, 53, "udp", "")]).unwrap();
    }

    #[test]
    fn the_default_pool_is_swarms() {
        let (pools, size) = address_pool(&[], 0).unwrap();
        assert_eq!(pools, ["10.0.0.0/8".parse::<Ipv4Net>().unwrap()]);
        assert_eq!(size, 24);
        let two = ["10.10.0.0/16".to_string(), "192.168.0.0/20".to_string()];
        assert_eq!(address_pool(&two, 26).unwrap().0.len(), 2);
        let overlapping = ["10.0.0.0/8".to_string(), "10.1.0.0/16".to_string()];
        assert!(address_pool(&overlapping, 24).unwrap_err().to_string().contains("overlaps"));
        let too_big = ["10.10.0.0/16".to_string()];
        assert!(address_pool(&too_big, 12).unwrap_err().to_string().contains("block size"));
    }

    #[test]
    fn attachments_name_each_network_once() {
        let a = |t: &str, aliases: &[&str]| NetworkAttachmentConfig {
            target: t.into(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
        };
        assert!(validate_attachments(&[a("front", &["web"]), a("back", &[])]).is_ok());
        assert!(validate_attachments(&[a("front", &[]), a("front", &[])]).is_err());
        assert!(validate_attachments(&[a("front", &["bad alias"])]).is_err());
    }
}
