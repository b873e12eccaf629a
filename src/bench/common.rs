//! What the benchmarks share: statistics, scratch space, ports, logs, and waiting.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// The median (upper one of an even count); NaN for no samples.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A sorted copy's `p` quantile (nearest rank); zero for no samples.
pub fn percentile(v: &[Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = v.to_vec();
    sorted.sort();
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Durations in seconds.
pub fn secs(v: &[Duration]) -> Vec<f64> {
    v.iter().map(|d| d.as_secs_f64()).collect()
}

/// The 1-minute load average and the CPU count: figures from a busy machine read differently.
pub fn load_note() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let one = load.split_whitespace().next().unwrap_or("?").to_string();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("load average {one} on {cpus} CPUs")
}

/// A temp dir named `<prefix>…`, removed when dropped.
pub fn temp_dir(prefix: &str) -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix(prefix).tempdir()?)
}

/// A loopback port free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(free_ports(1)?[0])
}

/// `n` free loopback ports (held until all are chosen, so they differ).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
    Ok(listeners.iter().map(|l| l.local_addr().map(|a| a.port())).collect::<Result<_, _>>()?)
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `check` every `every` until it yields a value or `limit` passes.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut check: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_error = Some(format!("{e:#}")),
        }
        if Instant::now() > deadline {
            let why = last_error.map(|e| format!(" (last error: {e})")).unwrap_or_default();
            bail!("timed out after {limit:?} waiting for {what}{why}");
        }
        tokio::time::sleep(every).await;
    }
}
