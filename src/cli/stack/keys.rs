//! The keys of the Compose specification, by where they stand: a key Shoal does not read is
//! either a real Compose key (a warning: stacks ignore it, as Docker's do) or not Compose at all
//! (an error naming the key and its line, with the nearest real key, so a typo such as
//! `deploy.replicaz` or `imgae` never deploys).

const TOP: &[&str] =
    &["version", "name", "services", "networks", "volumes", "secrets", "configs", "include"];

const SERVICE: &[&str] = &[
    "annotations",
    "attach",
    "blkio_config",
    "build",
    "cap_add",
    "cap_drop",
    "cgroup",
    "cgroup_parent",
    "command",
    "configs",
    "container_name",
    "cpu_count",
    "cpu_percent",
    "cpu_shares",
    "cpu_quota",
    "cpu_period",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpus",
    "cpuset",
    "credential_spec",
    "depends_on",
    "deploy",
    "develop",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "driver_opts",
    "entrypoint",
    "env_file",
    "environment",
    "expose",
    "extends",
    "external_links",
    "extra_hosts",
    "gpus",
    "group_add",
    "healthcheck",
    "hostname",
    "image",
    "init",
    "ipc",
    "isolation",
    "labels",
    "label_file",
    "links",
    "logging",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "network_mode",
    "networks",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "ports",
    "post_start",
    "pre_stop",
    "privileged",
    "profiles",
    "provider",
    "pull_policy",
    "read_only",
    "restart",
    "runtime",
    "scale",
    "secrets",
    "security_opt",
    "shm_size",
    "stdin_open",
    "stop_grace_period",
    "stop_signal",
    "storage_opt",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "use_api_socket",
    "user",
    "userns_mode",
    "uts",
    "volumes",
    "volumes_from",
    "working_dir",
];

const DEPLOY: &[&str] = &[
    "endpoint_mode",
    "labels",
    "mode",
    "placement",
    "replicas",
    "resources",
    "restart_policy",
    "rollback_config",
    "update_config",
];
const RESOURCES: &[&str] = &["limits", "reservations"];
const LIMITS: &[&str] = &["cpus", "memory", "pids", "devices", "generic_resources"];
const RESTART: &[&str] = &["condition", "delay", "max_attempts", "window"];
const UPDATE: &[&str] =
    &["parallelism", "delay", "failure_action", "monitor", "max_failure_ratio", "order"];
const PLACEMENT: &[&str] = &["constraints", "preferences", "max_replicas_per_node"];
const HEALTHCHECK: &[&str] =
    &["test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"];
const NETWORK: &[&str] = &[
    "driver",
    "driver_opts",
    "attachable",
    "enable_ipv6",
    "enable_ipv4",
    "ipam",
    "internal",
    "labels",
    "external",
    "name",
];
const IPAM: &[&str] = &["driver", "config", "options"];
const IPAM_CONFIG: &[&str] = &["subnet", "ip_range", "gateway", "aux_addresses"];
const OBJECT: &[&str] = &[
    "file",
    "environment",
    "external",
    "name",
    "labels",
    "driver",
    "driver_opts",
    "template_driver",
    "content",
];
const VOLUME: &[&str] = &["driver", "driver_opts", "external", "labels", "name"];
const SERVICE_NETWORK: &[&str] = &[
    "aliases",
    "ipv4_address",
    "ipv6_address",
    "link_local_ips",
    "mac_address",
    "priority",
    "driver_opts",
    "gw_priority",
];
const REFERENCE: &[&str] = &["source", "target", "uid", "gid", "mode"];
const ULIMIT: &[&str] = &["soft", "hard"];
const PORT: &[&str] =
    &["target", "published", "protocol", "mode", "host_ip", "name", "app_protocol"];

/// The keys that may stand under the dotted `path` of a key (its parent), if Shoal knows
/// the place.
fn known_under(path: &str) -> Option<&'static [&'static str]> {
    let segs: Vec<&str> = path.split('.').map(|s| s.split('[').next().unwrap_or(s)).collect();
    let parent = &segs[..segs.len().saturating_sub(1)];
    Some(match parent {
        [] => TOP,
        ["services", _] => SERVICE,
        ["services", _, "deploy"] => DEPLOY,
        ["services", _, "deploy", "resources"] => RESOURCES,
        ["services", _, "deploy", "resources", _] => LIMITS,
        ["services", _, "deploy", "restart_policy"] => RESTART,
        ["services", _, "deploy", "update_config" | "rollback_config"] => UPDATE,
        ["services", _, "deploy", "placement"] => PLACEMENT,
        ["services", _, "healthcheck"] => HEALTHCHECK,
        ["services", _, "networks", _] => SERVICE_NETWORK,
        ["services", _, "secrets" | "configs"] => REFERENCE,
        ["services", _, "ulimits", _] => ULIMIT,
        ["services", _, "ports"] => PORT,
        ["networks", _] => NETWORK,
        ["networks", _, "ipam"] => IPAM,
        ["networks", _, "ipam", "config"] => IPAM_CONFIG,
        ["secrets" | "configs", _] => OBJECT,
        ["volumes", _] => VOLUME,
        _ => return None,
    })
}

/// Whether the key at `path` is a real Compose key where it stands; `None` when the place is
/// not one Shoal checks.
pub fn is_compose_key(path: &str) -> Option<bool> {
    let key = path.rsplit('.').next().unwrap_or(path);
    let key = key.split('[').next().unwrap_or(key);
    known_under(path).map(|keys| keys.contains(&key))
}

/// The real key nearest to the one at `path` (at most two edits away), for "did you mean".
pub fn nearest(path: &str) -> Option<&'static str> {
    let key = path.rsplit('.').next().unwrap_or(path);
    let keys = known_under(path)?;
    keys.iter()
        .map(|k| (strsim::damerau_levenshtein(key, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_are_not_compose_and_come_with_the_nearest_key() {
        assert_eq!(is_compose_key("services.web.imgae"), Some(false));
        assert_eq!(nearest("services.web.imgae"), Some("image"));
        assert_eq!(is_compose_key("services.web.deploy.replicaz"), Some(false));
        assert_eq!(nearest("services.web.deploy.replicaz"), Some("replicas"));
        assert_eq!(is_compose_key("services.web.build"), Some(true));
        assert_eq!(is_compose_key("services.web.deploy.resources.limits.pids"), Some(true));
        assert_eq!(is_compose_key("services.web.secrets[0].sourc"), Some(false));
        assert_eq!(is_compose_key("networks.front.ipam.config[0].subnet"), Some(true));
        assert_eq!(is_compose_key("volumez"), Some(false));
        assert_eq!(nearest("volumez"), Some("volumes"));
        assert_eq!(is_compose_key("services.web.logging.driver"), None, "not a checked place");
        assert_eq!(nearest("services.web.zzzzzz"), None);
    }
}
