//! The chaos runner on real hosts (see `shoal_testkit::chaos`): managers and workers as
//! `shoald` processes in network namespaces, random faults (kill -9, SIGSTOP, partitions of one
//! host, of a pair, of a majority, a lossy slow link, a clock jump, a full disk) while client
//! threads create, update and remove services and secrets through `shoal`; the history of
//! every call must be linearizable, and afterwards the cluster converges, runs no slot twice
//! and holds secrets only where a task needs them.
//!
//! - `chaos_short` runs in the normal suite: 3 managers and a worker, 75 s of faults.
//! - `chaos_long` (`cargo test --test chaos chaos_long -- --ignored --nocapture`): 5 managers
//!   and 2 workers, 10 minutes. (`-- --ignored --test-threads=1` runs it and the known-bug
//!   scenario below one after the other; on two cores, at once is too much.)
//!
//! `SHOAL_CHAOS_SECS` sets the duration and `SHOAL_CHAOS_SEED` the seed (printed at the start,
//! so a failing run can be replayed). A seed that found a bug is kept below as a test of its
//! own. Needs root and Debian's `faketime`; under CI (env `CI`) it must run.

use shoal_testkit::chaos::{self, ChaosConfig, Planned};

#[test]
fn chaos_short() {
    let mut cfg = ChaosConfig::from_env("chaos_short", 75, 3, 1);
    // Full disks on the worker only, until `full_disk_on_the_leader` passes.
    cfg.disk_on_managers = false;
    chaos::run(&cfg);
}

#[test]
#[ignore = "a long run: cargo test --test chaos -- --ignored --nocapture"]
fn chaos_long() {
    chaos::run(&ChaosConfig::from_env("chaos_long", 600, 5, 2));
}

/// The leader's disk fills up for a few seconds under load, twice, then frees: it must either
/// exit (and come back when restarted) or carry on; afterwards every manager is Reachable and
/// answers, and the history is linearizable.
///
/// Known bug, found by the long run (seed 11) and reproduced here: a manager whose Raft member
/// stops on the full disk ("raft stopped: this manager can no longer take part") sometimes
/// never exits as `shoald` means it to (no "this manager cannot go on" line follows), so it
/// stays Unreachable and answers "this manager's raft member has stopped" until killed.
#[test]
#[ignore = "known bug: a manager whose Raft member stopped on a full disk may not exit"]
fn full_disk_on_the_leader() {
    let mut cfg = ChaosConfig::with_seed("chaos_full_disk", 7, 0, 3, 1);
    cfg.plan = Some(vec![(Planned::DiskOfLeader, 5000), (Planned::DiskOfLeader, 5000)]);
    chaos::run(&cfg);
}

/// A manager's wall clock jumps two hours back for a few seconds, then forward 40 minutes,
/// then back to true time: afterwards every node is Ready again and the history is
/// linearizable.
#[test]
#[ignore = "a scenario of the long run (seed 11): see the report"]
fn clock_jumps_on_a_manager() {
    let mut cfg = ChaosConfig::with_seed("chaos_clock", 5, 0, 3, 1);
    let jump = |offset: &str| (Planned::Clock(offset.into()), 5000);
    cfg.plan = Some(vec![jump("-2h"), jump("+40m"), jump("-25m")]);
    chaos::run(&cfg);
}
