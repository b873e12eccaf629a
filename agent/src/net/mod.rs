//! The node's data plane: what makes tasks reachable.
//!
//! Every task with networks gets a network namespace of its own, prepared here before the
//! runtime starts the task in it (`/run/netns/shoal-<node tag>-<task>`):
//! - per overlay network, a veth whose other end is on that network's bridge in the
//!   network's *sandbox* namespace (`shoal-<tag>-ov<vni>`), beside a VXLAN device created in
//!   the node's namespace (so its UDP socket is the node's, on the data-path port) and moved
//!   in. The VXLAN device learns nothing and floods nothing: each remote task's MAC is written
//!   into its forwarding table (pointing at the task's node) and its address into the
//!   neighbour table, which the device answers ARP from (`proxy`). MACs are derived from
//!   addresses (02:42 + the IPv4 bytes), so a map of addresses is all a node needs.
//! - unless every network is internal, a leg on the node's gateway bridge (`shoal_gwbridge`,
//!   NAT to the outside, ports isolated from one another like Docker's gwbridge), with the
//!   default route. A task on no network has only this leg (Docker's default for services).
//! - `/etc/resolv.conf` pointing at 127.0.0.11, where the agent serves DNS for the task from a
//!   socket it opened inside the task's namespace (`dns`), and a load balancer for the virtual
//!   IPs of its networks (`lb`), rewritten when the maps change.
//!
//! - published ports (`mesh`): the node's leg on the ingress network (the routing mesh: a
//!   veth from the node's namespace onto the ingress sandbox's bridge, with the node's
//!   address there) and a table in the node's namespace forwarding each published port.
//!
//! Networks on different bridges in different sandboxes cannot reach one another; the node
//! routes nothing into a sandbox. The tools are iproute2 and nftables, run as processes: the
//! same commands an operator debugs with, and no netlink code of our own to keep.

mod balancers;
pub mod cmd;
mod dns;
mod encrypted;
pub mod files;
mod gateway;
mod ingress;
pub mod keys;
pub mod lb;
pub mod mesh;
pub mod names;
mod overlay;
pub mod tunnel;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use ipnet::Ipv4Net;
use shoal_proto::spec::network::NONE;
use shoal_proto::{NetworkMap, PortConfig, Task};

use balancers::balancer_loop;
use gateway::{read_leases, write_leases};

use names::ip_of;

/// The node's gateway bridge (outbound NAT for tasks).
pub const GW_BRIDGE: &str = "shoal_gwbridge";
/// Its subnet unless the node is told otherwise.
pub const GW_SUBNET: &str = "172.31.0.0/16";
/// Inner MTU of overlay interfaces: a 1500-byte underlay less VXLAN's 50 bytes.
pub const OVERLAY_MTU: u32 = 1450;
/// Where `ip netns` keeps named namespaces.
const NETNS_DIR: &str = "/run/netns";

/// Why the data plane could not do something.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A network tool failed.
    #[error("{tool}: {message}")]
    Tool { tool: String, message: String },
    /// The task's resolver socket could not be opened.
    #[error("opening the task's DNS resolver in {0}")]
    Resolver(String),
    /// A task's network attachment the node cannot use.
    #[error("network attachment of task {task}: {why}")]
    Attachment { task: String, why: String },
    /// A host-mode port another task of this node publishes.
    #[error("port {port}/{protocol} is already published on this node by task {task}")]
    PortTaken { port: u32, protocol: String, task: String },
    /// No address left on the gateway bridge.
    #[error("the gateway bridge {GW_BRIDGE} has no free address left")]
    GatewayFull,
    /// The encrypted overlays' tunnel could not be set up.
    #[error("encrypted overlay: {0}")]
    Tunnel(String),
    /// Files of the data plane could not be written.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// How the data plane is set up on this node.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Where the data plane keeps its files (gateway leases, each task's /etc files).
    pub state_dir: PathBuf,
    /// Short tag telling this node's namespaces apart from other nodes' on the same host.
    pub tag: String,
    /// The gateway bridge's subnet.
    pub gw_subnet: Ipv4Net,
    /// The node's resolver configuration (its nameservers get what tasks ask beyond the
    /// cluster's names).
    pub resolv_conf: PathBuf,
}

impl NetConfig {
    /// The defaults for a node whose data root is `data_root`.
    pub fn new(data_root: &Path) -> NetConfig {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        data_root.hash(&mut h);
        NetConfig {
            state_dir: data_root.join("net"),
            tag: format!("{:06x}", h.finish() & 0xff_ffff),
            gw_subnet: GW_SUBNET.parse().expect("a valid constant"),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
        }
    }
}

/// What a task needs from the data plane to start: the namespace to join and its /etc files.
#[derive(Debug)]
pub struct Plumbed {
    pub netns: PathBuf,
    pub etc_files: Vec<(String, PathBuf)>,
}

/// The node's data plane. Blocking: call from blocking threads.
#[derive(Debug)]
pub struct DataPlane {
    cfg: NetConfig,
    upstreams: Arc<Vec<SocketAddr>>,
    search: Vec<String>,
    inner: Mutex<Inner>,
    /// Serialises plumbing (sandbox and bridge creation, leases).
    plumbing: Mutex<()>,
    /// Serialises balancer rewrites (so an older ruleset never lands after a newer one).
    lb_lock: Mutex<()>,
    /// The same for the node's published-ports table.
    mesh_lock: Mutex<()>,
    /// Wakes the balancer thread (with `inner`'s lock).
    lb_wake: std::sync::Condvar,
    /// Tunnel keys and the tunnel of encrypted networks.
    crypt: Mutex<encrypted::Crypt>,
    me: Weak<DataPlane>,
}

#[derive(Debug, Default)]
struct Inner {
    maps: HashMap<String, NetworkMap>,
    tasks: HashMap<String, TaskNet>,
    sandboxes: HashMap<String, Sandbox>,
    leases: BTreeMap<String, Ipv4Addr>,
    /// The node's leg on the ingress network, once it has one.
    ingress: Option<Ingress>,
    /// The published-ports table last applied.
    mesh: String,
    /// The gateway's NAT table and FORWARD rules are in place.
    gateway_ready: bool,
    /// Tasks whose balancer is to be rewritten from the current maps (by the balancer
    /// thread, which coalesces bursts of map changes).
    lb_dirty: BTreeSet<String>,
}

#[derive(Debug, Clone)]
struct Ingress {
    network_id: String,
    /// The node's address there (CIDR form).
    addr: String,
    /// The interface in the node's namespace.
    leg: String,
}

#[derive(Debug)]
struct TaskNet {
    netns: String,
    networks: Vec<String>,
    resolver: Option<tokio::task::AbortHandle>,
    /// The balancer ruleset last applied.
    lb: String,
    /// Ports published in host mode, forwarded to `gw`.
    host_ports: Vec<PortConfig>,
    /// The task's address on the gateway bridge.
    gw: Option<Ipv4Addr>,
    /// Where its resolver forwards other names (`--dns`), instead of the node's resolvers.
    upstreams: Option<Arc<Vec<SocketAddr>>>,
}

impl TaskNet {
    fn new(netns: String) -> TaskNet {
        TaskNet {
            netns,
            networks: Vec::new(),
            resolver: None,
            lb: String::new(),
            host_ports: Vec::new(),
            gw: None,
            upstreams: None,
        }
    }
}

/// The maps of the networks a task resolves and balances on (not the routing mesh's).
fn task_maps<'a>(inner: &'a Inner, t: &TaskNet) -> Vec<&'a NetworkMap> {
    t.networks.iter().filter_map(|n| inner.maps.get(n)).filter(|m| !is_ingress(m)).collect()
}

fn is_ingress(m: &NetworkMap) -> bool {
    m.network.as_ref().and_then(|n| n.spec.as_ref()).is_some_and(|s| s.ingress)
}

/// The task's resolver settings (`--dns`, `--dns-search`, `--dns-option`).
fn task_dns(task: &Task) -> shoal_proto::DnsConfig {
    let c = task.spec.as_ref().and_then(|s| s.container.as_ref());
    c.and_then(|c| c.dns.clone()).unwrap_or_default()
}

/// The nameservers a task's resolver forwards to, when the task names its own.
fn upstreams_of(dns: &shoal_proto::DnsConfig) -> Option<Arc<Vec<SocketAddr>>> {
    let ups: Vec<SocketAddr> = dns
        .nameservers
        .iter()
        .filter_map(|n| n.parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect();
    (!ups.is_empty()).then(|| Arc::new(ups))
}

/// The ports task `task` publishes in host mode.
fn host_ports(task: &Task) -> Vec<PortConfig> {
    task.spec
        .as_ref()
        .and_then(|s| s.endpoint.as_ref())
        .map(|e| e.ports.iter().filter(|p| p.publish_mode == "host").cloned().collect())
        .unwrap_or_default()
}

#[derive(Debug)]
struct Sandbox {
    netns: String,
    vxlan: String,
    /// Remote tasks programmed: address → node address.
    peers: BTreeMap<Ipv4Addr, Ipv4Addr>,
    /// Entries left by an earlier agent have been read back.
    synced: bool,
    /// The network is encrypted (its VXLAN traffic goes through the tunnel).
    encrypted: bool,
}

/// The MAC of an overlay or bridge address: 02:42 and the address's bytes (Docker's rule).
pub fn mac_of(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// Interface names are limited to 15 bytes: a short stable hash of what they connect.
fn short(parts: &[&str]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    format!("{:010x}", h.finish() & 0xff_ffff_ffff)
}

impl DataPlane {
    pub fn new(cfg: NetConfig) -> Arc<DataPlane> {
        let resolv = std::fs::read_to_string(&cfg.resolv_conf).unwrap_or_default();
        let upstreams: Vec<SocketAddr> = files::nameservers(&resolv)
            .into_iter()
            .filter(|ip| !ip.is_loopback())
            .map(|ip| SocketAddr::new(ip, 53))
            .collect();
        let search = files::search_domains(&resolv);
        let leases = read_leases(&cfg.state_dir.join("gw-leases"));
        // Operators (and test fixtures) find this node's namespaces by their tag.
        if std::fs::create_dir_all(&cfg.state_dir).is_ok() {
            let _ = std::fs::write(cfg.state_dir.join("tag"), &cfg.tag);
        }
        let plane = Arc::new_cyclic(|me| DataPlane {
            cfg,
            upstreams: Arc::new(upstreams),
            search,
            inner: Mutex::new(Inner { leases, ..Default::default() }),
            plumbing: Mutex::new(()),
            lb_lock: Mutex::new(()),
            mesh_lock: Mutex::new(()),
            lb_wake: std::sync::Condvar::new(),
            crypt: Mutex::new(Default::default()),
            me: me.clone(),
        });
        plane.resume_tunnel();
        let weak = Arc::downgrade(&plane);
        let spawned = std::thread::Builder::new()
            .name("shoal-balancers".into())
            .spawn(move || balancer_loop(weak));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no balancer thread: balancers follow map changes inline");
        }
        plane
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn task_netns(&self, task_id: &str) -> String {
        format!("shoal-{}-{task_id}", self.cfg.tag)
    }

    fn sandbox_netns(&self, vni: u32) -> String {
        format!("shoal-{}-ov{vni}", self.cfg.tag)
    }

    fn etc_dir(&self, task_id: &str) -> PathBuf {
        self.cfg.state_dir.join("tasks").join(task_id)
    }

    /// Whether `task` gets plumbing: not on the host's network, not `--network none`.
    pub fn wants(task: &Task, host_network: bool) -> bool {
        let nets = task.spec.as_ref().map(|s| s.networks.as_slice()).unwrap_or_default();
        !host_network && !nets.iter().any(|a| a.target == NONE)
    }

    /// Prepares task `task`'s namespace: its overlay legs, its gateway leg, its /etc files,
    /// its balancer. Undoes what it did on failure.
    pub fn attach(&self, task: &Task, hostname: &str) -> Result<Plumbed, NetError> {
        let result = self.plumb(task, hostname);
        if result.is_err() {
            self.detach(&task.id);
        }
        result
    }

    /// Tasks are plumbed in parallel; what they share (a network's sandbox, the gateway
    /// bridge) is made under the plumbing lock, which removals take too.
    fn plumb(&self, task: &Task, hostname: &str) -> Result<Plumbed, NetError> {
        let ns = self.task_netns(&task.id);
        let path = Path::new(NETNS_DIR).join(&ns);
        if path.exists() {
            // An earlier try's leftovers.
            let _ = cmd::ip(None, &[format!("netns del {ns}")]);
        }
        let published = host_ports(task);
        {
            // Checked and claimed at once: two tasks never both get a host port.
            let mut inner = self.inner();
            for p in &published {
                let holder = inner.tasks.iter().find(|(id, t)| {
                    *id != &task.id
                        && t.host_ports.iter().any(|h| {
                            h.published_port == p.published_port && h.protocol == p.protocol
                        })
                });
                if let Some((other, _)) = holder {
                    return Err(NetError::PortTaken {
                        port: p.published_port,
                        protocol: p.protocol.clone(),
                        task: other.clone(),
                    });
                }
            }
            let mut net = TaskNet::new(ns.clone());
            net.host_ports = published;
            inner.tasks.insert(task.id.clone(), net);
        }
        cmd::ip(None, &[format!("netns add {ns}")])?;
        let mut inside = vec!["link set lo up".to_string()];
        let mut first_addr = None;
        let mut external = task.networks.is_empty();
        for (i, a) in task.networks.iter().enumerate() {
            let bad = |why: &str| NetError::Attachment { task: task.id.clone(), why: why.into() };
            let network = a.network.as_ref().ok_or_else(|| bad("the network is missing"))?;
            let ip = ip_of(&a.addr).ok_or_else(|| bad("the address does not parse"))?;
            let sandbox = {
                // Made (or found) and claimed at once, so a removal cannot take it between.
                let _guard = self.plumbing.lock().unwrap_or_else(|p| p.into_inner());
                let sandbox = self.ensure_sandbox(network)?;
                if let Some(t) = self.inner().tasks.get_mut(&task.id) {
                    t.networks.push(network.id.clone());
                }
                sandbox
            };
            let host_end = format!("vo{}", short(&[&task.id, &network.id]));
            let eth = format!("eth{i}");
            let mtu = encrypted::mtu_of(network);
            cmd::ip(
                None,
                &[format!(
                    "link add {host_end} mtu {mtu} netns {sandbox} type veth peer name {eth} netns {ns}"
                )],
            )?;
            cmd::ip(
                Some(&sandbox),
                &[format!("link set {host_end} master br0"), format!("link set {host_end} up")],
            )?;
            inside.push(format!("link set {eth} address {}", mac_of(ip)));
            inside.push(format!("addr add {} dev {eth}", a.addr));
            inside.push(format!("link set {eth} up"));
            first_addr.get_or_insert(ip);
            external |= !network.spec.as_ref().is_some_and(|s| s.internal);
        }
        if external {
            let gw = self.lease(&task.id)?;
            if let Some(t) = self.inner().tasks.get_mut(&task.id) {
                t.gw = Some(gw);
            }
            {
                let _guard = self.plumbing.lock().unwrap_or_else(|p| p.into_inner());
                self.ensure_gateway()?;
            }
            let host_end = format!("vg{}", short(&[&task.id]));
            let eth = format!("eth{}", task.networks.len());
            cmd::ip(
                None,
                &[
                    format!("link add {host_end} type veth peer name {eth} netns {ns}"),
                    format!("link set {host_end} master {GW_BRIDGE}"),
                    format!("link set dev {host_end} type bridge_slave isolated on"),
                    format!("link set {host_end} up"),
                ],
            )
            .inspect_err(|_| {
                // Someone removed the bridge: made again on the next try.
                self.inner().gateway_ready = false;
            })?;
            let prefix = self.cfg.gw_subnet.prefix_len();
            inside.push(format!("link set {eth} address {}", mac_of(gw)));
            inside.push(format!("addr add {gw}/{prefix} dev {eth}"));
            inside.push(format!("link set {eth} up"));
            inside.push(format!("route add default via {}", self.gateway_ip()));
            first_addr.get_or_insert(gw);
        }
        cmd::ip(Some(&ns), &inside)?;
        let dns = task_dns(task);
        if let Some(t) = self.inner().tasks.get_mut(&task.id) {
            t.upstreams = upstreams_of(&dns);
        }
        let search = if dns.search.is_empty() { &self.search } else { &dns.search };
        let etc_files = self.write_etc(&task.id, hostname, first_addr, search, &dns.options)?;
        self.program_lb(&task.id)?;
        self.program_mesh()?;
        Ok(Plumbed { netns: path, etc_files })
    }

    fn write_etc(
        &self,
        task_id: &str,
        hostname: &str,
        addr: Option<Ipv4Addr>,
        search: &[String],
        options: &[String],
    ) -> Result<Vec<(String, PathBuf)>, NetError> {
        let dir = self.etc_dir(task_id);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| NetError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let files = [
            ("/etc/resolv.conf", "resolv.conf", files::resolv_conf(search, options)),
            ("/etc/hosts", "hosts", files::hosts(hostname, addr)),
            ("/etc/hostname", "hostname", format!("{hostname}\n")),
        ];
        let mut out = Vec::new();
        for (target, name, text) in files {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(io(&path))?;
            out.push((target.to_string(), path));
        }
        Ok(out)
    }

    /// Opens task `task_id`'s resolver socket in its namespace (blocking).
    pub fn resolver_socket(&self, task_id: &str) -> Result<std::net::UdpSocket, NetError> {
        dns::bind_in(&Path::new(NETNS_DIR).join(self.task_netns(task_id)))
    }

    /// Serves task `task_id`'s resolver on `socket` (from [`DataPlane::resolver_socket`]);
    /// call within the runtime.
    pub fn serve_resolver(
        &self,
        task_id: &str,
        socket: std::net::UdpSocket,
    ) -> Result<(), NetError> {
        let me = self.me.clone();
        let id = task_id.to_string();
        let resolve: dns::Resolve = Arc::new(move |name: &str| {
            let plane = me.upgrade()?;
            let inner = plane.inner();
            let maps = task_maps(&inner, inner.tasks.get(&id)?);
            names::lookup(&maps, name)
        });
        let upstreams = self
            .inner()
            .tasks
            .get(task_id)
            .and_then(|t| t.upstreams.clone())
            .unwrap_or_else(|| self.upstreams.clone());
        let handle = dns::serve(socket, resolve, upstreams)?;
        let mut inner = self.inner();
        match inner.tasks.get_mut(task_id) {
            Some(t) => {
                if let Some(old) = t.resolver.replace(handle.abort_handle()) {
                    old.abort();
                }
            }
            None => handle.abort(),
        }
        Ok(())
    }

    /// Removes everything task `task_id` had: its namespace (and with it its interfaces),
    /// its resolver, its lease, its files; and the sandboxes no task of this node uses any
    /// more. Safe to repeat.
    pub fn detach(&self, task_id: &str) {
        let _guard = self.plumbing.lock().unwrap_or_else(|p| p.into_inner());
        let (gone, unused) = {
            let mut inner = self.inner();
            let gone = inner.tasks.remove(task_id);
            if let Some(r) = gone.as_ref().and_then(|t| t.resolver.as_ref()) {
                r.abort();
            }
            let mut used: BTreeSet<String> =
                inner.tasks.values().flat_map(|t| t.networks.iter().cloned()).collect();
            used.extend(inner.ingress.as_ref().map(|i| i.network_id.clone()));
            let unused: Vec<(String, Sandbox)> = inner
                .sandboxes
                .keys()
                .filter(|id| !used.contains(*id))
                .cloned()
                .collect::<Vec<_>>()
                .into_iter()
                .filter_map(|id| inner.sandboxes.remove(&id).map(|s| (id, s)))
                .collect();
            if inner.leases.remove(task_id).is_some() {
                let _ = write_leases(&self.cfg.state_dir, &inner.leases);
            }
            (gone, unused)
        };
        let ns = gone.map(|t| t.netns).unwrap_or_else(|| self.task_netns(task_id));
        if Path::new(NETNS_DIR).join(&ns).exists() {
            if let Err(e) = cmd::ip(None, &[format!("netns del {ns}")]) {
                tracing::warn!(task = %task_id, error = %e, "could not remove a task's network namespace");
            }
        }
        let encrypted_gone = unused.iter().any(|(_, s)| s.encrypted);
        for (id, s) in unused {
            match cmd::ip(None, &[format!("netns del {}", s.netns)]) {
                Ok(()) => tracing::info!(network = %id, "overlay sandbox removed"),
                Err(e) => {
                    tracing::warn!(network = %id, error = %e, "could not remove an overlay sandbox")
                }
            }
        }
        if encrypted_gone {
            self.sync_tunnel();
        }
        let _ = std::fs::remove_dir_all(self.etc_dir(task_id));
        if let Err(e) = self.program_mesh() {
            tracing::warn!(error = %e, "could not program the node's published ports");
        }
    }

    /// Takes over the plumbing of a task an earlier agent started: its namespace is kept as it
    /// is; the resolver and balancer are set up again. `false` if it has none.
    pub fn adopt(&self, task: &Task) -> Result<bool, NetError> {
        let _guard = self.plumbing.lock().unwrap_or_else(|p| p.into_inner());
        let ns = self.task_netns(&task.id);
        if !Path::new(NETNS_DIR).join(&ns).exists() {
            return Ok(false);
        }
        let mut networks = Vec::new();
        for a in &task.networks {
            if let Some(n) = &a.network {
                self.ensure_sandbox(n)?;
                networks.push(n.id.clone());
            }
        }
        {
            let mut inner = self.inner();
            let gw = inner.leases.get(&task.id).copied();
            let mut net = TaskNet::new(ns);
            net.networks = networks;
            net.host_ports = host_ports(task);
            net.gw = gw;
            net.upstreams = upstreams_of(&task_dns(task));
            inner.tasks.insert(task.id.clone(), net);
        }
        self.program_lb(&task.id)?;
        self.program_mesh()?;
        Ok(true)
    }

    /// Takes network maps from the managers: the overlays' forwarding and neighbour tables
    /// and every task's balancer follow them.
    pub fn update(&self, maps: Vec<NetworkMap>, removed: &[String], complete: bool) {
        {
            let mut inner = self.inner();
            if complete {
                inner.maps.clear();
            }
            for id in removed {
                inner.maps.remove(id);
            }
            for m in maps {
                if let Some(n) = &m.network {
                    inner.maps.insert(n.id.clone(), m);
                }
            }
        }
        let _guard = self.plumbing.lock().unwrap_or_else(|p| p.into_inner());
        self.sync_tunnel();
        if let Err(e) = self.sync_ingress() {
            tracing::warn!(error = %e, "could not set up the node's leg on the ingress network");
        }
        let sandboxes: Vec<String> = self.inner().sandboxes.keys().cloned().collect();
        for id in sandboxes {
            if let Err(e) = self.sync_peers(&id) {
                tracing::warn!(network = %id, error = %e, "could not program the overlay's peers");
            }
        }
        // Every task's balancer follows, on the balancer thread: a burst of changes (50
        // replicas starting or stopping) becomes a few rewrites per task, not one per change.
        {
            let mut inner = self.inner();
            let ids: Vec<String> = inner.tasks.keys().cloned().collect();
            inner.lb_dirty.extend(ids);
        }
        self.lb_wake.notify_one();
        if let Err(e) = self.program_mesh() {
            tracing::warn!(error = %e, "could not program the node's published ports");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_come_from_addresses_and_names_fit_in_an_interface_name() {
        assert_eq!(mac_of(Ipv4Addr::new(10, 0, 1, 7)), "02:42:0a:00:01:07");
        let name = format!("vo{}", short(&["a-task-id-that-is-long", "net"]));
        assert!(name.len() <= 15, "{name}");
        assert_ne!(short(&["a", "b"]), short(&["a", "c"]));
    }

    #[test]
    fn leases_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = BTreeMap::new();
        l.insert("t1".to_string(), Ipv4Addr::new(172, 31, 0, 2));
        write_leases(dir.path(), &l).unwrap();
        assert_eq!(read_leases(&dir.path().join("gw-leases")), l);
    }
}
