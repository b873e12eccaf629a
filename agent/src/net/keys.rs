//! The node's tunnel keys for encrypted overlays: x25519 pairs made here, the private halves
//! kept in one file (0600, replaced atomically, like the node's TLS key) and never sent
//! anywhere; the public halves go to the managers with every heartbeat.
//!
//! A rotation makes a new key the current one and keeps the one before it, so peers that have
//! not yet heard of the new key still complete handshakes with the old one (the overlap),
//! until the next rotation drops it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use boringtun::x25519::{PublicKey, StaticSecret};
use shoal_pki::files::{write_atomic, KEY_FILE_MODE};
use shoal_proto::TunnelKey;

/// One key as stored: when it was made (unix ms) and its 32 secret bytes.
const RECORD: usize = 8 + 32;

/// The keys, newest first (one, or two during an overlap).
pub struct TunnelKeys {
    path: PathBuf,
    keys: Vec<(i64, StaticSecret)>,
}

// Never the secrets: only how many keys there are and their public fingerprints.
impl std::fmt::Debug for TunnelKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let public: Vec<String> =
            self.public().iter().map(|k| shoal_pki::tunnel::fingerprint(&k.public_key)).collect();
        f.debug_struct("TunnelKeys").field("path", &self.path).field("public", &public).finish()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn generate() -> std::io::Result<StaticSecret> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| std::io::Error::other("the system's random source failed"))?;
    Ok(StaticSecret::from(bytes))
}

impl TunnelKeys {
    /// The keys in `path`, or a new key saved there when there is no file. A file that is
    /// not a key file is replaced by a new key (its keys could not be used anyway; peers
    /// learn the new one at the next heartbeat) and the replacement is logged.
    pub fn load_or_create(path: &Path) -> std::io::Result<TunnelKeys> {
        match std::fs::read(path) {
            Ok(bytes) => match parse(&bytes) {
                Some(keys) => return Ok(TunnelKeys { path: path.to_path_buf(), keys }),
                None => tracing::warn!(
                    path = %path.display(),
                    "the tunnel key file is damaged; making a new key"
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let keys = TunnelKeys { path: path.to_path_buf(), keys: vec![(now_ms(), generate()?)] };
        keys.save()?;
        Ok(keys)
    }

    fn save(&self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut bytes = Vec::with_capacity(self.keys.len() * RECORD);
        for (created, secret) in &self.keys {
            bytes.extend_from_slice(&created.to_be_bytes());
            bytes.extend_from_slice(&secret.to_bytes());
        }
        write_atomic(&self.path, &bytes, KEY_FILE_MODE)
    }

    /// The public keys as the managers get them, newest first.
    pub fn public(&self) -> Vec<TunnelKey> {
        self.keys
            .iter()
            .map(|(created, s)| TunnelKey {
                public_key: PublicKey::from(s).as_bytes().to_vec(),
                created_ms: *created,
            })
            .collect()
    }

    /// The private keys for the tunnel, newest first.
    pub fn secrets(&self) -> Vec<StaticSecret> {
        self.keys.iter().map(|(_, s)| s.clone()).collect()
    }

    /// Makes a new current key when the current one is `period` old (keeping it as the
    /// previous one, dropping the one before); whether it did. The file is written before the
    /// keys change in memory, so a failed write changes nothing.
    pub fn rotate_if_due(&mut self, period: Duration) -> std::io::Result<bool> {
        let newest = self.keys.first().map(|(c, _)| *c).unwrap_or(0);
        let age = now_ms().saturating_sub(newest);
        if age < period.as_millis() as i64 {
            return Ok(false);
        }
        self.rotate()?;
        Ok(true)
    }

    /// Makes a new current key now.
    pub fn rotate(&mut self) -> std::io::Result<()> {
        let mut keys = vec![(now_ms(), generate()?)];
        keys.extend(self.keys.first().cloned());
        let next = TunnelKeys { path: self.path.clone(), keys };
        next.save()?;
        *self = next;
        Ok(())
    }
}

fn parse(bytes: &[u8]) -> Option<Vec<(i64, StaticSecret)>> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) || bytes.len() / RECORD > 2 {
        return None;
    }
    let keys: Vec<(i64, StaticSecret)> = bytes
        .chunks(RECORD)
        .map(|r| {
            let created = i64::from_be_bytes(r[..8].try_into().expect("8 bytes"));
            let secret: [u8; 32] = r[8..].try_into().expect("32 bytes");
            (created, StaticSecret::from(secret))
        })
        .collect();
    keys.iter().all(|(_, s)| s.to_bytes() != [0u8; 32]).then_some(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_is_made_once_kept_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("net/tunnel-keys");
        let made = TunnelKeys::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = TunnelKeys::load_or_create(&path).unwrap();
        assert_eq!(made.public(), again.public());
        assert_eq!(made.public().len(), 1);
        // Debug shows fingerprints, never the secret bytes.
        let secret_hex: String =
            made.secrets()[0].to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        let shown = format!("{made:?}");
        assert!(shown.contains("sha256:") && !shown.contains(&secret_hex[..16]), "{shown}");
    }

    #[test]
    fn a_rotation_keeps_one_previous_key_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tunnel-keys");
        let mut keys = TunnelKeys::load_or_create(&path).unwrap();
        let first = keys.public()[0].clone();
        assert!(!keys.rotate_if_due(Duration::from_secs(3600)).unwrap(), "not due yet");
        assert!(keys.rotate_if_due(Duration::ZERO).unwrap());
        let second = keys.public();
        assert_eq!(second.len(), 2);
        assert_eq!(second[1], first, "the old key stays for the overlap");
        keys.rotate().unwrap();
        let third = keys.public();
        assert_eq!(third.len(), 2);
        assert_eq!(third[1], second[0]);
        assert!(!third.contains(&first), "the key before the previous one is gone");
        assert_eq!(TunnelKeys::load_or_create(&path).unwrap().public(), third);
    }

    #[test]
    fn a_damaged_file_is_replaced_by_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tunnel-keys");
        std::fs::write(&path, b"not a key file").unwrap();
        let keys = TunnelKeys::load_or_create(&path).unwrap();
        assert_eq!(keys.public().len(), 1);
        assert_eq!(std::fs::read(&path).unwrap().len(), RECORD);
        std::fs::write(&path, [0u8; RECORD]).unwrap();
        assert_ne!(TunnelKeys::load_or_create(&path).unwrap().secrets()[0].to_bytes(), [0u8; 32]);
    }
}
