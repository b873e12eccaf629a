//! Owns the rules of what users ask for: the defaults, normalisation and validation of service,
//! secret and config specs and the placement grammar, shared by the manager (which enforces
//! them), the client and the stack deployer (which check before sending). Pure functions over
//! the wire types; never touches the store or the network.

pub mod caps;
pub mod constraint;
pub mod mac;
pub mod network;
pub mod scan;
pub mod secret;
pub mod service;

pub use constraint::{parse_constraints, validate_spread, Constraint, PlacementError};

use crate::SecretKind;

/// Why a spec was refused. Each message names the bad field and, where there is one, the limit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// A service name outside `[A-Za-z0-9][A-Za-z0-9._-]{0,62}`.
    #[error(
        "invalid service name {0:?}: use 1–{max} letters, digits, '-', '_' or '.', starting with a letter or digit",
        max = service::MAX_NAME
    )]
    ServiceName(String),
    /// A service without an image.
    #[error("a service needs an image")]
    NoImage,
    /// An environment entry that is not `KEY=VALUE`.
    #[error("bad environment variable {0:?}: expected KEY=VALUE")]
    Env(String),
    /// A service mode this version does not know.
    #[error("unknown service mode {0}")]
    Mode(i32),
    /// More replicas than [`service::MAX_REPLICAS`].
    #[error(
        "{0} replicas is more than a service may have (at most {max})",
        max = service::MAX_REPLICAS
    )]
    Replicas(u64),
    /// An update that renames a service.
    #[error("a service cannot be renamed ({from} → {to})")]
    Rename { from: String, to: String },
    /// An update that switches a service between replicated and global.
    #[error("a service's mode (replicated or global) cannot be changed")]
    ModeChange,
    /// A bad constraint or spread preference.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// A negative resource figure; `what` is e.g. "memory limit".
    #[error("the {what} cannot be negative")]
    Negative { what: &'static str },
    /// A memory limit below [`service::MIN_MEMORY`].
    #[error("the memory limit {0} bytes is below the minimum of 6 MiB")]
    MemoryLimit(i64),
    /// A reservation above its limit; `what` is "memory" or "CPU".
    #[error("the {what} reservation is larger than the {what} limit")]
    ReservationAboveLimit { what: &'static str },
    /// A restart condition this version does not know.
    #[error("unknown restart condition {0}")]
    RestartCondition(i32),
    /// A failure ratio outside 0..=1; `what` is "update" or "rollback".
    #[error("the {what} max failure ratio must be between 0 and 1")]
    FailureRatio { what: &'static str },
    /// A failure action this version does not know.
    #[error("unknown {what} failure action {value}")]
    FailureAction { what: &'static str, value: i32 },
    /// A secret kind this version does not know.
    #[error("unknown kind {0}")]
    SecretKind(i32),
    /// A secret or config name outside Swarm's rules.
    #[error(
        "invalid {} name {name:?}: use 1–{max} letters and digits, with '-', '_' or '.' inside",
        .kind.word(),
        max = secret::MAX_NAME
    )]
    SecretName { kind: SecretKind, name: String },
    /// Secret or config data that is empty.
    #[error("{} data is empty", .kind.word())]
    EmptyData { kind: SecretKind },
    /// Secret or config data at or above its kind's limit.
    #[error("{} data is {size} bytes; the limit is {} KiB", .kind.word(), secret::max_data(*.kind) / 1024)]
    DataSize { kind: SecretKind, size: usize },
    /// A file target a secret or config cannot be mounted at.
    #[error("invalid {} target {target:?}: {}", .kind.word(), secret::target_rule(*.kind))]
    Target { kind: SecretKind, target: String },
    /// Two references of one kind mounted at the same target.
    #[error("two {}s use the target {target}", .kind.word())]
    SameTarget { kind: SecretKind, target: String },
    /// A file mode with bits beyond 0o777.
    #[error("invalid file mode {0:o}")]
    FileMode(u32),
    /// A network name outside `[A-Za-z0-9][A-Za-z0-9._-]{0,62}`.
    #[error(
        "invalid network name {0:?}: use 1–{max} letters, digits, '-', '_' or '.', starting with a letter or digit",
        max = network::MAX_NAME
    )]
    NetworkName(String),
    /// A name Docker keeps for its own networks.
    #[error("network name {0:?} is reserved; choose another")]
    ReservedNetworkName(String),
    /// A network driver other than overlay.
    #[error("network driver {0:?} is not supported: swarm networks use the overlay driver")]
    NetworkDriver(String),
    /// A subnet that is not an IPv4 CIDR the overlay can use.
    #[error("invalid subnet {value:?}: {why}")]
    Subnet { value: String, why: &'static str },
    /// A gateway that is not a host address of its subnet.
    #[error("invalid gateway {value:?}: {why}")]
    Gateway { value: String, why: &'static str },
    /// An address pool or block size `swarm init` cannot use.
    #[error("invalid default address pool {value:?}: {why}")]
    AddrPool { value: String, why: String },
    /// A service naming one network twice.
    #[error("the service names network {0} twice")]
    SameNetwork(String),
    /// A network alias outside the name rules.
    #[error("invalid network alias {0:?}: use letters, digits, '-', '_' or '.'")]
    NetworkAlias(String),
    /// A data-path port outside 1024–49151.
    #[error("invalid data path port {0}: use a UDP port from 1024 to 49151 (default 4789)")]
    DataPathPort(u32),
    /// `--network none` beside other networks.
    #[error("network none leaves a task without any network; it cannot be combined with others")]
    NoneWithOthers,
    /// An endpoint mode other than vip or dnsrr, or a published port that cannot be used.
    #[error("invalid port {value:?}: {why}")]
    Port { value: String, why: String },
    /// A nameserver that is not an IP address, or a search domain or option that is not one.
    #[error("invalid DNS setting {value:?}: {why}")]
    Dns { value: String, why: &'static str },
    /// A capability name the kernel does not know (cap-add, cap-drop).
    #[error("{0}")]
    Capability(String),
    /// A `--security-opt label=…` or `apparmor=…` that cannot be applied.
    #[error("invalid --security-opt {value}: {why}")]
    SecurityOpt { value: String, why: String },
}

impl From<SpecError> for tonic::Status {
    /// Every spec error is the caller's to fix: `InvalidArgument`, with the message as is.
    fn from(e: SpecError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}
