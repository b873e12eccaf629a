//! Waiting for a condition instead of sleeping: [`eventually`] for async checks (in-process
//! clusters), [`blocking`] for checks that run commands (netns hosts).

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every 50 ms until it succeeds; panics with its last error after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => {
                panic!("{what}: still not true after {timeout:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The same on a plain thread, for checks that run processes.
pub mod blocking {
    use std::time::{Duration, Instant};

    /// Polls `check` every 150 ms until it returns `Ok`, or panics with its last error after
    /// `timeout`. Use it for every "wait until": never sleep in place of a condition.
    pub fn eventually<T>(
        what: &str,
        timeout: Duration,
        check: impl FnMut() -> Result<T, String>,
    ) -> T {
        try_eventually(what, timeout, check).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`eventually`], but returns the timeout as an error instead of panicking.
    pub fn try_eventually<T>(
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Result<T, String>,
    ) -> Result<T, String> {
        let start = Instant::now();
        loop {
            match check() {
                Ok(v) => return Ok(v),
                Err(e) if start.elapsed() >= timeout => {
                    return Err(format!(
                        "timed out after {timeout:?} waiting for {what}; last:\n{e}"
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(150)),
            }
        }
    }

    /// Samples `check` `times` times, `every` apart, and panics on the first failure: for
    /// properties that must hold over a stretch of time (not for waiting).
    pub fn stays(
        what: &str,
        times: usize,
        every: Duration,
        mut check: impl FnMut() -> Result<(), String>,
    ) {
        for i in 0..times {
            if i > 0 {
                std::thread::sleep(every);
            }
            if let Err(e) = check() {
                panic!("{what} stopped holding on sample {} of {times}:\n{e}", i + 1);
            }
        }
    }
}
