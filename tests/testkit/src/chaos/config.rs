//! What one chaos run does: how long, with which seed, on how many hosts.

use std::time::Duration;

use super::faults::Fault;
use crate::netns::{parse_node_ls, Node};

/// The knobs of a run. The seed decides every random choice of the runner (faults, targets,
/// operations, timings); the cluster's own timing still varies, so a replay repeats the same
/// plan, not necessarily the same interleaving.
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    /// Names the run in messages and keeps its hosts apart from other tests'.
    pub name: String,
    pub seed: u64,
    /// How long faults are injected and clients write.
    pub duration: Duration,
    pub managers: usize,
    pub workers: usize,
    /// Client threads.
    pub clients: usize,
    /// Services (and secrets) the clients touch: names `svc0…`, `sec0…`.
    pub objects: usize,
    /// Secrets made before the run that services name and nobody removes.
    pub pinned: usize,
    /// Whether a full disk may hit a manager (off: workers only, to set a known problem of
    /// managers aside while another run looks for others).
    pub disk_on_managers: bool,
    /// Whether each node's log lives outside its data root (so a full disk loses none of it).
    /// Off, the log shares the full disk, as `/var` often does.
    pub log_outside: bool,
    /// Faults in this order, each held so many milliseconds, instead of random ones for
    /// `duration` (a regression test's scenario).
    pub plan: Option<Vec<(Planned, u64)>>,
}

/// A fault of a plan, on a node named by index or by role at the time it is injected.
#[derive(Clone, Debug)]
pub enum Planned {
    Fault(Fault),
    /// The data root of whichever manager leads then fills up.
    DiskOfLeader,
    /// The wall clock of the node under libfaketime moves by this offset (`-2h`).
    Clock(String),
}

impl Planned {
    /// The fault on `nodes` now (the leader as `node ls` through the first node names it;
    /// `clock`: the node under libfaketime).
    pub fn resolve(&self, nodes: &[Node], clock: usize) -> Fault {
        match self {
            Planned::Fault(f) => f.clone(),
            Planned::Clock(offset) => Fault::Clock(clock, offset.clone()),
            Planned::DiskOfLeader => {
                // Through the first node that answers (the last leader may have exited).
                let listed = nodes.iter().find_map(|n| {
                    let out = n.shoal(&["node", "ls"]);
                    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
                });
                let rows = listed.map(|l| parse_node_ls(&l)).unwrap_or_default();
                let leader = rows.iter().find(|r| r.manager_status == "Leader");
                let name = leader.map(|r| r.hostname.clone()).unwrap_or_default();
                Fault::Disk(nodes.iter().position(|n| n.name == name).unwrap_or(0))
            }
        }
    }
}

impl ChaosConfig {
    /// A run of `secs` seconds (unless env `SHOAL_CHAOS_SECS` says otherwise) with the seed of
    /// env `SHOAL_CHAOS_SEED`, or a fresh one.
    pub fn from_env(name: &str, secs: u64, managers: usize, workers: usize) -> ChaosConfig {
        let secs = env_u64("SHOAL_CHAOS_SECS").unwrap_or(secs);
        let seed = env_u64("SHOAL_CHAOS_SEED").unwrap_or_else(rand::random);
        ChaosConfig::with_seed(name, seed, secs, managers, workers)
    }

    /// A run with this seed, whatever the environment says (a kept regression seed).
    pub fn with_seed(
        name: &str,
        seed: u64,
        secs: u64,
        managers: usize,
        workers: usize,
    ) -> ChaosConfig {
        ChaosConfig {
            name: name.to_string(),
            seed,
            duration: Duration::from_secs(secs),
            managers,
            workers,
            clients: 4,
            objects: 3,
            pinned: 2,
            disk_on_managers: true,
            log_outside: true,
            plan: None,
        }
    }

    pub fn hosts(&self) -> usize {
        self.managers + self.workers
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}
