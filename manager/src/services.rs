//! Owns the service half of the Control API: validating specs and filling Swarm's defaults,
//! creating, updating (new spec versions, rollback), scaling and removing services, listing
//! tasks, and node availability/labels. The orchestrator turns what is stored here into tasks.

use std::collections::HashMap;

use shoal_proto::{
    Availability, ContainerSpec, CreateServiceRequest, FailureAction, GetServiceRequest,
    ListServicesResponse, ListTasksRequest, ListTasksResponse, Node, RemoveServiceRequest,
    RemoveServiceResponse, RestartPolicy, Service, ServiceMode, ServiceResponse, ServiceSpec,
    ServiceSummary, Task, TaskState, UpdateConfig, UpdateNodeRequest, UpdateServiceRequest,
    UpdateState, UpdateStatus,
};
use tonic::Status;

use crate::control::resolve_node;
use crate::manager::{now_ms, Shared};
use crate::scheduler;
use crate::store::StoreError;

/// Tasks kept per slot (running one included) unless the spec says otherwise (Swarm's default).
pub const DEFAULT_HISTORY: u32 = 5;
/// Swarm's restart delay.
pub const DEFAULT_RESTART_DELAY_MS: u64 = 5_000;
/// Swarm's update monitor period.
pub const DEFAULT_MONITOR_MS: u64 = 5_000;
const MAX_NAME: usize = 63;
/// The smallest memory limit a container can start with.
const MIN_MEMORY: i64 = 6 * 1024 * 1024;
/// The most replicas one service may ask for. Each replica is a task object (and up to its
/// history limit of old ones) that the managers store, replicate and schedule, and that one
/// update rolls through: ten thousand is well past any real service on one cluster, and keeps a
/// typo (or a `--replicas 18446744073709551615`) from making the managers build tasks until
/// they run out of memory.
pub const MAX_REPLICAS: u64 = 10_000;
/// The most services one cluster may hold: every manager keeps and scans them all (listing,
/// name checks, orchestration), so their number is bounded like the replicas of each.
pub const MAX_SERVICES: usize = 10_000;

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

/// Fills the defaults a spec leaves out and refuses what cannot work, with a message that
/// names the bad field.
pub fn normalize(mut spec: ServiceSpec) -> Result<ServiceSpec, Status> {
    let bad = |m: String| Err(Status::invalid_argument(m));
    validate_name(&spec.name)?;
    let c = spec.container.get_or_insert_with(ContainerSpec::default);
    if c.image.trim().is_empty() {
        return bad("a service needs an image".into());
    }
    for kv in &c.env {
        if kv.is_empty() || kv.starts_with('=') {
            return bad(format!("bad environment variable {kv:?}: expected KEY=VALUE"));
        }
    }
    if let Some(h) = &c.healthcheck {
        if !h.test.is_empty() && h.retries == 0 {
            let mut h = h.clone();
            h.retries = 3;
            h.interval_ms = if h.interval_ms == 0 { 30_000 } else { h.interval_ms };
            h.timeout_ms = if h.timeout_ms == 0 { 30_000 } else { h.timeout_ms };
            c.healthcheck = Some(h);
        }
    }
    if ServiceMode::try_from(spec.mode).is_err() {
        return bad(format!("unknown service mode {}", spec.mode));
    }
    if spec.mode() == ServiceMode::Replicated && spec.replicas > MAX_REPLICAS {
        return bad(format!(
            "{} replicas is more than a service may have (at most {MAX_REPLICAS})",
            spec.replicas
        ));
    }
    let placement = spec.placement.clone().unwrap_or_default();
    scheduler::parse_constraints(&placement.constraints)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    scheduler::validate_spread(&placement.spread)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    if let Some(r) = &spec.resources {
        let limits = r.limits.unwrap_or_default();
        let reserve = r.reservations.unwrap_or_default();
        for (what, v) in [
            ("memory limit", limits.memory_bytes),
            ("CPU limit", limits.nano_cpus),
            ("memory reservation", reserve.memory_bytes),
            ("CPU reservation", reserve.nano_cpus),
        ] {
            if v < 0 {
                return bad(format!("the {what} cannot be negative"));
            }
        }
        if limits.memory_bytes != 0 && limits.memory_bytes < MIN_MEMORY {
            return bad(format!(
                "the memory limit {} bytes is below the minimum of 6 MiB",
                limits.memory_bytes
            ));
        }
        if limits.memory_bytes != 0 && reserve.memory_bytes > limits.memory_bytes {
            return bad("the memory reservation is larger than the memory limit".into());
        }
        if limits.nano_cpus != 0 && reserve.nano_cpus > limits.nano_cpus {
            return bad("the CPU reservation is larger than the CPU limit".into());
        }
    }
    let restart = spec
        .restart
        .get_or_insert(RestartPolicy { delay_ms: DEFAULT_RESTART_DELAY_MS, ..Default::default() });
    if shoal_proto::RestartCondition::try_from(restart.condition).is_err() {
        return bad(format!("unknown restart condition {}", restart.condition));
    }
    for (what, u) in [
        ("update", spec.update.get_or_insert_with(default_update)),
        ("rollback", spec.rollback.get_or_insert_with(default_update)),
    ] {
        if !(0.0..=1.0).contains(&u.max_failure_ratio) || u.max_failure_ratio.is_nan() {
            return bad(format!("the {what} max failure ratio must be between 0 and 1"));
        }
        if FailureAction::try_from(u.failure_action).is_err() {
            return bad(format!("unknown {what} failure action {}", u.failure_action));
        }
    }
    if spec.history_limit == 0 {
        spec.history_limit = DEFAULT_HISTORY;
    }
    Ok(spec)
}

fn validate_name(name: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "invalid service name {name:?}: use 1–{MAX_NAME} letters, digits, '-', '_' or '.', starting with a letter or digit"
        )))
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
        ..Default::default()
    }
}

/// Finds a service by full ID, unique ID prefix, or name.
pub fn resolve_service<'a>(
    services: &'a [Service],
    reference: &str,
) -> Result<&'a Service, Status> {
    if reference.is_empty() {
        return Err(Status::invalid_argument("name a service by ID, ID prefix or name"));
    }
    let name = |s: &Service| s.spec.as_ref().map(|p| p.name.as_str()) == Some(reference);
    if let Some(s) = services.iter().find(|s| s.id == reference || name(s)) {
        return Ok(s);
    }
    let by_prefix: Vec<_> = services.iter().filter(|s| s.id.starts_with(reference)).collect();
    match by_prefix.as_slice() {
        [one] => Ok(one),
        [] => Err(Status::not_found(format!("no such service: {reference}"))),
        _ => Err(Status::invalid_argument(format!(
            "{reference} matches more than one service; use a longer ID prefix"
        ))),
    }
}

fn service_name(s: &Service) -> &str {
    s.spec.as_ref().map(|p| p.name.as_str()).unwrap_or("")
}

/// Whether a task still counts toward its service (its desired state is at most RUNNING).
pub fn is_live(t: &Task) -> bool {
    t.desired_state <= TaskState::Running as i32
}

pub(crate) async fn create(
    shared: &Shared,
    req: CreateServiceRequest,
) -> Result<ServiceResponse, Status> {
    let mut spec = req.spec.ok_or_else(|| Status::invalid_argument("missing service spec"))?;
    let id = shoal_pki::id::new_id();
    if spec.name.is_empty() {
        spec.name = format!("svc-{}", &id[..8]);
    }
    let spec = normalize(spec)?;
    let service = shared
        .store
        .update(|tx| {
            let exists =
                || Status::already_exists(format!("a service named {} already exists", spec.name));
            let services = tx.list::<Service>()?;
            if services.iter().any(|s| service_name(s) == spec.name) {
                return Err(exists());
            }
            if services.len() >= MAX_SERVICES {
                return Err(Status::resource_exhausted(format!(
                    "the cluster already has {} services, the most it may hold \
                     ({MAX_SERVICES}); remove one before creating another",
                    services.len()
                )));
            }
            tx.claim_name("service", &spec.name, &id).map_err(|e| match e {
                StoreError::Exists { .. } => exists(),
                e => e.into(),
            })?;
            let mut spec = spec.clone();
            crate::secrets::resolve_refs(tx, &mut spec, None)?;
            let service =
                Service { id: id.clone(), spec: Some(spec), spec_version: 1, ..Default::default() };
            tx.create(service.clone())?;
            Ok(service)
        })
        .await?;
    tracing::info!(service = %service.id, name = %spec.name, "service created");
    let service = shared.store.get::<Service>(&service.id)?;
    Ok(ServiceResponse { service })
}

pub(crate) async fn update(
    shared: &Shared,
    req: UpdateServiceRequest,
) -> Result<ServiceResponse, Status> {
    shared.store.barrier().await?;
    let services = shared.store.list::<Service>()?;
    let id = resolve_service(&services, &req.reference)?.id.clone();
    let new_spec = if req.rollback {
        None
    } else {
        let spec =
            req.spec.clone().ok_or_else(|| Status::invalid_argument("missing service spec"))?;
        Some(normalize(spec)?)
    };
    let service = shared
        .store
        .update(|tx| {
            let mut s = tx
                .get::<Service>(&id)?
                .ok_or_else(|| Status::not_found(format!("no such service: {}", req.reference)))?;
            let version = s.meta.as_ref().map(|m| m.version).unwrap_or(0);
            if req.version != 0 && req.version != version {
                return Err(Status::aborted(format!(
                    "service {} was changed by someone else (version {} is not {}); read it again and retry",
                    service_name(&s),
                    req.version,
                    version
                )));
            }
            let current = s.spec.clone().unwrap_or_default();
            let now = now_ms();
            match &new_spec {
                None => {
                    let Some(previous) = s.previous_spec.take() else {
                        return Err(Status::failed_precondition(format!(
                            "service {} has no previous spec to roll back to",
                            current.name
                        )));
                    };
                    s.previous_spec = Some(current);
                    s.spec = Some(previous);
                    s.previous_spec_version = s.spec_version;
                    s.spec_version += 1;
                    s.update_status = Some(UpdateStatus {
                        state: UpdateState::RollbackStarted as i32,
                        started_at_ms: now,
                        message: "manually requested rollback".into(),
                        ..Default::default()
                    });
                }
                Some(spec) => {
                    let mut spec = spec.clone();
                    crate::secrets::resolve_refs(tx, &mut spec, Some(&current))?;
                    let spec = &spec;
                    if spec.name != current.name {
                        return Err(Status::invalid_argument(format!(
                            "a service cannot be renamed ({} → {})",
                            current.name, spec.name
                        )));
                    }
                    if spec.mode != current.mode {
                        return Err(Status::invalid_argument(
                            "a service's mode (replicated or global) cannot be changed",
                        ));
                    }
                    let dirty = req.force || task_part(spec) != task_part(&current);
                    s.previous_spec = Some(current);
                    s.previous_spec_version = s.spec_version;
                    s.spec = Some(spec.clone());
                    if dirty {
                        s.spec_version += 1;
                        s.update_status = Some(UpdateStatus {
                            state: UpdateState::Updating as i32,
                            started_at_ms: now,
                            message: "update in progress".into(),
                            ..Default::default()
                        });
                    }
                }
            }
            tx.update(s.clone())?;
            Ok(s)
        })
        .await?;
    tracing::info!(service = %service.id, version = service.spec_version, rollback = req.rollback, "service updated");
    let service = shared.store.get::<Service>(&service.id)?;
    Ok(ServiceResponse { service })
}

pub(crate) async fn get(
    shared: &Shared,
    req: GetServiceRequest,
) -> Result<ServiceResponse, Status> {
    shared.store.barrier().await?;
    let services = shared.store.list::<Service>()?;
    let service = resolve_service(&services, &req.reference)?.clone();
    Ok(ServiceResponse { service: Some(service) })
}

pub(crate) async fn list(shared: &Shared) -> Result<ListServicesResponse, Status> {
    shared.store.barrier().await?;
    let mut services = shared.store.list::<Service>()?;
    services.sort_by(|a, b| service_name(a).cmp(service_name(b)));
    let mut running: HashMap<String, u64> = HashMap::new();
    let mut live: HashMap<String, u64> = HashMap::new();
    for t in shared.store.list::<Task>()? {
        if is_live(&t) {
            *live.entry(t.service_id.clone()).or_default() += 1;
            if t.state() == TaskState::Running {
                *running.entry(t.service_id).or_default() += 1;
            }
        }
    }
    let services = services
        .into_iter()
        .map(|s| {
            let spec = s.spec.clone().unwrap_or_default();
            let desired = match spec.mode() {
                ServiceMode::Replicated => spec.replicas,
                ServiceMode::Global => live.get(&s.id).copied().unwrap_or(0),
            };
            ServiceSummary {
                running: running.get(&s.id).copied().unwrap_or(0),
                desired,
                service: Some(s),
            }
        })
        .collect();
    Ok(ListServicesResponse { services })
}

pub(crate) async fn remove(
    shared: &Shared,
    req: RemoveServiceRequest,
) -> Result<RemoveServiceResponse, Status> {
    shared.store.barrier().await?;
    let services = shared.store.list::<Service>()?;
    let service = resolve_service(&services, &req.reference)?.clone();
    shared
        .store
        .update(|tx| {
            if tx.get::<Service>(&service.id)?.is_none() {
                return Err(Status::not_found(format!("no such service: {}", req.reference)));
            }
            tx.delete::<Service>(&service.id)?;
            tx.release_name("service", service_name(&service))?;
            Ok(())
        })
        .await?;
    tracing::info!(service = %service.id, "service removed");
    Ok(RemoveServiceResponse { id: service.id.clone(), name: service_name(&service).to_string() })
}

pub(crate) async fn list_tasks(
    shared: &Shared,
    req: ListTasksRequest,
) -> Result<ListTasksResponse, Status> {
    shared.store.barrier().await?;
    let nodes = shared.store.list::<Node>()?;
    let service_id = if req.service.is_empty() {
        None
    } else {
        let services = shared.store.list::<Service>()?;
        Some(resolve_service(&services, &req.service)?.id.clone())
    };
    let node_id =
        if req.node.is_empty() { None } else { Some(resolve_node(&nodes, &req.node)?.id.clone()) };
    let mut tasks: Vec<Task> = shared
        .store
        .list::<Task>()?
        .into_iter()
        .filter(|t| service_id.as_ref().is_none_or(|s| &t.service_id == s))
        .filter(|t| node_id.as_ref().is_none_or(|n| &t.node_id == n))
        .filter(|t| !req.desired_running || is_live(t))
        .collect();
    tasks.sort_by(|a, b| {
        (a.service_name.as_str(), a.slot, &a.node_id)
            .cmp(&(b.service_name.as_str(), b.slot, &b.node_id))
            .then(
                b.meta
                    .as_ref()
                    .map(|m| m.created_at_ms)
                    .cmp(&a.meta.as_ref().map(|m| m.created_at_ms)),
            )
    });
    let node_names = nodes.into_iter().map(|n| (n.id, n.hostname)).collect();
    Ok(ListTasksResponse { tasks, node_names })
}

pub(crate) async fn update_node(shared: &Shared, req: UpdateNodeRequest) -> Result<Node, Status> {
    shared.store.barrier().await?;
    let nodes = shared.store.list::<Node>()?;
    let id = resolve_node(&nodes, &req.reference)?.id.clone();
    let availability = match req.availability {
        Some(a) => Some(
            Availability::try_from(a)
                .map_err(|_| Status::invalid_argument(format!("unknown availability {a}")))?,
        ),
        None => None,
    };
    let mut add = Vec::new();
    for kv in &req.label_add {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        if k.is_empty() {
            return Err(Status::invalid_argument(format!("bad label {kv:?}: expected key=value")));
        }
        add.push((k.to_string(), v.to_string()));
    }
    if let Some(h) = &req.hostname {
        shoal_proto::limits::hostname("hostname", h)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
    }
    let node = shared
        .store
        .update(|tx| {
            let mut n = tx.get::<Node>(&id)?.ok_or_else(|| Status::not_found("node is gone"))?;
            if let Some(h) = &req.hostname {
                crate::intake::check_unique_hostname(tx.list::<Node>()?, h, Some(&id))?;
                n.hostname = h.clone();
            }
            if let Some(a) = availability {
                n.set_availability(a);
            }
            for (k, v) in &add {
                n.labels.insert(k.clone(), v.clone());
            }
            for k in &req.label_rm {
                if n.labels.remove(k).is_none() {
                    return Err(Status::not_found(format!("node {} has no label {k}", n.hostname)));
                }
            }
            tx.update(n.clone())?;
            Ok(n)
        })
        .await?;
    tracing::info!(node = %node.id, hostname = %node.hostname, availability = node.availability().word(), "node updated");
    Ok(shared.store.get::<Node>(&node.id)?.unwrap_or(node))
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
        let err = normalize(s.clone()).unwrap_err();
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
        assert_eq!(r.condition(), shoal_proto::RestartCondition::Any);
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
                    resources: Some(shoal_proto::ResourceRequirements {
                        limits: Some(shoal_proto::Resources { memory_bytes: 1024, nano_cpus: 0 }),
                        reservations: None,
                    }),
                    ..spec("web")
                },
                "below the minimum",
            ),
            (
                ServiceSpec {
                    placement: Some(shoal_proto::Placement {
                        constraints: vec!["node.labels.zone=east".into()],
                        ..Default::default()
                    }),
                    ..spec("web")
                },
                "constraint",
            ),
        ];
        for (s, want) in cases {
            let err = normalize(s).unwrap_err();
            assert!(err.message().contains(want), "{} should mention {want}", err.message());
        }
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
}
