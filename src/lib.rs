//! Shoal's command-line client and node daemon, wired from the workspace crates.
//!
//! Two rooms, with a one-way rule:
//! - [`cli`]: the `shoal` client. It speaks gRPC and may use only `shoal-proto` and `shoal-pki`.
//! - [`node`]: the `shoald` daemon (init, join, the local API, image loading, re-addressing).
//!   It wires `shoal-manager` and `shoal-agent` together and never uses [`cli`].
//!
//! The benchmarks are a binary of their own beside them (`src/bench/`, package `shoal-bench`).

pub mod cli;
pub mod node;
