//! Running commands with a time limit, and reading what they printed and logged.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::COMMAND_TIMEOUT;

/// Checks whose failure does not stop the story (what the user is told, rather than what the
/// cluster does); the story fails at its end with all of them listed.
#[derive(Debug, Default)]
pub struct Deviations(std::cell::RefCell<Vec<String>>);

impl Deviations {
    pub fn check(&self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let what = what();
            eprintln!("DEVIATION: {what}");
            self.0.borrow_mut().push(what);
        }
    }

    pub fn result(&self) -> Result<(), String> {
        let all = self.0.borrow();
        if all.is_empty() {
            return Ok(());
        }
        let list: Vec<String> =
            all.iter().enumerate().map(|(i, d)| format!("{}. {d}", i + 1)).collect();
        Err(format!("{} deviation(s) from the expected behaviour:\n{}", all.len(), list.join("\n")))
    }
}

/// Runs `cmd`, killing it if it takes longer than `COMMAND_TIMEOUT`.
pub fn run(cmd: Command) -> Output {
    run_within(cmd, COMMAND_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `cmd`; if it takes longer than `timeout` it is killed and the error says so.
pub fn run_within(mut cmd: Command, timeout: Duration) -> Result<Output, String> {
    let desc = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {desc}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => Ok(out.unwrap_or_else(|e| panic!("waiting for {desc}: {e}"))),
        Err(_) => {
            quiet("kill", &["-9", &pid.to_string()]);
            let _ = rx.recv_timeout(Duration::from_secs(5));
            Err(format!("{desc} hung for more than {timeout:?} and was killed"))
        }
    }
}

/// Runs a setup or teardown command, ignoring whether it works.
pub fn quiet(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs a setup command that must work.
pub fn must(program: &str, args: &[&str]) {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// stdout then stderr, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "exit: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether this process runs as root (effective UID 0), read from /proc.
pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

/// The last `lines` lines of a log, with runs of lines that differ only in their timestamp
/// (retry loops) folded into one, so the tail shows more than one loop.
pub fn tail(path: &Path, lines: usize) -> String {
    let log = match std::fs::read_to_string(path) {
        Ok(s) => strip_ansi(&s),
        Err(e) => return format!("(no log: {e})"),
    };
    let mut folded: Vec<(String, usize)> = Vec::new();
    for line in log.lines() {
        let body = line.split_once(' ').map(|(_, rest)| rest).unwrap_or(line);
        match folded.last_mut() {
            Some((last, n)) if last.split_once(' ').map(|(_, r)| r) == Some(body) => *n += 1,
            _ => folded.push((line.to_string(), 1)),
        }
    }
    let start = folded.len().saturating_sub(lines);
    folded[start..]
        .iter()
        .map(|(l, n)| if *n > 1 { format!("{l}   [x{n}]") } else { l.clone() })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Removes terminal color sequences (`ESC [ ... m`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else {
        "(non-text panic)".into()
    }
}
