//! Owns matching a parsed placement constraint against one node. The grammar (parsing
//! constraints and spread preferences) is `shoal_proto::spec::constraint`'s.

use shoal_proto::spec::constraint::{Constraint, Target};

use super::view::NodeInfo;

/// Whether `node` satisfies `c`. A missing label never matches `==` and always matches `!=`;
/// a node without a known address never matches a `node.ip==` constraint.
pub fn matches(c: &Constraint, node: &NodeInfo) -> bool {
    let hit = match &c.target {
        Target::Id(v) => same_text(&node.id, v),
        Target::Hostname(v) => same_text(&node.hostname, v),
        Target::Ip(net) => node.ip.is_some_and(|ip| net.contains(ip)),
        Target::Role(r) => node.role == *r,
        Target::Os(v) => same_text(&node.os, v),
        Target::Arch(v) => same_text(canonical_arch(&node.arch), canonical_arch(v)),
        Target::Mac(layer) => node.mac.iter().any(|m| same_text(m, layer)),
        Target::Label { key, value } => node.labels.get(key).is_some_and(|l| same_text(l, value)),
    };
    hit == c.equal
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
