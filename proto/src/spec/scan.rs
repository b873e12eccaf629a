//! Owns the words of a vulnerability scan that travel between a node and the CLI: severities
//! (CVSS's qualitative scale), findings and reports. Scanning itself is the agent's.

use std::fmt;

use serde::{Deserialize, Serialize};

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
    /// The name people look it up by: its CVE alias if it has one, else its own ID.
    pub fn name(&self) -> &str {
        self.aliases.iter().find(|a| a.starts_with("CVE-")).unwrap_or(&self.id)
    }

    /// `CVE-2023-0001 (openssl 3.0.2-1, fixed in 3.0.11-1)`: how a refusal names it.
    pub fn short(&self) -> String {
        let name = self.name();
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

    /// Why a policy that blocks `level` refuses `image`, naming the first five findings; `None`
    /// when nothing reaches the level.
    pub fn refusal(&self, image: &str, level: Severity) -> Option<String> {
        let found = self.at_least(level);
        if found.is_empty() {
            return None;
        }
        let named: Vec<String> = found.iter().take(5).map(|f| f.short()).collect();
        let more = match found.len() - named.len() {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        Some(format!(
            "{image} has {} known vulnerabilities at or above {level}: {}{more}",
            found.len(),
            named.join(", ")
        ))
    }
}
