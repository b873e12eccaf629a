//! The chaos runner on real hosts (see `shoal_testkit::chaos`): managers and workers as
//! `shoald` processes in network namespaces, random faults (kill -9, SIGSTOP, partitions of one
//! host, of a pair, of a majority, a lossy slow link, a clock jump, a full disk) while client
//! threads create, update and remove services and secrets through `shoal`; the history of
//! every call must be linearizable, and afterwards the cluster converges, runs no slot twice
//! and holds secrets only where a task needs them.
//!
//! - `chaos_short` runs in the normal suite: 3 managers and a worker, 75 s of faults.
//! - `chaos_long` (`cargo test --test chaos chaos_long -- --ignored --nocapture`): 5 managers
//!   and 2 workers, 10 minutes. (`-- --ignored --test-threads=1` runs it and the known-bug
//!   scenario below one after the other; on two cores, at once is too much.)
//!
//! `SHOAL_CHAOS_SECS` sets the duration and `SHOAL_CHAOS_SEED` the seed (printed at the start,
//! so a failing run can be replayed). A seed that found a bug is kept below as a test of its
//! own. The third bug found (short run, seed 12753710861273436407: nodes left Down under live
//! sessions by a late Down mark) is reproduced without faults in `tests/cluster.rs`
//! (`a_late_down_mark_under_a_live_session_is_mended_by_the_next_heartbeat`).
//! Needs root and Debian's `faketime`; under CI (env `CI`) it must run.

use std::time::Duration;

use shoal_testkit::chaos::{self, ChaosConfig, Planned};
use shoal_testkit::netns::{node_ls, one_leader, run_story, text, Net, Node, PORT};
use shoal_testkit::poll::blocking::eventually;

#[test]
fn chaos_short() {
    chaos::run(&ChaosConfig::from_env("chaos_short", 75, 3, 1));
}

#[test]
#[ignore = "a long run: cargo test --test chaos chaos_long -- --ignored --nocapture"]
fn chaos_long() {
    chaos::run(&ChaosConfig::from_env("chaos_long", 600, 5, 2));
}

/// The leader's disk fills up for a few seconds under load, twice, then frees; the nodes'
/// logs are on the same disk. Each leader must exit (and come back when restarted) or carry
/// on; afterwards every manager is Reachable and answers, and the history is linearizable.
///
/// Found by the long run (seed 11): a manager whose disk filled up stayed Unreachable for good,
/// neither exiting nor recovering, and another lost its agent session for good. The log line
/// that could not be written made tracing-subscriber print an error with `eprintln!`, which
/// panics when stderr fails too: the task that logged died (the Raft driver, before it could
/// mark its member failed; the agent's session), so nothing made shoald exit.
#[test]
fn full_disk_on_the_leader() {
    let mut cfg = ChaosConfig::with_seed("chaos_full_disk", 7, 0, 3, 1);
    cfg.plan = Some(vec![(Planned::DiskOfLeader, 5000), (Planned::DiskOfLeader, 5000)]);
    cfg.log_outside = false;
    chaos::run(&cfg);
}

/// A manager's wall clock jumps two hours back for a few seconds, then forward 40 minutes,
/// then back to true time: afterwards every node is Ready again and the history is
/// linearizable.
#[test]
#[ignore = "chaos_short jumps clocks too; this replays a scenario of the long run (seed 11)"]
fn clock_jumps_on_a_manager() {
    let mut cfg = ChaosConfig::with_seed("chaos_clock", 5, 0, 3, 1);
    let jump = |offset: &str| (Planned::Clock(offset.into()), 5000);
    cfg.plan = Some(vec![jump("-2h"), jump("+40m"), jump("-25m")]);
    chaos::run(&cfg);
}

/// The bug the long run found first (seed 11): a manager answered a create with "already
/// exists" from a state the cluster had left (the service was removed elsewhere). Here a
/// follower is cut off, the service is removed through the majority, and a create through the
/// cut-off follower must not be refused as "already exists"; after the heal it goes through.
#[test]
fn a_cut_off_manager_refuses_nothing_from_a_stale_state() {
    run_story(
        "a_cut_off_manager_refuses_nothing_from_a_stale_state",
        "cr",
        243,
        3,
        3,
        |net, nodes, _| {
            form_managers(net, nodes);
            let create = [
                "service",
                "create",
                "--detach",
                "--replicas",
                "0",
                "--no-resolve-image",
                "--name",
                "web",
                "busybox",
                "true",
            ];
            nodes[0].must_shoal(&create);
            let rows = node_ls(&nodes[0]).unwrap();
            let leader =
                rows.iter().find(|r| r.manager_status == "Leader").unwrap().hostname.clone();
            let f = nodes.iter().position(|n| n.name != leader).unwrap();
            let other =
                nodes.iter().position(|n| n.name != leader && n.name != nodes[f].name).unwrap();
            net.partition(nodes[f].host);
            nodes[other].must_shoal(&["service", "rm", "web"]);
            let out = nodes[f].shoal_within(&create, Duration::from_secs(20));
            if let Ok(out) = &out {
                assert!(
                    !out.status.success(),
                    "a cut-off manager created a service:\n{}",
                    text(out)
                );
                assert!(
                    !text(out).contains("already exists"),
                    "a cut-off manager refused from a stale state:\n{}",
                    text(out)
                );
            }
            net.heal(nodes[f].host);
            eventually("the create through the healed manager", Duration::from_secs(30), || {
                let out = nodes[f].shoal(&create);
                out.status.success().then_some(()).ok_or_else(|| text(&out))
            });
        },
    );
}

/// Three managers: n1 inits, the others join listening; all agree on a leader.
fn form_managers(net: &Net, nodes: &mut [Node]) {
    for n in nodes.iter_mut() {
        n.start();
    }
    let listen = format!("{}:{PORT}", nodes[0].ip);
    let init = ["swarm", "init", "--advertise-addr", &nodes[0].ip, "--listen-addr", &listen];
    nodes[0].must_shoal(&init);
    let token = nodes[0].must_shoal(&["swarm", "join-token", "-q", "manager"]).trim().to_string();
    for n in &nodes[1..] {
        let out = n.join_listening(&token, &net.addr(1));
        assert!(out.status.success(), "{}", text(&out));
    }
    eventually("one leader among 3", Duration::from_secs(30), || {
        one_leader(&nodes[0].must_shoal(&["node", "ls"]), 3)
    });
}

/// What the full-disk scenario above found, on its own: a log line `shoald` cannot write (its
/// stderr is a full disk; here /dev/full) must not kill anything. It did: tracing-subscriber
/// reported the failed write with `eprintln!`, which panics when stderr fails too, so whatever
/// task logged died (here the main one, so the whole daemon).
#[test]
fn shoald_outlives_a_log_it_cannot_write() {
    if !shoal_testkit::netns::root_for("shoald_outlives_a_log_it_cannot_write", "a shoald") {
        return;
    }
    let dir = tempfile::Builder::new().prefix("shoal-fulllog-").tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let full = || std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let mut child = std::process::Command::new(&*shoal_testkit::netns::SHOALD)
        .arg("--data-root")
        .arg(dir.path().join("data"))
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .args(["--hostname", "fulllog"])
        .stdout(full())
        .stderr(full())
        .spawn()
        .unwrap();
    let answered = shoal_testkit::poll::blocking::try_eventually(
        "shoald to answer",
        Duration::from_secs(20),
        || {
            if let Some(status) = child.try_wait().unwrap() {
                return Ok(Err(format!("shoald exited ({status})")));
            }
            let out = std::process::Command::new(&*shoal_testkit::netns::SHOAL)
                .env_remove("SHOAL_HOST")
                .args(["-H", &format!("unix://{}", socket.display()), "info"])
                .output()
                .unwrap();
            out.status.success().then_some(Ok(())).ok_or_else(|| text(&out))
        },
    );
    let _ = child.kill();
    let _ = child.wait();
    shoal_testkit::netns::reap_containers(dir.path());
    answered.unwrap().unwrap();
}
