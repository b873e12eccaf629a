//! Health checks, as Docker runs them: a command inside the container every interval, killed
//! after its timeout; failures during the start period do not count until the first success;
//! `retries` consecutive failures make the task unhealthy. Owns the timing and counting, not
//! what happens to an unhealthy task.

use std::time::Duration;

use shoal_proto::HealthCheck;
use tokio::time::Instant;

use super::executor::Executor;

/// Docker's defaults for fields left at zero.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RETRIES: u32 = 3;

/// Health as the task status reports it.
pub const STARTING: &str = "starting";
pub const HEALTHY: &str = "healthy";
pub const UNHEALTHY: &str = "unhealthy";

/// A task's health check, defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub argv: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
}

impl Probe {
    /// The probe of `check`; `None` when there is none (no test, or `["NONE"]`).
    pub fn from_spec(check: Option<&HealthCheck>) -> Option<Probe> {
        let check = check?;
        let argv = match check.test.split_first()? {
            (kind, _) if kind == "NONE" => return None,
            (kind, rest) if kind == "CMD" => rest.to_vec(),
            (kind, rest) if kind == "CMD-SHELL" => {
                vec!["/bin/sh".into(), "-c".into(), rest.join(" ")]
            }
            _ => check.test.clone(),
        };
        if argv.is_empty() {
            return None;
        }
        let ms = |v: u64, default: Duration| {
            if v == 0 {
                default
            } else {
                Duration::from_millis(v)
            }
        };
        Some(Probe {
            argv,
            interval: ms(check.interval_ms, DEFAULT_INTERVAL),
            timeout: ms(check.timeout_ms, DEFAULT_TIMEOUT),
            retries: if check.retries == 0 { DEFAULT_RETRIES } else { check.retries },
            start_period: Duration::from_millis(check.start_period_ms),
        })
    }
}

/// Counts results into a health state. Pure.
#[derive(Debug)]
struct Counter {
    health: &'static str,
    failures: u32,
}

impl Counter {
    /// Records one result at `elapsed` since the task started; returns the new health.
    fn record(&mut self, probe: &Probe, ok: bool, elapsed: Duration) -> &'static str {
        if ok {
            self.failures = 0;
            self.health = HEALTHY;
        } else if self.health != STARTING || elapsed >= probe.start_period {
            self.failures += 1;
            if self.failures >= probe.retries {
                self.health = UNHEALTHY;
            }
        }
        self.health
    }
}

/// Probes task `id` until it turns unhealthy; calls `report` with each new health (first
/// "starting") and returns the last probe's output. Never returns while the task is healthy.
pub async fn watch(exec: &dyn Executor, id: &str, probe: &Probe, report: impl Fn(&str)) -> String {
    let started = Instant::now();
    let mut counter = Counter { health: STARTING, failures: 0 };
    report(STARTING);
    loop {
        tokio::time::sleep(probe.interval).await;
        let (ok, output) = run_once(exec, id, probe).await;
        let before = counter.health;
        let now = counter.record(probe, ok, started.elapsed());
        if now != before {
            report(now);
        }
        if now == UNHEALTHY {
            return output;
        }
    }
}

async fn run_once(exec: &dyn Executor, id: &str, probe: &Probe) -> (bool, String) {
    match exec.exec(id, &probe.argv, probe.timeout).await {
        Ok(out) if out.timed_out => {
            (false, format!("health check exceeded its timeout ({:?})", probe.timeout))
        }
        Ok(out) => (out.code == 0, out.output.trim().to_string()),
        Err(e) => (false, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(test: &[&str]) -> HealthCheck {
        HealthCheck { test: test.iter().map(|s| s.to_string()).collect(), ..Default::default() }
    }

    #[test]
    fn docker_forms_and_defaults() {
        let p = Probe::from_spec(Some(&check(&["CMD-SHELL", "curl -f localhost"]))).unwrap();
        assert_eq!(p.argv, vec!["/bin/sh", "-c", "curl -f localhost"]);
        assert_eq!((p.interval, p.timeout, p.retries), (DEFAULT_INTERVAL, DEFAULT_TIMEOUT, 3));
        let p = Probe::from_spec(Some(&check(&["CMD", "/bin/true", "x"]))).unwrap();
        assert_eq!(p.argv, vec!["/bin/true", "x"]);
        assert_eq!(Probe::from_spec(Some(&check(&["NONE"]))), None);
        assert_eq!(Probe::from_spec(Some(&check(&[]))), None);
        assert_eq!(Probe::from_spec(None), None);
    }

    #[test]
    fn start_period_forgives_failures_until_the_first_success() {
        let probe = Probe {
            argv: vec!["x".into()],
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            retries: 2,
            start_period: Duration::from_secs(10),
        };
        let mut c = Counter { health: STARTING, failures: 0 };
        let at = Duration::from_secs;
        // (ok, elapsed) → health
        let rows = [
            (false, at(1), STARTING),
            (false, at(2), STARTING),
            (true, at(3), HEALTHY),
            (false, at(4), HEALTHY),
            (true, at(5), HEALTHY),
            (false, at(6), HEALTHY),
            (false, at(7), UNHEALTHY),
        ];
        for (ok, elapsed, want) in rows {
            assert_eq!(c.record(&probe, ok, elapsed), want, "ok={ok} at {elapsed:?}");
        }
        let mut c = Counter { health: STARTING, failures: 0 };
        assert_eq!(c.record(&probe, false, at(11)), STARTING);
        assert_eq!(c.record(&probe, false, at(12)), UNHEALTHY, "after the start period");
    }
}
