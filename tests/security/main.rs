//! The security regression suite (issue #12): one test per hole an outside review found, each
//! attacking the way an outsider would — crafted archives, saved certificates, a fake worker
//! speaking the real protocol, a host user without privileges — against the real daemon.
//!
//! `cargo test --test security` runs it alone; it is part of `cargo test --workspace`. Tests that
//! need root fail under CI (env `CI`) when not root, and are skipped elsewhere.

mod custom_seccomp;
mod demoted_manager;
mod host_files;
mod image_layers;
mod node_identity;
mod raft_send;
mod reattest;
mod registry_auth;
mod removed_node_streams;
mod small_items;
mod tunnel_keys;
mod write_bounds;
