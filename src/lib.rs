//! Shoal's command-line client and node daemon, wired from the workspace crates.
//!
//! Two rooms, with a one-way rule:
//! - [`cli`]: the `shoal` client. It speaks gRPC and may use only `shoal-proto` and `shoal-pki`.
//! - [`node`]: the `shoald` daemon (init, join, the local API, image loading, re-addressing).
//!   It wires `shoal-manager` and `shoal-agent` together and never uses [`cli`].
//!
//! The benchmarks are a binary of their own beside them (`src/bench/`, package `shoal-bench`).

pub mod cli;
pub mod node;

/// The one-way rule between the rooms, checked on the source so a new `use` that breaks it
/// fails the build's tests rather than a review.
#[cfg(test)]
mod rooms {
    use std::path::Path;

    /// Every `.rs` file under `dir` with its text.
    fn sources(dir: &Path) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(sources(&path));
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push((path.display().to_string(), std::fs::read_to_string(&path).unwrap()));
            }
        }
        out
    }

    fn offenders(room: &str, forbidden: &[&str]) -> Vec<String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(room);
        let mut found = Vec::new();
        for (path, text) in sources(&dir) {
            for (n, line) in text.lines().enumerate() {
                if let Some(word) = forbidden.iter().find(|w| line.contains(*w)) {
                    found.push(format!("{path}:{}: uses {word}", n + 1));
                }
            }
        }
        found
    }

    #[test]
    fn the_client_uses_only_proto_and_pki() {
        let found = offenders("cli", &["shoal_manager", "shoal_agent", "crate::node"]);
        assert!(found.is_empty(), "the CLI must not reach into the node:\n{}", found.join("\n"));
    }

    #[test]
    fn the_daemon_never_uses_the_client() {
        let found = offenders("node", &["crate::cli", "crate::bench"]);
        assert!(found.is_empty(), "the daemon must not use the CLI:\n{}", found.join("\n"));
    }
}
