//! What each node is told about the networks its tasks are on: per network, every task's
//! address and node (to program the overlay's forwarding tables), and every service's names
//! and virtual IP (to answer DNS and balance connections). Pure: built from lists read from
//! the store; the assignment hub sends what changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use shoal_proto::{
    EndpointMode, Network, NetworkEndpoint, NetworkMap, Node, Service, ServiceRecord, Task,
    TaskState, TunnelPeer,
};

/// Every network's map, and the networks each node is on.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Maps {
    pub by_network: HashMap<String, NetworkMap>,
    pub by_node: HashMap<String, BTreeSet<String>>,
    /// Each node's own address on a network (the ingress network), by (node, network).
    pub local: HashMap<(String, String), String>,
    /// Nodes that have no address on the ingress network yet, or addresses of nodes gone.
    pub ingress_stale: bool,
}

impl Maps {
    /// Whether the routing mesh's network is among the maps.
    pub fn has_ingress(&self) -> bool {
        self.by_network
            .values()
            .any(|m| m.network.as_ref().and_then(|n| n.spec.as_ref()).is_some_and(|s| s.ingress))
    }

    /// The map of network `id` as node `node` is to get it (with its own address there).
    pub fn for_node(&self, node: &str, id: &str) -> Option<NetworkMap> {
        let mut m = self.by_network.get(id)?.clone();
        if let Some(addr) = self.local.get(&(node.to_string(), id.to_string())) {
            m.local_addr = addr.clone();
        }
        Some(m)
    }
}

/// The IP part of a node's `host:port` address (`[v6]:port` too).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Whether the task is on its node's books: assigned there and not yet ended.
fn placed(t: &Task) -> bool {
    !t.node_id.is_empty()
        && t.state() >= TaskState::Assigned
        && t.state() <= TaskState::Running
        && !t.networks.is_empty()
}

/// Running, wanted, and healthy where a health check says so.
fn ready(t: &Task) -> bool {
    let health = t.status.as_ref().map(|s| s.health.as_str()).unwrap_or("");
    t.state() == TaskState::Running
        && t.desired_state <= TaskState::Running as i32
        && (health.is_empty() || health == "healthy")
}

fn task_name(t: &Task) -> String {
    let slot = if t.slot > 0 { t.slot.to_string() } else { t.node_id.clone() };
    format!("{}.{slot}.{}", t.service_name, t.id)
}

/// Builds every map from the store's lists; `ingress_nodes` holds each node's address on the
/// ingress network (if there is one).
pub(crate) fn build(
    networks: &[Network],
    services: &[Service],
    tasks: &[Task],
    nodes: &[Node],
    ingress_nodes: &BTreeMap<String, String>,
) -> Maps {
    let node_addr: HashMap<&str, &str> =
        nodes.iter().map(|n| (n.id.as_str(), host_of(&n.addr))).collect();
    let by_id: HashMap<&str, &Node> = nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    let mut endpoints: BTreeMap<&str, Vec<NetworkEndpoint>> = BTreeMap::new();
    let mut by_node: HashMap<String, BTreeSet<String>> = HashMap::new();
    // Who is on each network: the nodes an encrypted network's nodes keep tunnels to.
    let mut members: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for t in tasks.iter().filter(|t| placed(t)) {
        let Some(addr) = node_addr.get(t.node_id.as_str()) else { continue };
        for a in &t.networks {
            by_node.entry(t.node_id.clone()).or_default().insert(a.network_id.clone());
            members.entry(a.network_id.as_str()).or_default().insert(t.node_id.as_str());
            endpoints.entry(a.network_id.as_str()).or_default().push(NetworkEndpoint {
                task_id: t.id.clone(),
                service_id: t.service_id.clone(),
                addr: a.addr.clone(),
                node_addr: addr.to_string(),
                ready: ready(t),
                aliases: a.aliases.clone(),
                name: task_name(t),
            });
        }
    }
    let mut records: BTreeMap<&str, Vec<ServiceRecord>> = BTreeMap::new();
    for s in services {
        let Some(spec) = s.spec.as_ref() else { continue };
        let endpoint = spec.endpoint.clone().unwrap_or_default();
        for a in &spec.networks {
            let vip = s
                .endpoint
                .iter()
                .flat_map(|e| e.vips.iter())
                .find(|v| v.network_id == a.target)
                .map(|v| v.addr.clone())
                .unwrap_or_default();
            let dnsrr = endpoint.mode() == EndpointMode::Dnsrr;
            records.entry(a.target.as_str()).or_default().push(ServiceRecord {
                id: s.id.clone(),
                name: spec.name.clone(),
                aliases: a.aliases.clone(),
                vip: if dnsrr { String::new() } else { vip },
                mode: endpoint.mode,
                ports: endpoint.ports.clone(),
            });
        }
    }
    let mut local = HashMap::new();
    let mut ingress_stale = false;
    if let Some(ingress) = super::ports::find_ingress(networks) {
        let id = ingress.id.as_str();
        for s in services {
            let ports: Vec<_> = s
                .endpoint
                .iter()
                .flat_map(|e| e.ports.iter())
                .filter(|p| p.publish_mode != "host")
                .cloned()
                .collect();
            if ports.is_empty() {
                continue;
            }
            let name = s.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
            records.entry(id).or_default().push(ServiceRecord {
                id: s.id.clone(),
                name,
                ports,
                ..Default::default()
            });
        }
        for (node, addr) in ingress_nodes {
            let Some(node_addr) = node_addr.get(node.as_str()) else {
                ingress_stale = true;
                continue;
            };
            by_node.entry(node.clone()).or_default().insert(id.to_string());
            local.insert((node.clone(), id.to_string()), addr.clone());
            endpoints.entry(id).or_default().push(NetworkEndpoint {
                addr: addr.clone(),
                node_addr: node_addr.to_string(),
                name: format!("ingress-sbox.{node}"),
                ..Default::default()
            });
        }
        ingress_stale |= nodes.iter().any(|n| !ingress_nodes.contains_key(&n.id));
    }
    let mut by_network = HashMap::new();
    for n in networks {
        let mut eps = endpoints.remove(n.id.as_str()).unwrap_or_default();
        eps.sort_by(|a, b| (&a.task_id, &a.addr).cmp(&(&b.task_id, &b.addr)));
        let mut svcs = records.remove(n.id.as_str()).unwrap_or_default();
        svcs.sort_by(|a, b| a.id.cmp(&b.id));
        let encrypted = n.spec.as_ref().is_some_and(|s| s.encrypted);
        let tunnel_peers = match (encrypted, members.get(n.id.as_str())) {
            (true, Some(on)) => on
                .iter()
                .filter_map(|id| {
                    let node = by_id.get(id)?;
                    Some(TunnelPeer {
                        node_id: node.id.clone(),
                        addr: node_addr.get(id)?.to_string(),
                        keys: node.tunnel_keys.clone(),
                    })
                })
                .collect(),
            _ => Vec::new(),
        };
        by_network.insert(
            n.id.clone(),
            NetworkMap {
                network: Some(n.clone()),
                endpoints: eps,
                services: svcs,
                local_addr: String::new(),
                tunnel_peers,
            },
        );
    }
    // A node is told only of networks that exist.
    for nets in by_node.values_mut() {
        nets.retain(|id| by_network.contains_key(id));
    }
    Maps { by_network, by_node, local, ingress_stale }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{
        Endpoint, EndpointSpec, NetworkAttachment, NetworkAttachmentConfig, ServiceSpec,
        TaskStatus, VirtualIp,
    };

    fn net(id: &str) -> Network {
        Network { id: id.into(), vni: 4097, ..Default::default() }
    }

    fn node(id: &str, addr: &str) -> Node {
        Node { id: id.into(), addr: addr.into(), ..Default::default() }
    }

    fn task(id: &str, node: &str, state: TaskState, net: &str, addr: &str) -> Task {
        Task {
            id: id.into(),
            service_id: "s1".into(),
            service_name: "web".into(),
            slot: 1,
            node_id: node.into(),
            status: Some(TaskStatus { state: state as i32, ..Default::default() }),
            networks: vec![NetworkAttachment {
                network_id: net.into(),
                addr: addr.into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn service(mode: EndpointMode) -> Service {
        Service {
            id: "s1".into(),
            spec: Some(ServiceSpec {
                name: "web".into(),
                networks: vec![NetworkAttachmentConfig {
                    target: "n1".into(),
                    aliases: vec!["www".into()],
                }],
                endpoint: Some(EndpointSpec { mode: mode as i32, ports: vec![] }),
                ..Default::default()
            }),
            endpoint: Some(Endpoint {
                vips: vec![VirtualIp { network_id: "n1".into(), addr: "10.0.1.2/24".into() }],
                ports: vec![],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn nodes_hear_of_the_networks_their_tasks_are_on_with_every_peer() {
        let nodes = [node("a", "192.168.1.1:4242"), node("b", "192.168.1.2:4242")];
        let mut unhealthy = task("t3", "b", TaskState::Running, "n1", "10.0.1.5/24");
        unhealthy.status.as_mut().unwrap().health = "unhealthy".into();
        let tasks = [
            task("t1", "a", TaskState::Running, "n1", "10.0.1.3/24"),
            task("t2", "b", TaskState::Starting, "n1", "10.0.1.4/24"),
            unhealthy,
            // Ended or not yet placed: in no map.
            task("t4", "b", TaskState::Failed, "n1", "10.0.1.6/24"),
            task("t5", "", TaskState::Pending, "n1", "10.0.1.7/24"),
            // On a network that is gone: not sent.
            task("t6", "a", TaskState::Running, "gone", "10.9.0.3/24"),
        ];
        let maps =
            build(&[net("n1")], &[service(EndpointMode::Vip)], &tasks, &nodes, &BTreeMap::new());
        let m = &maps.by_network["n1"];
        let eps: Vec<(&str, &str, bool)> = m
            .endpoints
            .iter()
            .map(|e| (e.task_id.as_str(), e.node_addr.as_str(), e.ready))
            .collect();
        assert_eq!(
            eps,
            [
                ("t1", "192.168.1.1", true),
                ("t2", "192.168.1.2", false),
                ("t3", "192.168.1.2", false)
            ]
        );
        assert_eq!(m.endpoints[0].name, "web.1.t1");
        assert_eq!(m.services[0].vip, "10.0.1.2/24");
        assert_eq!(m.services[0].aliases, ["www"]);
        assert_eq!(maps.by_node["a"], BTreeSet::from(["n1".to_string()]));
        assert_eq!(maps.by_node["b"], BTreeSet::from(["n1".to_string()]));
    }

    #[test]
    fn an_encrypted_network_names_its_nodes_and_their_keys_and_no_one_else() {
        use shoal_proto::{NetworkSpec, TunnelKey};
        let key = |b: u8| TunnelKey { public_key: vec![b; 32], created_ms: 1 };
        let mut a = node("a", "192.168.1.1:4242");
        a.tunnel_keys = vec![key(1)];
        let mut b = node("b", "192.168.1.2:4242");
        b.tunnel_keys = vec![key(3), key(2)];
        let mut c = node("c", "192.168.1.3:4242");
        c.tunnel_keys = vec![key(4)];
        let mut secure = net("n1");
        secure.spec = Some(NetworkSpec { encrypted: true, ..Default::default() });
        let tasks = [
            task("t1", "a", TaskState::Running, "n1", "10.0.1.3/24"),
            task("t2", "b", TaskState::Assigned, "n1", "10.0.1.4/24"),
            // On another node that was removed: gone from the node list, so no peer.
            task("t3", "gone", TaskState::Running, "n1", "10.0.1.5/24"),
            // c is only on the plain network.
            task("t4", "c", TaskState::Running, "n2", "10.0.2.3/24"),
        ];
        let maps = build(&[secure, net("n2")], &[], &tasks, &[a, b, c], &BTreeMap::new());
        let peers = &maps.by_network["n1"].tunnel_peers;
        let seen: Vec<(&str, &str, usize)> =
            peers.iter().map(|p| (p.node_id.as_str(), p.addr.as_str(), p.keys.len())).collect();
        assert_eq!(seen, [("a", "192.168.1.1", 1), ("b", "192.168.1.2", 2)]);
        assert_eq!(peers[1].keys[0].public_key, vec![3; 32], "newest key first");
        assert!(maps.by_network["n2"].tunnel_peers.is_empty(), "a plain network has no tunnels");
    }

    #[test]
    fn dns_round_robin_services_have_no_virtual_ip() {
        let maps = build(&[net("n1")], &[service(EndpointMode::Dnsrr)], &[], &[], &BTreeMap::new());
        assert_eq!(maps.by_network["n1"].services[0].vip, "");
        assert!(maps.by_node.is_empty());
    }

    #[test]
    fn a_task_being_stopped_leaves_the_balancer_at_once() {
        let mut t = task("t1", "a", TaskState::Running, "n1", "10.0.1.3/24");
        t.desired_state = TaskState::Shutdown as i32;
        let maps = build(&[net("n1")], &[], &[t], &[node("a", "[fd00::1]:4242")], &BTreeMap::new());
        let e = &maps.by_network["n1"].endpoints[0];
        assert!(!e.ready);
        assert_eq!(e.node_addr, "fd00::1");
    }
}

#[cfg(test)]
mod ingress_tests {
    use std::collections::BTreeMap;

    use shoal_proto::{
        Endpoint, EndpointMode, Network, NetworkAttachment, NetworkSpec, Node, PortConfig, Service,
        ServiceSpec, Task, TaskState, TaskStatus,
    };

    use super::build;

    fn ingress() -> Network {
        Network {
            id: "ing".into(),
            vni: 4096,
            spec: Some(NetworkSpec { name: "ingress".into(), ingress: true, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn every_node_joins_the_mesh_and_a_node_gone_leaves_every_map() {
        let nodes = vec![
            Node { id: "a".into(), addr: "192.168.1.1:4242".into(), ..Default::default() },
            Node { id: "b".into(), addr: "192.168.1.2:4242".into(), ..Default::default() },
        ];
        let web = Service {
            id: "s1".into(),
            spec: Some(ServiceSpec {
                name: "web".into(),
                endpoint: Some(shoal_proto::EndpointSpec {
                    mode: EndpointMode::Vip as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            endpoint: Some(Endpoint {
                vips: vec![],
                ports: vec![PortConfig {
                    protocol: "tcp".into(),
                    target_port: 80,
                    published_port: 8080,
                    publish_mode: "ingress".into(),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        };
        let task = Task {
            id: "t1".into(),
            service_id: "s1".into(),
            service_name: "web".into(),
            slot: 1,
            node_id: "b".into(),
            desired_state: TaskState::Running as i32,
            status: Some(TaskStatus { state: TaskState::Running as i32, ..Default::default() }),
            networks: vec![NetworkAttachment {
                network_id: "ing".into(),
                addr: "10.0.0.9/24".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut addrs = BTreeMap::new();
        addrs.insert("a".to_string(), "10.0.0.2/24".to_string());
        addrs.insert("b".to_string(), "10.0.0.3/24".to_string());
        let maps = build(
            &[ingress()],
            std::slice::from_ref(&web),
            std::slice::from_ref(&task),
            &nodes,
            &addrs,
        );
        assert!(!maps.ingress_stale);
        // Node a runs no task of web, yet it is on the mesh with its own address.
        let a = maps.for_node("a", "ing").expect("a has the ingress map");
        assert_eq!(a.local_addr, "10.0.0.2/24");
        assert_eq!(maps.for_node("b", "ing").unwrap().local_addr, "10.0.0.3/24");
        let peers: Vec<(&str, &str)> =
            a.endpoints.iter().map(|e| (e.addr.as_str(), e.node_addr.as_str())).collect();
        assert_eq!(
            peers,
            [
                ("10.0.0.2/24", "192.168.1.1"),
                ("10.0.0.3/24", "192.168.1.2"),
                ("10.0.0.9/24", "192.168.1.2")
            ]
        );
        assert_eq!(a.services[0].ports[0].published_port, 8080);

        // Node b removed: its task and its mesh address leave every map (no stale forwarding
        // entry on a), and the managers are told to take its address back.
        let maps = build(&[ingress()], &[web], &[task], &nodes[..1], &addrs);
        let a = maps.for_node("a", "ing").unwrap();
        let peers: Vec<&str> = a.endpoints.iter().map(|e| e.addr.as_str()).collect();
        assert_eq!(peers, ["10.0.0.2/24"]);
        assert!(maps.ingress_stale);
    }
}
