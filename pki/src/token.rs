//! Join tokens: `SHLTKN-1-<CA digest>-<secret>`, which pin the root CA and authorize a node to join.

use std::fmt;

use ring::digest::{digest, SHA256};
use subtle::ConstantTimeEq;

use crate::base36;

/// The literal every join token starts with.
pub const TOKEN_PREFIX: &str = "SHLTKN-1-";
/// Number of base36 characters in the CA digest field.
pub const DIGEST_CHARS: usize = 50;
/// Number of base36 characters in the secret field.
pub const SECRET_CHARS: usize = 25;

const WHERE_TO_GET: &str = "copy the whole token printed by 'shoal swarm join-token worker'";

/// A parsed join token: the SHA-256 digest of the root CA bundle plus a 128-bit secret.
#[derive(Clone)]
pub struct JoinToken {
    /// SHA-256 of the root CA bundle PEM bytes the joiner must trust.
    pub ca_digest: [u8; 32],
    secret: [u8; 16],
}

/// Why a string is not a valid join token; messages never contain the secret.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// The token is empty.
    #[error("invalid join token: it is empty; {WHERE_TO_GET}")]
    Empty,
    /// The token does not start with `SHLTKN-`.
    #[error("invalid join token: it should start with \"{expected}\"; {WHERE_TO_GET}")]
    WrongPrefix {
        /// The prefix that was expected.
        expected: &'static str,
    },
    /// The token has a version this build does not understand.
    #[error("invalid join token: version \"{0}\" is not supported (this shoal understands version 1); use a token from a manager running the same shoal release")]
    UnsupportedVersion(String),
    /// The token does not have exactly four dash-separated fields.
    #[error("invalid join token: it has {0} dash-separated fields, expected 4 (SHLTKN-1-<digest>-<secret>); {WHERE_TO_GET}")]
    WrongFieldCount(usize),
    /// The CA digest field is malformed.
    #[error("invalid join token: the CA digest field {0}")]
    BadDigest(FieldError),
    /// The secret field is malformed (its content is never shown).
    #[error("invalid join token: the secret field {0}")]
    BadSecret(FieldError),
}

/// What is wrong with a token's digest or secret field; never shows the field itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// The field has the wrong number of characters.
    #[error("has {len} characters, expected {expected} (was the token truncated?)")]
    Length { len: usize, expected: usize },
    /// The field holds characters outside base36.
    #[error("contains characters other than 0-9 and a-z (was the token mistyped?)")]
    Alphabet,
    /// The field's number does not fit its bytes.
    #[error("is out of range (was the token mistyped?)")]
    Range,
}

/// SHA-256 of the root CA bundle PEM bytes, as carried in join tokens.
pub fn ca_digest(ca_bundle_pem: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, ca_bundle_pem).as_ref());
    out
}

impl JoinToken {
    /// Creates a token for the given CA bundle with a fresh random secret.
    pub fn generate(ca_bundle_pem: &[u8]) -> JoinToken {
        let mut secret = [0u8; 16];
        crate::id::fill_random(&mut secret);
        JoinToken::from_parts(ca_digest(ca_bundle_pem), secret)
    }

    /// Builds a token from an existing digest and secret.
    pub fn from_parts(ca_digest: [u8; 32], secret: [u8; 16]) -> JoinToken {
        JoinToken { ca_digest, secret }
    }

    /// The 128-bit secret.
    pub fn secret(&self) -> &[u8; 16] {
        &self.secret
    }

    /// The token's text form, `SHLTKN-1-<digest>-<secret>`; treat it as a password.
    pub fn encode(&self) -> String {
        format!(
            "{TOKEN_PREFIX}{}-{}",
            base36::encode(&self.ca_digest, DIGEST_CHARS),
            base36::encode(&self.secret, SECRET_CHARS)
        )
    }

    /// Parses a token, ignoring surrounding whitespace.
    pub fn parse(s: &str) -> Result<JoinToken, TokenError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(TokenError::Empty);
        }
        let fields: Vec<&str> = s.split('-').collect();
        if !s.starts_with("SHLTKN-") || fields[1].is_empty() {
            return Err(TokenError::WrongPrefix { expected: TOKEN_PREFIX });
        }
        if fields[1] != "1" {
            return Err(TokenError::UnsupportedVersion(describe_version(fields[1])));
        }
        if fields.len() != 4 {
            return Err(TokenError::WrongFieldCount(fields.len()));
        }
        let digest = decode_field(fields[2], DIGEST_CHARS).map_err(TokenError::BadDigest)?;
        let secret = decode_field(fields[3], SECRET_CHARS).map_err(TokenError::BadSecret)?;
        Ok(JoinToken::from_parts(digest, secret))
    }

    /// Whether this token's digest is the SHA-256 of `ca_bundle_pem`.
    pub fn matches_ca(&self, ca_bundle_pem: &[u8]) -> bool {
        bool::from(self.ca_digest.ct_eq(&ca_digest(ca_bundle_pem)))
    }

    /// Constant-time comparison of digest and secret with another token.
    pub fn secret_eq(&self, other: &JoinToken) -> bool {
        let digest_eq = self.ca_digest.ct_eq(&other.ca_digest);
        let secret_eq = self.secret.ct_eq(&other.secret);
        bool::from(digest_eq & secret_eq)
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex: String = self.ca_digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        write!(f, "JoinToken({hex}…, <redacted>)")
    }
}

/// Shows an unsupported version field safely: escaped and capped in length.
fn describe_version(v: &str) -> String {
    let shown: String = v.chars().take(16).collect();
    shown.escape_debug().to_string()
}

/// Decodes a fixed-width base36 field of `N` bytes; the error describes the field without echoing it.
fn decode_field<const N: usize>(field: &str, chars: usize) -> Result<[u8; N], FieldError> {
    let len = field.chars().count();
    if len != chars {
        return Err(FieldError::Length { len, expected: chars });
    }
    if !field.bytes().all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()) {
        return Err(FieldError::Alphabet);
    }
    let bytes = base36::decode(field, N).ok_or(FieldError::Range)?;
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes);
    Ok(out)
}

#[cfg(test)]
#[path = "token_tests.rs"]
mod tests;
