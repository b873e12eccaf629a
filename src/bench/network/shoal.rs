//! Shoal: two shoalds, the product binary, on two namespace hosts.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use shoal_testkit::netns::ps::{parse_ps, wait_running};
use shoal_testkit::netns::{all_ready, stdout, text, Net, Node};
use shoal_testkit::poll::blocking::try_eventually;

use super::cluster::{Cluster, Mode, Route};
use super::{NetworkArgs, CLIENT, IMAGE, NETWORK, SERVER};

/// Two `shoald`s (the product binary) on two namespace hosts, in one swarm, with the overlay
/// network, the iperf3 server on n1 and the client on n2. Dropping it kills the nodes, deletes
/// their containers and task namespaces, then the hosts.
pub(super) struct ShoalSide {
    nodes: Vec<Node>,
    net: Net,
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
        let mut side = ShoalSide { nodes: nodes.collect(), net, _dir: dir };
        side.form_swarm(tar)?;
        side.nodes[0].must_shoal(&["network", "create", "-d", "overlay", NETWORK]);
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

    /// `service create` on the overlay, every task on `node`, and waits for them to run.
    fn create(&self, name: &str, n: usize, node: &str, cmd: &[&str], extra: &[&str]) -> Result<()> {
        let n1 = &self.nodes[0];
        let (replicas, constraint) = (n.to_string(), format!("node.hostname=={node}"));
        let mut args = vec!["service", "create", "--detach", "--name", name, "--replicas"];
        args.extend([replicas.as_str(), "--network", NETWORK, "--constraint", &constraint]);
        args.extend(extra);
        args.push(IMAGE);
        args.extend(cmd);
        n1.must_shoal(&args);
        wait_running(n1, name, n, Duration::from_secs(60));
        Ok(())
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

/// The IPv4 address of `eth0` inside the namespace at `ns`.
fn eth0_addr(ns: &Path) -> Result<Ipv4Addr> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
        .output()?;
    let words: Vec<String> = stdout(&out).split_whitespace().map(str::to_string).collect();
    let addr = words.iter().skip_while(|w| *w != "inet").nth(1);
    let addr =
        addr.with_context(|| format!("no address on eth0 in {}: {}", ns.display(), text(&out)))?;
    Ok(addr.split('/').next().unwrap_or_default().parse()?)
}

impl Cluster for ShoalSide {
    fn label(&self) -> &'static str {
        "shoal"
    }

    fn net(&self) -> &Net {
        &self.net
    }

    fn route(&self) -> Result<Route> {
        let client = shoal_task_netns(&self.task_ids(CLIENT)?[0])?;
        let server = shoal_task_netns(&self.task_ids(SERVER)?[0])?;
        let direct = eth0_addr(&server)?;
        Ok(Route { client, server, vip: Some(self.vip(SERVER)?), direct })
    }

    fn no_vip(&self) -> Option<&'static str> {
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
