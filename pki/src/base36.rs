//! Fixed-width lowercase base36 encoding of big-endian byte strings (used by IDs and join tokens).
//!
//! The alphabet is `0-9` then `a-z`. Encoding is plain long division over the
//! bytes, so no bignum crate is needed.

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Encodes `bytes` (a big-endian unsigned number) as base36, zero-padded on the left to `width`.
///
/// The output is never truncated: if the number needs more than `width` digits
/// the result is longer than `width`. Callers pick a width large enough for
/// their byte length (25 digits hold 16 bytes, 50 digits hold 32 bytes).
pub fn encode(bytes: &[u8], width: usize) -> String {
    let mut number: Vec<u8> = bytes.to_vec();
    let mut digits: Vec<u8> = Vec::with_capacity(width.max(bytes.len() * 2));
    while number.iter().any(|&b| b != 0) {
        let rem = div_rem_in_place(&mut number, 36);
        digits.push(ALPHABET[usize::from(rem)]);
    }
    while digits.len() < width {
        digits.push(b'0');
    }
    digits.reverse();
    digits.into_iter().map(char::from).collect()
}

/// Decodes base36 text into exactly `out_len` big-endian bytes.
///
/// Returns `None` if a character is outside `[0-9a-z]` or the value does not
/// fit in `out_len` bytes. The empty string decodes to zero.
pub fn decode(s: &str, out_len: usize) -> Option<Vec<u8>> {
    let mut out = vec![0u8; out_len];
    for c in s.bytes() {
        let digit = digit_value(c)?;
        if mul_add_in_place(&mut out, 36, digit) != 0 {
            return None;
        }
    }
    Some(out)
}

/// Divides the big-endian number in place by `divisor` and returns the remainder.
fn div_rem_in_place(number: &mut [u8], divisor: u8) -> u8 {
    let mut rem: u16 = 0;
    for byte in number.iter_mut() {
        let acc = (rem << 8) | u16::from(*byte);
        // acc < divisor * 256, so the quotient fits in a byte.
        *byte = (acc / u16::from(divisor)) as u8;
        rem = acc % u16::from(divisor);
    }
    rem as u8
}

/// Computes `number = number * mul + add` in place and returns the carry out of the top byte.
fn mul_add_in_place(number: &mut [u8], mul: u8, add: u8) -> u16 {
    let mut carry = u16::from(add);
    for byte in number.iter_mut().rev() {
        let acc = u16::from(*byte) * u16::from(mul) + carry;
        *byte = (acc & 0xff) as u8;
        carry = acc >> 8;
    }
    carry
}

fn digit_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'z' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        assert_eq!(encode(&[], 3), "000");
        assert_eq!(encode(&[0], 1), "0");
        assert_eq!(encode(&[35], 2), "0z");
        assert_eq!(encode(&[36], 2), "10");
        assert_eq!(encode(&[0x01, 0x00], 0), "74");
        assert_eq!(decode("74", 2), Some(vec![0x01, 0x00]));
        assert_eq!(decode("", 2), Some(vec![0, 0]));
    }

    #[test]
    fn widths_hold_full_ranges() {
        assert_eq!(encode(&[0xff; 16], 25).len(), 25);
        assert_eq!(encode(&[0xff; 32], 50).len(), 50);
    }

    #[test]
    fn never_truncates() {
        assert_eq!(encode(&[0xff, 0xff], 1), "1ekf");
    }

    #[test]
    fn rejects_bad_chars_and_overflow() {
        assert_eq!(decode("A", 1), None);
        assert_eq!(decode("-", 1), None);
        assert_eq!(decode("73", 1), Some(vec![255])); // 7*36+3 = 255 fits
        assert_eq!(decode("74", 1), None); // 256 does not
        assert_eq!(decode("zzzzzzzzzzzzzzzzzzzzzzzzz", 16), None);
    }

    proptest! {
        #[test]
        fn round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let width = bytes.len() * 2;
            let text = encode(&bytes, width);
            prop_assert!(text.len() >= width);
            prop_assert_eq!(decode(&text, bytes.len()), Some(bytes));
        }

        #[test]
        fn decode_never_panics(s in ".{0,80}", len in 0usize..40) {
            if let Some(out) = decode(&s, len) {
                prop_assert_eq!(out.len(), len);
            }
        }
    }
}
