//! Shoal's manager: the object store, the CA, the control API, the dispatcher, and the
//! authorization table that guards them. Never runs containers (that is the agent's job).

pub mod access;
pub mod assignments;
pub mod authz;
pub mod ca_rotation;
pub mod ca_server;
pub mod config;
pub mod control;
mod data_dir;
pub mod dispatcher;
pub mod images;
pub mod intake;
pub mod logs;
pub mod manager;
pub mod networks;
pub mod orchestrator;
mod people;
pub mod raft;
mod reference;
pub mod removal;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod services;
pub mod store;
pub mod tokens;
mod trust;

pub use manager::{Identity, InitParams, Manager, ManagerError};
pub use store::{Store, StoreError};
