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

pub use osv::{Advisory, Database};
pub use packages::{Distro, Package};
pub use shoal_proto::spec::scan::{Finding, Report, Severity};

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
