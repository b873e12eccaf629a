//! Offline vulnerability scanning on a real cluster: two `shoald`s on network-namespace hosts.
//! An image is built from a Debian package list (a dpkg status file naming an OpenSSL with a
//! known hole, a zlib without one) and a small OSV database is made here; then:
//!
//! - `image scan` finds the vulnerable package with its severity and the version that fixes
//!   it (table and JSON), and warns when the node has no database;
//! - a database import that meets a broken file is refused naming the file, and the database
//!   is kept;
//! - with `swarm update --scan-policy block=critical` a new service of the vulnerable image is
//!   refused at create (the CLI's node holds it and can scan it); the replacement of a task
//!   made before the policy is refused by its node, naming the CVE, and a node without a
//!   database refuses rather than pass the image as clean; the clean image runs; `block=none`
//!   lifts it.
//!
//! Needs root; under CI (env `CI`) it must run.

use std::path::Path;
use std::time::{Duration, Instant};

use shoal_testkit::image::busybox_tar;
use shoal_testkit::netns::ps::{parse_ps, wait_running, TaskRow};
use shoal_testkit::netns::{run_story, text, worker_swarm, Net, Node};
use shoal_testkit::poll::blocking::eventually;

const APPLETS: &[&str] = &["sh", "sleep", "cat", "echo"];
const CVE: &str = "CVE-2099-0001";

#[test]
fn images_with_known_vulnerabilities_are_found_and_blocked() {
    run_story(
        "images_with_known_vulnerabilities_are_found_and_blocked",
        "sc",
        244,
        2,
        2,
        |net, nodes, dir| story(net, nodes, dir),
    );
}

/// A busybox image whose dpkg status lists `openssl_version` of libssl3 and a zlib.
fn debian_image(dir: &Path, name: &str, openssl_version: &str) -> String {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    busybox_tar(&d, APPLETS).unwrap();
    let root = d.join("rootfs");
    std::fs::create_dir_all(root.join("var/lib/dpkg")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(
        root.join("etc/os-release"),
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
    )
    .unwrap();
    let status = format!(
        "Package: libssl3\nStatus: install ok installed\nArchitecture: amd64\nSource: openssl\nVersion: {openssl_version}\nDescription: Secure Sockets Layer toolkit\n shared libraries\n\nPackage: zlib1g\nStatus: install ok installed\nSource: zlib\nVersion: 1:1.2.13.dfsg-1\n\n"
    );
    std::fs::write(root.join("var/lib/dpkg/status"), status).unwrap();
    shoal_testkit::image::repack(&d)
}

/// A small OSV database: a critical OpenSSL hole fixed in 3.0.11-1~deb12u1, a zlib one fixed
/// long ago, and an Alpine advisory that concerns no Debian image.
fn osv_dir(dir: &Path) -> String {
    let d = dir.join("osv");
    std::fs::create_dir_all(d.join("debian")).unwrap();
    std::fs::write(
        d.join("debian/DSA-9999-1.json"),
        format!(
            r#"{{"id":"DSA-9999-1","aliases":["{CVE}"],"summary":"openssl: remote code execution in the TLS handshake",
"severity":[{{"type":"CVSS_V3","score":"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}}],
"affected":[{{"package":{{"ecosystem":"Debian:12","name":"openssl"}},
"ranges":[{{"type":"ECOSYSTEM","events":[{{"introduced":"0"}},{{"fixed":"3.0.11-1~deb12u1"}}]}}]}}]}}"#
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("debian/DSA-1000-1.json"),
        r#"[{"id":"DSA-1000-1","aliases":["CVE-2018-0002"],"summary":"zlib: old",
"affected":[{"package":{"ecosystem":"Debian:12","name":"zlib"},
"ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"fixed":"1:1.2.11-1"}]}]}]}]"#,
    )
    .unwrap();
    std::fs::write(
        d.join("alpine.json"),
        r#"{"id":"ALPINE-1","affected":[{"package":{"ecosystem":"Alpine:v3.18","name":"openssl"},
"ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"}]}]}]}"#,
    )
    .unwrap();
    d.display().to_string()
}

fn ps(n: &Node, service: &str) -> Result<Vec<TaskRow>, String> {
    let out = n.shoal(&["service", "ps", "--no-trunc", service]);
    if !out.status.success() {
        return Err(text(&out));
    }
    Ok(parse_ps(&String::from_utf8_lossy(&out.stdout)))
}

fn rejected(n: &Node, service: &str, says: &str) -> String {
    eventually(&format!("{service} REJECTED saying {says:?}"), Duration::from_secs(60), || {
        let rows = ps(n, service)?;
        rows.iter()
            .find(|r| r.state == "Rejected" && r.error.contains(says))
            .map(|r| r.error.clone())
            .ok_or_else(|| format!("{rows:?}"))
    })
}

fn create(n: &Node, name: &str, image: &str, on: &str) -> String {
    n.must_shoal(&[
        "service",
        "create",
        "-d",
        "--name",
        name,
        "--restart-delay",
        "1s",
        "--constraint",
        &format!("node.hostname=={on}"),
        image,
        "sleep",
        "3600",
    ])
}

fn story(net: &Net, nodes: &mut [Node], dir: &Path) {
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    let base = busybox_tar(&dir.join("base"), APPLETS).unwrap().display().to_string();
    worker_swarm(net, nodes, &base, "busybox:local");
    let (vuln, clean) =
        (debian_image(dir, "vuln", "3.0.9-1"), debian_image(dir, "clean", "3.0.11-1~deb12u1"));
    for n in nodes.iter() {
        n.must_shoal(&["image", "import", &vuln, "shop/vuln:1"]);
        n.must_shoal(&["image", "import", &clean, "shop/clean:1"]);
    }
    let (n1, n2) = (&nodes[0], &nodes[1]);

    step("scan without a database");
    let out = n1.must_shoal(&["image", "scan", "shop/vuln:1"]);
    assert!(out.contains("no vulnerability database") && out.contains("0 known"), "{out}");

    step("import, and a broken import refused");
    let osv = osv_dir(dir);
    let out = n1.must_shoal(&["scan", "db", "import", &osv]);
    assert!(out.contains("Imported 3 advisories"), "{out}");
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("DSA-1.json"), "{\"id\": \"DSA-1\", \"affected\": [").unwrap();
    let out = n1.shoal(&["scan", "db", "import", &broken.display().to_string()]);
    assert!(!out.status.success() && text(&out).contains("DSA-1.json"), "{}", text(&out));

    step("scan finds the vulnerable package");
    let out = n1.must_shoal(&["image", "scan", "shop/vuln:1"]);
    assert!(out.contains("debian 12, 2 packages, 1 known vulnerabilities"), "{out}");
    let row = out.lines().find(|l| l.contains(CVE)).unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.starts_with("critical") && row.contains("3.0.9-1") && row.contains("3.0.11-1~deb12u1"),
        "{row}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&n1.must_shoal(&["image", "scan", "--format", "json", "shop/vuln:1"]))
            .unwrap();
    assert_eq!(json["findings"][0]["severity"], "critical", "{json}");
    assert_eq!(json["findings"][0]["score"], 9.8, "{json}");
    let out = n1.must_shoal(&["image", "scan", "shop/clean:1"]);
    assert!(out.contains("0 known vulnerabilities"), "{out}");

    // A service made before the policy, on n2 (which has no database yet).
    create(n1, "vuln", "shop/vuln:1", "n2");
    wait_running(n1, "vuln", 1, Duration::from_secs(60));

    step("policy block=critical");
    let out = n1.shoal(&["swarm", "update", "--scan-policy", "block=severe"]);
    assert!(
        !out.status.success() && text(&out).contains("block=low|medium|high|critical"),
        "{}",
        text(&out)
    );
    n1.must_shoal(&["swarm", "update", "--scan-policy", "block=critical"]);
    // n1 holds the image and a database: the CLI refuses at create, naming the finding.
    let out =
        n1.shoal(&["service", "create", "-d", "--name", "again", "shop/vuln:1", "sleep", "9"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(CVE) && text(&out).contains("scan policy blocks"),
        "{}",
        text(&out)
    );
    create(n1, "clean", "shop/clean:1", "n1");
    wait_running(n1, "clean", 1, Duration::from_secs(60));

    // The running task dies: its replacement is the node's to check.
    step("the node checks the replacement");
    let task = ps(n1, "vuln").unwrap().into_iter().find(|r| r.state == "Running").unwrap();
    n2.kill_task(&task.id);
    // n2 has no database: it cannot tell, so it refuses.
    rejected(n1, "vuln", "no vulnerability database");
    n2.must_shoal(&["scan", "db", "import", &osv]);
    let why = rejected(n1, "vuln", CVE);
    assert!(
        why.contains("scan policy on n2") && why.contains("fixed in 3.0.11-1~deb12u1"),
        "{why}"
    );

    step("policy lifted");
    n1.must_shoal(&["swarm", "update", "--scan-policy", "block=none"]);
    wait_running(n1, "vuln", 1, Duration::from_secs(60));
    step("done");
}
