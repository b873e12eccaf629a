//! Content trust on a real cluster: two `shoald`s on network-namespace hosts and a real
//! registry (Debian's `docker-registry`, TLS from a test CA) on a third, driven by `shoal`
//! exactly as an operator would: keys made and sealed with passphrases, a root for the
//! repository prefix, a signer delegated by it, tags signed (pushing the image), and then:
//!
//! - with `swarm update --content-trust required`, an unsigned image is refused at create and a
//!   signed one runs on both nodes, pinned to the signed digest;
//! - a service created before trust was required keeps its running task, but its replacement
//!   is REJECTED by the agent itself (the managers forward it; the node checks its own pins);
//! - a revoked tag is refused on redeploy; a signer removed by the root no longer counts and a
//!   new signer's signature does; a rotated root must re-sign the signers;
//! - a layer changed in the registry after signing is REJECTED by the agent;
//! - `--content-trust off` needs a root's signature, and then unsigned images run again.
//!
//! Needs root; under CI (env `CI`) it must run.

use std::path::Path;
use std::time::{Duration, Instant};

use shoal_testkit::image::{busybox_tar, sha256_file, versioned_tar};
use shoal_testkit::netns::ps::{parse_ps, wait_running, TaskRow};
use shoal_testkit::netns::{run_story, text, worker_swarm, Net, Node};
use shoal_testkit::poll::blocking::eventually;
use shoal_testkit::registry::{RegistryOpts, TestRegistry};

const APPLETS: &[&str] = &["sh", "sleep", "cat", "echo"];
const ROOT_PASS: &str = "root-passphrase-7c1e";
const SIGNER_PASS: &str = "signer-passphrase-2b9d";

#[test]
fn content_trust_is_enforced_by_managers_and_nodes() {
    run_story("content_trust_is_enforced_by_managers_and_nodes", "tr", 243, 4, 2, story);
}

fn ps(n: &Node, service: &str) -> Result<Vec<TaskRow>, String> {
    let out = n.shoal(&["service", "ps", "--no-trunc", service]);
    if !out.status.success() {
        return Err(text(&out));
    }
    Ok(parse_ps(&String::from_utf8_lossy(&out.stdout)))
}

fn pinned(n: &Node, service: &str) -> String {
    let out = n.must_shoal(&["service", "inspect", service]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["ImageDigest"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `shoal ARGS` with passphrases on standard input, one line each; must succeed.
fn with_pass(n: &Node, args: &[&str], passes: &[&str]) -> String {
    let input: String = passes.iter().map(|p| format!("{p}\n")).collect();
    let out = n.shoal_with_stdin(args, &input);
    assert!(out.status.success(), "`shoal {}` failed:\n{}", args.join(" "), text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like [`with_pass`], for a command that must fail; its output.
fn refused(n: &Node, args: &[&str], passes: &[&str]) -> String {
    let input: String = passes.iter().map(|p| format!("{p}\n")).collect();
    let out = n.shoal_with_stdin(args, &input);
    assert!(!out.status.success(), "`shoal {}` passed:\n{}", args.join(" "), text(&out));
    text(&out)
}

fn create(n: &Node, name: &str, image: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["service", "create", "-d", "--name", name, "--restart-delay", "1s"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[image, "sh", "-c", "cat /etc/app-version; exec sleep 3600"]);
    n.shoal(&args)
}

fn story(net: &Net, nodes: &mut Vec<Node>, dir: &Path) {
    assert!(
        Path::new("/usr/bin/docker-registry").exists(),
        "this test needs docker-registry (apt-get install docker-registry)"
    );
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());

    step("registry and swarm");
    let reg_ip = net.ip(4);
    let mut registry = TestRegistry::start(
        &dir.join("registry"),
        RegistryOpts {
            tls: true,
            htpasswd: None,
            listen: format!("{reg_ip}:5000").parse().unwrap(),
            wrap: vec!["nsenter".into(), format!("--net=/run/netns/{}", net.ns(4))],
        },
    )
    .unwrap_or_else(|e| panic!("starting the registry: {e}"));
    let reg = registry.host.clone();
    for n in nodes.iter_mut() {
        let certs = n.data.join("certs.d");
        registry.install_ca(&certs);
        n.args = vec!["--certs-dir".into(), certs.display().to_string()];
    }
    let base = busybox_tar(&dir.join("base"), APPLETS).unwrap().to_string_lossy().into_owned();
    worker_swarm(net, nodes, &base, "busybox:local");
    let n1 = &nodes[0];

    // --- Keys, sealed with passphrases, 0600. -------------------------------------------------
    step("keys");
    let keys = dir.join("keys");
    let k = |name: &str| keys.join(format!("{name}.key")).display().to_string();
    let p = |name: &str| keys.join(format!("{name}.pub")).display().to_string();
    let kdir = keys.display().to_string();
    for (name, pass) in [("root", ROOT_PASS), ("root2", ROOT_PASS), ("alice", SIGNER_PASS)] {
        with_pass(n1, &["trust", "key", "generate", name, "--dir", &kdir], &[pass]);
    }
    with_pass(
        n1,
        &["trust", "key", "generate", "bob", "--algorithm", "ecdsa-p256", "--dir", &kdir],
        &[SIGNER_PASS],
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(k("root")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "a private key file is its owner's alone");
    let sealed = std::fs::read_to_string(k("root")).unwrap();
    assert!(sealed.contains("\"sealed\""), "the key file is sealed: {sealed}");
    let e = refused(
        n1,
        &["trust", "root", "add", &format!("{reg}/team"), "--key", &k("root")],
        &["wrong-passphrase"],
    );
    assert!(e.contains("wrong passphrase"), "{e}");

    // --- Root, signer, a signed tag; an unsigned one beside it. --------------------------------
    step("root, signer, sign");
    let app = format!("{reg}/team/app");
    let (v1, v2) = (format!("{app}:1"), format!("{app}:2"));
    with_pass(
        n1,
        &["trust", "root", "add", &format!("{reg}/team"), "--key", &k("root")],
        &[ROOT_PASS],
    );
    with_pass(
        n1,
        &["trust", "signer", "add", "alice", &app, "--key", &p("alice"), "--root-key", &k("root")],
        &[ROOT_PASS],
    );
    n1.must_shoal(&["image", "import", &versioned_tar(dir, "v1", APPLETS), &v1]);
    n1.must_shoal(&["image", "import", &versioned_tar(dir, "v2", APPLETS), &v2]);
    let signed = with_pass(n1, &["trust", "sign", &v1, "--key", &k("alice")], &[SIGNER_PASS]);
    let d1 = signed.split('(').nth(1).and_then(|s| s.split(')').next()).unwrap().to_string();
    assert!(d1.starts_with("sha256:"), "trust sign names the digest: {signed}");
    n1.must_shoal(&["image", "push", &v2]);
    let inspect = n1.must_shoal(&["trust", "inspect", "--pretty", &app]);
    assert!(inspect.contains("alice") && inspect.contains(&d1), "{inspect}");
    let json: serde_json::Value =
        serde_json::from_str(&n1.must_shoal(&["trust", "inspect", &v1])).unwrap();
    assert_eq!(json[0]["SignedTags"][0]["Digest"], d1.as_str(), "{json}");

    // A service made before trust is required, on n2: it keeps running, its replacement won't.
    step("a legacy unsigned service");
    let out = create(n1, "legacy", &v2, &["--constraint", "node.hostname==n2"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_running(n1, "legacy", 1, Duration::from_secs(60));

    // --- Required: unsigned refused at create, signed runs on both nodes. ---------------------
    step("content trust required");
    n1.must_shoal(&["swarm", "update", "--content-trust", "required"]);
    let swarm: serde_json::Value =
        serde_json::from_str(&n1.must_shoal(&["swarm", "inspect"])).unwrap();
    assert_eq!(swarm["Spec"]["ContentTrust"]["Required"], true, "{swarm}");
    // A node that joins now pins the cluster's roots at join, before it runs anything.
    step("a node joins and pins the roots");
    let mut n3 = Node::new(net, 3, dir);
    let certs = n3.data.join("certs.d");
    registry.install_ca(&certs);
    n3.args = vec!["--certs-dir".into(), certs.display().to_string()];
    n3.start();
    let token = nodes[0].must_shoal(&["swarm", "join-token", "-q", "worker"]).trim().to_string();
    let out = n3.join(&token, &net.addr(1));
    assert!(out.status.success(), "{}", text(&out));
    let pins: serde_json::Value = serde_json::from_slice(
        &std::fs::read(n3.data.join("runtime/trust/pins.json")).expect("n3 pinned at join"),
    )
    .unwrap();
    assert_eq!(pins["required"], true, "{pins}");
    assert!(pins["roots"].get(format!("{reg}/team")).is_some(), "{pins}");
    nodes.push(n3);
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let out = create(n1, "on-n3", &v1, &["--constraint", "node.hostname==n3"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_running(n1, "on-n3", 1, Duration::from_secs(60));
    n1.must_shoal(&["service", "rm", "on-n3"]);

    let out = create(n1, "unsigned", &v2, &[]);
    assert!(!out.status.success(), "an unsigned image was accepted: {}", text(&out));
    assert!(text(&out).contains("no signature for") && text(&out).contains(":2"), "{}", text(&out));
    let out = create(n1, "web", &v1, &["--replicas", "2", "--replicas-max-per-node", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_running(n1, "web", 2, Duration::from_secs(90));
    assert_eq!(pinned(n1, "web"), d1, "pinned to the signed digest");

    // The CLI checks for itself with SHOAL_CONTENT_TRUST=1 (on a manager, as every control
    // command), pinning the root it saw first.
    step("SHOAL_CONTENT_TRUST=1 on the CLI");
    let cli_trust = dir.join("n1-cli-trust/private").display().to_string();
    let env = [("SHOAL_CONTENT_TRUST", "1"), ("SHOAL_TRUST_DIR", cli_trust.as_str())];
    let out = n1.shoal_with_env(&["image", "pull", &v1], &env);
    assert!(out.status.success() && text(&out).contains(&d1), "{}", text(&out));
    assert!(n1.must_shoal(&["image", "ls"]).contains(&app), "the signed pull is tagged");
    assert!(dir.join("n1-cli-trust/pins.json").exists(), "the CLI pinned the root it checked");
    let out = n1.shoal_with_env(&["image", "pull", &v2], &env);
    assert!(!out.status.success() && text(&out).contains("no signature for"), "{}", text(&out));
    let out = n1.shoal_with_env(&["image", "pull", "--disable-content-trust", &v2], &env);
    assert!(out.status.success(), "{}", text(&out));

    // The legacy task is replaced (forced by a restart of n2's task): the node refuses it.
    step("the node refuses what the managers forward");
    let task = ps(n1, "legacy").unwrap().into_iter().find(|r| r.state == "Running").unwrap();
    let out = n2.shoal(&["service", "update", "-d", "--force", "legacy"]);
    assert!(!out.status.success(), "an update of an unsigned service passed: {}", text(&out));
    // Kill the running task, as a crash would: its slot gets a new task the managers send on.
    n2.kill_task(&task.id);
    let rejected = eventually("the replacement REJECTED by n2", Duration::from_secs(60), || {
        let rows = ps(n1, "legacy")?;
        rows.into_iter()
            .find(|r| r.state == "Rejected" && r.error.contains("content trust on n2"))
            .ok_or_else(|| format!("{:?}", ps(n1, "legacy")))
    });
    assert!(
        rejected.error.contains("no signature for") && rejected.error.contains(":2"),
        "{}",
        rejected.error
    );
    n1.must_shoal(&["service", "rm", "legacy"]);

    // --- Revoked: refused on redeploy. ----------------------------------------------------------
    step("revoke");
    with_pass(n1, &["trust", "revoke", &v1, "--key", &k("alice")], &[SIGNER_PASS]);
    let out = create(n1, "again", &v1, &[]);
    assert!(!out.status.success() && text(&out).contains("revoked"), "{}", text(&out));

    // --- The root replaces alice with bob: alice's signing is refused, bob's counts. ---------
    step("signer rotation");
    with_pass(
        n1,
        &["trust", "signer", "remove", "alice", &app, "--root-key", &k("root")],
        &[ROOT_PASS],
    );
    with_pass(
        n1,
        &["trust", "signer", "add", "bob", &app, "--key", &p("bob"), "--root-key", &k("root")],
        &[ROOT_PASS],
    );
    let e =
        refused(n1, &["trust", "sign", &v1, "--key", &k("alice"), "--digest", &d1], &[SIGNER_PASS]);
    assert!(e.contains("not a signer"), "{e}");
    with_pass(n1, &["trust", "sign", &v1, "--key", &k("bob"), "--digest", &d1], &[SIGNER_PASS]);
    let out = create(n1, "again", &v1, &["--constraint", "node.hostname==n2"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_running(n1, "again", 1, Duration::from_secs(60));

    // --- Root rotation: the new root must re-sign the signers. ---------------------------------
    step("root rotation");
    with_pass(
        n1,
        &[
            "trust",
            "root",
            "rotate",
            &format!("{reg}/team"),
            "--key",
            &k("root"),
            "--new-key",
            &k("root2"),
        ],
        &[ROOT_PASS, ROOT_PASS],
    );
    let e = refused(
        n1,
        &["trust", "signer", "add", "carol", &app, "--key", &p("alice"), "--root-key", &k("root")],
        &[ROOT_PASS],
    );
    assert!(e.contains("is not the root key"), "{e}");
    let out = create(n1, "after-rotation", &v1, &[]);
    assert!(
        !out.status.success() && text(&out).contains("not signed by the root"),
        "signers signed by the old root still counted: {}",
        text(&out)
    );
    with_pass(
        n1,
        &["trust", "signer", "add", "bob", &app, "--key", &p("bob"), "--root-key", &k("root2")],
        &[ROOT_PASS],
    );
    let out = create(n1, "after-rotation", &v1, &["--constraint", "node.hostname==n2"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_running(n1, "after-rotation", 1, Duration::from_secs(60));

    // --- A layer changed in the registry after signing: the node refuses it. ------------------
    step("a layer changed after signing");
    let bad = format!("{app}:bad");
    let bad_tar = versioned_tar(dir, "bad", APPLETS);
    n1.must_shoal(&["image", "import", &bad_tar, &bad]);
    with_pass(n1, &["trust", "sign", &bad, "--key", &k("bob")], &[SIGNER_PASS]);
    let layer = sha256_file(&bad_tar);
    let stored = registry.blob_path(&layer);
    let mut bytes = std::fs::read(&stored).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&stored, bytes).unwrap();
    let out = create(n1, "bad", &bad, &["--constraint", "node.hostname==n2"]);
    assert!(out.status.success(), "the manager checks signatures, not blobs: {}", text(&out));
    eventually("the changed layer REJECTED on n2", Duration::from_secs(60), || {
        let rows = ps(n1, "bad")?;
        rows.into_iter()
            .find(|r| r.state == "Rejected" && r.error.contains(&layer[7..19]))
            .ok_or_else(|| format!("{:?}", ps(n1, "bad")))
    });
    n1.must_shoal(&["service", "rm", "bad"]);

    // --- Timestamps: a shorter lifetime re-stamps at once, and the leader keeps renewing. ------
    step("timestamps renew");
    let stamp = || {
        let v: serde_json::Value =
            serde_json::from_str(&n1.must_shoal(&["trust", "inspect", &app])).unwrap();
        v[0]["Timestamp"]["Version"].as_u64().unwrap_or(0)
    };
    let before = stamp();
    n1.must_shoal(&["swarm", "update", "--trust-timestamp-expiry", "4s"]);
    eventually("two renewals", Duration::from_secs(30), || {
        let now = stamp();
        (now >= before + 2).then_some(()).ok_or(format!("version {now}, was {before}"))
    });
    std::thread::sleep(Duration::from_secs(5));
    let out = create(n1, "renewed", &v1, &["--constraint", "node.hostname==n2"]);
    assert!(out.status.success(), "after the first timestamp expired: {}", text(&out));
    wait_running(n1, "renewed", 1, Duration::from_secs(60));

    // --- Off needs a root's word; then unsigned images run again. ------------------------------
    step("content trust off");
    let out = n1.shoal(&["swarm", "update", "--content-trust", "off"]);
    assert!(!out.status.success() && text(&out).contains("--root-key"), "{}", text(&out));
    let e = refused(
        n1,
        &["swarm", "update", "--content-trust", "off", "--root-key", &k("alice")],
        &[SIGNER_PASS],
    );
    assert!(e.contains("not signed by a pinned root"), "{e}");
    with_pass(
        n1,
        &["swarm", "update", "--content-trust", "off", "--root-key", &k("root2")],
        &[ROOT_PASS],
    );
    let out = create(n1, "free", &v2, &["--constraint", "node.hostname==n2"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_running(n1, "free", 1, Duration::from_secs(60));
    registry.stop();
    step("done");
}
