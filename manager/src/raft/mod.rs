//! Owns replication of the manager's store: encryption at rest, the Raft log on disk, the Raft
//! member task, the transport between managers, the Raft gRPC service, and raft-rs's log lines.

pub mod crypto;
pub mod inbound;
pub mod logging;
pub mod node;
pub(crate) mod rotation;
pub mod service;
pub mod storage;
#[cfg(test)]
mod tests;
pub mod transport;
