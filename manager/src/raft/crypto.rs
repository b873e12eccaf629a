//! Owns encryption at rest: the per-manager data key (DEK) that seals every stored record with a
//! fresh nonce and the record's own identity as associated data, and the key-encryption key (KEK)
//! that wraps the DEK in a 0600 file. Never logs or prints key bytes.

use std::path::{Path, PathBuf};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use shoal_pki::files::{write_atomic, KEY_FILE_MODE};

/// Length of DEKs and KEKs.
pub const KEY_LEN: usize = 32;

/// Errors of sealing, opening and key files.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("a stored record ({what}) failed authentication: the data dir is corrupt or was tampered with")]
    Open { what: String },
    #[error("a stored record ({what}) is truncated")]
    Truncated { what: String },
    #[error("the system random generator failed")]
    Random,
    #[error("key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error(
        "the data key in {path} cannot be unwrapped with this key: wrong or rotated unlock key"
    )]
    WrongKek { path: String },
    #[error("this manager is locked: give it the swarm's unlock key with 'shoal swarm unlock'")]
    Locked,
    #[error("invalid unlock key: {0}")]
    BadUnlockKey(String),
}

const UNLOCK_PREFIX: &str = "SHLKEY-1-";
const UNLOCK_CHARS: usize = 50;

/// The text form of an unlock key: `SHLKEY-1-` and 50 base-36 digits.
pub fn format_unlock_key(key: &Key) -> String {
    format!("{UNLOCK_PREFIX}{}", shoal_pki::base36::encode(key.expose(), UNLOCK_CHARS))
}

/// Parses what `format_unlock_key` printed.
pub fn parse_unlock_key(s: &str) -> Result<Key, CryptoError> {
    let s = s.trim();
    let body = s.strip_prefix(UNLOCK_PREFIX).ok_or_else(|| {
        CryptoError::BadUnlockKey(format!(
            "it should start with {UNLOCK_PREFIX}; copy it whole from 'shoal swarm unlock-key'"
        ))
    })?;
    if body.len() != UNLOCK_CHARS {
        return Err(CryptoError::BadUnlockKey(format!(
            "it has {} characters after the prefix, expected {UNLOCK_CHARS} (was it truncated?)",
            body.len()
        )));
    }
    let bytes = shoal_pki::base36::decode(body, KEY_LEN).ok_or_else(|| {
        CryptoError::BadUnlockKey("it holds characters other than 0-9 and a-z".into())
    })?;
    let raw: [u8; KEY_LEN] =
        bytes.try_into().map_err(|_| CryptoError::BadUnlockKey("wrong length".into()))?;
    Ok(Key::from_bytes(raw))
}

/// A symmetric key; its bytes never appear in `Debug`.
#[derive(Clone)]
pub struct Key([u8; KEY_LEN]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl Key {
    /// A fresh random key.
    pub fn generate() -> Result<Key, CryptoError> {
        let mut k = [0u8; KEY_LEN];
        SystemRandom::new().fill(&mut k).map_err(|_| CryptoError::Random)?;
        Ok(Key(k))
    }

    /// The key from raw bytes.
    pub fn from_bytes(b: [u8; KEY_LEN]) -> Key {
        Key(b)
    }

    /// The raw bytes (for wrapping only).
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

/// Seals and opens records with one key (ChaCha20-Poly1305, random 96-bit nonce per record).
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

impl Sealer {
    /// A sealer for `key`.
    pub fn new(key: &Key) -> Sealer {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key.expose()).expect("32-byte key");
        Sealer { key: LessSafeKey::new(unbound), rng: SystemRandom::new() }
    }

    /// `nonce || ciphertext || tag`, bound to `aad` (the record's identity: kind and key/index).
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| CryptoError::Random)?;
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + aead::MAX_TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[NONCE_LEN..],
            )
            .map_err(|_| CryptoError::Random)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens a record sealed with the same `aad`; `what` names it in errors.
    pub fn open(
        &self,
        aad: &[u8],
        sealed: &[u8],
        what: impl Fn() -> String,
    ) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < NONCE_LEN + aead::MAX_TAG_LEN {
            return Err(CryptoError::Truncated { what: what() });
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[..NONCE_LEN]);
        let mut buf = sealed[NONCE_LEN..].to_vec();
        let plain = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf)
            .map_err(|_| CryptoError::Open { what: what() })?;
        let len = plain.len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// The key files of a manager: `dek` (the DEK sealed with the KEK) and, without autolock, `kek`.
#[derive(Clone, Debug)]
pub struct KeyFiles {
    dir: PathBuf,
}

const DEK_AAD: &[u8] = b"shoal-dek-v1";

fn key_err(path: &Path, reason: impl ToString) -> CryptoError {
    CryptoError::KeyFile { path: path.display().to_string(), reason: reason.to_string() }
}

impl KeyFiles {
    /// The key files in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> KeyFiles {
        KeyFiles { dir: dir.into() }
    }

    fn dek_path(&self) -> PathBuf {
        self.dir.join("dek")
    }

    fn kek_path(&self) -> PathBuf {
        self.dir.join("kek")
    }

    /// Creates a fresh DEK and KEK (unlocked manager) and writes both.
    pub fn create(&self) -> Result<Key, CryptoError> {
        let (dek, kek) = (Key::generate()?, Key::generate()?);
        std::fs::create_dir_all(&self.dir).map_err(|e| key_err(&self.dir, e))?;
        let path = self.kek_path();
        write_atomic(&path, kek.expose(), KEY_FILE_MODE).map_err(|e| key_err(&path, e))?;
        self.write_dek(&dek, &kek)?;
        Ok(dek)
    }

    fn write_dek(&self, dek: &Key, kek: &Key) -> Result<(), CryptoError> {
        let wrapped = Sealer::new(kek).seal(DEK_AAD, dek.expose())?;
        let path = self.dek_path();
        write_atomic(&path, &wrapped, KEY_FILE_MODE).map_err(|e| key_err(&path, e))
    }

    /// Whether the DEK is wrapped by an unlock key only the operator holds (no KEK file).
    pub fn is_locked(&self) -> bool {
        !self.kek_path().exists() && self.dek_path().exists()
    }

    /// Loads the DEK with the operator's unlock key.
    pub fn load_with(&self, unlock: &Key) -> Result<Key, CryptoError> {
        self.unwrap_dek(unlock)
    }

    /// Autolock on: wraps the DEK with the unlock key, then removes the KEK file.
    pub fn lock(&self, dek: &Key, unlock: &Key) -> Result<(), CryptoError> {
        self.write_dek(dek, unlock)?;
        match std::fs::remove_file(self.kek_path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(key_err(&self.kek_path(), e)),
            _ => Ok(()),
        }
    }

    /// Autolock off: a fresh KEK file, then the DEK wrapped with it.
    pub fn unlock(&self, dek: &Key) -> Result<(), CryptoError> {
        let kek = Key::generate()?;
        let path = self.kek_path();
        write_atomic(&path, kek.expose(), KEY_FILE_MODE).map_err(|e| key_err(&path, e))?;
        self.write_dek(dek, &kek)
    }

    /// Loads the DEK, unwrapping it with the KEK file.
    pub fn load(&self) -> Result<Key, CryptoError> {
        if self.is_locked() {
            return Err(CryptoError::Locked);
        }
        let path = self.kek_path();
        let raw = std::fs::read(&path).map_err(|e| key_err(&path, e))?;
        let kek: [u8; KEY_LEN] = raw.try_into().map_err(|_| key_err(&path, "not a 32-byte key"))?;
        self.unwrap_dek(&Key::from_bytes(kek))
    }

    fn unwrap_dek(&self, kek: &Key) -> Result<Key, CryptoError> {
        let path = self.dek_path();
        let wrapped = std::fs::read(&path).map_err(|e| key_err(&path, e))?;
        let raw = Sealer::new(kek)
            .open(DEK_AAD, &wrapped, || "dek".into())
            .map_err(|_| CryptoError::WrongKek { path: path.display().to_string() })?;
        let dek: [u8; KEY_LEN] = raw.try_into().map_err(|_| key_err(&path, "not a 32-byte key"))?;
        Ok(Key::from_bytes(dek))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_open_only_with_their_own_identity() {
        let s = Sealer::new(&Key::generate().unwrap());
        let sealed = s.seal(b"node/a", b"secret value").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"), "plaintext visible");
        assert_eq!(s.open(b"node/a", &sealed, || "a".into()).unwrap(), b"secret value");
        assert!(matches!(s.open(b"node/b", &sealed, || "b".into()), Err(CryptoError::Open { .. })));
        let mut flipped = sealed.clone();
        flipped[20] ^= 1;
        assert!(s.open(b"node/a", &flipped, || "a".into()).is_err());
        assert!(matches!(
            s.open(b"node/a", &sealed[..10], || "a".into()),
            Err(CryptoError::Truncated { .. })
        ));
    }

    #[test]
    fn the_same_value_seals_differently_each_time() {
        let s = Sealer::new(&Key::generate().unwrap());
        assert_ne!(s.seal(b"k", b"v").unwrap(), s.seal(b"k", b"v").unwrap());
    }

    #[test]
    fn key_files_round_trip_and_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let files = KeyFiles::new(dir.path());
        let dek = files.create().unwrap();
        assert_eq!(files.load().unwrap().expose(), dek.expose());
        for name in ["dek", "kek"] {
            let mode = std::fs::metadata(dir.path().join(name)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        assert_eq!(format!("{dek:?}"), "Key(<redacted>)");
    }

    #[test]
    fn locking_needs_the_unlock_key_and_unlocking_restores_the_kek() {
        let dir = tempfile::tempdir().unwrap();
        let files = KeyFiles::new(dir.path());
        let dek = files.create().unwrap();
        let unlock = Key::generate().unwrap();
        files.lock(&dek, &unlock).unwrap();
        assert!(files.is_locked());
        assert!(matches!(files.load(), Err(CryptoError::Locked)));
        assert!(matches!(
            files.load_with(&Key::generate().unwrap()),
            Err(CryptoError::WrongKek { .. })
        ));
        assert_eq!(files.load_with(&unlock).unwrap().expose(), dek.expose());
        files.unlock(&dek).unwrap();
        assert_eq!(files.load().unwrap().expose(), dek.expose());
    }

    #[test]
    fn unlock_keys_round_trip_and_bad_ones_are_explained() {
        let key = Key::generate().unwrap();
        let text = format_unlock_key(&key);
        assert!(text.starts_with("SHLKEY-1-") && text.len() == 9 + 50, "{text}");
        assert_eq!(parse_unlock_key(&format!(" {text}\n")).unwrap().expose(), key.expose());
        for bad in ["", "SHLKEY-1-abc", &text[..text.len() - 1], &text.replace("SHLKEY", "SWMKEY")]
        {
            let err = parse_unlock_key(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid unlock key"), "{err}");
        }
    }

    #[test]
    fn a_missing_or_wrong_kek_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let files = KeyFiles::new(dir.path());
        files.create().unwrap();
        std::fs::write(dir.path().join("kek"), [7u8; 32]).unwrap();
        assert!(matches!(files.load(), Err(CryptoError::WrongKek { .. })));
        std::fs::remove_file(dir.path().join("kek")).unwrap();
        let err = files.load().unwrap_err().to_string();
        assert!(err.contains("shoal swarm unlock"), "{err}");
    }
}
