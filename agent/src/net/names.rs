//! Service discovery from a task's point of view: which addresses a name has on the networks
//! the task is on, and which virtual IPs spread over which tasks. Pure; the resolver
//! (`dns`) and the balancer (`lb`) use it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use shoal_proto::{EndpointMode, NetworkMap};

/// The IP of a CIDR-form address (`10.0.1.7/24`).
pub fn ip_of(cidr: &str) -> Option<Ipv4Addr> {
    cidr.split('/').next()?.parse().ok()
}

/// What a name is, for a task on `maps` (its networks): the addresses to answer, or `None`
/// for a name that is not the cluster's (forwarded to the node's resolvers).
pub fn lookup(maps: &[&NetworkMap], name: &str) -> Option<Vec<Ipv4Addr>> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() {
        return None;
    }
    let (tasks_of, wanted) = match name.strip_prefix("tasks.") {
        Some(rest) => (true, rest),
        None => (false, name.as_str()),
    };
    let mut found = false;
    let mut out: Vec<Ipv4Addr> = Vec::new();
    for map in maps {
        for s in &map.services {
            let named = s.name.eq_ignore_ascii_case(wanted)
                || s.aliases.iter().any(|a| a.eq_ignore_ascii_case(wanted));
            if !named {
                continue;
            }
            found = true;
            let vip = ip_of(&s.vip);
            match vip {
                Some(v) if !tasks_of && s.mode() == EndpointMode::Vip => out.push(v),
                _ => out.extend(
                    map.endpoints
                        .iter()
                        .filter(|e| e.ready && e.service_id == s.id)
                        .filter_map(|e| ip_of(&e.addr)),
                ),
            }
        }
        if tasks_of {
            continue;
        }
        for e in &map.endpoints {
            if e.name.eq_ignore_ascii_case(wanted) {
                found = true;
                out.extend(ip_of(&e.addr));
            }
        }
    }
    out.sort();
    out.dedup();
    found.then_some(out)
}

/// The addresses, sorted, of service `service_id`'s ready tasks on `map`.
pub fn ready_addrs(map: &NetworkMap, service_id: &str) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = map
        .endpoints
        .iter()
        .filter(|e| e.ready && e.service_id == service_id)
        .filter_map(|e| ip_of(&e.addr))
        .collect();
    out.sort();
    out
}

/// Every virtual IP on `maps` and the addresses of the ready tasks behind it (none: refused).
pub fn balanced(maps: &[&NetworkMap]) -> BTreeMap<Ipv4Addr, Vec<Ipv4Addr>> {
    let mut out = BTreeMap::new();
    for map in maps {
        for s in map.services.iter().filter(|s| s.mode() == EndpointMode::Vip) {
            let Some(vip) = ip_of(&s.vip) else { continue };
            out.insert(vip, ready_addrs(map, &s.id));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{NetworkEndpoint, ServiceRecord};

    fn ep(task: &str, service: &str, addr: &str, ready: bool) -> NetworkEndpoint {
        NetworkEndpoint {
            task_id: task.into(),
            service_id: service.into(),
            addr: addr.into(),
            ready,
            name: format!("{service}.1.{task}"),
            ..Default::default()
        }
    }

    fn map() -> NetworkMap {
        NetworkMap {
            network: None,
            endpoints: vec![
                ep("t1", "s-web", "10.0.1.3/24", true),
                ep("t2", "s-web", "10.0.1.4/24", true),
                ep("t3", "s-web", "10.0.1.5/24", false),
                ep("t4", "s-db", "10.0.1.6/24", true),
            ],
            services: vec![
                ServiceRecord {
                    id: "s-web".into(),
                    name: "web".into(),
                    aliases: vec!["www".into()],
                    vip: "10.0.1.2/24".into(),
                    ..Default::default()
                },
                ServiceRecord {
                    id: "s-db".into(),
                    name: "db".into(),
                    mode: EndpointMode::Dnsrr as i32,
                    ..Default::default()
                },
            ],
            local_addr: String::new(),
            tunnel_peers: Vec::new(),
        }
    }

    fn ips(v: &[&str]) -> Vec<Ipv4Addr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn names_resolve_to_the_virtual_ip_or_the_ready_tasks() {
        let m = map();
        let maps = [&m];
        assert_eq!(lookup(&maps, "web"), Some(ips(&["10.0.1.2"])));
        assert_eq!(lookup(&maps, "WWW."), Some(ips(&["10.0.1.2"])), "aliases, any case");
        assert_eq!(lookup(&maps, "tasks.web"), Some(ips(&["10.0.1.3", "10.0.1.4"])));
        assert_eq!(lookup(&maps, "db"), Some(ips(&["10.0.1.6"])), "dnsrr: the tasks");
        assert_eq!(lookup(&maps, "s-web.1.t3"), Some(ips(&["10.0.1.5"])), "a task by its name");
        assert_eq!(lookup(&maps, "example.com"), None, "not ours: forwarded");
        // A service with no ready task is still ours: an empty answer, not a forward.
        let mut m2 = map();
        m2.endpoints.retain(|e| e.service_id != "s-db");
        assert_eq!(lookup(&[&m2], "db"), Some(vec![]));
        // Another network's services are not seen.
        assert_eq!(lookup(&[], "web"), None);
    }

    #[test]
    fn a_virtual_ip_spreads_over_ready_tasks_only() {
        let m = map();
        let b = balanced(&[&m]);
        assert_eq!(b.len(), 1, "dnsrr services have no virtual IP");
        assert_eq!(b[&"10.0.1.2".parse::<Ipv4Addr>().unwrap()], ips(&["10.0.1.3", "10.0.1.4"]));
    }
}
