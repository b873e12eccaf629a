//! Images from a real registry (Debian's `docker-registry`, distribution 2.8) on a host of its
//! own, reached by three `shoald`s on network-namespace hosts: TLS from a test CA placed in each
//! node's certs.d, htpasswd logins, pushes and pulls through `shoal`, and a 3-replica service
//! whose tasks pull the image the manager pinned. Also: an unknown CA is refused with the
//! certs.d hint; plain HTTP only where the node names the registry insecure; a wrong password
//! is refused; a tag moved after create changes no task until `service update --force`; a blob
//! changed in the registry's storage rejects the task with the digest that did not match and
//! leaves nothing half-written; a registry that is down leaves the error in `service ps` and
//! the service converges once it is back.
//!
//! Needs root; under CI (env `CI`) it must run.

use std::path::Path;
use std::time::{Duration, Instant};

use shoal_testkit::image::{busybox_tar, sha256_file, versioned_tar};
use shoal_testkit::netns::ps::{parse_ps, wait_running, TaskRow};
use shoal_testkit::netns::{run_story, text, worker_swarm, Net, Node};
use shoal_testkit::poll::blocking::eventually;
use shoal_testkit::registry::{RegistryOpts, TestRegistry};

const USER: &str = "deployer";
const PASSWORD: &str = "s3cret-registry-pw";
const APPLETS: &[&str] = &["sh", "sleep", "cat", "echo"];

#[test]
fn images_come_from_a_registry() {
    run_story("images_come_from_a_registry", "rg", 242, 4, 3, |net, nodes, dir| {
        story(net, nodes, dir)
    });
}

fn wrap(net: &Net, host: usize) -> Vec<String> {
    vec!["nsenter".into(), format!("--net=/run/netns/{}", net.ns(host))]
}

/// The digest `service inspect` says the service is pinned to.
fn pinned(n: &Node, service: &str) -> String {
    let out = n.must_shoal(&["service", "inspect", service]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["ImageDigest"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `service ps --no-trunc`: errors whole.
fn ps(n: &Node, service: &str) -> Result<Vec<TaskRow>, String> {
    let out = n.shoal(&["service", "ps", "--no-trunc", service]);
    if !out.status.success() {
        return Err(text(&out));
    }
    Ok(parse_ps(&String::from_utf8_lossy(&out.stdout)))
}

fn digests_on(n: &Node) -> String {
    n.must_shoal(&["image", "ls", "--digests"])
}

fn story(net: &Net, nodes: &mut [Node], dir: &Path) {
    assert!(
        Path::new("/usr/bin/docker-registry").exists(),
        "this test needs docker-registry (apt-get install docker-registry)"
    );
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());

    // --- Three registries on host 4: TLS + logins, plain HTTP, TLS from a CA nobody has. ------
    step("registries");
    let reg_ip = net.ip(4);
    let start = |name: &str, port: u16, tls: bool, login: bool| {
        TestRegistry::start(
            &dir.join(name),
            RegistryOpts {
                tls,
                htpasswd: login.then(|| (USER.to_string(), PASSWORD.to_string())),
                listen: format!("{reg_ip}:{port}").parse().unwrap(),
                wrap: wrap(net, 4),
            },
        )
        .unwrap_or_else(|e| panic!("starting registry {name}: {e}"))
    };
    let mut main = start("main", 5000, true, true);
    let plain = start("plain", 5001, false, false);
    let stranger = start("stranger", 5002, true, false);
    let reg = main.host.clone();
    for n in nodes.iter_mut() {
        let certs = n.data.join("certs.d");
        main.install_ca(&certs);
        n.args = vec!["--certs-dir".into(), certs.display().to_string()];
    }
    nodes[2].args.extend(["--insecure-registry".to_string(), plain.host.clone()]);
    let base = busybox_tar(&dir.join("base"), APPLETS).unwrap().to_string_lossy().into_owned();
    worker_swarm(net, nodes, &base, "busybox:local");
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);

    // --- Logins: a wrong password is refused and saves nothing; the right one is kept 0600. ---
    step("login");
    let out = n1.shoal_with_stdin(&["login", "-u", USER, "--password-stdin", &reg], "wrong\n");
    assert!(!out.status.success(), "a wrong password logged in: {}", text(&out));
    assert!(text(&out).contains(&reg), "the error names the registry: {}", text(&out));
    assert!(!n1.cli_config().join("config.json").exists(), "a failed login saved credentials");
    let out = n1.shoal_with_stdin(&["login", "-u", USER, "--password-stdin", &reg], PASSWORD);
    assert!(out.status.success(), "login: {}", text(&out));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(n1.cli_config().join("config.json")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the credentials file is root's alone");

    // --- Push v1 from n1; nobody else has it. -----------------------------------------------
    step("push v1");
    let app = format!("{reg}/app:1");
    n1.must_shoal(&["image", "import", &versioned_tar(dir, "v1", APPLETS), &app]);
    let pushed = n1.must_shoal(&["image", "push", &app]);
    let d1 = pushed.split('@').nth(1).and_then(|s| s.split_whitespace().next()).unwrap();
    assert!(d1.starts_with("sha256:"), "push prints the digest: {pushed}");
    let d1 = d1.to_string();
    // Without the login, n2 may not pull (the registry wants one).
    let out = n2.shoal(&["image", "pull", &app]);
    assert!(!out.status.success(), "an anonymous pull passed: {}", text(&out));

    // --- TLS: an unknown CA is refused with the certs.d hint; plain HTTP only if insecure. ---
    step("TLS policy");
    let out = n1.shoal(&["image", "pull", &format!("{}/app:1", stranger.host)]);
    let hint = n1.data.join("certs.d").join(&stranger.host);
    assert!(
        !out.status.success() && text(&out).contains(&hint.display().to_string()),
        "an unknown CA: the error names {}: {}",
        hint.display(),
        text(&out)
    );
    let plain_app = format!("{}/plain:1", plain.host);
    let out = n1.shoal(&["image", "tag", "busybox:local", &plain_app]);
    assert!(out.status.success(), "{}", text(&out));
    let out = n1.shoal(&["image", "push", &plain_app]);
    assert!(
        !out.status.success() && text(&out).contains("--insecure-registry"),
        "plain HTTP without --insecure-registry: {}",
        text(&out)
    );
    n3.must_shoal(&["image", "tag", "busybox:local", &plain_app]);
    n3.must_shoal(&["image", "push", &plain_app]);
    n3.must_shoal(&["image", "rm", &plain_app]);
    n3.must_shoal(&["image", "pull", &plain_app]);
    assert!(n3.must_shoal(&["image", "ls"]).contains(&plain_app));

    // --- Three replicas pull the pinned image on every node. ---------------------------------
    step("service create --with-registry-auth --replicas 3");
    let out = n1.shoal(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "--restart-delay",
        "1s",
        "--stop-grace-period",
        "1s",
        "--with-registry-auth",
        &app,
        "sh",
        "-c",
        "cat /etc/app-version; exec sleep 3600",
    ]);
    assert!(out.status.success(), "create: {}", text(&out));
    let placed = wait_running(n1, "web", 3, Duration::from_secs(60));
    assert_eq!(placed.len(), 3, "one replica per node: {placed:?}");
    assert_eq!(pinned(n1, "web"), d1, "the manager pinned the pushed digest");
    for n in [n2, n3] {
        assert!(digests_on(n).contains(&d1), "{} pulled {d1}:\n{}", n.name, digests_on(n));
    }
    let inspect = n1.must_shoal(&["service", "inspect", "web"]);
    assert!(!inspect.contains(PASSWORD), "service inspect shows the registry password");
    let listed = n1.must_shoal(&["service", "ps", "--no-trunc", "web"]);
    assert!(!listed.contains(PASSWORD));

    // --- The tag moves: nothing changes until update --force asks the registry again. -------
    step("tag moves to v2");
    n1.must_shoal(&["image", "import", &versioned_tar(dir, "v2", APPLETS), &app]);
    let pushed = n1.must_shoal(&["image", "push", &app]);
    assert!(!pushed.contains(&d1), "v2 has another digest: {pushed}");
    n1.must_shoal(&["service", "scale", "web=4"]);
    wait_running(n1, "web", 4, Duration::from_secs(60));
    assert_eq!(pinned(n1, "web"), d1, "a moved tag changed the service");
    let d2 = pushed.split('@').nth(1).and_then(|s| s.split_whitespace().next()).unwrap();
    for n in [n2, n3] {
        assert!(!digests_on(n).contains(d2), "{} pulled the moved tag", n.name);
    }
    step("service update --force");
    n1.must_shoal(&["service", "update", "-d", "--force", "web"]);
    assert_eq!(pinned(n1, "web"), d2, "update --force pins the tag's new digest");
    for n in [n2, n3] {
        eventually(&format!("{} pulls v2", n.name), Duration::from_secs(90), || {
            let d = digests_on(n);
            d.contains(d2).then_some(()).ok_or(d)
        });
    }
    eventually("the update to finish", Duration::from_secs(90), || {
        let out = n1.must_shoal(&["service", "inspect", "web"]);
        out.contains("completed").then_some(()).ok_or(out)
    });
    wait_running(n1, "web", 4, Duration::from_secs(60));

    // --- A blob changed in the registry's storage: REJECTED, nothing half-written. ----------
    step("corrupt blob");
    let bad = format!("{reg}/bad:1");
    let bad_tar = versioned_tar(dir, "bad", APPLETS);
    n1.must_shoal(&["image", "import", &bad_tar, &bad]);
    n1.must_shoal(&["image", "push", &bad]);
    // An imported rootfs is one uncompressed layer: its blob digest is the tarball's.
    let layer = sha256_file(&bad_tar);
    let stored = main.blob_path(&layer);
    let mut bytes = std::fs::read(&stored).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&stored, bytes).unwrap();
    let out = n1.shoal(&[
        "service",
        "create",
        "-d",
        "--name",
        "bad",
        "--with-registry-auth",
        "--constraint",
        "node.hostname==n2",
        &bad,
        "sleep",
        "3600",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let rejected = eventually("the bad task REJECTED", Duration::from_secs(60), || {
        let rows = ps(n1, "bad")?;
        rows.into_iter()
            .find(|r| r.state == "Rejected" && r.error.contains(&layer[7..19]))
            .ok_or_else(|| format!("{:?}", ps(n1, "bad")))
    });
    eprintln!("rejected: {}", rejected.error);
    let blobs = n2.data.join("images/blobs/sha256");
    for e in std::fs::read_dir(&blobs).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            name.len() == 64 && name.chars().all(|c| c.is_ascii_hexdigit()),
            "a half-written file in {}: {name}",
            blobs.display()
        );
        assert_ne!(name, &layer[7..], "the changed blob was kept");
    }
    n1.must_shoal(&["service", "rm", "bad"]);

    // --- The registry is down: the error shows, and the service converges once it is back. --
    step("registry down");
    let late = format!("{reg}/late:1");
    n1.must_shoal(&["image", "import", &versioned_tar(dir, "late", APPLETS), &late]);
    n1.must_shoal(&["image", "push", &late]);
    main.stop();
    let out = n1.shoal(&[
        "service",
        "create",
        "-d",
        "--name",
        "late",
        "--with-registry-auth",
        "--restart-delay",
        "1s",
        "--constraint",
        "node.hostname==n3",
        &late,
        "sleep",
        "3600",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("warning"), "an unpinned service is said so: {}", text(&out));
    eventually("the pull failure in service ps", Duration::from_secs(60), || {
        let rows = ps(n1, "late")?;
        rows.iter()
            .find(|r| r.state == "Rejected" && r.error.contains("pulling"))
            .map(|_| ())
            .ok_or_else(|| format!("{rows:?}"))
    });
    step("registry back");
    main.restart();
    wait_running(n1, "late", 1, Duration::from_secs(90));
    step("done");
}
