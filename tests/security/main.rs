//! The security regression suite (issue #12): one test per hole an outside review found, each
//! attacking the way an outsider would — crafted archives, saved certificates, a fake worker
//! speaking the real protocol, a host user without privileges — against the real daemon.
//!
//! `cargo test --test security` runs it alone; it is part of `cargo test --workspace`. Tests that
//! need root fail under CI (env `CI`) when not root, and are skipped elsewhere.

mod fake_worker;
#[path = "../harness/mod.rs"]
#[allow(dead_code)]
mod harness;
#[path = "../netns/mod.rs"]
#[allow(dead_code)]
mod netns;
mod node_identity;
mod write_bounds;
