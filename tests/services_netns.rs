//! Services on real hosts: every node is a `shoald` in its own network namespace running real
//! containers through runc, driven with the `shoal` binary as a user would.
//!
//! The story: three replicas land one per node; a worker's shoald is killed and its task comes
//! back on the others within 10 s of the node going Down (and the restarted node stops the stale
//! container); a drained node is emptied; a rolling update to a missing image pauses while the
//! old containers keep running, and with `--update-failure-action rollback` rolls back; the
//! leader manager is killed during a deploy and the deploy still converges.
//!
//! Needs root; under CI (env `CI`) it must run.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_testkit::image::busybox_tar;
use shoal_testkit::netns::ps::{ps, running, wait_running};
use shoal_testkit::netns::{self, all_ready, finish, root_or_skip, status_of, text, Net, Node};
use shoal_testkit::poll::blocking::eventually;

fn subnet() -> u8 {
    (std::process::id() % 240 + 10) as u8
}

const IMAGE: &str = "busybox:t";

/// IDs of the containers runc runs for `node` (from the node's own runc state directory).
fn containers(node: &Node) -> Vec<String> {
    let found = Command::new("find")
        .arg(&node.data)
        .args(["-maxdepth", "4", "-type", "d", "-name", "runc"])
        .output()
        .unwrap();
    let mut ids = Vec::new();
    for root in String::from_utf8_lossy(&found.stdout).lines() {
        let out = Command::new("runc").args(["--root", root, "list"]).output().unwrap();
        for l in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.get(2) == Some(&"running") {
                ids.push(cols[0].to_string());
            }
        }
    }
    ids
}

#[test]
fn services_on_real_hosts() {
    if !root_or_skip("services_on_real_hosts") {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::Builder::new().prefix("shoal-services-").tempdir().unwrap();
    let net = Net::with("sv", 249, subnet(), 3);
    let mut nodes: Vec<Node> = (1..=3).map(|i| Node::new(&net, i, dir.path())).collect();
    let tar = busybox_tar(dir.path(), &[]).unwrap().to_string_lossy().into_owned();
    let result = catch_unwind(AssertUnwindSafe(|| story(&net, &mut nodes, &tar)));
    finish(result, nodes, net, dir);
    eprintln!("services_on_real_hosts: passed in {:.1}s", started.elapsed().as_secs_f64());
}

fn story(net: &Net, nodes: &mut [Node], tar: &str) {
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    for n in nodes.iter_mut() {
        n.start();
        n.must_shoal(&["image", "import", tar, IMAGE]);
    }
    let n1 = &nodes[0];
    let addr = net.addr(1);
    let listen = format!("{}:{}", n1.ip, netns::PORT);
    n1.must_shoal(&[
        "swarm",
        "init",
        "--advertise-addr",
        &n1.ip,
        "--listen-addr",
        &listen,
        "--dispatcher-heartbeat",
        "1s",
    ]);
    let manager_token = n1.must_shoal(&["swarm", "join-token", "-q", "manager"]).trim().to_string();
    for n in &nodes[1..] {
        let out = n.join_listening(&manager_token, &addr);
        assert!(out.status.success(), "{}", text(&out));
    }
    eventually("3 nodes Ready", Duration::from_secs(30), || all_ready(n1, &["n1", "n2", "n3"]));

    // --- Three replicas, one per node, as real containers. ---------------------------------------
    step("service create --replicas 3");
    let out = n1.shoal(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "--restart-delay",
        "1s",
        IMAGE,
        "/bin/busybox",
        "sleep",
        "3600",
    ]);
    assert!(out.status.success(), "create did not converge:\n{}", text(&out));
    let placed = wait_running(n1, "web", 3, Duration::from_secs(30));
    assert_eq!(placed.keys().cloned().collect::<Vec<_>>(), vec!["n1", "n2", "n3"], "one per node");
    for n in nodes.iter() {
        let ids = containers(n);
        let mine = &placed[&n.name][0];
        assert!(
            ids.iter().any(|id| id.starts_with(&mine.id)),
            "{} runs no container for task {} (runc: {ids:?})",
            n.name,
            mine.id
        );
    }

    // An image a task runs cannot be removed from under it.
    let out = n1.shoal(&["image", "rm", IMAGE]);
    assert!(!out.status.success(), "removed an image in use:\n{}", text(&out));
    assert!(text(&out).contains("used by a task"), "{}", text(&out));

    // --- Kill n3's shoald: its task comes back within 10 s of n3 being Down. ------------------
    step("kill -9 n3's shoald");
    let stale = placed["n3"][0].id.clone();
    nodes[2].kill();
    let n1 = &nodes[0];
    eventually("n3 Down", Duration::from_secs(60), || {
        let s = status_of(n1, "n3")?;
        (s == "Down").then_some(()).ok_or(s)
    });
    let down_at = Instant::now();
    let placed = wait_running(n1, "web", 3, Duration::from_secs(10));
    assert!(!placed.contains_key("n3"), "a task still counted on the Down node");
    step(&format!("tasks back {:.1}s after Down", down_at.elapsed().as_secs_f64()));

    // The restarted node learns its old task is to stop, and stops the container.
    step("restart n3: it stops the stale container");
    nodes[2].start();
    let n1 = &nodes[0];
    eventually("n3 Ready", Duration::from_secs(30), || all_ready(n1, &["n1", "n2", "n3"]));
    eventually("stale container stopped", Duration::from_secs(30), || {
        let ids = containers(&nodes[2]);
        (!ids.iter().any(|id| id.starts_with(&stale))).then_some(()).ok_or(format!("{ids:?}"))
    });

    // --- Drain n2: its tasks move and its containers stop. -------------------------------------
    step("node update --availability drain n2");
    n1.must_shoal(&["node", "update", "--availability", "drain", "n2"]);
    eventually("n2 emptied", Duration::from_secs(30), || {
        let r = running(n1, "web")?;
        let n: usize = r.values().map(Vec::len).sum();
        let left = containers(&nodes[1]);
        (n == 3 && !r.contains_key("n2") && left.is_empty())
            .then_some(())
            .ok_or(format!("{r:?}; n2 containers {left:?}"))
    });
    n1.must_shoal(&["node", "update", "--availability", "active", "n2"]);

    // --- A rolling update to a missing image pauses; old containers keep serving. -------------
    step("service update --image missing:1 (pauses)");
    let out =
        n1.shoal(&["service", "update", "--image", "missing:1", "--update-monitor", "2s", "web"]);
    assert!(!out.status.success(), "a broken update reported success:\n{}", text(&out));
    assert!(
        text(&out).contains("paused"),
        "the CLI did not say the update paused:\n{}",
        text(&out)
    );
    let r = running(n1, "web").unwrap();
    let old: usize = r.values().flatten().filter(|t| t.image == IMAGE).count();
    assert_eq!(old, 2, "two old tasks keep serving: {r:?}");
    let rejected = ps(n1, "web")
        .unwrap()
        .into_iter()
        .find(|t| t.image == "missing:1" && t.state == "Rejected");
    let rejected = rejected.expect("the new task is shown as Rejected");
    assert!(rejected.error.contains("missing"), "the error names the image: {rejected:?}");

    step("service create api; update with --update-failure-action rollback");
    n1.must_shoal(&[
        "service",
        "create",
        "--name",
        "api",
        "--replicas",
        "2",
        IMAGE,
        "/bin/busybox",
        "sleep",
        "3600",
    ]);
    let out = n1.shoal(&[
        "service",
        "update",
        "--image",
        "missing:2",
        "--update-failure-action",
        "rollback",
        "--update-monitor",
        "2s",
        "api",
    ]);
    assert!(!out.status.success(), "a rolled-back update reported success:\n{}", text(&out));
    eventually("api rolled back", Duration::from_secs(60), || {
        let out = n1.shoal(&["service", "inspect", "api"]);
        let s = String::from_utf8_lossy(&out.stdout).to_string();
        s.contains("rollbackcompleted").then_some(()).ok_or(s)
    });
    let r = wait_running(n1, "api", 2, Duration::from_secs(30));
    assert!(r.values().flatten().all(|t| t.image == IMAGE), "{r:?}");

    // --- Kill the leader during a deploy: the deploy still converges. --------------------------
    step("service create late --detach; kill -9 the leader (n1)");
    n1.must_shoal(&[
        "service",
        "create",
        "--detach",
        "--name",
        "late",
        "--replicas",
        "4",
        IMAGE,
        "/bin/busybox",
        "sleep",
        "3600",
    ]);
    nodes[0].kill();
    let n2 = &nodes[1];
    let placed = wait_running(n2, "late", 4, Duration::from_secs(60));
    assert!(!placed.contains_key("n1"), "tasks counted on the dead leader: {placed:?}");
    step("deploy converged under the new leader");
}
