//! Owns turning one compose service, with its `deploy` section, into a `ServiceSpec`: the
//! same spec `shoal service create` would send, its secrets still named by compose key.

use std::time::Duration;

use shoal_proto::spec::service::{default_update, DEFAULT_RESTART_DELAY_MS};
use shoal_proto::{
    ContainerSpec, EndpointMode, FailureAction, HealthCheck, NetworkAttachmentConfig, Placement,
    PortConfig, RestartCondition, RestartPolicy, SecretKind, SecretReference, ServiceMode,
    ServiceSpec, Ulimit, UpdateConfig, UpdateOrder,
};

use super::compose::{labels_of, Reader};
use super::yaml::{At, ComposeError, Entry, Value};
use crate::cli::service::{parse_bytes, parse_cpus};

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// `env_file: FILE`, a list of files, or of `{path, required}` (Compose's long form;
/// files that are not required and missing are skipped by the deploy, marked by a leading `?`).
fn env_file_paths(at: At<'_>) -> Result<Vec<String>, ComposeError> {
    if let Ok(one) = at.text() {
        return Ok(vec![one]);
    }
    let mut out = Vec::new();
    for (path, node) in at.items()? {
        let item = At { node, path: &path };
        match item.text() {
            Ok(p) => out.push(p),
            Err(_) => {
                let entries = item.entries()?;
                let field = |k: &str| entries.iter().find(|e| e.key == k);
                let p =
                    field("path").ok_or_else(|| item.error("an env_file entry needs a path"))?;
                let required = match field("required") {
                    Some(r) => r.at().bool()?,
                    None => true,
                };
                let p = p.at().text()?;
                out.push(if required { p } else { format!("?{p}") });
            }
        }
    }
    Ok(out)
}

/// `volumes:` of a service: `NAME:/target[:ro]`, `/host/path:/target[:ro|rw]`, `./relative:…`
/// (made absolute by the deploy), `/target` alone (a volume of the service's own), or the
/// long form `{type, source, target, read_only, bind: {propagation}, tmpfs: {size}}`.
fn read_volumes(f: &Entry<'_>, service: &str) -> Result<Vec<shoal_proto::Mount>, ComposeError> {
    let mut out = Vec::new();
    for (path, node) in f.at().items()? {
        let item = At { node, path: &path };
        let mut m = shoal_proto::Mount::default();
        if let Ok(text) = item.text() {
            let parts: Vec<&str> = text.split(':').collect();
            let (source, target, mode) = match parts.as_slice() {
                [t] => ("", *t, ""),
                [s, t] => (*s, *t, ""),
                [s, t, m] => (*s, *t, *m),
                _ => return Err(item.error("a volume is SOURCE:TARGET[:MODE]")),
            };
            m.target = target.to_string();
            m.read_only = mode.split(',').any(|o| o == "ro");
            m.no_copy = mode.split(',').any(|o| o == "nocopy");
            if let Some(bad) =
                mode.split(',').find(|o| !matches!(*o, "" | "ro" | "rw" | "z" | "Z" | "nocopy"))
            {
                return Err(item.error(format!("unknown volume mode {bad:?}: use ro or rw")));
            }
            if source.is_empty() {
                m.r#type = "volume".into();
                m.source = anonymous_volume(service, target);
                m.volume_labels
                    .insert(shoal_proto::spec::service::ANONYMOUS_VOLUME.into(), String::new());
            } else if source.starts_with(['/', '.', '~']) {
                m.r#type = "bind".into();
                m.source = source.to_string();
            } else {
                m.r#type = "volume".into();
                m.source = source.to_string();
            }
        } else {
            for x in item.entries()? {
                let at = x.at();
                match x.key {
                    "type" => m.r#type = at.text()?,
                    "source" => m.source = at.text()?,
                    "target" => m.target = at.text()?,
                    "read_only" => m.read_only = at.bool()?,
                    "bind" => {
                        for b in at.entries()? {
                            if b.key == "propagation" {
                                m.bind_propagation = b.at().text()?;
                            }
                        }
                    }
                    "tmpfs" => {
                        for t in at.entries()? {
                            if t.key == "size" {
                                let size = t.at().text()?;
                                let n = parse_bytes(&size).map_err(|e| t.at().error(e))?;
                                m.tmpfs_size = u64::try_from(n)
                                    .map_err(|_| t.at().error("a size is 0 or more"))?;
                            } else if t.key == "mode" {
                                let mode = t.at().text()?;
                                m.tmpfs_mode = u32::from_str_radix(&mode, 8)
                                    .ok()
                                    .filter(|m| *m <= 0o7777)
                                    .ok_or_else(|| {
                                        t.at().error("a tmpfs mode is octal, such as 1770")
                                    })?;
                            }
                        }
                    }
                    "volume" => {
                        for v in at.entries()? {
                            if v.key == "nocopy" {
                                m.no_copy = v.at().bool()?;
                            }
                        }
                    }
                    "consistency" => {}
                    _ => return Err(x.at().error(format!("{} is not a key of a volume", x.key))),
                }
            }
            if m.r#type.is_empty() {
                m.r#type = "volume".into();
            }
            if m.r#type == "volume" && m.source.is_empty() {
                m.source = anonymous_volume(service, &m.target);
            }
            if !matches!(m.r#type.as_str(), "volume" | "bind" | "tmpfs") {
                return Err(item.error(format!(
                    "volume type {:?}: stacks take volume, bind and tmpfs",
                    m.r#type
                )));
            }
        }
        if !m.target.starts_with('/') {
            return Err(
                item.error(format!("a volume's target {:?} must be an absolute path", m.target))
            );
        }
        out.push(m);
    }
    Ok(out)
}

/// The name of a service's own volume for `target` (Compose's anonymous volumes), marked so
/// the deploy gives it the stack's prefix.
fn anonymous_volume(service: &str, target: &str) -> String {
    let t: String =
        target.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("{service}{}", t.trim_end_matches('_'))
}

/// Reads `services.<name>`.
pub(super) fn read_service(e: &Entry<'_>, r: &mut Reader) -> Result<ServiceSpec, ComposeError> {
    let mut spec = ServiceSpec { name: e.key.to_string(), replicas: 1, ..Default::default() };
    let mut c = ContainerSpec::default();
    for f in e.at().entries()? {
        let at = f.at();
        match f.key {
            "image" => c.image = at.text()?,
            "command" => c.args = at.command()?,
            "entrypoint" => c.command = at.command()?,
            "environment" => c.env = environment(at)?,
            "deploy" => read_deploy(&f, &mut spec, &mut c, r)?,
            "healthcheck" => c.healthcheck = Some(read_healthcheck(&f, r)?),
            "secrets" => {
                r.need(&f, (3, 1))?;
                c.secrets = read_refs(&f, SecretKind::Secret, r)?;
            }
            "configs" => {
                r.need(&f, (3, 3))?;
                c.configs = read_refs(&f, SecretKind::Config, r)?;
            }
            "cap_add" => c.cap_add = at.strings()?,
            "cap_drop" => c.cap_drop = at.strings()?,
            "read_only" => c.read_only = at.bool()?,
            "user" => c.user = at.text()?,
            "sysctls" => {
                for (k, v) in at.pairs()? {
                    let v = v.ok_or_else(|| at.error(format!("sysctl {k} has no value")))?;
                    c.sysctls.insert(k, v);
                }
            }
            "ulimits" => c.ulimits = read_ulimits(&f)?,
            "working_dir" => c.workdir = at.text()?,
            "hostname" => c.hostname = at.text()?,
            "stop_signal" => c.stop_signal = at.text()?,
            "stop_grace_period" => c.stop_grace_ms = ms(at.duration()?),
            "init" => c.init = at.bool()?,
            "security_opt" => {
                for opt in at.strings()? {
                    crate::cli::service::security_opt(&mut c, &opt)
                        .map_err(|e| at.error(e.to_string()))?;
                }
            }
            "ports" => {
                let e = spec.endpoint.get_or_insert_with(Default::default);
                e.ports = read_ports(&f)?;
            }
            "networks" => spec.networks = read_networks(&f, r)?,
            "volumes" => c.mounts = read_volumes(&f, e.key)?,
            "tmpfs" => {
                for t in one_or_many(at)? {
                    c.mounts.push(shoal_proto::Mount {
                        r#type: "tmpfs".into(),
                        target: t,
                        ..Default::default()
                    });
                }
            }
            "dns" => c.dns.get_or_insert_with(Default::default).nameservers = one_or_many(at)?,
            "dns_search" => c.dns.get_or_insert_with(Default::default).search = one_or_many(at)?,
            "dns_opt" => c.dns.get_or_insert_with(Default::default).options = one_or_many(at)?,
            // Read when the stack is deployed (relative to the file); profiles decided above.
            "env_file" => {
                r.env_files.insert(e.key.to_string(), env_file_paths(at)?);
            }
            "profiles" => {}
            _ => r.skip(&f),
        }
    }
    if c.image.trim().is_empty() {
        return Err(e
            .at()
            .error("the service has no image (stacks run images; they do not build them)"));
    }
    spec.container = Some(c);
    Ok(spec)
}

/// `environment` as a mapping or a `KEY=VALUE` list; a bare `KEY` takes this shell's value.
fn environment(at: At<'_>) -> Result<Vec<String>, ComposeError> {
    let mut out = Vec::new();
    for (k, v) in at.pairs()? {
        if k.is_empty() {
            return Err(at.error("an environment variable has no name"));
        }
        match v.or_else(|| std::env::var(&k).ok()) {
            Some(v) => out.push(format!("{k}={v}")),
            None => continue,
        }
    }
    Ok(out)
}

fn read_deploy(
    e: &Entry<'_>,
    spec: &mut ServiceSpec,
    c: &mut ContainerSpec,
    r: &mut Reader,
) -> Result<(), ComposeError> {
    let mut replicas = None;
    for f in e.at().entries()? {
        let at = f.at();
        match f.key {
            "mode" => {
                spec.mode = match at.text()?.as_str() {
                    "replicated" => ServiceMode::Replicated,
                    "global" => ServiceMode::Global,
                    o => {
                        return Err(at.error(format!(
                        "unsupported mode {o:?}: use replicated or global (jobs are not supported)"
                    )))
                    }
                } as i32
            }
            "replicas" => replicas = Some((at.u64()?, f.line, f.path.clone())),
            "labels" => spec.labels = labels_of(at)?,
            "resources" => read_resources(&f, spec, c, r)?,
            "restart_policy" => spec.restart = Some(read_restart(&f, r)?),
            "update_config" => spec.update = Some(read_update(&f, r, false)?),
            "rollback_config" => spec.rollback = Some(read_update(&f, r, true)?),
            "placement" => spec.placement = Some(read_placement(&f, r)?),
            "endpoint_mode" => {
                let mode = match at.text()?.as_str() {
                    "vip" => EndpointMode::Vip,
                    "dnsrr" => EndpointMode::Dnsrr,
                    o => {
                        return Err(
                            at.error(format!("unsupported endpoint_mode {o:?}: use vip or dnsrr"))
                        )
                    }
                };
                spec.endpoint.get_or_insert_with(Default::default).set_mode(mode);
            }
            _ => r.skip(&f),
        }
    }
    if let Some((n, line, key)) = replicas {
        if spec.mode() == ServiceMode::Global {
            let message = "replicas cannot be used with mode: global".to_string();
            return Err(ComposeError { line, key, message });
        }
        spec.replicas = n;
    }
    Ok(())
}

fn read_resources(
    e: &Entry<'_>,
    spec: &mut ServiceSpec,
    c: &mut ContainerSpec,
    r: &mut Reader,
) -> Result<(), ComposeError> {
    let res = spec.resources.get_or_insert_with(Default::default);
    for f in e.at().entries()? {
        let limits = match f.key {
            "limits" => true,
            "reservations" => false,
            _ => {
                r.skip(&f);
                continue;
            }
        };
        let target = if limits { &mut res.limits } else { &mut res.reservations };
        let target = target.get_or_insert_with(Default::default);
        for x in f.at().entries()? {
            let at = x.at();
            match x.key {
                "cpus" => target.nano_cpus = parse_cpus(&at.text()?).map_err(|m| at.error(m))?,
                "memory" => {
                    target.memory_bytes = parse_bytes(&at.text()?).map_err(|m| at.error(m))?
                }
                "pids" if limits => c.pids_limit = at.u64()? as i64,
                _ => r.skip(&x),
            }
        }
    }
    Ok(())
}

fn read_restart(e: &Entry<'_>, r: &mut Reader) -> Result<RestartPolicy, ComposeError> {
    let mut p = RestartPolicy { delay_ms: DEFAULT_RESTART_DELAY_MS, ..Default::default() };
    for f in e.at().entries()? {
        let at = f.at();
        match f.key {
            "condition" => p.set_condition(match at.text()?.as_str() {
                "any" => RestartCondition::Any,
                "on-failure" => RestartCondition::OnFailure,
                "none" => RestartCondition::None,
                o => {
                    return Err(
                        at.error(format!("invalid condition {o:?}: use any, on-failure or none"))
                    )
                }
            }),
            "delay" => p.delay_ms = ms(at.duration()?),
            "max_attempts" => p.max_attempts = at.u64()?,
            "window" => p.window_ms = ms(at.duration()?),
            _ => r.skip(&f),
        }
    }
    Ok(p)
}

fn read_update(
    e: &Entry<'_>,
    r: &mut Reader,
    rollback: bool,
) -> Result<UpdateConfig, ComposeError> {
    let mut u = default_update();
    for f in e.at().entries()? {
        let at = f.at();
        match f.key {
            "parallelism" => u.parallelism = at.u64()?,
            "delay" => u.delay_ms = ms(at.duration()?),
            "monitor" => u.monitor_ms = ms(at.duration()?),
            "failure_action" => u.set_failure_action(match at.text()?.as_str() {
                "pause" => FailureAction::Pause,
                "continue" => FailureAction::Continue,
                "rollback" if !rollback => FailureAction::Rollback,
                o => {
                    let allowed =
                        if rollback { "pause or continue" } else { "pause, continue or rollback" };
                    return Err(at.error(format!("invalid failure_action {o:?}: use {allowed}")));
                }
            }),
            "max_failure_ratio" => {
                let v = at.f64()?;
                if !(0.0..=1.0).contains(&v) {
                    return Err(at.error(format!("{v} is not between 0 and 1")));
                }
                u.max_failure_ratio = v as f32;
            }
            "order" => u.set_order(match at.text()?.as_str() {
                "stop-first" => UpdateOrder::StopFirst,
                "start-first" => UpdateOrder::StartFirst,
                o => {
                    return Err(
                        at.error(format!("invalid order {o:?}: use stop-first or start-first"))
                    )
                }
            }),
            _ => r.skip(&f),
        }
    }
    Ok(u)
}

fn read_placement(e: &Entry<'_>, r: &mut Reader) -> Result<Placement, ComposeError> {
    let mut p = Placement::default();
    for f in e.at().entries()? {
        let at = f.at();
        match f.key {
            "constraints" => p.constraints = at.strings()?,
            "max_replicas_per_node" => p.max_replicas_per_node = at.u64()?,
            "preferences" => {
                for (path, node) in at.items()? {
                    for x in (At { node, path: &path }).entries()? {
                        match x.key {
                            "spread" => p.spread.push(x.at().text()?),
                            _ => r.skip(&x),
                        }
                    }
                }
            }
            _ => r.skip(&f),
        }
    }
    Ok(p)
}

fn read_healthcheck(e: &Entry<'_>, r: &mut Reader) -> Result<HealthCheck, ComposeError> {
    let mut h = HealthCheck::default();
    let mut disable = false;
    for f in e.at().entries()? {
        let at = f.at();
        match f.key {
            "test" => {
                h.test = match f.node.value {
                    Value::Seq(_) => at.strings()?,
                    _ => vec!["CMD-SHELL".to_string(), at.text()?],
                };
                let kind = h.test.first().map(String::as_str).unwrap_or("");
                if !matches!(kind, "CMD" | "CMD-SHELL" | "NONE") {
                    return Err(at.error(format!(
                        "a test list starts with CMD, CMD-SHELL or NONE, not {kind:?}"
                    )));
                }
            }
            "interval" => h.interval_ms = ms(at.duration()?),
            "timeout" => h.timeout_ms = ms(at.duration()?),
            "start_period" => h.start_period_ms = ms(at.duration()?),
            "retries" => {
                h.retries = u32::try_from(at.u64()?).map_err(|_| at.error("too many retries"))?
            }
            "disable" => disable = at.bool()?,
            _ => r.skip(&f),
        }
    }
    if disable {
        h = HealthCheck { test: vec!["NONE".into()], ..Default::default() };
    }
    Ok(h)
}

/// `ulimits: {nproc: 65535, nofile: {soft: 1024, hard: 2048}}`.
fn read_ulimits(e: &Entry<'_>) -> Result<Vec<Ulimit>, ComposeError> {
    let mut out = Vec::new();
    for f in e.at().entries()? {
        let at = f.at();
        let (soft, hard) = match f.node.value {
            Value::Map(_) => {
                let (mut soft, mut hard) = (None, None);
                for x in at.entries()? {
                    match x.key {
                        "soft" => soft = Some(x.at().u64()?),
                        "hard" => hard = Some(x.at().u64()?),
                        _ => return Err(x.at().error("a ulimit has only soft and hard")),
                    }
                }
                match (soft, hard) {
                    (Some(s), Some(h)) if s <= h => (s, h),
                    (Some(_), Some(_)) => return Err(at.error("soft is above hard")),
                    _ => return Err(at.error("give both soft and hard, or one number")),
                }
            }
            _ => {
                let n = at.u64()?;
                (n, n)
            }
        };
        out.push(Ulimit { name: f.key.to_string(), soft, hard });
    }
    Ok(out)
}

/// `secrets:`/`configs:` of a service: `- name` or `- {source, target, uid, gid, mode}`.
fn read_refs(
    e: &Entry<'_>,
    kind: SecretKind,
    r: &mut Reader,
) -> Result<Vec<SecretReference>, ComposeError> {
    let mut out = Vec::new();
    for (path, node) in e.at().items()? {
        let at = At { node, path: &path };
        let mut rf = SecretReference::default();
        match node.value {
            Value::Map(_) => {
                for f in at.entries()? {
                    let x = f.at();
                    let id = || -> Result<u32, ComposeError> {
                        u32::try_from(x.u64()?).map_err(|_| x.error("not a valid ID"))
                    };
                    match f.key {
                        "source" => rf.secret_name = x.text()?,
                        "target" => rf.target = x.text()?,
                        "uid" => rf.uid = id()?,
                        "gid" => rf.gid = id()?,
                        "mode" => rf.mode = x.mode()?,
                        _ => r.skip(&f),
                    }
                }
            }
            _ => rf.secret_name = at.text()?,
        }
        let (top, defined) = match kind {
            SecretKind::Secret => ("secrets", &r.secrets),
            SecretKind::Config => ("configs", &r.configs),
        };
        if rf.secret_name.is_empty() {
            return Err(at.error("the long form needs source: NAME"));
        }
        if !defined.contains(&rf.secret_name) {
            return Err(at.error(format!(
                "{} is not defined under the top-level {top} key",
                rf.secret_name
            )));
        }
        // Like Docker: the file is named for the compose key, not the stack-prefixed object.
        if rf.target.is_empty() {
            rf.target = match kind {
                SecretKind::Secret => rf.secret_name.clone(),
                SecretKind::Config => format!("/{}", rf.secret_name),
            };
        }
        out.push(rf);
    }
    Ok(out)
}

/// A string or a list of strings.
fn one_or_many(at: At<'_>) -> Result<Vec<String>, ComposeError> {
    match at.node.value {
        Value::Seq(_) => at.strings(),
        _ => Ok(vec![at.text()?]),
    }
}

/// `ports:`, short (`"8080:80"`, `"80"`, `"8080:80/udp"`, `"8000-8001:80-81"`, `80`) or long
/// (`{target, published, protocol, mode}`) syntax.
fn read_ports(e: &Entry<'_>) -> Result<Vec<PortConfig>, ComposeError> {
    let mut out = Vec::new();
    for (path, node) in e.at().items()? {
        let at = At { node, path: &path };
        if let Value::Map(_) = node.value {
            let mut p = PortConfig {
                protocol: "tcp".into(),
                publish_mode: "ingress".into(),
                ..Default::default()
            };
            for f in at.entries()? {
                let v = f.at();
                match f.key {
                    "target" => p.target_port = port_number(v, &v.text()?)?,
                    "published" => p.published_port = port_number(v, &v.text()?)?,
                    "protocol" => p.protocol = v.text()?,
                    "mode" => p.publish_mode = v.text()?,
                    "name" | "app_protocol" => {}
                    "host_ip" => {
                        return Err(v.error("host_ip is not supported: a published port answers on every address of the node"))
                    }
                    other => return Err(v.error(format!("unknown port key {other:?}"))),
                }
            }
            if p.target_port == 0 {
                return Err(at.error("the port has no target"));
            }
            out.push(p);
            continue;
        }
        out.extend(short_port(at, &at.text()?)?);
    }
    Ok(out)
}

fn port_number(at: At<'_>, text: &str) -> Result<u32, ComposeError> {
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=65535).contains(n))
        .ok_or_else(|| at.error(format!("invalid port {text:?}: a number from 1 to 65535")))
}

/// A range `A-B` (or one port) as its numbers.
fn port_range(at: At<'_>, text: &str) -> Result<Vec<u32>, ComposeError> {
    match text.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (port_number(at, a)?, port_number(at, b)?);
            if a > b {
                return Err(at.error(format!("invalid port range {text:?}")));
            }
            Ok((a..=b).collect())
        }
        None => Ok(vec![port_number(at, text)?]),
    }
}

fn short_port(at: At<'_>, text: &str) -> Result<Vec<PortConfig>, ComposeError> {
    let (ports, protocol) = text.split_once('/').unwrap_or((text, "tcp"));
    let parts: Vec<&str> = ports.split(':').collect();
    let (published, target) = match parts.as_slice() {
        [target] => (None, *target),
        [published, target] => (Some(*published), *target),
        _ => {
            return Err(at.error(format!(
                "invalid port {text:?}: host addresses are not supported; use PUBLISHED:TARGET[/PROTOCOL]"
            )))
        }
    };
    let targets = port_range(at, target)?;
    let published = match published {
        Some(p) => port_range(at, p)?,
        None => Vec::new(),
    };
    if !published.is_empty() && published.len() != targets.len() {
        return Err(at.error(format!("invalid port {text:?}: the ranges differ in length")));
    }
    Ok(targets
        .iter()
        .enumerate()
        .map(|(i, t)| PortConfig {
            target_port: *t,
            published_port: published.get(i).copied().unwrap_or(0),
            protocol: protocol.to_string(),
            publish_mode: "ingress".into(),
            ..Default::default()
        })
        .collect())
}

/// A service's `networks:`: a list of keys, or a mapping of keys to `{aliases: [...]}`;
/// each must be a top-level network (or `default`).
fn read_networks(
    e: &Entry<'_>,
    r: &mut Reader,
) -> Result<Vec<NetworkAttachmentConfig>, ComposeError> {
    let known = |at: At<'_>, key: &str, r: &Reader| {
        if key == super::compose::DEFAULT_NETWORK || r.networks.iter().any(|n| n == key) {
            Ok(())
        } else {
            Err(at.error(format!("network {key} is not defined under the top-level networks key")))
        }
    };
    let mut out = Vec::new();
    if let Value::Seq(_) = e.node.value {
        for (path, node) in e.at().items()? {
            let at = At { node, path: &path };
            let key = at.text()?;
            known(at, &key, r)?;
            out.push(NetworkAttachmentConfig { target: key, aliases: Vec::new() });
        }
        return Ok(out);
    }
    for n in e.at().entries()? {
        known(n.at(), n.key, r)?;
        let mut a = NetworkAttachmentConfig { target: n.key.to_string(), aliases: Vec::new() };
        for f in n.at().entries()? {
            match f.key {
                "aliases" => a.aliases = f.at().strings()?,
                _ => r.skip(&f),
            }
        }
        out.push(a);
    }
    Ok(out)
}
