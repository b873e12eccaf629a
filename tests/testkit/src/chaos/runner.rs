//! One chaos run from start to end: the cluster (managers and workers on netns hosts, each data
//! root a small tmpfs, one manager under libfaketime), clients and faults for the run's
//! duration, then every check, a printed report, and a panic listing the anomalies if any.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::checks;
use super::clients::{Clients, Endpoint, Names, IMAGE, NO_ANSWER};
use super::faults::{
    faketime_shm, faketime_works, faketime_wrapper, Fault, Faults, HostEvent, LIBFAKETIME,
};
use super::history::{Answer, History};
use super::linearizability::{check, Verdict, DEFAULT_BUDGET};
use super::model::{Input, Objects, Output};
use super::ChaosConfig;
use crate::image::busybox_tar;
use crate::netns::{all_ready, finish, quiet, root_or_skip, text, Net, Node, PORT};
use crate::poll::blocking::try_eventually;

/// How long the cluster may take to be whole again after the last fault, and each check to
/// come true.
const SETTLE: Duration = Duration::from_secs(120);
/// Size of each node's data root.
const DATA_SIZE: &str = "size=320m";

/// Runs `cfg`; panics with the report if anything was wrong. Skips without root (not in CI).
pub fn run(cfg: &ChaosConfig) {
    if !root_or_skip(&cfg.name) {
        return;
    }
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{} needs {LIBFAKETIME}: apt-get install faketime",
        cfg.name
    );
    eprintln!(
        "[{}] seed {} for {}s on {} managers and {} workers (replay: SHOAL_CHAOS_SEED={} \
         SHOAL_CHAOS_SECS={})",
        cfg.name,
        cfg.seed,
        cfg.duration.as_secs(),
        cfg.managers,
        cfg.workers,
        cfg.seed,
        cfg.duration.as_secs()
    );
    let started = Instant::now();
    let dir = tempfile::Builder::new().prefix("shoal-chaos-").tempdir().unwrap();
    // A tag per run (`c` and the first letter of the name's last word), so runs of one test
    // binary on parallel threads never share interfaces or namespaces.
    let last = cfg.name.rsplit('_').next().and_then(|w| w.chars().next()).unwrap_or('x');
    let tag = format!("c{}", last.to_ascii_lowercase());
    let net = Net::with(&tag, 243, (std::process::id() % 240 + 10) as u8, cfg.hosts());
    let mut nodes: Vec<Node> = (1..=cfg.hosts()).map(|i| Node::new(&net, i, dir.path())).collect();
    let _leftovers = Leftovers::mount(&nodes, cfg.log_outside);
    let result = catch_unwind(AssertUnwindSafe(|| story(cfg, &net, &mut nodes, dir.path())));
    finish(result, nodes, net, dir);
    eprintln!("[{}] passed in {:.1}s", cfg.name, started.elapsed().as_secs_f64());
}

/// What a run leaves outside the netns fixture's reach: the tmpfs data roots (the nodes
/// unmount what is under them; this catches a run that died before) and libfaketime's shared
/// memory files of processes that were killed.
struct Leftovers {
    mounts: Vec<PathBuf>,
    shm_before: Vec<PathBuf>,
}

impl Leftovers {
    fn mount(nodes: &[Node], log_outside: bool) -> Leftovers {
        let mut l = Leftovers { mounts: Vec::new(), shm_before: faketime_shm() };
        for n in nodes {
            std::fs::create_dir_all(&n.data).unwrap();
            let data = n.data.to_string_lossy().to_string();
            let ok = quiet("mount", &["-t", "tmpfs", "-o", DATA_SIZE, "tmpfs", &data]);
            assert!(ok, "mounting a tmpfs on {data}");
            l.mounts.push(n.data.clone());
            // The log lives outside the tmpfs: a full disk loses none of it, and it stays
            // after the run (beside the data root, kept on a failure).
            if log_outside {
                let outside = n.data.with_extension("log");
                std::os::unix::fs::symlink(&outside, n.log()).expect("linking the node's log");
            }
        }
        l
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for m in &self.mounts {
            quiet("umount", &["-l", &m.to_string_lossy()]);
        }
        for f in faketime_shm() {
            if !self.shm_before.contains(&f) {
                let _ = std::fs::remove_file(f);
            }
        }
    }
}

/// Sets `stop` when dropped, so the client threads end even if the fault loop panics.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn story(cfg: &ChaosConfig, net: &Net, nodes: &mut [Node], dir: &Path) {
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{} {:>7.2}s] {what}", cfg.name, t0.elapsed().as_secs_f64());
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let clock = rng.gen_range(0..cfg.managers);
    let clock_file = dir.join("faketime.rc");
    nodes[clock].shoald = Some(faketime_wrapper(dir, &clock_file));
    faketime_works(&clock_file).unwrap_or_else(|e| panic!("clock jumps would not work: {e}"));
    form(cfg, net, nodes, dir);
    step(&format!("cluster formed; {} runs under libfaketime", nodes[clock].name));

    let names = Names::new(cfg.objects, cfg.pinned);
    let mut values: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in &names.pinned {
        let value = format!("{p}-value-{}", cfg.seed);
        nodes[0].must_create_secret(p, &value);
        values.entry(p.clone()).or_default().insert(value);
    }
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let history = History::new();
    let clients = Clients {
        history: &history,
        managers: nodes[..cfg.managers].iter().map(Endpoint::of).collect(),
        names: names.clone(),
        dir: data_dir,
        stop: AtomicBool::new(false),
        serial: AtomicU64::new(0),
    };

    let mut faults = Faults::new(net, nodes, cfg.managers);
    faults.clock = Some((clock, clock_file));
    faults.disk_on_managers = cfg.disk_on_managers;
    step(&format!("chaos for {}s (netem: {})", cfg.duration.as_secs(), faults.netem));
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&clients.stop);
        for c in 0..cfg.clients {
            let (clients, seed) = (&clients, cfg.seed ^ (c as u64 + 1).wrapping_mul(0x9e37_79b9));
            s.spawn(move || clients.run(c, seed));
        }
        let end = Instant::now() + cfg.duration;
        let mut plan = cfg.plan.clone().map(|p| p.into_iter());
        loop {
            let planned = match plan.as_mut() {
                Some(p) => match p.next() {
                    Some(step) => Some(step),
                    None => break,
                },
                None if Instant::now() >= end => break,
                None => None,
            };
            std::thread::sleep(Duration::from_millis(rng.gen_range(1000..4000)));
            let (fault, hold) = match planned {
                Some((on, hold)) => (on.resolve(faults.nodes, clock), hold),
                None => {
                    let fault = faults.pick(&mut rng);
                    let hold = match &fault {
                        Fault::Pause(n) | Fault::Isolate(n) if n.len() > 1 => {
                            rng.gen_range(2000..5000)
                        }
                        _ => rng.gen_range(2000..8000),
                    };
                    (fault, hold)
                }
            };
            step(&format!("inject {fault:?} for {:.1}s", hold as f64 / 1000.0));
            faults.inject(fault);
            std::thread::sleep(Duration::from_millis(hold));
            faults.heal_all();
        }
        clients.stop.store(true, Ordering::SeqCst);
        step("faults over; waiting for the clients' last calls");
    });
    faults.heal_all();
    let injected = faults.injected.clone();
    let events = std::mem::take(&mut faults.events);
    drop(faults);

    let mut anomalies = Vec::new();
    for e in events.iter().filter(|e| !e.expected) {
        anomalies.push(format!("shoald: {}", e.what));
    }
    step("all healed; waiting for every node Ready");
    let hostnames: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let hostnames: Vec<&str> = hostnames.iter().map(String::as_str).collect();
    if let Err(e) = try_eventually("every node Ready", SETTLE, || all_ready(&nodes[0], &hostnames))
    {
        anomalies.push(format!("the cluster did not come back whole: {e}"));
    }
    let whole = try_eventually("every manager Reachable under one leader", SETTLE, || {
        managers_whole(&nodes[0], cfg.managers)
    });
    if let Err(e) = &whole {
        anomalies.push(format!("the managers did not come back whole: {e}"));
    }

    step("final reads through every manager");
    let (finals, silent) = final_reads(&clients, &names);
    for (via, why) in silent {
        anomalies.push(format!("{via} answered no read after the run: {why}"));
    }
    let t = Instant::now();
    let verdict = check(&Objects, &history.ops(), DEFAULT_BUDGET);
    let check_time = t.elapsed();
    for (key, v) in verdict.failures() {
        let what = if v == Verdict::Violation { "NOT linearizable" } else { "undecided" };
        let Some(stuck) = verdict.stuck.get(&key) else {
            anomalies.push(format!("history of {key} is {what}:\n{}", history.show_key(&key)));
            continue;
        };
        let secs = |us: u64| us as f64 / 1e6;
        let (from, to) = (stuck.call.saturating_sub(5_000_000), stuck.ret.unwrap_or(stuck.call));
        anomalies.push(format!(
            "history of {key} is {what}: at best {} ops in order, leaving {}; then the op called \
             at {:.3}s (returned at {}) fits no order. The calls around it (all of them in \
             history.txt):\n{}",
            stuck.placed,
            stuck.state,
            secs(stuck.call),
            stuck.ret.map(|r| format!("{:.3}s", secs(r))).unwrap_or("never".into()),
            history.show_key_between(&key, from, to + 1_000_000)
        ));
    }

    let hosts = if whole.is_ok() {
        step("convergence, slots and secrets on the hosts");
        let (found, hosts) = check_hosts(nodes, &finals, &values);
        anomalies.extend(found);
        hosts
    } else {
        "not checked: the managers did not come back whole".to_string()
    };
    std::fs::write(dir.join("history.txt"), history.show_all()).unwrap();

    let report =
        report(cfg, &injected, &history, &events, &anomalies, check_time, verdict.steps, t0);
    eprintln!("{report}hosts: {hosts}\n");
    assert!(
        anomalies.is_empty(),
        "{}: {} anomalies (seed {})",
        cfg.name,
        anomalies.len(),
        cfg.seed
    );
}

/// Starts every node (n1 inits the swarm; the next managers join listening, the rest as
/// workers) with the image imported, and waits until all are Ready.
fn form(cfg: &ChaosConfig, net: &Net, nodes: &mut [Node], dir: &Path) {
    let tar = busybox_tar(dir, &[]).unwrap();
    let tar = tar.to_string_lossy().to_string();
    for n in nodes.iter_mut() {
        n.spawn();
    }
    for n in nodes.iter_mut() {
        n.wait_answering();
        n.must_shoal(&["image", "import", &tar, IMAGE]);
    }
    let n1 = &nodes[0];
    let listen = format!("{}:{PORT}", n1.ip);
    let init = ["swarm", "init", "--advertise-addr", &n1.ip, "--listen-addr", &listen];
    n1.must_shoal(&[&init[..], &["--dispatcher-heartbeat", "1s"]].concat());
    let token = |role: &str| n1.must_shoal(&["swarm", "join-token", "-q", role]).trim().to_string();
    let (manager, worker) = (token("manager"), token("worker"));
    for (i, n) in nodes.iter().enumerate().skip(1) {
        let out = if i < cfg.managers {
            n.join_listening(&manager, &net.addr(1))
        } else {
            n.join(&worker, &net.addr(1))
        };
        assert!(out.status.success(), "{} could not join:\n{}", n.name, text(&out));
    }
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    crate::poll::blocking::eventually("every node Ready", SETTLE, || all_ready(&nodes[0], &names));
}

/// Every manager listed by `node ls` through `n1` is the one leader or Reachable.
fn managers_whole(n1: &Node, managers: usize) -> Result<(), String> {
    let out = n1.shoal(&["node", "ls"]);
    if !out.status.success() {
        return Err(text(&out));
    }
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    crate::netns::one_leader(&listed, managers)?;
    let rows = crate::netns::parse_node_ls(&listed);
    let bad: Vec<String> = rows
        .iter()
        .filter(|r| !r.manager_status.is_empty())
        .filter(|r| r.manager_status != "Leader" && r.manager_status != "Reachable")
        .map(|r| format!("{} is {}", r.hostname, r.manager_status))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("{}:\n{listed}", bad.join(", ")))
    }
}

/// Reads every object through every manager (a few tries each, until one answers), recorded
/// in the history. Returns the first answer per object, and the managers that answered none
/// (a manager whose read times out is asked nothing more).
fn final_reads(
    clients: &Clients<'_>,
    names: &Names,
) -> (BTreeMap<String, Output>, Vec<(String, String)>) {
    let mut finals = BTreeMap::new();
    let mut silent = Vec::new();
    let keys: Vec<(&String, Input)> = names
        .services
        .iter()
        .map(|k| (k, Input::InspectService))
        .chain(names.secrets.iter().map(|k| (k, Input::InspectSecret)))
        .collect();
    for via in &clients.managers {
        let mut answered = false;
        let mut why = String::new();
        'keys: for (key, input) in &keys {
            for _ in 0..3 {
                clients.call(usize::MAX, via, key, input.clone());
                match clients.history.records().pop().map(|r| r.answer) {
                    Some(Answer::Known(o)) => {
                        finals.entry(key.to_string()).or_insert(o);
                        answered = true;
                        break;
                    }
                    Some(Answer::Unknown(w)) if w.starts_with(NO_ANSWER) => {
                        why = w;
                        break 'keys;
                    }
                    Some(Answer::Unknown(w) | Answer::NotSent(w)) => why = w,
                    None => {}
                }
            }
        }
        if !answered {
            silent.push((via.name.clone(), why));
        }
    }
    (finals, silent)
}

/// The checks on the hosts after the run; returns the anomalies.
fn check_hosts(
    nodes: &[Node],
    finals: &BTreeMap<String, Output>,
    values: &BTreeMap<String, BTreeSet<String>>,
) -> (Vec<String>, String) {
    let mut anomalies = Vec::new();
    let services: BTreeMap<String, (u64, BTreeSet<String>)> = finals
        .iter()
        .filter_map(|(k, o)| match o {
            Output::Service { replicas, secrets, .. } => {
                Some((k.clone(), (*replicas, secrets.clone())))
            }
            _ => None,
        })
        .collect();
    let all_tasks = || -> Result<Vec<checks::Task>, String> {
        let mut all = Vec::new();
        for name in services.keys() {
            all.extend(checks::tasks(&nodes[0], name)?);
        }
        Ok(all)
    };
    for (name, (replicas, _)) in &services {
        let converged = try_eventually(&format!("{name} to run {replicas}"), SETTLE, || {
            let t = checks::tasks(&nodes[0], name)?;
            let n = t.iter().filter(|t| t.desired == "Running" && t.state == "Running").count();
            (n as u64 == *replicas).then_some(()).ok_or(format!("{n} running: {t:?}"))
        });
        if let Err(e) = converged {
            anomalies.push(format!("service {name} did not converge: {e}"));
        }
    }
    let slots = try_eventually("one container per slot", SETTLE, || {
        checks::one_container_per_slot(nodes, &all_tasks()?)
    });
    let containers = slots.unwrap_or_else(|e| {
        anomalies.push(format!("containers: {e}"));
        0
    });
    let named: BTreeMap<String, BTreeSet<String>> =
        services.iter().map(|(k, (_, s))| (k.clone(), s.clone())).collect();
    let secrets = try_eventually("secrets only where needed", SETTLE, || {
        checks::secrets_only_where_needed(nodes, &all_tasks()?, &named, values)
    });
    let mounts = secrets.unwrap_or_else(|e| {
        anomalies.push(format!("secrets: {e}"));
        0
    });
    let replicas: u64 = services.values().map(|(r, _)| r).sum();
    let summary = format!(
        "{} services left with {replicas} replicas in all; {containers} containers running, one \
         per slot; {mounts} secret tmpfs mounts, each of a task there that names its secrets",
        services.len()
    );
    (anomalies, summary)
}

#[allow(clippy::too_many_arguments)]
fn report(
    cfg: &ChaosConfig,
    injected: &BTreeMap<String, usize>,
    history: &History,
    events: &[HostEvent],
    anomalies: &[String],
    check_time: Duration,
    steps: u64,
    t0: Instant,
) -> String {
    let mut r = format!(
        "\n===== chaos report: {} =====\nseed {} ({}s of faults; {} managers, {} workers, {} \
         clients; {:.1}s in all)\n",
        cfg.name,
        cfg.seed,
        cfg.duration.as_secs(),
        cfg.managers,
        cfg.workers,
        cfg.clients,
        t0.elapsed().as_secs_f64()
    );
    let total: usize = injected.values().sum();
    r.push_str(&format!("faults injected: {total}\n"));
    for (kind, n) in injected {
        r.push_str(&format!("  {kind:<22} {n}\n"));
    }
    let counts = history.counts();
    let ops: usize = counts.values().sum();
    r.push_str(&format!("operations: {ops}\n"));
    let mut by_kind: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for ((kind, class), n) in &counts {
        by_kind.entry(kind).or_default().insert(class, *n);
    }
    for (kind, classes) in by_kind {
        let parts: Vec<String> = classes.iter().map(|(c, n)| format!("{c} {n}")).collect();
        r.push_str(&format!("  {kind:<16} {}\n", parts.join(", ")));
    }
    let mut why: BTreeMap<String, usize> = BTreeMap::new();
    for rec in history.records() {
        if let Answer::Unknown(w) | Answer::NotSent(w) = &rec.answer {
            *why.entry(w.chars().take(110).collect()).or_default() += 1;
        }
    }
    let mut why: Vec<(String, usize)> = why.into_iter().collect();
    why.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    for (w, n) in why.iter().take(6) {
        r.push_str(&format!("  unknown or not sent x{n}: {w}\n"));
    }
    r.push_str(&format!(
        "linearizability check: {} ops in {:.3}s ({steps} search steps)\n",
        history.ops().len(),
        check_time.as_secs_f64()
    ));
    for e in events {
        let how = if e.expected { "expected" } else { "UNEXPECTED" };
        r.push_str(&format!("host event ({how}): {}\n", e.what));
    }
    r.push_str(&format!("anomalies: {}\n", anomalies.len()));
    for a in anomalies {
        r.push_str(&format!("--- {a}\n"));
    }
    r
}
