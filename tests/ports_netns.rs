//! Published ports on real hosts: three `shoald`s in their own network namespaces, driven with
//! the `shoal` binary as a user would, reached from outside the cluster (another host's
//! namespace) with plain HTTP.
//!
//! The story: web (busybox httpd, 2 replicas on n2 and n3) publishes 8080 on the routing
//! mesh; every node answers on 8080, n1 too (it runs no replica), and the answers come from
//! both replicas; the node's own 127.0.0.1:8080 answers too. A replica killed leaves every
//! node's forwarding at once. edge publishes 9090 in host mode on n2 only: n2 answers, the
//! others refuse, and a second service wanting 9090 on n2 is kept pending with the reason.
//! `service update --publish-rm/--publish-add` moves web to another port. A stack from a
//! compose file with `ports:` and `networks:` (an alias, the stack's short names) works end
//! to end: its front service, published on 8090, answers with what it fetched from its api
//! service by name; `stack rm` takes its network away. When the services and the ingress
//! network are removed, no namespace, interface or rule of the mesh is left.
//!
//! Needs root; under CI (env `CI`) it must run.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_testkit::image::busybox_tar;
use shoal_testkit::netns::ps::{parse_ps, running, wait_running};
use shoal_testkit::netns::{self, all_ready, finish, root_or_skip, text, Net, Node};
use shoal_testkit::poll::blocking::eventually;

const IMAGE: &str = "busybox:ports";
const APPLETS: &[&str] =
    &["sh", "httpd", "hostname", "mkdir", "wget", "sleep", "echo", "cat", "timeout", "mv"];
/// What each replica serves: its hostname (its task ID's first 12 characters).
const SERVE: &str = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www";

fn subnet() -> u8 {
    (std::process::id() % 240 + 10) as u8
}

#[test]
fn published_ports_on_real_hosts() {
    if !root_or_skip("published_ports_on_real_hosts") {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::Builder::new().prefix("shoal-ports-").tempdir().unwrap();
    let net = Net::with("pt", 246, subnet(), 3);
    let mut nodes: Vec<Node> = (1..=3).map(|i| Node::new(&net, i, dir.path())).collect();
    let tar = busybox_tar(dir.path(), APPLETS).unwrap().to_string_lossy().into_owned();
    let result = catch_unwind(AssertUnwindSafe(|| story(&net, &mut nodes, &tar)));
    finish(result, nodes, net, dir);
    eprintln!("published_ports_on_real_hosts: passed in {:.1}s", started.elapsed().as_secs_f64());
}

/// An HTTP GET of `http://ip:port/` from host `from`'s namespace: the body, or why not.
fn fetch(net: &Net, from: usize, ip: &str, port: u16) -> Result<String, String> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", net.ns(from)))
        .args(["timeout", "3", "busybox", "wget", "-q", "-O", "-"])
        .arg(format!("http://{ip}:{port}/"))
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(text(&out))
    }
}

/// The hostnames that answered `tries` fetches of `ip:port` from host `from`.
fn answers(net: &Net, from: usize, ip: &str, port: u16, tries: usize) -> BTreeSet<String> {
    (0..tries).filter_map(|_| fetch(net, from, ip, port).ok()).collect()
}

/// Runs `nft` in host `i`'s namespace (the node's own).
fn node_nft(net: &Net, i: usize, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", net.ns(i)))
        .arg("nft")
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The directory holding every node's data.
fn nodes_dir(n: &Node) -> std::path::PathBuf {
    n.data.parent().unwrap().to_path_buf()
}

fn story(net: &Net, nodes: &mut [Node], tar: &str) {
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    netns::worker_swarm(net, nodes, tar, IMAGE);
    let n1 = &nodes[0];
    let ips: Vec<String> = nodes.iter().map(|n| n.ip.clone()).collect();

    step("web publishes 8080 on the routing mesh, replicas on n2 and n3");
    n1.must_shoal(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "2",
        "--publish",
        "8080:80",
        "--constraint",
        "node.hostname!=n1",
        IMAGE,
        "sh",
        "-c",
        SERVE,
    ]);
    let placed = wait_running(n1, "web", 2, Duration::from_secs(30));
    assert_eq!(placed.keys().cloned().collect::<Vec<_>>(), ["n2", "n3"]);
    let replicas: BTreeSet<String> =
        placed.values().flatten().map(|t| t.id[..12.min(t.id.len())].to_string()).collect();
    let ls = n1.must_shoal(&["service", "ls"]);
    assert!(ls.contains("*:8080->80/tcp"), "{ls}");

    step("every node answers on 8080 from both replicas, n1 (no replica) too");
    for (i, ip) in ips.iter().enumerate() {
        let from = (i + 1) % 3 + 1; // another host
        eventually(&format!("{ip}:8080 reaches both replicas"), Duration::from_secs(30), || {
            let got = answers(net, from, ip, 8080, 12);
            (got == replicas).then_some(()).ok_or(format!("answered by {got:?}, want {replicas:?}"))
        });
    }
    // The node's own connections to its published port: loopback and its own address.
    eventually("127.0.0.1:8080 on n1", Duration::from_secs(10), || {
        let body = fetch(net, 1, "127.0.0.1", 8080)?;
        replicas.contains(&body).then_some(()).ok_or(body)
    });

    step("a replica killed leaves the routing mesh");
    let (victim_node, victim) =
        placed.iter().next().map(|(n, t)| (n.clone(), t[0].id.clone())).unwrap();
    let before = node_nft(net, 1, &["list", "table", "ip", "shoal-mesh"]);
    assert!(before.contains("mod 2"), "both replicas in n1's mesh:\n{before}");
    let killed_at = Instant::now();
    nodes[if victim_node == "n2" { 1 } else { 2 }].kill_task(&victim);
    eventually("the killed replica left n1's forwarding", Duration::from_secs(15), || {
        let now = node_nft(net, 1, &["list", "table", "ip", "shoal-mesh"]);
        (!now.contains("mod 2")).then_some(()).ok_or(now)
    });
    eprintln!(
        "killed replica out of the mesh after {:.2}s (heartbeat 1s)",
        killed_at.elapsed().as_secs_f64()
    );
    // The survivor keeps answering on every node while the replacement starts.
    for (i, ip) in ips.iter().enumerate() {
        let from = (i + 1) % 3 + 1;
        fetch(net, from, ip, 8080).unwrap_or_else(|e| panic!("{ip}:8080 after the kill: {e}"));
    }
    wait_running(n1, "web", 2, Duration::from_secs(30));

    step("n3's agent restarts: its task keeps its namespace, processes and place in the mesh");
    let before = running(n1, "web").unwrap();
    let on_n3 = before["n3"][0].id.clone();
    let ns = nodes[2].task_namespace(&on_n3);
    let identity = |ns: &str| {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(format!("/run/netns/{ns}")).map(|m| m.ino()).unwrap_or(0);
        let pids = Command::new("ip").args(["netns", "pids", ns]).output().unwrap();
        (
            ino,
            String::from_utf8_lossy(&pids.stdout)
                .split_whitespace()
                .map(String::from)
                .collect::<BTreeSet<_>>(),
        )
    };
    let was = identity(&ns);
    assert!(!was.1.is_empty(), "the task runs");
    nodes[2].kill();
    nodes[2].start();
    let n1 = &nodes[0];
    eventually("3 nodes Ready again", Duration::from_secs(30), || {
        all_ready(n1, &["n1", "n2", "n3"])
    });
    eventually("n3's task still runs after the restart", Duration::from_secs(20), || {
        let now = running(n1, "web")?;
        let ids: Vec<String> = now.values().flatten().map(|t| t.id.clone()).collect();
        ids.contains(&on_n3).then_some(()).ok_or(format!("{now:?}"))
    });
    assert_eq!(identity(&ns), was, "same namespace and processes: nothing was re-plumbed");
    let got = running(n1, "web").unwrap();
    let replicas: BTreeSet<String> =
        got.values().flatten().map(|t| t.id[..12.min(t.id.len())].to_string()).collect();
    eventually("n3:8080 reaches both replicas after the restart", Duration::from_secs(20), || {
        let got = answers(net, 1, &ips[2], 8080, 12);
        (got == replicas).then_some(()).ok_or(format!("answered by {got:?}, want {replicas:?}"))
    });

    step("edge publishes 9090 in host mode on n2: only n2 answers");
    n1.must_shoal(&[
        "service",
        "create",
        "--name",
        "edge",
        "--publish",
        "published=9090,target=80,mode=host",
        "--constraint",
        "node.hostname==n2",
        IMAGE,
        "sh",
        "-c",
        SERVE,
    ]);
    let edge = wait_running(n1, "edge", 1, Duration::from_secs(30));
    let edge_id = edge["n2"][0].id[..12].to_string();
    eventually("n2:9090 answers from edge", Duration::from_secs(20), || {
        let body = fetch(net, 1, &ips[1], 9090)?;
        (body == edge_id).then_some(()).ok_or(body)
    });
    for i in [0, 2] {
        let refused = fetch(net, 2, &ips[i], 9090);
        assert!(refused.is_err(), "{}:9090 answered without a task: {refused:?}", ips[i]);
    }
    // A second task wanting 9090 on n2 waits, saying why.
    n1.must_shoal(&[
        "service",
        "create",
        "--name",
        "edge2",
        "--detach",
        "--publish",
        "published=9090,target=80,mode=host",
        "--constraint",
        "node.hostname==n2",
        IMAGE,
        "sh",
        "-c",
        SERVE,
    ]);
    eventually("edge2 pending on the port", Duration::from_secs(20), || {
        let out = n1.shoal(&["service", "ps", "--no-trunc", "edge2"]);
        let rows = parse_ps(&String::from_utf8_lossy(&out.stdout));
        let why = rows.iter().find(|r| r.error.contains("host-mode port 9090/tcp"));
        why.map(drop).ok_or(format!("{rows:?}"))
    });

    step("service update moves web from 8080 to 8081");
    n1.must_shoal(&[
        "service",
        "update",
        "--publish-rm",
        "8080",
        "--publish-add",
        "8081:80",
        "web",
    ]);
    eventually("n1:8081 answers and 8080 does not", Duration::from_secs(30), || {
        let body = fetch(net, 2, &ips[0], 8081)?;
        if fetch(net, 2, &ips[0], 8080).is_ok() {
            return Err("8080 still answers".into());
        }
        (!body.is_empty()).then_some(()).ok_or(body)
    });

    step("a stack with ports: and networks: whose services talk by name");
    let compose = r#"
version: "3.8"
services:
  api:
    image: busybox:ports
    command: sh -c 'mkdir -p /www && echo "api $$(hostname)" > /www/index.html && exec httpd -f -p 80 -h /www'
    networks:
      back:
        aliases: [backend]
    deploy: {replicas: 2}
  front:
    image: busybox:ports
    command:
      - sh
      - -c
      - |
        mkdir -p /www
        httpd -p 80 -h /www
        while true; do
          a=$$(timeout 2 wget -q -O - http://api/)
          b=$$(timeout 2 wget -q -O - http://backend/)
          echo "front saw [$$a] [$$b]" > /www/next && mv /www/next /www/index.html
          sleep 0.3
        done
    ports: ["8090:80"]
    networks: [back]
networks:
  back:
    driver: overlay
"#;
    let file = nodes_dir(n1).join("shop.yml");
    std::fs::write(&file, compose).unwrap();
    let out = n1.must_shoal(&["stack", "deploy", "-c", &file.to_string_lossy(), "shop"]);
    assert!(out.contains("Creating network shop_back") && !out.contains("Ignoring"), "{out}");
    wait_running(n1, "shop_api", 2, Duration::from_secs(30));
    eventually("shop's front answers on 8090 with api's answers", Duration::from_secs(40), || {
        let body = fetch(net, 3, &ips[0], 8090)?;
        let ok = body.starts_with("front saw [api ") && body.contains("] [api ");
        ok.then_some(()).ok_or(body)
    });
    let out = n1.must_shoal(&["stack", "rm", "shop"]);
    assert!(out.contains("Removing network shop_back"), "{out}");
    let nets = n1.must_shoal(&["network", "ls"]);
    assert!(!nets.contains("shop_back"), "{nets}");

    step("remove everything: the mesh leaves nothing behind");
    for s in ["web", "edge", "edge2"] {
        n1.must_shoal(&["service", "rm", s]);
    }
    eventually("tasks gone", Duration::from_secs(30), || {
        let r = running(n1, "web").unwrap_or_default();
        r.is_empty().then_some(()).ok_or("web still runs".to_string())
    });
    eventually("network rm ingress", Duration::from_secs(30), || {
        let out = n1.shoal(&["network", "rm", "ingress"]);
        out.status.success().then_some(()).ok_or_else(|| text(&out))
    });
    for (i, n) in nodes.iter().enumerate() {
        eventually(&format!("{} is clean", n.name), Duration::from_secs(20), || {
            let left = n.namespaces();
            if !left.is_empty() {
                return Err(format!("namespaces left: {left:?}"));
            }
            let tables = node_nft(net, i + 1, &["list", "tables"]);
            if tables.contains("shoal-mesh") {
                return Err(format!("tables left: {tables}"));
            }
            let links = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", net.ns(i + 1)))
                .args(["ip", "-o", "link", "show"])
                .output()
                .unwrap();
            let links = String::from_utf8_lossy(&links.stdout).into_owned();
            let leg = links
                .lines()
                .find(|l| l.split(':').nth(1).is_some_and(|n| n.trim().starts_with("ig")));
            match leg {
                Some(l) => Err(format!("ingress leg left: {l}")),
                None => Ok(()),
            }
        });
    }
}
