//! Owns the checks on what a node sends before any of it is written (issue #12 items 5 and 6):
//! every field within its bound (see `shoal_proto::limits`), hostnames unique among the nodes
//! of the cluster, a node's address taken from its connection rather than its word, and the
//! pace of certificate renewals.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shoal_proto::limits::{self, LimitError};
use shoal_proto::{
    IssueNodeCertificateRequest, Node, NodeDescription, PublishLogsMessage, SessionRequest,
    TaskStatusUpdate,
};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

/// A node renews at most this often (unless its role changed), scaled by the time scale.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(60);

/// The shortest time between two renewals of one node: [`RENEW_INTERVAL`] divided by the time
/// scale (`--test-time-scale`, which divides the agents' renewal waits too, so tests watch
/// certificates renew in seconds).
#[derive(Debug)]
pub struct Pace {
    nanos: AtomicU64,
}

impl Default for Pace {
    fn default() -> Pace {
        Pace { nanos: AtomicU64::new(RENEW_INTERVAL.as_nanos() as u64) }
    }
}

impl Pace {
    /// Divides [`RENEW_INTERVAL`] by `scale` (values below 1 count as 1).
    pub fn set_time_scale(&self, scale: f64) {
        let scale = if scale.is_finite() { scale.max(1.0) } else { 1.0 };
        self.nanos.store(RENEW_INTERVAL.div_f64(scale).as_nanos() as u64, Ordering::Relaxed);
    }

    /// The current interval.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }

    /// The shortest certificate life the managers issue: [`shoal_pki::MIN_CERT_EXPIRY`],
    /// divided by the time scale like the interval (a test cluster's time runs faster).
    pub fn expiry_floor(&self) -> Duration {
        let scale = RENEW_INTERVAL.as_secs_f64() / self.interval().as_secs_f64().max(1e-9);
        shoal_pki::MIN_CERT_EXPIRY.div_f64(scale.max(1.0))
    }
}

fn invalid(e: LimitError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// The IP a request's connection comes from, when the transport tells it.
pub fn peer_ip<T>(req: &tonic::Request<T>) -> Option<IpAddr> {
    let ext = req.extensions();
    let tcp = ext
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.get_ref().remote_addr())
        .or_else(|| ext.get::<TcpConnectInfo>().and_then(|i| i.remote_addr()));
    tcp.or_else(|| req.remote_addr()).map(|a| a.ip())
}

/// The IP part of a node address (`IP` or `IP:PORT`).
pub fn ip_of(addr: &str) -> Option<IpAddr> {
    addr.parse::<SocketAddr>().map(|a| a.ip()).or_else(|_| addr.parse::<IpAddr>()).ok()
}

/// Checks a join request's fields.
pub fn check_join(req: &IssueNodeCertificateRequest) -> Result<(), Status> {
    limits::bytes_at_most("csr_der", req.csr_der.len(), limits::CSR_BYTES).map_err(invalid)?;
    limits::at_most("token", &req.token, limits::TOKEN_BYTES).map_err(invalid)?;
    limits::hostname("hostname", &req.hostname).map_err(invalid)?;
    check_addr("advertise_addr", &req.advertise_addr)
}

fn check_addr(field: &'static str, addr: &str) -> Result<(), Status> {
    limits::at_most(field, addr, limits::ADDR_BYTES).map_err(invalid)?;
    if !addr.is_empty() && ip_of(addr).is_none() {
        return Err(Status::invalid_argument(format!(
            "{field}: {addr:?} is not an address: use IP or IP:PORT"
        )));
    }
    Ok(())
}

/// Checks a renewal's CSR size.
pub fn check_csr(csr: &[u8]) -> Result<(), Status> {
    limits::bytes_at_most("csr_der", csr.len(), limits::CSR_BYTES).map_err(invalid)
}

/// Checks a session request's fields (the hostname and address in it are only compared).
pub fn check_session(req: &SessionRequest) -> Result<(), Status> {
    limits::at_most("hostname", &req.hostname, limits::HOSTNAME_BYTES).map_err(invalid)?;
    check_addr("advertise_addr", &req.advertise_addr)?;
    if let Some(d) = &req.description {
        check_description(d)?;
    }
    check_tunnel_keys(&req.tunnel_keys)
}

/// Checks the tunnel public keys a node reports.
pub fn check_tunnel_keys(keys: &[shoal_proto::TunnelKey]) -> Result<(), Status> {
    shoal_pki::tunnel::validate_public_keys(keys.iter().map(|k| k.public_key.as_slice()))
        .map_err(|e| Status::invalid_argument(format!("tunnel_keys: {e}")))
}

fn check_description(d: &NodeDescription) -> Result<(), Status> {
    limits::at_most("description.os", &d.os, limits::WORD_BYTES).map_err(invalid)?;
    limits::at_most("description.arch", &d.arch, limits::WORD_BYTES).map_err(invalid)?;
    if d.nano_cpus < 0 || d.memory_bytes < 0 {
        return Err(Status::invalid_argument("description: resources may not be negative"));
    }
    Ok(())
}

/// Checks a batch of task status reports.
pub fn check_statuses(updates: &[TaskStatusUpdate]) -> Result<(), Status> {
    limits::count_at_most("updates", updates.len(), limits::STATUS_UPDATES).map_err(invalid)?;
    for u in updates {
        limits::at_most("task_id", &u.task_id, limits::ID_BYTES).map_err(invalid)?;
        let Some(s) = &u.status else { continue };
        limits::at_most("status.message", &s.message, limits::MESSAGE_BYTES).map_err(invalid)?;
        limits::at_most("status.err", &s.err, limits::MESSAGE_BYTES).map_err(invalid)?;
        limits::at_most("status.health", &s.health, limits::HEALTH_BYTES).map_err(invalid)?;
    }
    Ok(())
}

/// Checks one published log message.
pub fn check_logs(msg: &PublishLogsMessage) -> Result<(), Status> {
    limits::at_most("subscription_id", &msg.subscription_id, limits::ID_BYTES).map_err(invalid)?;
    limits::count_at_most("messages", msg.messages.len(), limits::LOG_LINES).map_err(invalid)?;
    for m in &msg.messages {
        limits::at_most("messages.task_id", &m.task_id, limits::ID_BYTES).map_err(invalid)?;
        limits::bytes_at_most("messages.data", m.data.len(), limits::LOG_LINE_BYTES)
            .map_err(invalid)?;
    }
    Ok(())
}

/// Refuses `hostname` when another node of the cluster (other than `except`) holds it: a
/// hostname names one node, so a constraint on it reaches only that node.
pub fn check_unique_hostname(
    nodes: impl IntoIterator<Item = Node>,
    hostname: &str,
    except: Option<&str>,
) -> Result<(), Status> {
    let holder = nodes
        .into_iter()
        .find(|n| n.hostname.eq_ignore_ascii_case(hostname) && Some(n.id.as_str()) != except);
    match holder {
        Some(n) => Err(Status::already_exists(format!(
            "hostname {hostname:?} is already used by node {} ({}): remove that node first \
             (`shoal node rm {}`) or use another hostname",
            n.id,
            n.state().word(),
            n.id
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_hostnames_are_refused_naming_the_holder() {
        let held = Node { id: "n1".into(), hostname: "web".into(), ..Default::default() };
        let e = check_unique_hostname([held.clone()], "WEB", None).unwrap_err();
        assert_eq!(e.code(), tonic::Code::AlreadyExists);
        assert!(e.message().contains("\"WEB\"") && e.message().contains("n1"), "{e}");
        assert!(check_unique_hostname([held.clone()], "web", Some("n1")).is_ok());
        assert!(check_unique_hostname([held], "db", None).is_ok());
    }

    #[test]
    fn addresses_parse_with_or_without_port() {
        assert_eq!(ip_of("10.0.0.1:4242"), Some(IpAddr::from([10, 0, 0, 1])));
        assert_eq!(ip_of("10.0.0.1"), Some(IpAddr::from([10, 0, 0, 1])));
        assert!(check_addr("advertise_addr", "not an address").is_err());
        assert!(check_addr("advertise_addr", "").is_ok());
    }
}
