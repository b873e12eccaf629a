//! Fixtures for tests on real hosts: every node is a `shoald` process in its own network
//! namespace (veth pairs on one bridge), driven with the `shoal` binary exactly as a user would
//! drive it. Shared by `tests/multihost.rs` and `tests/managers_netns.rs` (`mod netns;`).
//!
//! They need root (network namespaces): see [`root_or_skip`]. On a failure, [`finish`] ends the
//! message with the tail of every node's log and keeps the node directories for inspection.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

pub const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");
pub const SHOALD: &str = env!("CARGO_BIN_EXE_shoald");

/// Divides certificate renewal waits: a 1h certificate renews after ~1-1.5 s.
pub const TIME_SCALE: &str = "2000";
/// How long one `shoal` invocation may take before the test calls it hung.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Cluster port.
pub const PORT: u16 = 4242;

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/// Polls `check` every 150 ms until it returns `Ok`, or panics with its last error after
/// `timeout`. Use it for every "wait until": never sleep in place of a condition.
pub fn eventually<T>(what: &str, timeout: Duration, check: impl FnMut() -> Result<T, String>) -> T {
    try_eventually(what, timeout, check).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`eventually`], but returns the timeout as an error instead of panicking.
pub fn try_eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() >= timeout => {
                return Err(format!("timed out after {timeout:?} waiting for {what}; last:\n{e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(150)),
        }
    }
}

/// Checks whose failure does not stop the story (what the user is told, rather than what the
/// cluster does); the story fails at its end with all of them listed.
#[derive(Debug, Default)]
pub struct Deviations(std::cell::RefCell<Vec<String>>);

impl Deviations {
    pub fn check(&self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let what = what();
            eprintln!("DEVIATION: {what}");
            self.0.borrow_mut().push(what);
        }
    }

    pub fn result(&self) -> Result<(), String> {
        let all = self.0.borrow();
        if all.is_empty() {
            return Ok(());
        }
        let list: Vec<String> =
            all.iter().enumerate().map(|(i, d)| format!("{}. {d}", i + 1)).collect();
        Err(format!("{} deviation(s) from the expected behaviour:\n{}", all.len(), list.join("\n")))
    }
}

/// Samples `check` `times` times, `every` apart, and panics on the first failure: for
/// properties that must hold over a stretch of time (not for waiting).
pub fn stays(
    what: &str,
    times: usize,
    every: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) {
    for i in 0..times {
        if i > 0 {
            std::thread::sleep(every);
        }
        if let Err(e) = check() {
            panic!("{what} stopped holding on sample {} of {times}:\n{e}", i + 1);
        }
    }
}

/// Runs `cmd`, killing it if it takes longer than `COMMAND_TIMEOUT`.
pub fn run(cmd: Command) -> Output {
    run_within(cmd, COMMAND_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `cmd`; if it takes longer than `timeout` it is killed and the error says so.
pub fn run_within(mut cmd: Command, timeout: Duration) -> Result<Output, String> {
    let desc = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {desc}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => Ok(out.unwrap_or_else(|e| panic!("waiting for {desc}: {e}"))),
        Err(_) => {
            quiet("kill", &["-9", &pid.to_string()]);
            let _ = rx.recv_timeout(Duration::from_secs(5));
            Err(format!("{desc} hung for more than {timeout:?} and was killed"))
        }
    }
}

/// Runs a setup or teardown command, ignoring whether it works.
pub fn quiet(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs a setup command that must work.
pub fn must(program: &str, args: &[&str]) {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// stdout then stderr, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "exit: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether this process runs as root (effective UID 0), read from /proc.
pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

/// The last `lines` lines of a log, with runs of lines that differ only in their timestamp
/// (retry loops) folded into one, so the tail shows more than one loop.
pub fn tail(path: &Path, lines: usize) -> String {
    let log = match std::fs::read_to_string(path) {
        Ok(s) => strip_ansi(&s),
        Err(e) => return format!("(no log: {e})"),
    };
    let mut folded: Vec<(String, usize)> = Vec::new();
    for line in log.lines() {
        let body = line.split_once(' ').map(|(_, rest)| rest).unwrap_or(line);
        match folded.last_mut() {
            Some((last, n)) if last.split_once(' ').map(|(_, r)| r) == Some(body) => *n += 1,
            _ => folded.push((line.to_string(), 1)),
        }
    }
    let start = folded.len().saturating_sub(lines);
    folded[start..]
        .iter()
        .map(|(l, n)| if *n > 1 { format!("{l}   [x{n}]") } else { l.clone() })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Removes terminal color sequences (`ESC [ ... m`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else {
        "(non-text panic)".into()
    }
}

// ---------------------------------------------------------------------------------------------
// The network fixture
// ---------------------------------------------------------------------------------------------

/// A bridge and `count` hosts: network namespaces, each with a veth pair on the bridge, the
/// address 10.O.N.i/24 on its `eth0` (O and N chosen by the test), and `lo` up. One host at a
/// time or several can be cut off the bridge ([`Net::partition`]) and put back ([`Net::heal`]).
/// Dropping it heals every partition and tears everything down.
#[derive(Debug)]
pub struct Net {
    /// Tells the interfaces and namespaces of different test files apart.
    tag: String,
    /// The second octet of every address.
    octet: u8,
    pub subnet: u8,
    count: usize,
    bridge: String,
    iptables: bool,
    /// Hosts whose bridge port is down (see [`Net::partition`]).
    cut: Mutex<BTreeSet<usize>>,
}

impl Net {
    /// `count` hosts on 10.251.`subnet`.0/24, named `shoal-t<subnet>-n<i>`.
    pub fn new(subnet: u8, count: usize) -> Net {
        Net::with("t", 251, subnet, count)
    }

    /// `count` hosts on 10.`octet`.`subnet`.0/24; `tag` (one or two lowercase letters) keeps
    /// their interface and namespace names apart from other test files' (`shoal-<tag><subnet>-
    /// n<i>`, veths `sh<tag><subnet>n<i>`, bridge `sh<tag>br<subnet>`).
    pub fn with(tag: &str, octet: u8, subnet: u8, count: usize) -> Net {
        assert!(tag.len() <= 2 && count <= 99, "interface names are limited to 15 characters");
        let iptables = have("iptables");
        let net = Net {
            tag: tag.to_string(),
            octet,
            subnet,
            count,
            bridge: format!("sh{tag}br{subnet}"),
            iptables,
            cut: Mutex::new(BTreeSet::new()),
        };
        net.teardown(); // leftovers of an earlier run that died
        let br = net.bridge.as_str();
        must("ip", &["link", "add", br, "type", "bridge"]);
        must("ip", &["link", "set", br, "up"]);
        if net.iptables {
            // Where Docker runs, FORWARD's policy is DROP and bridged traffic goes through it.
            must("iptables", &["-I", "FORWARD", "-i", br, "-o", br, "-j", "ACCEPT"]);
        }
        for i in 1..=count {
            let ns = net.ns(i);
            let host_end = net.veth(i);
            let peer = format!("{host_end}p");
            must("ip", &["netns", "add", &ns]);
            must("ip", &["link", "add", &host_end, "type", "veth", "peer", "name", &peer]);
            must("ip", &["link", "set", &peer, "netns", &ns]);
            must("ip", &["link", "set", &host_end, "master", br]);
            must("ip", &["link", "set", &host_end, "up"]);
            must("ip", &["-n", &ns, "link", "set", &peer, "name", "eth0"]);
            must("ip", &["-n", &ns, "addr", "add", &format!("{}/24", net.ip(i)), "dev", "eth0"]);
            must("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
            must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    /// How many hosts there are (numbered from 1).
    pub fn count(&self) -> usize {
        self.count
    }

    pub fn ns(&self, i: usize) -> String {
        format!("shoal-{}{}-n{i}", self.tag, self.subnet)
    }

    /// The host end of host `i`'s veth pair (the one on the bridge).
    pub fn veth(&self, i: usize) -> String {
        format!("sh{}{}n{i}", self.tag, self.subnet)
    }

    pub fn ip(&self, i: usize) -> String {
        format!("10.{}.{}.{i}", self.octet, self.subnet)
    }

    /// The hosts' /24, for messages.
    pub fn cidr(&self) -> String {
        format!("10.{}.{}.0/24", self.octet, self.subnet)
    }

    pub fn addr(&self, i: usize) -> String {
        format!("{}:{PORT}", self.ip(i))
    }

    /// Cuts host `i` off from all the others: its port on the bridge goes down, so nothing it
    /// sends reaches anyone and nothing reaches it (no reset, no error: silence, as when a
    /// cable is pulled). Its processes keep running and its unix sockets keep answering.
    pub fn partition(&self, i: usize) {
        assert!((1..=self.count).contains(&i), "no host {i}");
        self.cut.lock().unwrap().insert(i);
        must("ip", &["link", "set", &self.veth(i), "down"]);
    }

    /// Gives host `i` the address `ip` instead of the one it has (as when DHCP hands a host a
    /// new lease or a VM moves): the old address goes away, so nothing reaches it there.
    pub fn move_host(&self, i: usize, from: &str, ip: &str) {
        assert!((1..=self.count).contains(&i), "no host {i}");
        let ns = self.ns(i);
        must("ip", &["-n", &ns, "addr", "del", &format!("{from}/24"), "dev", "eth0"]);
        must("ip", &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    }

    /// An address on the hosts' /24 that no host has at first (host `i` moved).
    pub fn moved_ip(&self, i: usize) -> String {
        format!("10.{}.{}.{}", self.octet, self.subnet, 100 + i)
    }

    /// Undoes [`Net::partition`] for host `i`.
    pub fn heal(&self, i: usize) {
        must("ip", &["link", "set", &self.veth(i), "up"]);
        self.cut.lock().unwrap().remove(&i);
    }

    /// Heals every partitioned host, ignoring errors.
    pub fn heal_all(&self) {
        let cut = std::mem::take(&mut *self.cut.lock().unwrap_or_else(|p| p.into_inner()));
        for i in cut {
            quiet("ip", &["link", "set", &self.veth(i), "up"]);
        }
    }

    /// Removes everything this fixture creates, ignoring errors (so it also cleans up after a
    /// run that died half-way).
    pub fn teardown(&self) {
        self.heal_all();
        for i in 1..=self.count {
            let ns = self.ns(i);
            if Path::new("/run/netns").join(&ns).exists() {
                // Whatever still runs in our namespace is a shoald (or shoal) this test started.
                if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                        quiet("kill", &["-9", pid]);
                    }
                }
                quiet("ip", &["netns", "del", &ns]);
            }
            quiet("ip", &["link", "del", &self.veth(i)]);
        }
        quiet("ip", &["link", "del", &self.bridge]);
        if self.iptables {
            let br = self.bridge.as_str();
            while quiet("iptables", &["-D", "FORWARD", "-i", br, "-o", br, "-j", "ACCEPT"]) {}
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.heal_all();
        self.teardown();
    }
}

// ---------------------------------------------------------------------------------------------
// The node fixture
// ---------------------------------------------------------------------------------------------

/// One `shoald` in its namespace, with its own data root, socket and log.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    /// Which host of the [`Net`] it runs on (from 1).
    pub host: usize,
    pub ns: String,
    pub ip: String,
    pub data: PathBuf,
    pub socket: PathBuf,
    /// `--test-time-scale` (divides certificate renewal waits); [`TIME_SCALE`] unless set.
    pub time_scale: String,
    /// More `shoald` arguments, for the next start (`--advertise-addr` after a move, say).
    pub args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    pub fn new(net: &Net, i: usize, dir: &Path) -> Node {
        Node {
            name: format!("n{i}"),
            host: i,
            ns: net.ns(i),
            ip: net.ip(i),
            data: dir.join(format!("n{i}")),
            socket: dir.join(format!("n{i}.sock")),
            time_scale: TIME_SCALE.to_string(),
            args: Vec::new(),
            child: None,
        }
    }

    /// The same node with another `--test-time-scale`.
    pub fn with_time_scale(mut self, scale: &str) -> Node {
        self.time_scale = scale.to_string();
        self
    }

    /// The process ID of its shoald, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log(&self) -> PathBuf {
        self.data.join("shoald.log")
    }

    pub fn certs(&self) -> PathBuf {
        self.data.join("certificates")
    }

    /// Starts shoald inside the namespace (nsenter, not `ip netns exec`, which would remount
    /// /sys) and waits until its socket answers.
    pub fn start(&mut self) {
        self.spawn();
        self.wait_answering();
    }

    /// Starts shoald inside the namespace without waiting for it (to start several at once);
    /// follow with [`Node::wait_answering`].
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        std::fs::create_dir_all(&self.data).unwrap();
        let log = OpenOptions::new().create(true).append(true).open(self.log()).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg(SHOALD)
            .arg("--data-root")
            .arg(&self.data)
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(["--hostname", &self.name, "--test-time-scale", &self.time_scale])
            .args(["--log-level", "info"])
            .args(&self.args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting shoald for {}: {e}", self.name));
        self.child = Some(child);
    }

    /// Waits until the socket of a started shoald answers `shoal info`.
    pub fn wait_answering(&mut self) {
        eventually(&format!("{}'s shoald to answer", self.name), Duration::from_secs(20), || {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("{}'s shoald exited at start ({status})", self.name);
            }
            let out = self.shoal(&["info"]);
            out.status.success().then_some(()).ok_or_else(|| text(&out))
        });
    }

    /// Whether this node's shoald is still running (not exited, not a zombie).
    pub fn running(&self) -> bool {
        let Some(child) = self.child.as_ref() else { return false };
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id()));
        // The state follows the command name in parentheses: R, S, D... or Z once exited.
        stat.ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().to_string()))
            .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
    }

    /// Kills shoald with SIGKILL (no goodbye to the manager).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `shoal -H unix://<socket> ARGS`.
    pub fn shoal(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(SHOAL);
        cmd.env_remove("SHOAL_HOST").arg("-H").arg(format!("unix://{}", self.socket.display()));
        cmd.args(args);
        run(cmd)
    }

    /// Like [`Node::shoal`], but a command that takes longer than `timeout` is killed and
    /// reported as an error instead of failing the test.
    pub fn shoal_within(&self, args: &[&str], timeout: Duration) -> Result<Output, String> {
        let mut cmd = Command::new(SHOAL);
        cmd.env_remove("SHOAL_HOST").arg("-H").arg(format!("unix://{}", self.socket.display()));
        cmd.args(args);
        run_within(cmd, timeout)
    }

    /// Like [`Node::shoal`], but panics with stdout and stderr if the command fails.
    pub fn must_shoal(&self, args: &[&str]) -> String {
        let out = self.shoal(args);
        assert!(
            out.status.success(),
            "`shoal {}` on {} failed:\n{}",
            args.join(" "),
            self.name,
            text(&out)
        );
        stdout(&out)
    }

    /// `shoal ARGS` run inside this node's namespace (for tcp:// hosts).
    pub fn shoal_in_ns(&self, args: &[String]) -> Output {
        let mut cmd = Command::new("nsenter");
        cmd.env_remove("SHOAL_HOST").arg(format!("--net=/run/netns/{}", self.ns)).arg(SHOAL);
        cmd.args(args);
        run(cmd)
    }

    /// `shoal info`, as key/value pairs.
    pub fn info(&self) -> Info {
        Info(self.must_shoal(&["info"]))
    }

    pub fn join(&self, token: &str, manager: &str) -> Output {
        self.shoal(&["swarm", "join", "--token", token, "--advertise-addr", &self.ip, manager])
    }

    /// `swarm join` that also listens on this host's cluster port (what a manager needs).
    pub fn join_listening(&self, token: &str, manager: &str) -> Output {
        let listen = format!("{}:{PORT}", self.ip);
        let args = ["swarm", "join", "--token", token, "--advertise-addr", &self.ip];
        self.shoal(&[&args[..], &["--listen-addr", &listen, manager]].concat())
    }

    /// `shoal -H tcp://MANAGER node ls` with the TLS files of `files_of`, run here.
    pub fn remote_node_ls(&self, manager: &str, files_of: &Node) -> Output {
        let certs = files_of.certs();
        let args: Vec<String> = vec![
            "-H".into(),
            format!("tcp://{manager}"),
            "--tlscacert".into(),
            certs.join("root-ca.crt").display().to_string(),
            "--tlscert".into(),
            certs.join("node.crt").display().to_string(),
            "--tlskey".into(),
            certs.join("node.pem").display().to_string(),
            "node".into(),
            "ls".into(),
        ];
        self.shoal_in_ns(&args)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        reap_containers(&self.data);
    }
}

/// Removes what a killed node's containers left behind under `dir`: the containers themselves
/// (they outlive a SIGKILLed shoald, as they should) and their rootfs mounts.
pub fn reap_containers(dir: &Path) {
    let Ok(found) = Command::new("find")
        .arg(dir)
        .args(["-maxdepth", "4", "-type", "d", "-name", "runc"])
        .output()
    else {
        return;
    };
    for root in String::from_utf8_lossy(&found.stdout).lines() {
        let list = Command::new("runc").args(["--root", root, "list", "-q"]).output();
        let Ok(list) = list else { continue };
        for id in String::from_utf8_lossy(&list.stdout).lines() {
            let _ = Command::new("runc").args(["--root", root, "delete", "--force", id]).output();
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.to_string_lossy().to_string();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    // Deepest first.
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").args(["-l", p]).output();
    }
}

/// The output of `shoal info`.
#[derive(Debug)]
pub struct Info(pub String);

impl Info {
    pub fn get(&self, key: &str) -> Option<String> {
        self.0.lines().find_map(|l| {
            let (k, v) = l.trim().split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    }

    pub fn must(&self, key: &str) -> String {
        self.get(key).unwrap_or_else(|| panic!("`shoal info` shows no {key:?}:\n{}", self.0))
    }
}

/// One row of `shoal node ls`.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub hostname: String,
    pub status: String,
    /// MANAGER STATUS: `Leader`, `Reachable`, or empty for a worker.
    pub manager_status: String,
    /// Whether the ID carries the leader's `*`.
    pub starred: bool,
}

/// Parses the `node ls` table (the leader's ID carries a `*`).
pub fn parse_node_ls(out: &str) -> Vec<Row> {
    let mut lines = out.lines();
    let header = lines.next().unwrap_or_default();
    assert!(header.starts_with("ID") && header.contains("STATUS"), "not a node table:\n{out}");
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut words: Vec<&str> = l.split_whitespace().collect();
            let starred = words.get(1) == Some(&"*");
            if starred {
                words.remove(1);
            }
            assert!(words.len() >= 4, "unreadable node ls line {l:?} in:\n{out}");
            // After AVAILABILITY come MANAGER STATUS (empty for workers) and CERT EXPIRY (one
            // RFC 3339 word, or nothing).
            let manager_status = match words.get(4) {
                Some(w) if !w.contains(|c: char| c.is_ascii_digit()) => w.to_string(),
                _ => String::new(),
            };
            Row {
                id: words[0].into(),
                hostname: words[1].into(),
                status: words[2].into(),
                manager_status,
                starred,
            }
        })
        .collect()
}

/// The leader's hostname in the `node ls` output `out`, after checking that exactly one row is
/// the leader (starred and `Leader`) and that `managers` managers are listed.
pub fn one_leader(out: &str, managers: usize) -> Result<String, String> {
    let rows = parse_node_ls(out);
    let leaders: Vec<_> =
        rows.iter().filter(|r| r.starred || r.manager_status == "Leader").collect();
    let listed = rows.iter().filter(|r| !r.manager_status.is_empty()).count();
    match leaders.as_slice() {
        [one] if one.starred && one.manager_status == "Leader" && listed == managers => {
            Ok(one.hostname.clone())
        }
        _ => Err(format!(
            "no single leader among {managers} managers ({} leader rows, {listed} managers):\n{out}",
            leaders.len()
        )),
    }
}

/// `node ls` on a manager.
pub fn node_ls(manager: &Node) -> Result<Vec<Row>, String> {
    let out = manager.shoal(&["node", "ls"]);
    if !out.status.success() {
        return Err(text(&out));
    }
    Ok(parse_node_ls(&stdout(&out)))
}

/// Checks that `node ls` lists exactly `expected` hostnames, every one `Ready`.
pub fn all_ready(manager: &Node, expected: &[&str]) -> Result<(), String> {
    let rows = node_ls(manager)?;
    let names: BTreeSet<&str> = rows.iter().map(|r| r.hostname.as_str()).collect();
    let want: BTreeSet<&str> = expected.iter().copied().collect();
    if names != want {
        return Err(format!("node ls lists {names:?}, expected {want:?}: {rows:?}"));
    }
    match rows.iter().find(|r| r.status != "Ready") {
        Some(r) => Err(format!("{} is {}, not Ready: {rows:?}", r.hostname, r.status)),
        None => Ok(()),
    }
}

pub fn status_of(manager: &Node, hostname: &str) -> Result<String, String> {
    let rows = node_ls(manager)?;
    rows.iter()
        .find(|r| r.hostname == hostname)
        .map(|r| r.status.clone())
        .ok_or_else(|| format!("{hostname} is not listed: {rows:?}"))
}

/// Whether a remote call failed only because it read a node's key and certificate while the
/// node was renewing them (they are two files); such a call is simply tried again.
pub fn torn_read(out: &Output) -> bool {
    let e = stderr(out);
    !out.status.success() && (e.contains("--tlscert/--tlskey") || e.contains("--tlskey"))
}

// ---------------------------------------------------------------------------------------------
// Running a test
// ---------------------------------------------------------------------------------------------

/// Whether `test`, which needs root for `what`, can run here: without root it prints a notice
/// and returns false (the test passes), except under CI (env `CI` set), where it panics.
pub fn root_for(test: &str, what: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test} needs root ({what}) and CI is set: run the tests as root");
    }
    eprintln!("NOTICE: {test} skipped: it needs root ({what})");
    false
}

/// Whether `test` can run here: it needs root (network namespaces, veth, a bridge), `ip` and
/// `nsenter`. Without root it prints a notice and returns false (the test passes), except under
/// CI (env `CI` set), where it panics: CI must really run it.
pub fn root_or_skip(test: &str) -> bool {
    if !root_for(test, "network namespaces, veth, a bridge") {
        return false;
    }
    for tool in ["ip", "nsenter"] {
        assert!(have(tool), "{test} needs `{tool}` (apt-get install iproute2 util-linux)");
    }
    true
}

/// The last `lines` lines of every node's log, for a failure message.
pub fn node_logs(nodes: &[Node], lines: usize) -> String {
    let mut logs = String::new();
    for node in nodes {
        logs.push_str(&format!(
            "\n----- {} ({}) last lines of {} -----\n{}\n",
            node.name,
            node.ip,
            node.log().display(),
            tail(&node.log(), lines)
        ));
    }
    logs
}

/// Ends a test run under `catch_unwind`: stops the nodes and tears the network down, and on a
/// failure panics again with the original message followed by the tail of every node's log,
/// keeping `dir` (the node directories) for inspection.
pub fn finish(result: std::thread::Result<()>, nodes: Vec<Node>, net: Net, dir: tempfile::TempDir) {
    if let Err(payload) = result {
        let logs = node_logs(&nodes, 40);
        drop(nodes);
        drop(net);
        let kept = dir.keep();
        panic!(
            "{}\n\nnode logs (kept under {}):{logs}",
            panic_text(payload.as_ref()),
            kept.display()
        );
    }
    drop(nodes);
    drop(net);
}

impl Node {
    /// Starts this node, imports the image at `tar` as `image`, and makes it a swarm of its own
    /// (`swarm init`), waiting until it is Ready.
    pub fn start_alone_with_image(&mut self, tar: &Path, image: &str) {
        self.start();
        self.must_shoal(&["image", "import", &tar.to_string_lossy(), image]);
        self.must_shoal(&["swarm", "init", "--advertise-addr", &self.ip.clone()]);
        let name = self.name.clone();
        eventually(&format!("{name} Ready"), Duration::from_secs(30), || {
            all_ready(self, &[name.as_str()])
        });
    }

    /// `shoal secret create NAME -` with `value` on stdin; panics with the output if it fails.
    pub fn must_create_secret(&self, name: &str, value: &str) {
        use std::io::Write;
        let mut child = Command::new(SHOAL)
            .env_remove("SHOAL_HOST")
            .args(["-H", &format!("unix://{}", self.socket.display()), "secret", "create"])
            .args([name, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(value.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "secret create {name}: {}", text(&out));
    }
}
