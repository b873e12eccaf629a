//! The scanner against small images and databases made here.

use std::path::{Path, PathBuf};

use super::*;

const STATUS: &str = "Package: libssl3\nStatus: install ok installed\nVersion: 3.0.9-1\nSource: openssl\nDescription: ssl\n shared libraries\n\nPackage: zlib1g\nStatus: install ok installed\nVersion: 1:1.2.13.dfsg-1\nSource: zlib (1:1.2.13.dfsg-1)\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1.0\n\nPackage: bash\nStatus: install ok installed\nVersion: 5.2.15-2+b2\nSource: bash (5.2.15-2)\n";

fn osv(id: &str, eco: &str, name: &str, events: &str, severity: &str) -> String {
    format!(
        r#"{{"id":"{id}","aliases":["CVE-{id}"],"summary":"{name} is broken","affected":[{{"package":{{"ecosystem":"{eco}","name":"{name}"}},"ranges":[{{"type":"ECOSYSTEM","events":[{events}]}}]}}]{severity}}}"#
    )
}

fn image(dir: &Path) -> Vec<PathBuf> {
    let layer = dir.join("layer");
    std::fs::create_dir_all(layer.join("var/lib/dpkg")).unwrap();
    std::fs::create_dir_all(layer.join("etc")).unwrap();
    std::fs::write(layer.join("var/lib/dpkg/status"), STATUS).unwrap();
    std::fs::write(layer.join("etc/os-release"), "ID=debian\nVERSION_ID=\"12\"\n").unwrap();
    vec![layer]
}

fn db(dir: &Path, files: &[(&str, String)]) -> Database {
    let d = dir.join("osv");
    std::fs::create_dir_all(&d).unwrap();
    for (name, text) in files {
        std::fs::write(d.join(name), text).unwrap();
    }
    let mut db = Database::default();
    db.import(&d).unwrap();
    db
}

#[test]
fn a_known_vulnerable_package_is_found_with_its_fix_and_severity() {
    let dir = tempfile::tempdir().unwrap();
    let layers = image(dir.path());
    let critical = r#","severity":[{"type":"CVSS_V3","score":"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}]"#;
    let db = db(
        dir.path(),
        &[
            (
                "a.json",
                osv(
                    "2024-1",
                    "Debian:12",
                    "openssl",
                    r#"{"introduced":"0"},{"fixed":"3.0.11-1~deb12u1"}"#,
                    critical,
                ),
            ),
            // Fixed before the installed version: not a finding.
            (
                "b.json",
                osv(
                    "2022-2",
                    "Debian:12",
                    "openssl",
                    r#"{"introduced":"0"},{"fixed":"3.0.2-1"}"#,
                    "",
                ),
            ),
            // Another release's advisory.
            ("c.json", osv("2024-3", "Debian:11", "openssl", r#"{"introduced":"0"}"#, "")),
            // Epochs count: 1:1.2.13 is after 1.3 without one.
            (
                "d.json",
                osv(
                    "2024-4",
                    "Debian",
                    "zlib",
                    r#"{"introduced":"0"},{"fixed":"1.3-1"}"#,
                    r#","database_specific":{"severity":"low"}"#,
                ),
            ),
            // The source version of bash, not the binary's +b2.
            (
                "e.json",
                format!(
                    "[{}]",
                    osv(
                        "2024-5",
                        "Debian:12",
                        "bash",
                        r#"{"introduced":"5.2.15-2"},{"fixed":"5.2.15-3"}"#,
                        r#","database_specific":{"severity":"HIGH"}"#
                    )
                ),
            ),
        ],
    );
    assert_eq!(db.advisories(), 5);
    let report = scan(&layers, &db).unwrap();
    assert_eq!((report.os.as_str(), report.packages), ("debian 12", 3));
    let ids: Vec<&str> = report.findings.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(ids, ["2024-1", "2024-5"], "{:#?}", report.findings);
    let f = &report.findings[0];
    assert_eq!((f.severity, f.score), (Severity::Critical, Some(9.8)));
    assert_eq!(f.fixed.as_deref(), Some("3.0.11-1~deb12u1"));
    assert_eq!(f.short(), "CVE-2024-1 (openssl 3.0.9-1, fixed in 3.0.11-1~deb12u1)");
    assert_eq!(report.at_least(Severity::Critical).len(), 1);
    assert_eq!(report.at_least(Severity::High).len(), 2);
}

#[test]
fn a_bad_file_refuses_the_import_and_keeps_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let mut good = db(
        dir.path(),
        &[("a.json", osv("1", "Debian:12", "openssl", r#"{"introduced":"0"}"#, ""))],
    );
    let before = good.clone();
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("ok.json"), osv("2", "Debian:12", "bash", r#"{"introduced":"0"}"#, ""))
        .unwrap();
    std::fs::write(bad.join("broken.json"), "{\"id\": 3,").unwrap();
    let e = good.import(&bad).unwrap_err();
    assert!(e.contains("broken.json") && e.contains("not OSV JSON"), "{e}");
    assert_eq!(good, before, "a failed import changed the database");
    assert!(good.import(&dir.path().join("none")).is_err());
    let saved = dir.path().join("scan/db.json");
    good.save(&saved).unwrap();
    assert_eq!(Database::load(&saved).unwrap(), good);
}

#[test]
fn alpine_images_are_read_too() {
    let dir = tempfile::tempdir().unwrap();
    let layer = dir.path().join("layer");
    std::fs::create_dir_all(layer.join("lib/apk/db")).unwrap();
    std::fs::create_dir_all(layer.join("etc")).unwrap();
    std::fs::write(layer.join("lib/apk/db/installed"), "P:libcrypto3\nV:3.1.4-r0\no:openssl\n\n")
        .unwrap();
    std::fs::write(layer.join("etc/os-release"), "ID=alpine\nVERSION_ID=3.18.4\n").unwrap();
    let db = db(
        dir.path(),
        &[(
            "a.json",
            osv(
                "ALPINE-1",
                "Alpine:v3.18",
                "openssl",
                r#"{"introduced":"0"},{"fixed":"3.1.4-r1"}"#,
                "",
            ),
        )],
    );
    let report = scan(&[layer], &db).unwrap();
    assert_eq!(report.os, "alpine 3.18.4");
    assert_eq!(report.findings.len(), 1);
    assert_eq!(report.findings[0].fixed.as_deref(), Some("3.1.4-r1"));
}

proptest::proptest! {
    /// Whatever bytes a status file or an OSV file holds, reading them never panics.
    #[test]
    fn package_databases_never_panic(text in ".{0,400}") {
        let _ = packages::dpkg_status(&text, None);
        let _ = apk::installed(&text, None);
        let _ = packages::os_release(&text);
        let _ = serde_json::from_str::<serde_json::Value>(&text);
    }
}

#[test]
fn importing_an_advisory_again_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let layers = image(dir.path());
    let mut db = db(
        dir.path(),
        &[("a.json", osv("X-1", "Debian:12", "openssl", r#"{"introduced":"0"}"#, ""))],
    );
    assert_eq!(scan(&layers, &db).unwrap().findings.len(), 1);
    // The same ID, now fixed before the installed version: no longer a finding.
    let again = dir.path().join("again.json");
    let fixed = osv("X-1", "Debian:12", "openssl", r#"{"introduced":"0"},{"fixed":"1.0-1"}"#, "");
    std::fs::write(&again, fixed).unwrap();
    db.import(&again).unwrap();
    assert_eq!(db.advisories(), 1);
    assert!(scan(&layers, &db).unwrap().findings.is_empty());
}
