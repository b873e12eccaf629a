//! Secrets, configs and stacks on an in-process cluster (real managers, gRPC over mTLS, Raft,
//! agents with the fake executor), driven through the real `shoal` binary as a user would:
//! `secret create NAME -` from stdin, `stack deploy -c FILE`, `stack rm`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use shoal_proto::*;
use shoal_testkit::cluster::{worker_token, TestNode};
use shoal_testkit::poll::eventually;

const BEAT: Duration = Duration::from_millis(200);
const CONVERGE: Duration = Duration::from_secs(30);

/// A manager and one worker, both Ready.
async fn cluster() -> (TestNode, TestNode) {
    let m = TestNode::start("m").await;
    let addr = m.init(BEAT, None).await;
    let token = worker_token(&m).await;
    let w = TestNode::start("w").await;
    w.join(&token, &addr).await.unwrap();
    eventually("both nodes Ready", CONVERGE, || async {
        let ready = m.nodes().await.iter().filter(|n| n.state() == NodeState::Ready).count();
        (ready == 2).then_some(()).ok_or(format!("{ready} Ready"))
    })
    .await;
    (m, w)
}

/// Runs `shoal -H unix://… ARGS` with `stdin` piped in, off the async workers.
async fn shoal(node: &TestNode, args: &[&str], stdin: &[u8]) -> Output {
    let host = format!("unix://{}", node.socket.display());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let stdin = stdin.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .arg("-H")
            .arg(host)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&stdin).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Runs a command that must succeed; returns what it printed.
async fn must(node: &TestNode, args: &[&str], stdin: &[u8]) -> String {
    let out = shoal(node, args, stdin).await;
    assert!(out.status.success(), "shoal {args:?} failed: {}", text(&out));
    text(&out)
}

/// Runs a command that must fail; returns what it printed.
async fn must_fail(node: &TestNode, args: &[&str], stdin: &[u8]) -> String {
    let out = shoal(node, args, stdin).await;
    assert!(!out.status.success(), "shoal {args:?} succeeded: {}", text(&out));
    text(&out)
}

async fn service(m: &TestNode, name: &str) -> Service {
    let req = GetServiceRequest { reference: name.into() };
    m.control().await.get_service(req).await.unwrap().into_inner().service.unwrap()
}

async fn secret_names(m: &TestNode, kind: SecretKind) -> Vec<String> {
    let req = ListSecretsRequest { kind: kind as i32 };
    let list = m.control().await.list_secrets(req).await.unwrap().into_inner().secrets;
    list.into_iter().map(|s| s.name).collect()
}

async fn service_names(m: &TestNode) -> Vec<String> {
    let list = m.control().await.list_services(ListServicesRequest {}).await.unwrap();
    list.into_inner().services.into_iter().filter_map(|s| s.service?.spec.map(|p| p.name)).collect()
}

/// The seed's example: `psql` reads `psql_user` from a file and `psql_password` made outside.
fn seed_stack(dir: &Path, web_env: &str) -> String {
    std::fs::write(dir.join("psql_user.txt"), "postgres\n").unwrap();
    let file = dir.join("stack.yml");
    std::fs::write(
        &file,
        format!(
            r#"version: "3.9"
services:
  psql:
    image: busybox
    command: sleep 3600
    environment:
      POSTGRES_USER_FILE: /run/secrets/psql_user
      POSTGRES_PASSWORD_FILE: /run/secrets/psql_password
    secrets: [psql_user, psql_password]
    ports: ["5432:5432"]
  web:
    image: busybox
    command: sleep 3600
    environment: [{web_env}]
    deploy: {{replicas: 2}}
secrets:
  psql_user:
    file: ./psql_user.txt
  psql_password:
    external: true
"#
        ),
    )
    .unwrap();
    file.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_seed_stack_deploys_and_stack_rm_keeps_the_external_secret() {
    let (m, _w) = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let file = seed_stack(dir.path(), "MODE=a");
    must(&m, &["secret", "create", "psql_password", "-"], b"s3cret-pw").await;

    let out = must(&m, &["stack", "deploy", "-c", &file, "db"], b"").await;
    assert!(!out.contains("Ignoring"), "ports and networks are honoured: {out}");
    assert!(out.contains("Creating secret db_psql_user"), "{out}");
    // Services that name no network share the stack's default one (Docker's behaviour).
    assert!(out.contains("Creating network db_default"), "{out}");
    assert!(out.contains("Creating service db_psql") && out.contains("Creating service db_web"));
    let psql = service(&m, "db_psql").await;
    let published: Vec<u32> =
        psql.endpoint.iter().flat_map(|e| e.ports.iter()).map(|p| p.published_port).collect();
    assert_eq!(published, [5432]);
    let spec = psql.spec.unwrap();
    assert_eq!(spec.labels["com.docker.stack.namespace"], "db");
    let refs: Vec<_> = spec.container.unwrap().secrets.into_iter().map(|r| r.target).collect();
    // Files are named for the compose keys (as Docker does), not the stack-prefixed secrets.
    assert_eq!(refs, ["psql_user", "psql_password"]);
    m.wait_running("db_psql", 1, CONVERGE).await;
    m.wait_running("db_web", 2, CONVERGE).await;

    let ls = must(&m, &["stack", "ls"], b"").await;
    assert!(ls.lines().any(|l| l.split_whitespace().eq(["db", "2"])), "{ls}");
    let services = must(&m, &["stack", "services", "db"], b"").await;
    assert!(services.contains("db_psql") && services.contains("db_web"), "{services}");
    let ps = must(&m, &["stack", "ps", "db"], b"").await;
    assert!(ps.contains("db_psql.1") && ps.contains("db_web.2"), "{ps}");

    let out = must(&m, &["stack", "rm", "db"], b"").await;
    assert!(
        out.contains("Removing service db_psql") && out.contains("Removing secret db_psql_user")
    );
    assert!(out.contains("Removing network db_default"), "{out}");
    assert!(service_names(&m).await.is_empty());
    assert_eq!(secret_names(&m, SecretKind::Secret).await, ["psql_password"]);
    let nets = must(&m, &["network", "ls"], b"").await;
    assert!(!nets.contains("db_default"), "{nets}");
    let out = must_fail(&m, &["stack", "rm", "db"], b"").await;
    assert!(out.contains("nothing found in stack: db"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_external_secret_or_file_is_refused_before_anything_is_created() {
    let (m, _w) = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let file = seed_stack(dir.path(), "MODE=a");
    std::fs::remove_file(dir.path().join("psql_user.txt")).unwrap();

    let out = must_fail(&m, &["stack", "deploy", "-c", &file, "db"], b"").await;
    assert!(out.contains("stack db was not deployed (nothing was created)"), "{out}");
    assert!(out.contains("external secret psql_password does not exist"), "{out}");
    assert!(out.contains("psql_user.txt: No such file"), "{out}");
    assert!(service_names(&m).await.is_empty());
    assert!(secret_names(&m, SecretKind::Secret).await.is_empty());

    let bad = dir.path().join("bad.yml");
    std::fs::write(&bad, "version: '3.0'\nservices:\n  a:\n    image: busybox\n    secrets: [s]\n")
        .unwrap();
    let out =
        must_fail(&m, &["stack", "deploy", "--compose-file", bad.to_str().unwrap(), "x"], b"")
            .await;
    assert!(out.contains("line 5: services.a.secrets: compose file version 3.0 has no secrets"));
    assert!(service_names(&m).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redeploy_changes_only_what_changed() {
    let (m, _w) = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    must(&m, &["secret", "create", "psql_password", "-"], b"s3cret-pw").await;
    let file = seed_stack(dir.path(), "MODE=a");
    must(&m, &["stack", "deploy", "-c", &file, "db"], b"").await;
    m.wait_running("db_web", 2, CONVERGE).await;
    let (psql, web) = (service(&m, "db_psql").await, service(&m, "db_web").await);

    let out = must(&m, &["stack", "deploy", "-c", &file, "db"], b"").await;
    assert!(out.contains("Service db_psql is up to date"), "{out}");
    assert!(out.contains("Service db_web is up to date"), "{out}");
    assert!(!out.contains("secret"), "an unchanged file makes no new version: {out}");

    seed_stack(dir.path(), "MODE=b");
    let out = must(&m, &["stack", "deploy", "-c", &file, "db"], b"").await;
    assert!(out.contains("Updating service db_web"), "{out}");
    assert!(out.contains("Service db_psql is up to date"), "{out}");
    assert_eq!(service(&m, "db_psql").await.meta, psql.meta, "psql untouched");
    assert_eq!(service(&m, "db_web").await.spec_version, web.spec_version + 1);
    m.wait_running("db_web", 2, CONVERGE).await;

    // New data in the stack's own secret: a new version, and psql (which follows it) rolls.
    std::fs::write(dir.path().join("psql_user.txt"), "admin\n").unwrap();
    let out = must(&m, &["stack", "deploy", "-c", &file, "db"], b"").await;
    assert!(out.contains("Updating secret db_psql_user (version 2)"), "{out}");
    assert!(out.contains("db_psql rolls to the new version"), "{out}");
    let rolled = service(&m, "db_psql").await;
    assert_eq!(rolled.spec_version, psql.spec_version + 1);
    let refs = rolled.spec.unwrap().container.unwrap().secrets;
    assert_eq!(refs.iter().map(|r| r.version).collect::<Vec<_>>(), [2, 1]);
    m.wait_running("db_psql", 1, CONVERGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_from_stdin_through_the_cli_never_show_their_data() {
    let (m, _w) = cluster().await;
    let id =
        must(&m, &["secret", "create", "--label", "team=db", "api_token", "-"], b"tok-v1").await;
    assert_eq!(id.trim().len(), 25, "an ID: {id}");
    let out = must_fail(&m, &["secret", "create", "empty", "-"], b"").await;
    assert!(out.contains("standard input gave no data"), "{out}");
    let out = must_fail(&m, &["secret", "create", "bad/name", "-"], b"x").await;
    assert!(out.contains("invalid secret name"), "{out}");

    let ls = must(&m, &["secret", "ls"], b"").await;
    assert!(ls.starts_with("ID") && ls.contains("api_token"), "{ls}");
    assert_eq!(must(&m, &["secret", "ls", "-q"], b"").await.trim(), id.trim());
    for args in
        [&["secret", "inspect", "api_token"][..], &["secret", "inspect", "--pretty", "api_token"]]
    {
        let out = must(&m, args, b"").await;
        assert!(out.contains("api_token") && out.contains("team"), "{out}");
        assert!(!out.contains("tok-v1"), "inspect shows no data: {out}");
    }

    let conf = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(conf.path(), "listen 80;\n").unwrap();
    must(&m, &["config", "create", "nginx_conf", conf.path().to_str().unwrap()], b"").await;
    assert_eq!(secret_names(&m, SecretKind::Config).await, ["nginx_conf"]);
    assert_eq!(secret_names(&m, SecretKind::Secret).await, ["api_token"]);
    must(&m, &["config", "rm", "nginx_conf"], b"").await;
    must(&m, &["secret", "rm", "api_token"], b"").await;
    assert!(must(&m, &["secret", "ls", "-q"], b"").await.trim().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_used_secret_cannot_go_and_an_update_rolls_only_its_followers() {
    let (m, _w) = cluster().await;
    must(&m, &["secret", "create", "api_token", "-"], b"tok-v1").await;
    let create = ["service", "create", "--detach", "--name"];
    let follow =
        [&create[..], &["api", "--secret", "source=api_token,target=token,mode=0400,follow"]];
    must(&m, &[&follow.concat()[..], &["busybox", "sleep", "3600"]].concat(), b"").await;
    let pinned = [&create[..], &["batch", "--secret", "api_token", "busybox", "sleep", "3600"]];
    must(&m, &pinned.concat(), b"").await;
    m.wait_running("api", 1, CONVERGE).await;
    let (api, batch) = (service(&m, "api").await, service(&m, "batch").await);
    let r = &api.spec.as_ref().unwrap().container.as_ref().unwrap().secrets[0];
    assert_eq!((r.target.as_str(), r.mode, r.follow, r.version), ("token", 0o400, true, 1));

    let out = must_fail(&m, &["secret", "rm", "api_token"], b"").await;
    assert!(out.contains("in use by the following services: api, batch"), "{out}");
    let inspect = must(&m, &["service", "inspect", "api"], b"").await;
    assert!(inspect.contains(r#""SecretName": "api_token""#), "{inspect}");
    assert!(inspect.contains(r#""Name": "token""#) && !inspect.contains("tok-v1"), "{inspect}");

    let out = must(&m, &["secret", "update", "api_token", "-"], b"tok-v2").await;
    assert!(out.contains("api_token: version 2") && out.contains("Rolling to version 2: api"));
    let rolled = service(&m, "api").await;
    assert_eq!(rolled.spec_version, api.spec_version + 1, "a new spec version: a rolling update");
    assert_eq!(rolled.spec.unwrap().container.unwrap().secrets[0].version, 2);
    assert_eq!(service(&m, "batch").await.meta, batch.meta, "batch does not follow");
    m.wait_running("api", 1, CONVERGE).await;

    for svc in ["api", "batch"] {
        must(&m, &["service", "update", "--detach", "--secret-rm", "api_token", svc], b"").await;
        let s = service(&m, svc).await;
        assert!(s.spec.unwrap().container.unwrap().secrets.is_empty());
    }
    must(
        &m,
        &["service", "update", "--detach", "--secret-add", "source=api_token,target=t2", "batch"],
        b"",
    )
    .await;
    let refs = service(&m, "batch").await.spec.unwrap().container.unwrap().secrets;
    assert_eq!((refs[0].target.as_str(), refs[0].version), ("t2", 2));
    let out = must_fail(&m, &["secret", "rm", "api_token"], b"").await;
    assert!(out.contains("in use by the following service: batch"), "{out}");
    must(&m, &["service", "rm", "batch"], b"").await;
    must(&m, &["secret", "rm", "api_token"], b"").await;
}

/// Issue #17: `${VAR}` from `.env` beside the file, `env_file:` merged under `environment:`,
/// an override file merged over the base, profiles, a file from standard input, and a missing
/// required variable or a typo refusing the deploy before anything is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_compose_files_deploy_unchanged() {
    let (m, _w) = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join(".env"), "TAG=demo\nREPLICAS=2\n# a comment\n").unwrap();
    std::fs::write(d.join("app.env"), "FROM_FILE=yes\nOVERRIDDEN=by-file\n").unwrap();
    let base = d.join("base.yml");
    std::fs::write(
        &base,
        "services:\n  web:\n    image: busybox:${TAG}\n    command: sleep 3600\n    env_file: app.env\n    environment:\n      OVERRIDDEN: by-environment\n      PASSWORD: ${ADMIN_PASSWORD:-admin}\n    deploy:\n      replicas: ${REPLICAS}\n  debug:\n    image: busybox:${TAG}\n    profiles: [debug]\n",
    )
    .unwrap();
    let over = d.join("override.yml");
    std::fs::write(&over, "services:\n  web:\n    environment:\n      EXTRA: \"1\"\n").unwrap();
    let (b, o) = (base.to_str().unwrap(), over.to_str().unwrap());
    must(&m, &["stack", "deploy", "-c", b, "-c", o, "app"], b"").await;
    let web = service(&m, "app_web").await;
    let spec = web.spec.unwrap();
    let c = spec.container.unwrap();
    assert_eq!(c.image, "busybox:demo");
    assert_eq!(spec.replicas, 2);
    for want in ["FROM_FILE=yes", "OVERRIDDEN=by-environment", "PASSWORD=admin", "EXTRA=1"] {
        assert!(c.env.contains(&want.to_string()), "{want} missing: {:?}", c.env);
    }
    assert!(!c.env.contains(&"OVERRIDDEN=by-file".to_string()), "environment wins: {:?}", c.env);
    let req = GetServiceRequest { reference: "app_debug".into() };
    assert!(m.control().await.get_service(req).await.is_err(), "a profile's service deployed");

    // From standard input, with the profile on.
    let text = std::fs::read(&base).unwrap();
    let out = shoal(
        &m,
        &[
            "stack",
            "deploy",
            "-c",
            "-",
            "--profile",
            "debug",
            "--env-file",
            d.join(".env").to_str().unwrap(),
            "piped",
        ],
        &text,
    )
    .await;
    assert!(out.status.success(), "{}", text_of(&out));
    service(&m, "piped_debug").await;

    // A required variable that is missing, and a typo: refused, nothing created.
    let strict = d.join("strict.yml");
    std::fs::write(&strict, "services:\n  api:\n    image: \"busybox:${API_TAG:?set API_TAG}\"\n")
        .unwrap();
    let e =
        must_fail(&m, &["stack", "deploy", "-c", strict.to_str().unwrap(), "strict"], b"").await;
    assert!(e.contains("API_TAG") && e.contains("line 3"), "{e}");
    std::fs::write(
        &strict,
        "services:\n  api:\n    image: busybox\n    deploy:\n      replicaz: 3\n",
    )
    .unwrap();
    let e =
        must_fail(&m, &["stack", "deploy", "-c", strict.to_str().unwrap(), "strict"], b"").await;
    assert!(
        e.contains("line 5") && e.contains("replicaz") && e.contains("did you mean replicas"),
        "{e}"
    );
    // A bad image reference: refused at deploy (not at task time), nothing created.
    std::fs::write(&strict, "services:\n  api:\n    image: \"Busy/Box::1\"\n    secrets: [s]\nsecrets:\n  s: {file: ./app.env}\n").unwrap();
    let e =
        must_fail(&m, &["stack", "deploy", "-c", strict.to_str().unwrap(), "strict"], b"").await;
    assert!(e.contains("bad image reference") && e.contains("Busy/Box::1"), "{e}");
    assert!(
        !secret_names(&m, SecretKind::Secret).await.contains(&"strict_s".to_string()),
        "a secret was created"
    );
    let req = GetServiceRequest { reference: "strict_api".into() };
    assert!(m.control().await.get_service(req).await.is_err(), "a refused file created a service");
}

fn text_of(out: &Output) -> String {
    text(out)
}
