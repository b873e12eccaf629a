//! Owns `shoal service …` and `shoal node update`: Docker's flags turned into service specs,
//! the listings, and the live convergence display of create/update/scale/rollback.

mod args;
mod converge;
mod flags;
pub(crate) use flags::security_opt;
pub mod render;

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use shoal_proto::control_client::ControlClient;
use shoal_proto::daemon_client::DaemonClient;
use shoal_proto::*;
use tonic::transport::Channel;

use crate::cli::client;

pub use args::{CreateArgs, ServiceCmd, SpecFlags, UpdateArgs};
pub use flags::{parse_bytes, parse_cpus, parse_mode, parse_secret_ref};
pub use render::{service_ls, service_ps};

use converge::converge;
use flags::{
    edit_networks, edit_ports, edit_refs, parse_network, parse_publish, parse_ulimit, pref,
    split_kv,
};
use render::{service_json, service_pretty, task_name};

/// The image digest as the local node knows it, to pin the service to it.
/// The ID of the image `image` names on this node if it was loaded or imported by hand
/// (no registry knows it, so its ID is the only pin there is). Images from a registry, or
/// ones this node lacks, are left to the manager, which asks the registry.
pub(crate) async fn pin_image(channel: &Channel, image: &str) -> Option<String> {
    let list = DaemonClient::new(channel.clone()).image_ls(ImageLsRequest {}).await.ok()?;
    let want = if image.contains(':') || image.contains('@') {
        image.to_string()
    } else {
        format!("{image}:latest")
    };
    list.into_inner()
        .images
        .into_iter()
        .find(|i| {
            i.id == image
                || i.id.starts_with(image)
                || i.names.iter().any(|n| *n == want || n == image)
        })
        .filter(|i| i.repo_digests.is_empty())
        .map(|i| i.id)
}

/// Refuses a spec whose user the image lacks, when this node holds the image (its files say
/// who exists; the managers never see them). Anything else leaves the check to the node that
/// runs the task.
pub(crate) async fn check_user(channel: &Channel, spec: &ServiceSpec) -> Result<()> {
    let Some(c) = spec.container.as_ref().filter(|c| !c.user.trim().is_empty()) else {
        return Ok(());
    };
    let image = if c.image_digest.is_empty() { &c.image } else { &c.image_digest };
    let req = ImageCheckUserRequest { reference: image.clone(), user: c.user.clone() };
    match DaemonClient::new(channel.clone()).image_check_user(req).await {
        Err(e) if e.code() == tonic::Code::InvalidArgument => {
            bail!("service {}: {}", spec.name, e.message())
        }
        _ => Ok(()),
    }
}

/// Under a cluster scan policy, an image this node holds and can scan (it has a database) is
/// checked here, so a service the nodes would refuse is refused when it is made. Anything else
/// is left to the node that runs the task, which always checks.
pub(crate) async fn check_scan(channel: &Channel, spec: &ServiceSpec) -> Result<()> {
    let Some(c) = spec.container.as_ref().filter(|c| !c.image.is_empty()) else {
        return Ok(());
    };
    let mut control = ControlClient::new(channel.clone());
    let Ok(info) = control.get_cluster_info(GetClusterInfoRequest {}).await else {
        return Ok(());
    };
    let block = info.into_inner().spec.map(|s| s.scan_block).unwrap_or_default();
    let Some(level) = shoal_proto::spec::scan::Severity::parse(&block) else { return Ok(()) };
    let image = if c.image_digest.is_empty() { &c.image } else { &c.image_digest };
    let req = ImageScanRequest { reference: image.clone() };
    let Ok(r) = DaemonClient::new(channel.clone()).image_scan(req).await else { return Ok(()) };
    let r = r.into_inner();
    if r.advisories == 0 {
        return Ok(());
    }
    let report: shoal_proto::spec::scan::Report = serde_json::from_slice(&r.report)?;
    match report.refusal(&c.image, level) {
        Some(why) => bail!("service {}: {why}, which the cluster's scan policy blocks", spec.name),
        None => Ok(()),
    }
}

/// The saved login for the image's registry, for `--with-registry-auth`.
pub(crate) fn registry_auth(image: &str) -> Result<Option<RegistryAuth>> {
    let auth = super::login::for_image(image)?;
    if auth.is_none() {
        eprintln!(
            "warning: --with-registry-auth: no saved login for the registry of {image}; run              'shoal login' first"
        );
    }
    Ok(auth)
}

/// What the manager warned about (an image it could not pin, say).
pub(crate) fn print_warnings(warnings: &[String]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}

/// Runs one `service` command.
pub async fn run(cmd: ServiceCmd, channel: Channel) -> Result<()> {
    let mut control = ControlClient::new(channel.clone());
    match cmd {
        ServiceCmd::Create(a) => create(*a, &channel, &mut control).await,
        ServiceCmd::Ls { quiet } => {
            let r = control.list_services(ListServicesRequest {}).await.map_err(client::status)?;
            print!("{}", service_ls(&r.into_inner(), quiet));
            Ok(())
        }
        ServiceCmd::Ps { running, no_trunc, quiet, services } => {
            ps(&mut control, services, running, no_trunc, quiet).await
        }
        ServiceCmd::Inspect { pretty, services } => inspect(&mut control, services, pretty).await,
        ServiceCmd::Logs { follow, tail, service } => {
            logs(&mut control, service, follow, &tail).await
        }
        ServiceCmd::Scale { detach, pairs } => scale(&mut control, &pairs, detach).await,
        ServiceCmd::Update(a) => update(*a, &channel, &mut control).await,
        ServiceCmd::Rollback { detach, service } => rollback(&mut control, service, detach).await,
        ServiceCmd::Rm { services } => {
            for reference in services {
                let r = control
                    .remove_service(RemoveServiceRequest { reference })
                    .await
                    .map_err(client::status)?;
                println!("{}", r.into_inner().name);
            }
            Ok(())
        }
    }
}

async fn ps(
    control: &mut ControlClient<Channel>,
    services: Vec<String>,
    running: bool,
    no_trunc: bool,
    quiet: bool,
) -> Result<()> {
    for service in services {
        let r = control
            .list_tasks(ListTasksRequest { service, node: String::new(), desired_running: running })
            .await
            .map_err(client::status)?;
        print!("{}", service_ps(&r.into_inner(), no_trunc, quiet));
    }
    Ok(())
}

async fn inspect(
    control: &mut ControlClient<Channel>,
    services: Vec<String>,
    pretty: bool,
) -> Result<()> {
    let mut all = Vec::new();
    for reference in services {
        all.push(get(control, &reference).await?);
    }
    if pretty {
        for s in &all {
            print!("{}", service_pretty(s));
        }
    } else {
        let json: Vec<_> = all.iter().map(service_json).collect();
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    Ok(())
}

/// `service scale SERVICE=N …`: every pair is checked before any service changes.
async fn scale(control: &mut ControlClient<Channel>, pairs: &[String], detach: bool) -> Result<()> {
    let mut targets = Vec::new();
    for p in pairs {
        let Some((name, n)) = p.split_once('=') else {
            bail!("invalid scale target {p:?}: use SERVICE=REPLICAS")
        };
        let n: u64 = n.parse().map_err(|_| anyhow::anyhow!("invalid replica count in {p:?}"))?;
        targets.push((name.to_string(), n));
    }
    for (name, n) in targets {
        let s = get(control, &name).await?;
        let mut spec = s.spec.clone().unwrap_or_default();
        if spec.mode() == ServiceMode::Global {
            bail!("{name} is a global service; only replicated services can be scaled");
        }
        spec.replicas = n;
        let updated = put_spec(control, &s, spec, false, true).await?;
        println!("{name} scaled to {n}");
        if !detach {
            converge(control, &updated).await?;
        }
    }
    Ok(())
}

async fn rollback(
    control: &mut ControlClient<Channel>,
    service: String,
    detach: bool,
) -> Result<()> {
    let r = control
        .update_service(UpdateServiceRequest {
            reference: service.clone(),
            rollback: true,
            ..Default::default()
        })
        .await
        .map_err(client::status)?;
    let s = r.into_inner().service.context("the manager returned no service")?;
    println!("{service}: rollback started");
    if !detach {
        converge(control, &s).await?;
    }
    Ok(())
}

/// The IDs of networks named by name, ID or ID prefix (a stored spec names networks by ID).
async fn network_ids(control: &mut ControlClient<Channel>, refs: &[String]) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for reference in refs {
        let r = control
            .get_network(GetNetworkRequest { reference: reference.clone() })
            .await
            .map_err(client::status)?;
        ids.extend(r.into_inner().network.map(|n| n.id));
    }
    Ok(ids)
}

/// Sends `spec` as the new spec of `s`, refused if someone changed `s` since it was read.
async fn put_spec(
    control: &mut ControlClient<Channel>,
    s: &Service,
    spec: ServiceSpec,
    force: bool,
    no_resolve_image: bool,
) -> Result<Service> {
    let version = s.meta.as_ref().map(|m| m.version).unwrap_or(0);
    let req = UpdateServiceRequest {
        reference: s.id.clone(),
        spec: Some(spec),
        version,
        rollback: false,
        force,
        no_resolve_image,
    };
    let r = control.update_service(req).await.map_err(client::status)?.into_inner();
    print_warnings(&r.warnings);
    r.service.context("the manager returned no service")
}

async fn get(control: &mut ControlClient<Channel>, reference: &str) -> Result<Service> {
    let r = control
        .get_service(GetServiceRequest { reference: reference.to_string() })
        .await
        .map_err(client::status)?;
    r.into_inner().service.context("the manager returned no service")
}

async fn create(
    a: CreateArgs,
    channel: &Channel,
    control: &mut ControlClient<Channel>,
) -> Result<()> {
    let mode = match a.mode.as_str() {
        "replicated" => ServiceMode::Replicated,
        "global" => ServiceMode::Global,
        o => bail!("invalid mode {o:?}: use replicated or global"),
    };
    if mode == ServiceMode::Global && a.flags.replicas.is_some() {
        bail!("--replicas cannot be used with --mode global");
    }
    let mut spec = ServiceSpec {
        name: a.name.clone().unwrap_or_default(),
        labels: split_kv(&a.label, "label")?.into_iter().collect(),
        mode: mode as i32,
        replicas: 1,
        container: Some(ContainerSpec {
            image: a.image.clone(),
            image_digest: pin_image(channel, &a.image).await.unwrap_or_default(),
            args: a.args.clone(),
            env: a.env.clone(),
            cap_add: a.cap_add.clone(),
            cap_drop: a.cap_drop.clone(),
            sysctls: split_kv(&a.sysctl, "sysctl")?.into_iter().collect(),
            ulimits: a.ulimit.iter().map(|u| parse_ulimit(u)).collect::<Result<_>>()?,
            secrets: a.secret.iter().map(|r| parse_secret_ref(r)).collect::<Result<_>>()?,
            configs: a.config.iter().map(|r| parse_secret_ref(r)).collect::<Result<_>>()?,
            mounts: a.mount.iter().map(|m| flags::parse_mount(m)).collect::<Result<_>>()?,
            ..Default::default()
        }),
        placement: Some(Placement {
            constraints: a.constraint.clone(),
            spread: a.placement_pref.iter().map(|p| pref(p)).collect::<Result<_>>()?,
            max_replicas_per_node: 0,
        }),
        networks: a.network.iter().map(|n| parse_network(n)).collect::<Result<_>>()?,
        ..Default::default()
    };
    if !a.publish.is_empty() {
        let ports = a.publish.iter().map(|p| parse_publish(p)).collect::<Result<_>>()?;
        spec.endpoint = Some(EndpointSpec { ports, ..Default::default() });
    }
    if a.flags.with_registry_auth {
        if let Some(c) = spec.container.as_mut() {
            c.registry_auth = registry_auth(&a.image)?;
        }
    }
    a.flags.apply(&mut spec)?;
    check_user(channel, &spec).await?;
    check_scan(channel, &spec).await?;
    super::trust::client_pin(channel, &mut spec).await?;
    let req = CreateServiceRequest { spec: Some(spec), no_resolve_image: a.flags.no_resolve_image };
    let r = control.create_service(req).await.map_err(client::status)?.into_inner();
    print_warnings(&r.warnings);
    let s = r.service.context("the manager returned no service")?;
    println!("{}", s.id);
    if !a.flags.detach {
        converge(control, &s).await?;
    }
    Ok(())
}

fn edit_list(list: &mut Vec<String>, add: &[String], rm: &[String], key: impl Fn(&str) -> &str) {
    list.retain(|e| !rm.iter().any(|r| key(e) == key(r)) && !add.iter().any(|a| key(e) == key(a)));
    list.extend(add.iter().cloned());
}

async fn update(
    a: UpdateArgs,
    channel: &Channel,
    control: &mut ControlClient<Channel>,
) -> Result<()> {
    if a.rollback {
        return rollback(control, a.service, a.flags.detach).await;
    }
    let s = get(control, &a.service).await?;
    let mut spec = s.spec.clone().unwrap_or_default();
    let c = spec.container.get_or_insert_with(Default::default);
    if let Some(image) = &a.image {
        c.image = image.clone();
    }
    // A new image, or --force, takes the digest the registry gives now (or this node's own
    // image of that name, when it was loaded by hand).
    if a.image.is_some() || (a.force && !a.flags.no_resolve_image) {
        c.image_digest = pin_image(channel, &c.image).await.unwrap_or_default();
    }
    if a.flags.with_registry_auth {
        c.registry_auth = registry_auth(&c.image)?;
    }
    if let Some(args) = &a.args {
        c.args = flags::command_line(args, "--args")?;
    }
    let env_key = |e: &str| e.split('=').next().unwrap_or(e).to_string();
    let env_rm: Vec<String> = a.env_rm.iter().map(|e| env_key(e)).collect();
    c.env.retain(|e| !env_rm.contains(&env_key(e)));
    edit_list(&mut c.env, &a.env_add, &[], |e| e.split('=').next().unwrap_or(e));
    edit_list(&mut c.cap_add, &a.cap_add, &a.cap_drop, |e| e);
    edit_refs(&mut c.secrets, &a.secret_add, &a.secret_rm)?;
    edit_refs(&mut c.configs, &a.config_add, &a.config_rm)?;
    let added: Vec<Mount> =
        a.mount_add.iter().map(|m| flags::parse_mount(m)).collect::<Result<_>>()?;
    c.mounts.retain(|m| {
        !a.mount_rm.iter().any(|t| t.trim_end_matches('/') == m.target.trim_end_matches('/'))
            && !added.iter().any(|n| n.target == m.target)
    });
    c.mounts.extend(added);
    let network_rm = network_ids(control, &a.network_rm).await?;
    edit_networks(&mut spec.networks, &a.network_add, &network_rm)?;
    if !a.publish_add.is_empty() || !a.publish_rm.is_empty() {
        let e = spec.endpoint.get_or_insert_with(Default::default);
        // Ports the managers chose are known by their number from now on.
        let chosen = s.endpoint.as_ref().map(|e| e.ports.as_slice()).unwrap_or_default();
        for p in e.ports.iter_mut().filter(|p| p.published_port == 0) {
            let same = chosen.iter().find(|c| {
                c.target_port == p.target_port
                    && c.protocol == p.protocol
                    && c.publish_mode == p.publish_mode
            });
            if let Some(c) = same {
                p.published_port = c.published_port;
            }
        }
        edit_ports(&mut e.ports, &a.publish_add, &a.publish_rm)?;
    }
    c.cap_drop.retain(|d| !a.cap_add.contains(d));
    for d in &a.cap_drop {
        if !c.cap_drop.contains(d)
            && !s
                .spec
                .as_ref()
                .and_then(|p| p.container.as_ref())
                .is_some_and(|c| c.cap_add.contains(d))
        {
            c.cap_drop.push(d.clone());
        }
    }
    for (k, v) in split_kv(&a.label_add, "label")? {
        spec.labels.insert(k, v);
    }
    for k in &a.label_rm {
        spec.labels.remove(k);
    }
    let placement = spec.placement.get_or_insert_with(Default::default);
    edit_list(&mut placement.constraints, &a.constraint_add, &a.constraint_rm, |e| e);
    let prefs_add: Vec<String> =
        a.placement_pref_add.iter().map(|p| pref(p)).collect::<Result<_>>()?;
    let prefs_rm: Vec<String> =
        a.placement_pref_rm.iter().map(|p| pref(p)).collect::<Result<_>>()?;
    edit_list(&mut placement.spread, &prefs_add, &prefs_rm, |e| e);
    a.flags.apply(&mut spec)?;
    check_user(channel, &spec).await?;
    if a.image.is_some() || a.force {
        check_scan(channel, &spec).await?;
        super::trust::client_pin(channel, &mut spec).await?;
    }
    let s = put_spec(control, &s, spec, a.force, a.flags.no_resolve_image).await?;
    println!("{}", s.spec.as_ref().map(|p| p.name.as_str()).unwrap_or(&s.id));
    if !a.flags.detach {
        converge(control, &s).await?;
    }
    Ok(())
}

async fn logs(
    control: &mut ControlClient<Channel>,
    service: String,
    follow: bool,
    tail: &str,
) -> Result<()> {
    let tail = if tail == "all" {
        0
    } else {
        tail.parse().map_err(|_| anyhow::anyhow!("invalid --tail {tail:?}: a number or all"))?
    };
    let tasks = control
        .list_tasks(ListTasksRequest { service: service.clone(), ..Default::default() })
        .await
        .map_err(client::status)?
        .into_inner();
    let names: HashMap<String, String> = tasks
        .tasks
        .iter()
        .map(|t| {
            let node = tasks.node_names.get(&t.node_id).cloned().unwrap_or_default();
            (t.id.clone(), format!("{}@{node}", task_name(t, false)))
        })
        .collect();
    let mut stream = control
        .service_logs(ServiceLogsRequest { reference: service, follow, tail })
        .await
        .map_err(client::status)?
        .into_inner();
    use std::io::Write;
    while let Some(m) = stream.message().await.map_err(client::status)? {
        let who = names.get(&m.task_id).cloned().unwrap_or_else(|| m.task_id.clone());
        let line = String::from_utf8_lossy(&m.data);
        let line = line.trim_end_matches('\n');
        if m.stream == 2 {
            let _ = writeln!(std::io::stderr(), "{who}    | {line}");
        } else {
            let _ = writeln!(std::io::stdout(), "{who}    | {line}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_cpus_parse_like_docker() {
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("512").unwrap(), 512);
        assert!(parse_bytes("-1m").is_err());
        assert!(parse_bytes("lots").unwrap_err().contains("invalid size"));
        assert_eq!(parse_cpus("0.5").unwrap(), 500_000_000);
        assert!(parse_cpus("x").is_err());
    }

    #[test]
    fn secret_references_parse_like_docker_plus_follow() {
        let r = parse_secret_ref("db_pass").unwrap();
        assert_eq!((r.secret_name.as_str(), r.target.as_str(), r.mode), ("db_pass", "", 0));
        let r = parse_secret_ref("source=db,target=pw,uid=70,gid=71,mode=0400,follow").unwrap();
        assert_eq!((r.secret_name.as_str(), r.target.as_str()), ("db", "pw"));
        assert_eq!((r.uid, r.gid, r.mode, r.follow), (70, 71, 0o400, true));
        assert_eq!(parse_secret_ref("src=db,mode=440").unwrap().mode, 0o440);
        for bad in ["target=x", "source=db,mode=0999", "source=db,uid=-1", "source=db,colour=red"] {
            assert!(parse_secret_ref(bad).is_err(), "{bad}");
        }
        let mut refs = vec![parse_secret_ref("a").unwrap(), parse_secret_ref("b").unwrap()];
        edit_refs(&mut refs, &["source=a,target=a2".into()], &["b".into()]).unwrap();
        assert_eq!(refs.len(), 1);
        assert_eq!((refs[0].secret_name.as_str(), refs[0].target.as_str()), ("a", "a2"));
    }

    #[test]
    fn publish_flags_read_like_docker_and_say_what_is_wrong() {
        let p = parse_publish("8080:80").unwrap();
        assert_eq!(
            (p.published_port, p.target_port, p.protocol.as_str(), p.publish_mode.as_str()),
            (8080, 80, "tcp", "ingress")
        );
        let p = parse_publish("53/udp").unwrap();
        assert_eq!((p.published_port, p.target_port, p.protocol.as_str()), (0, 53, "udp"));
        let p = parse_publish("published=9090,target=90,protocol=udp,mode=host").unwrap();
        assert_eq!((p.published_port, p.publish_mode.as_str()), (9090, "host"));
        for (bad, why) in [
            ("80:", "not a number"),
            ("0:80", "1 to 65535"),
            ("8000-8001:80-81", "ranges are not supported"),
            ("8080:80/sctp", "tcp or udp"),
            ("published=80,target=80,mode=bridge", "ingress or host"),
            ("published=80", "no target port"),
            ("published=80,target=80,color=red", "use published=P"),
        ] {
            let err = parse_publish(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let mut ports =
            vec![parse_publish("8080:80").unwrap(), parse_publish("53:53/udp").unwrap()];
        flags::edit_ports(&mut ports, &["8081:80".into()], &["8080".into()]).unwrap();
        let now: Vec<(u32, &str)> =
            ports.iter().map(|p| (p.published_port, p.protocol.as_str())).collect();
        assert_eq!(now, [(53, "udp"), (8081, "tcp")]);
        let err = flags::edit_ports(&mut ports, &[], &["53".into()]).unwrap_err().to_string();
        assert!(err.contains("does not publish 53/tcp"), "{err}");
    }

    #[test]
    fn flags_fill_the_spec() {
        let flags = SpecFlags {
            replicas: Some(4),
            limit_memory: Some(64 << 20),
            restart_condition: Some("on-failure".into()),
            update_failure_action: Some("rollback".into()),
            update_order: Some("start-first".into()),
            security_opt: vec!["no-new-privileges=false".into(), "seccomp=unconfined".into()],
            health_cmd: Some("true".into()),
            ..Default::default()
        };
        let mut spec = ServiceSpec::default();
        flags.apply(&mut spec).unwrap();
        assert_eq!(spec.replicas, 4);
        assert_eq!(spec.restart.unwrap().condition(), RestartCondition::OnFailure);
        let u = spec.update.unwrap();
        assert_eq!(
            (u.failure_action(), u.order()),
            (FailureAction::Rollback, UpdateOrder::StartFirst)
        );
        let c = spec.container.unwrap();
        assert!(c.allow_new_privileges);
        assert!(!c.landlock_off, "Landlock stays on unless asked");
        assert_eq!(c.seccomp, "unconfined");
        assert_eq!(c.healthcheck.unwrap().test, vec!["CMD-SHELL", "true"]);
        let bad = SpecFlags { restart_condition: Some("sometimes".into()), ..Default::default() };
        assert!(bad
            .apply(&mut ServiceSpec::default())
            .unwrap_err()
            .to_string()
            .contains("restart condition"));
        let bad = SpecFlags { security_opt: vec!["selinux=x".into()], ..Default::default() };
        assert!(bad
            .apply(&mut ServiceSpec::default())
            .unwrap_err()
            .to_string()
            .contains("unsupported"));
    }

    #[test]
    fn landlock_off_is_a_security_opt_that_inspect_shows() {
        let off = SpecFlags { security_opt: vec!["landlock=off".into()], ..Default::default() };
        let mut spec = ServiceSpec::default();
        off.apply(&mut spec).unwrap();
        assert!(spec.container.as_ref().unwrap().landlock_off);
        let service = Service { spec: Some(spec.clone()), ..Default::default() };
        let json = service_json(&service);
        assert_eq!(json["Spec"]["TaskTemplate"]["ContainerSpec"]["Landlock"], "off");
        assert!(service_pretty(&service).contains("\nLandlock:       off\n"));

        // An update can turn it back on; the default shows as the node's ruleset.
        let on = SpecFlags { security_opt: vec!["landlock:on".into()], ..Default::default() };
        on.apply(&mut spec).unwrap();
        assert!(!spec.container.as_ref().unwrap().landlock_off);
        let json = service_json(&Service { spec: Some(spec), ..Default::default() });
        assert_eq!(json["Spec"]["TaskTemplate"]["ContainerSpec"]["Landlock"], "default");

        let bad = SpecFlags { security_opt: vec!["landlock=maybe".into()], ..Default::default() };
        let err = bad.apply(&mut ServiceSpec::default()).unwrap_err().to_string();
        assert_eq!(err, "invalid --security-opt \"landlock=maybe\": landlock=on|off");
    }

    #[test]
    fn entrypoint_and_args_split_like_a_shell() {
        let flags = SpecFlags {
            entrypoint: Some("sh -c 'echo \"a b\"; sleep 1'".into()),
            ..Default::default()
        };
        let mut spec = ServiceSpec::default();
        flags.apply(&mut spec).unwrap();
        assert_eq!(spec.container.unwrap().command, ["sh", "-c", "echo \"a b\"; sleep 1"]);
        let unclosed = SpecFlags { entrypoint: Some("sh -c 'echo".into()), ..Default::default() };
        let err = unclosed.apply(&mut ServiceSpec::default()).unwrap_err().to_string();
        assert!(err.contains("invalid --entrypoint"), "{err}");
    }

    /// Long names and `--no-trunc` IDs widen their column instead of running into the next.
    #[test]
    fn tables_stretch_to_their_longest_cell() {
        let long = "a-service-name-well-beyond-twenty-two-characters";
        let task = Task {
            id: "x".repeat(40),
            service_name: long.into(),
            slot: 1,
            node_id: "n1".into(),
            ..Default::default()
        };
        let listing = ListTasksResponse {
            tasks: vec![task.clone(), Task { id: "short".into(), ..task }],
            node_names: [("n1".to_string(), "node-one".to_string())].into(),
        };
        let out = service_ps(&listing, true, false);
        let lines: Vec<&str> = out.lines().collect();
        let column =
            |l: &str, word: &str| l.find(word).unwrap_or_else(|| panic!("{word} in {l:?}"));
        // Every row's IMAGE/NODE cells start where the header's do, after at least 3 spaces.
        let node_at = column(lines[0], "NODE");
        for row in &lines[1..] {
            assert_eq!(column(row, "node-one"), node_at, "{out}");
            assert!(
                row.contains(&format!("{}   ", "x".repeat(40))) || row.starts_with("short"),
                "{out}"
            );
        }
        let services = ListServicesResponse {
            services: vec![ServiceSummary {
                service: Some(Service {
                    id: "abc".into(),
                    spec: Some(ServiceSpec { name: long.into(), ..Default::default() }),
                    ..Default::default()
                }),
                running: 1,
                desired: 1,
            }],
        };
        let out = service_ls(&services, false);
        assert!(out.contains(&format!("{long}   replicated")), "{out}");
    }
}
