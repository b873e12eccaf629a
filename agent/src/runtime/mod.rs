//! The container runtime: builds OCI bundles and drives an OCI runtime binary (runc) to run
//! tasks as isolated containers. The only module of the agent that makes privileged system
//! calls; it never talks to the network or the managers.
// Privileged calls go through rustix's safe wrappers; the allowance exists for the few raw
// calls that have none, each with its own SAFETY comment.
#![allow(unsafe_code)]

pub mod caps;
pub mod error;
pub mod oci;
pub mod policy;
pub mod seccomp;
pub mod spec;

pub use error::{Result, RuntimeError};
pub use policy::{IdRange, NodePolicy};
pub use spec::{HostNamespace, Resources, RootfsSource, SeccompChoice, TaskSpec, Ulimit, UserSpec};
