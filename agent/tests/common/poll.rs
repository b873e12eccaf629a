//! Waiting for a condition, for the agent's tests: shared by the integration tests (`common`)
//! and the worker's module tests (through `#[path]`), which cannot use the workspace test kit
//! without a second copy of this crate.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// Polls `cond` until it holds or `limit` passes; whether it held.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// Like [`eventually`], failing the test with `what` if `cond` never held.
pub async fn assert_eventually(what: &str, limit: Duration, cond: impl FnMut() -> bool) {
    assert!(eventually(limit, cond).await, "{what}: still not true after {limit:?}");
}
