//! `FakeExecutor`: pretends to run containers, for tests and for benchmarks of many simulated
//! agents in one process. Tasks run at once and until stopped; the image name picks a fate:
//! `missing/…` is REJECTED, `fail/…` exits 1 right after starting, `unhealthy/…` fails every
//! health check. A few dozen bytes per task; no files unless asked to write logs. Its tasks
//! outlive a worker, so a new agent on the same fake re-attaches them.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use shoal_proto::{NodeDescription, Task};
use tokio::sync::watch;

use super::executor::{describe_host, ExecError, ExecOutput, Executor, ExitStatus};

/// A container that is not one.
#[derive(Debug)]
struct FakeTask {
    fate: Fate,
    exit: watch::Sender<Option<ExitStatus>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Run,
    Fail,
    Unhealthy,
}

/// An executor that runs nothing.
#[derive(Debug)]
pub struct FakeExecutor {
    node: String,
    tasks: Mutex<HashMap<String, FakeTask>>,
    logs: Option<PathBuf>,
    description: Option<NodeDescription>,
}

impl FakeExecutor {
    /// A fake for node `node` (named in rejections).
    pub fn new(node: impl Into<String>) -> FakeExecutor {
        FakeExecutor {
            node: node.into(),
            tasks: Mutex::new(HashMap::new()),
            logs: None,
            description: None,
        }
    }

    /// Each started task writes one line to `<dir>/<task id>/stdout.log`, so log
    /// subscriptions have something to send.
    pub fn with_logs(mut self, dir: impl Into<PathBuf>) -> FakeExecutor {
        self.logs = Some(dir.into());
        self
    }

    /// Reports `d` as the node's resources instead of the host's.
    pub fn with_description(mut self, d: NodeDescription) -> FakeExecutor {
        self.description = Some(d);
        self
    }

    /// IDs of the containers it holds (running or exited, not yet removed).
    pub fn containers(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, FakeTask>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn exit_of(&self, id: &str) -> Result<watch::Receiver<Option<ExitStatus>>, ExecError> {
        self.lock().get(id).map(|t| t.exit.subscribe()).ok_or_else(|| ExecError::Unknown(id.into()))
    }

    fn prepare_task(&self, task: &Task) -> Result<(), ExecError> {
        let image = task
            .spec
            .as_ref()
            .and_then(|s| s.container.as_ref())
            .map(|c| c.image.as_str())
            .unwrap_or("");
        let fate = match image {
            i if i.starts_with("missing/") => {
                return Err(ExecError::Rejected(format!(
                    "image {i} is not on node {}; pull it with 'shoal image pull' or load it with 'shoal image load'",
                    self.node
                )))
            }
            i if i.starts_with("fail/") => Fate::Fail,
            i if i.starts_with("unhealthy/") => Fate::Unhealthy,
            _ => Fate::Run,
        };
        let (exit, _) = watch::channel(None);
        self.lock().insert(task.id.clone(), FakeTask { fate, exit });
        Ok(())
    }

    fn start_task(&self, id: &str) -> Result<(), ExecError> {
        let tasks = self.lock();
        let t = tasks.get(id).ok_or_else(|| ExecError::Unknown(id.into()))?;
        if t.fate == Fate::Fail {
            t.exit.send_replace(Some(ExitStatus { code: 1, signal: None, oom_killed: false }));
        }
        drop(tasks);
        if let Some(dir) = &self.logs {
            write_line(&dir.join(id), &format!("task {id} running on {} (fake)\n", self.node));
        }
        Ok(())
    }

    fn stop_task(&self, id: &str) -> Result<ExitStatus, ExecError> {
        let tasks = self.lock();
        let t = tasks.get(id).ok_or_else(|| ExecError::Unknown(id.into()))?;
        let killed = ExitStatus { code: 143, signal: Some(15), oom_killed: false };
        t.exit.send_if_modified(|e| e.is_none() && e.replace(killed).is_none());
        let exit = t.exit.borrow().unwrap_or(killed);
        Ok(exit)
    }

    fn forget_logs(&self, id: &str) {
        if let Some(dir) = &self.logs {
            let _ = std::fs::remove_dir_all(dir.join(id));
        }
    }
}

fn write_line(dir: &Path, line: &str) {
    use std::io::Write;
    let _ = std::fs::create_dir_all(dir);
    let file = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("stdout.log"));
    if let Ok(mut f) = file {
        let _ = f.write_all(line.as_bytes());
    }
}

impl Executor for FakeExecutor {
    fn prepare<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(async move { self.prepare_task(task) })
    }

    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(async move { self.start_task(id) })
    }

    fn wait<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ExitStatus, ExecError>> {
        Box::pin(async move {
            let mut rx = self.exit_of(id)?;
            let gone = || ExecError::Unknown(id.into());
            let exit = *rx.wait_for(|e| e.is_some()).await.map_err(|_| gone())?;
            exit.ok_or_else(gone)
        })
    }

    fn stop<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ExitStatus, ExecError>> {
        Box::pin(async move { self.stop_task(id) })
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(async move {
            let t = self.lock().remove(id).ok_or_else(|| ExecError::Unknown(id.into()))?;
            let killed = ExitStatus { code: 137, signal: Some(9), oom_killed: false };
            t.exit.send_if_modified(|e| e.is_none() && e.replace(killed).is_none());
            Ok(())
        })
    }

    fn exec<'a>(
        &'a self,
        id: &'a str,
        _argv: &'a [String],
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<ExecOutput, ExecError>> {
        Box::pin(async move {
            let fate =
                self.lock().get(id).map(|t| t.fate).ok_or_else(|| ExecError::Unknown(id.into()))?;
            Ok(match fate {
                Fate::Unhealthy => {
                    ExecOutput { code: 1, output: "fake: unhealthy".into(), timed_out: false }
                }
                _ => ExecOutput { code: 0, output: String::new(), timed_out: false },
            })
        })
    }

    /// The containers it holds: a new worker on the same fake (an agent restarted in the same
    /// process) takes them over.
    fn leftovers(&self) -> BoxFuture<'_, Result<Vec<String>, ExecError>> {
        Box::pin(async { Ok(self.containers()) })
    }

    fn adopt<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(async move {
            let held = self.lock().contains_key(&task.id);
            if held {
                Ok(())
            } else {
                Err(ExecError::Unknown(task.id.clone()))
            }
        })
    }

    fn forget<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Some(t) = self.lock().remove(id) {
                t.exit.send_if_modified(|e| {
                    e.is_none() && e.replace(ExitStatus::unknown()).is_none()
                });
            }
            self.forget_logs(id);
        })
    }

    fn retain_logs(&self, keep: &HashSet<String>) {
        let Some(dir) = &self.logs else { return };
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    fn log_paths(&self, id: &str) -> Option<(PathBuf, PathBuf)> {
        let dir = self.logs.as_ref()?.join(id);
        dir.exists().then(|| (dir.join("stdout.log"), dir.join("stderr.log")))
    }

    fn describe(&self) -> NodeDescription {
        self.description.clone().unwrap_or_else(describe_host)
    }
}
