//! Owns encryption at rest: the per-manager data key (DEK) that seals every stored record with a
//! fresh nonce and the record's own identity as associated data, and the key-encryption key (KEK)
//! that wraps the DEK in a 0600 file. Never logs or prints key bytes.
//!
//! A DEK is rotated without stopping: the key file first holds the new key and the previous one,
//! the sealer seals with the new key and opens with either, every stored record is sealed again,
//! and only then does the key file drop the previous key. A crash in between leaves both keys in
//! the file and the rotation is finished at the next start.
//!
//! The key file says how its keys are wrapped (`SHLDEK2` + `K` for the local KEK file, `U` for
//! the operator's unlock key), so a missing KEK file is reported as missing, not taken for
//! autolock.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

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
    #[error("the data key in {path} cannot be unwrapped with {with}")]
    WrongKek { path: String, with: String },
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

/// Seals and opens records (ChaCha20-Poly1305, random 96-bit nonce per record): seals with the
/// current data key, opens with it or, during a rotation, with the previous one.
///
/// Writers hold a [`WriteGate`] from sealing a record until it is in sled, and the key switch
/// waits for every gate to close: once `rotate_to` returns, no record sealed with the old key
/// is still on its way to the store, so one pass over the store finds every such record.
pub struct Sealer {
    keys: RwLock<SealKeys>,
    /// Read-held by writers between seal and insert; write-held by the key switch.
    gate: RwLock<()>,
    rng: SystemRandom,
}

/// Held by a writer from sealing its records until they are inserted (see [`Sealer`]). Never
/// take a second one on the same thread while holding one: a waiting key switch would block it.
#[must_use = "the gate must stay open until the sealed records are inserted"]
pub struct WriteGate<'a>(#[allow(dead_code)] std::sync::RwLockReadGuard<'a, ()>);

impl std::fmt::Debug for WriteGate<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteGate")
    }
}

struct SealKeys {
    current: LessSafeKey,
    previous: Option<LessSafeKey>,
}

fn aead_key(key: &Key) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key.expose()).expect("32-byte key"))
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

impl Sealer {
    /// A sealer for `key`.
    pub fn new(key: &Key) -> Sealer {
        Sealer::for_keys(&DataKeys::new(key.clone()))
    }

    /// A sealer for a manager's data keys (both, while a rotation is unfinished).
    pub fn for_keys(keys: &DataKeys) -> Sealer {
        let keys = SealKeys {
            current: aead_key(&keys.current),
            previous: keys.previous.as_ref().map(aead_key),
        };
        Sealer { keys: RwLock::new(keys), gate: RwLock::new(()), rng: SystemRandom::new() }
    }

    /// Opens the gate for one write: hold it from the first `seal` until the records are in
    /// the store.
    pub fn writing(&self) -> WriteGate<'_> {
        WriteGate(self.gate.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Seals with `new` from now on; records sealed with the key used so far still open.
    /// Waits for writes in flight (open gates) to reach the store first.
    pub fn rotate_to(&self, new: &Key) {
        let _no_writes = self.gate.write().unwrap_or_else(|p| p.into_inner());
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let old = std::mem::replace(&mut keys.current, aead_key(new));
        keys.previous = Some(old);
    }

    /// Stops opening records with the previous key (every record was sealed again).
    pub fn forget_previous(&self) {
        self.keys.write().unwrap_or_else(|p| p.into_inner()).previous = None;
    }

    /// `nonce || ciphertext || tag`, bound to `aad` (the record's identity: kind and key/index).
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| CryptoError::Random)?;
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + aead::MAX_TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let tag = keys
            .current
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
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        std::iter::once(&keys.current)
            .chain(keys.previous.as_ref())
            .find_map(|key| open_with(key, aad, sealed))
            .ok_or_else(|| CryptoError::Open { what: what() })
    }

    /// Whether `sealed` opens with the current key (not only with the previous one).
    pub fn is_current(&self, aad: &[u8], sealed: &[u8]) -> bool {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        sealed.len() >= NONCE_LEN + aead::MAX_TAG_LEN
            && open_with(&keys.current, aad, sealed).is_some()
    }
}

fn open_with(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&sealed[..NONCE_LEN]);
    let mut buf = sealed[NONCE_LEN..].to_vec();
    let len = key
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf)
        .ok()?
        .len();
    buf.truncate(len);
    Some(buf)
}

/// A manager's data keys: the current one, the previous one while a rotation is unfinished,
/// and the rotation epoch reached (compared with the cluster's to start the next rotation).
#[derive(Clone)]
pub struct DataKeys {
    pub current: Key,
    pub previous: Option<Key>,
    pub epoch: u64,
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKeys")
            .field("rotating", &self.previous.is_some())
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl DataKeys {
    /// One key, epoch 0.
    pub fn new(current: Key) -> DataKeys {
        DataKeys { current, previous: None, epoch: 0 }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = self.epoch.to_be_bytes().to_vec();
        out.push(1 + u8::from(self.previous.is_some()));
        out.extend_from_slice(self.current.expose());
        if let Some(p) = &self.previous {
            out.extend_from_slice(p.expose());
        }
        out
    }

    fn decode(b: &[u8]) -> Option<DataKeys> {
        let epoch = u64::from_be_bytes(b.get(..8)?.try_into().ok()?);
        let count = usize::from(*b.get(8)?);
        let keys = b.get(9..)?;
        if !(1..=2).contains(&count) || keys.len() != count * KEY_LEN {
            return None;
        }
        let key = |i: usize| {
            Key::from_bytes(keys[i * KEY_LEN..(i + 1) * KEY_LEN].try_into().unwrap_or([0; KEY_LEN]))
        };
        Some(DataKeys { current: key(0), previous: (count == 2).then(|| key(1)), epoch })
    }
}

/// The key files of a manager: `dek` (the data keys sealed with the KEK or the unlock key) and,
/// without autolock, `kek`.
#[derive(Clone, Debug)]
pub struct KeyFiles {
    dir: PathBuf,
}

/// Associated data of the first key file format (one DEK, wrapped by the KEK file or, when that
/// file was absent, by the unlock key).
const DEK_AAD: &[u8] = b"shoal-dek-v1";
/// The current format: magic, a mode byte, then the sealed [`DataKeys`].
const DEK_MAGIC: &[u8] = b"SHLDEK2";
const MODE_KEK: u8 = b'K';
const MODE_UNLOCK: u8 = b'U';

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
    pub fn create(&self) -> Result<DataKeys, CryptoError> {
        let keys = DataKeys::new(Key::generate()?);
        std::fs::create_dir_all(&self.dir).map_err(|e| key_err(&self.dir, e))?;
        self.write_kek(&Key::generate()?)?;
        self.save(&keys, None)?;
        Ok(keys)
    }

    fn write_kek(&self, kek: &Key) -> Result<(), CryptoError> {
        let path = self.kek_path();
        write_atomic(&path, kek.expose(), KEY_FILE_MODE).map_err(|e| key_err(&path, e))
    }

    fn read_kek(&self) -> Result<Key, CryptoError> {
        let path = self.kek_path();
        let raw = std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                key_err(&path, "missing: this manager's data keys are wrapped by it (autolock is off); restore it from a backup")
            } else {
                key_err(&path, e)
            }
        })?;
        let kek: [u8; KEY_LEN] = raw.try_into().map_err(|_| key_err(&path, "not a 32-byte key"))?;
        Ok(Key::from_bytes(kek))
    }

    /// Writes the data keys durably: wrapped by `unlock` (autolock; the KEK file is removed
    /// afterwards) or by the KEK file (made if missing).
    pub fn save(&self, keys: &DataKeys, unlock: Option<&Key>) -> Result<(), CryptoError> {
        let (mode, wrapping) = match unlock {
            Some(k) => (MODE_UNLOCK, k.clone()),
            None => match self.read_kek() {
                Ok(k) => (MODE_KEK, k),
                Err(_) if !self.kek_path().exists() => {
                    let k = Key::generate()?;
                    self.write_kek(&k)?;
                    (MODE_KEK, k)
                }
                Err(e) => return Err(e),
            },
        };
        let aad = [DEK_MAGIC, &[mode]].concat();
        let sealed = Sealer::new(&wrapping).seal(&aad, &keys.encode())?;
        let path = self.dek_path();
        write_atomic(&path, &[aad, sealed].concat(), KEY_FILE_MODE)
            .map_err(|e| key_err(&path, e))?;
        if unlock.is_some() {
            match std::fs::remove_file(self.kek_path()) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(key_err(&self.kek_path(), e))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The key file's mode byte (`None`: the first format, which has none).
    fn mode(&self) -> Option<u8> {
        let head = std::fs::read(self.dek_path()).ok()?;
        head.strip_prefix(DEK_MAGIC).and_then(|rest| rest.first().copied())
    }

    /// Whether the DEK is wrapped by an unlock key only the operator holds.
    pub fn is_locked(&self) -> bool {
        match self.mode() {
            Some(mode) => mode == MODE_UNLOCK,
            None => !self.kek_path().exists() && self.dek_path().exists(),
        }
    }

    /// Loads the data keys with the operator's unlock key.
    pub fn load_with(&self, unlock: &Key) -> Result<DataKeys, CryptoError> {
        self.unwrap_keys(unlock, "this key: wrong or rotated unlock key")
    }

    /// Autolock on: wraps the data keys with the unlock key, then removes the KEK file.
    pub fn lock(&self, keys: &DataKeys, unlock: &Key) -> Result<(), CryptoError> {
        self.save(keys, Some(unlock))
    }

    /// Autolock off: a fresh KEK file, then the data keys wrapped with it.
    pub fn unlock(&self, keys: &DataKeys) -> Result<(), CryptoError> {
        self.write_kek(&Key::generate()?)?;
        self.save(keys, None)
    }

    /// Loads the data keys, unwrapping them with the KEK file.
    pub fn load(&self) -> Result<DataKeys, CryptoError> {
        if self.is_locked() {
            return Err(CryptoError::Locked);
        }
        let kek = self.read_kek()?;
        let kek_path = self.kek_path().display().to_string();
        self.unwrap_keys(
            &kek,
            &format!(
                "the key in {kek_path}: one of the two files is damaged or from another manager"
            ),
        )
    }

    fn unwrap_keys(&self, wrapping: &Key, with_what: &str) -> Result<DataKeys, CryptoError> {
        let path = self.dek_path();
        let file = std::fs::read(&path).map_err(|e| key_err(&path, e))?;
        let wrong = || CryptoError::WrongKek {
            path: path.display().to_string(),
            with: with_what.to_string(),
        };
        match file.strip_prefix(DEK_MAGIC) {
            Some(rest) => {
                let (mode, sealed) =
                    rest.split_first().ok_or_else(|| key_err(&path, "truncated"))?;
                let aad = [DEK_MAGIC, &[*mode]].concat();
                let plain = Sealer::new(wrapping)
                    .open(&aad, sealed, || "dek".into())
                    .map_err(|_| wrong())?;
                DataKeys::decode(&plain).ok_or_else(|| key_err(&path, "not a data key record"))
            }
            None => {
                let raw = Sealer::new(wrapping)
                    .open(DEK_AAD, &file, || "dek".into())
                    .map_err(|_| wrong())?;
                let dek: [u8; KEY_LEN] =
                    raw.try_into().map_err(|_| key_err(&path, "not a 32-byte key"))?;
                Ok(DataKeys::new(Key::from_bytes(dek)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_switch_waits_for_a_write_sealed_with_the_old_key_to_land() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let sealer = Arc::new(Sealer::new(&Key::generate().unwrap()));
        let switched = Arc::new(AtomicBool::new(false));
        let gate = sealer.writing();
        let in_flight = sealer.seal(b"node/a", b"v").unwrap();
        let rotation = std::thread::spawn({
            let (sealer, switched) = (sealer.clone(), switched.clone());
            move || {
                sealer.rotate_to(&Key::generate().unwrap());
                switched.store(true, Ordering::SeqCst);
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(
            !switched.load(Ordering::SeqCst),
            "the key switched while a record sealed with the old key was not yet stored: a \
             re-sealing pass could miss it"
        );
        drop(gate);
        rotation.join().unwrap();
        assert!(switched.load(Ordering::SeqCst));
        assert!(!sealer.is_current(b"node/a", &in_flight));
        assert!(sealer.is_current(b"node/a", &sealer.seal(b"node/a", b"v").unwrap()));
    }

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
        assert_eq!(files.load().unwrap().current.expose(), dek.current.expose());
        for name in ["dek", "kek"] {
            let mode = std::fs::metadata(dir.path().join(name)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        assert_eq!(format!("{:?}", dek.current), "Key(<redacted>)");
        assert!(!format!("{dek:?}").contains(&format!("{:?}", dek.current.expose())));
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
        assert_eq!(files.load_with(&unlock).unwrap().current.expose(), dek.current.expose());
        files.unlock(&dek).unwrap();
        assert_eq!(files.load().unwrap().current.expose(), dek.current.expose());
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
    fn a_rotating_sealer_opens_both_keys_until_told_to_forget_the_old_one() {
        let (old, new) = (Key::generate().unwrap(), Key::generate().unwrap());
        let s = Sealer::new(&old);
        let before = s.seal(b"k", b"v1").unwrap();
        s.rotate_to(&new);
        let after = s.seal(b"k", b"v2").unwrap();
        assert!(!s.is_current(b"k", &before) && s.is_current(b"k", &after));
        assert_eq!(s.open(b"k", &before, || "k".into()).unwrap(), b"v1");
        assert_eq!(Sealer::new(&new).open(b"k", &after, || "k".into()).unwrap(), b"v2");
        s.forget_previous();
        assert!(matches!(s.open(b"k", &before, || "k".into()), Err(CryptoError::Open { .. })));
        assert_eq!(s.open(b"k", &after, || "k".into()).unwrap(), b"v2");
    }

    #[test]
    fn key_files_keep_both_keys_of_an_unfinished_rotation_in_either_mode() {
        let dir = tempfile::tempdir().unwrap();
        let files = KeyFiles::new(dir.path());
        let first = files.create().unwrap();
        let rotating = DataKeys {
            current: Key::generate().unwrap(),
            previous: Some(first.current.clone()),
            epoch: 3,
        };
        files.save(&rotating, None).unwrap();
        let back = files.load().unwrap();
        assert_eq!(back.epoch, 3);
        assert_eq!(back.current.expose(), rotating.current.expose());
        assert_eq!(back.previous.unwrap().expose(), first.current.expose());
        let unlock = Key::generate().unwrap();
        files.save(&rotating, Some(&unlock)).unwrap();
        assert!(files.is_locked() && !dir.path().join("kek").exists());
        assert_eq!(files.load_with(&unlock).unwrap().epoch, 3);
    }

    #[test]
    fn a_first_format_key_file_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (dek, kek) = (Key::generate().unwrap(), Key::generate().unwrap());
        std::fs::write(dir.path().join("kek"), kek.expose()).unwrap();
        let wrapped = Sealer::new(&kek).seal(DEK_AAD, dek.expose()).unwrap();
        std::fs::write(dir.path().join("dek"), wrapped).unwrap();
        let files = KeyFiles::new(dir.path());
        let keys = files.load().unwrap();
        assert_eq!((keys.current.expose(), keys.epoch), (dek.expose(), 0));
    }

    #[test]
    fn a_missing_kek_is_named_not_taken_for_autolock() {
        let dir = tempfile::tempdir().unwrap();
        let files = KeyFiles::new(dir.path());
        files.create().unwrap();
        std::fs::remove_file(dir.path().join("kek")).unwrap();
        assert!(!files.is_locked());
        let err = files.load().unwrap_err().to_string();
        assert!(err.contains("kek") && err.contains("missing"), "{err}");
    }

    #[test]
    fn a_missing_or_wrong_kek_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let files = KeyFiles::new(dir.path());
        files.create().unwrap();
        std::fs::write(dir.path().join("kek"), [7u8; 32]).unwrap();
        let err = files.load().unwrap_err();
        assert!(matches!(err, CryptoError::WrongKek { .. }));
        assert!(err.to_string().contains("damaged or from another manager"), "{err}");
        files.lock(&DataKeys::new(Key::generate().unwrap()), &Key::generate().unwrap()).unwrap();
        let err = files.load().unwrap_err().to_string();
        assert!(err.contains("shoal swarm unlock"), "{err}");
    }
}
