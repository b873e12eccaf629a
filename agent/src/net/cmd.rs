//! Runs the node's network tools: `ip` (iproute2), `bridge` and `nft`, in the node's network
//! namespace or a named one, with their input on stdin. Each batch is one process; a failure
//! names the command and what the tool said.

use std::io::Write;
use std::process::{Command, Stdio};

use super::NetError;

/// Runs `program args…` with `input` on stdin; its stderr becomes the error.
fn run(program: &str, args: &[&str], input: &str) -> Result<String, NetError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Tool { tool: program.to_string(), message: e.to_string() })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetError::Tool { tool: program.to_string(), message: e.to_string() })?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let first = input.lines().next().unwrap_or_default();
        return Err(NetError::Tool {
            tool: format!("{program} {}", args.join(" ")),
            message: if first.is_empty() { said } else { format!("{said} (batch: {first}…)") },
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -batch`: one command per line, in `netns` (a name under /run/netns) or the node's.
pub fn ip(netns: Option<&str>, lines: &[String]) -> Result<(), NetError> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut args = Vec::new();
    if let Some(ns) = netns {
        args.extend(["-n", ns]);
    }
    args.extend(["-batch", "-"]);
    run("ip", &args, &(lines.join("\n") + "\n")).map(drop)
}

/// One `ip` command whose output is wanted (`-j` for JSON).
pub fn ip_out(netns: Option<&str>, args: &[&str]) -> Result<String, NetError> {
    let mut all = Vec::new();
    if let Some(ns) = netns {
        all.extend(["-n", ns]);
    }
    all.extend_from_slice(args);
    run("ip", &all, "")
}

/// `bridge -batch` in `netns`.
pub fn bridge(netns: &str, lines: &[String]) -> Result<(), NetError> {
    if lines.is_empty() {
        return Ok(());
    }
    run("bridge", &["-n", netns, "-batch", "-"], &(lines.join("\n") + "\n")).map(drop)
}

/// One `bridge` command whose output is wanted.
pub fn bridge_out(netns: &str, args: &[&str]) -> Result<String, NetError> {
    let mut all = vec!["-n", netns];
    all.extend_from_slice(args);
    run("bridge", &all, "")
}

/// `nft -f -` with `ruleset`, in the namespace at `netns_path` or the node's. A ruleset is
/// applied whole or not at all.
pub fn nft(netns_path: Option<&str>, ruleset: &str) -> Result<(), NetError> {
    match netns_path {
        Some(path) => {
            let net = format!("--net={path}");
            run("nsenter", &[&net, "nft", "-f", "-"], ruleset).map(drop)
        }
        None => run("nft", &["-f", "-"], ruleset).map(drop),
    }
}

/// Whether `program` runs here (for optional integrations such as iptables).
pub fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether iptables runs here (asked once per process).
pub fn have_iptables() -> bool {
    static HAVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAVE.get_or_init(|| have("iptables"))
}

/// `iptables args…`, for the one integration that needs it (Docker's FORWARD policy).
pub fn iptables(args: &[&str]) -> Result<(), NetError> {
    run("iptables", args, "").map(drop)
}
