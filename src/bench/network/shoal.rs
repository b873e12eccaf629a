//! Shoal: two shoalds, the product binary, on two namespace hosts.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use shoal_testkit::netns::ps::{parse_ps, wait_running};
use shoal_testkit::netns::{all_ready, stdout, text, Net, Node};
use shoal_testkit::poll::blocking::try_eventually;

use super::cluster::{Blocked, Cluster, Mode, Route};
use super::{network_create, overlays, NetworkArgs, CLIENT, IMAGE, NETWORK, SERVER};

/// Two `shoald`s (the product binary) on two namespace hosts, in one swarm, with the overlay
/// networks, the iperf3 server on n1 and the client on n2. Dropping it kills the nodes, deletes
/// their containers and task namespaces, then the hosts.
pub(super) struct ShoalSide {
    nodes: Vec<Node>,
    net: Net,
    /// The overlays every service joins.
    overlays: &'static [&'static str],
    _dir: tempfile::TempDir,
}

impl ShoalSide {
    pub(super) fn start(args: &NetworkArgs, subnet: u8, tar: &Path) -> Result<ShoalSide> {
        let shoald = match &args.shoald {
            Some(p) => p.clone(),
            None => std::env::current_exe()?.with_file_name("shoald"),
        };
        if !shoald.exists() {
            bail!("no shoald at {} (cargo build --release, or --shoald PATH)", shoald.display());
        }
        let dir = tempfile::Builder::new().prefix("sbn-shoal").tempdir()?;
        let net = Net::with("nb", 246, subnet, 2);
        let nodes = (1..=2).map(|i| Node::new(&net, i, dir.path()).with_product_shoald(&shoald));
        let overlays = overlays(args);
        let mut side = ShoalSide { nodes: nodes.collect(), net, overlays, _dir: dir };
        side.form_swarm(tar)?;
        for name in overlays {
            side.nodes[0].must_shoal(&network_create(name));
        }
        side.create(SERVER, 1, "n1", &["/usr/bin/iperf3", "-s"], &[])?;
        side.create(CLIENT, 1, "n2", &["/bin/sleep", "100000000"], &[])?;
        Ok(side)
    }

    fn form_swarm(&mut self, tar: &Path) -> Result<()> {
        for n in self.nodes.iter_mut() {
            n.start();
            n.must_shoal(&["image", "import", &tar.to_string_lossy(), IMAGE]);
        }
        let (n1, ip1, listen) = (&self.nodes[0], self.net.ip(1), self.net.addr(1));
        n1.must_shoal(&["swarm", "init", "--advertise-addr", &ip1, "--listen-addr", &listen]);
        let token = n1.must_shoal(&["swarm", "join-token", "-q", "worker"]);
        let out = self.nodes[1].join(token.trim(), &listen);
        if !out.status.success() {
            bail!("n2 could not join: {}", text(&out));
        }
        try_eventually("2 nodes Ready", Duration::from_secs(30), || {
            all_ready(&self.nodes[0], &["n1", "n2"])
        })
        .map_err(anyhow::Error::msg)
    }

    /// `service create` on the overlays, every task on `node`, and waits for them to run.
    fn create(&self, name: &str, n: usize, node: &str, cmd: &[&str], extra: &[&str]) -> Result<()> {
        let n1 = &self.nodes[0];
        let (replicas, constraint) = (n.to_string(), format!("node.hostname=={node}"));
        let mut args = vec!["service", "create", "--detach", "--name", name, "--replicas"];
        args.extend([replicas.as_str(), "--constraint", &constraint]);
        args.extend(self.overlays.iter().flat_map(|o| ["--network", o]));
        args.extend(extra);
        args.push(IMAGE);
        args.extend(cmd);
        n1.must_shoal(&args);
        wait_running(n1, name, n, Duration::from_secs(60));
        Ok(())
    }

    /// The subnet of overlay `network`, as `network inspect` gives it.
    fn subnet(&self, network: &str) -> Result<String> {
        let out = self.nodes[0].must_shoal(&["network", "inspect", network]);
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let subnet = v[0]["IPAM"]["Config"][0]["Subnet"].as_str();
        Ok(subnet.with_context(|| format!("no subnet in {out}"))?.to_string())
    }

    /// The full IDs of the running tasks of `service`.
    fn task_ids(&self, service: &str) -> Result<Vec<String>> {
        let out = self.nodes[0].must_shoal(&["service", "ps", "--no-trunc", service]);
        let rows = if out.trim().is_empty() { Vec::new() } else { parse_ps(&out) };
        let ids: Vec<String> = rows
            .into_iter()
            .filter(|r| r.desired == "Running" && r.state == "Running")
            .map(|r| r.id)
            .collect();
        match ids.is_empty() {
            true => bail!("no running task of {service}:\n{out}"),
            false => Ok(ids),
        }
    }
}

/// `/run/netns/shoal-<node tag>-<task>`, where the agent put the task's namespace.
fn shoal_task_netns(task: &str) -> Result<PathBuf> {
    let suffix = format!("-{task}");
    for e in std::fs::read_dir("/run/netns")?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("shoal-") && name.ends_with(&suffix) {
            return Ok(e.path());
        }
    }
    bail!("no namespace of task {task} under /run/netns")
}

/// The IPv4 address the namespace at `ns` has in `subnet` (a task's interfaces need not
/// follow the order of its networks).
fn addr_in(ns: &Path, subnet: &str) -> Result<Ipv4Addr> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["ip", "-4", "-o", "addr", "show"])
        .output()?;
    let listing = stdout(&out);
    let words: Vec<&str> = listing.split_whitespace().collect();
    let addr = words.windows(2).filter(|w| w[0] == "inet").find_map(|w| {
        let addr = w[1].split('/').next()?.parse().ok()?;
        within(addr, subnet).then_some(addr)
    });
    addr.with_context(|| format!("no address in {subnet} in {}: {}", ns.display(), text(&out)))
}

/// Whether `addr` is in `subnet` (`a.b.c.d/len`).
fn within(addr: Ipv4Addr, subnet: &str) -> bool {
    let Some((net, len)) = subnet.split_once('/') else { return false };
    let (Ok(net), Ok(len)) = (net.parse::<Ipv4Addr>(), len.parse::<u32>()) else { return false };
    let mask = u32::MAX.checked_shl(32 - len.min(32)).unwrap_or(0);
    u32::from(addr) & mask == u32::from(net) & mask
}

impl Cluster for ShoalSide {
    fn label(&self) -> &'static str {
        "shoal"
    }

    fn net(&self) -> &Net {
        &self.net
    }

    fn route(&self) -> Result<Route> {
        let route = self.task_route(NETWORK)?;
        Ok(Route { vip: Some(self.vip(SERVER)?), ..route })
    }

    fn task_route(&self, network: &str) -> Result<Route> {
        let client = shoal_task_netns(&self.task_ids(CLIENT)?[0])?;
        let server = shoal_task_netns(&self.task_ids(SERVER)?[0])?;
        let direct = addr_in(&server, &self.subnet(network)?)?;
        Ok(Route { client, server, vip: None, direct })
    }

    fn no_vip(&self) -> Option<&'static str> {
        None
    }

    fn no_encryption(&self) -> Option<Blocked> {
        // The tunnel is userspace WireGuard over a TUN device and UDP: nothing to ask.
        None
    }

    fn start_pair(&self, name: &str, mode: Mode) -> Result<()> {
        let mut extra = vec!["--restart-condition", "none"];
        if mode == Mode::Dnsrr {
            extra.extend(["--endpoint-mode", "dnsrr"]);
        }
        self.create(name, 2, "n1", &["/usr/bin/iperf3", "-s"], &extra)
    }

    fn vip(&self, service: &str) -> Result<Ipv4Addr> {
        let out = self.nodes[0].must_shoal(&["service", "inspect", service]);
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let addr = v[0]["Endpoint"]["VirtualIPs"][0]["Addr"].as_str();
        let addr = addr.with_context(|| format!("no virtual IP in {out}"))?;
        Ok(addr.split('/').next().unwrap_or_default().parse()?)
    }

    fn victim(&self, name: &str) -> Result<Vec<i32>> {
        let ns = shoal_task_netns(&self.task_ids(name)?[0])?;
        let ns = ns.file_name().context("a namespace name")?.to_string_lossy().into_owned();
        let out = Command::new("ip").args(["netns", "pids", &ns]).output()?;
        let pids: Vec<i32> =
            stdout(&out).split_whitespace().filter_map(|p| p.parse().ok()).collect();
        match pids.is_empty() {
            true => bail!("no process in {ns}"),
            false => Ok(pids),
        }
    }

    fn remove(&self, name: &str) -> Result<()> {
        let n1 = &self.nodes[0];
        n1.must_shoal(&["service", "rm", name]);
        try_eventually(&format!("{name}'s tasks gone"), Duration::from_secs(60), || {
            let out = n1.shoal(&["service", "ps", name]);
            let gone = !out.status.success() || stdout(&out).lines().count() <= 1;
            gone.then_some(()).ok_or_else(|| stdout(&out))
        })
        .map_err(anyhow::Error::msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_matched_to_subnets() {
        let a: Ipv4Addr = "10.0.2.7".parse().unwrap();
        assert!(within(a, "10.0.2.0/24") && within(a, "10.0.0.0/16") && within(a, "0.0.0.0/0"));
        assert!(!within(a, "10.0.1.0/24") && !within(a, "10.0.2.6/32") && !within(a, "bad"));
    }
}
