//! Docker's flag values turned into parts of a service spec: sizes, CPUs, policies, secret
//! references, and `SpecFlags` applied onto a spec (create starts from defaults, update from the
//! current spec).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use shoal_proto::spec::secret::check_mode;
use shoal_proto::spec::service::{default_update, DEFAULT_RESTART_DELAY_MS};
use shoal_proto::*;

use super::args::SpecFlags;

/// Parses sizes like Docker's flags: `64m`, `1g`, `512k`, `1048576`.
pub fn parse_bytes(s: &str) -> Result<i64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num.parse().map_err(|_| format!("invalid size {s:?}: use e.g. 64m, 1g"))?;
    if !(n >= 0.0 && n.is_finite()) {
        return Err(format!("invalid size {s:?}: must not be negative"));
    }
    Ok((n * mult as f64) as i64)
}

/// Parses CPU counts (`0.5`, `2`) into nano-CPUs.
pub fn parse_cpus(s: &str) -> Result<i64, String> {
    let n: f64 = s.trim().parse().map_err(|_| format!("invalid CPU count {s:?}: use e.g. 0.5"))?;
    if !(n >= 0.0 && n.is_finite()) {
        return Err(format!("invalid CPU count {s:?}: must not be negative"));
    }
    Ok((n * 1e9) as i64)
}

pub(super) fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

pub(super) fn restart_condition(s: &str) -> Result<RestartCondition> {
    Ok(match s {
        "any" => RestartCondition::Any,
        "on-failure" => RestartCondition::OnFailure,
        "none" => RestartCondition::None,
        o => bail!("invalid restart condition {o:?}: use any, on-failure or none"),
    })
}

pub(super) fn failure_action(s: &str) -> Result<FailureAction> {
    Ok(match s {
        "pause" => FailureAction::Pause,
        "continue" => FailureAction::Continue,
        "rollback" => FailureAction::Rollback,
        o => bail!("invalid failure action {o:?}: use pause, continue or rollback"),
    })
}

pub(super) fn update_order(s: &str) -> Result<UpdateOrder> {
    Ok(match s {
        "stop-first" => UpdateOrder::StopFirst,
        "start-first" => UpdateOrder::StartFirst,
        o => bail!("invalid update order {o:?}: use stop-first or start-first"),
    })
}

pub(super) fn split_kv(list: &[String], what: &str) -> Result<Vec<(String, String)>> {
    list.iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("invalid {what} {kv:?}: expected KEY=VALUE"),
        })
        .collect()
}

pub(super) fn parse_ulimit(s: &str) -> Result<Ulimit> {
    let bad = || anyhow::anyhow!("invalid ulimit {s:?}: expected NAME=SOFT[:HARD]");
    let (name, vals) = s.split_once('=').ok_or_else(bad)?;
    let (soft, hard) = vals.split_once(':').unwrap_or((vals, vals));
    Ok(Ulimit {
        name: name.to_string(),
        soft: soft.parse().map_err(|_| bad())?,
        hard: hard.parse().map_err(|_| bad())?,
    })
}

/// `--mount type=volume|bind|tmpfs,source=…,target=…[,readonly][,volume-driver=local]
/// [,volume-opt=K=V][,tmpfs-size=64m][,bind-propagation=…]` (Docker's keys and aliases).
pub fn parse_mount(s: &str) -> Result<Mount> {
    let mut m = Mount { r#type: "volume".into(), ..Default::default() };
    for part in s.split(',') {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        match k.trim() {
            "type" => m.r#type = v.to_string(),
            "source" | "src" => m.source = v.to_string(),
            "target" | "destination" | "dst" => m.target = v.to_string(),
            "readonly" | "ro" => {
                m.read_only = match v {
                    "" | "true" | "1" => true,
                    "false" | "0" => false,
                    _ => bail!("--mount {s}: readonly is true or false"),
                }
            }
            "volume-driver" if v == "local" => {}
            "volume-driver" => bail!("--mount {s}: only the local volume driver exists"),
            "volume-nocopy" => {
                m.no_copy = match v {
                    "" | "true" | "1" => true,
                    "false" | "0" => false,
                    _ => bail!("--mount {s}: volume-nocopy is true or false"),
                }
            }
            "volume-label" => {
                let (lk, lv) = v.split_once('=').unwrap_or((v, ""));
                if lk.is_empty() {
                    bail!("--mount {s}: volume-label is KEY=VALUE");
                }
                m.volume_labels.insert(lk.to_string(), lv.to_string());
            }
            "volume-opt" => bail!(
                "--mount {s}: the local driver here keeps a volume as a directory on the node and takes no options"
            ),
            "tmpfs-size" => {
                let n = parse_bytes(v).map_err(anyhow::Error::msg)?;
                m.tmpfs_size = u64::try_from(n)
                    .map_err(|_| anyhow::anyhow!("--mount {s}: a size is 0 or more"))?;
            }
            "tmpfs-mode" => {
                m.tmpfs_mode = u32::from_str_radix(v, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| anyhow::anyhow!("--mount {s}: tmpfs-mode is octal, such as 1770"))?
            }
            "bind-propagation" => m.bind_propagation = v.to_string(),
            other => bail!("--mount {s}: unknown key {other:?}"),
        }
    }
    if !matches!(m.r#type.as_str(), "volume" | "bind" | "tmpfs") {
        bail!("--mount {s}: type is volume, bind or tmpfs");
    }
    if m.target.is_empty() {
        bail!("--mount {s}: give a target=/PATH");
    }
    if m.r#type != "tmpfs" && m.source.is_empty() {
        bail!("--mount {s}: give a source (a volume's name, or a path on the node)");
    }
    Ok(m)
}

/// `--secret`/`--config`: `NAME`, or `source=NAME,target=T,uid=U,gid=G,mode=0400[,follow]`
/// (the mode is octal; `follow` moves the service to each new version of the secret).
pub fn parse_secret_ref(s: &str) -> Result<SecretReference> {
    let mut r = SecretReference::default();
    if !s.contains('=') && !s.contains(',') {
        r.secret_name = s.to_string();
        return Ok(r);
    }
    for part in s.split(',') {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let id =
            |v: &str| v.parse::<u32>().map_err(|_| anyhow::anyhow!("invalid {k} {v:?} in {s:?}"));
        match k.trim() {
            "source" | "src" => r.secret_name = v.to_string(),
            "target" => r.target = v.to_string(),
            "uid" => r.uid = id(v)?,
            "gid" => r.gid = id(v)?,
            "mode" => r.mode = parse_mode(v).with_context(|| format!("in {s:?}"))?,
            "follow" => {
                r.follow = match v {
                    "" | "true" => true,
                    "false" => false,
                    _ => {
                        bail!("invalid follow {v:?} in {s:?}: follow, follow=true or follow=false")
                    }
                }
            }
            _ => bail!(
                "invalid option {part:?} in {s:?}: use source, target, uid, gid, mode or follow"
            ),
        }
    }
    if r.secret_name.is_empty() {
        bail!("{s:?} names no source: use NAME or source=NAME,…");
    }
    Ok(r)
}

/// A file mode in octal (`0400`, `400`, `0o400`).
pub fn parse_mode(v: &str) -> Result<u32> {
    let digits = v.strip_prefix("0o").unwrap_or(v);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if check_mode(m).is_ok() && !digits.is_empty() => Ok(m),
        _ => bail!("invalid mode {v:?}: use octal, like 0400"),
    }
}

/// `--secret-rm` then `--secret-add`: an added reference replaces one of the same name.
pub(super) fn edit_refs(
    list: &mut Vec<SecretReference>,
    add: &[String],
    rm: &[String],
) -> Result<()> {
    let add: Vec<SecretReference> =
        add.iter().map(|a| parse_secret_ref(a)).collect::<Result<_>>()?;
    list.retain(|r| {
        let named = |n: &String| *n == r.secret_name || *n == r.secret_id;
        !rm.iter().any(named) && !add.iter().any(|a| a.secret_name == r.secret_name)
    });
    list.extend(add);
    Ok(())
}

pub(super) fn pref(p: &str) -> Result<String> {
    match p.split_once('=') {
        Some(("spread", label)) if !label.is_empty() => Ok(label.to_string()),
        _ => bail!("invalid placement preference {p:?}: use spread=node.labels.NAME"),
    }
}

impl SpecFlags {
    /// Applies the flags that were given to `spec`, leaving everything else as it was.
    pub fn apply(&self, spec: &mut ServiceSpec) -> Result<()> {
        self.apply_scale(spec);
        self.apply_endpoint(spec)?;
        self.apply_restart(spec)?;
        self.apply_rollouts(spec)?;
        let c = spec.container.get_or_insert_with(Default::default);
        self.apply_security(c)?;
        self.apply_health(c);
        self.apply_process(c)?;
        Ok(())
    }

    /// The endpoint mode.
    fn apply_endpoint(&self, spec: &mut ServiceSpec) -> Result<()> {
        if let Some(m) = &self.endpoint_mode {
            let mode = match m.as_str() {
                "vip" => EndpointMode::Vip,
                "dnsrr" => EndpointMode::Dnsrr,
                _ => bail!("invalid --endpoint-mode {m:?}: use vip or dnsrr"),
            };
            spec.endpoint.get_or_insert_with(Default::default).set_mode(mode);
        }
        Ok(())
    }

    /// Replicas, placement limits and resources.
    fn apply_scale(&self, spec: &mut ServiceSpec) {
        set(&mut spec.replicas, self.replicas);
        let placement = spec.placement.get_or_insert_with(Default::default);
        set(&mut placement.max_replicas_per_node, self.max_per_node);
        let res = spec.resources.get_or_insert_with(Default::default);
        let limits = res.limits.get_or_insert_with(Default::default);
        set(&mut limits.memory_bytes, self.limit_memory);
        set(&mut limits.nano_cpus, self.limit_cpu);
        let reserve = res.reservations.get_or_insert_with(Default::default);
        set(&mut reserve.memory_bytes, self.reserve_memory);
        set(&mut reserve.nano_cpus, self.reserve_cpu);
        let c = spec.container.get_or_insert_with(Default::default);
        set(&mut c.pids_limit, self.limit_pids);
    }

    fn apply_restart(&self, spec: &mut ServiceSpec) -> Result<()> {
        let restart = spec.restart.get_or_insert(RestartPolicy {
            delay_ms: DEFAULT_RESTART_DELAY_MS,
            ..Default::default()
        });
        if let Some(v) = &self.restart_condition {
            restart.set_condition(restart_condition(v)?);
        }
        set(&mut restart.delay_ms, self.restart_delay.map(ms));
        set(&mut restart.max_attempts, self.restart_max_attempts);
        set(&mut restart.window_ms, self.restart_window.map(ms));
        Ok(())
    }

    /// The update and rollback configs.
    fn apply_rollouts(&self, spec: &mut ServiceSpec) -> Result<()> {
        let update = Rollout {
            parallelism: self.update_parallelism,
            delay: self.update_delay,
            failure_action: &self.update_failure_action,
            order: &self.update_order,
            monitor: self.update_monitor,
            max_failure_ratio: self.update_max_failure_ratio,
        };
        update.apply(spec.update.get_or_insert_with(default_update))?;
        let rollback = Rollout {
            parallelism: self.rollback_parallelism,
            delay: self.rollback_delay,
            failure_action: &self.rollback_failure_action,
            order: &self.rollback_order,
            monitor: self.rollback_monitor,
            max_failure_ratio: self.rollback_max_failure_ratio,
        };
        let r = spec.rollback.get_or_insert_with(default_update);
        rollback.apply(r)?;
        if r.failure_action() == FailureAction::Rollback {
            bail!("a rollback cannot itself roll back: use --rollback-failure-action pause or continue");
        }
        Ok(())
    }

    /// `--read-only`, `--userns`, `--init` and every `--security-opt`.
    fn apply_security(&self, c: &mut ContainerSpec) -> Result<()> {
        set(&mut c.read_only, self.read_only);
        set(&mut c.userns, self.userns);
        set(&mut c.init, self.init);
        for opt in &self.security_opt {
            security_opt(c, opt)?;
        }
        Ok(())
    }

    fn apply_health(&self, c: &mut ContainerSpec) {
        if self.no_healthcheck {
            c.healthcheck = None;
            return;
        }
        let touches_health = self.health_cmd.is_some()
            || self.health_interval.is_some()
            || self.health_timeout.is_some()
            || self.health_retries.is_some()
            || self.health_start_period.is_some();
        if !touches_health {
            return;
        }
        let h = c.healthcheck.get_or_insert_with(Default::default);
        if let Some(cmd) = &self.health_cmd {
            h.test = vec!["CMD-SHELL".into(), cmd.clone()];
        }
        set(&mut h.interval_ms, self.health_interval.map(ms));
        set(&mut h.timeout_ms, self.health_timeout.map(ms));
        set(&mut h.retries, self.health_retries);
        set(&mut h.start_period_ms, self.health_start_period.map(ms));
    }

    /// Working directory, user, hostname, stopping, and the entrypoint.
    fn apply_process(&self, c: &mut ContainerSpec) -> Result<()> {
        set(&mut c.workdir, self.workdir.clone());
        set(&mut c.user, self.user.clone());
        set(&mut c.hostname, self.hostname.clone());
        if !self.dns.is_empty() || !self.dns_search.is_empty() || !self.dns_option.is_empty() {
            let d = c.dns.get_or_insert_with(Default::default);
            for (field, flag) in [
                (&mut d.nameservers, &self.dns),
                (&mut d.search, &self.dns_search),
                (&mut d.options, &self.dns_option),
            ] {
                if !flag.is_empty() {
                    *field = flag.clone();
                }
            }
        }
        set(&mut c.stop_signal, self.stop_signal.clone());
        set(&mut c.stop_grace_ms, self.stop_grace_period.map(ms));
        if let Some(v) = &self.entrypoint {
            c.command = command_line(v, "--entrypoint")?;
        }
        Ok(())
    }
}

/// Overwrites `field` when the flag was given.
fn set<T>(field: &mut T, flag: Option<T>) {
    if let Some(v) = flag {
        *field = v;
    }
}

/// Splits a command line given as one flag value the way a POSIX shell would (quotes and
/// backslashes group words), so `--entrypoint "sh -c 'echo hi'"` is three words, not four.
pub fn command_line(line: &str, flag: &str) -> Result<Vec<String>> {
    shell_words::split(line).with_context(|| format!("invalid {flag} {line:?}"))
}

/// One `--security-opt` (also compose's `security_opt:` entries).
pub(crate) fn security_opt(c: &mut ContainerSpec, opt: &str) -> Result<()> {
    match opt.split_once(['=', ':']) {
        Some(("seccomp", "default")) => c.seccomp = String::new(),
        Some(("seccomp", "unconfined")) => c.seccomp = "unconfined".into(),
        Some(("seccomp", path)) => {
            c.seccomp = std::fs::read_to_string(path)
                .with_context(|| format!("reading seccomp profile {path}"))?;
        }
        Some(("no-new-privileges", v)) => {
            c.allow_new_privileges = match v {
                "true" => false,
                "false" => true,
                _ => bail!("invalid --security-opt {opt:?}: no-new-privileges=true|false"),
            }
        }
        Some(("landlock", v)) => {
            c.landlock_off = match v {
                "on" => false,
                "off" => true,
                _ => bail!("invalid --security-opt {opt:?}: landlock=on|off"),
            }
        }
        Some(("label", v)) => {
            let o = c.selinux.get_or_insert_with(Default::default);
            match v.split_once(':') {
                _ if v == "disable" => o.disable = true,
                Some(("type", t)) => o.r#type = t.to_string(),
                Some(("level", l)) => o.level = l.to_string(),
                Some(("user" | "role", _)) => bail!(
                    "unsupported --security-opt {opt:?}: tasks keep SELinux user system_u and role system_r; set label=type:T or label=level:L"
                ),
                _ => bail!("invalid --security-opt {opt:?}: label=disable|type:TYPE|level:LEVEL"),
            }
            shoal_proto::spec::mac::check_selinux(o)?;
        }
        Some(("apparmor", "")) => bail!("invalid --security-opt {opt:?}: apparmor=NAME|unconfined"),
        Some(("apparmor", v)) => {
            shoal_proto::spec::mac::check_apparmor(v)?;
            c.apparmor = if v == shoal_proto::spec::mac::APPARMOR_DEFAULT { "" } else { v }.into();
        }
        _ => bail!(
            "unsupported --security-opt {opt:?}: use seccomp=default|unconfined|PROFILE.json, no-new-privileges=true|false, landlock=on|off, label=disable|type:T|level:L or apparmor=NAME|unconfined"
        ),
    }
    Ok(())
}

/// The flags of one rollout config: `--update-*` or `--rollback-*`.
struct Rollout<'a> {
    parallelism: Option<u64>,
    delay: Option<Duration>,
    failure_action: &'a Option<String>,
    order: &'a Option<String>,
    monitor: Option<Duration>,
    max_failure_ratio: Option<f32>,
}

impl Rollout<'_> {
    fn apply(&self, u: &mut UpdateConfig) -> Result<()> {
        set(&mut u.parallelism, self.parallelism);
        set(&mut u.delay_ms, self.delay.map(ms));
        if let Some(v) = self.failure_action {
            u.set_failure_action(failure_action(v)?);
        }
        if let Some(v) = self.order {
            u.set_order(update_order(v)?);
        }
        set(&mut u.monitor_ms, self.monitor.map(ms));
        if let Some(v) = self.max_failure_ratio {
            if !(0.0..=1.0).contains(&v) {
                bail!("invalid max failure ratio {v}: must be between 0 and 1");
            }
            u.max_failure_ratio = v;
        }
        Ok(())
    }
}

/// `--network`: `NAME`, or `name=NAME,alias=A[,alias=B]` (also `target=` for the name).
pub fn parse_network(s: &str) -> Result<NetworkAttachmentConfig> {
    let mut a = NetworkAttachmentConfig::default();
    if !s.contains('=') {
        a.target = s.to_string();
        return Ok(a);
    }
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("name" | "target", v)) => a.target = v.to_string(),
            Some(("alias", v)) => a.aliases.push(v.to_string()),
            _ => bail!("invalid --network {s:?}: use NAME or name=NAME,alias=ALIAS"),
        }
    }
    if a.target.is_empty() {
        bail!("invalid --network {s:?}: it names no network (name=NAME)");
    }
    Ok(a)
}

/// `--network-rm` then `--network-add`: an added attachment replaces one to the same network.
pub(super) fn edit_networks(
    list: &mut Vec<NetworkAttachmentConfig>,
    add: &[String],
    rm: &[String],
) -> Result<()> {
    let add: Vec<NetworkAttachmentConfig> =
        add.iter().map(|a| parse_network(a)).collect::<Result<_>>()?;
    list.retain(|n| !rm.contains(&n.target) && !add.iter().any(|a| a.target == n.target));
    list.extend(add);
    Ok(())
}

/// `--publish`: Docker's short form `[PUBLISHED:]TARGET[/PROTOCOL]` (no published port: the
/// managers choose one) or the long form `published=P,target=T,protocol=tcp,mode=ingress`.
pub fn parse_publish(s: &str) -> Result<PortConfig> {
    let bad = |why: &str| anyhow::anyhow!("invalid --publish {s:?}: {why}");
    let num = |v: &str, what: &str| -> Result<u32> {
        v.parse::<u32>().ok().filter(|n| (1..=65535).contains(n)).ok_or_else(|| {
            bad(&format!(
                "{what} port {v:?} is not a number from 1 to 65535 (ranges are not supported)"
            ))
        })
    };
    let mut p =
        PortConfig { protocol: "tcp".into(), publish_mode: "ingress".into(), ..Default::default() };
    if s.contains('=') {
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("published", v)) => p.published_port = num(v, "published")?,
                Some(("target", v)) => p.target_port = num(v, "target")?,
                Some(("protocol", v)) => p.protocol = v.to_string(),
                Some(("mode", v)) => p.publish_mode = v.to_string(),
                _ => {
                    return Err(bad(
                        "use published=P,target=T[,protocol=tcp|udp][,mode=ingress|host]",
                    ))
                }
            }
        }
        if p.target_port == 0 {
            return Err(bad("it names no target port (target=PORT)"));
        }
    } else {
        let (ports, protocol) = s.split_once('/').unwrap_or((s, "tcp"));
        p.protocol = protocol.to_string();
        match ports.split_once(':') {
            Some((published, target)) => {
                p.published_port = num(published, "published")?;
                p.target_port = num(target, "target")?;
            }
            None => p.target_port = num(ports, "target")?,
        }
    }
    if !matches!(p.protocol.as_str(), "tcp" | "udp") {
        return Err(bad("the protocol must be tcp or udp"));
    }
    if !matches!(p.publish_mode.as_str(), "ingress" | "host") {
        return Err(bad("the mode must be ingress or host"));
    }
    Ok(p)
}

/// `--publish-rm` then `--publish-add`: a port is known by its published number and protocol;
/// an added one replaces one with the same. Removing a port the service does not publish is
/// an error (a typo should not pass for a change).
pub(super) fn edit_ports(list: &mut Vec<PortConfig>, add: &[String], rm: &[String]) -> Result<()> {
    let add: Vec<PortConfig> = add.iter().map(|a| parse_publish(a)).collect::<Result<_>>()?;
    for r in rm {
        let (number, protocol) = if r.contains('=') || r.contains(':') {
            let p = parse_publish(r)?;
            (p.published_port, p.protocol)
        } else {
            let (n, proto) = r.split_once('/').unwrap_or((r, "tcp"));
            let n = n.parse::<u32>().map_err(|_| {
                anyhow::anyhow!("invalid --publish-rm {r:?}: use PUBLISHED[/PROTOCOL]")
            })?;
            (n, proto.to_string())
        };
        let before = list.len();
        list.retain(|p| !(p.published_port == number && p.protocol == protocol));
        if list.len() == before {
            bail!("invalid --publish-rm {r:?}: the service does not publish {number}/{protocol}");
        }
    }
    list.retain(|p| {
        !add.iter().any(|a| {
            a.protocol == p.protocol
                && a.published_port != 0
                && a.published_port == p.published_port
        })
    });
    list.extend(add);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_take_dockers_keys_and_refuse_what_they_cannot_honour() {
        let m = parse_mount(
            "type=volume,src=pg,dst=/var/lib/postgresql/data,volume-nocopy,volume-label=team=db",
        )
        .unwrap();
        assert_eq!((m.source.as_str(), m.target.as_str()), ("pg", "/var/lib/postgresql/data"));
        assert!(m.no_copy && !m.read_only);
        assert_eq!(m.volume_labels["team"], "db");
        let t = parse_mount("type=tmpfs,target=/scratch,tmpfs-size=64m,tmpfs-mode=1770").unwrap();
        assert_eq!((t.tmpfs_size, t.tmpfs_mode), (64 << 20, 0o1770));
        let b = parse_mount("type=bind,source=/srv/conf,target=/etc/app,readonly").unwrap();
        assert!(b.read_only);
        for (bad, why) in [
            ("type=volume,source=v,target=/d,volume-opt=type=nfs", "takes no options"),
            ("type=volume,source=v,target=/d,volume-driver=rexray", "local volume driver"),
            ("type=tmpfs,target=/d,tmpfs-mode=999", "octal"),
            ("type=volume,source=v", "target"),
            ("type=bind,target=/d", "source"),
            ("type=nfs,source=v,target=/d", "volume, bind or tmpfs"),
            ("type=volume,source=v,target=/d,colour=red", "unknown key"),
        ] {
            let e = parse_mount(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn security_opt_reads_selinux_labels_and_apparmor_profiles() {
        let mut c = ContainerSpec::default();
        security_opt(&mut c, "label=type:spc_t").unwrap();
        security_opt(&mut c, "label:level:s0:c1,c2").unwrap();
        let o = c.selinux.clone().unwrap();
        assert_eq!((o.r#type.as_str(), o.level.as_str(), o.disable), ("spc_t", "s0:c1,c2", false));
        let e = security_opt(&mut c, "label=disable").unwrap_err().to_string();
        assert!(e.contains("cannot be combined"), "{e}");
        let mut d = ContainerSpec::default();
        security_opt(&mut d, "label=disable").unwrap();
        assert!(d.selinux.as_ref().unwrap().disable);
        security_opt(&mut c, "apparmor=unconfined").unwrap();
        assert_eq!(c.apparmor, "unconfined");
        security_opt(&mut c, "apparmor=shoal-default").unwrap();
        assert_eq!(c.apparmor, "", "the default profile is stored as no choice");
        for (bad, why) in [
            ("label=user:staff_u", "system_u"),
            ("label=role:sysadm_r", "system_u"),
            ("label=colour:red", "label=disable|type:TYPE|level:LEVEL"),
            ("label=type:container t", "an SELinux type is"),
            ("label=level:s0:c1024", "an SELinux level is"),
            ("apparmor=", "apparmor=NAME|unconfined"),
            ("apparmor=../etc/passwd", "a profile name is"),
            ("selinux=on", "unsupported --security-opt"),
        ] {
            let e = security_opt(&mut ContainerSpec::default(), bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
