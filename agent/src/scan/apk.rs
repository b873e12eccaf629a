//! Alpine's package database and version order. The order follows apk's: dotted numbers
//! compared as numbers, an optional letter, suffixes ranked `_alpha` < `_beta` < `_pre` <
//! `_rc` < (none) < `_cvs` < `_svn` < `_git` < `_hg` < `_p`, then the `-rN` revision.

use std::cmp::Ordering;

use super::packages::{Distro, Package};

/// The packages of `/lib/apk/db/installed` (`P:` name, `V:` version, `o:` origin).
pub fn installed(text: &str, release: Option<String>) -> Vec<Package> {
    let mut out = Vec::new();
    for record in text.split("\n\n") {
        let field = |key: &str| {
            record.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_string())
        };
        let (Some(name), Some(version)) = (field("P:"), field("V:")) else { continue };
        let source = field("o:").unwrap_or_else(|| name.clone());
        out.push(Package {
            name,
            source,
            version,
            distro: Distro::Alpine,
            release: release.clone(),
        });
    }
    out
}

#[derive(Debug, PartialEq, Eq)]
enum Token {
    Num(u64),
    Letter(char),
    Suffix(u8, u64),
}

const RELEASE: u8 = 4;

fn suffix_rank(s: &str) -> Option<u8> {
    Some(match s {
        "alpha" => 0,
        "beta" => 1,
        "pre" => 2,
        "rc" => 3,
        "cvs" => 5,
        "svn" => 6,
        "git" => 7,
        "hg" => 8,
        "p" => 9,
        _ => return None,
    })
}

/// The tokens of a version and its revision; `None` if it is not an apk version.
fn parse(v: &str) -> Option<(Vec<Token>, u64)> {
    let (main, rev) = match v.rsplit_once("-r") {
        Some((m, r)) if !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()) => {
            (m, r.parse().ok()?)
        }
        _ => (v, 0),
    };
    let mut tokens = Vec::new();
    let mut rest = main;
    let number = |s: &str| -> (u64, usize) {
        let n = s.bytes().take_while(u8::is_ascii_digit).count();
        (s[..n].parse().unwrap_or(u64::MAX), n)
    };
    let (n, used) = number(rest);
    if used == 0 {
        return None;
    }
    tokens.push(Token::Num(n));
    rest = &rest[used..];
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let (n, used) = number(r);
            if used == 0 {
                return None;
            }
            tokens.push(Token::Num(n));
            rest = &r[used..];
        } else if let Some(r) = rest.strip_prefix('_') {
            let word: String = r.chars().take_while(char::is_ascii_lowercase).collect();
            let rank = suffix_rank(&word)?;
            let (n, used) = number(&r[word.len()..]);
            tokens.push(Token::Suffix(rank, if used == 0 { 0 } else { n }));
            rest = &r[word.len() + used..];
        } else {
            let c = rest.chars().next()?;
            if !c.is_ascii_lowercase() {
                return None;
            }
            tokens.push(Token::Letter(c));
            rest = &rest[1..];
        }
    }
    Some((tokens, rev))
}

/// Compares two apk versions; versions that do not parse compare as text.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (Some((ta, ra)), Some((tb, rb))) = (parse(a), parse(b)) else { return a.cmp(b) };
    for i in 0..ta.len().max(tb.len()) {
        let ord = match (ta.get(i), tb.get(i)) {
            (Some(Token::Num(x)), Some(Token::Num(y))) => x.cmp(y),
            (Some(Token::Letter(x)), Some(Token::Letter(y))) => x.cmp(y),
            (Some(Token::Suffix(rx, nx)), Some(Token::Suffix(ry, ny))) => {
                rx.cmp(ry).then(nx.cmp(ny))
            }
            // A release has more to it than a pre-release suffix, less than anything else.
            (Some(Token::Suffix(r, _)), None) => r.cmp(&RELEASE),
            (None, Some(Token::Suffix(r, _))) => RELEASE.cmp(r),
            (Some(_), None) => Ordering::Greater,
            (None, Some(_)) => Ordering::Less,
            // More version parts outrank any suffix: 1.0.1 > 1.0_p1.
            (Some(Token::Suffix(..)), Some(_)) => Ordering::Less,
            (Some(_), Some(Token::Suffix(..))) => Ordering::Greater,
            (Some(Token::Num(_)), Some(Token::Letter(_))) => Ordering::Greater,
            (Some(Token::Letter(_)), Some(Token::Num(_))) => Ordering::Less,
            (None, None) => Ordering::Equal,
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    ra.cmp(&rb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_as_apk_orders_them() {
        let ordered = [
            "1.0_alpha1",
            "1.0_beta",
            "1.0_rc2",
            "1.0",
            "1.0-r1",
            "1.0-r10",
            "1.0_p1",
            "1.0.1",
            "1.2",
            "1.10",
            "3.1.4-r0",
            "3.1.4-r5",
        ];
        for w in ordered.windows(2) {
            assert_eq!(compare(w[0], w[1]), Ordering::Less, "{} < {}", w[0], w[1]);
            assert_eq!(compare(w[1], w[0]), Ordering::Greater, "{} > {}", w[1], w[0]);
        }
        assert_eq!(compare("1.2.3-r0", "1.2.3"), Ordering::Equal);
    }

    #[test]
    fn the_database_gives_name_origin_and_version() {
        let db = "C:Q1abc=\nP:libcrypto3\nV:3.1.4-r0\no:openssl\n\nP:musl\nV:1.2.4-r2\n\n";
        let p = installed(db, Some("v3.18".into()));
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].name.as_str(), p[0].source.as_str()), ("libcrypto3", "openssl"));
        assert_eq!((p[1].source.as_str(), p[1].version.as_str()), ("musl", "1.2.4-r2"));
    }
}
