//! What `shoal info` and `shoal node ls` print, read back.

use std::collections::BTreeSet;
use std::process::Output;

use super::process::{stderr, stdout, text};
use super::Node;

/// The output of `shoal info`.
#[derive(Debug)]
pub struct Info(pub String);

impl Info {
    pub fn get(&self, key: &str) -> Option<String> {
        self.0.lines().find_map(|l| {
            let (k, v) = l.trim().split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    }

    pub fn must(&self, key: &str) -> String {
        self.get(key).unwrap_or_else(|| panic!("`shoal info` shows no {key:?}:\n{}", self.0))
    }
}

/// One row of `shoal node ls`.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub hostname: String,
    pub status: String,
    /// MANAGER STATUS: `Leader`, `Reachable`, or empty for a worker.
    pub manager_status: String,
    /// Whether the ID carries the leader's `*`.
    pub starred: bool,
}

/// The TLS STATUS `node ls` on `manager` shows for `hostname` (its last column).
pub fn tls_status_of(manager: &Node, hostname: &str) -> String {
    let out = manager.must_shoal(&["node", "ls"]);
    let lines = out.lines().skip(1).filter(|l| !l.trim().is_empty());
    lines
        .zip(parse_node_ls(&out))
        .find(|(_, row)| row.hostname == hostname)
        .and_then(|(line, _)| line.split_whitespace().last())
        .unwrap_or_default()
        .to_string()
}

/// Parses the `node ls` table (the leader's ID carries a `*`).
pub fn parse_node_ls(out: &str) -> Vec<Row> {
    let mut lines = out.lines();
    let header = lines.next().unwrap_or_default();
    assert!(header.starts_with("ID") && header.contains("STATUS"), "not a node table:\n{out}");
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut words: Vec<&str> = l.split_whitespace().collect();
            let starred = words.get(1) == Some(&"*");
            if starred {
                words.remove(1);
            }
            assert!(words.len() >= 4, "unreadable node ls line {l:?} in:\n{out}");
            // After AVAILABILITY come MANAGER STATUS (empty for workers) and CERT EXPIRY (one
            // RFC 3339 word, or nothing).
            let manager_status = match words.get(4) {
                Some(w) if !w.contains(|c: char| c.is_ascii_digit()) => w.to_string(),
                _ => String::new(),
            };
            Row {
                id: words[0].into(),
                hostname: words[1].into(),
                status: words[2].into(),
                manager_status,
                starred,
            }
        })
        .collect()
}

/// The leader's hostname in the `node ls` output `out`, after checking that exactly one row is
/// the leader (starred and `Leader`) and that `managers` managers are listed.
pub fn one_leader(out: &str, managers: usize) -> Result<String, String> {
    let rows = parse_node_ls(out);
    let leaders: Vec<_> =
        rows.iter().filter(|r| r.starred || r.manager_status == "Leader").collect();
    let listed = rows.iter().filter(|r| !r.manager_status.is_empty()).count();
    match leaders.as_slice() {
        [one] if one.starred && one.manager_status == "Leader" && listed == managers => {
            Ok(one.hostname.clone())
        }
        _ => Err(format!(
            "no single leader among {managers} managers ({} leader rows, {listed} managers):\n{out}",
            leaders.len()
        )),
    }
}

/// `node ls` on a manager.
pub fn node_ls(manager: &Node) -> Result<Vec<Row>, String> {
    let out = manager.shoal(&["node", "ls"]);
    if !out.status.success() {
        return Err(text(&out));
    }
    Ok(parse_node_ls(&stdout(&out)))
}

/// Checks that `node ls` lists exactly `expected` hostnames, every one `Ready`.
pub fn all_ready(manager: &Node, expected: &[&str]) -> Result<(), String> {
    let rows = node_ls(manager)?;
    let names: BTreeSet<&str> = rows.iter().map(|r| r.hostname.as_str()).collect();
    let want: BTreeSet<&str> = expected.iter().copied().collect();
    if names != want {
        return Err(format!("node ls lists {names:?}, expected {want:?}: {rows:?}"));
    }
    match rows.iter().find(|r| r.status != "Ready") {
        Some(r) => Err(format!("{} is {}, not Ready: {rows:?}", r.hostname, r.status)),
        None => Ok(()),
    }
}

pub fn status_of(manager: &Node, hostname: &str) -> Result<String, String> {
    let rows = node_ls(manager)?;
    rows.iter()
        .find(|r| r.hostname == hostname)
        .map(|r| r.status.clone())
        .ok_or_else(|| format!("{hostname} is not listed: {rows:?}"))
}

/// Whether a remote call failed only because it read a node's key and certificate while the
/// node was renewing them (they are two files); such a call is simply tried again.
pub fn torn_read(out: &Output) -> bool {
    let e = stderr(out);
    !out.status.success() && (e.contains("--tlscert/--tlskey") || e.contains("--tlskey"))
}
