//! Issue #12, item 1: an image cannot change the host. A real daemon (in process, its real
//! local API and image store) is fed crafted archives through the real `shoal` CLI: layers that
//! aim whiteouts through a symbolic link at a file outside the store, and an archive whose layer
//! member is a symbolic link to a host file. Each must fail naming the bad entry, leave the host
//! file as it was, and leave the image store exactly as before (no image, no layer, no staging
//! leftovers).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use shoal_testkit::cluster::TestNode;

fn shoal(node: &TestNode, args: &[&str]) -> Output {
    let host = format!("unix://{}", node.socket.display());
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .env_remove("SHOAL_HOST")
        .arg("-H")
        .arg(host)
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A ustar archive written byte by byte, as a hostile tool would: no checks on names or links.
#[derive(Default)]
struct Tar(Vec<u8>);

impl Tar {
    fn member(mut self, kind: u8, name: &str, link: &str, data: &[u8]) -> Tar {
        assert!(name.len() < 100 && link.len() < 100, "short names only");
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let octal = |h: &mut [u8; 512], at: usize, width: usize, v: u64| {
            let s = format!("{v:0w$o}", w = width - 1);
            h[at..at + width - 1].copy_from_slice(s.as_bytes());
        };
        octal(&mut h, 100, 8, 0o644);
        octal(&mut h, 108, 8, 0);
        octal(&mut h, 116, 8, 0);
        octal(&mut h, 124, 12, data.len() as u64);
        octal(&mut h, 136, 12, 0);
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        self.0.extend_from_slice(&h);
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }

    fn file(self, name: &str, data: &[u8]) -> Tar {
        self.member(b'0', name, "", data)
    }

    fn symlink(self, name: &str, target: &str) -> Tar {
        self.member(b'2', name, target, b"")
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }
}

fn digest(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    format!("sha256:{}", d.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// A `docker save` archive of one image `evil:1` whose layers are `layers` (as files in the
/// archive unless listed in `linked`, which become symbolic links to the given targets).
fn docker_archive(layers: &[&[u8]], linked: &[(&str, &str)]) -> Vec<u8> {
    let ids: Vec<String> = layers.iter().map(|l| digest(l)).collect();
    let config = serde_json::json!({
        "architecture": shoal_agent::image::go_arch(),
        "os": "linux", "config": { "Cmd": ["/bin/sh"] },
        "rootfs": { "type": "layers", "diff_ids": ids },
    })
    .to_string();
    let names: Vec<String> = (1..=layers.len()).map(|i| format!("l{i}/layer.tar")).collect();
    let config_name = format!("{}.json", &digest(config.as_bytes())[7..]);
    let manifest =
        serde_json::json!([{ "Config": config_name, "RepoTags": ["evil:1"], "Layers": names }]);
    let mut tar = Tar::default()
        .file("manifest.json", manifest.to_string().as_bytes())
        .file(&config_name, config.as_bytes());
    for (name, layer) in names.iter().zip(layers) {
        tar = match linked.iter().find(|(n, _)| n == name) {
            Some((_, target)) => tar.symlink(name, target),
            None => tar.file(name, layer),
        };
    }
    tar.finish()
}

/// A directory outside the daemon's data root holding a file that must survive.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("canary"), b"precious").unwrap();
        Host { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn canary_is_intact(&self) -> bool {
        std::fs::read(self.path().join("canary")).ok().as_deref() == Some(&b"precious"[..])
    }

    /// `name` written into the host directory; returns its path.
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

/// A layer that makes `evil` a link to `host_dir` and then whites out `evil/canary`.
fn whiteout_through_a_link(host_dir: &Path) -> Vec<u8> {
    Tar::default().symlink("evil", host_dir.to_str().unwrap()).file("evil/.wh.canary", b"").finish()
}

/// Every path under the node's image store, for "nothing was left behind".
fn store_contents(node: &TestNode) -> Vec<PathBuf> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            out.push(e.path().strip_prefix(base).unwrap().to_path_buf());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(&e.path(), base, out);
            }
        }
    }
    let root = node.root.join("images");
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    out.sort();
    out
}

fn assert_nothing_stored(node: &TestNode) {
    let ls = shoal(node, &["image", "ls", "-q"]);
    assert!(ls.status.success(), "{}", text(&ls));
    assert!(String::from_utf8_lossy(&ls.stdout).trim().is_empty(), "images: {}", text(&ls));
    let empty: Vec<PathBuf> =
        ["blobs", "blobs/sha256", "images", "layers", "tmp"].iter().map(PathBuf::from).collect();
    assert_eq!(store_contents(node), empty, "the store holds only its empty directories");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whiteout_through_a_symlink_cannot_delete_a_host_file() {
    let node = TestNode::start("img-wh").await;
    let host = Host::new();
    let rootfs = host.write("rootfs.tar", &whiteout_through_a_link(host.path()));

    let out = shoal(&node, &["image", "import", rootfs.to_str().unwrap(), "evil:1"]);

    assert!(!out.status.success(), "the import must fail: {}", text(&out));
    let msg = text(&out);
    assert!(msg.contains("evil/.wh.canary") && msg.contains("symbolic link"), "{msg}");
    assert!(host.canary_is_intact(), "the host file was deleted or changed: {msg}");
    assert_nothing_stored(&node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loaded_image_with_a_hostile_second_layer_stores_nothing_and_deletes_nothing() {
    let node = TestNode::start("img-load").await;
    let host = Host::new();
    let good = Tar::default().file("bin/tool", b"#!/bin/sh\n").finish();
    let bad = whiteout_through_a_link(host.path());
    let archive = host.write("evil.tar", &docker_archive(&[&good, &bad], &[]));

    let out = shoal(&node, &["image", "load", "-i", archive.to_str().unwrap()]);

    assert!(!out.status.success(), "the load must fail: {}", text(&out));
    let msg = text(&out);
    assert!(msg.contains("l2/layer.tar") && msg.contains("evil/.wh.canary"), "{msg}");
    assert!(host.canary_is_intact(), "the host file was deleted or changed: {msg}");
    assert_nothing_stored(&node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_member_symlinked_to_a_host_file_is_never_read() {
    let node = TestNode::start("img-link").await;
    let host = Host::new();
    // A tarball of host data: loaded through the link, it would become an image anyone on the
    // node could run and read.
    let secret = Tar::default().file("secret", b"host data").finish();
    let secret_path = host.write("secret.tar", &secret);
    let archive = host.write(
        "linked.tar",
        &docker_archive(&[&secret], &[("l1/layer.tar", secret_path.to_str().unwrap())]),
    );

    let out = shoal(&node, &["image", "load", "-i", archive.to_str().unwrap()]);

    assert!(!out.status.success(), "the load must fail: {}", text(&out));
    let msg = text(&out);
    assert!(msg.contains("l1/layer.tar") && msg.contains("outside the archive"), "{msg}");
    assert_nothing_stored(&node);

    // The same member linked at /dev/zero: refused at once, not read forever.
    let archive =
        host.write("zero.tar", &docker_archive(&[&secret], &[("l1/layer.tar", "/dev/zero")]));
    let out = shoal(&node, &["image", "load", "-i", archive.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out).contains("/dev/zero"), "{}", text(&out));
    assert_nothing_stored(&node);
}
