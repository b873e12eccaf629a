//! Owns a manager's settings: what `swarm init` decides, the cluster-wide settings read back
//! from the cluster object (heartbeat period, certificate lifetime), their defaults and bounds,
//! and how an election timeout becomes Raft ticks.

use shoal_proto::spec::network::address_pool;
use std::time::Duration;

use shoal_pki::{short_duration, validate_cert_expiry, PkiError, RootCa};
use shoal_proto::{Cluster, ClusterSpec, JoinTokens};

use crate::raft::node::RaftConfig;
use crate::store::now_ms;
use crate::tokens::{self, TokenPolicy};

/// Default dispatcher heartbeat period (Swarm's).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// Shortest heartbeat period a cluster may be set to.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
/// Longest heartbeat period a cluster may be set to.
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(3600);
/// Raft ticks are this long; election timeouts are whole numbers of ticks.
pub const RAFT_TICK: Duration = Duration::from_millis(50);
/// Default election timeout: 0.5–1 s of silence, well under Swarm's ~10 s.
pub const DEFAULT_ELECTION_TIMEOUT: Duration = Duration::from_millis(500);
/// Shortest election timeout: three ticks.
pub const MIN_ELECTION_TIMEOUT: Duration = Duration::from_millis(3 * 50);
/// Longest election timeout.
pub const MAX_ELECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// A setting outside its bounds.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A heartbeat period outside [`MIN_HEARTBEAT`]..=[`MAX_HEARTBEAT`].
    #[error("heartbeat period {} must be between 100ms and 1h", short_duration(*.0))]
    Heartbeat(Duration),
    /// An election timeout outside [`MIN_ELECTION_TIMEOUT`]..=[`MAX_ELECTION_TIMEOUT`].
    #[error(
        "election timeout {} must be between {}ms and 60s",
        short_duration(*.0),
        MIN_ELECTION_TIMEOUT.as_millis()
    )]
    ElectionTimeout(Duration),
    /// A certificate lifetime the CA would not issue.
    #[error(transparent)]
    CertExpiry(PkiError),
    /// A default address pool networks could not draw from.
    #[error(transparent)]
    AddrPool(#[from] shoal_proto::spec::SpecError),
}

/// What `swarm init` decides.
#[derive(Clone, Debug)]
pub struct InitParams {
    pub hostname: String,
    pub advertise_addr: String,
    pub cert_expiry: Duration,
    pub heartbeat: Duration,
    pub autolock: bool,
    pub election_timeout: Duration,
    /// Where networks without a subnet take theirs (empty: 10.0.0.0/8), and the block size
    /// (0: /24).
    pub default_addr_pool: Vec<String>,
    pub subnet_size: u32,
    /// The overlay data plane's UDP port between nodes (0: 4789).
    pub data_path_port: u32,
}

impl InitParams {
    /// Checks every setting against its bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_cert_expiry(self.cert_expiry).map_err(ConfigError::CertExpiry)?;
        validate_heartbeat(self.heartbeat)?;
        validate_election_timeout(self.election_timeout)?;
        address_pool(&self.default_addr_pool, self.subnet_size)?;
        shoal_proto::spec::network::data_path_port(self.data_path_port)?;
        Ok(())
    }
}

/// Checks a heartbeat period.
pub fn validate_heartbeat(period: Duration) -> Result<(), ConfigError> {
    if !(MIN_HEARTBEAT..=MAX_HEARTBEAT).contains(&period) {
        return Err(ConfigError::Heartbeat(period));
    }
    Ok(())
}

/// Checks an election timeout (at least 3 ticks, at most a minute).
pub fn validate_election_timeout(t: Duration) -> Result<(), ConfigError> {
    if !(MIN_ELECTION_TIMEOUT..=MAX_ELECTION_TIMEOUT).contains(&t) {
        return Err(ConfigError::ElectionTimeout(t));
    }
    Ok(())
}

/// The Raft configuration of member `raft_id` with this election timeout.
pub(crate) fn raft_config(raft_id: u64, election_timeout: Duration) -> RaftConfig {
    let mut cfg = RaftConfig::new(raft_id);
    cfg.tick = RAFT_TICK;
    cfg.election_ticks = (election_timeout.as_millis() / RAFT_TICK.as_millis()).max(3) as usize;
    cfg
}

/// The cluster object a new cluster starts with.
pub(crate) fn new_cluster(cluster_id: &str, ca: &RootCa, params: &InitParams) -> Cluster {
    Cluster {
        id: cluster_id.to_string(),
        spec: Some(ClusterSpec {
            cert_expiry_secs: params.cert_expiry.as_secs(),
            heartbeat_period_ms: params.heartbeat.as_millis() as u64,
            default_addr_pool: params.default_addr_pool.clone(),
            subnet_size: params.subnet_size,
            data_path_port: params.data_path_port,
            network_key_rotation_secs: 0,
            ..Default::default()
        }),
        root_ca: Some(shoal_proto::RootCa {
            cert_pem: ca.cert_pem().to_string(),
            key_pem: ca.key_pem(),
        }),
        join_tokens: Some(JoinTokens {
            worker: Some(tokens::mint(TokenPolicy::default(), now_ms())),
            manager: Some(tokens::mint(TokenPolicy::default(), now_ms())),
        }),
        ..Default::default()
    }
}

/// The cluster's heartbeat period.
pub(crate) fn heartbeat_period(cluster: &Cluster) -> Duration {
    match cluster.spec.as_ref().map(|s| s.heartbeat_period_ms) {
        Some(ms) if ms > 0 => Duration::from_millis(ms),
        _ => DEFAULT_HEARTBEAT,
    }
}

/// How long the cluster's node certificates live.
pub(crate) fn cert_expiry(cluster: &Cluster) -> Duration {
    match cluster.spec.as_ref().map(|s| s.cert_expiry_secs) {
        Some(s) if s > 0 => Duration::from_secs(s),
        _ => shoal_pki::DEFAULT_CERT_EXPIRY,
    }
}

/// How often nodes replace their tunnel keys.
pub(crate) fn network_key_rotation(cluster: &Cluster) -> Duration {
    shoal_pki::tunnel::rotation_period(
        cluster.spec.as_ref().map(|s| s.network_key_rotation_secs).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn election_timeouts_are_checked_and_become_whole_ticks() {
        assert_eq!(MIN_ELECTION_TIMEOUT, RAFT_TICK * 3);
        assert!(validate_election_timeout(Duration::from_millis(100)).is_err());
        assert!(validate_election_timeout(Duration::from_secs(61)).is_err());
        assert!(validate_election_timeout(DEFAULT_ELECTION_TIMEOUT).is_ok());
        assert_eq!(raft_config(7, Duration::from_secs(2)).election_ticks, 40);
        assert_eq!(raft_config(7, DEFAULT_ELECTION_TIMEOUT).election_ticks, 10);
    }

    #[test]
    fn settings_outside_their_bounds_are_refused_with_the_bounds() {
        let err = validate_heartbeat(Duration::from_millis(10)).unwrap_err();
        assert_eq!(err.to_string(), "heartbeat period 10ms must be between 100ms and 1h");
        let err = validate_election_timeout(Duration::from_secs(61)).unwrap_err();
        assert_eq!(err.to_string(), "election timeout 1m 1s must be between 150ms and 60s");
    }
}
