//! Owns Shoal's protobuf messages and gRPC service stubs; adds small helpers on the generated
//! types and never does IO.

#![allow(missing_debug_implementations)]

tonic::include_proto!("shoal");

impl NodeRole {
    /// The word the CLI shows and accepts for this role.
    pub fn word(self) -> &'static str {
        match self {
            NodeRole::Worker => "worker",
            NodeRole::Manager => "manager",
        }
    }
}

impl NodeState {
    /// The word `shoal node ls` shows for this state.
    pub fn word(self) -> &'static str {
        match self {
            NodeState::Unknown => "Unknown",
            NodeState::Ready => "Ready",
            NodeState::Down => "Down",
            NodeState::Disconnected => "Disconnected",
        }
    }
}

impl Availability {
    /// The word `shoal node ls` shows for this availability.
    pub fn word(self) -> &'static str {
        match self {
            Availability::Active => "Active",
            Availability::Pause => "Pause",
            Availability::Drain => "Drain",
        }
    }
}
