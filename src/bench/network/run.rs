//! One run of every measurement on every system up: the figures it collects, and how each
//! reads as it comes.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::cluster::{Cluster, Mode, Route};
use super::measure::{iperf3, lookups, tcp_rr};
use super::removal::{removal, Removal};
use super::{caught, go_on, NetworkArgs, SERVER};
use crate::common::percentile;

/// Every figure of one system, one entry per run that produced it.
#[derive(Debug, Default)]
pub(super) struct Figures {
    /// iperf3's received rate to the service's virtual IP, Gbit/s.
    pub(super) vip_gbits: Vec<f64>,
    /// The same to the server task's own address (host 1's, bare).
    pub(super) direct_gbits: Vec<f64>,
    /// Per run, the rate to the virtual IP over the bare path's in the same run.
    pub(super) vip_of_bare: Vec<f64>,
    /// Per run, the rate to the task over the bare path's in the same run.
    pub(super) direct_of_bare: Vec<f64>,
    /// Per run (Shoal's column only), Shoal's rate over Docker's on the same kind of path:
    /// both through their virtual IPs if Docker's was measured, else both to the task.
    pub(super) of_docker: Vec<f64>,
    pub(super) rr_p50: Vec<Duration>,
    pub(super) rr_p99: Vec<Duration>,
    pub(super) dns_p50: Vec<Duration>,
    pub(super) dns_p99: Vec<Duration>,
    pub(super) dns_lost: usize,
    /// Kill → the virtual IP sends nothing more to the dead task.
    pub(super) out_of_vip: Vec<Duration>,
    /// Kill → DNS round robin answers nothing more with it.
    pub(super) out_of_dns: Vec<Duration>,
}

/// Column names, in the order of the figures: the two systems, then the bare path.
const WHO: [&str; 3] = ["shoal", "docker swarm", "bare veth"];

/// One run of every measurement on every system up, printing each figure as it comes.
pub(super) fn measure_run(
    args: &NetworkArgs,
    run: usize,
    sides: &[Option<&dyn Cluster>; 2],
    bare: Option<&Route>,
    figures: &mut [Figures; 3],
) -> Result<()> {
    let mut routes: Vec<Option<Route>> = sides
        .iter()
        .map(|s| s.and_then(|s| s.route().map_err(|e| println!("  {}: {e:#}", s.label())).ok()))
        .collect();
    routes.push(bare.cloned());
    throughput(args.duration, run, &routes, figures)?;
    for (i, route) in routes.iter().enumerate() {
        let Some(route) = route else { continue };
        if let Some(rtts) = report("request/response", WHO[i], tcp_rr(route, args.pings)) {
            figures[i].rr_p50.push(percentile(&rtts, 0.5));
            figures[i].rr_p99.push(percentile(&rtts, 0.99));
        }
    }
    for (i, route) in routes.iter().take(2).enumerate() {
        let Some(route) = route else { continue };
        let asked = lookups(&route.client, SERVER, args.lookups);
        if let Some((times, lost)) = report("lookups", WHO[i], asked) {
            figures[i].dns_p50.push(percentile(&times, 0.5));
            figures[i].dns_p99.push(percentile(&times, 0.99));
            figures[i].dns_lost += lost;
        }
    }
    for (i, side) in sides.iter().enumerate() {
        if let (Some(side), Some(route)) = (side, &routes[i]) {
            removals(run, *side, &route.client, &mut figures[i])?;
        }
    }
    Ok(())
}

/// iperf3 to the virtual IP (where there is one) and to the server task's own address.
/// Which system goes first turns with the run, so no one always meets the machine in the
/// same state.
fn throughput(
    secs: u64,
    run: usize,
    routes: &[Option<Route>],
    figures: &mut [Figures; 3],
) -> Result<()> {
    // Per column: [to the virtual IP, to the task].
    let mut rates = [[None; 2]; 3];
    for i in (0..3).map(|k| (k + run) % 3) {
        let Some(route) = &routes[i] else { continue };
        if let Some(vip) = route.vip {
            go_on()?;
            rates[i][0] = report("iperf3 to the VIP", WHO[i], iperf3(&route.client, vip, secs));
        }
        go_on()?;
        let rate = iperf3(&route.client, route.direct, secs);
        rates[i][1] = report("iperf3 to the task", WHO[i], rate);
    }
    for (f, [vip, direct]) in figures.iter_mut().zip(rates) {
        f.vip_gbits.extend(vip);
        f.direct_gbits.extend(direct);
        if let Some(bare) = rates[2][1] {
            f.vip_of_bare.extend(vip.map(|v| v / bare));
            f.direct_of_bare.extend(direct.map(|d| d / bare));
        }
    }
    let [shoal, docker, _] = rates;
    let like = match (shoal[0], docker[0]) {
        (Some(s), Some(d)) => Some(s / d),
        _ => shoal[1].zip(docker[1]).map(|(s, d)| s / d),
    };
    figures[0].of_docker.extend(like);
    Ok(())
}

/// A task's death, timed through the virtual IP (where the system has one here) and through
/// DNS round robin, each on a fresh 2-task service removed afterwards.
fn removals(run: usize, side: &dyn Cluster, client: &Path, figures: &mut Figures) -> Result<()> {
    let i = WHO.iter().position(|w| *w == side.label()).unwrap_or(0);
    for mode in [Mode::Vip, Mode::Dnsrr] {
        go_on()?;
        if mode == Mode::Vip && side.no_vip().is_some() {
            continue;
        }
        let name = format!("pair-{}-{}", if mode == Mode::Vip { "vip" } else { "dns" }, run + 1);
        let r = caught("removal", || removal(side, client, &name, mode));
        if let Err(e) = caught("service rm", || side.remove(&name)) {
            println!("  {:<13} {e:#}", side.label());
        }
        let what = match mode {
            Mode::Vip => "task killed, out of the VIP after",
            Mode::Dnsrr => "task killed, out of DNS answers after",
        };
        match (mode, report(what, WHO[i], r)) {
            (Mode::Vip, Some(r)) => figures.out_of_vip.push(r.after),
            (Mode::Dnsrr, Some(r)) => figures.out_of_dns.push(r.after),
            (_, None) => {}
        }
    }
    Ok(())
}

/// Prints one measurement's outcome for column `who`; the value if there is one.
pub(super) fn report<T: Shown>(what: &str, who: &str, r: Result<T>) -> Option<T> {
    match r {
        Ok(v) => {
            println!("  {who:<13} {what}: {}", v.shown());
            Some(v)
        }
        Err(e) => {
            println!("  {who:<13} {what}: failed: {e:#}");
            None
        }
    }
}

/// How a measurement reads in a run's report.
pub(super) trait Shown {
    fn shown(&self) -> String;
}

impl Shown for f64 {
    fn shown(&self) -> String {
        format!("{self:.2} Gbit/s")
    }
}

impl Shown for Removal {
    fn shown(&self) -> String {
        let ms = self.after.as_secs_f64() * 1e3;
        match self.failed {
            // Then the figure is only when the first attempt after the kill started.
            0 => format!("{ms:.0} ms (no attempt reached the dead task)"),
            n => format!("{ms:.0} ms ({n} attempts reached the dead task)"),
        }
    }
}

impl Shown for Vec<Duration> {
    fn shown(&self) -> String {
        format!("p50 {} p99 {}", us(percentile(self, 0.5)), us(percentile(self, 0.99)))
    }
}

impl Shown for (Vec<Duration>, usize) {
    fn shown(&self) -> String {
        format!("{} ({} lost)", self.0.shown(), self.1)
    }
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}
