//! Root CA rotation on real hosts: three managers and two workers, each a `shoald` in its own
//! network namespace running real containers, with a client calling the managers throughout.
//!
//! The story: `swarm ca --rotate` moves every node to a certificate from a new root while both
//! roots are trusted, and ends with the new root alone: no task restarts, the client never
//! fails twice in a row, certificates of the old root are refused afterwards, the old join
//! tokens are refused and the new ones work. Then a second rotation with a worker down waits
//! for it until `swarm ca --force`, after which that worker is locked out and joins again.
//!
//! Needs root; under CI (env `CI`) it must run.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_testkit::image::busybox_tar;
use shoal_testkit::netns::ps::wait_running;
use shoal_testkit::netns::{all_ready, run_story, status_of, text, tls_status_of, Net, Node};
use shoal_testkit::poll::blocking::eventually;

const IMAGE: &str = "busybox:t";

#[test]
fn a_root_rotation_moves_every_node_without_a_hitch() {
    run_story(
        "a_root_rotation_moves_every_node_without_a_hitch",
        "ca",
        235,
        6,
        6,
        |net, nodes, dir| story(net, nodes, dir),
    );
}

/// The task IDs of `service` per node.
fn tasks(n1: &Node, service: &str, replicas: usize) -> Vec<String> {
    let placed = wait_running(n1, service, replicas, Duration::from_secs(60));
    let mut ids: Vec<String> = placed.values().flatten().map(|t| t.id.clone()).collect();
    ids.sort();
    ids
}

/// Runs `shoal ARGS` (with INPUT on standard input) against `node`'s socket from any thread;
/// true when it succeeded within 30 s.
fn probe(node: &Node) -> impl Fn(&[&str], &str) -> bool + Send + 'static {
    let (socket, config) = (node.socket.clone(), node.cli_config());
    move |args, input| {
        use std::io::Write;
        let mut child = std::process::Command::new(&*shoal_testkit::netns::SHOAL)
            .env_remove("SHOAL_HOST")
            .env("SHOAL_CONFIG", &config)
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting shoal");
        let _ = child.stdin.take().expect("stdin").write_all(input.as_bytes());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Copies a node's current certificate files so they can be presented later.
fn keep_certs(node: &Node, to: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for f in ["root-ca.crt", "node.crt", "node.pem"] {
        std::fs::copy(node.certs().join(f), to.join(f)).unwrap();
    }
    to.to_path_buf()
}

/// `node ls` against the manager at `manager`, from `from`'s namespace, with the TLS files
/// in `certs` and the roots in `ca`.
fn node_ls_with(from: &Node, manager: &str, certs: &Path, ca: &Path) -> std::process::Output {
    let s = |p: &Path| p.display().to_string();
    let args = vec![
        "-H".into(),
        format!("tcp://{manager}"),
        "--tlscacert".into(),
        s(ca),
        "--tlscert".into(),
        s(&certs.join("node.crt")),
        "--tlskey".into(),
        s(&certs.join("node.pem")),
        "node".into(),
        "ls".into(),
    ];
    from.shoal_in_ns(&args)
}

fn story(net: &Net, nodes: &mut [Node], dir: &Path) {
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    let tar = busybox_tar(dir, &[]).unwrap().to_string_lossy().into_owned();
    for n in nodes.iter_mut().take(5) {
        n.start();
        n.must_shoal(&["image", "import", &tar, IMAGE]);
    }
    let addr = net.addr(1);
    nodes[0].init_swarm();
    let manager_token = nodes[0].must_shoal(&["swarm", "join-token", "-q", "manager"]);
    let worker_token = nodes[0].must_shoal(&["swarm", "join-token", "-q", "worker"]);
    let (manager_token, worker_token) = (manager_token.trim(), worker_token.trim());
    for n in &nodes[1..3] {
        let out = n.join_listening(manager_token, &addr);
        assert!(out.status.success(), "{}", text(&out));
    }
    for n in &nodes[3..5] {
        let out = n.join(worker_token, &addr);
        assert!(out.status.success(), "{}", text(&out));
    }
    let five = ["n1", "n2", "n3", "n4", "n5"];
    eventually("5 nodes Ready", Duration::from_secs(60), || all_ready(&nodes[0], &five));
    let old_root = nodes[0].must_shoal(&["swarm", "ca", "-q"]);
    assert!(old_root.contains("BEGIN CERTIFICATE"), "{old_root}");

    step("service create --replicas 5 (real containers)");
    nodes[0].must_shoal(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "5",
        IMAGE,
        "/bin/busybox",
        "sleep",
        "3600",
    ]);
    let before = tasks(&nodes[0], "web", 5);

    // The old root's certificates, kept to present after the rotation: first they work.
    let old_n2 = keep_certs(&nodes[1], &dir.join("old-n2"));
    let out = node_ls_with(&nodes[5], &net.addr(1), &old_n2, &old_n2.join("root-ca.crt"));
    assert!(out.status.success(), "the old certificate works before the rotation:\n{}", text(&out));

    // A client calls the managers all along (n2 and n3 forward to the leader over mutual TLS).
    step("client load starts");
    let stop = Arc::new(AtomicBool::new(false));
    let record: Arc<Mutex<(usize, usize, usize, usize)>> = Arc::default();
    let load = {
        let (stop, record) = (stop.clone(), record.clone());
        let n2 = probe(&nodes[1]);
        let n3 = probe(&nodes[2]);
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let probe = if i.is_multiple_of(2) { &n2 } else { &n3 };
                let name = format!("s{i}");
                let ok =
                    probe(&["secret", "create", &name, "-"], "v") && probe(&["service", "ls"], "");
                let mut r = record.lock().unwrap();
                // (calls, failures, failures in a row now, most in a row)
                r.0 += 1;
                if ok {
                    r.2 = 0;
                } else {
                    r.1 += 1;
                    r.2 += 1;
                    r.3 = r.3.max(r.2);
                }
                drop(r);
                i += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    step("swarm ca --rotate");
    let out = nodes[0]
        .shoal_within(&["swarm", "ca", "--rotate"], Duration::from_secs(180))
        .expect("the rotation ends");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Rotating the root CA"), "progress shown:\n{}", text(&out));
    assert!(text(&out).contains("Root rotation complete"), "{}", text(&out));
    let new_root = nodes[0].must_shoal(&["swarm", "ca", "-q"]);
    assert_ne!(new_root, old_root, "the root changed");
    step("rotation complete");

    // Every node trusts the new root alone, and uses a certificate from it.
    eventually("every node trusts the new root", Duration::from_secs(30), || {
        for n in &nodes[..5] {
            let have = std::fs::read_to_string(n.certs().join("root-ca.crt")).unwrap();
            if have != new_root {
                return Err(format!("{} trusts {} root(s)", n.name, have.matches("BEGIN").count()));
            }
        }
        Ok(())
    });
    for h in five {
        assert_eq!(
            tls_status_of(&nodes[0], h),
            "Ready",
            "{}",
            nodes[0].must_shoal(&["node", "ls"])
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let (calls, failures, _, worst) = *record.lock().unwrap();
    step(&format!("client: {calls} calls, {failures} failed, at most {worst} in a row"));
    assert!(calls > 10, "the client ran ({calls} calls)");
    assert!(worst <= 1, "a call failed {worst} times in a row during the rotation");

    // No task restarted.
    assert_eq!(tasks(&nodes[0], "web", 5), before, "tasks restarted during the rotation");

    // The old root's certificates are refused now, even with the old root trusted by the client.
    let out = node_ls_with(&nodes[5], &net.addr(1), &old_n2, &old_n2.join("root-ca.crt"));
    assert!(!out.status.success(), "an old-root certificate was accepted:\n{}", text(&out));
    let fresh_ca = dir.join("new-root.crt");
    std::fs::write(&fresh_ca, &new_root).unwrap();
    let out = node_ls_with(&nodes[5], &net.addr(1), &old_n2, &fresh_ca);
    assert!(!out.status.success(), "an old-root certificate was accepted:\n{}", text(&out));

    // The old tokens are refused; the new ones work.
    step("old token refused, new one joins n6");
    nodes[5].start();
    let out = nodes[5].join(worker_token, &addr);
    assert!(!out.status.success(), "the old worker token still joins:\n{}", text(&out));
    let new_token = nodes[0].must_shoal(&["swarm", "join-token", "-q", "worker"]);
    assert_ne!(new_token.trim(), worker_token, "the worker token changed");
    let out = nodes[5].join(new_token.trim(), &addr);
    assert!(out.status.success(), "{}", text(&out));
    let six = ["n1", "n2", "n3", "n4", "n5", "n6"];
    eventually("6 nodes Ready", Duration::from_secs(60), || all_ready(&nodes[0], &six));

    // --- A worker down during a rotation holds it up until --force. -------------------------
    step("second rotation with n5 down");
    nodes[4].kill();
    eventually("n5 Down", Duration::from_secs(30), || {
        let s = status_of(&nodes[0], "n5")?;
        (s == "Down").then_some(()).ok_or(s)
    });
    nodes[0].must_shoal(&["swarm", "ca", "--rotate", "--detach"]);
    eventually("all but n5 moved", Duration::from_secs(60), || {
        let out = nodes[0].shoal(&["swarm", "ca"]);
        let progress = shoal_testkit::netns::stderr(&out);
        progress.contains("5/6 nodes").then_some(()).ok_or(progress)
    });
    std::thread::sleep(Duration::from_secs(3));
    let out = nodes[0].shoal(&["swarm", "ca"]);
    let progress = shoal_testkit::netns::stderr(&out);
    assert!(progress.contains("waiting for") && progress.contains("n5"), "{progress}");
    assert_eq!(tls_status_of(&nodes[0], "n5"), "Rotating");
    let out = nodes[0]
        .shoal_within(&["swarm", "ca", "--force"], Duration::from_secs(60))
        .expect("forced rotation ends");
    assert!(text(&out).contains("Root rotation complete"), "{}", text(&out));

    // n5 comes back holding a certificate of a root nobody trusts: it is refused, and joins
    // again after leaving.
    step("n5 comes back, is refused, joins again");
    nodes[4].start();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        status_of(&nodes[0], "n5").unwrap_or_default(),
        "Down",
        "a node of the old root came back"
    );
    nodes[4].must_shoal(&["swarm", "leave", "--force"]);
    nodes[0].must_shoal(&["node", "rm", "--force", "n5"]);
    let token = nodes[0].must_shoal(&["swarm", "join-token", "-q", "worker"]);
    let out = nodes[4].join(token.trim(), &addr);
    assert!(out.status.success(), "{}", text(&out));
    eventually("n5 Ready again", Duration::from_secs(60), || all_ready(&nodes[0], &six));

    // --- An operator's own root. ---------------------------------------------------------------
    step("rotate to an operator's root");
    let mine = shoal_pki::RootCa::generate().unwrap();
    let (cert, key) = (dir.join("my-root.crt"), dir.join("my-root.key"));
    std::fs::write(&cert, mine.cert_pem()).unwrap();
    std::fs::write(&key, mine.key_pem()).unwrap();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let rotate = ["swarm", "ca", "--rotate", "--ca-cert", &cert, "--ca-key", &key];
    let out = nodes[0].shoal_within(&rotate, Duration::from_secs(120)).expect("rotation ends");
    assert!(text(&out).contains("Root rotation complete"), "{}", text(&out));
    assert_eq!(nodes[0].must_shoal(&["swarm", "ca", "-q"]), mine.cert_pem());
    // The same root again is no rotation: refused, saying why.
    let out = nodes[0].shoal(&rotate);
    assert!(!out.status.success() && text(&out).contains("needs a new key"), "{}", text(&out));
    for h in six {
        assert_eq!(tls_status_of(&nodes[0], h), "Ready");
    }
    step("done");
}
