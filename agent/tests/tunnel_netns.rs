//! The encrypted overlay's tunnel between two real hosts: network namespaces joined by a veth
//! pair, each with a `Tunnel` started from a thread inside it and kernel VXLAN devices on top
//! (one on the encrypted port, one plain, for comparison). What the underlay carries is read
//! with tcpdump on the veth. Needs root, iproute2, nftables and tcpdump.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::x25519::{PublicKey, StaticSecret};
use shoal_agent::net::tunnel::{
    self, Peer, Tunnel, TunnelConfig, TunnelStats, TUNNEL_OVERHEAD, TUNNEL_PORT,
};

const VXLAN_PORT: u16 = 4790;
const PLAIN_PORT: u16 = 4789;
const DEVICE: &str = "shtun";

/// True when the test can run: root with the tools. Under CI a missing one fails the test.
fn can_run(test: &str) -> bool {
    let tools = ["ip", "bridge", "nft", "tcpdump", "nsenter"];
    let missing: Vec<&str> = tools.into_iter().filter(|t| !have(t)).collect();
    if rustix::process::geteuid().is_root() && missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs root and {missing:?} under CI (apt-get install iproute2 nftables tcpdump)"
    );
    eprintln!("NOTICE: {test} skipped: needs root and ip, bridge, nft, tcpdump, nsenter");
    false
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn must(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("running a tool");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn quiet(args: &[&str]) {
    let _ = Command::new(args[0]).args(&args[1..]).output();
}

/// Runs `f` in a thread that has entered network namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("opening the namespace");
        let net = rustix::thread::LinkNameSpaceType::Network;
        rustix::thread::move_into_link_name_space(file.as_fd(), Some(net)).expect("setns");
        f()
    })
    .join()
    .expect("a thread in a namespace panicked")
}

/// Waits until `f` holds; panics with `what` after `limit`.
fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two hosts, `a` and `b`: namespaces `shtn<id>a`/`shtn<id>b`, veths of the same names, on
/// 10.249.<subnet>.1 and .2. Encrypted VXLAN `vxe` carries 172.29.<subnet>.0/24, plain VXLAN
/// `vxp` 172.30.<subnet>.0/24. Dropping it removes the namespaces (and all in them).
struct Hosts {
    names: [String; 2],
    subnet: u8,
    keys: [StaticSecret; 2],
    tunnels: [Option<Arc<Tunnel>>; 2],
}

impl Hosts {
    fn new(id: u8) -> Hosts {
        let subnet = (std::process::id() % 100) as u8 * 2 + id + 20;
        let names = [format!("shtn{id}a"), format!("shtn{id}b")];
        for n in &names {
            quiet(&["ip", "netns", "del", n]); // leftovers of an earlier run
        }
        let keys = [0, 1].map(|_| StaticSecret::random_from_rng(rand::rngs::OsRng));
        let hosts = Hosts { names, subnet, keys, tunnels: [None, None] };
        let [a, b] = &hosts.names;
        for n in [a, b] {
            must(&["ip", "netns", "add", n]);
            must(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        must(&["ip", "-n", a, "link", "add", a, "type", "veth", "peer", "name", b, "netns", b]);
        for i in 0..2 {
            let n = &hosts.names[i];
            must(&["ip", "-n", n, "addr", "add", &format!("{}/24", hosts.ip(i)), "dev", n]);
            must(&["ip", "-n", n, "link", "set", n, "up"]);
        }
        hosts
    }

    fn ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 249, self.subnet, i as u8 + 1)
    }

    /// Host `i`'s address on the encrypted (or plain) overlay.
    fn inner(&self, i: usize, encrypted: bool) -> Ipv4Addr {
        Ipv4Addr::new(172, if encrypted { 29 } else { 30 }, self.subnet, i as u8 + 1)
    }

    fn cfg(&self, i: usize) -> TunnelConfig {
        TunnelConfig {
            device: DEVICE.into(),
            listen_port: TUNNEL_PORT,
            local_addr: self.ip(i),
            vxlan_port: VXLAN_PORT,
            table: u32::from(VXLAN_PORT),
        }
    }

    /// Host `i` as host `1 - i` knows it, with `keys` (newest first).
    fn peer(&self, i: usize, keys: &[&StaticSecret]) -> Peer {
        Peer {
            node_id: self.names[i].clone(),
            addr: self.ip(i),
            endpoint: SocketAddr::from((self.ip(i), TUNNEL_PORT)),
            keys: keys.iter().map(|k| *PublicKey::from(*k).as_bytes()).collect(),
        }
    }

    /// Starts host `i`'s tunnel (from inside its namespace) with its key and the other
    /// host as its peer.
    fn start(&mut self, i: usize) {
        let (cfg, key) = (self.cfg(i), self.keys[i].clone());
        let tunnel = in_ns(&self.names[i], move || Tunnel::start(cfg, vec![key]))
            .expect("starting the tunnel");
        tunnel.set_peers(vec![self.peer(1 - i, &[&self.keys[1 - i]])]);
        self.tunnels[i] = Some(tunnel);
    }

    fn tunnel(&self, i: usize) -> &Tunnel {
        self.tunnels[i].as_ref().expect("a started tunnel")
    }

    /// Both overlays on both hosts: VXLAN devices whose every frame goes to the other host.
    fn overlays(&self) {
        for i in 0..2 {
            let n = &self.names[i];
            for (dev, vni, port, encrypted) in
                [("vxe", "100", VXLAN_PORT, true), ("vxp", "101", PLAIN_PORT, false)]
            {
                let mtu = 1450 - if encrypted { TUNNEL_OVERHEAD } else { 0 };
                let port = port.to_string();
                must(&[
                    "ip",
                    "-n",
                    n,
                    "link",
                    "add",
                    dev,
                    "type",
                    "vxlan",
                    "id",
                    vni,
                    "dstport",
                    &port,
                    "nolearning",
                ]);
                must(&["ip", "-n", n, "link", "set", dev, "mtu", &mtu.to_string(), "up"]);
                must(&[
                    "ip",
                    "-n",
                    n,
                    "addr",
                    "add",
                    &format!("{}/24", self.inner(i, encrypted)),
                    "dev",
                    dev,
                ]);
                let other = self.ip(1 - i).to_string();
                must(&[
                    "bridge",
                    "-n",
                    n,
                    "fdb",
                    "append",
                    "00:00:00:00:00:00",
                    "dev",
                    dev,
                    "dst",
                    &other,
                ]);
            }
        }
    }

    fn stats(&self, i: usize) -> TunnelStats {
        self.tunnel(i).stats()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for t in self.tunnels.iter_mut().filter_map(Option::take) {
            t.stop();
        }
        for n in &self.names {
            quiet(&["ip", "netns", "del", n]);
        }
    }
}

/// A marker no packet carries by chance.
fn marker() -> String {
    format!("shoal-tunnel-marker-{:08x}", std::process::id())
}

/// Sends `total` bytes of the marker over TCP from namespace `from` to `to` in namespace
/// `to_ns`; returns what the receiver got (after the sender's last byte).
fn transfer(from: &str, to_ns: &str, to: SocketAddr, total: usize) -> usize {
    let received = receiver(to_ns, to);
    let sent = in_ns(from, move || {
        let mut s = connect(to, Duration::from_secs(20));
        let chunk = marker().repeat(1024);
        let mut sent = 0;
        while sent < total {
            let n = chunk.len().min(total - sent);
            s.write_all(&chunk.as_bytes()[..n]).expect("sending");
            sent += n;
        }
        sent
    });
    let got = received.join().expect("the receiver panicked");
    assert_eq!(got, sent, "the receiver got all that was sent");
    got
}

/// Accepts one connection on `at` in `ns` and reads it to its end (bounded by a deadline).
fn receiver(ns: &str, at: SocketAddr) -> std::thread::JoinHandle<usize> {
    let listener = in_ns(ns, move || TcpListener::bind(at).expect("binding the receiver"));
    std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let end = Instant::now() + Duration::from_secs(60);
        let mut conn = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("no connection came: {e}"),
            }
        };
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0;
        loop {
            match conn.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got += n,
                Err(e) => panic!("the transfer failed after {got} bytes: {e}"),
            }
        }
    })
}

/// Connects to `to`, retrying until `limit` (the first handshake and ARP take a moment).
fn connect(to: SocketAddr, limit: Duration) -> TcpStream {
    let end = Instant::now() + limit;
    loop {
        match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
            Ok(s) => return s,
            Err(e) if Instant::now() > end => panic!("could not connect to {to}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// tcpdump on an interface of a namespace, writing everything to a file.
struct Capture {
    child: Child,
    /// Kept open: tcpdump reports on it when it stops (a closed pipe would kill it).
    stderr: std::process::ChildStderr,
    file: PathBuf,
}

impl Capture {
    fn start(ns: &str, dev: &str, dir: &Path, name: &str) -> Capture {
        let file = dir.join(format!("{name}.pcap"));
        let net = format!("--net=/run/netns/{ns}");
        let mut child = Command::new("nsenter")
            .args([
                &net,
                "tcpdump",
                "-Z",
                "root",
                "--immediate-mode",
                "-B",
                "65536",
                "-i",
                dev,
                "-n",
                "-U",
                "-s",
                "70000",
                "-w",
            ])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tcpdump");
        // It says "listening on …" once it captures.
        let mut stderr = child.stderr.take().unwrap();
        let mut said = Vec::new();
        let mut byte = [0u8; 1];
        while !String::from_utf8_lossy(&said).contains("listening on") {
            match stderr.read(&mut byte) {
                Ok(1) => said.push(byte[0]),
                _ => panic!("tcpdump did not start: {}", String::from_utf8_lossy(&said)),
            }
        }
        Capture { child, stderr, file }
    }

    /// Stops the capture (after a moment for the last packets); returns what it saw.
    fn finish(mut self) -> Captured {
        std::thread::sleep(Duration::from_millis(200));
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        let mut report = String::new();
        let _ = self.stderr.read_to_string(&mut report);
        let _ = self.child.wait();
        eprintln!("capture {}: {}", self.file.display(), report.trim().replace('\n', "; "));
        Captured { bytes: std::fs::read(&self.file).expect("reading the capture"), file: self.file }
    }
}

struct Captured {
    bytes: Vec<u8>,
    file: PathBuf,
}

impl Captured {
    fn shows(&self, needle: &str) -> bool {
        self.bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    /// Packets matching a tcpdump filter.
    fn count(&self, filter: &str) -> usize {
        let out = Command::new("tcpdump")
            .args(["-n", "-r"])
            .arg(&self.file)
            .arg(filter)
            .stderr(Stdio::null())
            .output()
            .expect("reading the capture");
        String::from_utf8_lossy(&out.stdout).lines().count()
    }
}

#[test]
fn encrypted_vxlan_works_and_never_shows_in_the_clear_even_after_a_stop() {
    if !can_run("encrypted_vxlan_works_and_never_shows_in_the_clear_even_after_a_stop") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut hosts = Hosts::new(1);
    hosts.start(0);
    hosts.start(1);
    hosts.overlays();
    let [a, b] = hosts.names.clone();
    let (inner_e, inner_p) = (hosts.inner(1, true), hosts.inner(1, false));
    let port = |p: u16, encrypted| SocketAddr::from((if encrypted { inner_e } else { inner_p }, p));

    // (a) TCP across the encrypted overlay; both ends see the peer established.
    transfer(&a, &b, port(5001, true), 64 << 10);
    assert!(hosts.stats(0).peers[0].established && hosts.stats(1).peers[0].established);
    assert!(hosts.stats(1).peers[0].rx_bytes > 64 << 10);

    // (b) On the underlay: only WireGuard, never the marker, never the VXLAN port...
    let cap = Capture::start(&a, &a, dir.path(), "encrypted");
    transfer(&a, &b, port(5002, true), 2 << 20);
    let seen = cap.finish();
    assert!(!seen.shows(&marker()), "the marker crossed the underlay in the clear");
    assert_eq!(seen.count(&format!("udp port {VXLAN_PORT}")), 0, "encrypted VXLAN in the clear");
    // (The plain overlay's own chatter, IPv6 neighbour discovery, goes on beside it.)
    let other = format!("udp and not port {TUNNEL_PORT} and not port {PLAIN_PORT}");
    assert_eq!(seen.count(&other), 0, "UDP besides the tunnel's and the plain overlay's");
    let sealed = seen.count(&format!("udp port {TUNNEL_PORT}"));
    assert!(sealed > 10, "the capture saw the transfer ({sealed} packets)");
    // ...while the same transfer over plain VXLAN shows it (the capture does see payloads).
    let cap = Capture::start(&a, &a, dir.path(), "plain");
    transfer(&a, &b, port(5003, false), 2 << 20);
    let seen = cap.finish();
    assert!(seen.shows(&marker()), "plain VXLAN carries the marker in the clear");
    let plain = seen.count(&format!("udp port {PLAIN_PORT}"));
    assert!(plain > 10, "the capture saw the transfer ({plain} packets)");

    // (c) A stopped tunnel (the agent gone): A's encrypted VXLAN goes nowhere, in the clear
    // least of all, and plaintext VXLAN sent to B's encrypted port is not let in.
    hosts.tunnels[0].take().unwrap().stop();
    let cap = Capture::start(&a, &a, dir.path(), "stopped");
    let (to, msg) = (port(9, true), marker());
    in_ns(&a, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..50 {
            let _ = s.send_to(msg.as_bytes(), to);
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let seen = cap.finish();
    assert!(!seen.shows(&marker()), "a stopped tunnel let the marker out");
    assert_eq!(seen.count(&format!("udp port {VXLAN_PORT}")), 0, "VXLAN left in the clear");
    assert!(Command::new("ip")
        .args(["-n", &a, "link", "show", DEVICE])
        .output()
        .is_ok_and(|o| !o.status.success()));

    // Without the guards (`remove`, once A has no encrypted network left), A can send plain
    // VXLAN to B's encrypted port: B's guard keeps it out, where the plain port lets it in.
    let cfg = hosts.cfg(0);
    in_ns(&a, move || tunnel::remove(&cfg));
    let rules =
        Command::new("ip").args(["-n", &a, "rule", "show", "pref", "1100"]).output().unwrap();
    assert!(rules.stdout.is_empty(), "remove left the rule");
    let nft = Command::new("nsenter")
        .args([&format!("--net=/run/netns/{a}"), "nft", "list", "tables"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&nft.stdout).contains("shoal-tunnel"),
        "remove left the nft table"
    );
    assert!(injected(&hosts, false), "a crafted plain VXLAN frame gets in");
    assert!(!injected(&hosts, true), "plain VXLAN got into the encrypted network");

    // A restarted tunnel puts everything back and carries traffic again.
    hosts.start(0);
    transfer(&a, &b, port(5004, true), 64 << 10);
    let stats = hosts.stats(1);
    assert_eq!(stats.dropped.cryptokey, 0, "{stats:?}");
}

/// Sends, from host A's namespace, a VXLAN frame of our own making with a UDP datagram for
/// host B's address on the encrypted (or plain) overlay; whether B's listener got it.
fn injected(hosts: &Hosts, encrypted: bool) -> bool {
    let (a, b) = (hosts.names[0].clone(), hosts.names[1].clone());
    let dev = if encrypted { "vxe" } else { "vxp" };
    let out = Command::new("ip").args(["-n", &b, "-j", "link", "show", dev]).output().unwrap();
    let link: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mac: Vec<u8> = link[0]["address"]
        .as_str()
        .unwrap()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    let inner = SocketAddr::from((hosts.inner(1, encrypted), 7001));
    let listener = in_ns(&b, move || UdpSocket::bind(inner).unwrap());
    listener.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let (vni, port) = if encrypted { (100, VXLAN_PORT) } else { (101, PLAIN_PORT) };
    let frame = vxlan_frame(vni, &mac, hosts.inner(0, encrypted), inner, marker().as_bytes());
    let to = SocketAddr::from((hosts.ip(1), port));
    in_ns(&a, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..3 {
            s.send_to(&frame, to).unwrap();
        }
    });
    let mut buf = [0u8; 512];
    listener.recv(&mut buf).is_ok()
}

/// VXLAN header + Ethernet + IPv4 + UDP (no checksum) around `payload`.
fn vxlan_frame(vni: u32, dst_mac: &[u8], src: Ipv4Addr, to: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let SocketAddr::V4(to) = to else { unreachable!() };
    let mut f = vec![0x08, 0, 0, 0];
    f.extend_from_slice(&(vni << 8).to_be_bytes());
    f.extend_from_slice(dst_mac);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&to.ip().octets());
    let sum = ip.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum::<u32>();
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&to.port().to_be_bytes());
    f.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

#[test]
fn removed_peers_are_refused_and_key_rotations_keep_connections() {
    if !can_run("removed_peers_are_refused_and_key_rotations_keep_connections") {
        return;
    }
    let mut hosts = Hosts::new(2);
    hosts.start(0);
    hosts.start(1);
    hosts.overlays();
    let [a, b] = hosts.names.clone();
    let to = SocketAddr::from((hosts.inner(1, true), 5001));
    transfer(&a, &b, to, 64 << 10);

    // (e) A rotates its key while a TCP transfer runs: B learns [new, old], A takes
    // [new, old], traffic moves to the new pair, then the old key goes; the transfer ends
    // with every byte.
    let running = Arc::new(AtomicBool::new(true));
    let to = SocketAddr::from((hosts.inner(1, true), 5002));
    let received = receiver(&b, to);
    let flag = running.clone();
    let sender = std::thread::spawn({
        let a = a.clone();
        move || {
            in_ns(&a, move || {
                let mut s = connect(to, Duration::from_secs(20));
                let chunk = marker().repeat(64);
                let mut sent = 0;
                while flag.load(Ordering::Relaxed) {
                    s.write_all(chunk.as_bytes())
                        .expect("the connection failed during the rotation");
                    sent += chunk.len();
                    std::thread::sleep(Duration::from_millis(1));
                }
                sent
            })
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let (old, new) = (hosts.keys[0].clone(), StaticSecret::random_from_rng(rand::rngs::OsRng));
    hosts.tunnel(1).set_peers(vec![hosts.peer(0, &[&new, &old])]);
    hosts.tunnel(0).set_keys(vec![new.clone(), old.clone()]);
    eventually(Duration::from_secs(30), "the newest key pair is established", || {
        let s = hosts.stats(0);
        s.peers[0].links.iter().any(|l| l.local_key == 0 && l.established)
    });
    let before = hosts.stats(1).peers[0].rx_bytes;
    std::thread::sleep(Duration::from_millis(500));
    hosts.tunnel(0).set_keys(vec![new.clone()]);
    hosts.tunnel(1).set_peers(vec![hosts.peer(0, &[&new])]);
    eventually(Duration::from_secs(10), "traffic flows on the new key alone", || {
        let s = hosts.stats(1);
        s.peers[0].links.len() == 1 && s.peers[0].rx_bytes > before + (256 << 10)
    });
    running.store(false, Ordering::Relaxed);
    let sent = sender.join().expect("the sender panicked");
    let got = received.join().expect("the receiver panicked");
    assert_eq!(got, sent, "every byte arrived across the rotation");
    hosts.keys[0] = new;

    // (d) B drops A: A's packets stop at once, and when A's tunnel starts over and
    // handshakes again, B refuses its key.
    hosts.tunnel(1).set_peers(Vec::new());
    let probe = |hosts: &Hosts| {
        let (a, b) = (hosts.names[0].clone(), hosts.names[1].clone());
        let at = SocketAddr::from((hosts.inner(1, true), 7000));
        let listener = in_ns(&b, move || UdpSocket::bind(at).unwrap());
        listener.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let msg = marker();
        in_ns(&a, move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..20 {
                let _ = s.send_to(msg.as_bytes(), at);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let mut buf = [0u8; 256];
        listener.recv(&mut buf).is_ok()
    };
    assert!(!probe(&hosts), "a removed peer's packets still arrive");
    assert!(hosts.stats(1).dropped.unknown_link > 0, "{:?}", hosts.stats(1));
    hosts.tunnels[0].take().unwrap().stop();
    hosts.start(0);
    eventually(Duration::from_secs(15), "B refuses A's handshakes", || {
        let _ = probe(&hosts);
        hosts.stats(1).refused_handshakes > 0
    });
    assert!(!probe(&hosts), "a refused peer's packets arrive");
    assert!(!hosts.stats(0).peers[0].established);
}

/// Throughput of the bare underlay, plain VXLAN and encrypted VXLAN between the two hosts,
/// with iperf3 (TCP, one stream, 5 s), three rounds interleaved; prints the medians. Asserts
/// nothing about speed: run it by hand, in a release build
/// (`cargo test --release -p shoal-agent --test tunnel_netns -- --ignored --nocapture`).
#[test]
#[ignore]
fn measure_throughput() {
    if !can_run("measure_throughput") || !have("iperf3") {
        return;
    }
    let mut hosts = Hosts::new(4);
    hosts.start(0);
    hosts.start(1);
    hosts.overlays();
    transfer(
        &hosts.names[0],
        &hosts.names[1],
        SocketAddr::from((hosts.inner(1, true), 5001)),
        1 << 16,
    );
    let paths = [
        ("veth", hosts.ip(1)),
        ("plain VXLAN", hosts.inner(1, false)),
        ("encrypted VXLAN", hosts.inner(1, true)),
    ];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for _ in 0..3 {
        for (i, (_, addr)) in paths.iter().enumerate() {
            results[i].push(iperf3(&hosts.names[0], &hosts.names[1], *addr));
        }
    }
    for ((name, _), mut r) in paths.iter().zip(results) {
        r.sort_by(f64::total_cmp);
        eprintln!("{name:>16}: median {:.2} Gbit/s (runs {r:.2?})", r[1]);
    }
    eprintln!("{:?}", hosts.stats(0));
}

/// One iperf3 run from `from` to a server at `addr` in `to`, in Gbit/s received.
fn iperf3(from: &str, to: &str, addr: Ipv4Addr) -> f64 {
    let mut server = Command::new("nsenter")
        .args([&format!("--net=/run/netns/{to}"), "iperf3", "-s", "-1", "-B", &addr.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .expect("starting iperf3");
    std::thread::sleep(Duration::from_millis(500));
    let out = Command::new("nsenter")
        .args([
            &format!("--net=/run/netns/{from}"),
            "iperf3",
            "-J",
            "-t",
            "5",
            "-c",
            &addr.to_string(),
        ])
        .output()
        .expect("running iperf3");
    let _ = server.wait();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3's report");
    report["end"]["sum_received"]["bits_per_second"].as_f64().expect("a throughput") / 1e9
}
