//! The registry's challenge (`WWW-Authenticate`) and the answers to it: Basic with the login,
//! or a Bearer token from the realm the registry names (Docker's token protocol).

use std::collections::BTreeMap;

/// What a 401 asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

/// Parses a `WWW-Authenticate` value: `Basic realm="x"` or
/// `Bearer realm="https://auth/token",service="reg",scope="repository:app:pull"`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let params = parse_params(rest);
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        }),
        _ => None,
    }
}

/// `key="value",key=value` pairs; quoted values may hold commas and escaped quotes.
fn parse_params(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if key.is_empty() || chars.next().is_none() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
        }
        out.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
}

/// The token from a token endpoint's answer (`token`, or OAuth's `access_token`) and how
/// long it lasts in seconds (60 when it does not say).
pub fn token_of(body: &[u8]) -> Option<(String, u64)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let token = v.get("token").or_else(|| v.get("access_token"))?.as_str()?.to_string();
    let expires = v.get("expires_in").and_then(|e| e.as_u64()).unwrap_or(60).max(10);
    (!token.is_empty()).then_some((token, expires))
}

/// The registry's own words from an error body (`{"errors":[{"code","message"}]}`), else
/// the start of the body.
pub fn registry_words(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(body) {
        let words: Vec<String> = e
            .errors
            .iter()
            .map(|i| match (i.code.is_empty(), i.message.is_empty()) {
                (false, false) => format!("{}: {}", i.code, i.message),
                (false, true) => i.code.clone(),
                _ => i.message.clone(),
            })
            .collect();
        if !words.is_empty() {
            return words.join("; ");
        }
    }
    let text = String::from_utf8_lossy(body);
    let text: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
    if text.trim().is_empty() {
        "(no details)".into()
    } else {
        text.trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(parse_challenge(r#"Basic realm="Registry Realm""#), Some(Challenge::Basic));
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(parse_challenge("Bearer service=x"), None, "a bearer challenge needs a realm");
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge(""), None);
    }

    #[test]
    fn tokens_and_words() {
        assert_eq!(token_of(br#"{"token":"t","expires_in":300}"#), Some(("t".into(), 300)));
        assert_eq!(token_of(br#"{"access_token":"a"}"#), Some(("a".into(), 60)));
        assert_eq!(token_of(br#"{"token":""}"#), None);
        assert_eq!(token_of(b"not json"), None);
        let body =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(registry_words(body), "MANIFEST_UNKNOWN: manifest unknown");
        assert_eq!(registry_words(b""), "(no details)");
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a registry puts in its headers and error bodies, reading them never
        /// panics, and a token comes only from a JSON object that has one.
        #[test]
        fn hostile_headers_and_bodies_are_read_safely(header in ".{0,300}", body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_challenge(&header);
            let _ = registry_words(&body);
            if let Some((token, secs)) = token_of(&body) {
                prop_assert!(!token.is_empty() && secs >= 10);
            }
        }

        /// Challenges with quoted commas and escapes keep their parameters whole.
        #[test]
        fn bearer_parameters_survive_quoting(realm in "https://[a-z]{1,10}/[a-z,]{0,10}", scope in "[a-z:/,]{0,30}") {
            let h = format!("Bearer realm=\"{realm}\",scope=\"{scope}\"");
            let c = parse_challenge(&h);
            prop_assert_eq!(c, Some(Challenge::Bearer { realm, service: None, scope: Some(scope) }));
        }
    }
}
