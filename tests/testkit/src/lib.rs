//! Shoal's test kit, shared by the integration tests and the benchmarks:
//! - [`cluster`]: in-process daemons ([`cluster::TestNode`]), real gRPC over real mTLS;
//! - [`managers`]: bare in-process managers on loopback, for the benchmarks;
//! - [`netns`]: `shoald` processes on hosts in network namespaces, driven with `shoal`;
//! - [`fake_worker`]: a node that speaks the real protocol and runs nothing;
//! - [`image`]: a busybox image to import;
//! - [`poll`]: waiting for conditions (`eventually`, `stays`);
//! - [`registry`]: a real registry (`docker-registry`) with TLS from a test CA and logins.
//!
//! It turns on `shoal`'s `test-util` feature (test knobs in `shoald`, the fake executor).

pub mod chaos;
pub mod cluster;
pub mod fake_worker;
pub mod image;
pub mod managers;
pub mod netns;
pub mod poll;
pub mod registry;
