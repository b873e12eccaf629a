//! A manager whose host gets a new address comes back with the same identity (issue #3), on real
//! hosts: every manager is a `shoald` in its own network namespace (10.247.N.0/24), driven with
//! the `shoal` binary as an operator would drive it.
//!
//! Three managers take writes; n3 is killed, its host is given a new address, and writes go on
//! without it. Restarted first with an address nobody can reach, n3 says so and the cluster keeps
//! the address it had; restarted with its real new address (`shoald --advertise-addr`), it tells
//! the leader, which dials it back and commits the address. n3 then catches up, takes writes, and
//! `node inspect` shows the new address. Then one of the other two managers is killed: n3 and the
//! last one must still form a quorum, which they can only do if the survivor reaches n3 at its
//! new address. n3 then restarts with no address flags at all: it kept the new address. Last,
//! with both others down, n3 moves once more: it starts anyway, says there is no leader, and
//! keeps trying until the others are back and accept its address.
//!
//! The register written is the certificate expiry (`swarm update --cert-expiry <N>h`, read back
//! from `swarm inspect`, a linearizable read). Needs root; without it the test prints a notice and
//! passes, except under CI (env `CI` set).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use shoal_testkit::netns::{finish, one_leader, root_or_skip, stdout, text, Net, Node, PORT};
use shoal_testkit::poll::blocking::eventually;

/// Second octet of every address (the other netns tests use 248..=252).
const OCTET: u8 = 247;
/// How long the managers may take to agree on a leader, converge, or take a write after a fault.
const SETTLE: Duration = Duration::from_secs(30);
/// How long one write or read may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// A /24 that concurrent runs are unlikely to share.
fn subnet() -> u8 {
    (std::process::id() % 250) as u8 + 1
}

fn step(t0: Instant, what: &str) {
    eprintln!("[readdress {:>6.2}s] {what}", t0.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------------
// Talking to the managers
// ---------------------------------------------------------------------------------------------

/// The output of a successful `shoal ARGS` on `node`, or why not.
fn read(node: &Node, args: &[&str]) -> Result<String, String> {
    let out = node.shoal_within(args, CALL_TIMEOUT)?;
    if out.status.success() {
        Ok(stdout(&out))
    } else {
        Err(format!("`shoal {}` on {}: {}", args.join(" "), node.name, text(&out)))
    }
}

/// Sets the certificate expiry to `hours` through `node`; Ok once acknowledged.
fn write(node: &Node, hours: u64) -> Result<(), String> {
    let out = read(node, &["swarm", "update", "--cert-expiry", &format!("{hours}h")])?;
    (out.trim() == "Swarm updated.").then_some(()).ok_or(format!("unexpected answer: {out}"))
}

/// Writes `hours` through `node`, trying again until a write is acknowledged (right after a
/// fault the first may wait for an election and fail).
fn must_write(node: &Node, hours: u64) {
    eventually(&format!("a write through {} to be acknowledged", node.name), SETTLE, || {
        write(node, hours)
    });
}

/// The certificate expiry `node` reads, in hours.
fn expiry(node: &Node) -> Result<u64, String> {
    let out = read(node, &["swarm", "inspect"])?;
    let json: serde_json::Value = serde_json::from_str(&out)
        .map_err(|e| format!("no JSON from {} ({e}):\n{out}", node.name))?;
    let shown = json["Spec"]["CAConfig"]["NodeCertExpiry"].as_str().unwrap_or_default();
    shown
        .strip_suffix('s')
        .and_then(|s| s.parse::<u64>().ok())
        .map(|secs| secs / 3600)
        .ok_or_else(|| format!("unreadable NodeCertExpiry {shown:?} on {}", node.name))
}

/// Every one of `nodes` reads `hours`.
fn all_read(nodes: &[&Node], hours: u64) -> Result<(), String> {
    for node in nodes {
        let seen = expiry(node)?;
        if seen != hours {
            return Err(format!("{} reads {seen}h, not {hours}h", node.name));
        }
    }
    Ok(())
}

/// Every one of `nodes` names the same single leader among `managers`; returns its hostname.
fn agreed_leader(nodes: &[&Node], managers: usize) -> Result<String, String> {
    let mut named = Vec::new();
    for node in nodes {
        let out = read(node, &["node", "ls"])?;
        named.push((
            node.name.clone(),
            one_leader(&out, managers).map_err(|e| format!("{}: {e}", node.name))?,
        ));
    }
    let first = named[0].1.clone();
    if named.iter().all(|(_, l)| *l == first) {
        Ok(first)
    } else {
        Err(format!("the managers name different leaders: {named:?}"))
    }
}

/// What `node inspect NAME` on `on` shows: the Raft address (`ManagerStatus.Addr`) and the
/// node's own address (`Addr`).
fn addrs_of(on: &Node, name: &str) -> Result<(String, String), String> {
    let out = read(on, &["node", "inspect", name])?;
    let json: serde_json::Value = serde_json::from_str(&out)
        .map_err(|e| format!("no JSON from {} ({e}):\n{out}", on.name))?;
    let manager = json[0]["ManagerStatus"]["Addr"].as_str().unwrap_or_default().to_string();
    let node = json[0]["Addr"].as_str().unwrap_or_default().to_string();
    Ok((manager, node))
}

/// Both addresses of `name`, as every one of `on` shows them, must be `want`.
fn listed_at(on: &[&Node], name: &str, want: &str) -> Result<(), String> {
    for node in on {
        let (manager, addr) = addrs_of(node, name)?;
        if manager != want || addr != want {
            return Err(format!(
                "{} shows {name} at manager address {manager:?}, node address {addr:?}, not {want}",
                node.name
            ));
        }
    }
    Ok(())
}

/// The advertise address saved in `node`'s state file.
fn saved_addr(node: &Node) -> String {
    let raw = std::fs::read_to_string(node.data.join("state.json")).unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(&raw).unwrap_or_default();
    json["advertise_addr"].as_str().unwrap_or_default().to_string()
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

/// n1 inits the swarm, n2 and n3 join it as managers, each listening on its host's address.
fn form(net: &Net, nodes: &mut [Node]) {
    for node in nodes.iter_mut() {
        node.spawn();
    }
    for node in nodes.iter_mut() {
        node.wait_answering();
    }
    let listen = net.addr(1);
    let init = ["swarm", "init", "--advertise-addr", &net.ip(1), "--listen-addr", &listen];
    assert!(nodes[0].must_shoal(&init).contains("Swarm initialized"));
    let token = nodes[0].must_shoal(&["swarm", "join-token", "-q", "manager"]).trim().to_string();
    for node in &nodes[1..] {
        let out = node.join_listening(&token, &net.addr(1));
        assert!(out.status.success(), "{} could not join as a manager:\n{}", node.name, text(&out));
    }
    let all: Vec<&Node> = nodes.iter().collect();
    eventually("every manager to name the same leader", SETTLE, || agreed_leader(&all, 3));
}

#[test]
fn manager_moved_to_a_new_address_rejoins_with_the_same_identity() {
    const TEST: &str = "manager_moved_to_a_new_address_rejoins_with_the_same_identity";
    if !root_or_skip(TEST) {
        return;
    }
    let dir = tempfile::Builder::new().prefix("shoal-readdress-").tempdir().unwrap();
    let net = Net::with("ra", OCTET, subnet(), 3);
    let mut nodes: Vec<Node> =
        (1..=3).map(|i| Node::new(&net, i, dir.path()).with_time_scale("1")).collect();
    let result = catch_unwind(AssertUnwindSafe(|| {
        form(&net, &mut nodes);
        let mut story = Story { net: &net, nodes: &mut nodes, t0: Instant::now() };
        story.n3_moves_while_down();
        story.an_unreachable_address_is_refused();
        let leader = story.n3_comes_back_at_its_new_address();
        story.the_survivor_reaches_n3_at_its_new_address(&leader);
        story.n3_moves_again_while_there_is_no_quorum(&leader);
        step(story.t0, "done");
    }));
    finish(result, nodes, net, dir);
}

/// The test's cluster: n3 (`nodes[2]`) is the manager that moves.
struct Story<'a> {
    net: &'a Net,
    nodes: &'a mut [Node],
    t0: Instant,
}

impl Story<'_> {
    fn all(&self) -> Vec<&Node> {
        self.nodes.iter().collect()
    }

    /// n3's cluster address on the host address `ip`.
    fn at(ip: &str) -> String {
        format!("{ip}:{PORT}")
    }

    /// Restarts n3 with these shoald arguments.
    fn restart_n3(&mut self, args: &[&str]) {
        self.nodes[2].kill();
        self.nodes[2].args = args.iter().map(|a| a.to_string()).collect();
        self.nodes[2].start();
    }

    /// Writes through n1 and n3; then n3 is killed, its host moves from .3 to .103, and writes
    /// go on through n1 and n2.
    fn n3_moves_while_down(&mut self) {
        let (old, moved) = (self.net.addr(3), Self::at(&self.net.moved_ip(3)));
        must_write(&self.nodes[0], 101);
        must_write(&self.nodes[2], 102);
        eventually("all three to read 102h", SETTLE, || all_read(&self.all(), 102));
        eventually("n1 and n2 to list n3 at its first address", SETTLE, || {
            listed_at(&[&self.nodes[0], &self.nodes[1]], "n3", &old)
        });
        step(self.t0, &format!("kill -9 n3, move its host from {old} to {moved}; write on"));
        self.nodes[2].kill();
        self.net.move_host(3, &self.net.ip(3), &self.net.moved_ip(3));
        self.nodes[2].ip = self.net.moved_ip(3);
        must_write(&self.nodes[0], 103);
        must_write(&self.nodes[1], 104);
    }

    /// n3 advertises an address nobody has: the leader cannot dial it back there, n3 says so
    /// (in `shoal info` and its log) and saves nothing, and the cluster keeps the old address.
    fn an_unreachable_address_is_refused(&mut self) {
        let nowhere = format!("10.{OCTET}.{}.200", self.net.subnet);
        step(self.t0, &format!("restart n3 advertising {nowhere}, which nobody can reach"));
        self.restart_n3(&["--listen-addr", "0.0.0.0:4242", "--advertise-addr", &nowhere]);
        let refusal = format!("the leader cannot reach this manager at {}", Self::at(&nowhere));
        let n3 = &self.nodes[2];
        eventually("n3 to say the leader cannot reach it", SETTLE, || {
            let info = read(n3, &["info"])?;
            let log = std::fs::read_to_string(n3.log()).unwrap_or_default();
            (info.contains(&refusal) && log.contains(&refusal))
                .then_some(())
                .ok_or(format!("`shoal info` and the log do not say {refusal:?}:\n{info}"))
        });
        let old = self.net.addr(3);
        for on in &self.nodes[..2] {
            let (manager, _) = addrs_of(on, "n3").unwrap();
            assert_eq!(manager, old, "{} lists n3 at an address nobody can reach", on.name);
        }
        assert_eq!(saved_addr(n3), old, "n3 saved an address the cluster refused");
        must_write(&self.nodes[0], 105);
    }

    /// n3 restarts with `--advertise-addr` its new IP: it keeps its identity, catches up, takes
    /// a write, is listed at the new address everywhere, and saves it. Returns the leader.
    fn n3_comes_back_at_its_new_address(&mut self) -> String {
        let (moved_ip, id) = (self.net.moved_ip(3), self.nodes[2].info().must("NodeID"));
        let (old, new) = (self.net.addr(3), Self::at(&moved_ip));
        step(self.t0, &format!("restart n3 with --advertise-addr {moved_ip}"));
        let back = Instant::now();
        self.restart_n3(&["--advertise-addr", &moved_ip]);
        let all = self.all();
        eventually("n3 to catch up with the writes made without it", SETTLE, || {
            all_read(&all, 105)
        });
        let leader =
            eventually("all three to agree on a leader", SETTLE, || agreed_leader(&all, 3));
        eventually("every manager to list n3 at its new address", SETTLE, || {
            listed_at(&all, "n3", &new)
        });
        let took = back.elapsed().as_secs_f64();
        step(self.t0, &format!("n3 caught up and is listed at {new} {took:.1}s after its start"));
        assert_eq!(all[2].info().must("NodeID"), id, "n3 came back with another identity");
        must_write(all[2], 106);
        eventually("n1 and n2 to read the write made through n3", SETTLE, || all_read(&all, 106));
        eventually("n3 to save its new address once accepted", SETTLE, || {
            let saved = saved_addr(all[2]);
            (saved == new).then_some(()).ok_or(format!("state.json has {saved}"))
        });
        eventually("`shoal info` on n1 to list n3's new manager address", SETTLE, || {
            let listed = all[0].info().must("Manager Addresses");
            (listed.contains(&new) && !listed.contains(&old))
                .then_some(())
                .ok_or(format!("Manager Addresses: {listed}"))
        });
        leader
    }

    /// The index of the manager killed next: the leader unless n3 leads (then n1), so that the
    /// survivor and n3 must elect a leader or keep one between the two of them.
    fn victim(&self, leader: &str) -> usize {
        if leader == "n3" {
            0
        } else {
            self.nodes.iter().position(|n| n.name == leader).unwrap()
        }
    }

    /// One of n1 and n2 is killed: n3 and the other must still commit writes, which they can
    /// only do if the survivor reaches n3 at its new address. Then n3 restarts with no address
    /// flags: it kept the new address.
    fn the_survivor_reaches_n3_at_its_new_address(&mut self, leader: &str) {
        let (g, new) = (self.victim(leader), Self::at(&self.net.moved_ip(3)));
        let s = 1 - g;
        let names = (self.nodes[g].name.clone(), self.nodes[s].name.clone());
        step(self.t0, &format!("kill -9 {}: n3 and {} must carry on", names.0, names.1));
        self.nodes[g].kill();
        must_write(&self.nodes[2], 107);
        must_write(&self.nodes[s], 108);
        let pair = [&self.nodes[s], &self.nodes[2]];
        eventually("n3 and the survivor to read 108h", SETTLE, || all_read(&pair, 108));
        eventually("n3 and the survivor to agree on a leader", SETTLE, || agreed_leader(&pair, 3));

        step(self.t0, "restart n3 with no address flags: it kept its new address");
        self.restart_n3(&[]);
        must_write(&self.nodes[2], 109);
        let pair = [&self.nodes[s], &self.nodes[2]];
        eventually("n3 and the survivor to read 109h", SETTLE, || all_read(&pair, 109));
        listed_at(&pair, "n3", &new).unwrap();
    }

    /// With n1 and n2 both down, n3 moves again: it starts anyway, says the managers have no
    /// leader, and keeps trying; once n1 and n2 are back the new address is accepted.
    fn n3_moves_again_while_there_is_no_quorum(&mut self, leader: &str) {
        let (g, s) = (self.victim(leader), 1 - self.victim(leader));
        let (from, to) = (self.net.moved_ip(3), format!("10.{OCTET}.{}.203", self.net.subnet));
        step(
            self.t0,
            &format!("kill -9 {} too; move n3 to {to} with no quorum", self.nodes[s].name),
        );
        self.nodes[s].kill();
        self.nodes[2].kill();
        self.net.move_host(3, &from, &to);
        self.nodes[2].ip = to.clone();
        self.restart_n3(&["--advertise-addr", &to]);
        let n3 = &self.nodes[2];
        eventually("n3 to say the managers have no leader", SETTLE, || {
            let info = read(n3, &["info"])?;
            info.contains("the managers have no leader").then_some(()).ok_or(info)
        });
        step(self.t0, "restart n1 and n2: n3's next try is accepted");
        self.nodes[g].start();
        self.nodes[s].start();
        let all = self.all();
        eventually("all three to read 109h", SETTLE, || all_read(&all, 109));
        eventually("every manager to list n3 at its third address", SETTLE, || {
            listed_at(&all, "n3", &Self::at(&to))
        });
        must_write(all[2], 110);
        eventually("all three to read 110h", SETTLE, || all_read(&all, 110));
        eventually("all three to agree on a leader", SETTLE, || agreed_leader(&all, 3));
    }
}
