//! The chaos runner: a cluster of `shoald`s on netns hosts, random faults (seeded) while client
//! threads create, update and remove services and secrets through the `shoal` CLI; every call is
//! recorded and the history checked for linearizability ([`linearizability`], [`model`]);
//! afterwards the cluster must converge, run no slot twice, and hold secrets only where a task
//! needs them ([`checks`]).
//!
//! - [`config`]: duration, seed and cluster size (env `SHOAL_CHAOS_SECS`, `SHOAL_CHAOS_SEED`);
//! - [`history`]: the recorded calls, and the report's counts;
//! - [`clients`]: the client threads and how a CLI answer becomes a model output;
//! - [`faults`]: what can go wrong on a host, how it is undone, and the cleanup of all of it;
//! - [`runner`]: the cluster, the run, and the report.
//!
//! Owns nothing of the product: it drives `shoal`/`shoald` binaries and reads the hosts.

pub mod checks;
pub mod clients;
pub mod config;
pub mod faults;
pub mod history;
pub mod linearizability;
pub mod model;
pub mod runner;

pub use config::{ChaosConfig, Planned};
pub use runner::run;
