//! How services and tasks print: `service ls`, `service ps`, `service inspect` (JSON and
//! `--pretty`).

use std::collections::BTreeMap;

use shoal_proto::*;

use crate::cli::output::{one_line, table};

pub(super) fn task_name(t: &Task, no_trunc: bool) -> String {
    let id = if no_trunc { t.id.clone() } else { t.id.chars().take(12).collect() };
    if t.slot > 0 {
        format!("{}.{}.{id}", t.service_name, t.slot)
    } else {
        format!("{}.{}.{id}", t.service_name, t.node_id.chars().take(12).collect::<String>())
    }
}

pub fn ago(ms: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let secs = ((now - ms).max(0) / 1000) as u64;
    let (n, unit) = match secs {
        0..=59 => (secs, "second"),
        60..=3599 => (secs / 60, "minute"),
        3600..=86_399 => (secs / 3600, "hour"),
        _ => (secs / 86_400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

pub(super) fn desired_word(d: i32) -> &'static str {
    TaskState::try_from(d).map(|s| s.word()).unwrap_or("Unknown")
}

/// `service ls`.
pub fn service_ls(r: &ListServicesResponse, quiet: bool) -> String {
    if quiet {
        return r
            .services
            .iter()
            .map(|s| format!("{}\n", s.service.as_ref().map(|s| s.id.as_str()).unwrap_or("")))
            .collect();
    }
    let rows = r.services.iter().filter_map(|sum| {
        let s = sum.service.as_ref()?;
        let spec = s.spec.clone().unwrap_or_default();
        let mode = if spec.mode() == ServiceMode::Global { "global" } else { "replicated" };
        let image = spec.container.map(|c| c.image).unwrap_or_default();
        let id = s.id.chars().take(12).collect();
        let replicas = format!("{}/{}", sum.running, sum.desired);
        let ports = s.endpoint.iter().flat_map(|e| e.ports.iter()).map(port_text);
        let ports = ports.collect::<Vec<_>>().join(", ");
        Some(vec![id, spec.name, mode.into(), replicas, image, ports])
    });
    table(&["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"], rows)
}

/// A published port as `service ls` shows it (Docker's form: `*:8080->80/tcp`; host mode
/// without the star).
pub fn port_text(p: &shoal_proto::PortConfig) -> String {
    let star = if p.publish_mode == "host" { "" } else { "*" };
    format!("{star}:{}->{}/{}", p.published_port, p.target_port, p.protocol)
}

fn ports_json(ports: &[shoal_proto::PortConfig]) -> Vec<serde_json::Value> {
    ports
        .iter()
        .map(|p| {
            serde_json::json!({
                "Protocol": p.protocol,
                "TargetPort": p.target_port,
                "PublishedPort": p.published_port,
                "PublishMode": p.publish_mode,
            })
        })
        .collect()
}

/// `service ps`: newest task of each slot first, its history below it.
pub fn service_ps(r: &ListTasksResponse, no_trunc: bool, quiet: bool) -> String {
    if quiet {
        return r.tasks.iter().map(|t| format!("{}\n", t.id)).collect();
    }
    let mut last_slot = None;
    let mut rows = Vec::new();
    for t in &r.tasks {
        let slot = (
            t.service_id.clone(),
            t.slot,
            if t.slot == 0 { t.node_id.clone() } else { String::new() },
        );
        let history = last_slot.as_ref() == Some(&slot);
        last_slot = Some(slot);
        rows.push(task_row(r, t, history, no_trunc));
    }
    table(&["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR"], rows)
}

/// One row of `service ps`; `history` marks an older task of the slot above it.
fn task_row(r: &ListTasksResponse, t: &Task, history: bool, no_trunc: bool) -> Vec<String> {
    let slot_name = if t.slot > 0 {
        format!("{}.{}", t.service_name, t.slot)
    } else if history {
        t.service_name.clone()
    } else {
        format!("{}.{}", t.service_name, t.node_id.chars().take(12).collect::<String>())
    };
    let name = if history { format!("\\_ {slot_name}") } else { slot_name };
    let status = t.status.clone().unwrap_or_default();
    let current = format!("{} {}", t.state().word(), ago(status.timestamp_ms));
    let mut err = if !status.err.is_empty() {
        one_line(&status.err)
    } else {
        one_line(&t.unscheduled_reason)
    };
    if !no_trunc && err.chars().count() > 60 {
        err = err.chars().take(57).collect::<String>() + "...";
    }
    let image = t
        .spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .map(|c| c.image.clone())
        .unwrap_or_default();
    let node = r.node_names.get(&t.node_id).cloned().unwrap_or_default();
    let id: String = if no_trunc { t.id.clone() } else { t.id.chars().take(12).collect() };
    vec![id, name, image, node, desired_word(t.desired_state).into(), current, err]
}

/// A secret or config reference as Docker's inspect shows it, plus the version it pins.
pub(super) fn ref_json(r: &SecretReference) -> serde_json::Value {
    serde_json::json!({
        "SecretID": r.secret_id,
        "SecretName": r.secret_name,
        "File": {"Name": r.target, "UID": r.uid.to_string(), "GID": r.gid.to_string(), "Mode": r.mode},
        "Version": r.version,
        "Follow": r.follow,
    })
}

pub(super) fn service_json(s: &Service) -> serde_json::Value {
    let spec = s.spec.clone().unwrap_or_default();
    let c = spec.container.clone().unwrap_or_default();
    let p = spec.placement.clone().unwrap_or_default();
    let res = spec.resources.unwrap_or_default();
    let r = spec.restart.unwrap_or_default();
    let upd = |u: Option<UpdateConfig>| {
        let u = u.unwrap_or_default();
        serde_json::json!({
            "Parallelism": u.parallelism,
            "Delay": format!("{}ms", u.delay_ms),
            "FailureAction": format!("{:?}", u.failure_action()).to_lowercase(),
            "Monitor": format!("{}ms", u.monitor_ms),
            "MaxFailureRatio": u.max_failure_ratio,
            "Order": if u.order() == UpdateOrder::StartFirst { "start-first" } else { "stop-first" },
        })
    };
    let status = s.update_status.clone().unwrap_or_default();
    serde_json::json!({
        "ID": s.id,
        "Version": s.meta.as_ref().map(|m| m.version).unwrap_or(0),
        "SpecVersion": s.spec_version,
        "Spec": {
            "Name": spec.name,
            "Labels": spec.labels.iter().collect::<BTreeMap<_, _>>(),
            "Mode": if spec.mode() == ServiceMode::Global { serde_json::json!({"Global": {}}) } else { serde_json::json!({"Replicated": {"Replicas": spec.replicas}}) },
            "TaskTemplate": {
                "ContainerSpec": {
                    "Image": c.image,
                    "ImageDigest": c.image_digest,
                    "Mounts": c.mounts.iter().map(|m| serde_json::json!({
                        "Type": m.r#type, "Source": m.source, "Target": m.target,
                        "ReadOnly": m.read_only,
                    })).collect::<Vec<_>>(),
                    "RegistryAuth": c.registry_auth.as_ref().map(|a| serde_json::json!({
                        "Registry": a.registry, "Username": a.username,
                    })),
                    "Command": c.command,
                    "Args": c.args,
                    "Env": c.env,
                    "Dir": c.workdir,
                    "User": c.user,
                    "ReadOnly": c.read_only,
                    "CapabilityAdd": c.cap_add,
                    "CapabilityDrop": c.cap_drop,
                    "Seccomp": if c.seccomp.is_empty() { "default" } else if c.seccomp == "unconfined" { "unconfined" } else { "custom profile" },
                    "NoNewPrivileges": !c.allow_new_privileges,
                    "Landlock": landlock_label(&c),
                    "Userns": c.userns,
                    "Healthcheck": c.healthcheck.map(|h| serde_json::json!({"Test": h.test, "Interval": h.interval_ms, "Retries": h.retries})),
                    "Secrets": c.secrets.iter().map(ref_json).collect::<Vec<_>>(),
                    "Configs": c.configs.iter().map(ref_json).collect::<Vec<_>>(),
                },
                "Resources": {
                    "Limits": res.limits.map(|l| serde_json::json!({"NanoCPUs": l.nano_cpus, "MemoryBytes": l.memory_bytes})),
                    "Reservations": res.reservations.map(|l| serde_json::json!({"NanoCPUs": l.nano_cpus, "MemoryBytes": l.memory_bytes})),
                },
                "RestartPolicy": {
                    "Condition": match r.condition() { RestartCondition::Any => "any", RestartCondition::OnFailure => "on-failure", RestartCondition::None => "none" },
                    "Delay": format!("{}ms", r.delay_ms),
                    "MaxAttempts": r.max_attempts,
                    "Window": format!("{}ms", r.window_ms),
                },
                "Placement": {"Constraints": p.constraints, "Preferences": p.spread, "MaxReplicas": p.max_replicas_per_node},
                "Networks": spec.networks.iter().map(|n| serde_json::json!({"Target": n.target, "Aliases": n.aliases})).collect::<Vec<_>>(),
            },
            "EndpointSpec": {
                "Mode": if spec.endpoint.as_ref().is_some_and(|e| e.mode() == shoal_proto::EndpointMode::Dnsrr) { "dnsrr" } else { "vip" },
                "Ports": ports_json(spec.endpoint.as_ref().map(|e| e.ports.as_slice()).unwrap_or_default()),
            },
            "UpdateConfig": upd(spec.update),
            "RollbackConfig": upd(spec.rollback),
        },
        "PreviousSpec": s.previous_spec.as_ref().map(|p| p.container.as_ref().map(|c| c.image.clone())),
        "UpdateStatus": {
            "State": format!("{:?}", status.state()).to_lowercase(),
            "Message": status.message,
        },
        "Endpoint": {
            "Ports": ports_json(s.endpoint.as_ref().map(|e| e.ports.as_slice()).unwrap_or_default()),
            "VirtualIPs": s.endpoint.iter().flat_map(|e| e.vips.iter()).map(|v| serde_json::json!({"NetworkID": v.network_id, "Addr": v.addr})).collect::<Vec<_>>(),
        },
    })
}

pub(super) fn service_pretty(s: &Service) -> String {
    use std::fmt::Write;
    let spec = s.spec.clone().unwrap_or_default();
    let c = spec.container.clone().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out, "ID:             {}", s.id);
    let _ = writeln!(out, "Name:           {}", spec.name);
    match spec.mode() {
        ServiceMode::Global => {
            let _ = writeln!(out, "Service Mode:   Global");
        }
        ServiceMode::Replicated => {
            let _ = writeln!(out, "Service Mode:   Replicated\n Replicas:      {}", spec.replicas);
        }
    }
    if let Some(u) = &s.update_status {
        let _ = writeln!(
            out,
            "UpdateStatus:\n State:         {:?}\n Message:       {}",
            u.state(),
            u.message
        );
    }
    let _ = writeln!(out, "Image:          {}", c.image);
    if !c.image_digest.is_empty() {
        let _ = writeln!(out, "Image digest:   {}", c.image_digest);
    }
    let _ = writeln!(out, "Args:           {}", c.args.join(" "));
    let _ = writeln!(out, "Read-only:      {}", c.read_only);
    for (what, refs) in [("Secrets", &c.secrets), ("Configs", &c.configs)] {
        if !refs.is_empty() {
            let _ = writeln!(out, "{what}:");
        }
        for r in refs {
            let follows = if r.follow { ", follows new versions" } else { "" };
            let _ = writeln!(
                out,
                " Target: {}  Source: {} (version {}{follows})",
                r.target, r.secret_name, r.version
            );
        }
    }
    let _ = writeln!(
        out,
        "Seccomp:        {}",
        if c.seccomp.is_empty() {
            "default"
        } else if c.seccomp == "unconfined" {
            "unconfined"
        } else {
            "custom"
        }
    );
    let _ = writeln!(out, "Landlock:       {}", landlock_label(&c));
    if !spec.networks.is_empty() {
        let names: Vec<&str> = spec.networks.iter().map(|n| n.target.as_str()).collect();
        let _ = writeln!(out, "Networks:       {}", names.join(" "));
    }
    let endpoint = s.endpoint.clone().unwrap_or_default();
    if !endpoint.vips.is_empty() {
        let vips: Vec<&str> = endpoint.vips.iter().map(|v| v.addr.as_str()).collect();
        let _ = writeln!(out, "Virtual IPs:    {}", vips.join(" "));
    }
    if !endpoint.ports.is_empty() {
        let _ = writeln!(out, "Ports:");
        for p in &endpoint.ports {
            let _ = writeln!(
                out,
                " PublishedPort = {}\n  Protocol = {}\n  TargetPort = {}\n  PublishMode = {}",
                p.published_port, p.protocol, p.target_port, p.publish_mode
            );
        }
    }
    let _ = writeln!(out);
    out
}

/// What `service inspect` shows of the spec's Landlock option: the node's ruleset by default
/// (where the node's kernel has Landlock), or off.
pub(super) fn landlock_label(c: &ContainerSpec) -> &'static str {
    if c.landlock_off {
        "off"
    } else {
        "default"
    }
}
