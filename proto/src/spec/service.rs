//! Owns the rules of a service spec: Swarm's defaults, the caps, what makes a spec unusable,
//! and which part of a spec its tasks are made from.

use crate::{
    ContainerSpec, FailureAction, RestartCondition, RestartPolicy, ServiceMode, ServiceSpec, Task,
    TaskState, UpdateConfig,
};

use super::{parse_constraints, validate_spread, SpecError};

/// Tasks kept per slot (running one included) unless the spec says otherwise (Swarm's default).
pub const DEFAULT_HISTORY: u32 = 5;
/// Swarm's restart delay.
pub const DEFAULT_RESTART_DELAY_MS: u64 = 5_000;
/// Swarm's update monitor period.
pub const DEFAULT_MONITOR_MS: u64 = 5_000;
/// The longest service name.
pub const MAX_NAME: usize = 63;
/// The smallest memory limit a container can start with.
pub const MIN_MEMORY: i64 = 6 * 1024 * 1024;
/// The most replicas one service may ask for. Each replica is a task object (and up to its
/// history limit of old ones) that the managers store, replicate and schedule, and that one
/// update rolls through: ten thousand is well past any real service on one cluster, and keeps a
/// typo (or a `--replicas 18446744073709551615`) from making the managers build tasks until
/// they run out of memory.
pub const MAX_REPLICAS: u64 = 10_000;

/// Swarm's update (and rollback) defaults: one slot at a time, no delay, pause on failure,
/// 5 s monitor, no failures tolerated, stop the old task first.
pub fn default_update() -> UpdateConfig {
    UpdateConfig {
        parallelism: 1,
        delay_ms: 0,
        failure_action: FailureAction::Pause as i32,
        monitor_ms: DEFAULT_MONITOR_MS,
        max_failure_ratio: 0.0,
        order: 0,
    }
}

/// The label that marks a volume a compose file made for one service's own use (`- /data`):
/// `volume prune` without `--all` removes only these, as in Docker.
pub const ANONYMOUS_VOLUME: &str = "com.docker.volume.anonymous";

/// Fills the defaults a spec leaves out and refuses what cannot work, with a message that
/// names the bad field.
pub fn normalize(mut spec: ServiceSpec) -> Result<ServiceSpec, SpecError> {
    validate_name(&spec.name)?;
    normalize_container(spec.container.get_or_insert_with(ContainerSpec::default))?;
    if ServiceMode::try_from(spec.mode).is_err() {
        return Err(SpecError::Mode(spec.mode));
    }
    if spec.mode() == ServiceMode::Replicated && spec.replicas > MAX_REPLICAS {
        return Err(SpecError::Replicas(spec.replicas));
    }
    let placement = spec.placement.clone().unwrap_or_default();
    parse_constraints(&placement.constraints)?;
    validate_spread(&placement.spread)?;
    if let Some(r) = &spec.resources {
        validate_resources(r)?;
    }
    let restart = spec
        .restart
        .get_or_insert(RestartPolicy { delay_ms: DEFAULT_RESTART_DELAY_MS, ..Default::default() });
    if RestartCondition::try_from(restart.condition).is_err() {
        return Err(SpecError::RestartCondition(restart.condition));
    }
    for (what, u) in [
        ("update", spec.update.get_or_insert_with(default_update)),
        ("rollback", spec.rollback.get_or_insert_with(default_update)),
    ] {
        if !(0.0..=1.0).contains(&u.max_failure_ratio) || u.max_failure_ratio.is_nan() {
            return Err(SpecError::FailureRatio { what });
        }
        if FailureAction::try_from(u.failure_action).is_err() {
            return Err(SpecError::FailureAction { what, value: u.failure_action });
        }
    }
    if spec.history_limit == 0 {
        spec.history_limit = DEFAULT_HISTORY;
    }
    if let Some(dns) = spec.container.as_ref().and_then(|c| c.dns.as_ref()) {
        for ns in &dns.nameservers {
            if ns.parse::<std::net::IpAddr>().is_err() {
                return Err(SpecError::Dns {
                    value: ns.clone(),
                    why: "a nameserver is an IP address",
                });
            }
        }
        for word in dns.search.iter().chain(&dns.options) {
            if word.is_empty()
                || word.len() > 253
                || word.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(SpecError::Dns { value: word.clone(), why: "one word, no spaces" });
            }
        }
    }
    if let Some(e) = spec.endpoint.as_mut() {
        if crate::EndpointMode::try_from(e.mode).is_err() {
            return Err(SpecError::Port {
                value: e.mode.to_string(),
                why: "unknown endpoint mode".into(),
            });
        }
        super::network::normalize_ports(&mut e.ports)?;
    }
    Ok(spec)
}

/// The image and environment rules, and the health check's defaults once it has a test.
fn normalize_container(c: &mut ContainerSpec) -> Result<(), SpecError> {
    if c.image.trim().is_empty() {
        return Err(SpecError::NoImage);
    }
    if let Some(kv) = c.env.iter().find(|kv| kv.is_empty() || kv.starts_with('=')) {
        return Err(SpecError::Env(kv.clone()));
    }
    super::caps::effective(&c.cap_add, &c.cap_drop).map_err(SpecError::Capability)?;
    if let Some(o) = &c.selinux {
        super::mac::check_selinux(o)?;
    }
    super::mac::check_apparmor(&c.apparmor)?;
    if let Some(h) = c.healthcheck.as_mut() {
        if !h.test.is_empty() && h.retries == 0 {
            h.retries = 3;
            h.interval_ms = if h.interval_ms == 0 { 30_000 } else { h.interval_ms };
            h.timeout_ms = if h.timeout_ms == 0 { 30_000 } else { h.timeout_ms };
        }
    }
    Ok(())
}

/// No negative figures, a memory limit a container can start with, reservations within limits.
fn validate_resources(r: &crate::ResourceRequirements) -> Result<(), SpecError> {
    let limits = r.limits.unwrap_or_default();
    let reserve = r.reservations.unwrap_or_default();
    for (what, v) in [
        ("memory limit", limits.memory_bytes),
        ("CPU limit", limits.nano_cpus),
        ("memory reservation", reserve.memory_bytes),
        ("CPU reservation", reserve.nano_cpus),
    ] {
        if v < 0 {
            return Err(SpecError::Negative { what });
        }
    }
    if limits.memory_bytes != 0 && limits.memory_bytes < MIN_MEMORY {
        return Err(SpecError::MemoryLimit(limits.memory_bytes));
    }
    if limits.memory_bytes != 0 && reserve.memory_bytes > limits.memory_bytes {
        return Err(SpecError::ReservationAboveLimit { what: "memory" });
    }
    if limits.nano_cpus != 0 && reserve.nano_cpus > limits.nano_cpus {
        return Err(SpecError::ReservationAboveLimit { what: "CPU" });
    }
    Ok(())
}

/// What an update may not change: a service keeps its name and its mode.
pub fn check_update(current: &ServiceSpec, new: &ServiceSpec) -> Result<(), SpecError> {
    if new.name != current.name {
        return Err(SpecError::Rename { from: current.name.clone(), to: new.name.clone() });
    }
    if new.mode != current.mode {
        return Err(SpecError::ModeChange);
    }
    Ok(())
}

/// Service names: 1–63 letters, digits, `-`, `_` or `.`, starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(SpecError::ServiceName(name.to_string()))
    }
}

/// The part of a spec that tasks are made from: a change here needs new tasks (a rolling
/// update); a change elsewhere (replicas, name, labels, update settings) does not.
pub fn task_part(spec: &ServiceSpec) -> ServiceSpec {
    ServiceSpec {
        container: spec.container.clone(),
        placement: spec.placement.clone(),
        resources: spec.resources,
        restart: spec.restart,
        mode: spec.mode,
        // A task joins its networks when it starts: another set of networks is new tasks.
        networks: spec.networks.clone(),
        endpoint: endpoint_part(spec.endpoint.as_ref()),
        ..Default::default()
    }
}

/// What of a service's endpoint its tasks carry: the ports they publish in host mode (their
/// node forwards to them), and whether they join the routing mesh at all. Which ports the
/// mesh publishes, and the endpoint mode, are the nodes' business: changing them leaves the
/// tasks be.
fn endpoint_part(e: Option<&crate::EndpointSpec>) -> Option<crate::EndpointSpec> {
    let e = e?;
    let mut ports: Vec<crate::PortConfig> =
        e.ports.iter().filter(|p| p.publish_mode == "host").cloned().collect();
    if e.ports.iter().any(|p| p.publish_mode != "host") {
        ports.push(crate::PortConfig { publish_mode: "ingress".into(), ..Default::default() });
    }
    (!ports.is_empty()).then_some(crate::EndpointSpec { mode: 0, ports })
}

/// Whether a task still counts toward its service (its desired state is at most RUNNING).
pub fn is_live(t: &Task) -> bool {
    t.desired_state <= TaskState::Running as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            container: Some(ContainerSpec { image: "busybox".into(), ..Default::default() }),
            replicas: 3,
            ..Default::default()
        }
    }

    #[test]
    fn replicas_beyond_the_cap_are_refused_naming_it() {
        let mut s = spec("web");
        s.replicas = MAX_REPLICAS;
        assert!(normalize(s.clone()).is_ok());
        s.replicas = u64::MAX;
        let err = tonic::Status::from(normalize(s.clone()).unwrap_err());
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("at most 10000"), "{}", err.message());
        // A global service ignores replicas.
        s.mode = ServiceMode::Global as i32;
        assert!(normalize(s).is_ok());
    }

    #[test]
    fn defaults_match_swarm() {
        let s = normalize(spec("web")).unwrap();
        let r = s.restart.unwrap();
        assert_eq!(r.condition(), RestartCondition::Any);
        assert_eq!(r.delay_ms, 5_000);
        let u = s.update.unwrap();
        assert_eq!(
            (u.parallelism, u.monitor_ms, u.failure_action()),
            (1, 5_000, FailureAction::Pause)
        );
        assert_eq!(s.history_limit, 5);
    }

    #[test]
    fn bad_specs_are_refused_with_the_field_named() {
        let cases: Vec<(ServiceSpec, &str)> = vec![
            (spec("-web"), "invalid service name"),
            (spec(&"x".repeat(64)), "invalid service name"),
            (ServiceSpec { container: None, ..spec("web") }, "needs an image"),
            (
                ServiceSpec {
                    resources: Some(crate::ResourceRequirements {
                        limits: Some(crate::Resources { memory_bytes: 1024, nano_cpus: 0 }),
                        reservations: None,
                    }),
                    ..spec("web")
                },
                "below the minimum",
            ),
            (
                ServiceSpec {
                    placement: Some(crate::Placement {
                        constraints: vec!["node.labels.zone=east".into()],
                        ..Default::default()
                    }),
                    ..spec("web")
                },
                "constraint",
            ),
        ];
        for (s, want) in cases {
            let err = normalize(s).unwrap_err().to_string();
            assert!(err.contains(want), "{err} should mention {want}");
        }
    }

    #[test]
    fn messages_name_the_field_and_the_limit() {
        let cases = [
            (SpecError::MemoryLimit(1024), "the memory limit 1024 bytes is below the minimum of 6 MiB"),
            (
                SpecError::ReservationAboveLimit { what: "CPU" },
                "the CPU reservation is larger than the CPU limit",
            ),
            (SpecError::Replicas(10_001), "10001 replicas is more than a service may have (at most 10000)"),
            (
                SpecError::ServiceName("-w".into()),
                "invalid service name \"-w\": use 1–63 letters, digits, '-', '_' or '.', starting with a letter or digit",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.to_string(), want);
        }
    }

    #[test]
    fn updates_keep_the_name_and_the_mode() {
        let a = normalize(spec("web")).unwrap();
        check_update(&a, &ServiceSpec { replicas: 9, ..a.clone() }).unwrap();
        let e = check_update(&a, &ServiceSpec { name: "api".into(), ..a.clone() }).unwrap_err();
        assert_eq!(e.to_string(), "a service cannot be renamed (web → api)");
        let global = ServiceSpec { mode: ServiceMode::Global as i32, ..a.clone() };
        let e = check_update(&a, &global).unwrap_err();
        assert_eq!(e.to_string(), "a service's mode (replicated or global) cannot be changed");
    }

    #[test]
    fn replicas_and_update_settings_do_not_make_tasks_dirty() {
        let a = normalize(spec("web")).unwrap();
        let mut b = a.clone();
        b.replicas = 10;
        b.update.as_mut().unwrap().parallelism = 4;
        assert_eq!(task_part(&a), task_part(&b));
        b.container.as_mut().unwrap().env.push("A=1".into());
        assert_ne!(task_part(&a), task_part(&b));
    }

    #[test]
    fn publishing_makes_tasks_dirty_moving_a_mesh_port_does_not() {
        let port = |published, mode: &str| crate::PortConfig {
            published_port: published,
            target_port: 80,
            protocol: "tcp".into(),
            publish_mode: mode.into(),
            ..Default::default()
        };
        let with = |ports: Vec<crate::PortConfig>| {
            let mut s = normalize(spec("web")).unwrap();
            s.endpoint = Some(crate::EndpointSpec { ports, ..Default::default() });
            s
        };
        let none = normalize(spec("web")).unwrap();
        // Joining the routing mesh: the tasks need an address on it.
        assert_ne!(task_part(&none), task_part(&with(vec![port(8080, "ingress")])));
        // Another mesh port: the nodes forward it; the tasks stay.
        assert_eq!(
            task_part(&with(vec![port(8080, "ingress")])),
            task_part(&with(vec![port(8081, "ingress")]))
        );
        // Host-mode ports are the tasks' own.
        assert_ne!(
            task_part(&with(vec![port(9090, "host")])),
            task_part(&with(vec![port(9091, "host")]))
        );
    }

    #[test]
    fn dns_settings_are_addresses_and_single_words() {
        let with = |dns: crate::DnsConfig| {
            let mut s = spec("web");
            s.container.get_or_insert_with(Default::default).dns = Some(dns);
            normalize(s)
        };
        let ok = crate::DnsConfig {
            nameservers: vec!["10.0.0.53".into(), "fd00::53".into()],
            search: vec!["corp.example".into()],
            options: vec!["ndots:2".into()],
        };
        with(ok).unwrap();
        let bad =
            crate::DnsConfig { nameservers: vec!["dns.example".into()], ..Default::default() };
        assert!(with(bad).unwrap_err().to_string().contains("a nameserver is an IP address"));
        let bad = crate::DnsConfig { options: vec!["ndots:2 rotate".into()], ..Default::default() };
        assert!(with(bad).unwrap_err().to_string().contains("no spaces"));
    }
}
