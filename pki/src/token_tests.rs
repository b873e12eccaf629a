//! Unit and property tests for join tokens.

use super::*;
use proptest::prelude::*;

const BUNDLE: &[u8] = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

fn sample() -> JoinToken {
    JoinToken::from_parts([0xab; 32], [0x5c; 16])
}

#[test]
fn encoded_shape() {
    let text = JoinToken::generate(BUNDLE).encode();
    assert!(text.starts_with(TOKEN_PREFIX));
    assert_eq!(text.len(), TOKEN_PREFIX.len() + DIGEST_CHARS + 1 + SECRET_CHARS);
}

#[test]
fn generate_pins_ca_and_randomizes_secret() {
    let a = JoinToken::generate(BUNDLE);
    let b = JoinToken::generate(BUNDLE);
    assert!(a.matches_ca(BUNDLE));
    assert!(!a.matches_ca(b"another bundle"));
    assert_eq!(a.ca_digest, ca_digest(BUNDLE));
    assert_ne!(a.secret(), b.secret());
    assert!(!a.secret_eq(&b));
    assert!(a.secret_eq(&a.clone()));
}

#[test]
fn parse_trims_whitespace() {
    let text = format!("  \n{}\t\n", sample().encode());
    let parsed = JoinToken::parse(&text).expect("valid token");
    assert!(parsed.secret_eq(&sample()));
}

#[test]
fn debug_redacts_secret() {
    let dbg = format!("{:?}", sample());
    assert_eq!(dbg, "JoinToken(abababababab…, <redacted>)");
    let secret_text = base36::encode(sample().secret(), SECRET_CHARS);
    assert!(!dbg.contains(&secret_text));
}

#[test]
fn specific_errors() {
    assert_eq!(JoinToken::parse("   ").err(), Some(TokenError::Empty));
    let wrong = JoinToken::parse("SWMTKN-1-abc-def").err();
    assert_eq!(
        wrong.map(|e| e.to_string()).as_deref(),
        Some("invalid join token: it should start with \"SHLTKN-1-\"; copy the whole token printed by 'shoal swarm join-token worker'")
    );
    let text = sample().encode().replacen("SHLTKN-1-", "SHLTKN-2-", 1);
    assert_eq!(JoinToken::parse(&text).err(), Some(TokenError::UnsupportedVersion("2".into())));
    let text = format!("{}-extra", sample().encode());
    assert_eq!(JoinToken::parse(&text).err(), Some(TokenError::WrongFieldCount(5)));
}

#[test]
fn truncated_digest_message() {
    let text = sample().encode();
    let cut = format!("{}{}", &text[..TOKEN_PREFIX.len() + 49], &text[TOKEN_PREFIX.len() + 50..]);
    let err = JoinToken::parse(&cut).err().map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("invalid join token: the CA digest field has 49 characters, expected 50 (was the token truncated?)")
    );
}

#[test]
fn errors_never_contain_secret() {
    let token = sample();
    let secret_text = base36::encode(token.secret(), SECRET_CHARS);
    let mut text = token.encode();
    text.push('Z');
    let err = JoinToken::parse(&text).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(!err.is_empty());
    assert!(!err.contains(&secret_text));
    let upper = token.encode().to_uppercase();
    let err = JoinToken::parse(&upper).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(!err.contains(&secret_text.to_uppercase()));
}

#[test]
fn out_of_range_digest_rejected() {
    let text = format!("{TOKEN_PREFIX}{}-{}", "z".repeat(50), "0".repeat(25));
    assert!(matches!(JoinToken::parse(&text), Err(TokenError::BadDigest(_))));
    let text = format!("{TOKEN_PREFIX}{}-{}", "0".repeat(50), "z".repeat(25));
    assert!(matches!(JoinToken::parse(&text), Err(TokenError::BadSecret(_))));
}

#[test]
fn every_truncation_is_rejected() {
    let text = JoinToken::generate(BUNDLE).encode();
    for end in 0..text.len() {
        assert!(JoinToken::parse(&text[..end]).is_err(), "prefix {end} accepted");
    }
    for start in 1..text.len() {
        assert!(JoinToken::parse(&text[start..]).is_err(), "suffix {start} accepted");
    }
}

proptest! {
    #[test]
    fn round_trip(digest in any::<[u8; 32]>(), secret in any::<[u8; 16]>()) {
        let token = JoinToken::from_parts(digest, secret);
        let parsed = JoinToken::parse(&token.encode());
        prop_assert!(parsed.is_ok());
        let parsed = parsed.unwrap_or_else(|_| sample());
        prop_assert_eq!(parsed.ca_digest, digest);
        prop_assert_eq!(parsed.secret(), &secret);
        prop_assert!(parsed.secret_eq(&token));
    }

    #[test]
    fn random_strings_rejected(s in ".{0,120}") {
        prop_assert!(JoinToken::parse(&s).is_err());
    }

    #[test]
    fn random_token_shaped_strings_never_panic(d in "[0-9a-zA-Z]{45,55}", sec in "[0-9a-z_]{20,30}") {
        let _ = JoinToken::parse(&format!("{TOKEN_PREFIX}{d}-{sec}"));
    }

    #[test]
    fn one_char_digest_change_breaks_match(pos in 0usize..DIGEST_CHARS, delta in 1u8..36) {
        let token = JoinToken::generate(BUNDLE);
        let text = token.encode();
        let mut bytes = text.into_bytes();
        let idx = TOKEN_PREFIX.len() + pos;
        let old = base36_value(bytes[idx]);
        bytes[idx] = b"0123456789abcdefghijklmnopqrstuvwxyz"[usize::from((old + delta) % 36)];
        let changed = String::from_utf8(bytes).unwrap_or_default();
        if let Ok(parsed) = JoinToken::parse(&changed) {
            prop_assert!(!parsed.matches_ca(BUNDLE));
        }
    }
}

fn base36_value(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        _ => c - b'a' + 10,
    }
}
