//! Volumes and mounts on a real host (issue #17): a `shoald` in its own network namespace runs
//! a stack whose service keeps data in a named volume, reads a config file bind-mounted from a
//! directory the node allows (`--task-allow-bind`), and writes to a tmpfs. The volume's data
//! survives a service update, a restart of the node, and the stack's removal and redeploy; a bind from outside the allowed
//! directory, or of the node's data root, rejects the task naming the flag.
//!
//! Needs root; under CI (env `CI`) it must run.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use shoal_testkit::image::busybox_tar;
use shoal_testkit::netns::ps::parse_ps;
use shoal_testkit::netns::{finish, root_or_skip, Net, Node};
use shoal_testkit::poll::blocking::eventually;

const IMAGE: &str = "busybox:vol";
const APPLETS: &[&str] = &["sh", "sleep", "cat", "echo", "wc", "mount"];

fn subnet() -> u8 {
    (std::process::id() % 240 + 10) as u8
}

#[test]
fn volumes_and_binds_on_a_real_host() {
    if !root_or_skip("volumes_and_binds_on_a_real_host") {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::Builder::new().prefix("shoal-volumes-").tempdir().unwrap();
    let net = Net::with("vo", 240, subnet(), 1);
    let mut nodes = vec![Node::new(&net, 1, dir.path())];
    let path = dir.path().to_path_buf();
    let result = catch_unwind(AssertUnwindSafe(|| story(&mut nodes, &path)));
    finish(result, nodes, net, dir);
    eprintln!(
        "volumes_and_binds_on_a_real_host: passed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// Lines of the volume's `boots` file on the node.
fn boots(node: &Node) -> usize {
    let f = node.data.join("runtime/volumes/app_data/_data/boots");
    std::fs::read_to_string(f).map(|t| t.lines().count()).unwrap_or(0)
}

fn rows(node: &Node, service: &str) -> Vec<shoal_testkit::netns::ps::TaskRow> {
    let out = node.shoal(&["service", "ps", "--no-trunc", service]);
    parse_ps(&String::from_utf8_lossy(&out.stdout))
}

fn story(nodes: &mut [Node], dir: &Path) {
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    let allowed = dir.join("allowed");
    std::fs::create_dir_all(&allowed).unwrap();
    std::fs::write(allowed.join("app.conf"), "greeting=from-the-node\n").unwrap();
    let outside = dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let tar = busybox_tar(&dir.join("img"), APPLETS).unwrap();
    nodes[0].args = vec!["--task-allow-bind".into(), allowed.display().to_string()];
    nodes[0].start_alone_with_image(&tar, IMAGE);

    step("stack deploy: a named volume, a bind from the allowed directory, a tmpfs");
    let compose = format!(
        r#"services:
  app:
    image: {IMAGE}
    command: ["sh", "-c", "echo boot >> /data/boots; cat /etc/app.conf; echo x > /scratch/x && echo tmpfs-ok; exec sleep 3600"]
    stop_grace_period: 1s
    volumes:
      - data:/data
      - {conf}:/etc/app.conf:ro
      - type: tmpfs
        target: /scratch
volumes:
  data: {{}}
"#,
        conf = allowed.join("app.conf").display()
    );
    let file = dir.join("stack.yml");
    std::fs::write(&file, compose).unwrap();
    let n1 = &nodes[0];
    n1.must_shoal(&["stack", "deploy", "-c", &file.to_string_lossy(), "app"]);
    eventually("the task wrote to its volume", Duration::from_secs(60), || {
        (boots(n1) == 1).then_some(()).ok_or(format!(
            "{} boots; {:?}",
            boots(n1),
            rows(n1, "app_app")
        ))
    });
    eventually(
        "the task read the bound config and wrote to its tmpfs",
        Duration::from_secs(30),
        || {
            let l = String::from_utf8_lossy(&n1.shoal(&["service", "logs", "app_app"]).stdout)
                .into_owned();
            (l.contains("greeting=from-the-node") && l.contains("tmpfs-ok")).then_some(()).ok_or(l)
        },
    );

    step("service update --force: the new task finds the data");
    n1.must_shoal(&["service", "update", "-d", "--force", "app_app"]);
    eventually("the second task appended", Duration::from_secs(60), || {
        (boots(n1) == 2).then_some(()).ok_or(format!("{} boots", boots(n1)))
    });

    step("restart the node: the volume is still there");
    nodes[0].kill();
    nodes[0].start();
    let n1 = &nodes[0];
    assert!(boots(n1) >= 2, "the volume lost its data across a restart");
    eventually("the node back and its task running", Duration::from_secs(60), || {
        let r = rows(n1, "app_app");
        r.iter()
            .any(|t| t.desired == "Running" && t.state == "Running")
            .then_some(())
            .ok_or(format!("{r:?}"))
    });
    // The stack goes and comes back: its volume is kept (Docker's `local` driver) and the
    // new task finds the data.
    n1.must_shoal(&["stack", "rm", "app"]);
    eventually("the stack gone", Duration::from_secs(30), || {
        let out = n1.shoal(&["service", "ps", "app_app"]);
        (!out.status.success()).then_some(()).ok_or("still listed".to_string())
    });
    n1.must_shoal(&["stack", "deploy", "-c", &file.to_string_lossy(), "app"]);
    eventually("a task after the restart appended", Duration::from_secs(60), || {
        (boots(n1) >= 3)
            .then_some(())
            .ok_or_else(|| format!("{} boots; {:?}", boots(n1), rows(n1, "app_app")))
    });

    step("binds the node does not allow are rejected, naming the flag");
    for (name, source) in
        [("outside", outside.display().to_string()), ("dataroot", n1.data.display().to_string())]
    {
        let mount = format!("type=bind,source={source},target=/mnt");
        let out = n1.shoal(&[
            "service", "create", "-d", "--name", name, "--mount", &mount, IMAGE, "sleep", "3600",
        ]);
        assert!(out.status.success(), "{}", shoal_testkit::netns::text(&out));
        let rejected = eventually(&format!("{name} REJECTED"), Duration::from_secs(30), || {
            rows(n1, name)
                .into_iter()
                .find(|r| r.state == "Rejected")
                .ok_or_else(|| format!("{:?}", rows(n1, name)))
        });
        let want = if name == "outside" { "--task-allow-bind" } else { "data root" };
        assert!(rejected.error.contains(want), "{name}: {}", rejected.error);
        n1.must_shoal(&["service", "rm", name]);
    }
    step("done");
}

/// A stand-in for the seed's postgres image (none can be fetched here): busybox with a
/// `postgres` user (999) that owns `/var/lib/postgresql/data` (0700), and site files under
/// `/srv/www` that a new volume there starts with.
fn database_image(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let root = dir.join("dbimg/rootfs");
    let data = root.join("var/lib/postgresql/data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("srv/www")).unwrap();
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\npostgres:x:999:999::/var/lib/postgresql:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\npostgres:x:999:\n").unwrap();
    std::fs::write(root.join("srv/www/index.html"), "from-the-image\n").unwrap();
    std::os::unix::fs::chown(&data, Some(999), Some(999)).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    busybox_tar(&dir.join("dbimg"), &["sh", "sleep", "cat", "echo", "id"]).unwrap()
}

#[test]
fn volume_commands_and_a_database_stack() {
    if !root_or_skip("volume_commands_and_a_database_stack") {
        return;
    }
    let dir = tempfile::Builder::new().prefix("shoal-voldb-").tempdir().unwrap();
    let net = Net::with("vd", 241, subnet(), 1);
    let mut nodes = vec![Node::new(&net, 1, dir.path())];
    let path = dir.path().to_path_buf();
    let result = catch_unwind(AssertUnwindSafe(|| database_story(&mut nodes, &path)));
    finish(result, nodes, net, dir);
}

fn volume_names(node: &Node, filter: &[&str]) -> Vec<String> {
    let mut args = vec!["volume", "ls", "-q"];
    args.extend(filter);
    let out = node.must_shoal(&args);
    out.lines().map(str::to_string).collect()
}

fn database_story(nodes: &mut [Node], dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let tar = database_image(dir);
    nodes[0].start_alone_with_image(&tar, "pgish:1");
    let n1 = &nodes[0];

    n1.must_shoal(&["volume", "create", "--label", "team=db", "spare"]);
    let inspect: serde_json::Value =
        serde_json::from_str(&n1.must_shoal(&["volume", "inspect", "spare"])).unwrap();
    assert_eq!(inspect[0]["Labels"]["team"], "db", "{inspect}");
    assert_eq!(inspect[0]["Driver"], "local");
    let spare_dir = inspect[0]["Mountpoint"].as_str().unwrap().to_string();
    assert!(Path::new(&spare_dir).starts_with(&n1.data), "{spare_dir}");

    let compose = r#"services:
  db:
    image: pgish:1
    user: postgres
    command: ["sh", "-c", "id -u > /var/lib/postgresql/data/owner; echo row >> /var/lib/postgresql/data/table; exec sleep 3600"]
    stop_grace_period: 1s
    volumes:
      - pgdata:/var/lib/postgresql/data
  web:
    image: pgish:1
    command: ["sh", "-c", "cat /srv/www/index.html; exec sleep 3600"]
    stop_grace_period: 1s
    volumes:
      - site:/srv/www
      - /cache
volumes:
  pgdata:
    labels:
      tier: data
  site: {}
"#;
    let file = dir.join("db.yml");
    std::fs::write(&file, compose).unwrap();
    n1.must_shoal(&["stack", "deploy", "-c", &file.to_string_lossy(), "app"]);
    let pg = n1.data.join("runtime/volumes/app_pgdata/_data");
    eventually("the database wrote its table as postgres", Duration::from_secs(60), || {
        let owner = std::fs::read_to_string(pg.join("owner")).unwrap_or_default();
        (owner.trim() == "999")
            .then_some(())
            .ok_or(format!("owner {owner:?}; {:?}", rows(n1, "app_db")))
    });
    let meta = std::fs::metadata(&pg).unwrap();
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (999, 0o700),
        "the volume starts as the image's directory"
    );
    assert_eq!(std::fs::metadata(pg.join("table")).unwrap().uid(), 999);
    eventually(
        "the web task reads the files its new volume started with",
        Duration::from_secs(30),
        || {
            let l = String::from_utf8_lossy(&n1.shoal(&["service", "logs", "app_web"]).stdout)
                .into_owned();
            l.contains("from-the-image").then_some(()).ok_or(l)
        },
    );

    let stack = volume_names(n1, &["--filter", "label=com.docker.stack.namespace=app"]);
    assert_eq!(stack, ["app_pgdata", "app_site", "app_web_cache"]);
    let busy = n1.shoal(&["volume", "rm", "app_pgdata"]);
    assert!(!busy.status.success(), "a volume in use was removed");
    let why = shoal_testkit::netns::text(&busy);
    assert!(why.contains("in use by task"), "{why}");
    assert!(pg.join("table").exists());

    n1.must_shoal(&["stack", "rm", "app"]);
    eventually("the stack's tasks gone and their volumes free", Duration::from_secs(60), || {
        let out = n1.shoal(&["volume", "ls", "--filter", "dangling=false", "-q"]);
        let held = String::from_utf8_lossy(&out.stdout).trim().to_string();
        held.is_empty().then_some(()).ok_or(held)
    });
    let pruned = n1.must_shoal(&["volume", "prune", "-f"]);
    assert!(pruned.contains("app_web_cache"), "{pruned}");
    assert_eq!(
        volume_names(n1, &[]),
        ["app_pgdata", "app_site", "spare"],
        "prune keeps named volumes"
    );
    n1.must_shoal(&["volume", "rm", "app_site"]);
    n1.must_shoal(&["volume", "prune", "-a", "-f", "--filter", "label=team=db"]);
    assert_eq!(volume_names(n1, &[]), ["app_pgdata"]);
    let kept: serde_json::Value =
        serde_json::from_str(&n1.must_shoal(&["volume", "inspect", "app_pgdata"])).unwrap();
    assert_eq!(kept[0]["Labels"]["tier"], "data", "{kept}");
    assert!(std::fs::read_to_string(pg.join("table")).unwrap().contains("row"));

    // Widenings no node allows are refused when the service is made, not at task time.
    let out = n1.shoal(&["service", "create", "--cap-add", "SYS_ADMIN", "pgish:1", "sleep", "1"]);
    let why = shoal_testkit::netns::text(&out);
    assert!(!out.status.success() && why.contains("no node lets tasks add CAP_SYS_ADMIN"), "{why}");
    let out = n1.shoal(&["service", "create", "--cap-add", "CAP_FLY", "pgish:1", "sleep", "1"]);
    let why = shoal_testkit::netns::text(&out);
    assert!(!out.status.success() && why.contains("unknown capability"), "{why}");
    // So is a user the image lacks, when the node the command talks to holds the image.
    let out = n1.shoal(&[
        "service", "create", "--name", "nouser", "--user", "mysql", "pgish:1", "sleep", "1",
    ]);
    let why = shoal_testkit::netns::text(&out);
    assert!(!out.status.success() && why.contains("mysql"), "{why}");
    let listed = n1.must_shoal(&["service", "ls", "-q"]);
    assert!(listed.trim().is_empty(), "a refused service was made: {listed}");
}
