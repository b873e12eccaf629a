//! Variable substitution in compose files, with Docker Compose's rules: `$VAR`, `${VAR}`,
//! `${VAR:-default}` (unset or empty), `${VAR-default}` (unset), `${VAR:?error}`,
//! `${VAR?error}`, `${VAR:+alt}` (set and not empty), `${VAR+alt}` (set), and `$$` for a literal
//! `$`. Defaults and alternatives may hold substitutions themselves. Values come from the
//! environment, then from `.env` beside the file (or `--env-file`).

use std::collections::BTreeMap;

/// Substitutes every variable in `s`. Returns the text and the names of variables that were
/// used without being set (Compose warns about them and uses an empty string); a required
/// variable that is missing, or a malformed `${…}`, is an error that says which.
pub fn interpolate(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, Vec<String>), String> {
    let mut unset = Vec::new();
    let out = expand(s, lookup, &mut unset, 0)?;
    Ok((out, unset))
}

/// How deep defaults may nest `${…}` inside `${…}`.
const MAX_DEPTH: usize = 16;

fn name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn expand(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut Vec<String>,
    depth: usize,
) -> Result<String, String> {
    if depth > MAX_DEPTH {
        return Err(format!("{s:?} nests substitutions more than {MAX_DEPTH} deep"));
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let mut chars = after.chars();
        match chars.next() {
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('{') => {
                let body_len = closing_brace(&after[1..]).ok_or_else(|| {
                    format!("invalid interpolation format in {s:?}: a \"${{\" is never closed")
                })?;
                let body = &after[1..1 + body_len];
                out.push_str(&braced(body, s, lookup, unset, depth)?);
                rest = &after[1 + body_len + 1..];
            }
            Some(c) if name_start(c) => {
                let len = after.find(|c: char| !name_char(c)).unwrap_or(after.len());
                let name = &after[..len];
                match lookup(name) {
                    Some(v) => out.push_str(&v),
                    None => unset.push(name.to_string()),
                }
                rest = &after[len..];
            }
            _ => {
                // A `$` that starts nothing stays as it is.
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The length of a `${…}` body up to its matching `}`, counting nested `${`.
fn closing_brace(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 2;
                continue;
            }
            b'$' if bytes.get(i + 1) == Some(&b'$') => {
                i += 2;
                continue;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn braced(
    body: &str,
    whole: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut Vec<String>,
    depth: usize,
) -> Result<String, String> {
    let len = body.find(|c: char| !name_char(c)).unwrap_or(body.len());
    let (name, op) = body.split_at(len);
    if name.is_empty() || !name.starts_with(name_start) {
        return Err(format!(
            "invalid interpolation format in {whole:?}: \"${{{body}}}\" names no variable"
        ));
    }
    let value = lookup(name);
    let set = value.is_some();
    let full = value.as_deref().is_some_and(|v| !v.is_empty());
    let arg = |skip: usize, unset: &mut Vec<String>| expand(&op[skip..], lookup, unset, depth + 1);
    let missing = |skip: usize, unset: &mut Vec<String>| -> Result<String, String> {
        let msg = arg(skip, unset)?;
        Err(if msg.is_empty() {
            format!("required variable {name} is missing a value")
        } else {
            format!("required variable {name} is missing a value: {msg}")
        })
    };
    match op {
        "" => {
            if !set {
                unset.push(name.to_string());
            }
            Ok(value.unwrap_or_default())
        }
        _ if op.starts_with(":-") => if full { Ok(value.unwrap_or_default()) } else { arg(2, unset) },
        _ if op.starts_with('-') => if set { Ok(value.unwrap_or_default()) } else { arg(1, unset) },
        _ if op.starts_with(":?") => if full { Ok(value.unwrap_or_default()) } else { missing(2, unset) },
        _ if op.starts_with('?') => if set { Ok(value.unwrap_or_default()) } else { missing(1, unset) },
        _ if op.starts_with(":+") => if full { arg(2, unset) } else { Ok(String::new()) },
        _ if op.starts_with('+') => if set { arg(1, unset) } else { Ok(String::new()) },
        _ => Err(format!(
            "invalid interpolation format in {whole:?}: \"${{{body}}}\" (use ${{VAR}}, ${{VAR:-default}}, ${{VAR:?error}} or ${{VAR:+value}})"
        )),
    }
}

/// Reads a `.env` file: `KEY=VALUE` lines, `#` comments, blank lines, an optional `export `,
/// values optionally in single quotes (taken as they are) or double quotes (with `\n`, `\"`
/// and `\\` escapes). A line that is not `KEY=VALUE` is an error naming its number.
pub fn parse_env_file(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected KEY=VALUE, found {line:?}", i + 1));
        };
        let key = key.trim();
        if key.is_empty() || !key.starts_with(name_start) || !key.chars().all(name_char) {
            return Err(format!("line {}: {key:?} is not a variable name", i + 1));
        }
        let value = value.trim();
        let value = if let Some(v) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
            v.to_string()
        } else if let Some(v) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            let mut s = String::new();
            let mut chars = v.chars();
            while let Some(c) = chars.next() {
                match (c, c == '\\') {
                    (_, true) => match chars.next() {
                        Some('n') => s.push('\n'),
                        Some(o) => s.push(o),
                        None => s.push('\\'),
                    },
                    (c, false) => s.push(c),
                }
            }
            s
        } else {
            // An unquoted value ends at a comment that follows a space.
            value.split(" #").next().unwrap_or("").trim_end().to_string()
        };
        out.insert(key.to_string(), value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn env(s: &str) -> Result<(String, Vec<String>), String> {
        let vars: BTreeMap<&str, &str> =
            [("SET", "value"), ("EMPTY", ""), ("PORT", "8080"), ("HOST", "db.local")].into();
        interpolate(s, &|k| vars.get(k).map(|v| v.to_string()))
    }

    fn ok(s: &str) -> String {
        env(s).unwrap().0
    }

    #[test]
    fn the_forms() {
        assert_eq!(ok("$SET ${SET} x${SET}y $SET-x"), "value value xvaluey value-x");
        assert_eq!(ok("${UNSET:-d} ${EMPTY:-d} ${SET:-d}"), "d d value");
        assert_eq!(ok("${UNSET-d} ${EMPTY-d} ${SET-d}"), "d  value");
        assert_eq!(ok("${UNSET:+a} ${EMPTY:+a} ${SET:+a}"), "  a");
        assert_eq!(ok("${UNSET+a} ${EMPTY+a} ${SET+a}"), " a a");
        assert_eq!(ok("$$ $$SET $${SET} cost: 5$"), "$ $SET ${SET} cost: 5$");
        assert_eq!(ok("node.hostname == ${HOST}"), "node.hostname == db.local");
        assert_eq!(ok("${UNSET:-${PORT}}:${UNSET:-${ALSO:-80}}"), "8080:80");
        assert_eq!(ok("$$(cat /run/secrets/pw)"), "$(cat /run/secrets/pw)");
    }

    #[test]
    fn unset_variables_are_blank_and_named() {
        assert_eq!(
            env("a${UNSET}b$ALSO").unwrap(),
            ("ab".into(), vec!["UNSET".into(), "ALSO".into()])
        );
    }

    #[test]
    fn required_variables_and_bad_forms_are_errors_that_say_which() {
        let e = env("${ADMIN_PASSWORD:?set the admin password}").unwrap_err();
        assert!(e.contains("ADMIN_PASSWORD") && e.contains("set the admin password"), "{e}");
        assert!(env("${EMPTY:?}").unwrap_err().contains("EMPTY"));
        assert_eq!(ok("${EMPTY?}"), "", "? only asks that it is set");
        assert!(env("${UNSET?}").unwrap_err().contains("UNSET"));
        for bad in ["${", "${SET", "${}", "${1X}", "${SET:x}", "${SET/a/b}"] {
            assert!(env(bad).unwrap_err().contains("invalid interpolation"), "{bad}");
        }
    }

    #[test]
    fn env_files() {
        let f = parse_env_file(
            "# comment\n\nexport A=1\nB = two words # note\nC='x # y'\nD=\"l1\\nl2 \\\"q\\\"\"\nE=\n",
        )
        .unwrap();
        let want: BTreeMap<String, String> =
            [("A", "1"), ("B", "two words"), ("C", "x # y"), ("D", "l1\nl2 \"q\""), ("E", "")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert_eq!(f, want);
        assert!(parse_env_file("JUST TEXT").unwrap_err().contains("line 1"));
        assert!(parse_env_file("1A=b").unwrap_err().contains("not a variable name"));
    }

    proptest! {
        /// Text without `$` is left alone; `$$` always gives one `$`; nothing panics.
        #[test]
        fn plain_text_and_escapes(s in "[^$]{0,40}", t in ".{0,60}") {
            prop_assert_eq!(ok(&s), s.clone());
            prop_assert_eq!(ok(&format!("{s}$${s}")), format!("{s}${s}"));
            let _ = env(&t);
        }

        /// A default applies exactly when the variable is unset (`-`) or unset or empty (`:-`).
        #[test]
        fn defaults_follow_the_rules(d in "[a-z0-9 ./]{0,12}") {
            prop_assert_eq!(ok(&format!("${{UNSET:-{d}}}")), d.clone());
            prop_assert_eq!(ok(&format!("${{EMPTY:-{d}}}")), d.clone());
            prop_assert_eq!(ok(&format!("${{EMPTY-{d}}}")), "");
            prop_assert_eq!(ok(&format!("${{SET:-{d}}}")), "value");
            prop_assert_eq!(ok(&format!("${{SET:+{d}}}")), d.clone());
            prop_assert_eq!(ok(&format!("${{UNSET:+{d}}}")), "");
        }
    }
}
