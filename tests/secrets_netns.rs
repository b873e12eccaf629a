//! Secrets on a real host: a `shoald` in its own network namespace runs real containers through
//! runc, driven by the `shoal` binary. The seed's example: a stack whose `psql` service uses
//! `psql_user` from a file and `psql_password` as an external secret. The container sees both
//! under /run/secrets (on a read-only tmpfs), another service on the same node sees neither,
//! `--secret-add/--secret-rm` roll a running service, the tmpfs is gone once the task stops,
//! `stack rm` removes `psql_user` but keeps `psql_password`, and no secret value is on disk.
//!
//! Needs root; under CI (env `CI`) it must run.

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shoal_testkit::image::busybox_tar;
use shoal_testkit::netns::{finish, root_or_skip, text, Net, Node};
use shoal_testkit::poll::blocking::eventually;

const IMAGE: &str = "busybox:t";
const USER: &str = "db-admin-7c1f9e";
const PASSWORD: &str = "pw-4a7e1d0b9c22f";

fn subnet() -> u8 {
    (std::process::id() % 240 + 10) as u8
}

fn md5(value: &str) -> String {
    let mut child = Command::new("/bin/busybox")
        .arg("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(value.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

/// A command that prints what it finds under /run/secrets (paths and digests, never values).
const REPORT: &str = "for f in /run/secrets/*; do [ -f \"$f\" ] && echo \"seen $f $(/bin/busybox md5sum < $f)\"; done; echo report-done; exec /bin/busybox sleep 3600";

/// Resolves the stack's psql service by its short name (the stack's default network), for up
/// to 30 s while psql starts.
const RESOLVE: &str = "for i in $(/bin/busybox seq 60); do if /bin/busybox nslookup psql 2>/dev/null | /bin/busybox grep -q 'Address.*10\\.'; then echo resolved-psql; break; fi; /bin/busybox sleep 0.5; done";

fn logs(node: &Node, service: &str) -> String {
    let out = node.shoal(&["service", "logs", service]);
    text(&out)
}

fn running_tasks(node: &Node, service: &str) -> usize {
    let out = node.shoal(&["service", "ps", service]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter(|l| l.contains(" Running ") && l.matches("Running").count() >= 2)
        .count()
}

/// Secret tmpfs mounts of this node's tasks.
fn secret_mounts(node: &Node) -> Vec<String> {
    let prefix = node.data.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(String::from))
        .filter(|p| p.starts_with(&prefix) && p.ends_with("/secrets"))
        .collect()
}

#[test]
fn secrets_on_a_real_host() {
    if !root_or_skip("secrets_on_a_real_host") {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::Builder::new().prefix("shoal-secrets-").tempdir().unwrap();
    let net = Net::with("se", 248, subnet(), 1);
    let mut nodes = vec![Node::new(&net, 1, dir.path())];
    let path = dir.path().to_path_buf();
    let result = catch_unwind(AssertUnwindSafe(|| story(&mut nodes, &path)));
    finish(result, nodes, net, dir);
    eprintln!("secrets_on_a_real_host: passed in {:.1}s", started.elapsed().as_secs_f64());
}

fn story(nodes: &mut [Node], dir: &std::path::Path) {
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    let tar = busybox_tar(dir, &[]).unwrap();

    nodes[0].start_alone_with_image(&tar, IMAGE);
    let n1 = &nodes[0];

    step("secret create psql_password - (stdin)");
    n1.must_create_secret("psql_password", PASSWORD);

    step("stack deploy (psql uses psql_user from a file and the external psql_password)");
    std::fs::write(dir.join("psql_user.txt"), USER).unwrap();
    let compose = format!(
        r#"version: "3.9"
services:
  psql:
    image: {IMAGE}
    command: ["/bin/busybox", "sh", "-c", {report:?}]
    secrets: [psql_user, psql_password]
  other:
    image: {IMAGE}
    command: ["/bin/busybox", "sh", "-c", {resolve_then_report:?}]
secrets:
  psql_user:
    file: ./psql_user.txt
  psql_password:
    external: true
"#,
        // A compose file substitutes variables: the shell's own `$` is written `$$`.
        report = REPORT.replace('$', "$$"),
        resolve_then_report = format!("{RESOLVE}; {REPORT}").replace('$', "$$"),
    );
    let file = dir.join("stack.yml");
    std::fs::write(&file, compose).unwrap();
    n1.must_shoal(&["stack", "deploy", "-c", &file.to_string_lossy(), "db"]);
    eventually("both services running", Duration::from_secs(60), || {
        let (a, b) = (running_tasks(n1, "db_psql"), running_tasks(n1, "db_other"));
        (a == 1 && b == 1).then_some(()).ok_or(format!("psql {a}, other {b}"))
    });

    eventually("other resolves psql by name", Duration::from_secs(40), || {
        let l = logs(n1, "db_other");
        l.contains("resolved-psql").then_some(()).ok_or(l)
    });

    let (user_md5, pw_md5) = (md5(USER), md5(PASSWORD));
    let seen = eventually("psql's report", Duration::from_secs(30), || {
        let l = logs(n1, "db_psql");
        l.contains("report-done").then_some(l.clone()).ok_or(l)
    });
    assert!(
        seen.contains(&format!("seen /run/secrets/psql_user {user_md5}")),
        "psql_user not seen:\n{seen}"
    );
    assert!(
        seen.contains(&format!("seen /run/secrets/psql_password {pw_md5}")),
        "psql_password not seen:\n{seen}"
    );
    let other = eventually("other's report", Duration::from_secs(30), || {
        let l = logs(n1, "db_other");
        l.contains("report-done").then_some(l.clone()).ok_or(l)
    });
    assert!(!other.contains("seen "), "another service on the same node saw secrets:\n{other}");
    assert!(!seen.contains(USER) && !seen.contains(PASSWORD), "values reached the logs");
    assert_eq!(secret_mounts(n1).len(), 1, "one tmpfs: psql's ({:?})", secret_mounts(n1));

    step("service update --secret-add psql_password db_other");
    let out = n1.shoal(&["service", "update", "--secret-add", "psql_password", "db_other"]);
    assert!(out.status.success(), "{}", text(&out));
    eventually("other sees psql_password", Duration::from_secs(60), || {
        let l = logs(n1, "db_other");
        l.contains(&format!("seen /run/secrets/psql_password {pw_md5}")).then_some(()).ok_or(l)
    });
    let l = logs(n1, "db_other");
    assert!(!l.contains("psql_user"), "secret-add gave more than asked:\n{l}");

    step("service update --secret-rm psql_password db_other");
    let out = n1.shoal(&["service", "update", "--secret-rm", "psql_password", "db_other"]);
    assert!(out.status.success(), "{}", text(&out));
    eventually("only psql's tmpfs left", Duration::from_secs(60), || {
        let m = secret_mounts(n1);
        (m.len() == 1 && running_tasks(n1, "db_other") == 1).then_some(()).ok_or(format!("{m:?}"))
    });

    step("secret rm psql_password is refused while psql uses it");
    let out = n1.shoal(&["secret", "rm", "psql_password"]);
    assert!(!out.status.success() && text(&out).contains("db_psql"), "{}", text(&out));

    step("stack rm db: psql_user goes, psql_password stays, tmpfs unmounted");
    n1.must_shoal(&["stack", "rm", "db"]);
    eventually("secrets tmpfs unmounted", Duration::from_secs(60), || {
        let m = secret_mounts(n1);
        m.is_empty().then_some(()).ok_or(format!("{m:?}"))
    });
    let ls = n1.must_shoal(&["secret", "ls"]);
    assert!(ls.contains("psql_password") && !ls.contains("db_psql_user"), "{ls}");

    step("no secret value anywhere in the node's data");
    for value in [USER, PASSWORD] {
        let out = Command::new("grep").args(["-rl", value]).arg(&n1.data).output().unwrap();
        let hits = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(hits.trim().is_empty(), "{value} found on disk in:\n{hits}");
    }
}
