//! Shoal's command-line client and node daemon, wired from the workspace crates.

pub mod bench;
pub mod bench_raft;
pub mod bench_services;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod images;
pub mod local_api;
pub mod output;
pub mod readdress;
pub mod secret_cmd;
pub mod service_cmd;
pub mod stack;
