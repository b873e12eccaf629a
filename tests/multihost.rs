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
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use shoal_testkit::netns::{
    all_ready, finish, node_ls, parse_node_ls, root_or_skip, status_of, stderr, stdout, text,
    torn_read, Deviations, Net, Node,
};
use shoal_testkit::poll::blocking::{eventually, stays, try_eventually};

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

/// A /24 that concurrent runs are unlikely to share: derived from the process ID.
fn subnet() -> u8 {
    (std::process::id() % 240 + 10) as u8
}

#[test]
fn multi_host_cluster() {
    if !root_or_skip("multi_host_cluster") {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::Builder::new().prefix("shoal-multihost-").tempdir().unwrap();
    let net = Net::new(subnet(), 5);
    let mut nodes: Vec<Node> = (1..=5).map(|i| Node::new(&net, i, dir.path())).collect();

    let result = catch_unwind(AssertUnwindSafe(|| story(&net, &mut nodes)));
    finish(result, nodes, net, dir);
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
        "multi_host_cluster: 5 nodes in 5 namespaces on {}: init, CA pin, token rotation, \
         manager join, renewal, worker authz, Down detection, removal and revocation all \
         behaved ({:.1}s)",
        net.cidr(),
        t0.elapsed().as_secs_f64()
    );
}
