//! Encrypted overlay networks on real hosts: three `shoald`s in their own network namespaces,
//! real containers, the real tunnel, and captures on the bridge the hosts share.
//!
//! The story: `web` (busybox httpd serving a page full of a marker) runs on n2 on an encrypted
//! network and a plain one; a client task on n3 fetches it over each. A capture on the hosts'
//! bridge finds the marker in the plain transfer (so the capture works) and not in the
//! encrypted one, which crosses the wire only as WireGuard to the tunnel port. A connection
//! kept open across several key rotations (every 10s here) never breaks. When n3's agent is
//! killed its task cannot reach web in the clear or at all; restarted while the managers are
//! out of its reach, it brings the tunnel back by itself. A node removed from the cluster is
//! refused: a handshake made with its key (read from its key file) gets no answer, while the
//! same handshake made with a member's key does.
//!
//! Needs root; under CI (env `CI`) it must run.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_testkit::image::busybox_tar;
use shoal_testkit::netns::ps::{running, wait_running};
use shoal_testkit::netns::tunnel::{
    contains, handshake_answered, in_netns, newest_key, newest_public, Capture, TUNNEL_PORT,
};
use shoal_testkit::netns::{self, finish, root_or_skip, text, Net, Node, PORT};
use shoal_testkit::poll::blocking::eventually;

const IMAGE: &str = "busybox:enc";
const APPLETS: &[&str] = &["sh", "httpd", "wget", "mkdir", "sleep", "echo", "seq", "timeout"];
const MARKER: &str = "SHOAL-PLAINTEXT-MARKER";

fn subnet() -> u8 {
    (std::process::id() % 240 + 10) as u8
}

#[test]
fn encrypted_networks_on_real_hosts() {
    if !root_or_skip("encrypted_networks_on_real_hosts") {
        return;
    }
    assert!(
        netns::have("tcpdump"),
        "encrypted_networks_on_real_hosts needs tcpdump (apt-get install tcpdump)"
    );
    let started = Instant::now();
    let dir = tempfile::Builder::new().prefix("shoal-encrypted-").tempdir().unwrap();
    let net = Net::with("en", 246, subnet(), 3);
    let mut nodes: Vec<Node> = (1..=3).map(|i| Node::new(&net, i, dir.path())).collect();
    let tar = busybox_tar(dir.path(), APPLETS).unwrap().to_string_lossy().into_owned();
    let result = catch_unwind(AssertUnwindSafe(|| story(&net, &mut nodes, &tar, dir.path())));
    finish(result, nodes, net, dir);
    eprintln!(
        "encrypted_networks_on_real_hosts: passed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// The IPv4 address the namespace `ns` has in `subnet` (a /24: its first three bytes).
fn addr_on(ns: &str, subnet: &str) -> String {
    let out = Command::new("ip").args(["-n", ns, "-4", "-o", "addr", "show"]).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let prefix = &subnet[..subnet.rfind('.').unwrap() + 1];
    listing
        .split_whitespace()
        .find(|w| w.starts_with(prefix))
        .and_then(|cidr| cidr.split('/').next())
        .unwrap_or_else(|| panic!("no address in {subnet} in {ns}:\n{listing}"))
        .to_string()
}

/// `busybox wget` of `url` from inside the namespace `ns` (a task's): the body, or the error.
fn fetch_from(ns: &str, url: &str, timeout_secs: u32) -> Result<String, String> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["busybox", "timeout", &timeout_secs.to_string(), "busybox", "wget", "-q", "-O", "-"])
        .arg(url)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(text(&out))
    }
}

/// The newest tunnel key fingerprint `node inspect --pretty` shows for `name`.
fn fingerprint(n: &Node, name: &str) -> String {
    let out = n.must_shoal(&["node", "inspect", "--pretty", name]);
    let line = out
        .lines()
        .find(|l| l.starts_with("Tunnel key:"))
        .unwrap_or_else(|| panic!("no tunnel key shown:\n{out}"));
    line.split_whitespace().nth(2).unwrap_or("").to_string()
}

fn story(net: &Net, nodes: &mut [Node], tar: &str, dir: &std::path::Path) {
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    // Strict reverse-path filtering on the task nodes, as some distributions set it: the
    // tunnel's decrypted packets must pass it.
    for i in [2, 3] {
        let ns = format!("--net=/run/netns/{}", net.ns(i));
        let strict = ["sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=1"];
        assert!(Command::new("nsenter").arg(&ns).args(strict).status().unwrap().success());
    }
    netns::worker_swarm(net, nodes, tar, IMAGE);
    let (first, others) = nodes.split_at_mut(1);
    let n1 = &first[0];

    step("networks: secure (--opt encrypted) and plain");
    let secure_subnet = "10.97.1.0/24";
    let plain_subnet = "10.97.2.0/24";
    n1.must_shoal(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--opt",
        "encrypted",
        "--subnet",
        secure_subnet,
        "secure",
    ]);
    n1.must_shoal(&["network", "create", "--subnet", plain_subnet, "plain"]);
    let inspect = n1.must_shoal(&["network", "inspect", "secure"]);
    assert!(inspect.contains("\"encrypted\""), "network inspect shows the option:\n{inspect}");
    for name in ["n1", "n2", "n3"] {
        let f = fingerprint(n1, name);
        assert!(f.starts_with("sha256:"), "{name} reports a tunnel key: {f}");
    }

    step("web on n2 (secure, plain); a client on n3 (secure, plain)");
    let serve = format!(
        "mkdir -p /www && for i in $(seq 1 3000); do echo {MARKER}-$i; done > /www/index.html \
         && exec httpd -f -p 80 -h /www"
    );
    n1.must_shoal(&[
        "service",
        "create",
        "--name",
        "web",
        "--network",
        "secure",
        "--network",
        "plain",
        "--constraint",
        "node.hostname==n2",
        IMAGE,
        "sh",
        "-c",
        &serve,
    ]);
    n1.must_shoal(&[
        "service",
        "create",
        "--name",
        "client",
        "--network",
        "secure",
        "--network",
        "plain",
        "--constraint",
        "node.hostname==n3",
        IMAGE,
        "sleep",
        "3600",
    ]);
    let web = wait_running(n1, "web", 1, Duration::from_secs(40));
    let client = wait_running(n1, "client", 1, Duration::from_secs(40));
    let web_ns = others[0].task_namespace(&web["n2"][0].id);
    let client_ns = others[1].task_namespace(&client["n3"][0].id);
    let web_secure = addr_on(&web_ns, secure_subnet);
    let web_plain = addr_on(&web_ns, plain_subnet);
    let secure_url = format!("http://{web_secure}/");
    let plain_url = format!("http://{web_plain}/");

    step("tasks on n3 and n2 talk over the encrypted network");
    eventually("the client fetched web over secure", Duration::from_secs(30), || {
        let body = fetch_from(&client_ns, &secure_url, 3)?;
        body.contains(&format!("{MARKER}-3000")).then_some(()).ok_or_else(|| body.len().to_string())
    });

    // Captured on n2's port of the hosts' bridge: every packet n2 sends or receives.
    step("a capture on the bridge: the marker crosses plain, never secure");
    let plain_cap = Capture::start(&net.veth(2), &dir.join("plain.pcap"));
    fetch_from(&client_ns, &plain_url, 10).expect("the plain fetch");
    let plain_bytes = plain_cap.stop();
    assert!(
        contains(&plain_bytes, MARKER.as_bytes()),
        "the capture must see the plain transfer's marker ({} bytes captured)",
        plain_bytes.len()
    );
    let secure_file = dir.join("secure.pcap");
    let secure_cap = Capture::start(&net.veth(2), &secure_file);
    let body = fetch_from(&client_ns, &secure_url, 10).expect("the encrypted fetch");
    assert!(body.contains(&format!("{MARKER}-3000")), "the whole page came through");
    let secure_bytes = secure_cap.stop();
    assert!(
        !contains(&secure_bytes, MARKER.as_bytes()),
        "the marker crossed the wire in the clear on the encrypted network"
    );
    let tunnel_packets = Capture::count(&secure_file, &format!("udp port {TUNNEL_PORT}"));
    let vxlan_clear = Capture::count(&secure_file, "udp port 4790");
    eprintln!(
        "encrypted fetch: {tunnel_packets} packets on the tunnel port, {vxlan_clear} clear VXLAN"
    );
    // (Few packets: segmentation offloads hand the capture whole bursts.)
    assert!(tunnel_packets > 0, "the transfer went through the tunnel");
    assert_eq!(vxlan_clear, 0, "no encrypted network's VXLAN leaves a node unencrypted");

    step("key rotation every 10s during a 35s connection");
    n1.must_shoal(&["swarm", "update", "--network-key-rotation", "10s"]);
    let addr: SocketAddr = format!("{web_secure}:9099").parse().unwrap();
    let lines = 350;
    let server = in_netns(&format!("/run/netns/{web_ns}"), move || {
        let listener = TcpListener::bind(addr).expect("listen in web's namespace");
        let (mut conn, _) = listener.accept().expect("the client connects");
        for i in 0..lines {
            writeln!(conn, "line {i}").map_err(|e| format!("write {i}: {e}"))?;
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok::<(), String>(())
    });
    let reader = in_netns(&format!("/run/netns/{client_ns}"), move || {
        // The server thread may not be listening yet: retry a refused connect for a while.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let conn = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                Ok(conn) => break conn,
                Err(e) if std::time::Instant::now() > deadline => {
                    return Err(format!("connect: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = 0;
        for line in BufReader::new(conn).lines() {
            let line = line.map_err(|e| format!("after {got} lines: {e}"))?;
            if line != format!("line {got}") {
                return Err(format!("line {got} came as {line:?}"));
            }
            got += 1;
        }
        Ok::<usize, String>(got)
    });
    let mut seen = std::collections::BTreeSet::new();
    let rotating = Instant::now();
    while !reader.is_finished() && rotating.elapsed() < Duration::from_secs(60) {
        seen.insert(fingerprint(n1, "n2"));
        std::thread::sleep(Duration::from_secs(1));
    }
    let got = reader.join().unwrap();
    server.join().unwrap().expect("the server wrote every line");
    assert_eq!(got, Ok(lines), "the connection survived the rotations");
    assert!(seen.len() >= 3, "n2's key rotated at least twice during the transfer: {seen:?}");
    n1.must_shoal(&["swarm", "update", "--network-key-rotation", "12h"]);
    // The page still comes after the rotations (new sessions on new keys).
    fetch_from(&client_ns, &secure_url, 5).expect("a fetch after the rotations");

    step("n3's agent killed: its task reaches web neither in the clear nor at all");
    others[1].kill();
    let killed_cap = Capture::start(&net.veth(2), &dir.join("killed.pcap"));
    let refused = fetch_from(&client_ns, &secure_url, 3);
    let killed_bytes = killed_cap.stop();
    assert!(refused.is_err(), "without its tunnel, the task's traffic must not flow");
    assert!(!contains(&killed_bytes, MARKER.as_bytes()), "nothing crossed in the clear");
    assert_eq!(Capture::count(&dir.join("killed.pcap"), "udp port 4790"), 0, "fail closed");

    step("restarted with the managers out of reach, it brings its tunnel back");
    let block = format!(
        "add table ip shoal-test-block; add chain ip shoal-test-block out {{ type filter hook \
         output priority 0; }}; add rule ip shoal-test-block out ip daddr {} tcp dport {PORT} drop",
        net.ip(1)
    );
    let ns3 = format!("--net=/run/netns/{}", net.ns(3));
    let blocked = Command::new("nsenter").args([&ns3, "nft", &block]).status().unwrap();
    assert!(blocked.success(), "block n3 -> manager");
    others[1].start();
    eventually("the restarted agent's task reaches web again", Duration::from_secs(30), || {
        fetch_from(&client_ns, &secure_url, 3).map(|_| ())
    });
    let info = text(&others[1].shoal(&["info"]));
    eprintln!("n3 while cut off from the managers:\n{info}");
    let _ =
        Command::new("nsenter").args([&ns3, "nft", "delete table ip shoal-test-block"]).status();

    step("n3 removed: a handshake with its key is answered before, refused after");
    let n2_public = newest_public(&others[0].data);
    let n2_tunnel: SocketAddr = format!("{}:{TUNNEL_PORT}", net.ip(2)).parse().unwrap();
    let from_n3 = format!("/run/netns/{}", net.ns(3));
    assert!(
        handshake_answered(&from_n3, newest_key(&others[1].data), n2_public, n2_tunnel),
        "control: n2 answers the key of n3 while n3 is a member"
    );
    n1.must_shoal(&["node", "rm", "--force", "n3"]);
    let peers_file = others[0].data.join("net").join("tunnel-peers.json");
    eventually("n2 dropped n3 from its tunnel peers", Duration::from_secs(30), || {
        let peers = std::fs::read_to_string(&peers_file).unwrap_or_default();
        (!peers.contains(&format!("\"{}\"", net.ip(3)))).then_some(()).ok_or(peers)
    });
    assert!(
        !handshake_answered(&from_n3, newest_key(&others[1].data), n2_public, n2_tunnel),
        "n2 answered the removed node's key"
    );
    assert!(running(n1, "web").is_ok_and(|r| r.contains_key("n2")), "web runs on");
}
