//! Networks on real hosts: three `shoald`s in their own network namespaces run real containers
//! on an overlay network, driven with the `shoal` binary as a user would.
//!
//! The story: an HTTP service (busybox httpd, 2 replicas) and a client service on the node
//! that runs neither replica; the client fetches `http://web/` (the virtual IP, spread over
//! both replicas, across nodes over VXLAN) and resolves `tasks.web` to both tasks; a task on
//! another network cannot reach web at all; a task on an `--internal` network cannot reach
//! the node's own network, while one with no network can (the gateway bridge's NAT); when a
//! replica is killed, the client's balancer stops sending to it (the test prints how fast); a
//! `--hostname` template names a task, `--dns-search`/`--dns-option` reach its resolv.conf and
//! `--dns` is where its resolver forwards other names (a nameserver outside the cluster);
//! removing the services and networks leaves no sandbox namespace behind.
//!
//! Needs root; under CI (env `CI`) it must run.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shoal_testkit::image::busybox_tar;
use shoal_testkit::netns::ps::{running, wait_running};
use shoal_testkit::netns::{self, finish, root_or_skip, text, Net, Node};
use shoal_testkit::poll::blocking::eventually;

const IMAGE: &str = "busybox:net";
const APPLETS: &[&str] = &[
    "sh", "httpd", "wget", "hostname", "mkdir", "sleep", "nslookup", "echo", "cat", "timeout",
    "grep",
];

fn subnet() -> u8 {
    (std::process::id() % 240 + 10) as u8
}

#[test]
fn networks_on_real_hosts() {
    if !root_or_skip("networks_on_real_hosts") {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::Builder::new().prefix("shoal-networks-").tempdir().unwrap();
    let net = Net::with("nw", 247, subnet(), 3);
    let mut nodes: Vec<Node> = (1..=3).map(|i| Node::new(&net, i, dir.path())).collect();
    let tar = busybox_tar(dir.path(), APPLETS).unwrap().to_string_lossy().into_owned();
    let result = catch_unwind(AssertUnwindSafe(|| story(&net, &mut nodes, &tar)));
    finish(result, nodes, net, dir);
    eprintln!("networks_on_real_hosts: passed in {:.1}s", started.elapsed().as_secs_f64());
}

/// `shoal service logs NAME` as text.
fn logs(n: &Node, service: &str) -> String {
    text(&n.shoal(&["service", "logs", service]))
}

/// A plain HTTP server in host `i`'s namespace (outside the cluster), answering `marker`.
fn host_httpd(net: &Net, i: usize, dir: &std::path::Path, marker: &str) -> Child {
    let www = dir.join(format!("www{i}"));
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), marker).unwrap();
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", net.ns(i)))
        .args(["busybox", "httpd", "-f", "-p", "8081", "-h"])
        .arg(&www)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn story(net: &Net, nodes: &mut [Node], tar: &str) {
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    netns::worker_swarm(net, nodes, tar, IMAGE);
    let n1 = &nodes[0];

    step("network create app, other; --internal inner");
    n1.must_shoal(&["network", "create", "-d", "overlay", "app"]);
    n1.must_shoal(&["network", "create", "other"]);
    n1.must_shoal(&["network", "create", "--internal", "inner"]);

    step("web: 2 replicas of httpd on n2 and n3");
    let serve = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www";
    n1.must_shoal(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "2",
        "--network",
        "app",
        "--constraint",
        "node.hostname!=n1",
        IMAGE,
        "sh",
        "-c",
        serve,
    ]);
    let placed = wait_running(n1, "web", 2, Duration::from_secs(30));
    assert_eq!(placed.keys().cloned().collect::<Vec<_>>(), ["n2", "n3"], "one replica per node");

    step("client on n1: fetches http://web/ and resolves tasks.web");
    let fetch = "while true; do echo \"got $(timeout 2 wget -q -O - http://web/)\"; \
                 echo \"tasks $(nslookup tasks.web 2>&1 | grep -c 'Address.*10\\.')\"; sleep 0.3; done";
    n1.must_shoal(&[
        "service",
        "create",
        "--name",
        "client",
        "--network",
        "app",
        "--constraint",
        "node.hostname==n1",
        IMAGE,
        "sh",
        "-c",
        fetch,
    ]);
    wait_running(n1, "client", 1, Duration::from_secs(30));
    // Both replicas answer through the virtual IP, from the node that runs neither.
    let hosts: Vec<String> = placed.values().flatten().map(|t| t.id.clone()).collect();
    eventually("the client reached both replicas by name", Duration::from_secs(30), || {
        let l = logs(n1, "client");
        let reached: Vec<&String> = hosts
            .iter()
            .filter(|id| l.contains(&format!("got {}", &id[..12.min(id.len())])))
            .collect();
        if reached.len() == 2 {
            Ok(())
        } else {
            Err(format!("reached {reached:?} of {hosts:?}; logs:\n{}", tail(&l, 10)))
        }
    });
    eventually("tasks.web resolves to both tasks", Duration::from_secs(20), || {
        let l = logs(n1, "client");
        l.contains("tasks 2").then_some(()).ok_or_else(|| tail(&l, 6))
    });

    step("a replica killed leaves the client's balancer");
    let client_id = running(n1, "client").unwrap()["n1"][0].id.clone();
    let client_ns = nodes[0].task_namespace(&client_id);
    let balancer = || {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{client_ns}"))
            .args(["nft", "list", "table", "ip", "shoal"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(balancer().contains("mod 2"), "both replicas behind the VIP:\n{}", balancer());
    nodes[2].kill_task(&placed["n3"][0].id);
    let killed = Instant::now();
    eventually("the killed replica left the VIP", Duration::from_secs(15), || {
        let now = balancer();
        (!now.contains("mod 2")).then_some(()).ok_or(now)
    });
    eprintln!("killed replica out of the VIP after {:.2}s", killed.elapsed().as_secs_f64());
    wait_running(n1, "web", 2, Duration::from_secs(30));

    step("isolation: a task on network other cannot reach web");
    let probe =
        "while true; do if timeout 1 wget -q -O - http://$0/ >/dev/null 2>&1; then echo reached; \
                 else echo blocked; fi; sleep 0.5; done";
    let vip = web_vip(n1);
    n1.must_shoal(&[
        "service",
        "create",
        "--name",
        "stranger",
        "--network",
        "other",
        "--constraint",
        "node.hostname==n1",
        IMAGE,
        "sh",
        "-c",
        probe,
        &vip,
    ]);
    wait_running(n1, "stranger", 1, Duration::from_secs(30));
    eventually("the stranger tried", Duration::from_secs(20), || {
        let l = logs(n1, "stranger");
        (l.matches("blocked").count() >= 3).then_some(()).ok_or_else(|| tail(&l, 5))
    });
    assert!(!logs(n1, "stranger").contains("reached"), "a task on another network reached web");

    step("outbound: no network reaches the node's network; --internal does not");
    let mut httpd = host_httpd(net, 1, &nodes_dir(n1), "outside-marker");
    let host_url = format!("{}:8081", net.ip(1));
    let out_probe =
        "while true; do echo \"out $(timeout 1 wget -q -O - http://$0/ 2>&1)\"; sleep 0.5; done";
    n1.must_shoal(&[
        "service",
        "create",
        "--name",
        "plain",
        "--constraint",
        "node.hostname==n1",
        IMAGE,
        "sh",
        "-c",
        out_probe,
        &host_url,
    ]);
    n1.must_shoal(&[
        "service",
        "create",
        "--name",
        "sealed",
        "--network",
        "inner",
        "--constraint",
        "node.hostname==n1",
        IMAGE,
        "sh",
        "-c",
        out_probe,
        &host_url,
    ]);
    eventually("a task on no network reaches the host", Duration::from_secs(30), || {
        let l = logs(n1, "plain");
        l.contains("out outside-marker").then_some(()).ok_or_else(|| tail(&l, 5))
    });
    eventually("the internal task tried", Duration::from_secs(30), || {
        let l = logs(n1, "sealed");
        (l.matches("out").count() >= 3).then_some(()).ok_or_else(|| tail(&l, 5))
    });
    assert!(!logs(n1, "sealed").contains("outside-marker"), "an --internal network got out");
    let _ = httpd.kill();
    let _ = httpd.wait();

    step("--hostname template, --dns (forwarded to a nameserver outside), --dns-search/-option");
    let outside = net.outside_ip();
    let dns = OutsideDns::start(&outside);
    let show = "while true; do echo \"host $(hostname)\"; cat /etc/resolv.conf; \
                if nslookup far.example 2>&1 | grep -q 10.99.99.99; then echo forwarded-ok; fi; sleep 0.5; done";
    n1.must_shoal(&[
        "service",
        "create",
        "--name",
        "named",
        "--hostname",
        "{{.Service.Name}}-{{.Task.Slot}}",
        "--dns",
        &outside,
        "--dns-search",
        "corp.example",
        "--dns-option",
        "ndots:2",
        "--constraint",
        "node.hostname==n1",
        IMAGE,
        "sh",
        "-c",
        show,
    ]);
    eventually("the task's name, resolver file and forwarder", Duration::from_secs(30), || {
        let l = logs(n1, "named");
        let ok = l.contains("host named-1")
            && l.contains("search corp.example")
            && l.contains("options ndots:2")
            && l.contains("forwarded-ok");
        ok.then_some(()).ok_or_else(|| tail(&l, 8))
    });
    assert!(dns.answered() > 0, "the outside nameserver was asked");
    drop(dns);

    step("remove everything: no sandbox is left");
    for s in ["client", "stranger", "plain", "sealed", "named", "web"] {
        n1.must_shoal(&["service", "rm", s]);
    }
    eventually("tasks gone", Duration::from_secs(30), || {
        let r = running(n1, "web").unwrap_or_default();
        r.is_empty().then_some(()).ok_or("web still runs".to_string())
    });
    for n in ["app", "other", "inner"] {
        eventually(&format!("network rm {n}"), Duration::from_secs(30), || {
            let out = n1.shoal(&["network", "rm", n]);
            out.status.success().then_some(()).ok_or_else(|| text(&out))
        });
    }
    eventually("no overlay sandbox left", Duration::from_secs(20), || {
        let left: Vec<String> = nodes.iter().flat_map(Node::namespaces).collect();
        left.is_empty().then_some(()).ok_or(format!("left: {left:?}"))
    });
}

/// The directory holding every node's data.
fn nodes_dir(n: &Node) -> std::path::PathBuf {
    n.data.parent().unwrap().to_path_buf()
}

/// web's virtual IP on its network, from `service inspect`.
fn web_vip(n: &Node) -> String {
    let out = n.must_shoal(&["service", "inspect", "web"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let addr =
        v[0]["Endpoint"]["VirtualIPs"][0]["Addr"].as_str().unwrap_or_else(|| panic!("{out}"));
    addr.split('/').next().unwrap().to_string()
}

/// A nameserver outside the cluster that answers every A question with 10.99.99.99 (enough
/// to see a task's `--dns` forwarding), on `ip`:53 in this machine's namespace.
struct OutsideDns {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    answered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OutsideDns {
    fn start(ip: &str) -> OutsideDns {
        use std::sync::atomic::Ordering;
        let socket = std::net::UdpSocket::bind((ip, 53)).expect("binding the outside nameserver");
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, a) = (stop.clone(), answered.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                if let Some(reply) = answer_a(&buf[..n]) {
                    let _ = socket.send_to(&reply, from);
                    a.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        OutsideDns { stop, answered, thread: Some(thread) }
    }

    fn answered(&self) -> usize {
        self.answered.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for OutsideDns {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The reply to a one-question query: A 10.99.99.99 for an A question, no answer otherwise.
fn answer_a(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 || u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut i = 12;
    while *query.get(i)? != 0 {
        i += 1 + usize::from(query[i]);
    }
    let end = i + 5;
    let qtype = u16::from_be_bytes([*query.get(i + 1)?, *query.get(i + 2)?]);
    let mut out = query[..2].to_vec();
    out.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(qtype == 1), 0, 0, 0, 0]);
    out.extend_from_slice(query.get(12..end)?);
    if qtype == 1 {
        out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 99, 99, 99]);
    }
    Some(out)
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
