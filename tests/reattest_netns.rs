//! Nodes whose certificate expired while they were off, on real hosts: a manager and three
//! workers in network namespaces, the manager's time running 30 times faster so certificates
//! can last two minutes (the floor is an hour in real time).
//!
//! The story: the workers are stopped until their certificates have expired. One comes back
//! and waits, listed as needing approval, until `shoal node approve`; then it is Ready with a
//! new certificate and runs a task. Another gives up waiting: it cannot join while it waits,
//! leaves, and joins again. The cluster then allows re-attestation within a window, and the
//! last comes back on its own. A node that did not ask cannot be approved.
//!
//! Needs root; under CI (env `CI`) it must run.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use shoal_testkit::image::busybox_tar;
use shoal_testkit::netns::ps::wait_running;
use shoal_testkit::netns::{all_ready, run_story, status_of, text, tls_status_of, Net, Node};
use shoal_testkit::poll::blocking::eventually;

const IMAGE: &str = "busybox:t";
const SCALE: &str = "30";

#[test]
fn a_node_back_with_an_expired_certificate_reattests() {
    run_story(
        "a_node_back_with_an_expired_certificate_reattests",
        "ra",
        236,
        4,
        4,
        |net, nodes, dir| story(net, nodes, dir),
    );
}

fn certificate(node: &Node) -> shoal_pki::PeerIdentity {
    let pem = std::fs::read_to_string(node.certs().join("node.crt")).unwrap();
    shoal_pki::PeerIdentity::from_pem(&pem).unwrap()
}

fn ready(n1: &Node, host: &str) -> Result<(), String> {
    let s = status_of(n1, host)?;
    (s == "Ready").then_some(()).ok_or(s)
}

fn story(net: &Net, nodes: &mut [Node], dir: &Path) {
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    let tar = busybox_tar(dir, &[]).unwrap().to_string_lossy().into_owned();
    // The manager's time runs 30 times faster (its floor is 2 minutes); the workers renew in
    // real time, their certificates being short already.
    for (i, n) in nodes.iter_mut().enumerate() {
        n.time_scale = if i == 0 { SCALE } else { "1" }.to_string();
        n.start();
        n.must_shoal(&["image", "import", &tar, IMAGE]);
    }
    let addr = net.addr(1);
    let n1 = &nodes[0];
    n1.init_swarm();
    // Below the scaled floor (an hour / 30 = 2 minutes) is refused with the floor named.
    let out = n1.shoal(&["swarm", "update", "--cert-expiry", "1m"]);
    assert!(!out.status.success() && text(&out).contains("minimum of 2m"), "{}", text(&out));
    n1.must_shoal(&["swarm", "update", "--cert-expiry", "2m"]);
    let token = n1.must_shoal(&["swarm", "join-token", "-q", "worker"]);
    for n in &nodes[1..] {
        let out = n.join(token.trim(), &addr);
        assert!(out.status.success(), "{}", text(&out));
    }
    eventually("3 nodes Ready", Duration::from_secs(30), || {
        all_ready(&nodes[0], &["n1", "n2", "n3", "n4"])
    });
    let first = certificate(&nodes[1]);
    let life = first.not_after.duration_since(first.not_before).unwrap();
    assert_eq!(life, Duration::from_secs(240), "2-minute certificates, backdated as long");

    // A node that never asked cannot be approved.
    let out = nodes[0].shoal(&["node", "approve", "n2"]);
    assert!(!out.status.success() && text(&out).contains("has not asked"), "{}", text(&out));

    step("stop the three workers until their certificates expire");
    for n in &mut nodes[1..] {
        n.kill();
    }
    let expiry = nodes[1..].iter().map(|n| certificate(n).not_after).max().unwrap();
    let wait =
        expiry.duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_secs(2);
    step(&format!("waiting {:.0}s", wait.as_secs_f64()));
    std::thread::sleep(wait);
    for n in &nodes[1..] {
        assert!(certificate(n).not_after < SystemTime::now(), "{}'s certificate expired", n.name);
    }

    step("n2 comes back: it waits for approval");
    let old_serial = certificate(&nodes[1]).serial_hex;
    nodes[1].start();
    eventually("n2 listed as needing approval", Duration::from_secs(30), || {
        let s = tls_status_of(&nodes[0], "n2");
        (s == "Approval").then_some(()).ok_or(s)
    });
    // The manager lists it before its answer reaches n2.
    eventually("n2 says what it waits for", Duration::from_secs(10), || {
        let info = text(&nodes[1].shoal(&["info"]));
        info.contains("shoal node approve").then_some(()).ok_or(info)
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(status_of(&nodes[0], "n2").unwrap_or_default(), "Down", "served without approval");

    step("node approve n2");
    let out = nodes[0].must_shoal(&["node", "approve", "n2"]);
    assert!(out.contains("may have a new certificate"), "{out}");
    eventually("n2 Ready", Duration::from_secs(60), || ready(&nodes[0], "n2"));
    let renewed = certificate(&nodes[1]);
    assert_ne!(renewed.serial_hex, old_serial, "n2 has a new certificate");
    assert_eq!(renewed.node_id, first.node_id, "with its old identity");
    assert!(renewed.not_after > SystemTime::now());
    assert_eq!(tls_status_of(&nodes[0], "n2"), "Ready");
    // n2 does work again: a task lands on it.
    nodes[0].must_shoal(&["node", "update", "--availability", "drain", "n1"]);
    nodes[0].must_shoal(&[
        "service",
        "create",
        "--name",
        "w",
        "--replicas",
        "1",
        IMAGE,
        "/bin/busybox",
        "sleep",
        "3600",
    ]);
    let placed = wait_running(&nodes[0], "w", 1, Duration::from_secs(60));
    assert!(placed.contains_key("n2"), "the task runs on n2: {placed:?}");

    step("n4 comes back, gives up waiting and joins again");
    nodes[3].start();
    eventually("n4 listed as needing approval", Duration::from_secs(30), || {
        let s = tls_status_of(&nodes[0], "n4");
        (s == "Approval").then_some(()).ok_or(s)
    });
    let out = nodes[3].shoal(&["swarm", "join", "--token", token.trim(), &addr]);
    assert!(
        !out.status.success() && text(&out).contains("already part of a swarm"),
        "{}",
        text(&out)
    );
    nodes[3].must_shoal(&["swarm", "leave", "--force"]);
    assert!(text(&nodes[3].shoal(&["info"])).contains("inactive"));
    nodes[0].must_shoal(&["node", "rm", "--force", "n4"]);
    let out = nodes[3].join(token.trim(), &addr);
    assert!(out.status.success(), "{}", text(&out));
    eventually("n4 Ready again", Duration::from_secs(60), || ready(&nodes[0], "n4"));

    step("a window of an hour: n3 comes back on its own");
    nodes[0].must_shoal(&["swarm", "update", "--reattest-window", "1h"]);
    nodes[2].start();
    eventually("n3 Ready", Duration::from_secs(60), || ready(&nodes[0], "n3"));
    assert!(certificate(&nodes[2]).not_after > SystemTime::now());
    step("done");
}
