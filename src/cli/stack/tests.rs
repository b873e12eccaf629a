//! Compose files read into specs: every supported key, the version rules, errors that name the
//! line and the key, the warning about ignored keys, and what a deploy would do with secrets.

use std::collections::HashMap;

use shoal_proto::*;

use super::compose::{parse, Source};
use super::deploy::{comparable, desired};
use super::objects::{self, Action};
use super::NAMESPACE;

const FULL: &str = r#"
version: "3.9"
x-defaults: &defaults
  image: busybox:1.36
services:
  psql:
    <<: *defaults
    command: sh -c 'echo "hi there"; sleep 3600'
    entrypoint: ["/bin/tini", "--"]
    environment:
      POSTGRES_USER_FILE: /run/secrets/psql_user
      DEBUG: true
      EMPTY: ""
    deploy:
      mode: replicated
      replicas: 3
      labels: [tier=db]
      resources:
        limits: {cpus: "0.5", memory: 64M, pids: 100}
        reservations: {cpus: 0.25, memory: 32m}
      restart_policy: {condition: on-failure, delay: 10s, max_attempts: 3, window: 1m30s}
      update_config: {parallelism: 2, delay: 5s, failure_action: rollback, monitor: 1s, max_failure_ratio: 0.5, order: start-first}
      rollback_config: {parallelism: 0, failure_action: continue, order: stop-first}
      placement:
        constraints: [node.role==worker]
        preferences: [{spread: node.labels.zone}]
        max_replicas_per_node: 2
    healthcheck:
      test: ["CMD", "pg_isready"]
      interval: 30s
      timeout: 5s
      retries: 4
      start_period: 1m
    secrets:
      - psql_user
      - source: psql_password
        target: pw
        uid: "70"
        gid: 70
        mode: 0400
    configs:
      - source: pg_conf
        target: /etc/pg.conf
    cap_add: [NET_ADMIN]
    cap_drop: [ALL]
    read_only: true
    user: "70:70"
    sysctls: {net.core.somaxconn: 1024}
    ulimits:
      nproc: 65535
      nofile: {soft: 1024, hard: 2048}
    working_dir: /data
    hostname: db
    stop_signal: SIGINT
    stop_grace_period: 1m30s
    init: true
  web:
    image: nginx
    command: [nginx, -g, daemon off;]
    environment: [A=1, B=two=2]
    deploy: {mode: global}
    healthcheck: {disable: true}
secrets:
  psql_user:
    file: ./psql_user.txt
    labels: {owner: dba}
  psql_password:
    external: true
configs:
  pg_conf:
    external:
      name: pg_conf_v2
"#;

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn every_supported_key_reaches_the_spec() {
    let file = parse(FULL).unwrap();
    assert_eq!(file.version, Some((3, 9)));
    assert!(file.unsupported.is_empty(), "{:?}", file.unsupported);
    let psql = &file.services["psql"];
    let c = psql.container.clone().unwrap();
    assert_eq!(c.image, "busybox:1.36", "from the merged anchor");
    assert_eq!(c.args, strs(&["sh", "-c", r#"echo "hi there"; sleep 3600"#]));
    assert_eq!(c.command, strs(&["/bin/tini", "--"]));
    assert_eq!(c.env, strs(&["POSTGRES_USER_FILE=/run/secrets/psql_user", "DEBUG=true", "EMPTY="]));
    assert_eq!((psql.mode(), psql.replicas), (ServiceMode::Replicated, 3));
    assert_eq!(psql.labels["tier"], "db");
    let res = psql.resources.unwrap();
    let (l, r) = (res.limits.unwrap(), res.reservations.unwrap());
    assert_eq!((l.nano_cpus, l.memory_bytes, c.pids_limit), (500_000_000, 64 << 20, 100));
    assert_eq!((r.nano_cpus, r.memory_bytes), (250_000_000, 32 << 20));
    let rp = psql.restart.unwrap();
    assert_eq!(rp.condition(), RestartCondition::OnFailure);
    assert_eq!((rp.delay_ms, rp.max_attempts, rp.window_ms), (10_000, 3, 90_000));
    let u = psql.update.unwrap();
    assert_eq!((u.parallelism, u.delay_ms, u.monitor_ms), (2, 5_000, 1_000));
    assert_eq!((u.failure_action(), u.order()), (FailureAction::Rollback, UpdateOrder::StartFirst));
    assert_eq!(u.max_failure_ratio, 0.5);
    let rb = psql.rollback.unwrap();
    assert_eq!(
        (rb.parallelism, rb.failure_action(), rb.monitor_ms),
        (0, FailureAction::Continue, 5_000)
    );
    let p = psql.placement.clone().unwrap();
    assert_eq!(p.constraints, strs(&["node.role==worker"]));
    assert_eq!((p.spread, p.max_replicas_per_node), (strs(&["node.labels.zone"]), 2));
    let h = c.healthcheck.clone().unwrap();
    assert_eq!(h.test, strs(&["CMD", "pg_isready"]));
    assert_eq!(
        (h.interval_ms, h.timeout_ms, h.retries, h.start_period_ms),
        (30_000, 5_000, 4, 60_000)
    );
    assert_eq!(c.secrets.len(), 2);
    assert_eq!(
        (c.secrets[0].secret_name.as_str(), c.secrets[0].target.as_str()),
        ("psql_user", "psql_user"),
        "the file is named for the compose key, not the stack's prefixed secret"
    );
    let pw = &c.secrets[1];
    assert_eq!((pw.secret_name.as_str(), pw.target.as_str()), ("psql_password", "pw"));
    assert_eq!((pw.uid, pw.gid, pw.mode), (70, 70, 0o400));
    assert_eq!(
        (c.configs[0].secret_name.as_str(), c.configs[0].target.as_str()),
        ("pg_conf", "/etc/pg.conf")
    );
    assert_eq!((c.cap_add, c.cap_drop), (strs(&["NET_ADMIN"]), strs(&["ALL"])));
    assert!(c.read_only && c.init);
    assert_eq!(
        (c.user.as_str(), c.workdir.as_str(), c.hostname.as_str()),
        ("70:70", "/data", "db")
    );
    assert_eq!(c.sysctls["net.core.somaxconn"], "1024");
    let limits: Vec<_> = c.ulimits.iter().map(|u| (u.name.as_str(), u.soft, u.hard)).collect();
    assert_eq!(limits, [("nproc", 65535, 65535), ("nofile", 1024, 2048)]);
    assert_eq!((c.stop_signal.as_str(), c.stop_grace_ms), ("SIGINT", 90_000));

    let web = &file.services["web"];
    let c = web.container.clone().unwrap();
    assert_eq!(web.mode(), ServiceMode::Global);
    assert_eq!(c.args, strs(&["nginx", "-g", "daemon off;"]));
    assert_eq!(c.env, strs(&["A=1", "B=two=2"]));
    assert_eq!(c.healthcheck.unwrap().test, strs(&["NONE"]));
}

#[test]
fn secrets_come_from_files_or_exist_already() {
    let file = parse(FULL).unwrap();
    let user = &file.secrets["psql_user"];
    assert_eq!(user.source, Source::File("./psql_user.txt".into()));
    assert_eq!(user.labels["owner"], "dba");
    assert_eq!(file.secrets["psql_password"].source, Source::External);
    assert_eq!(file.configs["pg_conf"].name.as_deref(), Some("pg_conf_v2"));
    let both = "services: {a: {image: x}}\nsecrets:\n  s: {file: ./s, external: true}\n";
    assert!(parse(both).unwrap_err().to_string().contains("not both"));
    let neither = "services: {a: {image: x}}\nsecrets:\n  s: {labels: {a: b}}\n";
    let e = parse(neither).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (3, "secrets.s"), "{e}");
    let undefined = "version: '3.1'\nservices:\n  a:\n    image: x\n    secrets: [nope]\n";
    let e = parse(undefined).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (5, "services.a.secrets[0]"), "{e}");
    assert!(e.message.contains("nope is not defined under the top-level secrets key"), "{e}");
}

#[test]
fn versions_below_3_1_have_no_secrets() {
    let file = "version: '3.0'\nservices:\n  a:\n    image: x\nsecrets:\n  s: {external: true}\n";
    let e = parse(file).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (5, "secrets"));
    assert_eq!(
        e.to_string(),
        "line 5: secrets: compose file version 3.0 has no secrets: use version \"3.1\" or later"
    );
    let service_only = "version: '3'\nservices:\n  a:\n    image: x\n    secrets: [s]\n";
    assert!(parse(service_only).unwrap_err().to_string().contains("version 3.0 has no secrets"));
    let configs = "version: '3.2'\nservices: {a: {image: x}}\nconfigs: {c: {external: true}}\n";
    assert!(parse(configs).unwrap_err().to_string().contains("use version \"3.3\""));
    for ok in ["version: '3.1'\n", "version: 3.8\n", ""] {
        let text =
            format!("{ok}services: {{a: {{image: x}}}}\nsecrets: {{s: {{external: true}}}}\n");
        parse(&text).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
    }
    for bad in ["2.4", "'3.10'", "4", "three"] {
        let e = parse(&format!("version: {bad}\nservices: {{a: {{image: x}}}}\n")).unwrap_err();
        assert!(
            e.to_string().starts_with("line 1: version: unsupported compose file version"),
            "{e}"
        );
    }
}

#[test]
fn bad_files_name_the_line_and_the_key() {
    let e =
        parse("services:\n  web:\n    image: x\n    deploy:\n      replicas: lots\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "line 5: services.web.deploy.replicas: expected a whole number, 0 or more, found a string"
    );
    let e = parse("services:\n  web:\n    image: x\n    environment: [A=1\n").unwrap_err();
    assert_eq!(e.key, "services.web.environment", "{e}");
    assert!(e.line >= 4, "{e}");
    let e = parse("services:\n  web:\n    image: x\n    stop_grace_period: soon\n").unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (4, "services.web.stop_grace_period"), "{e}");
    let e = parse("services:\n  web:\n    command: ls\n").unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (3, "services.web"), "{e}");
    assert!(e.message.contains("no image"), "{e}");
    let e =
        parse("services:\n  web: {image: x, deploy: {mode: global, replicas: 2}}\n").unwrap_err();
    assert!(e.to_string().contains("replicas cannot be used with mode: global"), "{e}");
    assert!(parse("").unwrap_err().to_string().contains("empty"));
    assert!(parse("volumes: {}\n").unwrap_err().to_string().contains("no services key"));
}

#[test]
fn ignored_keys_make_one_warning_naming_each() {
    // Ports, networks, the endpoint mode and volumes are honoured now.
    let text = "services:\n  web:\n    image: x\n    ports: ['80:80']\n    networks: [front]\n    x-note: mine\n    deploy:\n      endpoint_mode: vip\nnetworks:\n  front: {enable_ipv6: true}\nvolumes: {}\nx-extra: 1\n";
    let file = parse(text).unwrap();
    assert_eq!(
        file.warning().unwrap(),
        "Ignoring unsupported options: networks.front.enable_ipv6 (line 10)"
    );
    assert!(parse("services: {a: {image: x}}\n").unwrap().warning().is_none());
}

fn secret(name: &str, kind: SecretKind, labels: &[(&str, &str)]) -> Secret {
    let labels: HashMap<String, String> =
        labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Secret {
        id: format!("id-{name}"),
        name: name.into(),
        kind: kind as i32,
        labels,
        ..Default::default()
    }
}

#[test]
fn a_deploy_plan_reports_every_missing_piece_first() {
    let file = parse(FULL).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_, _, problems) = objects::plan(&file, "db", dir.path(), &[]);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(
        problems[0].starts_with(
            "secret psql_password (line 67): external secret psql_password does not exist"
        ),
        "{}",
        problems[0]
    );
    assert!(
        problems[1].contains("psql_user.txt") && problems[1].contains("cannot read"),
        "{}",
        problems[1]
    );
    assert!(problems[2].contains("external config pg_conf_v2 does not exist"), "{}", problems[2]);

    std::fs::write(dir.path().join("psql_user.txt"), b"postgres").unwrap();
    let existing = [
        secret("psql_password", SecretKind::Secret, &[]),
        secret("pg_conf_v2", SecretKind::Config, &[]),
    ];
    let (planned, names, problems) = objects::plan(&file, "db", dir.path(), &existing);
    assert!(problems.is_empty(), "{problems:?}");
    let user = planned.iter().find(|p| p.name == "db_psql_user").unwrap();
    assert_eq!(user.action, Action::Create(b"postgres".to_vec()));
    assert_eq!((user.labels[NAMESPACE].as_str(), user.labels["owner"].as_str()), ("db", "dba"));
    assert!(planned.iter().filter(|p| !p.owned).all(|p| p.action == Action::Keep));
    assert_eq!(
        names[&(SecretKind::Secret as i32, "psql_user".into())],
        ("db_psql_user".into(), true)
    );

    let mine = secret("db_psql_user", SecretKind::Secret, &[(NAMESPACE, "db")]);
    let (planned, _, _) = objects::plan(
        &file,
        "db",
        dir.path(),
        &[existing[0].clone(), existing[1].clone(), mine.clone()],
    );
    let user = planned.iter().find(|p| p.name == "db_psql_user").unwrap();
    assert_eq!(
        user.action,
        Action::Update(b"postgres".to_vec()),
        "the stack's own: sent again, the manager keeps the version if the data is the same"
    );

    let theirs = secret("db_psql_user", SecretKind::Secret, &[]);
    let (_, _, problems) =
        objects::plan(&file, "db", dir.path(), &[existing[0].clone(), existing[1].clone(), theirs]);
    assert!(problems[0].contains("is not part of stack db"), "{problems:?}");
}

#[test]
fn specs_are_named_for_the_stack_and_compare_by_content() {
    let file = parse(FULL).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("psql_user.txt"), b"postgres").unwrap();
    let existing = [
        secret("psql_password", SecretKind::Secret, &[]),
        secret("pg_conf_v2", SecretKind::Config, &[]),
    ];
    let (_, names, _) = objects::plan(&file, "db", dir.path(), &existing);
    let spec = desired("db", "psql", &file.services["psql"], &names).unwrap();
    assert_eq!(spec.name, "db_psql");
    assert_eq!(spec.labels[NAMESPACE], "db");
    let c = spec.container.clone().unwrap();
    let refs: Vec<_> = c.secrets.iter().map(|r| (r.secret_name.as_str(), r.follow)).collect();
    assert_eq!(refs, [("db_psql_user", true), ("psql_password", false)]);
    assert_eq!(c.configs[0].secret_name, "pg_conf_v2");

    // What the manager stores: IDs, versions and default targets filled in.
    let mut stored = shoal_proto::spec::service::normalize(spec.clone()).unwrap();
    for r in &mut stored.container.as_mut().unwrap().secrets {
        r.secret_id = format!("id-{}", r.secret_name);
        r.version = 3;
        if r.target.is_empty() {
            r.target = r.secret_name.clone();
            r.mode = 0o444;
        }
    }
    assert_eq!(comparable(&spec), comparable(&stored));
    let mut changed = spec.clone();
    changed.replicas = 4;
    assert_ne!(comparable(&changed), comparable(&stored));
}

#[test]
fn clashing_targets_are_refused_before_deploying() {
    let text = "services:\n  a:\n    image: x\n    secrets: [s, {source: t, target: s}]\nsecrets:\n  s: {external: true}\n  t: {external: true}\n";
    let file = parse(text).unwrap();
    let existing = [secret("s", SecretKind::Secret, &[]), secret("t", SecretKind::Secret, &[])];
    let (_, names, _) = objects::plan(&file, "x", std::path::Path::new("."), &existing);
    let spec = desired("x", "a", &file.services["a"], &names).unwrap();
    let e = super::deploy::check_targets(&comparable(&spec)).unwrap_err();
    assert_eq!(e.to_string(), "two secrets use the target s");
}

#[test]
fn ports_and_networks_read_like_docker_stack_deploy() {
    let text = r#"
services:
  web:
    image: x
    ports:
      - "8080:80"
      - 443
      - "5353:53/udp"
      - "9000-9001:90-91"
      - {target: 22, published: 2222, mode: host}
    networks:
      front:
        aliases: [www]
      back:
    deploy: {endpoint_mode: dnsrr}
  db:
    image: y
networks:
  front:
    driver: overlay
    driver_opts: {encrypted: ""}
    ipam: {config: [{subnet: 10.20.0.0/24}]}
    attachable: true
    labels: [tier=front]
  back:
    external: {name: shared}
"#;
    let file = parse(text).unwrap();
    assert!(file.warning().is_none(), "{:?}", file.warning());
    let web = &file.services["web"];
    let e = web.endpoint.clone().unwrap();
    assert_eq!(e.mode(), EndpointMode::Dnsrr);
    let ports: Vec<(u32, u32, &str, &str)> = e
        .ports
        .iter()
        .map(|p| (p.published_port, p.target_port, p.protocol.as_str(), p.publish_mode.as_str()))
        .collect();
    assert_eq!(
        ports,
        [
            (8080, 80, "tcp", "ingress"),
            (0, 443, "tcp", "ingress"),
            (5353, 53, "udp", "ingress"),
            (9000, 90, "tcp", "ingress"),
            (9001, 91, "tcp", "ingress"),
            (2222, 22, "tcp", "host"),
        ]
    );
    let nets: Vec<(&str, Vec<String>)> =
        web.networks.iter().map(|n| (n.target.as_str(), n.aliases.clone())).collect();
    assert_eq!(nets, [("front", vec!["www".to_string()]), ("back", vec![])]);
    // A service naming no network joins the stack's default one, which the stack makes.
    assert_eq!(file.services["db"].networks[0].target, "default");
    let front = &file.networks["front"];
    assert!(front.encrypted && front.attachable && !front.external);
    assert_eq!(front.subnet.as_deref(), Some("10.20.0.0/24"));
    assert!(file.networks["back"].external);
    assert!(file.networks.contains_key("default"));

    // What deploy would do: make front (encrypted) and default (labelled), and use the
    // external one.
    let shared = Network {
        id: "n-shared".into(),
        spec: Some(NetworkSpec { name: "shared".into(), ..Default::default() }),
        ..Default::default()
    };
    let (planned, problems) = super::networks::plan(&file, "shop", &[shared]);
    assert!(problems.is_empty(), "{problems:?}");
    let made: Vec<(&str, &str)> = planned
        .iter()
        .filter_map(|p| Some((p.key.as_str(), p.create.as_ref()?.name.as_str())))
        .collect();
    assert_eq!(made, [("default", "shop_default"), ("front", "shop_front")]);
    let spec = planned.iter().find(|p| p.key == "front").unwrap().create.clone().unwrap();
    assert_eq!(spec.labels.get(NAMESPACE).map(String::as_str), Some("shop"));
    assert!(spec.attachable && spec.encrypted);
    // Without the external network, nothing is made and the problem is named.
    let (_, problems) = super::networks::plan(&file, "shop", &[]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("external network shared does not exist"), "{problems:?}");
}

#[test]
fn bad_ports_and_networks_are_refused_with_the_line_and_key() {
    let cases = [
        (
            "services:\n  a:\n    image: x\n    ports: ['70000:80']\n",
            "services.a.ports[0]",
            "1 to 65535",
        ),
        (
            "services:\n  a:\n    image: x\n    ports: ['127.0.0.1:80:80']\n",
            "services.a.ports[0]",
            "host addresses",
        ),
        (
            "services:\n  a:\n    image: x\n    ports: ['80-82:80-81']\n",
            "services.a.ports[0]",
            "differ in length",
        ),
        (
            "services:\n  a:\n    image: x\n    ports: [{published: 80}]\n",
            "services.a.ports[0]",
            "no target",
        ),
        (
            "services:\n  a:\n    image: x\n    networks: [nope]\n",
            "services.a.networks[0]",
            "network nope is not defined",
        ),
        (
            "services:\n  a:\n    image: x\nnetworks:\n  n: {driver: bridge}\n",
            "networks.n.driver",
            "not supported",
        ),
        (
            "services:\n  a:\n    image: x\n    deploy: {endpoint_mode: rr}\n",
            "services.a.deploy.endpoint_mode",
            "vip or dnsrr",
        ),
    ];
    for (text, key, want) in cases {
        let e = parse(text).unwrap_err();
        assert_eq!(e.key, key, "{e}");
        assert!(e.to_string().contains(want), "{e}");
    }
}

fn vars(list: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> =
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k| map.get(k).cloned()
}

fn parse_with(
    texts: &[&str],
    env: &dyn Fn(&str) -> Option<String>,
    profiles: &[&str],
) -> Result<super::compose::Compose, super::yaml::ComposeError> {
    let files: Vec<(&str, &str)> = texts.iter().map(|t| ("", *t)).collect();
    let opts = super::compose::Options {
        vars: Some(env),
        profiles: profiles.iter().map(|p| p.to_string()).collect(),
    };
    super::compose::parse_files(&files, &opts)
}

#[test]
fn variables_are_substituted_before_the_file_is_read() {
    let text = r#"
services:
  web:
    image: "nginx:${TAG:-1.27}"
    environment:
      ADMIN_PASSWORD: ${ADMIN_PASSWORD:-admin}
      LITERAL: "$$HOME"
    deploy:
      replicas: ${REPLICAS}
      placement:
        constraints: ["node.hostname == ${HOSTNAME}"]
    healthcheck:
      test: ["CMD-SHELL", "pg_isready -U $$(cat /run/secrets/user)"]
"#;
    let env = vars(&[("ADMIN_PASSWORD", "s3cret"), ("REPLICAS", "4"), ("HOSTNAME", "node-2")]);
    let f = parse_with(&[text], &env, &[]).unwrap();
    let s = &f.services["web"];
    let c = s.container.as_ref().unwrap();
    assert_eq!(c.image, "nginx:1.27");
    assert!(c.env.contains(&"ADMIN_PASSWORD=s3cret".to_string()), "{:?}", c.env);
    assert!(c.env.contains(&"LITERAL=$HOME".to_string()), "{:?}", c.env);
    assert_eq!(s.replicas, 4, "a number from a variable is a number");
    assert_eq!(s.placement.as_ref().unwrap().constraints, vec!["node.hostname == node-2"]);
    let hc = c.healthcheck.as_ref().unwrap();
    assert_eq!(hc.test[1], "pg_isready -U $(cat /run/secrets/user)");
    // Unset variables are blank, and said so once each.
    let f = parse_with(
        &["services: {web: {image: 'x${GONE}', command: 'echo $GONE'}}"],
        &vars(&[]),
        &[],
    )
    .unwrap();
    assert_eq!(f.services["web"].container.as_ref().unwrap().image, "x");
    assert_eq!(f.notes, vec!["The GONE variable is not set. Defaulting to a blank string."]);
    // A required variable that is missing refuses the file, naming it and where it is.
    let e = parse_with(
        &["services:\n  web:\n    image: \"app:${TAG:?give a tag}\"\n"],
        &vars(&[]),
        &[],
    )
    .unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (3, "services.web.image"), "{e}");
    assert!(e.message.contains("TAG") && e.message.contains("give a tag"), "{e}");
    let e = parse_with(&["services: {web: {image: 'x${'}}"], &vars(&[]), &[]).unwrap_err();
    assert!(e.message.contains("invalid interpolation"), "{e}");
}

#[test]
fn override_files_merge_as_docker_compose_merges_them() {
    let base = r#"
services:
  web:
    image: nginx:1.26
    environment: [A=1, B=2]
    ports: ["80:80"]
    secrets: [cert]
    command: [nginx, -g, daemon off;]
    deploy: {replicas: 2, labels: {tier: front}}
  db:
    image: postgres
secrets:
  cert: {file: ./cert.pem}
  key: {file: ./key.pem}
"#;
    let over = r#"
services:
  web:
    image: nginx:1.27
    environment: [B=3, C=4]
    ports: ["443:443"]
    secrets: [key, cert]
    command: [nginx]
    deploy: {replicas: 5}
"#;
    let f = parse_with(&[base, over], &vars(&[]), &[]).unwrap();
    let web = &f.services["web"];
    let c = web.container.as_ref().unwrap();
    assert_eq!(c.image, "nginx:1.27", "a later scalar wins");
    assert_eq!(c.env, strs(&["A=1", "B=3", "C=4"]), "environment merges by name");
    assert_eq!(c.args, strs(&["nginx"]), "a command is replaced, not merged");
    let names: Vec<&str> = c.secrets.iter().map(|s| s.secret_name.as_str()).collect();
    assert_eq!(names, vec!["cert", "key"], "secrets merge by source");
    let ports = &web.endpoint.as_ref().unwrap().ports;
    assert_eq!(ports.len(), 2, "ports from both files: {ports:?}");
    assert_eq!(web.replicas, 5);
    assert_eq!(web.labels.get("tier").map(String::as_str), Some("front"), "mappings merge by key");
    assert!(f.services.contains_key("db"), "a service only the base names stays");
}

#[test]
fn profiles_choose_services() {
    let text = "services:\n  web: {image: x}\n  debug: {image: y, profiles: [debug]}\n  tools: {image: z, profiles: [tools, debug]}\n";
    let none = parse_with(&[text], &vars(&[]), &[]).unwrap();
    assert_eq!(none.services.keys().collect::<Vec<_>>(), vec!["web"]);
    let debug = parse_with(&[text], &vars(&[]), &["debug"]).unwrap();
    assert_eq!(debug.services.keys().collect::<Vec<_>>(), vec!["debug", "tools", "web"]);
    assert!(none.warning().is_none(), "profiles is read, not ignored");
}

#[test]
fn typos_are_refused_with_the_line_and_the_nearest_key() {
    let e = parse("services:\n  web:\n    imgae: nginx\n    image: nginx\n").unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (3, "services.web.imgae"), "{e}");
    assert_eq!(e.message, "imgae is not a Compose key; did you mean image?");
    let e = parse("services:\n  web:\n    image: x\n    deploy:\n      replicaz: 3\n").unwrap_err();
    assert_eq!(e.to_string(), "line 5: services.web.deploy.replicaz: replicaz is not a Compose key; did you mean replicas?");
    let e = parse("services: {web: {image: x}}\nsecretz: {}\n").unwrap_err();
    assert!(e.message.contains("did you mean secrets"), "{e}");
    // Real Compose keys stacks ignore are a warning, not an error.
    let f = parse("services:\n  web:\n    image: x\n    build: .\n    depends_on: [db]\n    container_name: w\n    restart: always\n  db: {image: y}\n").unwrap();
    let w = f.warning().unwrap();
    for k in ["build", "depends_on", "container_name", "restart"] {
        assert!(w.contains(&format!("services.web.{k}")), "{w}");
    }
}

#[test]
fn compose_errors_never_show_the_yaml_library() {
    // Nine aliases of nine aliases of ...: a billion items if expanded.
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
    for i in 1..9 {
        let p = i - 1;
        bomb += &format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        );
    }
    let texts = [
        "a: 1\na: 2\n",
        "services: {web: {image: x, image: y}}\n",
        "services: [\n",
        "a: 1\n---\nb: 2\n",
        &bomb,
    ];
    for text in texts {
        let e = parse(text).unwrap_err().to_string();
        for internal in ["DuplicateKeyPolicy", "from_multiple", "Options", "budget", "serde"] {
            assert!(!e.contains(internal), "{text:?} gave {e}");
        }
    }
    let e = parse("services: {web: {image: x, image: y}}\n").unwrap_err();
    assert!(e.message.contains("image appears twice"), "{e}");
    let e = parse("a: 1\n---\nb: 2\n").unwrap_err();
    assert!(e.message.contains("more than one YAML document"), "{e}");
}

#[test]
fn volumes_read_like_docker_stack_deploy() {
    let text = r#"
services:
  db:
    image: postgres
    volumes:
      - pgdata:/var/lib/postgresql/data
      - ./init.sql:/docker-entrypoint-initdb.d/init.sql:ro
      - /var/log
      - type: tmpfs
        target: /scratch
        tmpfs: {size: 64m}
      - {type: bind, source: /srv/certs, target: /certs, read_only: true, bind: {propagation: rslave}}
      - {type: volume, source: cache, target: /cache, volume: {nocopy: true}}
      - {type: tmpfs, target: /locks, tmpfs: {mode: 1770}}
    tmpfs: /run/db
volumes:
  pgdata:
    labels: {tier: data}
  cache: {}
  shared: {external: true}
"#;
    let f = parse(text).unwrap();
    let m = &f.services["db"].container.as_ref().unwrap().mounts;
    let brief: Vec<(&str, &str, &str, bool)> = m
        .iter()
        .map(|m| (m.r#type.as_str(), m.source.as_str(), m.target.as_str(), m.read_only))
        .collect();
    assert_eq!(
        brief,
        vec![
            ("volume", "pgdata", "/var/lib/postgresql/data", false),
            ("bind", "./init.sql", "/docker-entrypoint-initdb.d/init.sql", true),
            ("volume", "db_var_log", "/var/log", false),
            ("tmpfs", "", "/scratch", false),
            ("bind", "/srv/certs", "/certs", true),
            ("volume", "cache", "/cache", false),
            ("tmpfs", "", "/locks", false),
            ("tmpfs", "", "/run/db", false),
        ]
    );
    assert!(m[5].no_copy && !m[0].no_copy, "volume: {{nocopy: true}} is kept");
    assert_eq!(m[6].tmpfs_mode, 0o1770);
    assert!(
        m[2].volume_labels.contains_key(shoal_proto::spec::service::ANONYMOUS_VOLUME),
        "{:?}",
        m[2]
    );
    assert!(m[0].volume_labels.is_empty(), "a named volume is not anonymous");
    assert_eq!(f.volumes["pgdata"].labels["tier"], "data");
    assert_eq!(m[3].tmpfs_size, 64 << 20);
    assert_eq!(m[4].bind_propagation, "rslave");
    assert!(f.volumes["shared"].external && !f.volumes["pgdata"].external);
    assert!(f.warning().is_none(), "{:?}", f.warning());
    for bad in [
        "services: {a: {image: x, volumes: ['v:relative']}}\n",
        "services: {a: {image: x, volumes: ['v:/t:rx']}}\n",
        "services: {a: {image: x, volumes: [{type: npipe, source: x, target: /t}]}}\n",
        "services: {a: {image: x}}\nvolumes: {v: {driver: nfs}}\n",
        "services: {a: {image: x}}\nvolumes: {v: {driver_opts: {type: nfs, o: addr=10.0.0.1}}}\n",
        "services: {a: {image: x, volumes: [{type: tmpfs, target: /t, tmpfs: {mode: 9}}]}}\n",
    ] {
        assert!(parse(bad).is_err(), "{bad}");
    }
    let e = parse("services: {a: {image: x}}\nvolumes: {v: {driver_opts: {type: nfs}}}\n");
    assert!(e.unwrap_err().to_string().contains("no NFS"), "driver options say why they fail");
}

#[test]
fn security_opt_entries_reach_the_spec_and_bad_ones_name_the_line() {
    let file = "services:\n  db:\n    image: x\n    security_opt:\n      - label=level:s0:c7,c9\n      - apparmor=unconfined\n      - no-new-privileges=true\n";
    let c = parse(file).unwrap().services["db"].container.clone().unwrap();
    assert_eq!(c.selinux.unwrap().level, "s0:c7,c9");
    assert_eq!(c.apparmor, "unconfined");
    let bad = "services:\n  db:\n    image: x\n    security_opt: [label=user:staff_u]\n";
    let e = parse(bad).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (4, "services.db.security_opt"), "{e}");
    assert!(e.message.contains("system_u"), "{e}");
}
