//! Owns the placement language: parsing `key==value` / `key!=value` constraints (node IDs,
//! hostnames, IP addresses and CIDR ranges, roles, platforms, labels) and `node.labels.<name>`
//! spread preferences. Matching against a node is the scheduler's; this module knows no nodes.

use std::fmt;
use std::net::IpAddr;

use crate::NodeRole;

/// Prefix of label keys, in constraints and spread preferences (matched case-insensitively).
const LABEL_PREFIX: &str = "node.labels.";

const KNOWN_KEYS: &str = "node.id, node.hostname, node.ip, node.role, node.platform.os, \
                          node.platform.arch, node.platform.mac or node.labels.<name>";

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
    /// What it compares, with the value parsed.
    pub target: Target,
}

/// What a constraint compares, with its value already parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `node.id`.
    Id(String),
    /// `node.hostname`.
    Hostname(String),
    /// `node.ip`: an address or a range.
    Ip(IpNet),
    /// `node.role`.
    Role(NodeRole),
    /// `node.platform.os`.
    Os(String),
    /// `node.platform.arch`.
    Arch(String),
    /// `node.platform.mac`: a MAC layer the node applies to every task (`landlock`, `selinux`,
    /// `apparmor`); `==` holds where the node applies it.
    Mac(String),
    /// `node.labels.<key>`.
    Label { key: String, value: String },
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expr)
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
pub fn spread_labels(list: &[String]) -> Result<Vec<String>, PlacementError> {
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
        "node.platform.mac" => {
            let layer = value.to_ascii_lowercase();
            if !super::mac::MAC_LAYERS.contains(&layer.as_str()) {
                return Err(bad_value(expr, MAC_WHY));
            }
            Target::Mac(layer)
        }
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
const MAC_WHY: &str = "node.platform.mac is landlock, selinux or apparmor";
const ROLE_WHY: &str = "node.role is manager or worker";

fn bad_value(expr: &str, why: &str) -> PlacementError {
    PlacementError::BadValue { expr: expr.to_string(), why: why.to_string() }
}

fn parse_role(value: &str) -> Option<NodeRole> {
    value.to_ascii_lowercase().parse::<crate::Role>().ok().map(NodeRole::from)
}

/// `node.labels.<name>` → `<name>` (the prefix is case-insensitive, the name is not).
fn label_name(key: &str) -> Option<&str> {
    let prefix = key.get(..LABEL_PREFIX.len())?;
    let name = &key[LABEL_PREFIX.len()..];
    (prefix.eq_ignore_ascii_case(LABEL_PREFIX) && !name.is_empty()).then_some(name)
}

/// An IP address or a CIDR range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// `10.0.0.1`, `10.0.0.0/8`, `fd00::/8`; `None` for anything else.
    pub fn parse(s: &str) -> Option<IpNet> {
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

    /// Whether `ip` (an IPv4-mapped IPv6 address counting as IPv4) is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_constraints_are_refused_naming_the_expression() {
        let cases = [
            ("node.labels.zone=east", "expected <key>==<value> or <key>!=<value>"),
            ("node.colour==red", "unknown key \"node.colour\""),
            ("node.role==", "the value is empty"),
            ("node.role==boss", "node.role is manager or worker"),
            ("node.ip==10.0.0.0/33", "node.ip takes an IP address or a CIDR range"),
            ("node.labels.==x", "unknown key"),
            ("node.id==a==b", "expected <key>==<value>"),
            ("node.labels.zone!==east", "expected <key>==<value>"),
            ("node.platform.mac==smack", "node.platform.mac is landlock, selinux or apparmor"),
        ];
        for (expr, problem) in cases {
            let err = parse_constraints(&["node.role==worker".into(), expr.into()]).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(&format!("{expr:?}")) && msg.contains(problem), "{expr}: {msg}");
        }
        let ok = [
            "node.labels.zone != east",
            "NODE.HOSTNAME==h",
            "node.ip==fd00::/8",
            "node.platform.mac==SELinux",
        ];
        parse_constraints(&ok.map(String::from)).unwrap();
        assert!(validate_spread(&["node.labels.zone".into()]).is_ok());
        let err = validate_spread(&["zone".into()]).unwrap_err().to_string();
        assert!(err.contains("\"zone\"") && err.contains("node.labels.<name>"), "{err}");
    }

    #[test]
    fn ranges_contain_their_addresses_and_mapped_ones() {
        let net = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(IpNet::parse("0.0.0.0/0").unwrap().contains("1.2.3.4".parse().unwrap()));
        assert!(IpNet::parse("fd00::/8").unwrap().contains("fd12::1".parse().unwrap()));
    }
}
