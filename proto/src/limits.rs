//! Owns the bounds on what a node may send the managers (issue #12: a worker must not make the
//! managers write without bound). The manager refuses a field over its bound with a message
//! naming the field and the bound; the agent trims what it produces (task messages and errors)
//! so a real node never trips them.

use std::fmt;

/// A hostname: the DNS limit.
pub const HOSTNAME_BYTES: usize = 253;
/// An address (`IP`, `IP:PORT`, `[v6]:port`).
pub const ADDR_BYTES: usize = 64;
/// A task status message or error.
pub const MESSAGE_BYTES: usize = 1024;
/// An ID the node repeats back (task, session, subscription).
pub const ID_BYTES: usize = 128;
/// A node description's OS or architecture word.
pub const WORD_BYTES: usize = 64;
/// A task health word.
pub const HEALTH_BYTES: usize = 32;
/// A certificate signing request.
pub const CSR_BYTES: usize = 16 * 1024;
/// A join token.
pub const TOKEN_BYTES: usize = 512;
/// Task status updates in one call.
pub const STATUS_UPDATES: usize = 1000;
/// Log lines in one published message.
pub const LOG_LINES: usize = 1000;
/// One log line.
pub const LOG_LINE_BYTES: usize = 256 * 1024;

/// A field over its bound, or not well formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitError {
    /// The field, as the protocol names it.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for LimitError {}

/// Checks that `value` is at most `max` bytes.
pub fn at_most(field: &'static str, value: &str, max: usize) -> Result<(), LimitError> {
    bytes_at_most(field, value.len(), max)
}

/// Checks a length in bytes against `max`.
pub fn bytes_at_most(field: &'static str, len: usize, max: usize) -> Result<(), LimitError> {
    if len > max {
        return Err(LimitError {
            field,
            problem: format!("{len} bytes is over the limit of {max} bytes"),
        });
    }
    Ok(())
}

/// Checks a count of items against `max`.
pub fn count_at_most(field: &'static str, count: usize, max: usize) -> Result<(), LimitError> {
    if count > max {
        return Err(LimitError {
            field,
            problem: format!("{count} items is over the limit of {max}"),
        });
    }
    Ok(())
}

/// Checks a node hostname: 1 to 253 bytes of RFC 1123 labels (letters, digits, `-`, `_`,
/// separated by dots, each label 1 to 63 bytes, not starting or ending with `-`).
pub fn hostname(field: &'static str, value: &str) -> Result<(), LimitError> {
    at_most(field, value, HOSTNAME_BYTES)?;
    let bad = |problem: String| Err(LimitError { field, problem });
    if value.is_empty() {
        return bad("a hostname is required".into());
    }
    for label in value.split('.') {
        if label.is_empty() || label.len() > 63 {
            return bad(format!("{value:?} is not a valid hostname: each dot-separated part must be 1 to 63 characters"));
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return bad(format!(
                "{value:?} is not a valid hostname: use letters, digits, '-', '_' and '.'"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad(format!(
                "{value:?} is not a valid hostname: a part may not start or end with '-'"
            ));
        }
    }
    Ok(())
}

/// `value` cut to at most `max` bytes at a character boundary (for text a node produces).
pub fn trimmed(value: &str, max: usize) -> &str {
    if value.len() <= max {
        return value;
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_follow_rfc_1123() {
        for ok in ["a", "node-1", "web.example.com", "n_2", &"a".repeat(63)] {
            assert!(hostname("hostname", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "a..b", "a b", "é", &"a".repeat(64), &"a.".repeat(130)] {
            assert!(hostname("hostname", bad).is_err(), "{bad}");
        }
        let e = hostname("hostname", &"a".repeat(3 << 20)).unwrap_err();
        assert_eq!(e.to_string(), "hostname: 3145728 bytes is over the limit of 253 bytes");
    }

    #[test]
    fn trimming_keeps_whole_characters() {
        assert_eq!(trimmed("abc", 5), "abc");
        assert_eq!(trimmed("abcdef", 3), "abc");
        assert_eq!(trimmed("aé", 2), "a");
    }
}
