//! People over the remote API (issue #18), end to end: a real cluster serves its control API on
//! the cluster port over mutual TLS; users get real client bundles from `shoal user bundle`
//! (the key made where the bundle is written) and drive the real `shoal` binary with
//! `SHOAL_HOST` and `SHOAL_CERT_PATH`. A table of allow/deny cases covers each built-in role
//! with collections at, below, above and beside its grant, the seed's example (team `masters`,
//! secret operations on `/kubeadmins`) and `secret.use`; then a removed user is refused on an
//! open connection, expired, foreign-CA and node certificates are refused as users, and the
//! audit log holds both allowed and denied calls.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime};

use shoal::cli::client::{self, Host, TlsFiles};
use shoal_proto::control_client::ControlClient;
use shoal_proto::{Cluster, ListServicesRequest};
use shoal_testkit::cluster::TestNode;

const COLL: &str = "com.shoal.collection";

struct Env {
    socket: PathBuf,
    addr: String,
    bundles: PathBuf,
}

impl Env {
    fn run(&self, args: &[&str], envs: &[(&str, String)], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"));
        cmd.args(args).env_remove("SHOAL_HOST").env_remove("SHOAL_CERT_PATH");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("running shoal");
        if let Some(text) = stdin {
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    }

    /// As root on the local socket.
    fn admin(&self, args: &[&str]) -> String {
        let host = format!("unix://{}", self.socket.display());
        let mut all = vec!["-H", host.as_str()];
        all.extend(args);
        let out = self.run(&all, &[], Some("data"));
        assert!(out.status.success(), "shoal {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// As root on the local socket, expecting a refusal; returns what was said.
    fn admin_fails(&self, args: &[&str]) -> String {
        let host = format!("unix://{}", self.socket.display());
        let mut all = vec!["-H", host.as_str()];
        all.extend(args);
        let out = self.run(&all, &[], None);
        assert!(!out.status.success(), "shoal {args:?} should fail: {}", text(&out));
        text(&out)
    }

    /// As `user`, with their bundle, over the cluster port.
    fn user(&self, user: &str, args: &[&str]) -> Output {
        let envs = [
            ("SHOAL_HOST", format!("tcp://{}", self.addr)),
            ("SHOAL_CERT_PATH", self.bundles.join(user).display().to_string()),
            ("SHOAL_TLS_VERIFY", "1".into()),
        ];
        self.run(args, &envs, Some("data"))
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn label(c: &str) -> String {
    format!("{COLL}={c}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn people_with_bundles_get_what_their_grants_give_and_no_more() {
    let node = TestNode::start("mgr1").await;
    let addr = node.init(Duration::from_secs(5), None).await;
    let dir = tempfile::tempdir().unwrap();
    let env = Env { socket: node.socket.clone(), addr, bundles: dir.path().join("bundles") };
    let env = std::sync::Arc::new(env);
    let e = env.clone();
    tokio::task::spawn_blocking(move || table(&e)).await.unwrap();
    open_connections_and_bad_certificates(&node, &env).await;
    let e = env.clone();
    tokio::task::spawn_blocking(move || audit(&e)).await.unwrap();
    node.kill().await;
}

fn table(env: &Env) {
    // Objects in collections: the seed's /kubeadmins, and a tree under /shared.
    for (name, coll) in [
        ("web", "/shared/prod"),
        ("sub", "/shared/prod/sub"),
        ("dev", "/shared/dev"),
        ("top", "/shared"),
    ] {
        env.admin(&[
            "service",
            "create",
            "-d",
            "--name",
            name,
            "--label",
            &label(coll),
            "img",
            "x",
        ]);
    }
    env.admin(&["secret", "create", "--label", &label("/kubeadmins"), "kubesecret", "-"]);
    env.admin(&["secret", "create", "--label", &label("/shared/prod"), "prodsecret", "-"]);
    for u in ["alice", "bob", "carol", "dave", "erin", "frank", "grace"] {
        env.admin(&["user", "create", u]);
        let out = env.bundles.join(u);
        env.admin(&["user", "bundle", u, "-o", &out.display().to_string()]);
        let key = std::fs::metadata(out.join("key.pem")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(key.permissions().mode() & 0o777, 0o600, "the bundle's key is private");
        let sh = std::fs::read_to_string(out.join("env.sh")).unwrap();
        assert!(sh.contains("SHOAL_HOST=tcp://") && sh.contains("SHOAL_CERT_PATH"), "{sh}");
    }
    env.admin(&["team", "create", "masters", "--member", "bob"]);
    env.admin(&[
        "role",
        "create",
        "secret-ops",
        "--op",
        "secret.create",
        "--op",
        "secret.read-metadata",
        "--op",
        "secret.update",
        "--op",
        "secret.remove",
    ]);
    env.admin(&[
        "role",
        "create",
        "deployer",
        "--op",
        "service.create",
        "--op",
        "service.view",
        "--op",
        "secret.read-metadata",
    ]);
    for (subject, role, coll) in [
        ("user:alice", "view-only", "/shared/prod"),
        ("team:masters", "secret-ops", "/kubeadmins"),
        ("user:carol", "restricted-control", "/shared/prod"),
        ("user:dave", "scheduler", "/system"),
        ("user:erin", "full-control", "/shared"),
        ("user:grace", "deployer", "/shared/prod"),
    ] {
        env.admin(&["grant", "create", "--subject", subject, "--role", role, "--collection", coll]);
    }
    let node = "mgr1";
    let in_ = |c: &str| label(c);
    let prod = in_("/shared/prod");
    let prod_sub = in_("/shared/prod/sub");
    let dev = in_("/shared/dev");
    let shared = in_("/shared");
    let kube = in_("/kubeadmins");
    let kube_sub = in_("/kubeadmins/team1");
    let create = |name: &'static str, l: &str| -> Vec<String> {
        ["service", "create", "-d", "--name", name, "--label", l, "img", "x"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let s = |v: &[&str]| -> Vec<String> { v.iter().map(|x| x.to_string()).collect() };
    let with = |mut v: Vec<String>, extra: &[&str]| -> Vec<String> {
        let at = v.len() - 2;
        for (i, x) in extra.iter().enumerate() {
            v.insert(at + i, x.to_string());
        }
        v
    };
    let cases: Vec<(&str, Vec<String>, bool)> = vec![
        // view-only on /shared/prod: sees at and below, nothing above or beside, changes nothing.
        ("alice", s(&["service", "inspect", "web"]), true),
        ("alice", s(&["service", "inspect", "sub"]), true),
        ("alice", s(&["service", "inspect", "dev"]), false),
        ("alice", s(&["service", "inspect", "top"]), false),
        ("alice", s(&["secret", "inspect", "prodsecret"]), true),
        ("alice", s(&["secret", "inspect", "kubesecret"]), false),
        ("alice", create("a1", &prod), false),
        ("alice", s(&["service", "rm", "web"]), false),
        ("alice", s(&["swarm", "join-token", "worker"]), false),
        ("alice", s(&["node", "inspect", node]), false),
        // The seed: team masters holds secret operations on /kubeadmins.
        ("bob", s(&["secret", "create", "--label", &kube, "kube2", "-"]), true),
        ("bob", s(&["secret", "inspect", "kubesecret"]), true),
        ("bob", s(&["secret", "rm", "kube2"]), true),
        ("bob", s(&["secret", "create", "--label", &kube_sub, "kube3", "-"]), true),
        ("bob", s(&["secret", "create", "--label", &shared, "bob1", "-"]), false),
        ("bob", s(&["secret", "create", "bob2", "-"]), false),
        ("bob", s(&["secret", "inspect", "prodsecret"]), false),
        ("bob", create("b1", &kube), false),
        // restricted-control on /shared/prod: everything there but host-widening options.
        ("carol", create("c1", &prod), true),
        ("carol", create("c2", &prod_sub), true),
        ("carol", create("c3", &dev), false),
        ("carol", create("c4", &shared), false),
        ("carol", with(create("c5", &prod), &["--cap-add", "NET_ADMIN"]), false),
        (
            "carol",
            with(create("c6", &prod), &["--mount", "type=bind,source=/srv,target=/srv"]),
            false,
        ),
        ("carol", with(create("c7", &prod), &["--secret", "prodsecret"]), true),
        ("carol", with(create("c8", &prod), &["--secret", "kubesecret"]), false),
        ("carol", s(&["service", "update", "-d", "--env-add", "X=1", "web"]), true),
        ("carol", s(&["service", "update", "-d", "--env-add", "X=1", "dev"]), false),
        ("carol", s(&["service", "update", "-d", "--label-add", &shared, "c1"]), false),
        ("carol", s(&["service", "rm", "c2"]), true),
        ("carol", s(&["secret", "create", "--label", &prod, "carol1", "-"]), true),
        ("carol", s(&["swarm", "unlock-key"]), false),
        ("carol", s(&["node", "update", "--availability", "drain", node]), false),
        // scheduler on /system: node availability, nothing else.
        ("dave", s(&["node", "update", "--availability", "pause", node]), true),
        ("dave", s(&["node", "update", "--availability", "active", node]), true),
        ("dave", s(&["node", "update", "--label-add", "x=y", node]), false),
        ("dave", s(&["node", "inspect", node]), true),
        ("dave", create("d1", &prod), false),
        ("dave", s(&["service", "inspect", "web"]), false),
        // full-control on /shared: all of /shared, nothing beside it, nothing of the swarm's.
        ("erin", create("e1", &dev), true),
        ("erin", s(&["service", "rm", "e1"]), true),
        ("erin", s(&["service", "inspect", "top"]), true),
        ("erin", s(&["secret", "create", "--label", &kube, "erin1", "-"]), false),
        ("erin", s(&["swarm", "join-token", "worker"]), false),
        ("erin", s(&["user", "create", "mallory"]), false),
        (
            "erin",
            s(&[
                "grant",
                "create",
                "--subject",
                "user:erin",
                "--role",
                "full-control",
                "--collection",
                "/",
            ]),
            false,
        ),
        ("erin", s(&["node", "update", "--availability", "drain", node]), false),
        // No grant at all.
        ("frank", s(&["service", "inspect", "web"]), false),
        ("frank", create("f1", &shared), false),
        ("frank", s(&["secret", "create", "frank1", "-"]), false),
        // secret.use is its own permission: grace sees the secret and may create services,
        // but may not attach it.
        ("grace", s(&["secret", "inspect", "prodsecret"]), true),
        ("grace", create("g1", &prod), true),
        ("grace", with(create("g2", &prod), &["--secret", "prodsecret"]), false),
    ];
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut wrong = Vec::new();
    for (user, args, allow) in &cases {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = env.user(user, &argv);
        let said = text(&out);
        let denied = said.contains("may not") || said.contains("needs");
        let ok = if *allow { out.status.success() } else { !out.status.success() && denied };
        if !ok {
            wrong.push(format!(
                "{user} {args:?}: expected {}; got {}: {said}",
                if *allow { "allow" } else { "deny" },
                out.status
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );

    // Lists return only what the caller may see.
    let listed = |user: &str, args: &[&str]| {
        String::from_utf8_lossy(&env.user(user, args).stdout).into_owned()
    };
    let ls = listed("alice", &["service", "ls"]);
    assert!(
        ls.contains("web") && ls.contains("sub") && !ls.contains("dev") && !ls.contains("top"),
        "{ls}"
    );
    let ls = listed("bob", &["secret", "ls"]);
    assert!(ls.contains("kubesecret") && !ls.contains("prodsecret"), "{ls}");
    let ls = listed("frank", &["service", "ls"]);
    assert!(!ls.contains("web"), "{ls}");
    let ls = listed("erin", &["node", "ls"]);
    assert!(!ls.contains(node), "nodes are in /system: {ls}");
    let ls = listed("dave", &["node", "ls"]);
    assert!(ls.contains(node), "{ls}");

    // Managing people: a member added to a team gains its grants and loses them when taken
    // out; a removed grant stops working; a role a grant uses cannot be removed.
    let kube_secret = ["secret", "inspect", "kubesecret"];
    env.admin(&["team", "add", "masters", "frank"]);
    assert!(env.user("frank", &kube_secret).status.success(), "a new member of masters");
    env.admin(&["team", "rm", "masters", "frank"]);
    assert!(!env.user("frank", &kube_secret).status.success(), "taken out of masters");
    let users = env.admin(&["user", "ls"]);
    assert!(["alice", "bob", "grace"].iter().all(|u| users.contains(u)), "{users}");
    let grace = env.admin(&["user", "inspect", "grace"]);
    assert!(grace.contains("deployer") && grace.contains("/shared/prod"), "{grace}");
    let refused = env.admin_fails(&["role", "rm", "deployer"]);
    assert!(refused.contains("remove the grant first"), "{refused}");
    assert!(env.admin(&["grant", "ls"]).contains("user:grace"));
    env.admin(&["grant", "rm", "user:grace,deployer,/shared/prod"]);
    assert!(!env.user("grace", &["secret", "inspect", "prodsecret"]).status.success());
    env.admin(&["role", "rm", "deployer"]);
    assert!(!env.admin(&["role", "ls"]).contains("deployer"));

    // A user renews their own bundle with the certificate they hold, for no longer than the
    // default.
    let longer = env.bundles.join("carol-long");
    let out = env.user(
        "carol",
        &["user", "bundle", "carol", "-o", &longer.display().to_string(), "--validity", "2000h"],
    );
    assert!(!out.status.success() && text(&out).contains("at most 30 days"), "{}", text(&out));
    let renewed = env.bundles.join("carol-new");
    let out = env.user("carol", &["user", "bundle", "carol", "-o", &renewed.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = env.user("carol", &["user", "bundle", "alice", "-o", "/tmp/never"]);
    assert!(!out.status.success(), "a user may not make another's bundle");
}

async fn open_connections_and_bad_certificates(node: &TestNode, env: &Env) {
    let tls = |dir: &Path| TlsFiles {
        ca: Some(dir.join("ca.pem")),
        cert: Some(dir.join("cert.pem")),
        key: Some(dir.join("key.pem")),
    };
    let host = Host::Tcp(env.addr.clone());
    let ch = client::connect(&host, &tls(&env.bundles.join("alice"))).await.unwrap();
    let mut alice = ControlClient::new(ch);
    let listed = alice.list_services(ListServicesRequest {}).await.unwrap().into_inner();
    assert!(!listed.services.is_empty());
    let e = env.socket.clone();
    let out = tokio::task::spawn_blocking(move || {
        let env = Env { socket: e, addr: String::new(), bundles: PathBuf::new() };
        env.admin(&["user", "rm", "alice"])
    })
    .await
    .unwrap();
    assert!(out.contains("alice"));
    let refused = alice.list_services(ListServicesRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    assert!(refused.message().contains("alice"), "{refused}");

    // Certificates the cluster must not take for a person.
    let manager = node.daemon.manager().await.unwrap();
    let cluster: Cluster = manager.store().list::<Cluster>().unwrap().remove(0);
    let root = cluster.root_ca.clone().unwrap();
    let ca = shoal_pki::RootCa::from_pem(&root.cert_pem, &root.key_pem).unwrap();
    let foreign = shoal_pki::RootCa::generate().unwrap();
    let hour = Duration::from_secs(3600);
    let long_ago = SystemTime::now() - Duration::from_secs(3 * 3600);
    let forge = |name: &str, issued: shoal_pki::IssuedCert, key: &shoal_pki::NodeKey| {
        let d = env.bundles.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("cert.pem"), issued.cert_pem).unwrap();
        std::fs::write(d.join("key.pem"), key.to_pem()).unwrap();
        std::fs::write(d.join("ca.pem"), &root.cert_pem).unwrap();
        d
    };
    let key = shoal_pki::NodeKey::generate().unwrap();
    let csr = key.csr_der().unwrap();
    let expired = ca.sign_user_csr(&csr, "erin", &cluster.id, hour, long_ago).unwrap();
    let foreign_cert =
        foreign.sign_user_csr(&csr, "erin", &cluster.id, hour, SystemTime::now()).unwrap();
    let worker = ca
        .sign_node_csr(
            &csr,
            "imposter",
            shoal_pki::Role::Worker,
            &cluster.id,
            hour,
            SystemTime::now(),
        )
        .unwrap();
    for (name, issued) in [("expired", expired), ("foreign", foreign_cert), ("worker", worker)] {
        let d = forge(name, issued, &key);
        let got = match client::connect(&host, &tls(&d)).await {
            Err(e) => Err(e.to_string()),
            Ok(ch) => ControlClient::new(ch)
                .list_services(ListServicesRequest {})
                .await
                .map_err(|e| e.to_string()),
        };
        assert!(got.is_err(), "a {name} certificate was served: {got:?}");
    }
}

fn audit(env: &Env) {
    let log = env.admin(&["system", "audit", "--subject", "user:carol"]);
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let has = |op: &str, decision: &str| {
        lines.iter().any(|e| e["operation"] == op && e["decision"] == decision)
    };
    assert!(has("service.create", "allow"), "{log}");
    assert!(has("service.widen", "deny"), "{log}");
    assert!(has("service.create", "deny"), "{log}");
    assert!(lines.iter().all(|e| e["subject"] == "user:carol" && e["time"].is_string()));
    let all = env.admin(&["system", "audit", "--since", "1h"]);
    assert!(all.contains("root (local socket)") && all.contains("user:bob"), "{all}");
}

/// Every manager serves people from the replicated grants and keeps its own audit log;
/// `system audit` on one manager reads them all, each entry naming the manager that served it;
/// a user removed through one manager is refused by the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_manager_serves_people_and_audit_reads_every_managers_log() {
    let ms = shoal_testkit::cluster::three_managers(Duration::from_secs(5)).await;
    let mut addrs = Vec::new();
    for m in &ms {
        addrs.push(m.daemon.info().await.state.unwrap().advertise_addr);
    }
    let ids = [ms[0].id().await, ms[1].id().await, ms[2].id().await];
    let dir = tempfile::tempdir().unwrap();
    let bundles = dir.path().join("bundles");
    let socket = ms[0].socket.clone();
    tokio::task::spawn_blocking(move || {
        let at = |i: usize| Env {
            socket: socket.clone(),
            addr: addrs[i].clone(),
            bundles: bundles.clone(),
        };
        let m1 = at(0);
        m1.admin(&[
            "service",
            "create",
            "-d",
            "--name",
            "web",
            "--label",
            &label("/shared/prod"),
            "img",
            "x",
        ]);
        m1.admin(&["user", "create", "zoe"]);
        m1.admin(&["user", "bundle", "zoe", "-o", &bundles.join("zoe").display().to_string()]);
        m1.admin(&[
            "grant",
            "create",
            "--subject",
            "user:zoe",
            "--role",
            "view-only",
            "--collection",
            "/shared/prod",
        ]);
        // Followers apply the grant a moment after the leader acknowledges it.
        let until = |what: &str, f: &dyn Fn() -> bool| {
            let end = std::time::Instant::now() + Duration::from_secs(15);
            while !f() {
                assert!(std::time::Instant::now() < end, "timed out: {what}");
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        for i in [1, 2] {
            until("a follower serves zoe", &|| {
                at(i).user("zoe", &["service", "inspect", "web"]).status.success()
            });
        }
        let out = at(1).user("zoe", &["service", "rm", "web"]);
        assert!(
            !out.status.success() && text(&out).contains("may not service.remove"),
            "{}",
            text(&out)
        );
        let out = at(2).user("zoe", &["secret", "create", "z1", "-"]);
        assert!(
            !out.status.success() && text(&out).contains("may not secret.create"),
            "{}",
            text(&out)
        );

        let log = m1.admin(&["system", "audit", "--subject", "user:zoe"]);
        let lines: Vec<serde_json::Value> =
            log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let served = |op: &str| {
            lines
                .iter()
                .find(|e| e["operation"] == op && e["decision"] == "deny")
                .map(|e| e["manager"].clone())
        };
        assert_eq!(served("service.remove"), Some(ids[1].clone().into()), "{log}");
        assert_eq!(served("secret.create"), Some(ids[2].clone().into()), "{log}");
        let all = m1.admin(&["system", "audit"]);
        assert!(all.contains("\"user.create\"") && all.contains(&ids[0]), "{all}");

        m1.admin(&["user", "rm", "zoe"]);
        for i in [1, 2] {
            until("a follower refuses a removed user", &|| {
                let out = at(i).user("zoe", &["service", "inspect", "web"]);
                !out.status.success() && text(&out).contains("zoe")
            });
        }
    })
    .await
    .unwrap();
    for m in ms {
        m.kill().await;
    }
}
