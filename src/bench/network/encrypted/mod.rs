//! `--encrypted`: task to task on each system's encrypted overlay, beside its plain overlay and
//! the bare path, all measured in the same run, and encrypted over plain run by run. A path
//! that passes no TCP connection within a bounded time is recorded as such, with what the
//! machine says keeps it shut, instead of a figure. Owns these figures and their table; never
//! creates anything (the sides made both overlays and put both services on them).

mod table;

use std::time::Duration;

use anyhow::Result;

use super::cluster::{Blocked, Cluster, Route};
use super::measure::{connects, iperf3, tcp_rr};
use super::run::report;
use super::{go_on, NetworkArgs, ENCRYPTED, NETWORK};
use crate::common::percentile;

pub(super) use table::print_table;

/// The columns: each system's encrypted overlay then its plain one, then the bare path.
const WHO: [&str; 5] =
    ["shoal encrypted", "shoal plain", "docker encrypted", "docker plain", "bare veth"];
/// The bare path's column.
const BARE: usize = 4;

/// One column's figures, one entry per run that produced it.
#[derive(Debug, Default)]
pub(super) struct Column {
    /// iperf3's received rate to the server task, Gbit/s.
    gbits: Vec<f64>,
    /// Per run, the rate over the bare path's in the same run.
    of_bare: Vec<f64>,
    /// Per run (encrypted columns), the rate over the same system's plain overlay's.
    of_plain: Vec<f64>,
    rr_p50: Vec<Duration>,
    rr_p99: Vec<Duration>,
    /// Per run (encrypted columns), p50 and p99 over the plain overlay's in the same run.
    p50_of_plain: Vec<f64>,
    p99_of_plain: Vec<f64>,
    /// Runs in which the path was tried, those in which no TCP connection got through, and
    /// the last such failure.
    tried: usize,
    silent: usize,
    failure: Option<String>,
    /// What the machine says keeps the path shut, when asked after a failure.
    blocked: Option<Blocked>,
}

/// Every column's figures, in the order of [`WHO`].
pub(super) type Columns = [Column; 5];

/// The plain column of the same system as encrypted column `i`.
fn plain_of(i: usize) -> Option<usize> {
    (i < BARE && i.is_multiple_of(2)).then_some(i + 1)
}

/// One run: which paths pass traffic, then iperf3 and the request/response loop on each that
/// does, printing each figure as it comes.
pub(super) fn measure_run(
    args: &NetworkArgs,
    run: usize,
    sides: &[Option<&dyn Cluster>; 2],
    bare: Option<&Route>,
    columns: &mut Columns,
) -> Result<()> {
    let mut routes = routes(sides, bare);
    drop_silent(sides, &mut routes, columns)?;
    // Each kind recorded as soon as taken: an interrupted run keeps what it measured.
    record_gbits(columns, throughput(args.duration, run, &routes)?);
    record_rtts(columns, latency(args.pings, run, &routes)?);
    Ok(())
}

/// Per column, the path from the client task to the server task (`None` where the system is
/// not up or its tasks cannot be found).
fn routes(sides: &[Option<&dyn Cluster>; 2], bare: Option<&Route>) -> [Option<Route>; 5] {
    let mut routes: [Option<Route>; 5] = Default::default();
    for (s, side) in sides.iter().enumerate() {
        let Some(side) = side else { continue };
        for (k, network) in [ENCRYPTED, NETWORK].into_iter().enumerate() {
            let i = 2 * s + k;
            let route = side.task_route(network);
            routes[i] = route.map_err(|e| println!("  {:<13} {e:#}", WHO[i])).ok();
        }
    }
    routes[BARE] = bare.cloned();
    routes
}

/// Takes out the paths that pass no TCP connection, recording that in their columns.
fn drop_silent(
    sides: &[Option<&dyn Cluster>; 2],
    routes: &mut [Option<Route>; 5],
    columns: &mut Columns,
) -> Result<()> {
    for (i, slot) in routes.iter_mut().enumerate() {
        let Some(route) = slot else { continue };
        go_on()?;
        columns[i].tried += 1;
        let Err(e) = connects(route) else { continue };
        println!("  {:<13} passes no traffic: {e:#}", WHO[i]);
        let encrypted = plain_of(i).and(sides.get(i / 2).copied().flatten());
        silent(&mut columns[i], encrypted, e);
        *slot = None;
    }
    Ok(())
}

/// Records a run in which `column` passed no traffic; `encrypted` is its system when it is an
/// encrypted overlay's, asked what keeps it shut.
fn silent(column: &mut Column, encrypted: Option<&dyn Cluster>, failure: anyhow::Error) {
    column.silent += 1;
    column.failure = Some(format!("{failure:#}"));
    if let Some(blocked) = encrypted.and_then(|side| side.no_encryption()) {
        column.blocked = Some(blocked);
    }
}

/// iperf3 to the server task on every path; which goes first turns with the run.
fn throughput(secs: u64, run: usize, routes: &[Option<Route>; 5]) -> Result<[Option<f64>; 5]> {
    let mut rates = [None; 5];
    for i in (0..5).map(|k| (k + run) % 5) {
        let Some(route) = &routes[i] else { continue };
        go_on()?;
        rates[i] = report("iperf3 to the task", WHO[i], iperf3(&route.client, route.direct, secs));
    }
    Ok(rates)
}

/// The request/response loop on every path, in the same turning order.
fn latency(
    pings: usize,
    run: usize,
    routes: &[Option<Route>; 5],
) -> Result<[Option<Vec<Duration>>; 5]> {
    let mut rtts: [Option<Vec<Duration>>; 5] = Default::default();
    for i in (0..5).map(|k| (k + run) % 5) {
        let Some(route) = &routes[i] else { continue };
        go_on()?;
        rtts[i] = report("request/response", WHO[i], tcp_rr(route, pings));
    }
    Ok(rtts)
}

/// `a / b` when both were measured.
fn over(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    a.zip(b).map(|(a, b)| a / b)
}

/// Adds one run's rates, with their ratios to the bare path's and the plain overlay's.
fn record_gbits(columns: &mut Columns, gbits: [Option<f64>; 5]) {
    for (i, c) in columns.iter_mut().enumerate() {
        c.gbits.extend(gbits[i]);
        if i != BARE {
            c.of_bare.extend(over(gbits[i], gbits[BARE]));
        }
        if let Some(p) = plain_of(i) {
            c.of_plain.extend(over(gbits[i], gbits[p]));
        }
    }
}

/// Adds one run's round-trip percentiles, with the encrypted ones over the plain overlay's.
fn record_rtts(columns: &mut Columns, rtts: [Option<Vec<Duration>>; 5]) {
    let at = |q: f64| rtts.each_ref().map(|r| r.as_ref().map(|r| percentile(r, q)));
    let (p50, p99) = (at(0.5), at(0.99));
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    for (i, c) in columns.iter_mut().enumerate() {
        c.rr_p50.extend(p50[i]);
        c.rr_p99.extend(p99[i]);
        if let Some(p) = plain_of(i) {
            c.p50_of_plain.extend(over(secs(p50[i]), secs(p50[p])));
            c.p99_of_plain.extend(over(secs(p99[i]), secs(p99[p])));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_columns_are_paired_with_their_systems_plain_ones() {
        let pairs: Vec<(usize, Option<usize>)> = (0..5).map(|i| (i, plain_of(i))).collect();
        assert_eq!(pairs, [(0, Some(1)), (1, None), (2, Some(3)), (3, None), (4, None)]);
    }

    #[test]
    fn ratios_are_of_the_same_run() {
        let mut columns = Columns::default();
        let ms = |n: u64| Some(vec![Duration::from_millis(n)]);
        record_gbits(&mut columns, [Some(6.0), Some(10.0), None, Some(9.0), Some(12.0)]);
        record_rtts(&mut columns, [ms(4), ms(2), None, ms(3), ms(1)]);
        assert_eq!(columns[0].of_plain, [0.6]);
        assert_eq!(columns[0].of_bare, [0.5]);
        assert_eq!(columns[0].p50_of_plain, [2.0]);
        // A path that passed nothing has no ratio, and neither has the bare path.
        assert!(columns[2].of_plain.is_empty() && columns[2].gbits.is_empty());
        assert!(columns[BARE].of_bare.is_empty() && columns[1].of_plain.is_empty());
    }
}
