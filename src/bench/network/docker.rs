//! Docker Swarm: two dockerds, started in two namespace hosts with roots of their own.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use shoal_testkit::netns::{stderr, DockerSwarm, Net};
use shoal_testkit::poll::blocking::try_eventually;

use super::cluster::{Blocked, Cluster, Mode, Route};
use super::{network_create, overlays, NetworkArgs, CLIENT, IMAGE, NETWORK, SERVER};

/// Two `dockerd`s on two namespace hosts, in one swarm (host 1 the manager), with attachable
/// overlay networks, the iperf3 server on host 1 and the client on host 2.
pub(super) struct DockerSide {
    pub(super) swarm: DockerSwarm,
    net: Net,
    /// The overlays every service joins.
    overlays: &'static [&'static str],
}

impl DockerSide {
    pub(super) fn start(args: &NetworkArgs, subnet: u8, tar: &Path) -> Result<DockerSide> {
        let net = Net::with("nd", 246, subnet, 2);
        let swarm = DockerSwarm::start(&net, &args.docker, &args.dockerd)?;
        let side = DockerSide { swarm, net, overlays: overlays(args) };
        for i in 0..2 {
            side.swarm.docker(i, &["import", &tar.to_string_lossy(), IMAGE])?;
        }
        for name in side.overlays {
            let mut create = network_create(name);
            create.insert(2, "--attachable");
            side.swarm.docker(0, &create)?;
        }
        side.create(SERVER, 1, "manager", &["/usr/bin/iperf3", "-s"], &[])?;
        side.create(CLIENT, 1, "worker", &["/bin/sleep", "100000000"], &[])?;
        Ok(side)
    }

    /// `service create` on the overlays with every task on the node of `role`, and waits until
    /// that node runs `n` containers of it.
    fn create(&self, name: &str, n: usize, role: &str, cmd: &[&str], extra: &[&str]) -> Result<()> {
        let (replicas, constraint) = (n.to_string(), format!("node.role=={role}"));
        let mut args = vec!["service", "create", "--detach", "--quiet", "--no-resolve-image"];
        args.extend(["--name", name, "--replicas", &replicas]);
        args.extend(self.overlays.iter().flat_map(|o| ["--network", o]));
        args.extend(["--constraint", &constraint]);
        args.extend(extra);
        args.push(IMAGE);
        args.extend(cmd);
        self.swarm.docker(0, &args)?;
        let node = if role == "manager" { 0 } else { 1 };
        try_eventually(&format!("{n} containers of {name}"), Duration::from_secs(60), || {
            let ids = self.swarm.containers(node, name).map_err(|e| format!("{e:#}"))?;
            (ids.len() == n).then_some(()).ok_or(format!("{} running", ids.len()))
        })
        .map_err(anyhow::Error::msg)
    }

    /// The first running container of `service` on daemon `i`.
    fn container(&self, i: usize, service: &str) -> Result<String> {
        let id = self.swarm.containers(i, service)?.into_iter().next();
        id.with_context(|| format!("no running container of {service}"))
    }
}

impl Cluster for DockerSide {
    fn label(&self) -> &'static str {
        "docker swarm"
    }

    fn net(&self) -> &Net {
        &self.net
    }

    fn route(&self) -> Result<Route> {
        let route = self.task_route(NETWORK)?;
        let vip = match self.no_vip() {
            None => Some(self.vip(SERVER)?),
            Some(_) => None,
        };
        Ok(Route { vip, ..route })
    }

    fn task_route(&self, network: &str) -> Result<Route> {
        let netns = |pid: i32| PathBuf::from(format!("/proc/{pid}/ns/net"));
        let client = netns(self.swarm.pid(1, &self.container(1, CLIENT)?)?);
        let server_id = self.container(0, SERVER)?;
        let server = netns(self.swarm.pid(0, &server_id)?);
        let f = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
        let direct = self.swarm.docker(0, &["inspect", "-f", &f, &server_id])?.trim().parse()?;
        Ok(Route { client, server, vip: None, direct })
    }

    fn no_vip(&self) -> Option<&'static str> {
        // Swarm balances a virtual IP with IPVS in each container's namespace; dockerd loads
        // the module when it can. Its table shows in the namespace of host 1's dockerd.
        let dockerd = self.swarm.dockerd_pid(0);
        let ipvs = Path::new(&format!("/proc/{dockerd}/net/ip_vs")).exists();
        (!ipvs).then_some("no IPVS in this kernel")
    }

    fn no_encryption(&self) -> Option<Blocked> {
        esp_refused(&self.net.ns(1))
    }

    fn start_pair(&self, name: &str, mode: Mode) -> Result<()> {
        let mut extra = vec!["--restart-condition", "none"];
        if mode == Mode::Dnsrr {
            extra.extend(["--endpoint-mode", "dnsrr"]);
        }
        self.create(name, 2, "manager", &["/usr/bin/iperf3", "-s"], &extra)
    }

    fn vip(&self, service: &str) -> Result<Ipv4Addr> {
        let f = "{{range .Endpoint.VirtualIPs}}{{.Addr}} {{end}}";
        let out = self.swarm.docker(0, &["service", "inspect", "-f", f, service])?;
        let addr = out.split_whitespace().next();
        let addr = addr.with_context(|| format!("no virtual IP of {service}"))?;
        Ok(addr.split('/').next().unwrap_or_default().parse()?)
    }

    fn victim(&self, name: &str) -> Result<Vec<i32>> {
        Ok(vec![self.swarm.pid(0, &self.container(0, name)?)?])
    }

    fn remove(&self, name: &str) -> Result<()> {
        self.swarm.docker(0, &["service", "rm", name])?;
        let label = format!("label=com.docker.swarm.service.name={name}");
        try_eventually(&format!("{name}'s containers gone"), Duration::from_secs(60), || {
            let out = self.swarm.docker_text(0, &["ps", "-aq", "--filter", &label])?;
            out.trim().is_empty().then_some(()).ok_or(out)
        })
        .map_err(anyhow::Error::msg)
    }
}

/// Whether the kernel refuses IPsec ESP, which Swarm's encrypted overlays are made of: an ESP
/// security association (AES-CBC, HMAC-SHA256; documentation addresses) added in host
/// namespace `ns`, and taken out again if the kernel took it.
fn esp_refused(ns: &str) -> Option<Blocked> {
    let key = |bytes: usize| format!("0x{}", "5b".repeat(bytes));
    let sa = ["src", "192.0.2.1", "dst", "192.0.2.2", "proto", "esp", "spi", "0x5b0a1"];
    let (enc, auth) = (key(16), key(32));
    let mut add = vec!["-n", ns, "xfrm", "state", "add"];
    add.extend(sa);
    add.extend(["mode", "transport", "enc", "cbc(aes)", &enc, "auth", "hmac(sha256)", &auth]);
    let out = Command::new("ip").args(&add).output().ok()?;
    if out.status.success() {
        let _ = Command::new("ip").args(["-n", ns, "xfrm", "state", "delete"]).args(sa).output();
        return None;
    }
    let said = format!("ip xfrm state add ... proto esp: {}", stderr(&out).trim());
    Some(Blocked { what: "no IPsec ESP", said })
}
