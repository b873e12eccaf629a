//! What must hold once every fault is healed, read from the hosts themselves: every service
//! runs its replicas, no slot runs twice (real containers, from each node's runc), and a
//! node holds secrets (per-task tmpfs mounts under its data root) only for tasks of its own
//! that name them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use crate::netns::{text, Node};

/// One row of `service ps --no-trunc`: the task's full ID, service, slot, node and states.
#[derive(Clone, Debug)]
pub struct Task {
    pub id: String,
    pub service: String,
    pub slot: String,
    pub node: String,
    pub desired: String,
    pub state: String,
}

/// `service ps --no-trunc SERVICE` through `manager`.
pub fn tasks(manager: &Node, service: &str) -> Result<Vec<Task>, String> {
    let out = manager.shoal(&["service", "ps", "--no-trunc", service]);
    if !out.status.success() {
        return Err(text(&out));
    }
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = s.lines();
    let header = lines.next().unwrap_or_default();
    let col = |n: &str| header.find(n).ok_or(format!("no {n} column:\n{s}"));
    let (name, image, node) = (col("NAME")?, col("IMAGE")?, col("NODE")?);
    let (desired, current, error) = (col("DESIRED")?, col("CURRENT STATE")?, col("ERROR")?);
    let cut =
        |l: &str, a: usize, b: usize| l.get(a..b.min(l.len())).unwrap_or("").trim().to_string();
    let mut rows = Vec::new();
    for l in lines.filter(|l| !l.trim().is_empty()) {
        let slot_name = cut(l, name, image);
        let slot_name = slot_name.trim_start_matches("\\_").trim().to_string();
        let slot = slot_name.rsplit_once('.').map(|(_, s)| s.to_string()).unwrap_or_default();
        rows.push(Task {
            id: cut(l, 0, name),
            service: service.to_string(),
            slot,
            node: cut(l, node, desired),
            desired: cut(l, desired, current),
            state: cut(l, current, error).split(' ').next().unwrap_or("").to_string(),
        });
    }
    Ok(rows)
}

/// IDs of the containers runc runs for `node` (its own runc state directories).
pub fn running_containers(node: &Node) -> Vec<String> {
    let found = Command::new("find")
        .arg(&node.data)
        .args(["-maxdepth", "4", "-type", "d", "-name", "runc"])
        .output();
    let mut ids = Vec::new();
    let Ok(found) = found else { return ids };
    for root in String::from_utf8_lossy(&found.stdout).lines() {
        let Ok(out) = Command::new("runc").args(["--root", root, "list"]).output() else {
            continue;
        };
        for l in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.get(2) == Some(&"running") {
                ids.push(cols[0].to_string());
            }
        }
    }
    ids
}

/// Every slot runs at most one container, on all nodes together, and every running container
/// is a task that should run there (a live service's, desired Running, on that node).
/// Returns how many containers it saw.
pub fn one_container_per_slot(nodes: &[Node], tasks: &[Task]) -> Result<usize, String> {
    let mut seen = 0;
    let mut per_slot: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for node in nodes {
        for c in running_containers(node) {
            seen += 1;
            match tasks.iter().find(|t| c.starts_with(&t.id) || t.id.starts_with(&c)) {
                Some(t) => {
                    per_slot
                        .entry((t.service.clone(), t.slot.clone()))
                        .or_default()
                        .push(format!("{} on {}", t.id, node.name));
                    if t.node != node.name || t.desired != "Running" {
                        problems.push(format!(
                            "container {c} runs on {} for task {} of {}.{} (placed on {}, \
                             desired {})",
                            node.name, t.id, t.service, t.slot, t.node, t.desired
                        ));
                    }
                }
                None => problems.push(format!("container {c} on {} is no live task", node.name)),
            }
        }
    }
    for ((service, slot), running) in per_slot {
        if running.len() > 1 {
            problems
                .push(format!("slot {service}.{slot} runs {} times: {running:?}", running.len()));
        }
    }
    if problems.is_empty() {
        Ok(seen)
    } else {
        Err(problems.join("\n"))
    }
}

/// The secret tmpfs mounts under `data`: (task ID, mount point).
pub fn secret_mounts(data: &Path) -> Vec<(String, String)> {
    let prefix = data.to_string_lossy().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let points: BTreeSet<String> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(String::from))
        .filter(|p| p.starts_with(&prefix) && p.ends_with("/secrets"))
        .collect();
    points
        .into_iter()
        .filter_map(|p| {
            let task = Path::new(&p).parent()?.file_name()?.to_string_lossy().into_owned();
            Some((task, p))
        })
        .collect()
}

/// Every secret tmpfs on a node belongs to a task placed on that node and still meant to run,
/// whose service names secrets, and holds only data of the secrets that service names
/// (`values`: secret name → every value it was given); and every running task whose service
/// names secrets has its tmpfs where it runs. Returns how many tmpfs mounts it saw.
pub fn secrets_only_where_needed(
    nodes: &[Node],
    tasks: &[Task],
    named: &BTreeMap<String, BTreeSet<String>>,
    values: &BTreeMap<String, BTreeSet<String>>,
) -> Result<usize, String> {
    let mut problems = Vec::new();
    let mut seen = 0;
    for t in tasks.iter().filter(|t| t.desired == "Running" && t.state == "Running") {
        let wants = named.get(&t.service).is_some_and(|s| !s.is_empty());
        let node = nodes.iter().find(|n| n.name == t.node);
        let has = node.is_some_and(|n| secret_mounts(&n.data).iter().any(|(id, _)| *id == t.id));
        if wants && !has {
            problems.push(format!(
                "task {} of {} runs on {} without its secrets",
                t.id, t.service, t.node
            ));
        }
    }
    for node in nodes {
        for (task, point) in secret_mounts(&node.data) {
            seen += 1;
            let Some(t) = tasks.iter().find(|t| t.id == task) else {
                problems.push(format!("{}: secrets of {task}, which is no live task", node.name));
                continue;
            };
            if t.node != node.name || t.desired != "Running" {
                problems.push(format!(
                    "{}: secrets of task {task} ({}.{}), placed on {} with desired state {}",
                    node.name, t.service, t.slot, t.node, t.desired
                ));
            }
            let wanted = named.get(&t.service).cloned().unwrap_or_default();
            let allowed: BTreeSet<&String> =
                wanted.iter().filter_map(|s| values.get(s)).flatten().collect();
            for f in std::fs::read_dir(&point).into_iter().flatten().flatten() {
                let data = std::fs::read_to_string(f.path()).unwrap_or_default();
                if !allowed.contains(&data) {
                    problems.push(format!(
                        "{}: task {task} of {} (which names {wanted:?}) holds a secret it does \
                         not name ({})",
                        node.name,
                        t.service,
                        f.path().display()
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(seen)
    } else {
        Err(problems.join("\n"))
    }
}
