//! `shoal image` end to end: the CLI binary talks to a real daemon over its unix socket, and
//! the daemon's image store imports, lists and removes images built from local files.

use std::process::Command;

use shoal_testkit::cluster::TestNode;
use shoal_testkit::image::busybox_tar;

fn shoal(node: &TestNode, args: &[&str]) -> std::process::Output {
    let host = format!("unix://{}", node.socket.display());
    Command::new(env!("CARGO_BIN_EXE_shoal")).arg("-H").arg(host).args(args).output().unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_import_list_and_remove_through_the_cli() {
    let node = TestNode::start("img").await;
    let dir = tempfile::tempdir().unwrap();
    let tar = busybox_tar(dir.path(), &[]).unwrap();
    let out = shoal(&node, &["image", "import", tar.to_str().unwrap(), "busybox:test"]);
    assert!(out.status.success(), "{}", text(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(id.starts_with("sha256:"), "{id}");

    let ls = text(&shoal(&node, &["image", "ls"]));
    assert!(ls.contains("busybox:test") && ls.contains(&id[7..19]), "{ls}");

    let garbage = dir.path().join("garbage.tar");
    std::fs::write(&garbage, b"this is not a tarball").unwrap();
    let out = shoal(&node, &["image", "load", "-i", garbage.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).starts_with("Error:"), "{}", text(&out));
    assert_eq!(
        text(&shoal(&node, &["image", "ls", "-q"])).lines().count(),
        1,
        "nothing half-loaded"
    );

    let out = shoal(&node, &["image", "rm", "busybox:test"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&shoal(&node, &["image", "ls", "-q"])).trim().is_empty());
    let out = shoal(&node, &["image", "rm", "busybox:test"]);
    assert!(!out.status.success() && text(&out).contains("shoal image load"), "{}", text(&out));
}
