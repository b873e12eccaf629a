//! Owns what the CLI prints: Docker-shaped tables and messages, and JSON for `inspect`.

use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Result;
use serde_json::json;
use shoal_proto::{
    GetNodeResponse, InfoResponse, InitResponse, JoinTokenInfo, ListNodesResponse, NodeRole,
};

/// A table with elastic columns, as Docker prints them: each column as wide as its longest
/// cell, three spaces apart, every cell made one line of plain text first (see [`one_line`]).
/// Blank ends of rows are trimmed.
pub fn table(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut tw = tabwriter::TabWriter::new(Vec::new()).padding(3);
    let mut line = |cells: &mut dyn Iterator<Item = String>| {
        let cells: Vec<String> = cells.map(|c| one_line(&c)).collect();
        // Writing to a Vec cannot fail.
        let _ = std::io::Write::write_all(&mut tw, format!("{}\n", cells.join("\t")).as_bytes());
    };
    line(&mut header.iter().map(|h| h.to_string()));
    for row in rows {
        line(&mut row.into_iter());
    }
    let bytes = tw.into_inner().unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    text.lines().map(|l| format!("{}\n", l.trim_end())).collect()
}

/// A cell of a table as one line of plain text: the words come from nodes and task output
/// (an error a process printed, a hostname), and a line break, carriage return, tab or
/// terminal escape in them would break the row, or move the cursor so the shell's next prompt
/// lands on the last line. Control characters become spaces.
pub fn one_line(text: &str) -> String {
    let plain: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    plain.trim().to_string()
}

fn rfc3339_secs(unix: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A time in milliseconds since the epoch as RFC 3339 (what `inspect` prints).
pub fn rfc3339_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// After `swarm init`.
pub fn init(r: &InitResponse) -> String {
    format!(
        "Swarm initialized: current node ({}) is now a manager.\n\n\
         To add a worker to this swarm, run the following command:\n\n    \
         shoal swarm join --token {} {}\n\n\
         To add a manager to this swarm, run 'shoal swarm join-token manager' and follow the instructions.\n",
        r.node_id, r.worker_token, r.advertise_addr
    )
}

/// After `swarm join-token`.
pub fn join_token(t: &JoinTokenInfo, rotated: bool, quiet: bool) -> String {
    if quiet {
        return format!("{}\n", t.token);
    }
    let role = t.role().word();
    let addr = t.manager_addrs.first().map(String::as_str).unwrap_or("MANAGER-ADDR");
    let mut out = String::new();
    if rotated {
        let _ = writeln!(out, "Successfully rotated {role} join token.\n");
    }
    let _ = writeln!(out, "To add a {role} to this swarm, run the following command:\n");
    let _ = writeln!(out, "    shoal swarm join --token {} {addr}\n", t.token);
    if t.expires_at_ms > 0 {
        let _ = writeln!(out, "This token expires at {}.", rfc3339_ms(t.expires_at_ms));
    }
    if t.max_uses > 0 {
        let _ = writeln!(
            out,
            "This token admits {} more node(s) (used {} of {}).",
            t.max_uses.saturating_sub(t.uses),
            t.uses,
            t.max_uses
        );
    }
    out
}

/// One line on a root rotation's progress (`swarm ca`).
pub fn rotation_progress(info: &shoal_proto::RootCaInfo) -> String {
    if !info.rotating {
        return "No root rotation is in progress.".to_string();
    }
    let mut line = format!(
        "Rotating the root CA: {}/{} nodes use the new root",
        info.nodes_done, info.nodes_total
    );
    if !info.waiting_for.is_empty() {
        let _ = write!(line, "; waiting for {}", info.waiting_for.join(", "));
    }
    if info.force {
        line.push_str(" (not waiting for nodes that are down)");
    }
    line
}

/// `node ls`.
pub fn node_ls(r: &ListNodesResponse, quiet: bool) -> String {
    let mut out = String::new();
    if quiet {
        for n in &r.nodes {
            let _ = writeln!(out, "{}", n.id);
        }
        return out;
    }
    let rows = r.nodes.iter().map(|n| {
        let marker = if n.id == r.leader_id { " *" } else { "" };
        let manager_status = match (n.role(), n.id == r.leader_id) {
            (_, true) => "Leader",
            (NodeRole::Manager, false) if r.unreachable_ids.contains(&n.id) => "Unreachable",
            (NodeRole::Manager, false) => "Reachable",
            (NodeRole::Worker, false) => "",
        };
        let expiry =
            n.certificate.as_ref().map(|c| rfc3339_secs(c.not_after_unix)).unwrap_or_default();
        vec![
            format!("{}{marker}", n.id),
            n.hostname.clone(),
            n.state().word().to_string(),
            n.availability().word().to_string(),
            manager_status.to_string(),
            expiry,
            r.tls_status.get(&n.id).cloned().unwrap_or_default(),
        ]
    });
    out + &table(
        &[
            "ID",
            "HOSTNAME",
            "STATUS",
            "AVAILABILITY",
            "MANAGER STATUS",
            "CERT EXPIRY",
            "TLS STATUS",
        ],
        rows,
    )
}

fn node_json(r: &GetNodeResponse) -> serde_json::Value {
    let n = r.node.clone().unwrap_or_default();
    let meta = n.meta.unwrap_or_default();
    let cert = n.certificate.clone().unwrap_or_default();
    let mut value = json!({
        "ID": n.id,
        "Version": meta.version,
        "CreatedAt": rfc3339_ms(meta.created_at_ms),
        "UpdatedAt": rfc3339_ms(meta.updated_at_ms),
        "Role": n.role().word(),
        "Hostname": n.hostname,
        "Addr": n.addr,
        "Status": { "State": n.state().word().to_lowercase(), "Message": n.state_message },
        "Availability": n.availability().word().to_lowercase(),
        "Certificate": {
            "Serial": cert.serial_hex,
            "NotBefore": rfc3339_secs(cert.not_before_unix),
            "NotAfter": rfc3339_secs(cert.not_after_unix),
            "Issued": n.serials.len(),
        },
        "TunnelKeys": tunnel_keys(&n),
    });
    if let Some(d) = &n.description {
        value["Description"] = json!({
            "Platform": {
                "OS": d.os,
                "Architecture": d.arch,
                "MAC": d.mac,
            },
            "Resources": { "NanoCPUs": d.nano_cpus, "MemoryBytes": d.memory_bytes },
            "Security": d.mac_detail,
            "TaskPolicy": {
                "CapAdd": d.allowed_cap_add,
                "Binds": d.allows_binds,
                "LabelOverride": d.allows_label_override,
                "AppArmor": d.allowed_apparmor,
            },
        });
    }
    if let Some(m) = &r.manager_status {
        let reachability = if m.reachable { "reachable" } else { "unreachable" };
        value["ManagerStatus"] =
            json!({ "Leader": m.leader, "Reachability": reachability, "Addr": m.addr });
    }
    value
}

/// A node's tunnel public keys as fingerprints, newest first (the key itself is not shown).
fn tunnel_keys(n: &shoal_proto::Node) -> Vec<serde_json::Value> {
    n.tunnel_keys
        .iter()
        .map(|k| {
            json!({
                "Fingerprint": shoal_pki::tunnel::fingerprint(&k.public_key),
                "CreatedAt": rfc3339_ms(k.created_ms),
            })
        })
        .collect()
}

/// `node inspect`: managers also show where the other managers reach them.
pub fn node_inspect(found: &[GetNodeResponse], pretty: bool) -> Result<String> {
    if !pretty {
        let all: Vec<_> = found.iter().map(node_json).collect();
        return Ok(serde_json::to_string_pretty(&all)? + "\n");
    }
    let mut out = String::new();
    for r in found {
        let n = r.node.clone().unwrap_or_default();
        let cert = n.certificate.clone().unwrap_or_default();
        let _ = writeln!(out, "ID:                  {}", n.id);
        let _ = writeln!(out, "Hostname:            {}", n.hostname);
        let _ = writeln!(out, "Role:                {}", n.role().word());
        let _ = writeln!(out, "Address:             {}", n.addr);
        if let Some(m) = &r.manager_status {
            let _ = writeln!(out, "Manager Address:     {}", m.addr);
            let _ = writeln!(out, "Leader:              {}", if m.leader { "Yes" } else { "No" });
            let reachability = if m.reachable { "Reachable" } else { "Unreachable" };
            let _ = writeln!(out, "Reachability:        {reachability}");
        }
        let _ = writeln!(out, "Status:              {} {}", n.state().word(), n.state_message);
        let _ = writeln!(out, "Availability:        {}", n.availability().word());
        if let Some(d) = &n.description {
            let layers = if d.mac.is_empty() { "none".to_string() } else { d.mac.join(", ") };
            let _ = writeln!(out, "MAC layers:          {layers}");
            if !d.mac_detail.is_empty() {
                let _ = writeln!(out, "Security:            {}", d.mac_detail);
            }
        }
        let _ = writeln!(out, "Certificate serial:  {}", cert.serial_hex);
        let _ = writeln!(out, "Certificate expiry:  {}", rfc3339_secs(cert.not_after_unix));
        match n.tunnel_keys.first() {
            Some(k) => {
                let fp = shoal_pki::tunnel::fingerprint(&k.public_key);
                let _ =
                    writeln!(out, "Tunnel key:          {fp} (since {})", rfc3339_ms(k.created_ms));
            }
            None => {
                let _ = writeln!(out, "Tunnel key:          none reported");
            }
        }
        let _ = writeln!(out);
    }
    Ok(out)
}

/// The unlock key, as `swarm init --autolock`, `update --autolock=true` and `unlock-key` show it.
pub fn unlock_key(key: &str, rotated: bool, quiet: bool) -> String {
    if quiet {
        return format!("{key}\n");
    }
    let mut out = String::new();
    if rotated {
        let _ = writeln!(out, "Successfully rotated manager unlock key.\n");
    }
    let _ = writeln!(
        out,
        "To unlock a swarm manager after it restarts, run 'shoal swarm unlock' and provide the \
         following key:\n\n    {key}\n\nKeep it somewhere safe: without it a restarted manager \
         cannot read its data."
    );
    out
}

/// `image ls`.
pub fn images(list: &shoal_proto::ImageList, quiet: bool, digests: bool) -> String {
    let mut out = String::new();
    if quiet {
        for i in &list.images {
            let _ = writeln!(out, "{}", i.id);
        }
        return out;
    }
    let rows = list.images.iter().map(|i| {
        let short = i.id.trim_start_matches("sha256:").chars().take(12).collect::<String>();
        let names = if i.names.is_empty() { "<none>".to_string() } else { i.names.join(",") };
        let size = format!("{:.1}MB", i.size as f64 / 1e6);
        if digests {
            let d =
                if i.repo_digests.is_empty() { "<none>".into() } else { i.repo_digests.join(",") };
            vec![names, short, d, i.layers.to_string(), size]
        } else {
            vec![names, short, i.layers.to_string(), size]
        }
    });
    let header: &[&str] = if digests {
        &["REFERENCE", "IMAGE ID", "DIGEST", "LAYERS", "SIZE"]
    } else {
        &["REFERENCE", "IMAGE ID", "LAYERS", "SIZE"]
    };
    out + &table(header, rows)
}

/// `swarm inspect`.
pub fn cluster(c: &shoal_proto::ClusterInfo) -> Result<String> {
    let spec = c.spec.clone().unwrap_or_default();
    let value = json!({
        "ID": c.id,
        "CreatedAt": rfc3339_ms(c.created_at_ms),
        "Spec": {
            "CAConfig": { "NodeCertExpiry": format!("{}s", spec.cert_expiry_secs) },
            "Dispatcher": { "HeartbeatPeriod": format!("{}ms", spec.heartbeat_period_ms) },
            "EncryptionConfig": {
                "NetworkKeyRotation": format!(
                    "{}s",
                    shoal_pki::tunnel::rotation_period(spec.network_key_rotation_secs).as_secs()
                ),
            },
            "ContentTrust": {
                "Required": spec.content_trust_required,
                "TimestampExpiry": format!(
                    "{}s",
                    if spec.trust_timestamp_secs == 0 {
                        shoal_pki::trust::TIMESTAMP_LIFETIME.as_secs()
                    } else {
                        spec.trust_timestamp_secs
                    }
                ),
            },
            "ScanPolicy": {
                "Block": if spec.scan_block.is_empty() { "none" } else { spec.scan_block.as_str() },
            },
        },
        "RootCA": { "Digest": c.root_ca_digest, "Certificate": c.root_ca_pem },
        "RevokedNodes": c.revoked_nodes,
        "Autolock": c.autolock,
    });
    Ok(serde_json::to_string_pretty(&value)? + "\n")
}

/// `info`.
pub fn info(r: &InfoResponse) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Swarm: {}", r.swarm_state);
    let _ = writeln!(out, " Data root: {}", r.data_root);
    if !r.security.is_empty() {
        let _ = writeln!(out, " Security: {}", r.security);
    }
    if r.node_id.is_empty() {
        return out;
    }
    let _ = writeln!(out, " NodeID: {}", r.node_id);
    let _ = writeln!(out, " Role: {}", r.role().word());
    let _ = writeln!(out, " Is Manager: {}", r.is_manager);
    let _ = writeln!(out, " ClusterID: {}", r.cluster_id);
    let _ = writeln!(out, " Node Address: {}", r.node_addr);
    let _ = writeln!(out, " Manager Addresses: {}", r.manager_addrs.join(", "));
    // A locked manager reads no store: it has no counts to show.
    if r.is_manager && r.swarm_state != "locked" {
        let _ = writeln!(out, " Nodes: {}", r.nodes);
        let _ = writeln!(out, " Managers: {}", r.managers);
    }
    let _ = writeln!(out, " Certificate Serial: {}", r.cert_serial);
    let _ = writeln!(out, " Certificate Expiry: {}", rfc3339_secs(r.cert_not_after_unix));
    let _ = writeln!(out, " Certificate Renewals: {}", r.cert_renewals);
    if !r.error.is_empty() {
        let _ = writeln!(out, " Error: {}", r.error);
    }
    out
}

/// `image scan`: the findings, worst first, with the version that fixes each.
pub fn scan_report(image: &str, r: &shoal_proto::spec::scan::Report, advisories: u64) -> String {
    let mut out = String::new();
    let os = if r.os.is_empty() { "unknown system".to_string() } else { r.os.clone() };
    if advisories == 0 {
        out.push_str(
            "Warning: this node has no vulnerability database (shoal scan db import FILE|DIR)\n",
        );
    }
    out.push_str(&format!(
        "{image}: {os}, {} packages, {} known vulnerabilities ({advisories} advisories checked)\n",
        r.packages,
        r.findings.len()
    ));
    if r.findings.is_empty() {
        return out;
    }
    let mut counts = std::collections::BTreeMap::new();
    for f in &r.findings {
        *counts.entry(std::cmp::Reverse(f.severity)).or_insert(0) += 1;
    }
    let summary: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {}", s.0)).collect();
    out.push_str(&format!("{}\n\n", summary.join(", ")));
    out.push_str(&format!(
        "{:<10} {:<22} {:<18} {:<24} {:<24} {}\n",
        "SEVERITY", "ID", "PACKAGE", "INSTALLED", "FIXED IN", "SUMMARY"
    ));
    for f in &r.findings {
        let id = f.name();
        out.push_str(&format!(
            "{:<10} {:<22} {:<18} {:<24} {:<24} {}\n",
            f.severity.to_string(),
            id,
            f.package,
            f.installed,
            f.fixed.as_deref().unwrap_or("(no fix yet)"),
            f.summary
        ));
    }
    out
}
