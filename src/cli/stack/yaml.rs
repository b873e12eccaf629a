//! Owns reading YAML into a tree that remembers the line of every value, and the typed
//! accessors the compose reader uses, whose errors name the line and the key. Parsing is
//! serde-saphyr's (panic-free, with budgets); nothing here knows Compose.

use std::fmt;
use std::time::Duration;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A compose file that cannot be used: where, which key, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeError {
    pub line: u64,
    /// Dotted path of the key, like `services.web.deploy.replicas` (empty: the whole file).
    pub key: String,
    pub message: String,
}

impl fmt::Display for ComposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.key.is_empty()) {
            (0, true) => write!(f, "{}", self.message),
            (0, false) => write!(f, "{}: {}", self.key, self.message),
            (l, true) => write!(f, "line {l}: {}", self.message),
            (l, false) => write!(f, "line {l}: {}: {}", self.key, self.message),
        }
    }
}

impl std::error::Error for ComposeError {}

/// One YAML value and the line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub line: u64,
    /// The scalar as written (plain scalars only), so `0440` or `3.10` keep their spelling.
    raw: Option<String>,
}

/// The shapes a YAML value takes.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in file order: key, the key's line, value.
    Map(Vec<(String, u64, Node)>),
}

/// What serde-saphyr hands back: values with their source spans.
#[derive(Debug)]
enum Raw {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<String>, Spanned<Raw>)>),
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Raw, E> {
        Ok(Raw::Int(v))
    }
    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Raw, E> {
        i128::try_from(v).map(Raw::Int).map_err(|_| E::custom("integer too large"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element()? {
            out.push(item);
        }
        Ok(Raw::Seq(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut out = Vec::new();
        while let Some(entry) = map.next_entry()? {
            out.push(entry);
        }
        Ok(Raw::Map(out))
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Raw, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

/// What [`Node::map_strings`] calls with a string, its key path and line: `Some` replaces it.
pub type StringEdit<'a> = dyn FnMut(&str, &str, u64) -> Result<Option<String>, ComposeError> + 'a;

impl Node {
    /// Calls `f` on every string value of the tree (not on keys) with its dotted key path and
    /// line; a `Some` it returns replaces the string.
    pub fn map_strings(&mut self, path: &str, f: &mut StringEdit<'_>) -> Result<(), ComposeError> {
        match &mut self.value {
            Value::Str(s) => {
                if let Some(new) = f(s, path, self.line)? {
                    *s = new;
                }
            }
            Value::Seq(items) => {
                for (i, n) in items.iter_mut().enumerate() {
                    n.map_strings(&format!("{path}[{i}]"), f)?;
                }
            }
            Value::Map(entries) => {
                for (k, _, n) in entries.iter_mut() {
                    let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    n.map_strings(&p, f)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Lays `over` on this node as Docker Compose merges files: mappings key by key, a later
    /// scalar or list in place of the earlier one, except lists whose items `identity` names
    /// (by the key they are under and the item): those keep earlier items, with a later item
    /// of the same identity in its place and new ones added.
    pub fn merge(&mut self, over: Node, identity: &dyn Fn(&str, &Node) -> Option<String>) {
        self.merge_under("", over, identity);
    }

    fn merge_under(
        &mut self,
        key: &str,
        over: Node,
        identity: &dyn Fn(&str, &Node) -> Option<String>,
    ) {
        match (&mut self.value, over.value) {
            (Value::Map(mine), Value::Map(theirs)) => {
                for (k, line, node) in theirs {
                    match mine.iter_mut().find(|(mk, _, _)| *mk == k) {
                        Some((_, _, existing)) => existing.merge_under(&k, node, identity),
                        None => mine.push((k, line, node)),
                    }
                }
            }
            (Value::Seq(mine), Value::Seq(theirs))
                if theirs.iter().chain(mine.iter()).all(|n| identity(key, n).is_some()) =>
            {
                for item in theirs {
                    let id = identity(key, &item);
                    match mine.iter_mut().find(|m| identity(key, m) == id) {
                        Some(existing) => *existing = item,
                        None => mine.push(item),
                    }
                }
            }
            (_, value) => {
                self.value = value;
                self.line = over.line;
                self.raw = over.raw;
            }
        }
    }
}

/// Parses one YAML document. A syntax error names its line and the key it is under.
pub fn parse(text: &str) -> Result<Node, ComposeError> {
    match serde_saphyr::from_str::<Spanned<Raw>>(text) {
        Ok(raw) => Ok(build(text, raw)),
        Err(e) => {
            let line = e.location().map(|l| l.line()).unwrap_or(0);
            let message = e.without_snippet().to_string();
            // "… at line 3, column 5": the line is said once, in front.
            let message = match message.rfind(" at line ") {
                Some(i) if line != 0 => message[..i].to_string(),
                _ => message,
            };
            let message = plain_words(&message);
            Err(ComposeError { line, key: key_above(text, line), message })
        }
    }
}

/// The parser's message in the file's terms: what is wrong with the file, never which
/// option of the YAML library would let it pass.
fn plain_words(message: &str) -> String {
    let lower = message.to_ascii_lowercase();
    if let Some(rest) = message.strip_prefix("duplicate mapping key: ") {
        let key = rest.split(',').next().unwrap_or(rest).trim();
        return format!("the key {key} appears twice in the same mapping");
    }
    if lower.contains("from_multiple") || lower.contains("multiple documents") {
        return "the file holds more than one YAML document (---); a compose file is one".into();
    }
    if lower.contains("budget") || (lower.contains("alias") && lower.contains("limit")) {
        return "anchors and aliases expand to more than a compose file may hold".into();
    }
    // Any other hint about parser options is cut off; the problem itself stays.
    let cut = [", set ", "; set ", ", use ", "; use "]
        .iter()
        .filter_map(|m| message.find(m))
        .min()
        .unwrap_or(message.len());
    message[..cut].to_string()
}

fn build(text: &str, raw: Spanned<Raw>) -> Node {
    let line = raw.referenced.line();
    let span = raw.defined.span();
    let source = span
        .byte_offset()
        .zip(span.byte_len())
        .and_then(|(o, l)| text.get(o as usize..(o + l) as usize))
        .map(str::to_string);
    let (value, raw) = match raw.value {
        Raw::Null => (Value::Null, source),
        Raw::Bool(b) => (Value::Bool(b), source),
        Raw::Int(i) => (Value::Int(i), source),
        Raw::Float(f) => (Value::Float(f), source),
        Raw::Str(s) => (Value::Str(s), None),
        Raw::Seq(items) => (Value::Seq(items.into_iter().map(|i| build(text, i)).collect()), None),
        Raw::Map(entries) => (
            Value::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.value, k.referenced.line(), build(text, v)))
                    .collect(),
            ),
            None,
        ),
    };
    Node { value, line, raw }
}

/// The dotted key path a line sits under, judged by indentation (for syntax errors, where
/// there is no tree yet).
fn key_above(text: &str, line: u64) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut path = Vec::new();
    let mut indent = usize::MAX;
    let start = (line as usize).min(lines.len());
    for l in lines[..start].iter().rev() {
        let body = l.trim_start();
        let depth = l.len() - body.len();
        if body.is_empty() || body.starts_with('#') || depth >= indent {
            continue;
        }
        let body = body.trim_start_matches("- ");
        if let Some((key, _)) = body.split_once(':') {
            if !key.is_empty() && !key.contains(['{', '[', '"', '\'', ' ']) {
                path.push(key.to_string());
                indent = depth;
            }
        }
        if depth == 0 {
            break;
        }
    }
    path.reverse();
    path.join(".")
}

/// A node and the key path that reached it.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    pub node: &'a Node,
    pub path: &'a str,
}

/// One entry of a mapping: its key, the key's line and the value.
#[derive(Debug)]
pub struct Entry<'a> {
    pub key: &'a str,
    pub line: u64,
    pub path: String,
    pub node: &'a Node,
}

impl Entry<'_> {
    /// The value, with this entry's path.
    pub fn at(&self) -> At<'_> {
        At { node: self.node, path: &self.path }
    }
}

impl<'a> At<'a> {
    /// An error about this value.
    pub fn error(&self, message: impl Into<String>) -> ComposeError {
        ComposeError { line: self.node.line, key: self.path.to_string(), message: message.into() }
    }

    fn kind(&self) -> &'static str {
        match self.node.value {
            Value::Null => "nothing",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    fn expected(&self, what: &str) -> ComposeError {
        self.error(format!("expected {what}, found {}", self.kind()))
    }

    /// The entries of a mapping (`null` counts as an empty one).
    pub fn entries(&self) -> Result<Vec<Entry<'a>>, ComposeError> {
        match &self.node.value {
            Value::Null => Ok(Vec::new()),
            Value::Map(m) => Ok(m
                .iter()
                .map(|(k, line, node)| Entry {
                    key: k,
                    line: *line,
                    path: if self.path.is_empty() {
                        k.clone()
                    } else {
                        format!("{}.{k}", self.path)
                    },
                    node,
                })
                .collect()),
            _ => Err(self.expected("a mapping")),
        }
    }

    /// The items of a list, each with its `path[i]`.
    pub fn items(&self) -> Result<Vec<(String, &'a Node)>, ComposeError> {
        match &self.node.value {
            Value::Null => Ok(Vec::new()),
            Value::Seq(s) => {
                Ok(s.iter().enumerate().map(|(i, n)| (format!("{}[{i}]", self.path), n)).collect())
            }
            _ => Err(self.expected("a list")),
        }
    }

    /// A scalar as text: strings as they are, numbers and booleans as written.
    pub fn text(&self) -> Result<String, ComposeError> {
        let n = self.node;
        match &n.value {
            Value::Str(s) => Ok(s.clone()),
            Value::Bool(b) => Ok(n.raw.clone().unwrap_or_else(|| b.to_string())),
            Value::Int(i) => Ok(n.raw.clone().unwrap_or_else(|| i.to_string())),
            Value::Float(f) => Ok(n.raw.clone().unwrap_or_else(|| f.to_string())),
            _ => Err(self.expected("a string")),
        }
    }

    /// A scalar as text; `null` is `None`.
    pub fn opt_text(&self) -> Result<Option<String>, ComposeError> {
        match self.node.value {
            Value::Null => Ok(None),
            _ => self.text().map(Some),
        }
    }

    /// `true`/`false` (also as strings).
    pub fn bool(&self) -> Result<bool, ComposeError> {
        match &self.node.value {
            Value::Bool(b) => Ok(*b),
            Value::Str(s) if s == "true" => Ok(true),
            Value::Str(s) if s == "false" => Ok(false),
            _ => Err(self.expected("true or false")),
        }
    }

    /// A whole number that is not negative (also as a string of digits).
    pub fn u64(&self) -> Result<u64, ComposeError> {
        let bad = || self.expected("a whole number, 0 or more");
        match &self.node.value {
            Value::Int(i) => u64::try_from(*i).map_err(|_| bad()),
            Value::Str(s) => s.trim().parse().map_err(|_| bad()),
            _ => Err(bad()),
        }
    }

    /// A number (also as a string).
    pub fn f64(&self) -> Result<f64, ComposeError> {
        let bad = || self.expected("a number");
        match &self.node.value {
            Value::Int(i) => Ok(*i as f64),
            Value::Float(f) => Ok(*f),
            Value::Str(s) => s.trim().parse().map_err(|_| bad()),
            _ => Err(bad()),
        }
    }

    /// A list of scalars.
    pub fn strings(&self) -> Result<Vec<String>, ComposeError> {
        self.items()?.into_iter().map(|(path, node)| At { node, path: &path }.text()).collect()
    }

    /// A string split like a shell would, or a list taken as is.
    pub fn command(&self) -> Result<Vec<String>, ComposeError> {
        match &self.node.value {
            Value::Seq(_) => self.strings(),
            Value::Null => Ok(Vec::new()),
            _ => split_words(&self.text()?).map_err(|m| self.error(m)),
        }
    }

    /// `KEY: value` mapping or `KEY=value` list; a key without a value gives `None`.
    pub fn pairs(&self) -> Result<Vec<(String, Option<String>)>, ComposeError> {
        match &self.node.value {
            Value::Seq(_) => Ok(self
                .strings()?
                .into_iter()
                .map(|s| match s.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (s, None),
                })
                .collect()),
            _ => self
                .entries()?
                .iter()
                .map(|e| Ok((e.key.to_string(), e.at().opt_text()?)))
                .collect(),
        }
    }

    /// A Go-style duration: `10s`, `1m30s`, `1.5h`, `500ms`.
    pub fn duration(&self) -> Result<Duration, ComposeError> {
        parse_go_duration(&self.text()?).map_err(|m| self.error(m))
    }

    /// A file mode: YAML 1.1 integers as Docker reads them (`0440` is octal, `0o440` too).
    pub fn mode(&self) -> Result<u32, ComposeError> {
        let text = self.text()?;
        let t = text.trim();
        let parsed = if let Some(oct) = t.strip_prefix("0o") {
            u32::from_str_radix(oct, 8)
        } else if t.len() > 1 && t.starts_with('0') {
            u32::from_str_radix(&t[1..], 8)
        } else {
            t.parse()
        };
        match parsed {
            Ok(m) if shoal_proto::spec::secret::check_mode(m).is_ok() => Ok(m),
            _ => Err(self.error(format!("invalid file mode {t:?}: use octal like 0440"))),
        }
    }
}

/// Splits a command line into words as a POSIX shell would: whitespace separates, quotes
/// group, `\` escapes (Compose's rule for a command given as one string).
pub fn split_words(s: &str) -> Result<Vec<String>, String> {
    shell_words::split(s).map_err(|e| format!("cannot split the command into words: {e}"))
}

/// Parses durations the way Go's `time.ParseDuration` does (Compose's format).
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}: use e.g. 10s, 1m30s, 500ms");
    let mut rest = s.trim();
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let n: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let secs = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * secs;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_keep_their_spelling_and_lines() {
        let doc = parse("version: 3.10\nmode: 0440\nname: web\nlist:\n  - a\n  - 2\n").unwrap();
        let root = At { node: &doc, path: "" };
        let e = root.entries().unwrap();
        assert_eq!(e[0].at().text().unwrap(), "3.10");
        assert_eq!(e[1].at().mode().unwrap(), 0o440);
        assert_eq!((e[2].key, e[2].line), ("name", 3));
        assert_eq!(e[3].at().strings().unwrap(), vec!["a", "2"]);
        assert_eq!(e[3].node.line, 5);
        let err = e[2].at().u64().unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 3: name: expected a whole number, 0 or more, found a string"
        );
    }

    #[test]
    fn syntax_errors_name_the_line_and_the_key_above() {
        let err = parse("services:\n  web:\n    image: [busybox\n").unwrap_err();
        assert_eq!(err.key, "services.web.image", "{err}");
        assert!(err.line >= 3, "{err}");
        let err = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(err.line, 2, "{err}");
        assert!(err.message.contains("appears twice"), "{err}");
    }

    #[test]
    fn words_and_durations_parse_like_docker() {
        assert_eq!(
            split_words("sh -c 'echo hi; sleep 1'").unwrap(),
            ["sh", "-c", "echo hi; sleep 1"]
        );
        assert_eq!(split_words(r#"a "b c" d\ e ''"#).unwrap(), ["a", "b c", "d e", ""]);
        assert!(split_words("a 'b").is_err());
        assert_eq!(parse_go_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_go_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_go_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "10", "5 minutes", "1d", "-1s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }
}
