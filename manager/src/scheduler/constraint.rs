//! Owns the placement language: parsing `key==value` / `key!=value` constraints and
//! `node.labels.<name>` spread preferences, and matching a constraint against one node.

use std::fmt;
use std::net::IpAddr;

use shoal_proto::NodeRole;

use super::view::NodeInfo;

/// Prefix of label keys, in constraints and spread preferences (matched case-insensitively).
const LABEL_PREFIX: &str = "node.labels.";

const KNOWN_KEYS: &str = "node.id, node.hostname, node.ip, node.role, node.platform.os, \
                          node.platform.arch or node.labels.<name>";

/// Why a constraint or spread preference was refused. Each message names the bad expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("invalid constraint {0:?}: expected <key>==<value> or <key>!=<value>")]
    Operator(String),
    #[error("invalid constraint {expr:?}: unknown key {key:?}; use {KNOWN_KEYS}")]
    UnknownKey { expr: String, key: String },
    #[error("invalid constraint {0:?}: the value is empty")]
    EmptyValue(String),
    #[error("invalid constraint {expr:?}: {why}")]
    BadValue { expr: String, why: String },
    #[error("invalid placement preference {0:?}: expected spread over node.labels.<name>")]
    Spread(String),
}

/// One parsed placement constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    /// The expression as the user wrote it (trimmed), for messages.
    pub expr: String,
    /// `true` for `==`, `false` for `!=`.
    pub equal: bool,
    target: Target,
}

/// What a constraint compares, with its value already parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Id(String),
    Hostname(String),
    Ip(IpNet),
    Role(NodeRole),
    Os(String),
    Arch(String),
    Label { key: String, value: String },
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expr)
    }
}

impl Constraint {
    /// Whether `node` satisfies the constraint. A missing label never matches `==` and always
    /// matches `!=`; a node without a known address never matches a `node.ip==` constraint.
    pub fn matches(&self, node: &NodeInfo) -> bool {
        let hit = match &self.target {
            Target::Id(v) => same_text(&node.id, v),
            Target::Hostname(v) => same_text(&node.hostname, v),
            Target::Ip(net) => node.ip.is_some_and(|ip| net.contains(ip)),
            Target::Role(r) => node.role == *r,
            Target::Os(v) => same_text(&node.os, v),
            Target::Arch(v) => same_text(canonical_arch(&node.arch), canonical_arch(v)),
            Target::Label { key, value } => {
                node.labels.get(key).is_some_and(|l| same_text(l, value))
            }
        };
        hit == self.equal
    }
}

/// Parses and validates constraint strings, refusing the first bad one.
pub fn parse_constraints(list: &[String]) -> Result<Vec<Constraint>, PlacementError> {
    list.iter().map(|s| parse_one(s)).collect()
}

/// Validates spread preferences (`node.labels.<name>`, outermost first).
pub fn validate_spread(list: &[String]) -> Result<(), PlacementError> {
    spread_labels(list).map(drop)
}

/// The label names of spread preferences, outermost first.
pub(super) fn spread_labels(list: &[String]) -> Result<Vec<String>, PlacementError> {
    list.iter()
        .map(|s| match label_name(s.trim()) {
            Some(name) => Ok(name.to_string()),
            None => Err(PlacementError::Spread(s.clone())),
        })
        .collect()
}

fn parse_one(raw: &str) -> Result<Constraint, PlacementError> {
    let expr = raw.trim().to_string();
    let (pos, equal) = match (expr.find("=="), expr.find("!=")) {
        (Some(e), Some(n)) if n < e => (n, false),
        (Some(e), _) => (e, true),
        (None, Some(n)) => (n, false),
        (None, None) => return Err(PlacementError::Operator(expr)),
    };
    let key = expr[..pos].trim();
    let value = expr[pos + 2..].trim();
    if key.is_empty() || value.starts_with('=') || value.contains("==") || value.contains("!=") {
        return Err(PlacementError::Operator(expr));
    }
    if value.is_empty() {
        return Err(PlacementError::EmptyValue(expr));
    }
    let target = parse_target(&expr, key, value)?;
    Ok(Constraint { expr, equal, target })
}

fn parse_target(expr: &str, key: &str, value: &str) -> Result<Target, PlacementError> {
    let v = value.to_string();
    let target = match key.to_ascii_lowercase().as_str() {
        "node.id" => Target::Id(v),
        "node.hostname" => Target::Hostname(v),
        "node.platform.os" => Target::Os(v),
        "node.platform.arch" => Target::Arch(v),
        "node.ip" => Target::Ip(IpNet::parse(value).ok_or_else(|| bad_value(expr, IP_WHY))?),
        "node.role" => Target::Role(parse_role(value).ok_or_else(|| bad_value(expr, ROLE_WHY))?),
        _ => match label_name(key) {
            Some(name) => Target::Label { key: name.to_string(), value: v },
            None => {
                let key = key.to_string();
                return Err(PlacementError::UnknownKey { expr: expr.to_string(), key });
            }
        },
    };
    Ok(target)
}

const IP_WHY: &str = "node.ip takes an IP address or a CIDR range such as 10.0.0.0/8";
const ROLE_WHY: &str = "node.role is manager or worker";

fn bad_value(expr: &str, why: &str) -> PlacementError {
    PlacementError::BadValue { expr: expr.to_string(), why: why.to_string() }
}

fn parse_role(value: &str) -> Option<NodeRole> {
    match value.to_ascii_lowercase().as_str() {
        "manager" => Some(NodeRole::Manager),
        "worker" => Some(NodeRole::Worker),
        _ => None,
    }
}

/// `node.labels.<name>` → `<name>` (the prefix is case-insensitive, the name is not).
fn label_name(key: &str) -> Option<&str> {
    let prefix = key.get(..LABEL_PREFIX.len())?;
    let name = &key[LABEL_PREFIX.len()..];
    (prefix.eq_ignore_ascii_case(LABEL_PREFIX) && !name.is_empty()).then_some(name)
}

/// Case-insensitive comparison of constraint values.
fn same_text(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        return a.eq_ignore_ascii_case(b);
    }
    a.to_lowercase() == b.to_lowercase()
}

/// Folds the two spellings of the common architectures (`uname -m` and Go's) together.
fn canonical_arch(arch: &str) -> &str {
    if arch.eq_ignore_ascii_case("x86_64") {
        "amd64"
    } else if arch.eq_ignore_ascii_case("aarch64") {
        "arm64"
    } else {
        arch
    }
}

/// An IP address or a CIDR range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    fn parse(s: &str) -> Option<IpNet> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let addr = s.parse::<IpAddr>().ok()?;
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(u32::from(net).into(), u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(net.into(), ip.into(), self.prefix, 128),
            _ => false,
        }
    }
}

/// Whether the first `prefix` bits of two `width`-bit numbers agree.
fn prefix_eq(a: u128, b: u128, prefix: u8, width: u32) -> bool {
    let shift = width - u32::from(prefix);
    shift >= width || (a >> shift) == (b >> shift)
}
