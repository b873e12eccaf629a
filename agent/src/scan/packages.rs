//! Owns reading what an image says is installed: `/etc/os-release` for the distribution and
//! release, `/var/lib/dpkg/status` (Debian, Ubuntu) and `/lib/apk/db/installed` (Alpine),
//! read from the layers as the merged root filesystem shows them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The largest package database read (Debian's status of a full system is a few MiB).
const MAX_DB: u64 = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Distro {
    Debian,
    Alpine,
}

impl Distro {
    /// The OSV ecosystem's name.
    pub fn ecosystem(self) -> &'static str {
        match self {
            Distro::Debian => "Debian",
            Distro::Alpine => "Alpine",
        }
    }
}

/// One installed package, named as advisories name it (the source package).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    /// The binary package installed.
    pub name: String,
    /// The source package advisories are written against (the binary's own name if none).
    pub source: String,
    /// The source version where dpkg records one, else the installed version.
    pub version: String,
    pub distro: Distro,
    /// The release as OSV's ecosystem names it: `12` (Debian:12), `v3.18` (Alpine:v3.18).
    pub release: Option<String>,
}

/// What an image has installed, and which system it says it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Installed {
    pub os: String,
    pub packages: Vec<Package>,
}

fn read(layers: &[PathBuf], path: &[&str]) -> Result<Option<String>, String> {
    let bytes = crate::image::merged::read(layers, path, MAX_DB)?;
    Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// The packages an image's layers (topmost first) have installed.
pub fn installed(layers: &[PathBuf]) -> Result<Installed, String> {
    let (id, version) = match read(layers, &["etc", "os-release"])? {
        Some(text) => os_release(&text),
        None => match read(layers, &["usr", "lib", "os-release"])? {
            Some(text) => os_release(&text),
            None => (String::new(), String::new()),
        },
    };
    let os = format!("{id} {version}").trim().to_string();
    let mut packages = Vec::new();
    if let Some(text) = read(layers, &["var", "lib", "dpkg", "status"])? {
        let release = (id == "debian" && !version.is_empty()).then(|| major(&version));
        packages.extend(dpkg_status(&text, release));
    }
    if let Some(text) = read(layers, &["lib", "apk", "db", "installed"])? {
        let release = (id == "alpine" && !version.is_empty()).then(|| alpine_branch(&version));
        packages.extend(super::apk::installed(&text, release));
    }
    Ok(Installed { os, packages })
}

/// `ID` and `VERSION_ID` of an os-release file.
pub fn os_release(text: &str) -> (String, String) {
    let field = |key: &str| {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().trim_matches(['"', '\'']).to_string())
            .unwrap_or_default()
    };
    (field("ID").to_ascii_lowercase(), field("VERSION_ID"))
}

fn major(version: &str) -> String {
    version.split('.').next().unwrap_or(version).to_string()
}

/// `3.18.4` → `v3.18`, as OSV's Alpine ecosystems are named.
fn alpine_branch(version: &str) -> String {
    let mut parts = version.split('.');
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => format!("v{a}.{b}"),
        _ => format!("v{version}"),
    }
}

/// The installed packages of a dpkg status file.
pub fn dpkg_status(text: &str, release: Option<String>) -> Vec<Package> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let mut fields = std::collections::HashMap::new();
        for line in para.lines() {
            if line.starts_with([' ', '\t']) {
                continue; // a continuation line of a multi-line field
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let installed =
            fields.get("status").is_some_and(|s| s.split_whitespace().last() == Some("installed"));
        let (Some(name), Some(version)) = (fields.get("package"), fields.get("version")) else {
            continue;
        };
        if !installed {
            continue;
        }
        // `Source: openssl` or `Source: openssl (3.0.11-1)` when the versions differ.
        let (source, source_version) = match fields.get("source") {
            Some(s) => match s.split_once('(') {
                Some((n, v)) => (n.trim().to_string(), v.trim_end_matches(')').trim().to_string()),
                None => (s.trim().to_string(), version.clone()),
            },
            None => (name.clone(), version.clone()),
        };
        out.push(Package {
            name: name.clone(),
            source,
            version: source_version,
            distro: Distro::Debian,
            release: release.clone(),
        });
    }
    out
}
