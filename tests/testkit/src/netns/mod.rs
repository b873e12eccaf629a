//! Fixtures for tests on real hosts: every node is a `shoald` process in its own network
//! namespace (veth pairs on one bridge), driven with the `shoal` binary exactly as a user would
//! drive it.
//!
//! They need root (network namespaces): see [`root_or_skip`]. On a failure, [`finish`] ends the
//! message with the tail of every node's log and keeps the node directories for inspection.
//!
//! [`DockerSwarm`] puts Docker's daemons on such hosts instead, for the benchmarks' peer.

mod docker;
mod net;
mod node;
mod process;
pub mod ps;
mod table;
pub mod tunnel;

use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

pub use docker::DockerSwarm;
pub use net::Net;
pub use node::{reap_containers, reap_namespaces, Node};
pub use process::*;
pub use table::*;

/// The `shoal` binary of this build.
pub static SHOAL: LazyLock<PathBuf> = LazyLock::new(|| built_binary("shoal"));
/// The `shoald` binary of this build (with the `test-util` knobs under `cargo test`).
pub static SHOALD: LazyLock<PathBuf> = LazyLock::new(|| built_binary("shoald"));

/// Divides certificate renewal waits: a 1h certificate renews after ~1-1.5 s.
pub const TIME_SCALE: &str = "2000";
/// How long one `shoal` invocation may take before the test calls it hung.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Cluster port.
pub const PORT: u16 = 4242;

/// A binary of the `shoal` package, from the directory cargo built it in: the one holding the
/// running test (or bench) executable, or its parent when that is `deps/`.
fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the running executable");
    let mut dir = exe.parent().expect("the executable's directory").to_path_buf();
    if dir.file_name().is_some_and(|d| d == "deps") {
        dir.pop();
    }
    let bin = dir.join(name);
    assert!(bin.exists(), "{} is not built: run the tests through cargo", bin.display());
    bin
}

/// Whether `test`, which needs root for `what`, can run here: without root it prints a notice
/// and returns false (the test passes), except under CI (env `CI` set), where it panics.
pub fn root_for(test: &str, what: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test} needs root ({what}) and CI is set: run the tests as root");
    }
    eprintln!("NOTICE: {test} skipped: it needs root ({what})");
    false
}

/// Whether `test` can run here: it needs root (network namespaces, veth, a bridge), `ip` and
/// `nsenter`. Without root it prints a notice and returns false (the test passes), except under
/// CI (env `CI` set), where it panics: CI must really run it.
pub fn root_or_skip(test: &str) -> bool {
    if !root_for(test, "network namespaces, veth, a bridge") {
        return false;
    }
    for tool in ["ip", "nsenter"] {
        assert!(have(tool), "{test} needs `{tool}` (apt-get install iproute2 util-linux)");
    }
    true
}

/// The last `lines` lines of every node's log, for a failure message.
pub fn node_logs(nodes: &[Node], lines: usize) -> String {
    let mut logs = String::new();
    for node in nodes {
        logs.push_str(&format!(
            "\n----- {} ({}) last lines of {} -----\n{}\n",
            node.name,
            node.ip,
            node.log().display(),
            tail(&node.log(), lines)
        ));
    }
    logs
}

/// Starts every node with `image` imported from the rootfs tarball `tar`, makes the first the
/// manager (heartbeat 1 s) and the others workers, and waits until all are Ready.
pub fn worker_swarm(net: &Net, nodes: &mut [Node], tar: &str, image: &str) {
    for n in nodes.iter_mut() {
        n.start();
        n.must_shoal(&["image", "import", tar, image]);
    }
    let n1 = &nodes[0];
    let listen = format!("{}:{}", n1.ip, PORT);
    let init = ["swarm", "init", "--advertise-addr", &n1.ip, "--listen-addr", &listen];
    n1.must_shoal(&[&init[..], &["--dispatcher-heartbeat", "1s"]].concat());
    let token = n1.must_shoal(&["swarm", "join-token", "-q", "worker"]).trim().to_string();
    for n in &nodes[1..] {
        let out = n.join(&token, &net.addr(1));
        assert!(out.status.success(), "{}", text(&out));
    }
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    crate::poll::blocking::eventually(
        "every node Ready",
        std::time::Duration::from_secs(30),
        || all_ready(n1, &names),
    );
}

/// Runs `story` on `hosts` network-namespace hosts (tag `tag`, second octet `octet`, third
/// from the process ID) with `Node`s on the first `nodes` of them, then cleans up with
/// [`finish`]: the boilerplate of every netns test that needs nothing else. Skips (with a
/// notice) without root, unless under CI.
pub fn run_story(
    name: &str,
    tag: &str,
    octet: u8,
    hosts: usize,
    nodes: usize,
    story: impl FnOnce(&Net, &mut Vec<Node>, &Path),
) {
    if !root_or_skip(name) {
        return;
    }
    let started = std::time::Instant::now();
    let dir = tempfile::Builder::new().prefix(&format!("shoal-{tag}-")).tempdir().unwrap();
    let net = Net::with(tag, octet, (std::process::id() % 240 + 10) as u8, hosts);
    let mut all: Vec<Node> = (1..=nodes).map(|i| Node::new(&net, i, dir.path())).collect();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        story(&net, &mut all, dir.path())
    }));
    finish(result, all, net, dir);
    eprintln!("{name}: passed in {:.1}s", started.elapsed().as_secs_f64());
}

/// Ends a test run under `catch_unwind`: stops the nodes and tears the network down, and on a
/// failure panics again with the original message followed by the tail of every node's log,
/// keeping `dir` (the node directories) for inspection.
pub fn finish(result: std::thread::Result<()>, nodes: Vec<Node>, net: Net, dir: tempfile::TempDir) {
    if let Err(payload) = result {
        let logs = node_logs(&nodes, 40);
        drop(nodes);
        drop(net);
        let kept = dir.keep();
        panic!(
            "{}\n\nnode logs (kept under {}):{logs}",
            panic_text(payload.as_ref()),
            kept.display()
        );
    }
    drop(nodes);
    drop(net);
}
