//! Issue #12 item 3: a user of a node's host without privileges (`nobody`) gets nothing from the
//! node's data root. A real `shoald` runs a real task (runc) with a secret, an environment value
//! and a log line, from an image holding a setuid-root program, and the task makes its own
//! setuid-root copy. Then, as `nobody`: no file root finds holding the secret, the environment
//! value or the log line is readable, `runtime/` cannot be listed, and no setuid file under the
//! data root runs with euid 0. Also, seen as root: the task's rootfs is mounted nosuid,nodev, so
//! even a path that reached it would not elevate.

use std::os::unix::fs::PermissionsExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shoal_testkit::netns::{finish, root_or_skip, text, Net, Node};
use shoal_testkit::poll::blocking::eventually;

const IMAGE: &str = "hostfiles:t";
const SECRET: &str = "secret-hf-5d9c1e77a2b4";
const ENV: &str = "env-hf-0b3f9a6e41c8";
const LOG: &str = "log-hf-7e2c84d15b3a";
/// The setuid-root program: a copy of the host's python, which (unlike busybox and dash) keeps
/// the euid a setuid bit gives it, so it can tell.
const SETUID_NAME: &str = "euid-probe";

#[test]
fn a_host_user_reads_no_task_secret_env_or_log_and_gains_no_root_from_setuid_files() {
    if !root_or_skip("a_host_user_reads_no_task_secret_env_or_log_and_gains_no_root") {
        return;
    }
    let dir = tempfile::Builder::new().prefix("shoal-hostfiles-").tempdir().unwrap();
    // Like /var/lib: the way to the data root is open to every host user.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let net = Net::with("hf", 243, (std::process::id() % 240 + 10) as u8, 1);
    let mut nodes = vec![Node::new(&net, 1, dir.path())];
    let path = dir.path().to_path_buf();
    let result = catch_unwind(AssertUnwindSafe(|| story(&mut nodes, &path)));
    finish(result, nodes, net, dir);
}

fn story(nodes: &mut [Node], dir: &Path) {
    let tar = image_with_a_setuid_program(dir);
    nodes[0].start_alone_with_image(&tar, IMAGE);
    let n1 = &nodes[0];
    n1.must_create_secret("hf_secret", SECRET);

    let script = format!(
        "/bin/busybox cp /{SETUID_NAME} /own-{SETUID_NAME} && /bin/busybox chmod 4755 /own-{SETUID_NAME} /{SETUID_NAME}; \
         echo {LOG}; echo ready; exec /bin/busybox sleep 3600"
    );
    let env = format!("TOKEN={ENV}");
    n1.must_shoal(&[
        "service",
        "create",
        "--detach",
        "--name",
        "hf",
        "--secret",
        "hf_secret",
        "--env",
        &env,
        IMAGE,
        "/bin/busybox",
        "sh",
        "-c",
        &script,
    ]);
    eventually("the task's log line", Duration::from_secs(60), || {
        let out = text(&n1.shoal(&["service", "logs", "hf"]));
        out.contains("ready").then_some(()).ok_or(out)
    });

    // What root finds under the data root: the files an attacker wants, and setuid programs.
    let data = &n1.data;
    let files = find(data, &["-type", "f"]);
    let holding = |value: &str| -> Vec<PathBuf> {
        files.iter().filter(|f| read_contains(f, value)).cloned().collect()
    };
    let wanted: Vec<(&str, Vec<PathBuf>)> =
        vec![("secret", holding(SECRET)), ("env value", holding(ENV)), ("log line", holding(LOG))];
    for (what, found) in &wanted {
        assert!(!found.is_empty(), "root finds no file holding the task's {what} under {data:?}");
    }
    let setuid = find(data, &["-type", "f", "-perm", "-4000", "-name", &format!("*{SETUID_NAME}")]);
    assert!(!setuid.is_empty(), "root finds no setuid program under {data:?}");
    eprintln!("setuid programs under the data root, tried as nobody: {setuid:#?}");

    // The same, as nobody.
    let mut script = String::new();
    for (what, found) in &wanted {
        for f in found {
            script +=
                &format!("cat {} >/dev/null 2>&1 && echo 'READ {what}: {}'\n", q(f), f.display());
        }
    }
    let runtime = data.join("runtime");
    script +=
        &format!("ls {} >/dev/null 2>&1 && echo 'LISTED {}'\n", q(&runtime), runtime.display());
    for f in &setuid {
        script += &format!(
            "e=$({} -c 'import os; print(os.geteuid())' 2>/dev/null) && echo \"RAN {} euid=$e\"\n",
            q(f),
            f.display()
        );
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "/bin/sh", "-c", &script])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let leaks: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("READ") || l.starts_with("LISTED") || l.ends_with("euid=0"))
        .collect();
    assert!(leaks.is_empty(), "nobody on the host got at the task:\n{}", leaks.join("\n"));

    // Defence in depth: the task's rootfs does not honour setuid bits or device nodes.
    let rootfs_mounts = mounts_under(data, "/rootfs");
    assert!(!rootfs_mounts.is_empty(), "no rootfs mount under {data:?}");
    for (point, opts) in rootfs_mounts {
        assert!(opts.contains("nosuid") && opts.contains("nodev"), "{point} is mounted {opts}");
    }
}

/// A one-layer image: busybox, and a setuid-root copy of the host's python at `/euid-probe`.
fn image_with_a_setuid_program(dir: &Path) -> PathBuf {
    let root = dir.join("image-rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("/bin/busybox (busybox-static)");
    let python = std::fs::canonicalize("/usr/bin/python3").expect("/usr/bin/python3");
    let probe = root.join(SETUID_NAME);
    std::fs::copy(python, &probe).unwrap();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let tar = dir.join("image.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["--numeric-owner", "-cf"])
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success(), "tar failed");
    tar
}

/// `find DIR ARGS` as root (crossing into the task's mounts).
fn find(dir: &Path, args: &[&str]) -> Vec<PathBuf> {
    let out = Command::new("find").arg(dir).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(PathBuf::from).collect()
}

fn read_contains(path: &Path, value: &str) -> bool {
    std::fs::read(path).is_ok_and(|b| b.windows(value.len()).any(|w| w == value.as_bytes()))
}

/// Mount points under `dir` ending in `suffix`, with their per-mount options.
fn mounts_under(dir: &Path, suffix: &str) -> Vec<(String, String)> {
    let prefix = dir.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Some((f.get(4)?.to_string(), f.get(5)?.to_string()))
        })
        .filter(|(p, _)| p.starts_with(&prefix) && p.ends_with(suffix))
        .collect()
}

/// `path` quoted for sh.
fn q(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}
