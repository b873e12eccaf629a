//! Multi-host integration test: every node is a separate `shoald` process in its own network
//! namespace (veth pairs on one bridge), and everything is driven with the `shoal` binary exactly
//! as a user would drive it.
//!
//! Needs root (network namespaces). Without root the test prints a notice and passes, except
//! under CI (env `CI` set), where it fails: CI must really run it.
//!
//! The story: init (and a refused 30m cert expiry), two workers join, a token of another cluster
//! is caught by the CA pin, the worker token is rotated (old refused, new works, the manager token
//! unchanged, existing workers stay Ready), a manager joins, certificates renew (daemons run with
//! `--test-time-scale 2000`), a worker certificate is refused by the control API, a killed node
//! goes Down, removed nodes are revoked and stay out, also after a restart.
//!
//! Hard failures stop the story at once. What a user is *told* (rather than what the cluster
//! does) is checked as a "deviation": the story goes on and fails at its end listing them all.
//! On any failure the message ends with the tail of every node's log, and the node directories
//! are kept for inspection.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");
const SHOALD: &str = env!("CARGO_BIN_EXE_shoald");

/// Divides certificate renewal waits: a 1h certificate renews after ~1-1.5 s.
const TIME_SCALE: &str = "2000";
/// How long one `shoal` invocation may take before the test calls it hung.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Cluster port.
const PORT: u16 = 4242;

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/// Polls `check` every 150 ms until it returns `Ok`, or panics with its last error after
/// `timeout`. Use it for every "wait until": never sleep in place of a condition.
fn eventually<T>(what: &str, timeout: Duration, check: impl FnMut() -> Result<T, String>) -> T {
    try_eventually(what, timeout, check).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`eventually`], but returns the timeout as an error instead of panicking.
fn try_eventually<T>(
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
struct Deviations(std::cell::RefCell<Vec<String>>);

impl Deviations {
    fn check(&self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let what = what();
            eprintln!("DEVIATION: {what}");
            self.0.borrow_mut().push(what);
        }
    }

    fn result(&self) -> Result<(), String> {
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
fn stays(what: &str, times: usize, every: Duration, mut check: impl FnMut() -> Result<(), String>) {
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
fn run(mut cmd: Command) -> Output {
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
    match rx.recv_timeout(COMMAND_TIMEOUT) {
        Ok(out) => out.unwrap_or_else(|e| panic!("waiting for {desc}: {e}")),
        Err(_) => {
            quiet("kill", &["-9", &pid.to_string()]);
            let _ = rx.recv_timeout(Duration::from_secs(5));
            panic!("{desc} hung for more than {COMMAND_TIMEOUT:?} and was killed");
        }
    }
}

/// Runs a setup or teardown command, ignoring whether it works.
fn quiet(program: &str, args: &[&str]) -> bool {
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
fn must(program: &str, args: &[&str]) {
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

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// stdout then stderr, for messages.
fn text(out: &Output) -> String {
    format!(
        "exit: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether this process runs as root (effective UID 0), read from /proc.
fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

/// The last `lines` lines of a log, with runs of lines that differ only in their timestamp
/// (retry loops) folded into one, so the tail shows more than one loop.
fn tail(path: &Path, lines: usize) -> String {
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
fn strip_ansi(s: &str) -> String {
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

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
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

/// A bridge and `count` network namespaces, each with a veth pair on the bridge, the address
/// 10.251.N.i/24 on its `eth0`, and `lo` up. Dropping it tears everything down.
#[derive(Debug)]
struct Net {
    subnet: u8,
    count: usize,
    bridge: String,
    iptables: bool,
}

impl Net {
    fn new(subnet: u8, count: usize) -> Net {
        let iptables = have("iptables");
        let net = Net { subnet, count, bridge: format!("shbr{subnet}"), iptables };
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

    fn ns(&self, i: usize) -> String {
        format!("shoal-t{}-n{i}", self.subnet)
    }

    fn veth(&self, i: usize) -> String {
        format!("sht{}n{i}", self.subnet)
    }

    fn ip(&self, i: usize) -> String {
        format!("10.251.{}.{i}", self.subnet)
    }

    fn addr(&self, i: usize) -> String {
        format!("{}:{PORT}", self.ip(i))
    }

    /// Removes everything this fixture creates, ignoring errors (so it also cleans up after a
    /// run that died half-way).
    fn teardown(&self) {
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
        self.teardown();
    }
}

// ---------------------------------------------------------------------------------------------
// The node fixture
// ---------------------------------------------------------------------------------------------

/// One `shoald` in its namespace, with its own data root, socket and log.
#[derive(Debug)]
struct Node {
    name: String,
    ns: String,
    ip: String,
    data: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn new(net: &Net, i: usize, dir: &Path) -> Node {
        Node {
            name: format!("n{i}"),
            ns: net.ns(i),
            ip: net.ip(i),
            data: dir.join(format!("n{i}")),
            socket: dir.join(format!("n{i}.sock")),
            child: None,
        }
    }

    fn log(&self) -> PathBuf {
        self.data.join("shoald.log")
    }

    fn certs(&self) -> PathBuf {
        self.data.join("certificates")
    }

    /// Starts shoald inside the namespace (nsenter, not `ip netns exec`, which would remount
    /// /sys) and waits until its socket answers.
    fn start(&mut self) {
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
            .args(["--hostname", &self.name, "--test-time-scale", TIME_SCALE])
            .args(["--log-level", "info"])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting shoald for {}: {e}", self.name));
        self.child = Some(child);
        eventually(&format!("{}'s shoald to answer", self.name), Duration::from_secs(20), || {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("{}'s shoald exited at start ({status})", self.name);
            }
            let out = self.shoal(&["info"]);
            out.status.success().then_some(()).ok_or_else(|| text(&out))
        });
    }

    /// Whether this node's shoald is still running (not exited, not a zombie).
    fn running(&self) -> bool {
        let Some(child) = self.child.as_ref() else { return false };
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id()));
        // The state follows the command name in parentheses: R, S, D... or Z once exited.
        stat.ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().to_string()))
            .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
    }

    /// Kills shoald with SIGKILL (no goodbye to the manager).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `shoal -H unix://<socket> ARGS`.
    fn shoal(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(SHOAL);
        cmd.env_remove("SHOAL_HOST").arg("-H").arg(format!("unix://{}", self.socket.display()));
        cmd.args(args);
        run(cmd)
    }

    /// Like [`Node::shoal`], but panics with stdout and stderr if the command fails.
    fn must_shoal(&self, args: &[&str]) -> String {
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
    fn shoal_in_ns(&self, args: &[String]) -> Output {
        let mut cmd = Command::new("nsenter");
        cmd.env_remove("SHOAL_HOST").arg(format!("--net=/run/netns/{}", self.ns)).arg(SHOAL);
        cmd.args(args);
        run(cmd)
    }

    /// `shoal info`, as key/value pairs.
    fn info(&self) -> Info {
        Info(self.must_shoal(&["info"]))
    }

    fn join(&self, token: &str, manager: &str) -> Output {
        self.shoal(&["swarm", "join", "--token", token, "--advertise-addr", &self.ip, manager])
    }

    /// `shoal -H tcp://MANAGER node ls` with the TLS files of `files_of`, run here.
    fn remote_node_ls(&self, manager: &str, files_of: &Node) -> Output {
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
    }
}

/// The output of `shoal info`.
#[derive(Debug)]
struct Info(String);

impl Info {
    fn get(&self, key: &str) -> Option<String> {
        self.0.lines().find_map(|l| {
            let (k, v) = l.trim().split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    }

    fn must(&self, key: &str) -> String {
        self.get(key).unwrap_or_else(|| panic!("`shoal info` shows no {key:?}:\n{}", self.0))
    }
}

/// One row of `shoal node ls`.
#[derive(Debug, Clone)]
struct Row {
    id: String,
    hostname: String,
    status: String,
}

/// Parses the `node ls` table (the leader's ID carries a `*`).
fn parse_node_ls(out: &str) -> Vec<Row> {
    let mut lines = out.lines();
    let header = lines.next().unwrap_or_default();
    assert!(header.starts_with("ID") && header.contains("STATUS"), "not a node table:\n{out}");
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut words: Vec<&str> = l.split_whitespace().collect();
            if words.get(1) == Some(&"*") {
                words.remove(1);
            }
            assert!(words.len() >= 4, "unreadable node ls line {l:?} in:\n{out}");
            Row { id: words[0].into(), hostname: words[1].into(), status: words[2].into() }
        })
        .collect()
}

/// `node ls` on a manager.
fn node_ls(manager: &Node) -> Result<Vec<Row>, String> {
    let out = manager.shoal(&["node", "ls"]);
    if !out.status.success() {
        return Err(text(&out));
    }
    Ok(parse_node_ls(&stdout(&out)))
}

/// Checks that `node ls` lists exactly `expected` hostnames, every one `Ready`.
fn all_ready(manager: &Node, expected: &[&str]) -> Result<(), String> {
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

fn status_of(manager: &Node, hostname: &str) -> Result<String, String> {
    let rows = node_ls(manager)?;
    rows.iter()
        .find(|r| r.hostname == hostname)
        .map(|r| r.status.clone())
        .ok_or_else(|| format!("{hostname} is not listed: {rows:?}"))
}

/// Whether a remote call failed only because it read a node's key and certificate while the
/// node was renewing them (they are two files); such a call is simply tried again.
fn torn_read(out: &Output) -> bool {
    let e = stderr(out);
    !out.status.success() && (e.contains("--tlscert/--tlskey") || e.contains("--tlskey"))
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

/// A /24 that concurrent runs are unlikely to share: derived from the process ID.
fn subnet() -> u8 {
    (std::process::id() % 240 + 10) as u8
}

#[test]
fn multi_host_cluster() {
    if !is_root() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "multi_host_cluster needs root (network namespaces, veth, a bridge) and CI is set: \
                 run the tests as root"
            );
        }
        eprintln!("NOTICE: multi_host_cluster skipped: it needs root (network namespaces)");
        return;
    }
    for tool in ["ip", "nsenter"] {
        assert!(
            have(tool),
            "multi_host_cluster needs `{tool}` (apt-get install iproute2 util-linux)"
        );
    }
    let started = Instant::now();
    let dir = tempfile::Builder::new().prefix("shoal-multihost-").tempdir().unwrap();
    let net = Net::new(subnet(), 5);
    let mut nodes: Vec<Node> = (1..=5).map(|i| Node::new(&net, i, dir.path())).collect();

    let result = catch_unwind(AssertUnwindSafe(|| story(&net, &mut nodes)));

    if let Err(payload) = result {
        let mut logs = String::new();
        for node in &nodes {
            logs.push_str(&format!(
                "\n----- {} ({}) last lines of {} -----\n{}\n",
                node.name,
                node.ip,
                node.log().display(),
                tail(&node.log(), 40)
            ));
        }
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
    eprintln!("multi_host_cluster: passed in {:.1}s", started.elapsed().as_secs_f64());
}

fn story(net: &Net, nodes: &mut [Node]) {
    let t0 = Instant::now();
    for node in nodes.iter_mut() {
        node.start();
    }
    let step = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    let a = net.addr(1);
    let deviations = Deviations::default();

    // --- A certificate expiry under 1h is refused. ---------------------------------------------
    step("swarm init --cert-expiry 30m is refused");
    {
        let n4 = &nodes[3];
        let out = n4.shoal(&["swarm", "init", "--advertise-addr", &n4.ip, "--cert-expiry", "30m"]);
        assert!(
            !out.status.success(),
            "init with a 30m certificate expiry worked:\n{}",
            text(&out)
        );
        let e = stderr(&out);
        assert!(e.contains("minimum") && e.contains("1h"), "no word of the 1h minimum:\n{e}");
        assert_eq!(n4.info().must("Swarm"), "inactive", "a refused init left state behind");
    }

    // --- Cluster A on n1. -----------------------------------------------------------------------
    step("swarm init on n1");
    let n1 = &nodes[0];
    let out = n1.must_shoal(&[
        "swarm",
        "init",
        "--advertise-addr",
        &net.ip(1),
        "--listen-addr",
        &a,
        "--cert-expiry",
        "1h",
        "--dispatcher-heartbeat",
        "1s",
    ]);
    assert!(out.contains("Swarm initialized"), "{out}");
    assert!(out.contains(&a), "init output does not show the address to join:\n{out}");
    let worker_token = n1.must_shoal(&["swarm", "join-token", "-q", "worker"]).trim().to_string();
    let manager_token = n1.must_shoal(&["swarm", "join-token", "-q", "manager"]).trim().to_string();
    assert!(!worker_token.is_empty() && !worker_token.contains(char::is_whitespace));
    assert_ne!(worker_token, manager_token);
    assert!(out.contains(&worker_token), "init did not print the worker token:\n{out}");

    // --- Two workers join. ----------------------------------------------------------------------
    step("n2 and n3 join as workers");
    for node in &nodes[1..3] {
        let out = node.join(&worker_token, &a);
        assert!(out.status.success(), "{} could not join:\n{}", node.name, text(&out));
        assert!(stdout(&out).contains("joined a swarm as a worker"), "{}", text(&out));
    }
    let n2_id = nodes[1].info().must("NodeID");
    let n2_first_serial = nodes[1].info().must("Certificate Serial");
    let n3_id = nodes[2].info().must("NodeID");
    eventually("3 Ready nodes", Duration::from_secs(15), || all_ready(n1, &["n1", "n2", "n3"]));
    let rows = node_ls(n1).unwrap();
    assert!(rows.iter().any(|r| r.id == n2_id) && rows.iter().any(|r| r.id == n3_id), "{rows:?}");

    // --- A token of another cluster: the CA pin catches it. ------------------------------------
    step("n4 with cluster B's token is refused by the CA pin");
    let n4 = &nodes[3];
    n4.must_shoal(&["swarm", "init", "--advertise-addr", &n4.ip, "--listen-addr", &net.addr(4)]);
    let b_token = n4.must_shoal(&["swarm", "join-token", "-q", "worker"]).trim().to_string();
    assert_ne!(b_token, worker_token);
    n4.must_shoal(&["swarm", "leave", "--force"]);
    assert_eq!(n4.info().must("Swarm"), "inactive");
    let out = n4.join(&b_token, &a);
    assert!(!out.status.success(), "n4 joined cluster A with cluster B's token:\n{}", text(&out));
    assert!(
        stderr(&out).contains("does not match the join token's digest"),
        "the refusal does not name the CA digest mismatch:\n{}",
        text(&out)
    );
    assert_eq!(n4.info().must("Swarm"), "inactive", "a refused join left state behind");

    // --- Rotating the worker token. -------------------------------------------------------------
    step("rotate the worker token");
    let out = n1.must_shoal(&["swarm", "join-token", "--rotate", "worker"]);
    assert!(out.contains("Successfully rotated worker join token"), "{out}");
    let new_worker_token =
        n1.must_shoal(&["swarm", "join-token", "-q", "worker"]).trim().to_string();
    assert_ne!(new_worker_token, worker_token, "rotation did not change the worker token");
    assert!(out.contains(&new_worker_token), "rotation did not print the new token:\n{out}");
    let manager_after = n1.must_shoal(&["swarm", "join-token", "-q", "manager"]).trim().to_string();
    assert_eq!(manager_after, manager_token, "rotating the worker token changed the manager's");

    let out = n4.join(&worker_token, &a);
    assert!(!out.status.success(), "the rotated-out worker token still works:\n{}", text(&out));
    let e = stderr(&out);
    assert!(
        e.contains("not valid") && e.contains("rotated"),
        "the refusal does not say the token is not valid / rotated:\n{}",
        text(&out)
    );
    assert_eq!(n4.info().must("Swarm"), "inactive", "a refused join left state behind");
    let out = n4.join(&new_worker_token, &a);
    assert!(out.status.success(), "n4 could not join with the new token:\n{}", text(&out));
    assert!(stdout(&out).contains("joined a swarm as a worker"), "{}", text(&out));
    let n4_id = n4.info().must("NodeID");
    eventually("4 Ready nodes", Duration::from_secs(15), || {
        all_ready(n1, &["n1", "n2", "n3", "n4"])
    });
    step("existing workers stay Ready after the rotation (5 samples, 1s apart)");
    stays("all 4 nodes Ready", 5, Duration::from_secs(1), || {
        all_ready(n1, &["n1", "n2", "n3", "n4"])
    });

    // --- The manager token still works. ---------------------------------------------------------
    step("n5 joins with the manager token");
    let n5 = &nodes[4];
    let out = n5.join(&manager_token, &a);
    assert!(out.status.success(), "n5 could not join with the manager token:\n{}", text(&out));
    assert!(stdout(&out).contains("joined a swarm as a manager"), "{}", text(&out));
    assert_eq!(n5.info().must("Role"), "manager");
    eventually("5 Ready nodes", Duration::from_secs(15), || {
        all_ready(n1, &["n1", "n2", "n3", "n4", "n5"])
    });

    // --- Certificate renewal. -------------------------------------------------------------------
    step("n2 renews its certificate");
    let n2 = &nodes[1];
    let renewed = eventually("n2 to renew its certificate", Duration::from_secs(30), || {
        let info = n2.info();
        let renewals: u64 =
            info.must("Certificate Renewals").parse().map_err(|e| format!("{e}"))?;
        let serial = info.must("Certificate Serial");
        if renewals >= 1 && serial != n2_first_serial && !serial.is_empty() {
            Ok(serial)
        } else {
            Err(format!("renewals {renewals}, serial {serial} (first {n2_first_serial})"))
        }
    });
    eventually("n1 to show n2's current serial", Duration::from_secs(15), || {
        let current = n2.info().must("Certificate Serial");
        let out = n1.shoal(&["node", "inspect", &n2_id]);
        if !out.status.success() {
            return Err(text(&out));
        }
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("node inspect printed no JSON ({e}):\n{}", text(&out)))?;
        let shown = json[0]["Certificate"]["Serial"].as_str().unwrap_or_default().to_string();
        if shown == n2_first_serial || shown != current {
            return Err(format!(
                "inspect shows {shown}, n2 has {current} (first {n2_first_serial})"
            ));
        }
        Ok(())
    });
    assert_ne!(renewed, n2_first_serial);
    assert_eq!(status_of(n1, "n2").unwrap(), "Ready", "n2 is not Ready after renewing");

    // --- A worker certificate may not call the control API. -------------------------------------
    step("the control API refuses a worker certificate and serves a manager's");
    eventually("a worker certificate to be refused", Duration::from_secs(15), || {
        let out = n1.remote_node_ls(&a, n2);
        assert!(!out.status.success(), "a worker certificate listed the nodes:\n{}", text(&out));
        if stderr(&out).contains("worker certificate may not call") {
            Ok(())
        } else if torn_read(&out) {
            Err(text(&out))
        } else {
            panic!("a worker certificate was refused without saying why:\n{}", text(&out))
        }
    });
    let listed = eventually("a manager certificate to list nodes", Duration::from_secs(15), || {
        let out = n1.remote_node_ls(&a, n1);
        out.status.success().then(|| stdout(&out)).ok_or_else(|| text(&out))
    });
    let hosts: BTreeSet<String> = parse_node_ls(&listed).into_iter().map(|r| r.hostname).collect();
    assert_eq!(hosts, ["n1", "n2", "n3", "n4", "n5"].map(String::from).into(), "{listed}");

    // --- Down detection. ------------------------------------------------------------------------
    step("kill -9 n3; it goes Down");
    nodes[2].kill();
    let n1 = &nodes[0];
    eventually("n3 to be Down", Duration::from_secs(15), || match status_of(n1, "n3")? {
        s if s == "Down" => Ok(()),
        s => Err(format!("n3 is {s}")),
    });

    // --- Removal and revocation. ----------------------------------------------------------------
    step("node rm n3 (Down) and node rm --force n4 (Ready)");
    let out = n1.must_shoal(&["node", "rm", "n3"]);
    assert_eq!(out.trim(), n3_id, "node rm did not print n3's ID");
    assert_eq!(status_of(n1, "n4").unwrap(), "Ready", "n4 should still be Ready here");
    let out = n1.shoal(&["node", "rm", &n4_id]);
    assert!(!out.status.success(), "a Ready node was removed without --force:\n{}", text(&out));
    assert!(
        stderr(&out).contains("--force"),
        "the refusal does not mention --force:\n{}",
        text(&out)
    );
    let out = n1.must_shoal(&["node", "rm", "--force", &n4_id]);
    assert_eq!(out.trim(), n4_id);
    let n4 = &nodes[3];
    let error = eventually("n4 to show its session is refused", Duration::from_secs(20), || {
        let info = n4.info();
        info.get("Error").filter(|e| !e.is_empty()).ok_or_else(|| info.0.clone())
    });
    step(&format!("n4 reports: Error: {error}"));
    // A removed node should be told why: its certificate is revoked (agent/src/connect.rs has
    // the hint for exactly this), not that the manager is unavailable.
    let told = try_eventually("n4 to say it is revoked", Duration::from_secs(10), || {
        let info = n4.info();
        let e = info.get("Error").unwrap_or_default();
        e.contains("revoked").then_some(()).ok_or(e)
    });
    deviations.check(told.is_ok(), || {
        format!(
            "`shoal info` on a node removed with `node rm --force` does not say its certificate \
             is revoked: {}",
            told.unwrap_err()
        )
    });
    stays("n4 stays out of node ls", 5, Duration::from_secs(1), || {
        all_ready(n1, &["n1", "n2", "n5"])
    });
    let out = n1.remote_node_ls(&a, n4);
    assert!(
        !out.status.success(),
        "a removed node's certificate listed the nodes:\n{}",
        text(&out)
    );
    assert!(!torn_read(&out), "could not even read n4's certificate files:\n{}", text(&out));
    step(&format!("n4's certificate on the control API: {}", stderr(&out).trim()));
    deviations.check(stderr(&out).contains("revoked"), || {
        format!(
            "`shoal -H tcp://{a} --tls* <removed node's files> node ls` does not say the \
             certificate is revoked: {}",
            stderr(&out).trim()
        )
    });
    assert!(n4.running(), "n4's shoald exited after its removal; it should keep running");

    step("restart n3 with its old data root; it stays out");
    nodes[2].start();
    let n1 = &nodes[0];
    let n3 = &nodes[2];
    assert_eq!(n3.info().must("NodeID"), n3_id, "n3 did not resume its old identity");
    stays("n3 stays out of node ls", 5, Duration::from_secs(1), || {
        let rows = node_ls(n1)?;
        match rows.iter().find(|r| r.hostname == "n3" || r.id == n3_id) {
            Some(r) => Err(format!("removed node n3 is back: {r:?}")),
            None => Ok(()),
        }
    });
    let error = eventually("n3 to show its session is refused", Duration::from_secs(20), || {
        let info = n3.info();
        info.get("Error").filter(|e| !e.is_empty()).ok_or_else(|| info.0.clone())
    });
    step(&format!("n3 reports: Error: {error}"));
    let told = try_eventually("n3 to say it is revoked", Duration::from_secs(10), || {
        let info = n3.info();
        let e = info.get("Error").unwrap_or_default();
        e.contains("revoked").then_some(()).ok_or(e)
    });
    deviations.check(told.is_ok(), || {
        format!(
            "`shoal info` on a removed node restarted with its old data root does not say its \
             certificate is revoked: {}",
            told.unwrap_err()
        )
    });
    assert!(n3.running(), "n3's shoald exited after restarting");
    all_ready(n1, &["n1", "n2", "n5"]).unwrap();

    if let Err(e) = deviations.result() {
        panic!("{e}");
    }
    eprintln!(
        "multi_host_cluster: 5 nodes in 5 namespaces on 10.251.{}.0/24: init, CA pin, token \
         rotation, manager join, renewal, worker authz, Down detection, removal and revocation \
         all behaved ({:.1}s)",
        net.subnet,
        t0.elapsed().as_secs_f64()
    );
}
