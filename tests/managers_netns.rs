//! Fault tests of the managers' Raft group on real hosts: every manager is a `shoald` process in
//! its own network namespace (veth pairs on one bridge, 10.252.N.0/24), driven with the `shoal`
//! binary exactly as a user would drive it.
//!
//! - the leader is killed (-9), twice in a row, in a 5-manager cluster;
//! - the leader of 3 is cut off the network, the majority carries on, the cut is healed;
//! - all 3 managers are killed at once and started again;
//! - a manager is killed in the middle of a burst of writes.
//!
//! After each: every manager names the same leader (the CLI shows no terms, so "one leader per
//! term" is checked as "no two managers name different leaders"), all managers converge to the
//! same state, and nothing the CLI acknowledged is lost.
//!
//! Two registers carry the writes: the worker join token (`swarm join-token --rotate -q worker`
//! prints the new token) and the certificate expiry (`swarm update --cert-expiry <N>h`, read back
//! from `swarm inspect`). Every write goes into a [`History`]: what was written, when, through
//! which manager, and whether the CLI acknowledged it. Writes to one register are sequential, so
//! the register must hold the last acknowledged value, or the value of an unacknowledged write
//! issued after it (a write that failed or timed out may or may not have been applied). After
//! each acknowledged write the writer reads the register back (through any manager; reads are
//! linearizable) and must find exactly that value.
//!
//! Needs root; without it the tests print a notice and pass, except under CI (env `CI` set).
//! Failover times are printed (no timing assertions): run with `--nocapture`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shoal_testkit::netns::{
    self, finish, one_leader, root_or_skip, run_within, text, Net, Node, PORT, SHOAL,
};
use shoal_testkit::poll::blocking::{eventually, stays};

/// Second octet of every address: tests/multihost.rs uses 10.251.
const OCTET: u8 = 252;
/// How long one write may take before the test gives up on it (the managers give up on a
/// commit after 10 s; an unanswered write counts as not acknowledged).
const WRITE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a read may take (a linearizable read waits for a leader).
const READ_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the managers may take to agree on a leader, or to converge, after a fault.
const SETTLE: Duration = Duration::from_secs(30);

/// A /24 per test that concurrent runs are unlikely to share: from the process ID and `test`
/// (1..=4).
fn subnet(test: u8) -> u8 {
    (std::process::id() % 50) as u8 * 5 + test
}

// ---------------------------------------------------------------------------------------------
// Talking to the managers
// ---------------------------------------------------------------------------------------------

/// What a background thread needs to call one manager: its name and socket.
#[derive(Clone, Debug)]
struct Client {
    name: String,
    socket: PathBuf,
}

impl Client {
    fn of(node: &Node) -> Client {
        Client { name: node.name.clone(), socket: node.socket.clone() }
    }

    fn shoal(&self, args: &[&str], timeout: Duration) -> Result<Output, String> {
        let mut cmd = Command::new(&*SHOAL);
        cmd.env_remove("SHOAL_HOST").arg("-H").arg(format!("unix://{}", self.socket.display()));
        cmd.args(args);
        run_within(cmd, timeout)
    }

    /// The output of a successful command, or why not.
    fn read(&self, args: &[&str]) -> Result<String, String> {
        let out = self.shoal(args, READ_TIMEOUT)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("`shoal {}` on {}: {}", args.join(" "), self.name, text(&out)))
        }
    }

    /// The current worker join token.
    fn token(&self) -> Result<String, String> {
        Ok(self.read(&["swarm", "join-token", "-q", "worker"])?.trim().to_string())
    }

    /// The certificate expiry, in hours, from `swarm inspect`.
    fn expiry(&self) -> Result<String, String> {
        let out = self.read(&["swarm", "inspect"])?;
        let json: serde_json::Value = serde_json::from_str(&out)
            .map_err(|e| format!("swarm inspect on {} printed no JSON ({e}):\n{out}", self.name))?;
        let shown = json["Spec"]["CAConfig"]["NodeCertExpiry"].as_str().unwrap_or_default();
        let secs: u64 = shown
            .strip_suffix('s')
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("unreadable NodeCertExpiry {shown:?} on {}", self.name))?;
        Ok(hours(secs))
    }

    /// Both registers.
    fn state(&self) -> Result<State, String> {
        Ok(State { token: self.token()?, expiry: self.expiry()? })
    }

    /// `node ls`: the leader's hostname, after checking that exactly one row is the leader and
    /// that `managers` managers are listed.
    fn leader(&self, managers: usize) -> Result<String, String> {
        let out = self.read(&["node", "ls"])?;
        one_leader(&out, managers).map_err(|e| format!("{}: {e}", self.name))
    }
}

/// `secs` as the `<N>h` the tests write.
fn hours(secs: u64) -> String {
    if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else {
        format!("{secs}s")
    }
}

/// The state the tests write and compare across managers.
#[derive(Clone, Debug, PartialEq, Eq)]
struct State {
    token: String,
    expiry: String,
}

fn clients(nodes: &[&Node]) -> Vec<Client> {
    nodes.iter().map(|n| Client::of(n)).collect()
}

/// Every manager in `among` names the same leader, among `managers`; returns its hostname.
fn agreed_leader(among: &[Client], managers: usize) -> Result<String, String> {
    let mut named = Vec::new();
    for c in among {
        named.push((c.name.clone(), c.leader(managers)?));
    }
    let first = named[0].1.clone();
    if named.iter().all(|(_, l)| *l == first) {
        Ok(first)
    } else {
        Err(format!("the managers name different leaders: {named:?}"))
    }
}

/// Every manager in `among` shows the same state; returns it.
fn converged(among: &[Client]) -> Result<State, String> {
    let mut states = Vec::new();
    for c in among {
        states.push((c.name.clone(), c.state()?));
    }
    let first = states[0].1.clone();
    if states.iter().all(|(_, s)| *s == first) {
        Ok(first)
    } else {
        Err(format!("the managers have not converged: {states:#?}"))
    }
}

/// The checks after every fault: all of `among` name the same leader (also on 3 samples, 0.3 s
/// apart), converge, and the converged state keeps every acknowledged write of `history`.
fn settled(among: &[Client], managers: usize, history: &History) -> (String, State) {
    let leader = eventually("the managers to agree on one leader", SETTLE, || {
        agreed_leader(among, managers)
    });
    stays("one leader that every manager names", 3, Duration::from_millis(300), || {
        let now = agreed_leader(among, managers)?;
        (now == leader).then_some(()).ok_or(format!("the leader changed from {leader} to {now}"))
    });
    let state = eventually("the managers to converge", SETTLE, || converged(among));
    if let Err(e) = history.check_final(&state) {
        panic!("{e}\nhistory:\n{}", history.show());
    }
    (leader, state)
}

// ---------------------------------------------------------------------------------------------
// Writes and their history
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Register {
    Token,
    Expiry,
}

/// One write as the client saw it.
#[derive(Clone, Debug)]
struct Write {
    register: Register,
    /// The value written: for the expiry always known; for a rotation, the token the CLI
    /// printed (unknown when it did not acknowledge).
    value: Option<String>,
    via: String,
    issued: Duration,
    done: Duration,
    acked: bool,
    /// The error or timeout of an unacknowledged write.
    error: String,
    /// What a read right after the acknowledgement showed, and through which manager.
    read_back: Option<(String, String)>,
    /// Reads that failed before that one answered (during a failover, say).
    read_errors: Vec<String>,
}

/// Every write of a test, in the order issued (per register, writes are sequential).
#[derive(Debug)]
struct History {
    t0: Instant,
    initial: State,
    writes: Mutex<Vec<Write>>,
    /// Per register: whether a write is under way (issued, not yet answered).
    in_flight: [AtomicBool; 2],
}

impl History {
    fn new(initial: State) -> History {
        History {
            t0: Instant::now(),
            initial,
            writes: Mutex::new(Vec::new()),
            in_flight: [AtomicBool::new(false), AtomicBool::new(false)],
        }
    }

    /// Whether a write of `register` is under way.
    fn writing(&self, register: Register) -> bool {
        self.in_flight[register as usize].load(Ordering::SeqCst)
    }

    fn of(&self, register: Register) -> Vec<Write> {
        self.writes.lock().unwrap().iter().filter(|w| w.register == register).cloned().collect()
    }

    /// Rotates the worker token through `via`; on an acknowledgement, reads it back through the
    /// first of `readers` that answers. Returns whether the write was acknowledged.
    fn rotate(&self, via: &Client, readers: &[Client]) -> bool {
        let args = ["swarm", "join-token", "--rotate", "-q", "worker"];
        self.write(Register::Token, None, via, &args, readers)
    }

    /// Sets the certificate expiry to `hours` hours through `via`, reading it back likewise.
    fn set_expiry(&self, hours: u64, via: &Client, readers: &[Client]) -> bool {
        let value = format!("{hours}h");
        let args = ["swarm", "update", "--cert-expiry", &value];
        self.write(Register::Expiry, Some(value.clone()), via, &args, readers)
    }

    fn write(
        &self,
        register: Register,
        value: Option<String>,
        via: &Client,
        args: &[&str],
        readers: &[Client],
    ) -> bool {
        self.in_flight[register as usize].store(true, Ordering::SeqCst);
        let issued = self.t0.elapsed();
        let result = via.shoal(args, WRITE_TIMEOUT);
        let done = self.t0.elapsed();
        self.in_flight[register as usize].store(false, Ordering::SeqCst);
        let (acked, value, error) = match &result {
            Ok(out) if out.status.success() => {
                let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
                match register {
                    Register::Token if !printed.is_empty() && !printed.contains(' ') => {
                        (true, Some(printed), String::new())
                    }
                    Register::Expiry if printed == "Swarm updated." => (true, value, String::new()),
                    _ => panic!("`shoal {}` succeeded but printed:\n{}", args.join(" "), text(out)),
                }
            }
            Ok(out) => (false, value, text(out)),
            Err(timeout) => (false, value, timeout.clone()),
        };
        // Read back through another manager first, where there is one.
        let mut readers = readers.to_vec();
        readers.sort_by_key(|r| r.name == via.name);
        let mut read_errors = Vec::new();
        let read_back = acked.then(|| self.read_back(register, &readers, &mut read_errors));
        let via = via.name.clone();
        let write =
            Write { register, value, via, issued, done, acked, error, read_back, read_errors };
        self.writes.lock().unwrap().push(write.clone());
        if let Some((seen, reader)) = &write.read_back {
            if Some(seen) != write.value.as_ref() {
                panic!(
                    "read after an acknowledged write through {} shows {seen:?} (read through \
                     {reader}), not the value written, {:?}\nhistory:\n{}",
                    write.via,
                    write.value,
                    self.show()
                );
            }
        }
        acked
    }

    /// Reads `register` through the first of `readers` that answers; one of them must answer
    /// within `SETTLE`.
    fn read_back(
        &self,
        register: Register,
        readers: &[Client],
        errors: &mut Vec<String>,
    ) -> (String, String) {
        eventually("a manager to answer a read after an acknowledged write", SETTLE, || {
            for r in readers {
                let started = self.t0.elapsed().as_secs_f64();
                let value = match register {
                    Register::Token => r.token(),
                    Register::Expiry => r.expiry(),
                };
                match value {
                    Ok(v) => return Ok((v, r.name.clone())),
                    Err(e) => errors.push(format!(
                        "[{started:.3}s..{:.3}s] {}",
                        self.t0.elapsed().as_secs_f64(),
                        last_line(&e)
                    )),
                }
            }
            Err(errors.join("\n"))
        })
    }

    /// Checks that `state` keeps every acknowledged write (see the file's doc).
    fn check_final(&self, state: &State) -> Result<(), String> {
        check_register(
            "worker token",
            &self.initial.token,
            &self.of(Register::Token),
            &state.token,
        )?;
        check_register(
            "cert expiry",
            &self.initial.expiry,
            &self.of(Register::Expiry),
            &state.expiry,
        )
    }

    fn show(&self) -> String {
        let mut out = String::new();
        for w in self.writes.lock().unwrap().iter() {
            let short = |v: &str| {
                v.chars().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect::<String>()
            };
            out.push_str(&format!(
                "  [{:>7.3}s..{:>7.3}s] {:?} {} via {}: {}{}\n",
                w.issued.as_secs_f64(),
                w.done.as_secs_f64(),
                w.register,
                w.value.as_deref().map(short).unwrap_or_else(|| "?".into()),
                w.via,
                if w.acked {
                    "acknowledged".to_string()
                } else {
                    format!("NOT acknowledged ({})", last_line(&w.error))
                },
                w.read_back
                    .as_ref()
                    .map(|(v, r)| format!(", read back {} via {r}", short(v)))
                    .unwrap_or_default(),
            ));
            for e in &w.read_errors {
                out.push_str(&format!("      a read failed first: {e}\n"));
            }
        }
        out
    }
}

fn last_line(s: &str) -> String {
    s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default().trim().to_string()
}

/// The final value of a register written sequentially by `writes` (in issue order) must be the
/// value of the last acknowledged write, or that of an unacknowledged write issued after it: an
/// unacknowledged write may or may not have been applied, but nothing before the last
/// acknowledged write may come back. A rotation's token is only known when acknowledged, so an
/// unknown final token is attributed to an unacknowledged rotation issued after the last
/// acknowledged one, and refused if there was none, or if it is the initial token or an earlier
/// acknowledged one.
fn check_register(name: &str, initial: &str, writes: &[Write], last: &str) -> Result<(), String> {
    let acked_at = writes.iter().rposition(|w| w.acked);
    let (expected, later) = match acked_at {
        Some(k) => (writes[k].value.clone().unwrap(), &writes[k + 1..]),
        None => (initial.to_string(), writes),
    };
    if last == expected {
        return Ok(());
    }
    let lost = || {
        format!(
            "the {name} is {last:?}, but the last acknowledged write set {expected:?}: an \
             acknowledged write was lost or overwritten by an older one"
        )
    };
    let known_earlier = writes[..acked_at.unwrap_or(0)]
        .iter()
        .filter(|w| w.acked)
        .filter_map(|w| w.value.as_deref())
        .chain([initial])
        .any(|v| v == last);
    if known_earlier {
        return Err(lost());
    }
    let explained = later.iter().any(|w| match &w.value {
        Some(v) => v == last,
        None => true,
    });
    if explained {
        Ok(())
    } else {
        Err(lost())
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster set-up
// ---------------------------------------------------------------------------------------------

/// Runs `body` on `count` managers in `count` namespaces: n1 inits the swarm, the others join
/// it as managers. On a failure the message ends with every manager's log tail.
fn with_managers(test: &str, number: u8, count: usize, body: impl FnOnce(&Net, &mut [Node])) {
    if !root_or_skip(test) {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::Builder::new().prefix("shoal-managers-").tempdir().unwrap();
    let net = Net::with("m", OCTET, subnet(number), count);
    let mut nodes: Vec<Node> =
        (1..=count).map(|i| Node::new(&net, i, dir.path()).with_time_scale("1")).collect();
    let result = catch_unwind(AssertUnwindSafe(|| {
        form(&net, &mut nodes);
        eprintln!(
            "[{test}] {count} managers on {} ready after {:.1}s",
            net.cidr(),
            started.elapsed().as_secs_f64()
        );
        body(&net, &mut nodes)
    }));
    finish(result, nodes, net, dir);
    eprintln!("[{test}] passed in {:.1}s", started.elapsed().as_secs_f64());
}

fn form(net: &Net, nodes: &mut [Node]) {
    for node in nodes.iter_mut() {
        node.spawn();
    }
    for node in nodes.iter_mut() {
        node.wait_answering();
    }
    let listen = format!("{}:{PORT}", net.ip(1));
    let out = nodes[0].must_shoal(&[
        "swarm",
        "init",
        "--advertise-addr",
        &net.ip(1),
        "--listen-addr",
        &listen,
    ]);
    assert!(out.contains("Swarm initialized"), "{out}");
    let token = nodes[0].must_shoal(&["swarm", "join-token", "-q", "manager"]).trim().to_string();
    for node in &nodes[1..] {
        let out = node.join_listening(&token, &net.addr(1));
        assert!(out.status.success(), "{} could not join as a manager:\n{}", node.name, text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("joined a swarm as a manager"),
            "{}",
            text(&out)
        );
    }
    let all = clients(&nodes.iter().collect::<Vec<_>>());
    eventually("every manager to name the same leader", SETTLE, || {
        agreed_leader(&all, nodes.len())
    });
}

/// The node called `name`.
fn index_of(nodes: &[Node], name: &str) -> usize {
    nodes.iter().position(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"))
}

fn running_clients(nodes: &[Node]) -> Vec<Client> {
    nodes.iter().filter(|n| n.running()).map(Client::of).collect()
}

fn step(t0: Instant, test: &str, what: &str) {
    eprintln!("[{test} {:>6.2}s] {what}", t0.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// Kills the leader of 5 managers twice in a row (the second time 4 are left, and 3 after it);
/// each time a new leader must be named by all the others and a write must commit. Then the
/// two killed managers come back and all 5 converge.
#[test]
fn leader_killed_twice_of_five() {
    const TEST: &str = "kill-leader";
    with_managers(TEST, 1, 5, |_net, nodes| {
        let t0 = Instant::now();
        let all = running_clients(nodes);
        let history = History::new(all[0].state().unwrap());
        let mut hours = 100;
        for _ in 0..2 {
            let live = running_clients(nodes);
            let leader = eventually("one leader", SETTLE, || agreed_leader(&live, 5));
            // A write just before the kill, through the leader itself.
            let l = index_of(nodes, &leader);
            hours += 1;
            assert!(history.set_expiry(hours, &Client::of(&nodes[l]), &live), "{}", history.show());
            assert!(history.rotate(&Client::of(&nodes[l]), &live), "{}", history.show());

            step(t0, TEST, &format!("kill -9 the leader {leader}"));
            let kill = Instant::now();
            nodes[l].kill();
            let survivors = running_clients(nodes);
            let via = survivors[0].clone();
            // Write until one is acknowledged: the first normally waits for the election.
            let acked = loop {
                hours += 1;
                if history.set_expiry(hours, &via, &survivors) {
                    break kill.elapsed();
                }
                assert!(
                    kill.elapsed() < SETTLE,
                    "no write acknowledged after the kill:\n{}",
                    history.show()
                );
            };
            step(t0, TEST, &format!("FAILOVER: kill -9 of the leader {leader} to the next acknowledged write (through {}): {:.3}s", via.name, acked.as_secs_f64()));
            let (new_leader, _) = settled(&survivors, 5, &history);
            assert_ne!(new_leader, leader, "the killed manager is still named the leader");
            step(t0, TEST, &format!("{new_leader} leads; {} managers converged", survivors.len()));
        }
        step(t0, TEST, "restart both killed managers");
        for node in nodes.iter_mut().filter(|n| !n.running()) {
            node.spawn();
        }
        for node in nodes.iter_mut() {
            node.wait_answering();
        }
        let all = running_clients(nodes);
        assert_eq!(all.len(), 5);
        let (leader, _) = settled(&all, 5, &history);
        let via = all.iter().find(|c| c.name != leader).unwrap();
        assert!(history.rotate(via, &all), "{}", history.show());
        assert!(history.set_expiry(hours + 1, via, &all), "{}", history.show());
        settled(&all, 5, &history);
        eprint!("[{TEST}] history:\n{}", history.show());
    });
}

/// Cuts the leader of 3 off the network: the other two elect a leader and take writes, the cut
/// off one acknowledges nothing and serves no stale read; after the cut heals it follows the
/// new leader and catches up.
#[test]
fn partitioned_leader_steps_down() {
    const TEST: &str = "partition";
    with_managers(TEST, 2, 3, |net, nodes| {
        let t0 = Instant::now();
        let all = running_clients(nodes);
        let history = History::new(all[0].state().unwrap());
        assert!(history.rotate(&all[1], &all), "{}", history.show());
        assert!(history.set_expiry(201, &all[2], &all), "{}", history.show());
        let old = agreed_leader(&all, 3).unwrap();
        let l = index_of(nodes, &old);
        let cut = Client::of(&nodes[l]);
        let majority: Vec<Client> = all.iter().filter(|c| c.name != old).cloned().collect();

        step(t0, TEST, &format!("cut the leader {old} off the network"));
        let cut_at = Instant::now();
        net.partition(nodes[l].host);
        // Write through the majority until a write is acknowledged.
        while !history.rotate(&majority[0], &majority) {
            assert!(cut_at.elapsed() < SETTLE, "the majority took no write:\n{}", history.show());
        }
        step(
            t0,
            TEST,
            &format!(
                "FAILOVER: cut of the leader {old} to the next acknowledged write (through {}): \
                 {:.3}s",
                majority[0].name,
                cut_at.elapsed().as_secs_f64()
            ),
        );
        let new = eventually("the majority to agree on a new leader", SETTLE, || {
            let leader = agreed_leader(&majority, 3)?;
            (leader != old).then_some(leader).ok_or_else(|| format!("{old} is still named"))
        });
        step(t0, TEST, &format!("the majority names {new}"));
        assert!(history.set_expiry(202, &majority[1], &majority), "{}", history.show());
        let token_now = history.of(Register::Token).last().unwrap().value.clone().unwrap();

        // The cut-off manager: a read must not return the old token, and a write must not be
        // acknowledged while it is cut off (it is issued after the majority's writes, so if it
        // ever applies it is the latest expiry write).
        let stale = {
            let cut = cut.clone();
            std::thread::spawn(move || cut.token())
        };
        let acked = history.set_expiry(303, &cut, &majority);
        let read = stale.join().expect("the read thread panicked");
        step(
            t0,
            TEST,
            &format!(
                "read and write on the cut-off {old} returned after {:.3}s; the read: {}",
                cut_at.elapsed().as_secs_f64(),
                match &read {
                    Ok(token) => format!("answered {token}"),
                    Err(e) => format!("failed: {}", last_line(e)),
                }
            ),
        );
        assert!(
            !acked,
            "a manager cut off from the majority acknowledged a write:\n{}",
            history.show()
        );
        if let Ok(token) = &read {
            assert_eq!(
                token, &token_now,
                "the cut-off manager served a stale read of the worker token"
            );
        }

        step(t0, TEST, "heal the cut");
        net.heal(nodes[l].host);
        let (leader, _) = settled(&all, 3, &history);
        assert_eq!(leader, new, "after the heal the leader is {leader}, not the majority's {new}");
        step(
            t0,
            TEST,
            &format!("all name {leader}, the old leader {old} follows, state converged"),
        );
        assert!(history.set_expiry(404, &cut, &all), "{}", history.show());
        assert!(history.rotate(&cut, &all), "{}", history.show());
        settled(&all, 3, &history);
        eprint!("[{TEST}] history:\n{}", history.show());
    });
}

/// Kills all 3 managers at once and starts them all again: a leader again, nothing lost.
#[test]
fn all_managers_restart_at_once() {
    const TEST: &str = "restart-all";
    with_managers(TEST, 3, 3, |_net, nodes| {
        let t0 = Instant::now();
        let all = running_clients(nodes);
        let history = History::new(all[0].state().unwrap());
        assert!(history.rotate(&all[0], &all), "{}", history.show());
        assert!(history.set_expiry(301, &all[1], &all), "{}", history.show());
        assert!(history.rotate(&all[2], &all), "{}", history.show());
        settled(&all, 3, &history);

        step(t0, TEST, "kill -9 all three managers");
        for node in nodes.iter_mut() {
            node.kill();
        }
        let start = Instant::now();
        for node in nodes.iter_mut() {
            node.spawn();
        }
        for node in nodes.iter_mut() {
            node.wait_answering();
        }
        let (leader, _) = settled(&all, 3, &history);
        step(
            t0,
            TEST,
            &format!(
                "restarted: {leader} leads, state intact, {:.3}s after starting",
                start.elapsed().as_secs_f64()
            ),
        );
        assert!(history.set_expiry(302, &all[0], &all), "{}", history.show());
        step(
            t0,
            TEST,
            &format!(
                "first write after the restart acknowledged {:.3}s after starting",
                start.elapsed().as_secs_f64()
            ),
        );
        settled(&all, 3, &history);
        eprint!("[{TEST}] history:\n{}", history.show());
    });
}

/// Two writers (token rotations through the leader, then the next manager once it is gone;
/// expiry updates through a follower) write as fast as they can while the leader is killed.
/// Every acknowledged write must be there afterwards, read back right after its
/// acknowledgement, and in the final state.
#[test]
fn manager_killed_during_write_burst() {
    const TEST: &str = "burst";
    with_managers(TEST, 4, 3, |_net, nodes| {
        let t0 = Instant::now();
        let all = running_clients(nodes);
        let history = History::new(all[0].state().unwrap());
        let leader = agreed_leader(&all, 3).unwrap();
        let l = index_of(nodes, &leader);
        let followers: Vec<Client> = all.iter().filter(|c| c.name != leader).cloned().collect();
        let stop = AtomicBool::new(false);
        let killed_at = Mutex::new(None::<Duration>);
        let (to_leader, leader_pid) = (Client::of(&nodes[l]), nodes[l].pid().unwrap());

        std::thread::scope(|s| {
            // Both read back through the followers (the leader is killed).
            let (history, stop, followers) = (&history, &stop, &followers);
            // Rotations: through the leader while it lives, then through a follower.
            let rotations = s.spawn(move || {
                let mut via = to_leader;
                while !stop.load(Ordering::SeqCst) {
                    if !history.rotate(&via, followers) {
                        via = followers[0].clone();
                    }
                }
            });
            // Expiry updates through the other follower.
            let updates = s.spawn(move || {
                let mut hours = 1000;
                while !stop.load(Ordering::SeqCst) {
                    hours += 1;
                    history.set_expiry(hours, &followers[1], followers);
                }
            });
            let acked = |r: Register, after: Duration| {
                history.of(r).iter().filter(|w| w.acked && w.issued >= after).count()
            };
            let enough = |n: usize, after: Duration| {
                eventually(&format!("both writers to get {n} writes acknowledged"), SETTLE, || {
                    let (t, e) = (acked(Register::Token, after), acked(Register::Expiry, after));
                    if rotations.is_finished() || updates.is_finished() {
                        return Ok(()); // a writer panicked: join it below
                    }
                    (t >= n && e >= n).then_some(()).ok_or(format!("{t} rotations, {e} updates"))
                })
            };
            enough(10, Duration::ZERO);
            // Kill when both writers have a write under way (they spend part of their time
            // reading back). Polled every millisecond: a write takes some 20 ms.
            let deadline = Instant::now() + SETTLE;
            while !(history.writing(Register::Token) && history.writing(Register::Expiry)) {
                assert!(Instant::now() < deadline, "the writers never wrote at the same time");
                std::thread::sleep(Duration::from_millis(1));
            }
            // By PID: the Node (whose kill() also reaps) is not at hand in this scope.
            quiet_kill(leader_pid);
            let at = history.t0.elapsed();
            *killed_at.lock().unwrap() = Some(at);
            step(t0, TEST, &format!("killed the leader {leader} (-9) with both writers mid-write"));
            enough(5, at);
            stop.store(true, Ordering::SeqCst);
            let r = rotations.join();
            let u = updates.join();
            if let Err(p) = r.and(u) {
                std::panic::resume_unwind(p);
            }
        });
        let at = killed_at.lock().unwrap().unwrap();
        // The failover time: to the first acknowledged write issued after the kill, by either
        // writer (one that was reading back at the kill waits for that read first, and a read
        // in flight on a follower when the leader dies may fail only after some seconds).
        let writes = history.writes.lock().unwrap().clone();
        let first = writes.iter().filter(|w| w.acked && w.issued >= at).min_by_key(|w| w.done);
        let first = first.expect("no write acknowledged after the kill");
        step(
            t0,
            TEST,
            &format!(
                "FAILOVER: kill -9 of the leader {leader} to the next acknowledged write: {:.3}s \
                 ({:?} through {})",
                (first.done - at).as_secs_f64(),
                first.register,
                first.via
            ),
        );
        for (name, r) in [("rotation", Register::Token), ("expiry update", Register::Expiry)] {
            let writes = history.of(r);
            let first = writes.iter().find(|w| w.acked && w.done >= at).unwrap();
            let failed = writes.iter().filter(|w| !w.acked).count();
            step(
                t0,
                TEST,
                &format!(
                    "  kill to the next acknowledged {name}: {:.3}s (through {}, issued \
                     {:.3}s {} the kill; {failed} of {} writes not acknowledged)",
                    (first.done - at).as_secs_f64(),
                    first.via,
                    first.issued.abs_diff(at).as_secs_f64(),
                    if first.issued < at { "before" } else { "after" },
                    writes.len()
                ),
            );
        }
        nodes[l].kill(); // reaps the process killed above
        settled(&followers, 3, &history);
        step(t0, TEST, &format!("restart {leader}"));
        nodes[l].start();
        settled(&all, 3, &history);
        let (t, e) = (history.of(Register::Token).len(), history.of(Register::Expiry).len());
        eprint!("[{TEST}] {t} rotations and {e} expiry updates; history:\n{}", history.show());
    });
}

fn quiet_kill(pid: u32) {
    netns::quiet("kill", &["-9", &pid.to_string()]);
}

/// The register check itself (no root needed): which final values it accepts.
#[test]
fn history_check_accepts_only_what_acknowledged_writes_allow() {
    let w = |value: Option<&str>, acked: bool| Write {
        register: Register::Expiry,
        value: value.map(String::from),
        via: "n1".into(),
        issued: Duration::ZERO,
        done: Duration::ZERO,
        acked,
        error: String::new(),
        read_back: None,
        read_errors: Vec::new(),
    };
    let writes = [w(Some("1h"), true), w(Some("2h"), false), w(Some("3h"), true)];
    assert!(check_register("r", "0h", &writes, "3h").is_ok());
    for lost in ["0h", "1h", "2h", "9h"] {
        assert!(check_register("r", "0h", &writes, lost).is_err(), "{lost} accepted");
    }
    // An unacknowledged write after the last acknowledged one may or may not be applied.
    let writes = [w(Some("1h"), true), w(Some("2h"), false)];
    assert!(check_register("r", "0h", &writes, "1h").is_ok());
    assert!(check_register("r", "0h", &writes, "2h").is_ok());
    assert!(check_register("r", "0h", &writes, "0h").is_err());
    // Tokens: an unknown value needs an unacknowledged rotation after the last acknowledged.
    let writes = [w(Some("a"), true), w(None, false), w(Some("b"), true)];
    assert!(check_register("r", "init", &writes, "b").is_ok());
    assert!(check_register("r", "init", &writes, "x").is_err());
    assert!(check_register("r", "init", &writes, "a").is_err());
    let writes = [w(Some("a"), true), w(None, false)];
    assert!(check_register("r", "init", &writes, "x").is_ok());
    assert!(check_register("r", "init", &writes, "init").is_err());
    assert!(check_register("r", "init", &[], "init").is_ok());
    assert!(check_register("r", "init", &[w(None, false)], "x").is_ok());
}
