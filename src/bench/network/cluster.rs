//! What a system under test offers the measurements: the path from the client task to the
//! server service, and the cluster behind it; and the bare path, which offers only the former.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};
use shoal_testkit::netns::Net;

use super::IPERF_PORT;

/// The path one measurement takes: from the client's network namespace to the server's.
#[derive(Debug, Clone)]
pub(super) struct Route {
    /// `/run/netns/…` or `/proc/PID/ns/net`.
    pub(super) client: PathBuf,
    pub(super) server: PathBuf,
    /// The server service's virtual IP, where the system can balance one here.
    pub(super) vip: Option<Ipv4Addr>,
    /// The server task's own address on the overlay (host 1's address, bare).
    pub(super) direct: Ipv4Addr,
}

/// How a service is reached: a virtual IP, or DNS round robin over its tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Vip,
    Dnsrr,
}

/// What keeps an encrypted overlay from passing traffic on this machine.
#[derive(Debug, Clone)]
pub(super) struct Blocked {
    /// In a few words, for the table.
    pub(super) what: &'static str,
    /// What the machine answered when asked, for the note under it.
    pub(super) said: String,
}

/// A two-host cluster with the server and client services running.
pub(super) trait Cluster {
    fn label(&self) -> &'static str;
    /// Its two hosts.
    fn net(&self) -> &Net;
    /// From the client task to the server service.
    fn route(&self) -> Result<Route>;
    /// From the client task to the server task's address on overlay `network`; no VIP.
    fn task_route(&self, network: &str) -> Result<Route>;
    /// Why this system's virtual IPs cannot work on this machine, if they cannot.
    fn no_vip(&self) -> Option<&'static str>;
    /// What on this machine keeps this system's encrypted overlay from passing traffic, if
    /// the machine shows something (asked once a connection over it failed).
    fn no_encryption(&self) -> Option<Blocked>;
    /// Creates service `name`: 2 iperf3 servers on host 1, never restarted, on the overlay,
    /// reached as `mode` says; returns once both tasks run.
    fn start_pair(&self, name: &str, mode: Mode) -> Result<()>;
    fn vip(&self, service: &str) -> Result<Ipv4Addr>;
    /// Host PIDs of every process of one running task of `name`.
    fn victim(&self, name: &str) -> Result<Vec<i32>>;
    /// Removes service `name` and waits until its tasks are gone.
    fn remove(&self, name: &str) -> Result<()>;
}

/// The bare path: iperf3's server in host 1's own namespace, dialled from host 2's.
pub(super) struct Bare {
    pub(super) route: Route,
    server: Child,
}

impl Bare {
    pub(super) fn start(net: &Net) -> Result<Bare> {
        let (ns1, ns2) =
            (Path::new("/run/netns").join(net.ns(1)), Path::new("/run/netns").join(net.ns(2)));
        let server = Command::new("nsenter")
            .arg(format!("--net={}", ns1.display()))
            .args(["iperf3", "-s", "-p", &IPERF_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s on host 1")?;
        let direct = net.ip(1).parse()?;
        Ok(Bare { route: Route { client: ns2, server: ns1, vip: None, direct }, server })
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
