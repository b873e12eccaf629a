//! The node's cluster addresses: listen and advertise defaults (as Docker's), and binding.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use tokio::net::TcpListener;

use super::DEFAULT_PORT;

pub(super) async fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("could not listen on {addr}"))
}

/// Binds the listen address of a resumed node, saying what to do if the host lost it.
pub(super) async fn bind_resumed(addr: &str) -> Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => bail!(
            "could not listen on {addr}: this host no longer has that address; if its address \
             changed, start shoald with --advertise-addr NEW-IP (and --listen-addr if the node \
             should not listen on NEW-IP with the same port)"
        ),
        Err(e) => Err(e).with_context(|| format!("could not listen on {addr}")),
    }
}

/// Appends the default port to a bare IP or host name.
pub(super) fn with_default_port(addr: &str) -> String {
    let has_port = addr.parse::<SocketAddr>().is_ok()
        || addr.rsplit_once(':').is_some_and(|(h, p)| !h.contains(':') && p.parse::<u16>().is_ok());
    if has_port {
        addr.to_string()
    } else if addr.contains(':') && !addr.starts_with('[') {
        format!("[{addr}]:{DEFAULT_PORT}")
    } else {
        format!("{addr}:{DEFAULT_PORT}")
    }
}

/// Parses a listen address (`IP`, `IP:PORT`), defaulting to 0.0.0.0:4242.
pub fn normalize_listen(addr: &str) -> Result<SocketAddr> {
    if addr.is_empty() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)));
    }
    with_default_port(addr)
        .parse()
        .with_context(|| format!("invalid listen address {addr:?}: use IP or IP:PORT"))
}

/// Chooses the address other nodes use to reach this one.
pub fn advertise_addr(given: &str, listen: &SocketAddr) -> Result<String> {
    if !given.is_empty() {
        let bad = || format!("invalid advertise address {given:?}: use IP or IP:PORT");
        let chosen = match given.parse::<std::net::IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, listen.port()),
            Err(_) => given.parse::<SocketAddr>().with_context(bad)?,
        };
        return Ok(chosen.to_string());
    }
    if !listen.ip().is_unspecified() {
        return Ok(listen.to_string());
    }
    let ips: Vec<_> = if_addrs::get_if_addrs()
        .context("listing network interfaces")?
        .into_iter()
        .filter(|i| !i.is_loopback() && i.ip().is_ipv4())
        .map(|i| i.ip())
        .collect();
    match ips.as_slice() {
        [one] => Ok(SocketAddr::new(*one, listen.port()).to_string()),
        [] => Ok(SocketAddr::from(([127, 0, 0, 1], listen.port())).to_string()),
        many => bail!(
            "could not choose an address to advertise: this host has several ({}); pass --advertise-addr",
            many.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_default_like_docker() {
        assert_eq!(normalize_listen("").unwrap().to_string(), "0.0.0.0:4242");
        assert_eq!(normalize_listen("10.1.2.3").unwrap().to_string(), "10.1.2.3:4242");
        assert_eq!(normalize_listen("10.1.2.3:5000").unwrap().to_string(), "10.1.2.3:5000");
        assert!(normalize_listen("nonsense:x").is_err());
        let listen: SocketAddr = "0.0.0.0:5000".parse().unwrap();
        assert_eq!(advertise_addr("10.0.0.9", &listen).unwrap(), "10.0.0.9:5000");
        assert_eq!(advertise_addr("10.0.0.9:6000", &listen).unwrap(), "10.0.0.9:6000");
        assert!(advertise_addr("not an ip", &listen).is_err());
        let specific: SocketAddr = "10.0.0.2:4242".parse().unwrap();
        assert_eq!(advertise_addr("", &specific).unwrap(), "10.0.0.2:4242");
        assert_eq!(with_default_port("10.0.0.1"), "10.0.0.1:4242");
        assert_eq!(with_default_port("10.0.0.1:99"), "10.0.0.1:99");
    }
}
