//! Reads what the kernel's cgroups say about a task: OOM kills, limits, leftovers. runc creates
//! and removes the cgroups; this module only reads them and removes empty leftovers.
//! Works on cgroup v1 (one hierarchy per controller), hybrid and v2 (unified) hosts.

use std::path::{Path, PathBuf};

/// The cgroup layout of this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v2 only, mounted at the root.
    Unified(PathBuf),
    /// Per-controller v1 hierarchies (a v2 tree may exist beside them, as on hybrid hosts).
    Legacy(PathBuf),
}

impl Layout {
    /// Detects the layout under `/sys/fs/cgroup`.
    pub fn detect() -> Layout {
        Layout::detect_at(Path::new("/sys/fs/cgroup"))
    }

    /// Detects the layout under `root`.
    pub fn detect_at(root: &Path) -> Layout {
        if root.join("cgroup.controllers").exists() {
            Layout::Unified(root.to_path_buf())
        } else {
            Layout::Legacy(root.to_path_buf())
        }
    }

    /// The directory of controller `ctrl` (`memory`, `pids`, ...) for cgroup `path`.
    pub fn dir(&self, ctrl: &str, path: &Path) -> PathBuf {
        let rel = path.strip_prefix("/").unwrap_or(path);
        match self {
            Layout::Unified(root) => root.join(rel),
            Layout::Legacy(root) => root.join(ctrl).join(rel),
        }
    }

    /// Whether the kernel's OOM killer killed a process of cgroup `path`.
    pub fn oom_killed(&self, path: &Path) -> bool {
        let file = match self {
            Layout::Unified(_) => self.dir("memory", path).join("memory.events"),
            Layout::Legacy(_) => self.dir("memory", path).join("memory.oom_control"),
        };
        std::fs::read_to_string(file)
            .map(|t| counter(&t, "oom_kill").unwrap_or(0) > 0)
            .unwrap_or(false)
    }

    /// The task's pids limit as the kernel holds it (`None`: unlimited or unreadable).
    pub fn pids_max(&self, path: &Path) -> Option<i64> {
        std::fs::read_to_string(self.dir("pids", path).join("pids.max")).ok()?.trim().parse().ok()
    }

    /// Every directory that still exists for cgroup `path`, in any hierarchy.
    pub fn leftovers(&self, path: &Path) -> Vec<PathBuf> {
        match self {
            Layout::Unified(root) => {
                let d = root.join(path.strip_prefix("/").unwrap_or(path));
                if d.exists() {
                    vec![d]
                } else {
                    Vec::new()
                }
            }
            Layout::Legacy(root) => std::fs::read_dir(root)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join(path.strip_prefix("/").unwrap_or(path)))
                .filter(|d| d.is_dir())
                .collect(),
        }
    }

    /// Removes the (empty) directories left for `path`; returns those that would not go.
    pub fn remove(&self, path: &Path) -> Vec<PathBuf> {
        self.leftovers(path).into_iter().filter(|d| std::fs::remove_dir(d).is_err()).collect()
    }
}

fn counter(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == key).then_some(())?;
        it.next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_oom_counters_in_both_layouts() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = Layout::Legacy(dir.path().to_path_buf());
        let mem = dir.path().join("memory/shoal/t1");
        std::fs::create_dir_all(&mem).unwrap();
        std::fs::write(
            mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        )
        .unwrap();
        assert!(v1.oom_killed(Path::new("/shoal/t1")));
        assert_eq!(v1.leftovers(Path::new("/shoal/t1")), vec![mem.clone()]);

        let v2 = Layout::Unified(dir.path().to_path_buf());
        let d = dir.path().join("shoal/t2");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("memory.events"), "low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n")
            .unwrap();
        assert!(!v2.oom_killed(Path::new("/shoal/t2")));
    }

    #[test]
    fn detects_layout() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(Layout::detect_at(dir.path()), Layout::Legacy(_)));
        std::fs::write(dir.path().join("cgroup.controllers"), "memory pids").unwrap();
        assert!(matches!(Layout::detect_at(dir.path()), Layout::Unified(_)));
    }
}
