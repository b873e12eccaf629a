//! Facts about the nodes' encrypted-overlay keys shared by the managers, the agents and the
//! CLI: how often they rotate, what a valid public key list is, and how a key is shown.
//! The keys themselves (x25519) are made and kept by each node's agent.

use std::time::Duration;

/// How often a node replaces its tunnel key unless the cluster says otherwise (Docker Swarm
/// rotates its IPsec keys every 12 hours).
pub const DEFAULT_NETWORK_KEY_ROTATION: Duration = Duration::from_secs(12 * 60 * 60);
/// The shortest rotation period taken (short periods are for trying rotation out).
pub const MIN_NETWORK_KEY_ROTATION: Duration = Duration::from_secs(10);
/// A node reports at most this many public keys: the current one and, during a rotation's
/// overlap, the one before.
pub const MAX_TUNNEL_KEYS: usize = 2;

/// Why a rotation period or a node's key list was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TunnelKeyError {
    #[error("network key rotation {} is below the minimum of 10s", crate::short_duration(*.0))]
    RotationTooShort(Duration),
    #[error("a node reports at most {MAX_TUNNEL_KEYS} tunnel keys, not {0}")]
    TooManyKeys(usize),
    #[error("tunnel key {index} is {len} bytes; an x25519 public key is 32")]
    BadLength { index: usize, len: usize },
    #[error("tunnel key {index} is all zeroes")]
    Zero { index: usize },
    #[error("tunnel key {index} is listed twice")]
    Repeated { index: usize },
}

/// Checks a cluster's rotation setting before it is sent or stored.
pub fn validate_rotation(period: Duration) -> Result<(), TunnelKeyError> {
    if period < MIN_NETWORK_KEY_ROTATION {
        return Err(TunnelKeyError::RotationTooShort(period));
    }
    Ok(())
}

/// The rotation period a cluster setting stands for (0: the default).
pub fn rotation_period(secs: u64) -> Duration {
    match secs {
        0 => DEFAULT_NETWORK_KEY_ROTATION,
        s => Duration::from_secs(s).max(MIN_NETWORK_KEY_ROTATION),
    }
}

/// Checks the public keys a node reports (newest first).
pub fn validate_public_keys<'a>(
    keys: impl ExactSizeIterator<Item = &'a [u8]>,
) -> Result<(), TunnelKeyError> {
    if keys.len() > MAX_TUNNEL_KEYS {
        return Err(TunnelKeyError::TooManyKeys(keys.len()));
    }
    let mut seen: Vec<&[u8]> = Vec::new();
    for (index, key) in keys.enumerate() {
        if key.len() != 32 {
            return Err(TunnelKeyError::BadLength { index, len: key.len() });
        }
        if key.iter().all(|b| *b == 0) {
            return Err(TunnelKeyError::Zero { index });
        }
        if seen.contains(&key) {
            return Err(TunnelKeyError::Repeated { index });
        }
        seen.push(key);
    }
    Ok(())
}

/// How a public key is shown (`node inspect`): `sha256:` and the first 16 bytes of its
/// SHA-256 in hex, like a certificate digest, so keys can be compared without printing them.
pub fn fingerprint(public: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public);
    let hex: String = digest.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lists_are_checked_for_what_a_peer_could_not_use() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        assert_eq!(validate_public_keys([&a[..], &b[..]].into_iter()), Ok(()));
        assert_eq!(validate_public_keys(std::iter::empty()), Ok(()));
        assert_eq!(
            validate_public_keys([&a[..], &b[..], &a[..]].into_iter()),
            Err(TunnelKeyError::TooManyKeys(3))
        );
        assert_eq!(
            validate_public_keys([&a[..31]].into_iter()),
            Err(TunnelKeyError::BadLength { index: 0, len: 31 })
        );
        assert_eq!(
            validate_public_keys([&a[..], &[0u8; 32][..]].into_iter()),
            Err(TunnelKeyError::Zero { index: 1 })
        );
        assert_eq!(
            validate_public_keys([&a[..], &a[..]].into_iter()),
            Err(TunnelKeyError::Repeated { index: 1 })
        );
    }

    #[test]
    fn rotation_defaults_to_twelve_hours_and_refuses_less_than_ten_seconds() {
        assert_eq!(rotation_period(0), Duration::from_secs(43_200));
        assert_eq!(rotation_period(60), Duration::from_secs(60));
        assert!(validate_rotation(Duration::from_secs(9)).unwrap_err().to_string().contains("10s"));
        assert!(validate_rotation(Duration::from_secs(10)).is_ok());
    }

    #[test]
    fn fingerprints_tell_keys_apart_without_showing_them() {
        let f = fingerprint(&[7u8; 32]);
        assert!(f.starts_with("sha256:") && f.len() == 7 + 32, "{f}");
        assert_ne!(f, fingerprint(&[8u8; 32]));
        assert!(!f.contains("0707070707"));
    }
}
