//! Random object IDs (nodes, clusters, services…): 128 random bits as 25 base36 characters.

use ring::rand::{SecureRandom, SystemRandom};

/// Length in characters of every ID produced by [`new_id`].
pub const ID_LEN: usize = 25;

/// Returns a new random ID: 128 bits from the OS generator, as exactly 25 chars of `[0-9a-z]`.
pub fn new_id() -> String {
    let mut bytes = [0u8; 16];
    fill_random(&mut bytes);
    crate::base36::encode(&bytes, ID_LEN)
}

/// Whether `s` looks like an ID from [`new_id`]: exactly 25 chars of `[0-9a-z]`.
pub fn is_valid_id(s: &str) -> bool {
    s.len() == ID_LEN && s.bytes().all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
}

/// Fills `buf` from the OS random generator.
///
/// # Panics
/// Panics if the operating system cannot provide random bytes, which leaves
/// no safe way to create keys or secrets anyway.
pub(crate) fn fill_random(buf: &mut [u8]) {
    if SystemRandom::new().fill(buf).is_err() {
        panic!("the operating system random number generator failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_valid_and_unique() {
        let ids: HashSet<String> = (0..1000).map(|_| new_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| is_valid_id(id)));
    }

    #[test]
    fn rejects_malformed_ids() {
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("abc"));
        assert!(!is_valid_id("ABCDEFGHIJKLMNOPQRSTUVWXY"));
        assert!(!is_valid_id("abcdefghijklmnopqrstuvwx-"));
        assert!(is_valid_id("0000000000000000000000000"));
    }
}
