//! Issue #12 item 4: a custom seccomp profile does not get around the node's policy. On a real
//! `shoald` without `--task-allow-custom-seccomp`, a service whose profile lets everything run
//! (`{"defaultAction":"SCMP_ACT_ALLOW"}`, which `seccomp=unconfined` would be refused for) is
//! REJECTED naming the flag; a profile that is the node's default minus a few calls runs (and
//! those calls fail in it); restarted with the flag, the node runs the permissive one.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shoal_testkit::netns::{finish, root_or_skip, text, Net, Node};
use shoal_testkit::poll::blocking::eventually;

const IMAGE: &str = "seccomp:t";
const FLAG: &str = "--task-allow-custom-seccomp";

#[test]
fn a_custom_seccomp_profile_weaker_than_the_default_needs_the_node_flag() {
    if !root_or_skip("a_custom_seccomp_profile_weaker_than_the_default_needs_the_node_flag") {
        return;
    }
    let dir = tempfile::Builder::new().prefix("shoal-seccomp-").tempdir().unwrap();
    let net = Net::with("cs", 244, (std::process::id() % 240 + 10) as u8, 1);
    let mut nodes = vec![Node::new(&net, 1, dir.path())];
    let path = dir.path().to_path_buf();
    let result = catch_unwind(AssertUnwindSafe(|| story(&mut nodes, &path)));
    finish(result, nodes, net, dir);
}

fn story(nodes: &mut [Node], dir: &Path) {
    let tar = busybox_image(dir);
    let permissive = dir.join("allow-all.json");
    std::fs::write(&permissive, r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#).unwrap();
    let stricter = dir.join("default-minus-mknod.json");
    std::fs::write(&stricter, default_without(&["mknod", "mknodat"])).unwrap();

    nodes[0].start_alone_with_image(&tar, IMAGE);
    let n1 = &mut nodes[0];

    // A task that reports whether mknod reaches the kernel, then stays.
    let script = "/bin/busybox mkfifo /tmp/p && echo mknod-ran || echo mknod-refused; \
                  echo started; exec /bin/busybox sleep 3600";
    let create = |name: &str, profile: &Path| {
        let opt = format!("seccomp={}", profile.display());
        n1.must_shoal(&[
            "service",
            "create",
            "--detach",
            "--name",
            name,
            "--security-opt",
            &opt,
            IMAGE,
            "/bin/busybox",
            "sh",
            "-c",
            script,
        ]);
    };

    create("permissive", &permissive);
    let ps =
        eventually("the permissive task REJECTED naming the flag", Duration::from_secs(60), || {
            let out = text(&n1.shoal(&["service", "ps", "--no-trunc", "permissive"]));
            (out.contains("Rejected") && out.contains(FLAG)).then_some(out.clone()).ok_or(out)
        });
    let logs = text(&n1.shoal(&["service", "logs", "permissive"]));
    assert!(!logs.contains("started"), "a permissive profile ran without the flag:\n{ps}\n{logs}");

    create("stricter", &stricter);
    let logs = started(n1, "stricter");
    assert!(logs.contains("mknod-refused"), "the stricter profile was not applied:\n{logs}");

    n1.kill();
    n1.args.push(FLAG.to_string());
    n1.start();
    let logs = started(n1, "permissive");
    assert!(logs.contains("mknod-ran"), "the permissive profile with the flag:\n{logs}");
}

/// Waits until `service`'s task has started, and returns its logs.
fn started(node: &Node, service: &str) -> String {
    eventually(&format!("{service} started"), Duration::from_secs(90), || {
        let out = text(&node.shoal(&["service", "logs", service]));
        out.contains("started").then_some(out.clone()).ok_or_else(|| {
            let ps = text(&node.shoal(&["service", "ps", "--no-trunc", service]));
            format!("logs:\n{out}\nps:\n{ps}")
        })
    })
}

/// The node's built-in profile in Docker's JSON, with `names` taken out of every rule.
fn default_without(names: &[&str]) -> String {
    let mut profile = shoal_agent::runtime::seccomp::builtin_profile();
    for rule in &mut profile.syscalls {
        rule.names.retain(|n| !names.contains(&n.as_str()));
    }
    profile.syscalls.retain(|r| !r.names.is_empty() || r.name.is_some());
    serde_json::to_string(&profile).unwrap()
}

fn busybox_image(dir: &Path) -> PathBuf {
    let root = dir.join("image-rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("/bin/busybox (busybox-static)");
    let tar = dir.join("image.tar");
    let status =
        Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".").status().unwrap();
    assert!(status.success(), "tar failed");
    tar
}
