//! Owns offline vulnerability scanning of images: the packages an image's layers say are
//! installed (Debian's dpkg status, Alpine's apk database), a vulnerability database imported
//! from OSV JSON files (`shoal scan db import`, kept on the node), and the findings: which
//! advisory affects which installed version, its severity and the version that fixes it.
//!
//! Versions compare as their distribution does: Debian's with the `debversion` crate (dpkg's
//! rules: epochs, `~`), Alpine's with apk's (numbers, letters, `_alpha` … `_p` suffixes,
//! `-rN` revisions), written here as no maintained crate does it. Severities come from an
//! advisory's CVSS v3 vector (scored with RustSec's `cvss` crate) or its database's own word.

mod apk;
pub mod osv;
pub mod packages;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use osv::{Advisory, Database};
pub use packages::{Distro, Package};

/// How bad a finding is, as CVSS's qualitative scale says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Unknown,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn parse(s: &str) -> Option<Severity> {
        match s.to_ascii_lowercase().as_str() {
            "unknown" | "unimportant" | "not yet assigned" => Some(Severity::Unknown),
            "low" | "negligible" => Some(Severity::Low),
            "medium" | "moderate" => Some(Severity::Medium),
            "high" | "important" => Some(Severity::High),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }

    pub fn from_score(score: f64) -> Severity {
        match score {
            s if s >= 9.0 => Severity::Critical,
            s if s >= 7.0 => Severity::High,
            s if s >= 4.0 => Severity::Medium,
            s if s > 0.0 => Severity::Low,
            _ => Severity::Unknown,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Severity::Unknown => "unknown",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        };
        f.write_str(s)
    }
}

/// One advisory that affects one installed package.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub id: String,
    pub aliases: Vec<String>,
    pub package: String,
    pub installed: String,
    /// The first version that fixes it, if the advisory names one.
    pub fixed: Option<String>,
    pub severity: Severity,
    pub score: Option<f64>,
    pub summary: String,
}

impl Finding {
    /// `CVE-2023-0001 (openssl 3.0.2-1, fixed in 3.0.11-1)`: how a refusal names it.
    pub fn short(&self) -> String {
        let name = self.aliases.iter().find(|a| a.starts_with("CVE-")).unwrap_or(&self.id);
        match &self.fixed {
            Some(f) => format!("{name} ({} {}, fixed in {f})", self.package, self.installed),
            None => format!("{name} ({} {}, no fix yet)", self.package, self.installed),
        }
    }
}

/// What a scan of one image found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `debian 12`, `alpine 3.18.4`, or empty when the image says nothing.
    pub os: String,
    pub packages: usize,
    /// Worst first.
    pub findings: Vec<Finding>,
}

impl Report {
    /// The findings at or above `level`.
    pub fn at_least(&self, level: Severity) -> Vec<&Finding> {
        self.findings.iter().filter(|f| f.severity >= level).collect()
    }
}

/// Where a node keeps its vulnerability database, under its data root.
pub fn db_path(node_root: &std::path::Path) -> std::path::PathBuf {
    node_root.join("scan").join("db.json")
}

/// Scans the installed packages of an image (its layers, topmost first) against `db`.
pub fn scan(layers: &[std::path::PathBuf], db: &Database) -> Result<Report, String> {
    let found = packages::installed(layers)?;
    let mut findings = db.matches(&found.packages);
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(b.score.partial_cmp(&a.score).unwrap_or(std::cmp::Ordering::Equal))
            .then(a.package.cmp(&b.package))
            .then(a.id.cmp(&b.id))
    });
    Ok(Report { os: found.os, packages: found.packages.len(), findings })
}

#[cfg(test)]
mod tests;

/// Scan reports by image ID, kept while the node's database file is unchanged.
#[derive(Debug, Default)]
pub struct Cache {
    inner: std::sync::Mutex<CacheState>,
}

#[derive(Debug, Default)]
struct CacheState {
    db_stamp: Option<std::time::SystemTime>,
    db: std::sync::Arc<Database>,
    reports: std::collections::HashMap<String, Report>,
}

impl Cache {
    /// The report of `image` against the database under `node_root`; an error when there is
    /// no database (a node that cannot tell must not pass an image as clean).
    pub fn report(
        &self,
        images: &crate::image::ImageStore,
        image: &crate::image::ImageInfo,
        node_root: &std::path::Path,
    ) -> Result<Report, String> {
        let path = db_path(node_root);
        let stamp = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if stamp.is_none() {
            return Err(
                "this node has no vulnerability database; import one with shoal scan db import"
                    .into(),
            );
        }
        if s.db_stamp != stamp {
            s.db = std::sync::Arc::new(Database::load(&path)?);
            s.db_stamp = stamp;
            s.reports.clear();
        }
        if let Some(r) = s.reports.get(&image.id) {
            return Ok(r.clone());
        }
        let crate::runtime::RootfsSource::Layers(layers) = images.rootfs(image) else {
            return Err(format!("image {} has no layers to scan", image.id));
        };
        let report = scan(&layers, &s.db)?;
        s.reports.insert(image.id.clone(), report.clone());
        Ok(report)
    }
}
