//! `shoal service ps` as tests read it: the rows, the running tasks per node, and a wait
//! until a service runs a number of tasks.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{text, Node};
use crate::poll::blocking::eventually;

/// One row of `shoal service ps`.
#[derive(Debug, Clone)]
pub struct TaskRow {
    pub id: String,
    pub image: String,
    pub node: String,
    pub desired: String,
    pub state: String,
    pub error: String,
}

pub fn parse_ps(out: &str) -> Vec<TaskRow> {
    let mut lines = out.lines();
    let header = lines.next().unwrap_or_default();
    let col = |name: &str| header.find(name).unwrap_or_else(|| panic!("no {name} column:\n{out}"));
    let (name, image, node, desired, current, error) = (
        col("NAME"),
        col("IMAGE"),
        col("NODE"),
        col("DESIRED"),
        col("CURRENT STATE"),
        col("ERROR"),
    );
    let cut =
        |l: &str, a: usize, b: usize| l.get(a..b.min(l.len())).unwrap_or("").trim().to_string();
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| TaskRow {
            id: cut(l, 0, name),
            image: cut(l, image, node),
            node: cut(l, node, desired),
            desired: cut(l, desired, current),
            state: cut(l, current, error).split(' ').next().unwrap_or("").to_string(),
            error: l.get(error..).unwrap_or("").trim().to_string(),
        })
        .collect()
}

pub fn ps(manager: &Node, service: &str) -> Result<Vec<TaskRow>, String> {
    let out = manager.shoal(&["service", "ps", service]);
    if !out.status.success() {
        return Err(text(&out));
    }
    Ok(parse_ps(&String::from_utf8_lossy(&out.stdout)))
}

/// Running tasks (desired and current) per node.
pub fn running(manager: &Node, service: &str) -> Result<BTreeMap<String, Vec<TaskRow>>, String> {
    let mut out: BTreeMap<String, Vec<TaskRow>> = BTreeMap::new();
    for r in ps(manager, service)? {
        if r.desired == "Running" && r.state == "Running" {
            out.entry(r.node.clone()).or_default().push(r);
        }
    }
    Ok(out)
}

pub fn wait_running(
    manager: &Node,
    service: &str,
    want: usize,
    within: Duration,
) -> BTreeMap<String, Vec<TaskRow>> {
    eventually(&format!("{want} tasks of {service} running"), within, || {
        let r = running(manager, service)?;
        let n: usize = r.values().map(Vec::len).sum();
        if n == want {
            Ok(r)
        } else {
            Err(format!("{n} running: {:?}", ps(manager, service)))
        }
    })
}
