//! The files a task with networks gets in `/etc`: `resolv.conf` (the node's resolver for the
//! task, at 127.0.0.11), `hosts` (its own names) and `hostname`. Pure text, written by the
//! caller.

use std::net::Ipv4Addr;

/// Where each task finds its resolver, inside its own network namespace (Docker's address).
pub const RESOLVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// `/etc/resolv.conf`: the embedded resolver, with the search domains the node uses.
pub fn resolv_conf(search: &[String], options: &[String]) -> String {
    let mut out = format!("nameserver {RESOLVER}\n");
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    let mut opts: Vec<String> = options.to_vec();
    if !opts.iter().any(|o| o.starts_with("ndots:")) {
        opts.insert(0, "ndots:0".into());
    }
    out.push_str(&format!("options {}\n", opts.join(" ")));
    out
}

/// `/etc/hosts`: localhost, and the task's hostname on its first address.
pub fn hosts(hostname: &str, addr: Option<Ipv4Addr>) -> String {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    if let Some(a) = addr {
        out.push_str(&format!("{a}\t{hostname}\n"));
    }
    out
}

/// The `search` domains of a node's resolv.conf.
pub fn search_domains(node_resolv: &str) -> Vec<String> {
    node_resolv
        .lines()
        .filter_map(|l| l.trim().strip_prefix("search"))
        .flat_map(|rest| rest.split_whitespace().map(str::to_string))
        .collect()
}

/// The `nameserver` addresses of a node's resolv.conf, loopback ones left out (they mean
/// nothing inside a task's namespace, and the node's resolver answers for the task anyway).
pub fn nameservers(node_resolv: &str) -> Vec<std::net::IpAddr> {
    node_resolv
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_resolves_through_its_node_and_knows_its_own_name() {
        let node =
            "# generated\nnameserver 10.1.2.3\nsearch corp.example lab\nnameserver fd00::53\n";
        assert_eq!(search_domains(node), ["corp.example", "lab"]);
        assert_eq!(nameservers(node).len(), 2);
        let conf = resolv_conf(&search_domains(node), &[]);
        assert_eq!(conf, "nameserver 127.0.0.11\nsearch corp.example lab\noptions ndots:0\n");
        // --dns-option: the task's options, ndots only when it gives none.
        let conf = resolv_conf(&[], &["ndots:2".into(), "timeout:1".into()]);
        assert_eq!(conf, "nameserver 127.0.0.11\noptions ndots:2 timeout:1\n");
        let h = hosts("web-1", Some(Ipv4Addr::new(10, 0, 1, 7)));
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("10.0.1.7\tweb-1\n"), "{h}");
    }
}
