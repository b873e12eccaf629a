//! Faults a chaos run injects into its hosts, and how each is undone: kill -9 and restart,
//! SIGSTOP/SIGCONT, a host cut off, two hosts that cannot reach each other, a lossy and slow
//! link, a clock jump (libfaketime), a full disk (a tmpfs data root filled up).
//!
//! [`Faults`] holds what is in force; [`Faults::heal_all`] undoes all of it and its `Drop` does
//! too, so a failed run leaves no rule, qdisc, stopped process or full disk behind. What outlives
//! it by design is removed with the namespaces and mounts by the netns fixture.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::netns::{quiet, Net, Node, SHOALD};
use crate::poll::blocking::try_eventually;

/// libfaketime, from Debian's `libfaketime` (pulled in by `faketime`).
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// How many kinds [`Faults::pick`] chooses from.
const KINDS: u8 = 9;

/// One fault, on nodes given by index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of shoald; healed by starting it again.
    Kill(usize),
    /// SIGSTOP of shoald (of several at once: a majority that heals).
    Pause(Vec<usize>),
    /// Hosts cut off the bridge.
    Isolate(Vec<usize>),
    /// Two hosts that drop each other's packets (iptables in both namespaces).
    Cut(usize, usize),
    /// A link that drops a share of the packets both ways and is slow (iptables `statistic`;
    /// `tc netem` delay where the kernel has it, a `tbf` rate limit otherwise).
    Lossy(usize, u32),
    /// The node's wall clock moved by this offset (libfaketime's syntax: `+2h`, `-30m`).
    Clock(usize, String),
    /// The node's data root full.
    Disk(usize),
}

impl Fault {
    /// The kind, for counts.
    pub fn kind(&self) -> String {
        match self {
            Fault::Kill(_) => "kill -9".into(),
            Fault::Pause(n) if n.len() > 1 => "SIGSTOP (majority)".into(),
            Fault::Pause(_) => "SIGSTOP".into(),
            Fault::Isolate(n) if n.len() > 1 => "partition (majority)".into(),
            Fault::Isolate(_) => "partition (one host)".into(),
            Fault::Cut(..) => "partition (pair)".into(),
            Fault::Lossy(..) => "lossy slow link".into(),
            Fault::Clock(..) => "clock jump".into(),
            Fault::Disk(_) => "full disk".into(),
        }
    }
}

/// Something a host did that no fault asked for.
#[derive(Clone, Debug)]
pub struct HostEvent {
    pub what: String,
    pub expected: bool,
}

/// The hosts of a run and the faults in force on them.
#[derive(Debug)]
pub struct Faults<'a> {
    pub net: &'a Net,
    pub nodes: &'a mut [Node],
    pub managers: usize,
    /// The node whose shoald runs under libfaketime, and its timestamp file.
    pub clock: Option<(usize, PathBuf)>,
    /// Whether this kernel has `sch_netem`.
    pub netem: bool,
    /// Whether a full disk may hit a manager (see [`super::ChaosConfig::disk_on_managers`]).
    pub disk_on_managers: bool,
    active: Vec<Fault>,
    /// Fault kinds still to come before the next shuffle.
    deck: Vec<u8>,
    /// Faults injected, by kind.
    pub injected: BTreeMap<String, usize>,
    /// What happened to the hosts themselves: a shoald that exited, or did not come back.
    /// `expected` when it was a shoald that exited with its disk full (it does, on purpose).
    pub events: Vec<HostEvent>,
}

impl<'a> Faults<'a> {
    pub fn new(net: &'a Net, nodes: &'a mut [Node], managers: usize) -> Faults<'a> {
        Faults {
            net,
            nodes,
            managers,
            clock: None,
            netem: netem_available(),
            disk_on_managers: true,
            active: Vec::new(),
            deck: Vec::new(),
            injected: BTreeMap::new(),
            events: Vec::new(),
        }
    }

    /// A random fault. Kinds come from a shuffled deck, so a run of a dozen faults has met
    /// every kind; most are on one node (a minority), the majority ones on more than half the
    /// managers (they heal, so the quorum comes back).
    pub fn pick(&mut self, rng: &mut StdRng) -> Fault {
        if self.deck.is_empty() {
            self.deck = (0..KINDS).collect();
            self.deck.shuffle(rng);
        }
        let kind = self.deck.pop().unwrap_or(0);
        let n = self.nodes.len();
        let any = |rng: &mut StdRng| rng.gen_range(0..n);
        let majority = self.managers / 2 + 1;
        let some_managers = |rng: &mut StdRng| {
            let mut all: Vec<usize> = (0..self.managers).collect();
            all.shuffle(rng);
            all.truncate(majority);
            all
        };
        match kind {
            0 => Fault::Kill(any(rng)),
            1 => Fault::Pause(vec![any(rng)]),
            2 => Fault::Pause(some_managers(rng)),
            3 => Fault::Isolate(vec![any(rng)]),
            4 => Fault::Isolate(some_managers(rng)),
            5 => {
                let a = any(rng);
                let b = (a + rng.gen_range(1..n)) % n;
                Fault::Cut(a, b)
            }
            6 => Fault::Lossy(any(rng), rng.gen_range(10..=40)),
            7 if self.clock.is_some() => {
                let offsets = ["+3h", "-2h", "+40m", "-25m", "+1d", "-10m"];
                let i = self.clock.as_ref().map(|c| c.0).unwrap_or(0);
                Fault::Clock(i, offsets[rng.gen_range(0..offsets.len())].into())
            }
            7 => Fault::Kill(any(rng)),
            _ if !self.disk_on_managers && n > self.managers => {
                Fault::Disk(rng.gen_range(self.managers..n))
            }
            _ => Fault::Disk(any(rng)),
        }
    }

    /// Puts `fault` in force.
    pub fn inject(&mut self, fault: Fault) {
        *self.injected.entry(fault.kind()).or_default() += 1;
        match &fault {
            Fault::Kill(i) => self.nodes[*i].kill(),
            Fault::Pause(is) => is.iter().for_each(|i| self.signal(*i, "-STOP")),
            Fault::Isolate(is) => is.iter().for_each(|i| self.net.partition(self.nodes[*i].host)),
            Fault::Cut(a, b) => {
                self.drop_between(*a, *b, "-I");
                self.drop_between(*b, *a, "-I");
            }
            Fault::Lossy(i, percent) => self.lossy(*i, *percent, true),
            Fault::Clock(i, offset) => self.set_clock(*i, offset),
            Fault::Disk(i) => fill(&self.nodes[*i].data),
        }
        self.active.push(fault);
    }

    /// Undoes every fault in force, newest first, then starts any shoald that is not running.
    pub fn heal_all(&mut self) {
        let mut full = Vec::new();
        while let Some(fault) = self.active.pop() {
            if let Fault::Disk(i) = fault {
                full.push(i);
            }
            self.heal(&fault);
        }
        for i in 0..self.nodes.len() {
            self.ensure_running(i, full.contains(&i));
        }
    }

    fn heal(&mut self, fault: &Fault) {
        match fault {
            Fault::Kill(i) => self.restart(*i),
            Fault::Pause(is) => is.iter().for_each(|i| self.signal(*i, "-CONT")),
            Fault::Isolate(is) => is.iter().for_each(|i| self.net.heal(self.nodes[*i].host)),
            Fault::Cut(a, b) => {
                self.drop_between(*a, *b, "-D");
                self.drop_between(*b, *a, "-D");
            }
            Fault::Lossy(i, percent) => self.lossy(*i, *percent, false),
            Fault::Clock(i, _) => self.set_clock(*i, "+0"),
            Fault::Disk(i) => {
                let _ = std::fs::remove_file(fill_path(&self.nodes[*i].data));
            }
        }
    }

    /// Starts node `i`'s shoald again if it exited (`disk_was_full`: it may, on purpose;
    /// anything else is noted as unexpected).
    fn ensure_running(&mut self, i: usize, disk_was_full: bool) {
        if self.nodes[i].running() {
            return;
        }
        let name = self.nodes[i].name.clone();
        let tail = crate::netns::tail(&self.nodes[i].log(), 3);
        let what = format!("{name}'s shoald had exited; last log lines:\n{tail}");
        self.events.push(HostEvent { what, expected: disk_was_full });
        self.restart(i);
    }

    /// Kills (reaps) and starts node `i`'s shoald, waiting until it answers.
    fn restart(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.kill();
        node.spawn();
        let answered = try_eventually(
            &format!("{} to answer after a restart", node.name),
            Duration::from_secs(30),
            || {
                if !node.running() {
                    return Err("it exited".to_string());
                }
                let out = node.shoal(&["info"]);
                out.status.success().then_some(()).ok_or_else(|| crate::netns::text(&out))
            },
        );
        if let Err(e) = answered {
            let tail = crate::netns::tail(&node.log(), 10);
            let what = format!("{} did not come back: {e}\n{tail}", node.name);
            self.events.push(HostEvent { what, expected: false });
        }
    }

    fn signal(&self, i: usize, sig: &str) {
        if let Some(pid) = self.nodes[i].pid() {
            quiet("kill", &[sig, &pid.to_string()]);
        }
    }

    /// Adds (`-I`) or removes (`-D`) the rules by which host `a` drops packets from and to `b`.
    fn drop_between(&self, a: usize, b: usize, how: &str) {
        let ns = format!("--net=/run/netns/{}", self.nodes[a].ns);
        let ip = self.nodes[b].ip.clone();
        for (chain, dir) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
            let rule = ["nsenter", &ns, "iptables", how, chain, dir, &ip, "-j", "DROP"];
            quiet(rule[0], &rule[1..]);
        }
    }

    fn lossy(&self, i: usize, percent: u32, on: bool) {
        let ns = format!("--net=/run/netns/{}", self.nodes[i].ns);
        let p = format!("{:.2}", percent as f64 / 100.0);
        let how = if on { "-I" } else { "-D" };
        for chain in ["INPUT", "OUTPUT"] {
            let rule = ["nsenter", &ns, "iptables", how, chain, "-m", "statistic"];
            let rule =
                [&rule[..], &["--mode", "random", "--probability", &p, "-j", "DROP"]].concat();
            quiet(rule[0], &rule[1..]);
        }
        let veth = self.net.veth(self.nodes[i].host);
        if !on {
            quiet("tc", &["qdisc", "del", "dev", &veth, "root"]);
        } else if self.netem {
            quiet("tc", &["qdisc", "add", "dev", &veth, "root", "netem", "delay", "80ms", "40ms"]);
        } else {
            let tbf = ["rate", "256kbit", "burst", "16kbit", "latency", "300ms"];
            quiet("tc", &[&["qdisc", "add", "dev", &veth, "root", "tbf"][..], &tbf[..]].concat());
        }
    }

    fn set_clock(&self, i: usize, offset: &str) {
        if let Some((c, file)) = &self.clock {
            if *c == i {
                std::fs::write(file, format!("{offset}\n")).expect("writing the faketime file");
            }
        }
    }
}

impl Drop for Faults<'_> {
    fn drop(&mut self) {
        // Never leave a stopped process, a rule or a full disk behind, even after a panic.
        while let Some(fault) = self.active.pop() {
            match &fault {
                Fault::Kill(_) => {}
                _ => self.heal(&fault),
            }
        }
    }
}

/// Whether `tc … netem` works here (a kernel without `sch_netem` refuses it).
pub fn netem_available() -> bool {
    let probe = format!("shchprobe{}", std::process::id() % 10000);
    let peer = format!("{probe}p");
    if !quiet("ip", &["link", "add", &probe, "type", "veth", "peer", "name", &peer]) {
        return false;
    }
    let ok = quiet("tc", &["qdisc", "add", "dev", &probe, "root", "netem", "delay", "1ms"]);
    quiet("ip", &["link", "del", &probe]);
    ok
}

fn fill_path(data: &Path) -> PathBuf {
    data.join("chaos-fill")
}

/// Fills the file system of `data` (a small tmpfs) until it has no byte left.
fn fill(data: &Path) {
    let of = format!("of={}", fill_path(data).display());
    // dd stops at ENOSPC, having written all it could.
    quiet("dd", &["if=/dev/zero", &of, "bs=1M"]);
}

/// A script that starts this build's shoald under libfaketime, its wall clock offset by what
/// `file` says (re-read every second; the monotonic clock stays real). Written into `dir`.
pub fn faketime_wrapper(dir: &Path, file: &Path) -> PathBuf {
    std::fs::write(file, "+0\n").expect("writing the faketime file");
    let script = dir.join("shoald-faketime");
    let body = format!(
        "#!/bin/sh\nexport LD_PRELOAD={LIBFAKETIME}\nexport FAKETIME_TIMESTAMP_FILE={}\n\
         export FAKETIME_CACHE_DURATION=1\nexport FAKETIME_DONT_FAKE_MONOTONIC=1\n\
         exec {} \"$@\"\n",
        file.display(),
        SHOALD.display()
    );
    std::fs::write(&script, body).expect("writing the faketime wrapper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// Checks that libfaketime moves a dynamically linked program's wall clock by what `file`
/// says, on this machine: `date` started as the wrapper starts shoald, with the file at `+1d`.
pub fn faketime_works(file: &Path) -> Result<(), String> {
    std::fs::write(file, "+1d\n").map_err(|e| e.to_string())?;
    let out = std::process::Command::new("date")
        .arg("+%s")
        .env("LD_PRELOAD", LIBFAKETIME)
        .env("FAKETIME_TIMESTAMP_FILE", file)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .output()
        .map_err(|e| e.to_string());
    std::fs::write(file, "+0\n").map_err(|e| e.to_string())?;
    let faked: u64 = String::from_utf8_lossy(&out?.stdout).trim().parse().map_err(|_| "no date")?;
    let real = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let ahead = faked as i64 - real.as_secs() as i64;
    // A day ahead, give or take the time `date` took.
    if (86_000..86_800).contains(&ahead) {
        Ok(())
    } else {
        Err(format!("libfaketime put the clock {ahead}s ahead, not a day"))
    }
}

/// libfaketime's shared memory files now in /dev/shm (a killed process leaves its own).
pub fn faketime_shm() -> Vec<PathBuf> {
    let entries = std::fs::read_dir("/dev/shm").into_iter().flatten().flatten();
    entries
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains("faketime_")))
        .collect()
}
