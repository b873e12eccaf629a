//! Owns replication of the manager's store: encryption at rest, the Raft log on disk, the Raft
//! member task, the transport between managers, and the Raft gRPC service.

pub mod crypto;
pub mod inbound;
pub mod node;
pub(crate) mod rotation;
pub mod service;
pub mod storage;
#[cfg(test)]
mod tests;
pub mod transport;
