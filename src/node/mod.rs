//! The `shoald` daemon: owns a node's data root, starts its manager and agent, and serves the
//! local API on the unix socket. Uses `shoal-manager` and `shoal-agent`; never the CLI.

pub mod daemon;
pub mod images;
pub mod local_api;
pub mod readdress;
