//! Capability names and sets: Docker's default 14, name forms, and the add/drop arithmetic.
//! Shared by the agent (which applies them) and the managers (which refuse at create a service
//! whose capabilities no node allows).

use std::collections::BTreeSet;

/// Every capability the kernel knows, indexed by its number.
pub const ALL_CAPS: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Docker's default set for containers (`CapEff = 0xa80425fb`).
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SYS_CHROOT",
    "CAP_MKNOD",
    "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
];

/// `net_admin`, `NET_ADMIN` and `CAP_NET_ADMIN` all name `CAP_NET_ADMIN`; `all` is `ALL`.
pub fn normalize(name: &str) -> Result<&'static str, String> {
    let upper = name.trim().to_ascii_uppercase();
    if upper == "ALL" {
        return Ok("ALL");
    }
    let full = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
    ALL_CAPS
        .iter()
        .copied()
        .find(|c| *c == full)
        .ok_or_else(|| format!("unknown capability {name:?}; use names like NET_ADMIN"))
}

/// The capability set after applying `add` and `drop` to the default, Docker's way:
/// `drop ALL` empties the set before adding, `add ALL` fills it before dropping.
pub fn effective(add: &[String], drop: &[String]) -> Result<BTreeSet<&'static str>, String> {
    let add: Vec<_> = add.iter().map(|c| normalize(c)).collect::<Result<_, _>>()?;
    let drop: Vec<_> = drop.iter().map(|c| normalize(c)).collect::<Result<_, _>>()?;
    let mut set: BTreeSet<&'static str> = if add.contains(&"ALL") {
        ALL_CAPS.iter().copied().collect()
    } else if drop.contains(&"ALL") {
        BTreeSet::new()
    } else {
        DEFAULT_CAPS.iter().copied().collect()
    };
    if !add.contains(&"ALL") {
        set.extend(add.iter().copied().filter(|c| !drop.contains(c)));
    }
    for c in drop.iter().filter(|c| **c != "ALL") {
        set.remove(c);
    }
    Ok(set)
}

/// Capabilities in `set` beyond Docker's default: what a node must allow.
pub fn widening(set: &BTreeSet<&'static str>) -> Vec<&'static str> {
    set.iter().copied().filter(|c| !DEFAULT_CAPS.contains(c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn add_and_drop() {
        let set = effective(&s(&["net_admin"]), &s(&["CAP_CHOWN", "MKNOD"])).unwrap();
        assert!(set.contains("CAP_NET_ADMIN") && !set.contains("CAP_CHOWN"));
        assert_eq!(set.len(), 13);
        assert_eq!(widening(&set), vec!["CAP_NET_ADMIN"]);
    }

    #[test]
    fn drop_all_then_add() {
        let set = effective(&s(&["NET_BIND_SERVICE"]), &s(&["ALL"])).unwrap();
        assert_eq!(set.into_iter().collect::<Vec<_>>(), vec!["CAP_NET_BIND_SERVICE"]);
    }

    #[test]
    fn add_all_then_drop() {
        let set = effective(&s(&["ALL"]), &s(&["SYS_ADMIN"])).unwrap();
        assert_eq!(set.len(), 40);
    }

    #[test]
    fn unknown_names_are_errors() {
        assert!(effective(&s(&["CAP_FLY"]), &[]).is_err());
    }
}
