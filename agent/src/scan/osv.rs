//! Owns the node's vulnerability database: advisories imported from OSV JSON files (one
//! advisory, or an array of them, per file; a directory is read recursively), kept as an index
//! by ecosystem and package in `<data-root>/scan/db.json`, and matched against installed
//! packages. An import that meets a file it cannot read refuses as a whole, naming the file,
//! and leaves the database as it was.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::packages::{Distro, Package};
use super::{Finding, Severity};

/// The largest OSV file read.
const MAX_FILE: u64 = 64 << 20;

/// One version event of an affected range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Introduced(String),
    Fixed(String),
    LastAffected(String),
}

/// One advisory's effect on one package of one ecosystem.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Advisory {
    pub id: String,
    pub aliases: Vec<String>,
    pub summary: String,
    pub severity: Severity,
    pub score: Option<f64>,
    /// `12` for `Debian:12`; `None` when the advisory is for every release.
    pub release: Option<String>,
    pub ranges: Vec<Vec<Event>>,
    pub versions: Vec<String>,
}

/// The imported advisories, by `ecosystem/package`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Database {
    pub entries: BTreeMap<String, Vec<Advisory>>,
}

// The parts of the OSV schema read here.
#[derive(Deserialize)]
struct OsvFile(#[serde(deserialize_with = "one_or_many")] Vec<Osv>);

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Osv>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Many(Vec<Osv>),
        One(Box<Osv>),
    }
    Ok(match Either::deserialize(d)? {
        Either::Many(v) => v,
        Either::One(o) => vec![*o],
    })
}

#[derive(Deserialize)]
struct Osv {
    id: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    summary: String,
    #[serde(default)]
    details: String,
    #[serde(default)]
    severity: Vec<OsvSeverity>,
    #[serde(default)]
    affected: Vec<OsvAffected>,
    #[serde(default)]
    database_specific: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct OsvSeverity {
    #[serde(rename = "type")]
    kind: String,
    score: String,
}

#[derive(Deserialize)]
struct OsvAffected {
    package: OsvPackage,
    #[serde(default)]
    ranges: Vec<OsvRange>,
    #[serde(default)]
    versions: Vec<String>,
    #[serde(default)]
    severity: Vec<OsvSeverity>,
    #[serde(default)]
    database_specific: Option<serde_json::Value>,
    #[serde(default)]
    ecosystem_specific: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct OsvPackage {
    ecosystem: String,
    name: String,
}

#[derive(Deserialize)]
struct OsvRange {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    events: Vec<BTreeMap<String, String>>,
}

/// The severity an advisory states: a CVSS v3 vector scored, else a word its database uses.
fn severity_of(
    lists: &[&[OsvSeverity]],
    specific: &[Option<&serde_json::Value>],
) -> (Severity, Option<f64>) {
    for list in lists {
        for s in list.iter() {
            if s.kind.starts_with("CVSS_V3") {
                if let Ok(base) = s.score.parse::<cvss::v3::Vector>() {
                    let score = base.score().value();
                    return (Severity::from_score(score), Some(score));
                }
            }
        }
    }
    for v in specific.iter().flatten() {
        for key in ["severity", "urgency"] {
            if let Some(word) = v.get(key).and_then(|s| s.as_str()).and_then(Severity::parse) {
                return (word, None);
            }
        }
    }
    (Severity::Unknown, None)
}

impl Database {
    /// The database saved at `path`; empty if none was imported.
    pub fn load(path: &Path) -> Result<Database, String> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                format!("the vulnerability database {} is damaged: {e}", path.display())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Database::default()),
            Err(e) => Err(format!("reading {}: {e}", path.display())),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        let bytes = serde_json::to_vec(self).expect("the database serializes");
        shoal_pki::files::write_atomic(path, &bytes, 0o644)
            .map_err(|e| format!("writing {}: {e}", path.display()))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many advisories it holds (an advisory of several packages counts once).
    pub fn advisories(&self) -> usize {
        let mut ids: Vec<&str> = self.entries.values().flatten().map(|a| a.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }

    /// Adds the advisories of an OSV file or directory (replacing ones with the same ID);
    /// how many were read. Nothing changes if any file cannot be read.
    pub fn import(&mut self, path: &Path) -> Result<usize, String> {
        let mut files = Vec::new();
        collect(path, &mut files)?;
        if files.is_empty() {
            return Err(format!("{} holds no .json files", path.display()));
        }
        // Everything is read before anything changes; a later advisory with an ID wins.
        let mut read: BTreeMap<String, Osv> = BTreeMap::new();
        let mut count = 0;
        for f in &files {
            let bytes = read_limited(f)?;
            let parsed: OsvFile = serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: not OSV JSON: {e}", f.display()))?;
            for osv in parsed.0 {
                read.insert(osv.id.clone(), osv);
                count += 1;
            }
        }
        // One pass drops the versions being replaced (a database of many thousand advisories
        // must not be walked once per advisory imported).
        for list in self.entries.values_mut() {
            list.retain(|a| !read.contains_key(&a.id));
        }
        self.entries.retain(|_, list| !list.is_empty());
        for osv in read.into_values() {
            self.add(osv);
        }
        Ok(count)
    }

    fn add(&mut self, osv: Osv) {
        let summary = if osv.summary.is_empty() {
            osv.details.lines().next().unwrap_or_default().to_string()
        } else {
            osv.summary.clone()
        };
        for a in &osv.affected {
            let (base, release) = match a.package.ecosystem.split_once(':') {
                Some((b, r)) => (b.to_string(), Some(r.to_string())),
                None => (a.package.ecosystem.clone(), None),
            };
            if base != "Debian" && base != "Alpine" {
                continue;
            }
            let (severity, score) = severity_of(
                &[&a.severity, &osv.severity],
                &[
                    a.database_specific.as_ref(),
                    a.ecosystem_specific.as_ref(),
                    osv.database_specific.as_ref(),
                ],
            );
            let ranges = a
                .ranges
                .iter()
                .filter(|r| r.kind == "ECOSYSTEM")
                .map(|r| {
                    r.events
                        .iter()
                        .flat_map(|e| e.iter())
                        .filter_map(|(k, v)| match k.as_str() {
                            "introduced" => Some(Event::Introduced(v.clone())),
                            "fixed" => Some(Event::Fixed(v.clone())),
                            "last_affected" => Some(Event::LastAffected(v.clone())),
                            _ => None,
                        })
                        .collect()
                })
                .collect();
            self.entries.entry(format!("{base}/{}", a.package.name)).or_default().push(Advisory {
                id: osv.id.clone(),
                aliases: osv.aliases.clone(),
                summary: summary.clone(),
                severity,
                score,
                release,
                ranges,
                versions: a.versions.clone(),
            });
        }
    }

    /// The advisories that affect `packages`.
    pub fn matches(&self, packages: &[Package]) -> Vec<Finding> {
        let mut out = Vec::new();
        for p in packages {
            let key = format!("{}/{}", p.distro.ecosystem(), p.source);
            for a in self.entries.get(&key).into_iter().flatten() {
                if let (Some(want), Some(have)) = (&a.release, &p.release) {
                    if want != have {
                        continue;
                    }
                }
                if let Some(fixed) = affects(a, p.distro, &p.version) {
                    out.push(Finding {
                        id: a.id.clone(),
                        aliases: a.aliases.clone(),
                        package: p.source.clone(),
                        installed: p.version.clone(),
                        fixed,
                        severity: a.severity,
                        score: a.score,
                        summary: a.summary.clone(),
                    });
                }
            }
        }
        out.dedup_by(|a, b| a.id == b.id && a.package == b.package && a.installed == b.installed);
        out
    }
}

/// Compares two versions of `distro`; `None` if either does not parse.
pub fn compare(distro: Distro, a: &str, b: &str) -> Option<Ordering> {
    match distro {
        Distro::Debian => {
            let a: debversion::Version = a.parse().ok()?;
            let b: debversion::Version = b.parse().ok()?;
            Some(a.cmp(&b))
        }
        Distro::Alpine => Some(super::apk::compare(a, b)),
    }
}

/// Whether advisory `a` affects `version`: `Some(first fixing version)` if so.
fn affects(a: &Advisory, distro: Distro, version: &str) -> Option<Option<String>> {
    if a.versions.iter().any(|v| v == version) {
        return Some(first_fix(a, distro, version));
    }
    let ge = |x: &str| x == "0" || compare(distro, version, x).is_some_and(|o| o != Ordering::Less);
    for events in &a.ranges {
        let mut hit = false;
        for e in events {
            match e {
                Event::Introduced(x) if ge(x) => hit = true,
                Event::Fixed(x) if ge(x) => hit = false,
                Event::LastAffected(x)
                    if compare(distro, version, x) == Some(Ordering::Greater) =>
                {
                    hit = false
                }
                _ => {}
            }
        }
        if hit {
            return Some(first_fix(a, distro, version));
        }
    }
    None
}

/// The lowest fixed version above `version`.
fn first_fix(a: &Advisory, distro: Distro, version: &str) -> Option<String> {
    a.ranges
        .iter()
        .flatten()
        .filter_map(|e| match e {
            Event::Fixed(f) if compare(distro, f, version) == Some(Ordering::Greater) => Some(f),
            _ => None,
        })
        .min_by(|x, y| compare(distro, x, y).unwrap_or(Ordering::Equal))
        .cloned()
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "json") {
            out.push(p);
        }
    }
    Ok(())
}

fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    f.take(MAX_FILE + 1).read_to_end(&mut bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(format!("{} is larger than {MAX_FILE} bytes", path.display()));
    }
    Ok(bytes)
}
